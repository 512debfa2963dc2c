"""Hookable Mamba-1 and Mamba-2 language models, one code path (the heads view of ``config.py``).

Read top to bottom: RMSNorm -> SSMMixer (the selective SSM with every hidden state behind a hook)
-> SSMBlock (pre-norm residual block) -> HookedSSM (embed, blocks, final norm, unembed).

Hook names (``b`` batch, ``pos`` positions, ``H``/``P``/``G``/``N`` as in ``scan.py``)::

    hook_embed                        [b, pos, d_model]
    blocks.{i}.hook_resid_pre         [b, pos, d_model]
    blocks.{i}.ln1.hook_scale         [b, pos, 1]         rms(x) = sqrt(mean(x²) + eps)
    blocks.{i}.ln1.hook_normalized    [b, pos, d_model]   x / rms(x), before the weight
    blocks.{i}.ssm.hook_in            [b, pos, d_model]   mixer input (normalised, weighted)
    blocks.{i}.ssm.hook_x / hook_z    [b, pos, d_inner]   in_proj x part (pre-conv) and gate z
    blocks.{i}.ssm.hook_conv          [b, pos, conv_ch]   causal conv output, pre-activation
    blocks.{i}.ssm.hook_u             [b, pos, H, P]      SSM input act(conv)
    blocks.{i}.ssm.hook_dt            [b, pos, H]         Δ (FalconMamba: from the RMS-normed low-rank Δ)
    blocks.{i}.ssm.hook_B / hook_C    [b, pos, G, N]      (FalconMamba: RMS-normed, the values the scan uses)
    blocks.{i}.ssm.hook_state         [b, k, H, P, N]     h_t at the requested positions only
    blocks.{i}.ssm.hook_y             [b, pos, H, P]      C·h + D·u
    blocks.{i}.ssm.hook_gated         [b, pos, d_inner]   y·SiLU(z) | RMSNormGated(y, z)
    blocks.{i}.ssm.hook_out           [b, pos, d_model]   out_proj
    blocks.{i}.hook_mixer_out         [b, pos, d_model]   same value as ssm.hook_out
    blocks.{i}.hook_resid_post        [b, pos, d_model]
    ln_final.hook_scale               [b, pos, 1]
    ln_final.hook_normalized          [b, pos, d_model]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer_lens.HookedRootModule import HookedRootModule

from interp.metrics import next_token_cross_entropy, next_token_nll

from .api import InterpModelMixin
from .config import SSM_MODEL_TYPES, SSMConfig
from .hook_points import HookPoint, hook_observed
from .positions import Positions, PositionsLike
from .scan import apply_state_edits, chunked_scan, expand_groups, read_state, scan_with_states, update_state
from .shapes import hook_shapes_by_meta_forward
from .tokens import check_token_ids

_ACTIVATIONS = {"silu": F.silu, "identity": lambda x: x}


# --------------------------------------------------------------------------------------------
# decoding state
# --------------------------------------------------------------------------------------------
@dataclass
class SSMState:
    """Recurrent state of every layer while decoding: constant size, whatever the length.

    conv[i]: [b, conv_ch, d_conv - 1] last conv inputs of layer i; ssm[i]: [b, H, P, N];
    offset: absolute position of the next token.
    """

    conv: list[Tensor] = field(default_factory=list)
    ssm: list[Tensor] = field(default_factory=list)
    offset: int = 0

    def copy(self) -> "SSMState":
        """A snapshot: new lists of the same (not cloned) tensors. A forward given the copy replaces its entries,
        never writes into them, so the original is left as it was."""
        return SSMState(conv=list(self.conv), ssm=list(self.ssm), offset=self.offset)


# --------------------------------------------------------------------------------------------
# norms
# --------------------------------------------------------------------------------------------
def causal_conv(window: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise causal conv (``nn.Conv1d(groups=channels, padding=K-1)`` cut to the causal outputs) in the
    positions-first layout: window [b, K-1+L, ch] (the K-1 inputs before the sequence, zeros at its start, then its
    L inputs), weight [ch, K] (tap K-1 multiplies the current input), bias [ch] | None -> [b, L, ch]:
    out_t = bias + Σ_k weight[:, k] · window[t + k]. K shifted multiply-adds: no transposed copies (the
    layout Conv1d needs), which on a CPU cost more than the conv."""
    K = weight.shape[1]
    L = window.shape[1] - (K - 1)
    w = weight.to(window.dtype)
    out = window[:, :L] * w[:, 0] if bias is None else torch.addcmul(bias.to(window.dtype), window[:, :L], w[:, 0])
    for k in range(1, K):
        out = torch.addcmul(out, window[:, k:k + L], w[:, k])
    return out


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as Hugging Face's MambaRMSNorm), hooked as TransformerLens's RMSNorm:
    ``hook_scale`` = rms = sqrt(mean(x²) + eps) [.., 1], ``hook_normalized`` = x / rms (before the weight).
    With ``offset`` 1 the gain is ``1 + weight`` (the zero-centred norms of Gemma / RecurrentGemma and Qwen3-Next,
    whose weights start at 0); :attr:`gain` is the factor the normalised stream is multiplied by."""

    def __init__(self, d: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d) if offset == 0.0 else torch.zeros(d))
        self.eps, self.offset = eps, float(offset)
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    @property
    def gain(self) -> Tensor:
        """[d]: ``offset + weight``."""
        return self.weight if self.offset == 0.0 else self.weight + self.offset

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # [.., 1]
        x = self.hook_normalized(x / scale)
        return self.gain * x.to(dtype)


class GatedRMSNorm(nn.Module):
    """Mamba-2's grouped RMSNorm of y · SiLU(z) (norm after gate, one RMS per group); with ``before_gate``
    RMSNorm(y) · SiLU(z) (HF ``FalconH1RMSNormGated`` with ``norm_before_gate``)."""

    def __init__(self, d: int, n_groups: int, eps: float, before_gate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.n_groups = n_groups
        self.eps = eps
        self.before_gate = before_gate

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        dtype = y.dtype
        x = y.float() if self.before_gate else y.float() * F.silu(z.float())
        xg = x.unflatten(-1, (self.n_groups, -1))
        xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.before_gate:
            return (self.weight * xg.flatten(-2) * F.silu(z.float())).to(dtype)
        return self.weight * xg.flatten(-2).to(dtype)


def _weightless_rms(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x²) + eps) over the last axis, in float32 (HF ``FalconMambaWeightlessRMSNorm``)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


# --------------------------------------------------------------------------------------------
# the mixer
# --------------------------------------------------------------------------------------------
class SSMMixer(nn.Module):
    """Selective SSM mixer of either family; parameter names follow Hugging Face's mixers.

    ``fire_state_hook``: set True to make ``hook_state`` fire in every forward even with nothing detected on it
    (TransformerLens hooks and nnsight traces are detected; see :func:`_state_observed`).
    """

    fire_state_hook: bool = False

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        self.cfg = cfg
        H, N, K = cfg.H, cfg.d_state, cfg.d_conv
        d_in = cfg.d_inner
        self.act = _ACTIVATIONS[cfg.activation]
        if cfg.family == "mamba1":
            self.in_proj = nn.Linear(cfg.d_model, 2 * d_in, bias=cfg.proj_bias)  # -> x, z
            self.x_proj = nn.Linear(d_in, cfg.dt_rank + 2 * N, bias=False)  # -> dt_low, B, C
            self.dt_proj = nn.Linear(cfg.dt_rank, d_in, bias=True)
            self.A_log = nn.Parameter(torch.zeros(d_in, N))
            if cfg.bcdt_rms_weights:  # Jamba: the Δ / B / C RMS norms' learned weights (HF parameter names)
                for name, width in (("dt_layernorm", cfg.dt_rank), ("b_layernorm", N), ("c_layernorm", N)):
                    norm = nn.Module()
                    norm.weight = nn.Parameter(torch.ones(width))
                    setattr(self, name, norm)
        else:
            self.in_proj = nn.Linear(cfg.d_model, d_in + cfg.conv_channels + H, bias=cfg.proj_bias)
            self.dt_bias = nn.Parameter(torch.zeros(H))
            self.A_log = nn.Parameter(torch.zeros(H))
            if cfg.gate_norm != "none":  # "none": y · SiLU(z), no norm (Falcon-H1 without mamba_rms_norm)
                self.norm = GatedRMSNorm(d_in, cfg.n_groups, cfg.norm_eps, before_gate=cfg.gate_norm == "before")
        self.conv1d = nn.Conv1d(
            cfg.conv_channels, cfg.conv_channels, K, groups=cfg.conv_channels, padding=K - 1, bias=cfg.conv_bias
        )
        self.D = nn.Parameter(torch.ones(H))
        self.out_proj = nn.Linear(d_in, cfg.d_model, bias=cfg.proj_bias if cfg.out_proj_bias is None
                                  else cfg.out_proj_bias)

        for name in ("in", "x", "z", "conv", "u", "dt", "B", "C", "state", "y", "gated", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    # --- static parameters, readable by analyses ---------------------------------------------
    @property
    def A(self) -> Tensor:
        """Continuous decay rates, -exp(A_log): [H, N] (Mamba-1) or [H] (Mamba-2)."""
        return -torch.exp(self.A_log.float())

    @property
    def W_in(self) -> Tensor:
        return self.in_proj.weight

    @property
    def W_out(self) -> Tensor:
        return self.out_proj.weight

    @property
    def conv_weight(self) -> Tensor:
        """Depthwise causal conv taps: [conv_ch, d_conv]; tap d_conv-1 multiplies the current input."""
        return self.conv1d.weight[:, 0]

    @property
    def conv_bias(self) -> Tensor | None:
        return self.conv1d.bias

    # --- pieces ----------------------------------------------------------------------------
    def _split_in_proj(self, proj: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """in_proj output -> (x [.., d_inner], z, extra conv channels (B,C pre-conv) | None, dt_raw | None), each
        Mamba-2 segment times its ``cfg.in_proj_multipliers`` entry (z, x, B, C, dt) when set."""
        cfg = self.cfg
        if cfg.family == "mamba1":
            x, z = proj.chunk(2, dim=-1)
            return x, z, None, None
        d_in, GN = cfg.d_inner, cfg.n_groups * cfg.d_state
        z, x, bc, dt_raw = proj.split([d_in, d_in, 2 * GN, cfg.H], dim=-1)
        if cfg.in_proj_multipliers is not None:  # Falcon-H1's mup vector
            mz, mx, mb, mc, mdt = cfg.in_proj_multipliers
            B, C = bc.split([GN, GN], dim=-1)
            z, x, bc, dt_raw = z * mz, x * mx, torch.cat([B * mb, C * mc], dim=-1), dt_raw * mdt
        return x, z, bc, dt_raw

    def _ssm_params(self, u_flat: Tensor, dt_raw: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """From the activated conv output [.., conv_ch]: (u [.., H, P], dt [.., H], B, C [.., G, N])."""
        cfg = self.cfg
        H, P, G, N = cfg.H, cfg.P, cfg.G, cfg.d_state
        if cfg.family == "mamba1":
            u = self.hook_u(u_flat.unflatten(-1, (H, P)))
            dt_low, B, C = self.x_proj(u.flatten(-2)).split([cfg.dt_rank, N, N], dim=-1)
            if cfg.bcdt_rms:  # FalconMamba: weightless RMSNorm of each, before dt_proj and the scan
                dt_low, B, C = (_weightless_rms(t, cfg.mixer_rms_eps) for t in (dt_low, B, C))
                if cfg.bcdt_rms_weights:  # Jamba: times the norms' learned weights (HF JambaRMSNorm)
                    dt_low, B, C = (self.dt_layernorm.weight * dt_low, self.b_layernorm.weight * B,
                                    self.c_layernorm.weight * C)
            dt = F.softplus(self.dt_proj(dt_low).float())
        else:
            x, B, C = u_flat.split([cfg.d_inner, G * N, G * N], dim=-1)
            u = self.hook_u(x.unflatten(-1, (H, P)))
            dt = F.softplus(dt_raw.float() + self.dt_bias.float()).clamp(*cfg.dt_limit)
        dt = self.hook_dt(dt)
        B = self.hook_B(B.unflatten(-1, (G, N)))
        C = self.hook_C(C.unflatten(-1, (G, N)))
        return u, dt, B, C

    def _gate(self, y: Tensor, z: Tensor) -> Tensor:
        y = y.flatten(-2).to(z.dtype)  # [b, pos, d_inner]
        if self.cfg.family == "mamba1" or self.cfg.gate_norm == "none":
            return y * F.silu(z)
        return self.norm(y, z)

    # --- full sequence ----------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        attention_mask: Tensor | None = None,
        state_positions: PositionsLike = None,
        state: SSMState | None = None,
        layer: int = 0,
    ) -> Tensor:
        """x [b, L, d_model] -> [b, L, d_model]. With ``state``, continue from / update the decoding
        state of ``layer`` (L = 1 takes the constant-time recurrent step)."""
        if state is not None and x.shape[1] == 1 and len(state.ssm) > layer:
            return self._step(x, state, layer, state_positions)
        cfg = self.cfg
        b, L, _ = x.shape
        mask = None if attention_mask is None else attention_mask[:, :, None].to(x.dtype)

        x = self.hook_in(x)
        if mask is not None:
            x = x * mask
        xs, z, bc, dt_raw = self._split_in_proj(self.in_proj(x))
        xs = self.hook_x(xs)  # [b, L, d_inner]
        z = self.hook_z(z)
        xbc = xs if bc is None else torch.cat([xs, bc], dim=-1)  # [b, L, conv_ch]
        K = cfg.d_conv
        continuing = state is not None and len(state.conv) > layer
        # the stored last K-1 inputs come first when continuing (the window does not restart), zeros otherwise
        window = torch.cat([state.conv[layer].transpose(1, 2).to(xbc.dtype) if continuing
                            else xbc.new_zeros(b, K - 1, xbc.shape[-1]), xbc], dim=1)  # [b, K-1+L, conv_ch]
        conv = self.hook_conv(causal_conv(window, self.conv_weight, self.conv1d.bias))  # [b, L, conv_ch]
        act = self.act(conv)
        if mask is not None:
            act = act * mask
        u, dt, B, C = self._ssm_params(act, dt_raw)

        h0 = state.ssm[layer] if state is not None and len(state.ssm) > layer else None
        y, h_final = self._scan(u, dt, B, C, h0, state_positions, offset=0 if state is None else state.offset)
        y = self.hook_y(y)
        out = self.hook_out(self.out_proj(self.hook_gated(self._gate(y, z))))
        if state is not None:  # the last K-1 conv inputs [b, conv_ch, K-1], stored ones included when L < K-1
            _store(state, layer, window[:, window.shape[1] - (K - 1):].transpose(1, 2), h_final)
        return out

    def _scan(
        self, u: Tensor, dt: Tensor, B: Tensor, C: Tensor, h0: Tensor | None,
        state_positions: PositionsLike, offset: int,
    ) -> tuple[Tensor, Tensor]:
        """Cheapest scan that fires ``hook_state`` when anything observes it (:func:`_state_observed`); applies its
        edits exactly and, under autograd, makes the state it showed carry dL/dh (:class:`_StateGrad`)."""
        A, D = self.A, self.D.float()
        if not _state_observed(self):
            return chunked_scan(u, dt, A, B, C, D, h0, self.cfg.chunk_size)
        L = u.shape[1]
        pos = _resolve_positions(state_positions, L, offset)
        if not pos:
            raise ValueError(
                f"{self.hook_state.name} has a hook but none of state_positions={state_positions!r} "
                f"lies in this forward's positions [{offset}, {offset + L})"
            )
        y, h_final, states = scan_with_states(u, dt, A, B, C, D, h0, pos, self.cfg.chunk_size)
        self.hook_state.ctx["positions"] = torch.tensor([offset + p for p in pos], device=u.device)
        # a copy: an in-place edit of it (nnsight's `.output[:, p] = v`) is seen, and a gradient read on it is the
        # state's own, not the net zero that ``states`` gets
        shown = states.clone()
        edited = self.hook_state(shown)
        delta = edited - states
        if delta.is_meta:  # a forward for shapes only (hooks/shapes.py)
            return y, h_final
        if bool(delta.detach().ne(0).any()):  # an edit: carried through the rest of the recurrence
            y, h_final = apply_state_edits(y, h_final, delta, pos, dt, A, C)
        elif torch.is_grad_enabled() and delta.requires_grad:  # no edit: a zero path that carries dL/dh back
            y, h_final = _StateGrad.apply(y, h_final, delta, dt, A, C, pos)
        return y, h_final

    # --- one decoding step ------------------------------------------------------------------
    def _step(self, x: Tensor, state: SSMState, layer: int, state_positions: PositionsLike) -> Tensor:
        """x [b, 1, d_model]: constant-time recurrent update of ``state`` (no attention mask)."""
        x = self.hook_in(x)
        xs, z, bc, dt_raw = self._split_in_proj(self.in_proj(x))
        xs = self.hook_x(xs)
        z = self.hook_z(z)
        xbc = xs if bc is None else torch.cat([xs, bc], dim=-1)  # [b, 1, conv_ch]
        window = torch.cat([state.conv[layer], xbc.transpose(1, 2)], dim=-1)  # [b, conv_ch, K]
        conv = (window * self.conv_weight).sum(-1)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias
        conv = self.hook_conv(conv[:, None].to(x.dtype))
        u, dt, B, C = self._ssm_params(self.act(conv), dt_raw)

        h = update_state(state.ssm[layer], u[:, 0].float(), dt[:, 0], self.A, B[:, 0].float())
        if _resolve_positions(state_positions, 1, state.offset) and _state_observed(self):
            self.hook_state.ctx["positions"] = torch.tensor([state.offset], device=h.device)
            h = self.hook_state(h[:, None])[:, 0]
        y = read_state(h, C[:, 0].float()) + self.D.float()[:, None] * u[:, 0].float()
        y = self.hook_y(y[:, None].to(x.dtype))
        out = self.hook_out(self.out_proj(self.hook_gated(self._gate(y, z))))
        _store(state, layer, window[..., 1:], h)
        return out


def _state_observed(mixer: SSMMixer) -> bool:
    """Whether ``mixer.hook_state`` must fire in this forward (else the scan skips materialising [b, L, H, P, N]):
    :func:`~interp.hooks.hook_points.hook_observed`, or the switch ``mixer.fire_state_hook``."""
    return hook_observed(mixer.hook_state, force=mixer.fire_state_hook)


class _StateGrad(torch.autograd.Function):
    """Identity on (y, h_final) that gives a zero state edit ``delta`` [b, k, H, P, N] at local positions ``pos``
    its exact gradient, dL/dh_p with the rest of the recurrence carried (the gradient of
    :func:`~interp.hooks.scan.apply_state_edits` at delta = 0, in one reverse pass instead of one per position):

        g_{L-1} = dL/dh_final + C_{L-1} ⊗ dL/dy_{L-1},   g_t = C_t ⊗ dL/dy_t + exp(Δ_{t+1} A) ⊙ g_{t+1}.

    Only the delta gets a gradient: at delta = 0 the correction does not depend on Δ or C."""

    @staticmethod
    def forward(ctx, y, h_final, delta, dt, A, C, pos):  # type: ignore[override]
        ctx.save_for_backward(dt, A, C)
        ctx.pos, ctx.delta_meta = list(pos), (delta.shape, delta.dtype)
        return y.clone(), h_final.clone()

    @staticmethod
    def backward(ctx, gy, gh):  # type: ignore[override]
        dt, A, C = ctx.saved_tensors
        shape, dtype = ctx.delta_meta
        b, k, H, P, N = shape
        L = dt.shape[1]
        Ch = expand_groups(C.float(), H)  # [b, L, H, N]
        log_a = dt.float()[..., None] * A.float() if A.dim() == 2 else dt.float() * A.float()  # [b, L, H(, N)]
        decay = torch.exp(log_a)
        decay = decay[:, :, :, None, :] if A.dim() == 2 else decay[:, :, :, None, None]  # [b, L, H, 1, N|1]
        g = torch.zeros(b, H, P, N, device=dt.device) if gh is None else gh.float().clone()
        at = {p: j for j, p in enumerate(ctx.pos)}
        out = torch.zeros(b, k, H, P, N, device=dt.device)
        for t in range(L - 1, -1, -1):
            if gy is not None:
                g = g + gy[:, t].float()[..., None] * Ch[:, t, :, None, :]
            if t in at:
                out[:, at[t]] = g
            g = decay[:, t] * g  # carried to t-1 through h_t = exp(Δ_t A) ⊙ h_{t-1} + ...
        return gy, gh, out.to(dtype), None, None, None, None


def _store(state: SSMState, layer: int, conv_tail: Tensor, h: Tensor) -> None:
    if len(state.ssm) > layer:
        state.conv[layer], state.ssm[layer] = conv_tail, h
    else:
        state.conv.append(conv_tail)
        state.ssm.append(h)


def _resolve_positions(state_positions: PositionsLike, L: int, offset: int) -> list[int]:
    """Local indices in [0, L) of the absolute positions offset..offset+L-1 of this forward that the
    :class:`~interp.hooks.positions.Positions` spec ``state_positions`` selects (None: all; negative ints count
    from the end of this forward, as for an intervention)."""
    absolute = torch.arange(offset, offset + L)
    return Positions.parse(state_positions).mask(absolute).nonzero()[:, 0].tolist()


# --------------------------------------------------------------------------------------------
# block and model
# --------------------------------------------------------------------------------------------
class SSMBlock(nn.Module):
    """Pre-norm residual block: resid_post = resid_pre + mixer(RMSNorm(resid_pre))."""

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        self.cfg = cfg
        self.hook_resid_pre = HookPoint()
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ssm = SSMMixer(cfg)
        self.hook_mixer_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, layer: int, **mixer_kwargs) -> Tensor:
        resid = self.hook_resid_pre(resid)
        h = self.ln1(resid)
        if self.cfg.residual_in_fp32:
            resid = resid.float()
        mixer_out = self.hook_mixer_out(self.ssm(h, layer=layer, **mixer_kwargs))
        return self.hook_resid_post(resid + mixer_out)


class HookedSSM(InterpModelMixin, HookedRootModule):
    """A Mamba-1 or Mamba-2 language model whose every hidden state is a TransformerLens hook.

    ``run_with_cache``, ``run_with_hooks``, ``hooks()``, ``names_filter`` and ``ActivationCache``
    work as in TransformerLens; ``generate`` decodes with the recurrent state (constant work per
    token) and fires hooks at every step. Load with :func:`interp.load` or :meth:`from_pretrained`.
    """

    #: the decoding state a forward with ``state=`` fills (a subclass with other blocks sets its own)
    state_class: type = SSMState

    def __init__(self, cfg: SSMConfig, tokenizer: object | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([SSMBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.setup()
        if cfg.device is not None:  # built where the config says, as TransformerLens does
            self.to(cfg.device)
        cfg.device = str(self.device)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "HookedSSM":
        """Every move / cast (``to``, ``cuda``, ``cpu``, ``half``) goes through here: keep ``cfg.device`` in step
        with the parameters."""
        out = super()._apply(fn, *args, **kwargs)
        self.cfg.device = str(self.device)
        return out

    # --- loading and saving -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> "HookedSSM":
        """Load a Hugging Face ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` / ``FalconMambaForCausalLM``
        checkpoint (hub id or folder written by ``save_pretrained``), safetensors only, with its tokenizer."""
        from . import loading

        folder = loading.resolve_checkpoint(name_or_path)
        raw = loading.read_config(folder)
        loading.check_model_size(raw, folder / "config.json")  # before anything is allocated
        cfg = SSMConfig.from_hf(_hf_config_from_dict(raw, folder))
        for k, v in raw.get("interp", {}).items():
            setattr(cfg, k, v)
        model = cls(cfg, tokenizer=loading.load_tokenizer(folder))
        loading.load_ssm_state(model, loading.read_safetensors(folder), str(folder))
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_hf_model(cls, hf_model: nn.Module, tokenizer: object | None = None) -> "HookedSSM":
        """Wrap the weights of an in-memory ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` /
        ``FalconMambaForCausalLM`` (copied)."""
        from . import loading

        cfg = SSMConfig.from_hf(hf_model.config)
        model = cls(cfg, tokenizer=tokenizer)
        loading.load_ssm_state(model, hf_model.state_dict(), type(hf_model).__name__)
        p = next(hf_model.parameters())
        return model.to(device=p.device, dtype=p.dtype).eval()

    def save_pretrained(self, folder: str) -> None:
        """Write a checkpoint that both this class and ``transformers`` load (safetensors)."""
        from .loading import save_ssm

        save_ssm(self, folder)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def W_E(self) -> Tensor:
        return self.embed.weight

    @property
    def W_U(self) -> Tensor:
        """Unembedding [d_model, vocab] (TransformerLens orientation)."""
        return self.unembed.weight.T

    @property
    def b_U(self) -> Tensor:
        """Unembedding bias [vocab] (TransformerLens's name): zeros, the unembedding has no bias."""
        w = self.unembed.weight
        return torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)

    # --- forward ---------------------------------------------------------------------------
    def forward(
        self,
        input: str | list[str] | Tensor,
        return_type: str | None = "logits",
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        start_at_layer: int | None = None,
        state_positions: PositionsLike = None,
        state: SSMState | None = None,
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
    ) -> Tensor | tuple[Tensor, Tensor] | None:
        """Run the model.

        Args:
            input: text, list of texts (right-padded, mask built for you) or token ids [b, L].
            return_type: "logits" ([b, L, vocab]), "loss" (mean next-token cross-entropy),
                "both" ((logits, loss)) or None.
            loss_per_token: with return_type "loss" / "both", the loss of each prediction [b, L-1] instead of the
                mean (TransformerLens's flag): ``loss[b, p] = -log p(token p+1)``, 0 where token p or p+1 is
                padding (attention_mask 0), as TransformerLens.
            prepend_bos: for text input, whether to put the BOS token first (default ``cfg.default_prepend_bos``).
            attention_mask: [b, L], 1 for real tokens, for a padded token batch.
            stop_at_layer: run blocks 0..stop_at_layer-1 and return the residual stream [b, L, d_model].
            start_at_layer: ``input`` is the residual stream [b, L, d_model] entering block ``start_at_layer``
                (TransformerLens's flag): run blocks start_at_layer.. only (no embedding). Return type "logits"
                or None (a loss needs the tokens). With ``state``, the residual holds positions state.offset..
            state_positions: where ``ssm.hook_state`` fires, a :class:`~interp.hooks.positions.Positions` spec
                ("all" (default), "last", absolute ints, negative from the end of each forward, a slice).
            state: an :class:`SSMState` to continue from and update (used by generation).
        """
        if start_at_layer is not None:
            resid, tokens = self._check_resid(input, start_at_layer, return_type), None
        elif isinstance(input, (str, list)):
            tokens, mask = self.to_tokens(input, prepend_bos=prepend_bos, return_mask=True)
            attention_mask = mask if attention_mask is None and not bool(mask.all()) else attention_mask
        else:
            tokens = input[None] if input.dim() == 1 else input
            check_token_ids(tokens, self.cfg.d_vocab, "input")
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        offset = 0 if state is None else state.offset
        L = input.shape[1] if tokens is None else tokens.shape[1]
        if L == 0:
            raise ValueError(f"input has no positions (shape {tuple(input.shape)}): pass at least one token")
        if state is None and state_positions is not None:  # one forward: every listed position must lie in it
            if (spec := Positions.parse(state_positions)).kind == "list":
                spec.indices(L, name="state_positions")
        self._set_hook_positions(torch.arange(offset, offset + L, device=self.device))

        if tokens is not None:
            tokens = tokens.to(self.device)
            resid = self.hook_embed(self.embed(tokens))  # [b, L, d_model]
        for i in range(self.cfg.n_layers)[start_at_layer:stop_at_layer]:  # slice semantics, as TransformerLens
            resid = self.blocks[i](resid, layer=i, attention_mask=attention_mask, state_positions=state_positions,
                                   state=state)
        if state is not None:
            state.offset += L
        if stop_at_layer is not None:
            return resid
        resid = self.ln_final(resid.to(self.ln_final.weight.dtype))
        logits = self.unembed(resid.to(self.unembed.weight.dtype)).float()  # [b, L, vocab]
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if loss_per_token:
            loss = next_token_nll(logits, tokens)  # [b, L-1]
            if attention_mask is not None:
                loss = loss.masked_fill(~(attention_mask[:, :-1].bool() & attention_mask[:, 1:].bool()), 0.0)
        else:  # padded targets (mask 0) are ignored
            loss = next_token_cross_entropy(logits, tokens, None if attention_mask is None else attention_mask[:, 1:])
        return loss if return_type == "loss" else (logits, loss)

    @torch.no_grad()
    def decoding_states(self, tokens: Tensor, positions: list[int]) -> dict[int, SSMState | None]:
        """{p: the decoding state after reading ``tokens[:, :p]``} for each p in ``positions`` (None for p = 0),
        from one forward: each block's conv window (its last d_conv - 1 inputs) and recurrent state h_{p-1}. The
        state :meth:`forward` with ``state=`` continues from; equal to reading the prompt step by step up to float
        rounding."""
        wanted = sorted({int(p) for p in positions})
        if wanted and not 0 <= wanted[0] <= wanted[-1] <= tokens.shape[1]:
            raise IndexError(f"positions {wanted}: a decoding state exists after 0..{tokens.shape[1]} tokens")
        last = [p - 1 for p in wanted if p > 0]
        out: dict[int, SSMState | None] = {p: None for p in wanted if p == 0}
        if not last:
            return out
        names = [f"blocks.{i}.ssm.hook_{h}" for i in range(self.cfg.n_layers) for h in ("in", "state")]
        _, cache = self.run_with_cache(tokens, names_filter=names, state_positions=last)
        K = self.cfg.d_conv
        windows, states = [], []
        for i, block in enumerate(self.blocks):
            xs, _, bc, _ = block.ssm._split_in_proj(block.ssm.in_proj(cache[f"blocks.{i}.ssm.hook_in"]))
            conv_in = (xs if bc is None else torch.cat([xs, bc], dim=-1)).transpose(1, 2)  # [b, conv_ch, L]
            windows.append(F.pad(conv_in, (K - 1, 0)))  # zeros before the first token, as the conv pads
            states.append(cache[f"blocks.{i}.ssm.hook_state"])  # [b, len(last), H, P, N]
        for j, p in enumerate(p for p in wanted if p > 0):
            out[p] = SSMState(conv=[w[..., p:p + K - 1] for w in windows], ssm=[h[:, j] for h in states], offset=p)
        return out

    @torch.no_grad()
    def _states_by_forwards(self, tokens: Tensor, positions: list[int]) -> dict[int, Any]:
        """{p: the decoding state after reading ``tokens[:, :p]``} (None for p = 0) by one forward of the prefix with
        a fresh :attr:`state_class` per position: for models whose state has no one-forward shortcut (a hybrid's KV
        cache, RWKV's)."""
        wanted = sorted({int(p) for p in positions})
        if wanted and not 0 <= wanted[0] <= wanted[-1] <= tokens.shape[1]:
            raise IndexError(f"positions {wanted}: a decoding state exists after 0..{tokens.shape[1]} tokens")
        out: dict[int, Any] = {}
        for p in wanted:
            out[p] = None if p == 0 else self.state_class()
            if p:
                self(tokens[:, :p], state=out[p], return_type=None)
        return out

    def _check_resid(self, resid: Any, start_at_layer: int, return_type: str | None) -> Tensor:
        """The residual stream a forward with ``start_at_layer`` starts from, checked."""
        if not 0 <= start_at_layer <= self.cfg.n_layers:
            raise IndexError(f"start_at_layer={start_at_layer}: the model has layers 0..{self.cfg.n_layers - 1} "
                             f"(or {self.cfg.n_layers}: only the final norm and unembedding)")
        if not (isinstance(resid, Tensor) and resid.is_floating_point() and resid.dim() == 3
                and resid.shape[-1] == self.cfg.d_model):
            got = tuple(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__
            raise ValueError(f"with start_at_layer, input is the residual stream [b, L, d_model={self.cfg.d_model}] "
                             f"entering that block (a float tensor), got {got}")
        if return_type not in ("logits", None):
            raise ValueError(f"return_type={return_type!r} needs the tokens: with start_at_layer the forward "
                             "returns logits (or None)")
        return resid.to(self.device)

    # --- tokens ----------------------------------------------------------------------------
    def to_tokens(
        self, input: str | list[str], prepend_bos: bool | None = None, padding_side: str = "right",
        return_mask: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Text -> token ids [b, L] (padded to the longest; ``return_mask`` also gives the mask)."""
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: pass token ids (a LongTensor [batch, pos]) instead of text, "
                "or load a checkpoint folder that contains tokenizer files"
            )
        texts = [input] if isinstance(input, str) else list(input)
        if not texts:
            raise ValueError("empty input: pass at least one string")
        bos = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        rows = []
        for t in texts:
            ids = list(self.tokenizer(t, add_special_tokens=False)["input_ids"]) if _is_hf(self.tokenizer) \
                else list(self.tokenizer.encode(t))
            if bos and bos_id is not None and (not ids or ids[0] != bos_id):
                ids = [bos_id] + ids
            rows.append(ids)
        L = max(len(r) for r in rows)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        pad_id = self.cfg.pad_token_id if pad_id is None else pad_id
        pad_id = 0 if pad_id is None else pad_id
        tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(L - len(r), L) if padding_side == "left" else slice(0, len(r))
            tokens[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
        tokens = tokens.to(self.device)
        return (tokens, mask.to(self.device)) if return_mask else tokens

    def to_string(self, tokens: Tensor | list[int] | int) -> str | list[str]:
        """Token ids -> text: [pos] (or one id, a 0-dim tensor) -> str, [b, pos] -> list of str."""
        if isinstance(tokens, Tensor) and tokens.dim() == 2:
            return [self.to_string(row) for row in tokens]  # type: ignore[misc]
        if isinstance(tokens, Tensor):
            ids = tokens.reshape(-1).tolist()
        else:
            ids = [int(tokens)] if isinstance(tokens, int) else [int(t) for t in tokens]
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode with")
        return self.tokenizer.decode(ids)

    def to_str_tokens(
        self, input: str | list[str] | Tensor | list[int], prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> list[str] | list[list[str]]:
        """One string per token (TransformerLens's ``to_str_tokens``): text (tokenised with ``prepend_bos``,
        default ``cfg.default_prepend_bos``), token ids [pos] / [1, pos] / a list of ints -> list of str; a list
        of texts -> one list per text. ``padding_side`` is accepted for TransformerLens's signature (each text is
        tokenised alone, so there is no padding)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode with")
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(t, prepend_bos=prepend_bos) for t in input]  # type: ignore[misc]
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos)
        else:
            tokens = torch.as_tensor(input)
        if tokens.dim() == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"to_str_tokens takes one sequence; got a batch of shape {tuple(tokens.shape)}: "
                                 "call it on each row")
            tokens = tokens[0]
        return [self.tokenizer.decode([int(t)]) for t in tokens.reshape(-1)]  # type: ignore[union-attr]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (TransformerLens's ``to_single_token``; no BOS)."""
        token = self.to_tokens(string, prepend_bos=False).squeeze()
        if token.shape:
            raise ValueError(f"{string!r} is not a single token: it tokenises to {token.tolist()}")
        return int(token.item())

    # --- generation primitives --------------------------------------------------------------
    def _prefill(self, tokens: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, SSMState]:
        state = self.state_class()
        logits = self(tokens, attention_mask=attention_mask, state=state)
        return logits[:, -1], state

    def _decode_step(self, token: Tensor, state: SSMState) -> tuple[Tensor, SSMState]:
        logits = self(token[:, None], state=state)
        return logits[:, -1], state

    # --- shapes for the cache estimate ------------------------------------------------------
    def hook_shapes(self, batch: int, seq_len: int, state_positions: PositionsLike = None,
                    **_: object) -> dict[str, tuple[int, ...]]:
        """Shape of every hook's activation for a [batch, seq_len] forward, found by running this model's forward
        on the meta device (:mod:`interp.hooks.shapes`); ``ssm.hook_state`` has one entry per requested
        ``state_positions`` inside the sequence (all positions by default)."""
        shapes = hook_shapes_by_meta_forward(self, self._meta_twins, batch, seq_len)
        if state_positions is not None:
            k = len(_resolve_positions(state_positions, seq_len, 0))
            shapes = {n: (s[0], k, *s[2:]) if n.endswith(".ssm.hook_state") else s for n, s in shapes.items()}
        return shapes

    def _meta_twins(self) -> list["HookedSSM"]:
        """A copy of this model on the meta device (parameters with shapes and no storage)."""
        with torch.device("meta"):
            return [HookedSSM(replace(self.cfg, device="meta"))]


def _is_hf(tokenizer: object) -> bool:
    return hasattr(tokenizer, "batch_decode") and hasattr(tokenizer, "get_vocab")


def _hf_config_from_dict(raw: dict, folder: object) -> object:
    from transformers import AutoConfig

    from .loading import CheckpointError

    mt = raw.get("model_type")
    if mt not in SSM_MODEL_TYPES:
        raise CheckpointError(f"{folder}/config.json: model_type {mt!r} is not a Mamba model "
                              f"({', '.join(SSM_MODEL_TYPES)})")
    return AutoConfig.from_pretrained(str(folder))
