"""Hookable Gated DeltaNet mixer (Yang, Kautz, Hatamizadeh 2024; HF ``OlmoHybridGatedDeltaNet``), the linear
recurrence of OLMo-Hybrid's "linear_attention" layers, one :class:`~interp.hooks.hybrid.HybridBlock` kind
("gated_deltanet", ``cfg.delta`` a :class:`DeltaNetConfig`).

Per value head (H_v heads; query/key heads, H_k of them, are shared by H_v / H_k value heads as HF's
``repeat_interleave``), with a state h [d_k, d_v]:

    h_t = α_t (I − β_t k_t k_tᵀ) h_{t−1} + β_t k_t v_tᵀ,     o_t = h_tᵀ q_t / √d_k,     α_t = exp(g_t)

(HF ``torch_recurrent_gated_delta_rule``: decay first, then the delta update, then the read-out with the scaled
query). q, k, v come from one causal depthwise conv (no bias) + SiLU over concat(q_proj, k_proj, v_proj); q and k
are l2-normalised per head (``qk_l2norm``, eps 1e-6, FLA's ``l2norm``); β = σ(b_proj(x)) · ``beta_scale`` (2 with
OLMo-Hybrid's ``linear_allow_neg_eigval``), g = −exp(A_log) · softplus(a_proj(x) + dt_bias). The output is
o_proj(RMSNorm_{d_v}(o) · w · SiLU(g_proj(x))) (HF ``RMSNormGated``, one RMS per head).

Hook names (``b`` batch, ``pos`` positions)::

    blocks.{i}.ssm.hook_in       [b, pos, d_model]          mixer input (the padding positions not yet zeroed)
    blocks.{i}.ssm.hook_conv     [b, pos, 2·H_k·d_k + H_v·d_v]  causal conv of concat(q, k, v) projections,
                                                             before the SiLU
    blocks.{i}.ssm.hook_q        [b, pos, H_k, d_k]          SiLU(conv) after the l2-norm (the value the recurrence
    blocks.{i}.ssm.hook_k        [b, pos, H_k, d_k]          reads), before the 1/√d_k query scale; float32
    blocks.{i}.ssm.hook_v        [b, pos, H_v, d_v]          SiLU(conv); float32
    blocks.{i}.ssm.hook_beta     [b, pos, H_v]               β (the write strength, in [0, beta_scale]); float32
    blocks.{i}.ssm.hook_decay    [b, pos, H_v]               g = log α (≤ 0); float32
    blocks.{i}.ssm.hook_state    [b, k, H_v, d_k, d_v]       h_t at the requested positions only (float32); an edit
                                                             propagates through the rest of the recurrence (and
                                                             changes o_t at its own position t)
    blocks.{i}.ssm.hook_y        [b, pos, H_v, d_v]          o_t (before the gated norm)
    blocks.{i}.ssm.hook_z        [b, pos, H_v·d_v]           g_proj(x), the output gate, before the SiLU
    blocks.{i}.ssm.hook_gated    [b, pos, H_v·d_v]           RMSNorm(o) · w · SiLU(z)
    blocks.{i}.ssm.hook_out      [b, pos, d_model]           o_proj
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hook_points import HookPoint
from .mamba import SSMState, _resolve_positions, _state_observed, _store
from .positions import PositionsLike


@dataclass
class DeltaNetConfig:
    """One Gated DeltaNet mixer (HF ``OlmoHybridGatedDeltaNet``'s fields in brackets): ``n_k_heads``
    [linear_num_key_heads] query/key heads of width ``d_k`` [linear_key_head_dim], ``n_v_heads``
    [linear_num_value_heads] value heads of width ``d_v`` [linear_value_head_dim] (n_v_heads a multiple of
    n_k_heads), conv width ``d_conv`` [linear_conv_kernel_dim], conv activation ``activation`` [hidden_act],
    ``beta_scale`` (2.0 with [linear_allow_neg_eigval], else 1.0), ``qk_l2norm`` (HF's use_qk_l2norm_in_kernel,
    always on in OLMo-Hybrid), ``gate_norm_eps`` (the gated RMSNorm's eps: 1e-5, fixed in HF), ``chunk_size`` of
    the chunked form (64, HF's default; it changes only float rounding). Qwen3-Next's ``Qwen3NextGatedDeltaNet``
    is the same mixer with beta_scale 1, no conv bias and gate_norm_eps = its [rms_norm_eps]; its fused
    in_proj_qkvz / in_proj_ba are split into these projections at load (hooks/loading.py)."""

    d_model: int = 768
    n_k_heads: int = 8
    n_v_heads: int = 8
    d_k: int = 64
    d_v: int = 128
    d_conv: int = 4
    activation: str = "silu"
    conv_bias: bool = False
    beta_scale: float = 2.0
    qk_l2norm: bool = True
    l2norm_eps: float = 1e-6
    gate_norm_eps: float = 1e-5
    chunk_size: int = 64

    def __post_init__(self) -> None:
        if self.n_v_heads % self.n_k_heads:
            raise ValueError(f"n_v_heads ({self.n_v_heads}) must be a multiple of n_k_heads ({self.n_k_heads})")
        if self.activation not in ("silu", "swish"):
            raise ValueError(f"activation {self.activation!r} is not supported (silu only)")
        if self.chunk_size < 1 or self.d_conv < 1:
            raise ValueError(f"chunk_size ({self.chunk_size}) and d_conv ({self.d_conv}) must be >= 1")

    @property
    def key_dim(self) -> int:
        return self.n_k_heads * self.d_k

    @property
    def value_dim(self) -> int:
        return self.n_v_heads * self.d_v

    @property
    def conv_dim(self) -> int:
        return 2 * self.key_dim + self.value_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# the gated delta rule: chunked (UT / WY) and recurrent forms
# --------------------------------------------------------------------------------------------
def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(Σ x² + eps) over the last axis (FLA's / HF's ``l2norm``)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def chunk_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h0: Tensor | None = None,
                     chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """The gated delta rule in chunks (HF ``torch_chunk_gated_delta_rule``'s algorithm, the UT transform / WY
    form): q, k [b, L, H, d_k] (q already scaled, both already normalised), v [b, L, H, d_v] (any d_v: the map
    of :mod:`interp.attention.deltanet` passes the identity), g, beta [b, L, H]; h0 [b, H, d_k, d_v]. Returns
    (o [b, L, H, d_v], h_final [b, H, d_k, d_v]), float32. O(L · C · (d_k + d_v) + L · d_k · d_v) per head."""
    b, L, H, dk = k.shape
    dv = v.shape[-1]
    C = chunk_size
    q, k, v, beta, g = (x.transpose(1, 2).float() for x in (q, k, v, beta, g))  # [b, H, L, ...]
    pad = (C - L % C) % C
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    beta, g = (F.pad(x, (0, pad)) for x in (beta, g))
    n = (L + pad) // C
    kb, vb = k * beta[..., None], v * beta[..., None]
    q, k, kb, vb = (x.reshape(b, H, n, C, x.shape[-1]) for x in (q, k, kb, vb))
    g = g.reshape(b, H, n, C).cumsum(-1)  # within-chunk cumulative log decay
    upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(upper, float("-inf")).exp()  # [b,H,n,C,C] (i ≥ j)
    system = (kb @ k.transpose(-1, -2)) * decay  # unit lower triangular system of the UT transform (+ I)
    intra = (q @ k.transpose(-1, -2)) * decay
    new_v = torch.linalg.solve_triangular(system, vb, upper=False, unitriangular=True)
    k_cum = torch.linalg.solve_triangular(system, kb * g.exp()[..., None], upper=False, unitriangular=True)
    h = q.new_zeros(b, H, dk, dv) if h0 is None else h0.float()
    out = q.new_empty(b, H, n, C, dv)
    qd = q * g.exp()[..., None]
    kd = k * (g[..., -1:] - g).exp()[..., None]
    chunk_decay = g[..., -1].exp()[..., None, None]
    for i in range(n):
        v_new = new_v[:, :, i] - k_cum[:, :, i] @ h
        out[:, :, i] = qd[:, :, i] @ h + intra[:, :, i] @ v_new
        h = h * chunk_decay[:, :, i] + kd[:, :, i].transpose(-1, -2) @ v_new
    return out.reshape(b, H, -1, dv)[:, :, :L].transpose(1, 2), h


def recurrent_delta_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                         h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same rule one position at a time (HF ``torch_recurrent_gated_delta_rule``): decay, delta update,
    read-out. Arguments and results as :func:`chunk_delta_rule`."""
    b, L, H, dk = k.shape
    h = q.new_zeros(b, H, dk, v.shape[-1], dtype=torch.float32) if h0 is None else h0.float()
    outs = []
    for t in range(L):
        qt, kt, vt = q[:, t].float(), k[:, t].float(), v[:, t].float()
        h = h * g[:, t].float().exp()[..., None, None]
        delta = (vt - (h * kt[..., None]).sum(-2)) * beta[:, t].float()[..., None]
        h = h + kt[..., None] * delta[..., None, :]
        outs.append((h * qt[..., None]).sum(-2))
    return torch.stack(outs, dim=1), h


# --------------------------------------------------------------------------------------------
# the mixer
# --------------------------------------------------------------------------------------------
class GatedDeltaNetMixer(nn.Module):
    """Gated DeltaNet mixer; parameter names follow HF ``OlmoHybridGatedDeltaNet`` (q/k/v/a/b/g/o_proj,
    conv1d, A_log, dt_bias, o_norm). ``fire_state_hook`` as :class:`~interp.hooks.mamba.SSMMixer`'s. Its decoding
    state: ``state.conv[slot]`` [b, conv_dim, d_conv − 1] (the last conv inputs), ``state.ssm[slot]`` [b, H_v, d_k,
    d_v]."""

    def __init__(self, cfg: DeltaNetConfig):
        super().__init__()
        self.cfg = cfg
        self.fire_state_hook = False
        d = cfg.d_model
        self.q_proj = nn.Linear(d, cfg.key_dim, bias=False)
        self.k_proj = nn.Linear(d, cfg.key_dim, bias=False)
        self.v_proj = nn.Linear(d, cfg.value_dim, bias=False)
        self.a_proj = nn.Linear(d, cfg.n_v_heads, bias=False)
        self.b_proj = nn.Linear(d, cfg.n_v_heads, bias=False)
        self.g_proj = nn.Linear(d, cfg.value_dim, bias=False)
        self.o_proj = nn.Linear(cfg.value_dim, d, bias=False)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.A_log = nn.Parameter(torch.zeros(cfg.n_v_heads))
        self.dt_bias = nn.Parameter(torch.ones(cfg.n_v_heads))
        self.o_norm = nn.Module()
        self.o_norm.weight = nn.Parameter(torch.ones(cfg.d_v))
        for name in ("in", "conv", "q", "k", "v", "beta", "decay", "state", "y", "z", "gated", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    # --- pieces -----------------------------------------------------------------------------
    def inputs(self, x: Tensor, conv: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(q, k, v, beta, g) of the mixer input x [b, L, d_model] (masked) and its conv output (pre-activation),
        hooked; float32."""
        cfg = self.cfg
        b, L, _ = x.shape
        act = F.silu(conv.float())
        q, k, v = torch.split(act, [cfg.key_dim, cfg.key_dim, cfg.value_dim], dim=-1)
        q, k = q.view(b, L, cfg.n_k_heads, cfg.d_k), k.view(b, L, cfg.n_k_heads, cfg.d_k)
        if cfg.qk_l2norm:
            q, k = l2norm(q, cfg.l2norm_eps), l2norm(k, cfg.l2norm_eps)
        q, k = self.hook_q(q), self.hook_k(k)
        v = self.hook_v(v.view(b, L, cfg.n_v_heads, cfg.d_v))
        beta = self.b_proj(x).sigmoid()
        beta = self.hook_beta((beta * cfg.beta_scale if cfg.beta_scale != 1.0 else beta).float())
        g = self.hook_decay(-self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float()))
        return q, k, v, beta, g

    def heads(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q (scaled by 1/√d_k) and k repeated onto the value heads [b, L, H_v, d_k] (HF's repeat_interleave)."""
        r = self.cfg.n_v_heads // self.cfg.n_k_heads
        if r > 1:
            q, k = q.repeat_interleave(r, dim=2), k.repeat_interleave(r, dim=2)
        return q * self.cfg.d_k ** -0.5, k

    def _gate(self, y: Tensor, z: Tensor) -> Tensor:
        """RMSNorm over each head's d_v (float32), times the weight, times SiLU(z) (HF ``OlmoHybridRMSNormGated``)."""
        dtype = y.dtype
        yf = y.float()
        yn = (yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + self.cfg.gate_norm_eps)).to(dtype)
        out = (self.o_norm.weight * yn) * F.silu(z.unflatten(-1, (self.cfg.n_v_heads, -1)).float())
        return out.to(dtype).flatten(-2)

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor, attention_mask: Tensor | None = None, state_positions: PositionsLike = None,
                state: SSMState | None = None, layer: int = 0) -> Tensor:
        """x [b, L, d_model] -> [b, L, d_model]. With ``state``, continue from / update slot ``layer``; L = 1 with a
        stored state takes HF's recurrent step, anything else the chunked form."""
        cfg = self.cfg
        b, L, _ = x.shape
        x = self.hook_in(x)
        if attention_mask is not None and L > 1:  # HF zeroes the padding positions' input (none on a 1-token step)
            x = (x * attention_mask[:, -L:, None].to(x.device)).to(x.dtype)
        proj = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # [b, L, conv_dim]
        K = cfg.d_conv
        conv_in = proj.transpose(1, 2)
        continuing = state is not None and len(state.conv) > layer
        if continuing:
            conv_in = torch.cat([state.conv[layer].to(conv_in.dtype), conv_in], dim=-1)
        start = K - 1 if continuing else 0
        conv = self.hook_conv(self.conv1d(conv_in)[..., start:start + L].transpose(1, 2))
        q, k, v, beta, g = self.inputs(x, conv)
        qh, kh = self.heads(q, k)
        h0 = state.ssm[layer] if state is not None and len(state.ssm) > layer else None
        recurrent = h0 is not None and L == 1
        y, h_final = self._scan(qh, kh, v, g, beta, h0, state_positions, 0 if state is None else state.offset,
                                recurrent)
        y = self.hook_y(y.to(x.dtype))
        z = self.hook_z(self.g_proj(x))
        out = self.hook_out(self.o_proj(self.hook_gated(self._gate(y, z))))
        if state is not None:
            tail = F.pad(conv_in, (max(0, K - 1 - conv_in.shape[-1]), 0))[..., -(K - 1):] if K > 1 \
                else conv_in[..., :0]
            _store(state, layer, tail, h_final)
        return out

    def _rule(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h0: Tensor | None,
              recurrent: bool) -> tuple[Tensor, Tensor]:
        if recurrent:
            return recurrent_delta_rule(q, k, v, g, beta, h0)
        return chunk_delta_rule(q, k, v, g, beta, h0, self.cfg.chunk_size)

    def _scan(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h0: Tensor | None,
              state_positions: PositionsLike, offset: int, recurrent: bool) -> tuple[Tensor, Tensor]:
        """The rule, firing ``hook_state`` when anything observes it: the sequence is scanned in segments ending
        at the requested positions, and an edit δ at position p adds q_pᵀδ to o_p and the homogeneous recurrence
        from δ (the rule with v = 0) to every later o_t and to h_final (the rule is affine in h). Under autograd a
        zero edit takes the same path, so the state shown carries dL/dh."""
        if not _state_observed(self):
            return self._rule(q, k, v, g, beta, h0, recurrent)
        L = q.shape[1]
        pos = _resolve_positions(state_positions, L, offset)
        if not pos:
            raise ValueError(f"{self.hook_state.name} has a hook but none of state_positions={state_positions!r} "
                             f"lies in this forward's positions [{offset}, {offset + L})")
        ys, states, h, start = [], [], h0, 0
        for p in pos:
            seg = slice(start, p + 1)
            y_seg, h = self._rule(q[:, seg], k[:, seg], v[:, seg], g[:, seg], beta[:, seg], h, recurrent)
            ys.append(y_seg)
            states.append(h)
            start = p + 1
        if start < L:
            seg = slice(start, L)
            y_seg, h = self._rule(q[:, seg], k[:, seg], v[:, seg], g[:, seg], beta[:, seg], h, recurrent)
            ys.append(y_seg)
        y, h_final, states = torch.cat(ys, dim=1), h, torch.stack(states, dim=1)  # states [b, k, H, d_k, d_v]
        self.hook_state.ctx["positions"] = torch.tensor([offset + p for p in pos], device=q.device)
        shown = states.clone()
        edited = self.hook_state(shown)
        delta = edited - states
        if delta.is_meta:
            return y, h_final
        if not (bool(delta.detach().ne(0).any()) or (torch.is_grad_enabled() and delta.requires_grad)):
            return y, h_final
        y, h_final = y.clone(), h_final.clone()
        for j, p in enumerate(pos):
            d = delta[:, j].float()
            y[:, p] = y[:, p] + (d * q[:, p].float()[..., None]).sum(-2)
            if p + 1 < L:
                zero_v = v.new_zeros(*v.shape[:1], L - p - 1, *v.shape[2:]).float()
                dy, d = self._rule(q[:, p + 1:], k[:, p + 1:], zero_v, g[:, p + 1:], beta[:, p + 1:], d, recurrent)
                y[:, p + 1:] = y[:, p + 1:] + dy
            h_final = h_final + d
        return y, h_final
