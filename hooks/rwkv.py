"""Hookable RWKV-4 language models (Hugging Face ``RwkvForCausalLM``, model_type "rwkv"), on HookedSSM's machinery.

Read top to bottom: RWKVConfig -> RWKVState (the decoding state) -> LayerNorm -> :func:`wkv_scan` (the WKV
recurrence of HF's ``rwkv_linear_attention_cpu``, with states at chosen positions and their edits) -> TimeMix
(``blocks.{i}.ssm``) -> ChannelMix (``blocks.{i}.mlp``) -> RWKVBlock -> HookedRWKV. HookedRWKV reuses HookedSSM's
forward loop, ``run_with_cache`` / ``run_with_hooks``, ``stop_at_layer`` / ``start_at_layer``, tokens, generation
primitives and hook shapes (as :class:`~interp.hooks.hybrid.HookedHybrid` does), with RWKV blocks.

The WKV recurrence per channel c (``w`` = -exp(time_decay) < 0, ``u`` = time_first, the bonus):
    a_t = e^{w} a_{t-1} + e^{k_t} v_t,   b_t = e^{w} b_{t-1} + e^{k_t}     (a_{-1} = b_{-1} = 0)
    wkv_t = (a_{t-1} + e^{u + k_t} v_t) / (b_{t-1} + e^{u + k_t})
kept, as HF keeps it, as (num, den, max) with a = num·e^{max}, b = den·e^{max}.

Hook names (``b`` batch, ``pos`` positions, ``d`` d_model, ``C`` d_att = attention_hidden_size, ``F`` d_mlp)::

    hook_embed                        [b, pos, d]   embed.ln(W_E[tokens]): HF's ``blocks.0.pre_ln`` is the
                                                    embedding's LayerNorm here (TransformerLens's post-embedding
                                                    LN, as for BLOOM), so hook_embed is what the residual starts as
    embed.ln.hook_scale / hook_normalized
    blocks.{i}.hook_resid_pre         [b, pos, d]
    blocks.{i}.ln1.hook_scale         [b, pos, 1]   sqrt(var(x) + eps) (TransformerLens's LayerNorm hooks)
    blocks.{i}.ln1.hook_normalized    [b, pos, d]   (x - mean) / scale, before weight and bias
    blocks.{i}.ssm.hook_in            [b, pos, d]   time-mix input x (ln1 output)
    blocks.{i}.ssm.hook_shift         [b, pos, d]   x of the previous position (0, or the decoding state, first)
    blocks.{i}.ssm.hook_xk / hook_xv / hook_xr   [b, pos, d]   x·μ + shift·(1 - μ), μ = time_mix_key / ...
    blocks.{i}.ssm.hook_k / hook_v    [b, pos, C]   key(xk), value(xv)
    blocks.{i}.ssm.hook_r             [b, pos, C]   receptance(xr), before the sigmoid
    blocks.{i}.ssm.hook_decay         [b, pos, C]   w = -exp(time_decay) (log-space decay per channel, the same at
                                                    every position; an edit makes it position-dependent: the
                                                    state update after position t decays by e^{w_t})
    blocks.{i}.ssm.hook_first         [b, pos, C]   u = time_first (the bonus of the current token)
    blocks.{i}.ssm.hook_state         [b, k, 3, C]  (num, den, max) after the k requested positions only
                                                    (``state_positions``); an edit is carried through the rest
    blocks.{i}.ssm.hook_y             [b, pos, C]   wkv
    blocks.{i}.ssm.hook_gated         [b, pos, C]   sigmoid(r) · wkv
    blocks.{i}.ssm.hook_out           [b, pos, d]   output(gated)
    blocks.{i}.hook_mixer_out         [b, pos, d]   ssm.hook_out · 2^-(i // rescale_every) (HF's inference
                                                    rescaling of the output weights; 1 without it)
    blocks.{i}.hook_resid_mid         [b, pos, d]   resid_pre + mixer_out
    blocks.{i}.ln2.hook_scale / hook_normalized
    blocks.{i}.mlp.hook_in            [b, pos, d]   channel-mix input (ln2 output)
    blocks.{i}.mlp.hook_shift         [b, pos, d]   its previous position
    blocks.{i}.mlp.hook_pre           [b, pos, F]   key(x·μk + shift·(1 - μk))
    blocks.{i}.mlp.hook_post          [b, pos, F]   relu(pre)²
    blocks.{i}.mlp.hook_value         [b, pos, d]   value(post)
    blocks.{i}.mlp.hook_r             [b, pos, d]   receptance(x·μr + shift·(1 - μr)), before the sigmoid
    blocks.{i}.mlp.hook_gated         [b, pos, d]   sigmoid(r) · value
    blocks.{i}.hook_mlp_out           [b, pos, d]   mlp.hook_gated · 2^-(i // rescale_every)
    blocks.{i}.hook_resid_post        [b, pos, d]   resid_mid + mlp_out, halved after every rescale_every-th
                                                    block (HF's eval forward: ``hidden_states / 2``)
    ln_final.hook_scale / hook_normalized

``rescale_every`` (RwkvConfig): HF divides block i's ``attention.output`` and ``feed_forward.value`` weights by
2^(i // rescale_every) in place on its first eval forward and halves the hidden states after every rescale_every-th
block. Here the parameters stay the checkpoint's and the forward applies the same powers of two (exact in floating
point), always (this model is for inference; HF's training-mode forward does neither).

Padding: HF ignores ``attention_mask``. Here a masked position leaves the WKV state and the token shift as they
were (its normed inputs are zeroed), so a left-padded row equals the same row unpadded and right padding changes no
real position; a hole in the middle of a row is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import RWKV_MODEL_TYPES, UNBOUNDED_CTX
from .hook_points import HookPoint
from .mamba import HookedSSM, SSMState, _resolve_positions, _state_observed
from .positions import PositionsLike

#: initial ``max`` of the WKV state (HF ``rwkv_linear_attention_cpu`` without a state: -1e38)
MAX_INIT = -1e38


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
@dataclass
class RWKVConfig:
    """Architecture of a hookable RWKV-4 language model; :meth:`from_hf` reads a ``transformers`` RwkvConfig (the
    field each one comes from is named on its line)."""

    d_model: int = 768  # hidden_size
    n_layers: int = 12  # num_hidden_layers
    vocab_size: int = 50277  # vocab_size
    d_att: int | None = None  # attention_hidden_size (None: d_model)
    d_mlp: int | None = None  # intermediate_size (None: 4·d_model)
    norm_eps: float = 1e-5  # layer_norm_epsilon: pre_ln, ln1, ln2 (HF's ln_out keeps nn.LayerNorm's 1e-5)
    final_norm_eps: float = 1e-5  # ln_out: HF builds it without layer_norm_epsilon
    rescale_every: int = 6  # rescale_every (<= 0: no rescaling)
    context_length: int = 1024  # context_length (HF's CUDA kernel limit; the recurrence has none)
    tie_embeddings: bool = False  # tie_word_embeddings
    pad_token_id: int | None = None
    bos_token_id: int | None = 0
    eos_token_id: int | None = 0
    default_prepend_bos: bool = False
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict)
    device: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.d_att = self.d_model if self.d_att is None else int(self.d_att)
        self.d_mlp = 4 * self.d_model if self.d_mlp is None else int(self.d_mlp)
        if self.device is not None:
            self.device = str(self.device)

    # --- TransformerLens names (as SSMConfig's) ------------------------------------------------
    family = "rwkv"  # not a field: the kind of model (interp.attention.methods.model_kind reads it)

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    @property
    def n_ctx(self) -> int:
        """A recurrent model has no positional limit: :data:`~interp.hooks.config.UNBOUNDED_CTX`."""
        return UNBOUNDED_CTX

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def original_architecture(self) -> str:
        return "rwkv"

    @property
    def normalization_type(self) -> str:
        """LayerNorm (weight and bias) before each sublayer and the unembedding."""
        return "LN"

    @property
    def n_key_value_heads(self) -> None:
        return None

    @property
    def hf_model_type(self) -> str:
        return "rwkv"

    def rescale_power(self, layer: int) -> int:
        """s with block ``layer``'s outputs times 2^-s (HF: ``layer // rescale_every``; 0 without rescaling)."""
        return layer // self.rescale_every if self.rescale_every > 0 else 0

    def halves_after(self, layer: int) -> bool:
        """Whether the residual stream is halved after block ``layer`` (HF: ``(layer + 1) % rescale_every == 0``)."""
        return self.rescale_every > 0 and (layer + 1) % self.rescale_every == 0

    @classmethod
    def from_hf(cls, hf_config: Any) -> "RWKVConfig":
        """From a ``transformers`` RwkvConfig. Refused (ValueError): another model type, a quantized checkpoint."""
        mt = getattr(hf_config, "model_type", None)
        if mt not in RWKV_MODEL_TYPES:
            raise ValueError(f"not an RWKV config: model_type={mt!r} (expected one of {', '.join(RWKV_MODEL_TYPES)})")
        q = getattr(hf_config, "quantization_config", None)
        if q:
            method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", q)
            raise ValueError(f"a quantized rwkv checkpoint ({method}) is not supported: load the full-precision one")
        eos = hf_config.eos_token_id
        return cls(
            d_model=hf_config.hidden_size, n_layers=hf_config.num_hidden_layers, vocab_size=hf_config.vocab_size,
            d_att=hf_config.attention_hidden_size, d_mlp=hf_config.intermediate_size,
            norm_eps=hf_config.layer_norm_epsilon, rescale_every=int(hf_config.rescale_every),
            context_length=hf_config.context_length, tie_embeddings=bool(hf_config.tie_word_embeddings),
            pad_token_id=getattr(hf_config, "pad_token_id", None), bos_token_id=hf_config.bos_token_id,
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
        )

    def to_hf(self) -> Any:
        """The equivalent ``transformers`` RwkvConfig."""
        from transformers import RwkvConfig

        return RwkvConfig(vocab_size=self.vocab_size, context_length=self.context_length, hidden_size=self.d_model,
                          num_hidden_layers=self.n_layers, attention_hidden_size=self.d_att,
                          intermediate_size=self.d_mlp, layer_norm_epsilon=self.norm_eps,
                          rescale_every=self.rescale_every, tie_word_embeddings=self.tie_embeddings,
                          bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
                          pad_token_id=self.pad_token_id)


# --------------------------------------------------------------------------------------------
# decoding state
# --------------------------------------------------------------------------------------------
@dataclass
class RWKVState(SSMState):
    """Recurrent state of every layer while decoding (constant size): ``shift[i]`` [b, d] the last time-mix input
    (ln1 output) of layer i, ``ffn_shift[i]`` [b, d] its last channel-mix input (ln2 output), ``wkv[i]``
    [b, 3, C] its (num, den, max); ``offset`` the absolute position of the next token. (``conv`` / ``ssm``, the
    Mamba entries, stay empty.)"""

    shift: list[Tensor] = field(default_factory=list)
    ffn_shift: list[Tensor] = field(default_factory=list)
    wkv: list[Tensor] = field(default_factory=list)

    def copy(self) -> "RWKVState":
        """A snapshot: new lists of the same tensors (a forward replaces entries, never writes into them)."""
        return RWKVState(offset=self.offset, shift=list(self.shift), ffn_shift=list(self.ffn_shift),
                         wkv=list(self.wkv))


# --------------------------------------------------------------------------------------------
# norm
# --------------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """``nn.LayerNorm`` (weight and bias) hooked as TransformerLens's LayerNorm: ``hook_scale`` =
    sqrt(var(x) + eps) [.., 1], ``hook_normalized`` = (x - mean) / scale, before weight and bias."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # [.., 1]
        return self.hook_normalized(x / scale) * self.weight + self.bias


class NormedEmbedding(nn.Embedding):
    """Token embedding followed by a LayerNorm ``ln`` (HF's ``blocks.0.pre_ln``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, eps: float):
        super().__init__(num_embeddings, embedding_dim)
        self.ln = LayerNorm(embedding_dim, eps)

    def forward(self, input: Tensor) -> Tensor:
        return self.ln(super().forward(input))


# --------------------------------------------------------------------------------------------
# the WKV recurrence
# --------------------------------------------------------------------------------------------
def wkv_scan(
    k: Tensor, v: Tensor, w: Tensor, u: Tensor, state: Tensor | None = None, mask: Tensor | None = None,
    positions: list[int] | None = None, edits: dict[int, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The WKV recurrence step by step, in HF ``rwkv_linear_attention_cpu``'s arithmetic (max-subtracted).

    k, v, w, u: [b, L, C] (w the log decay used by the update after each position, u the bonus); state: [b, 3, C]
    (num, den, max) before position 0 (default: zeros, max = -1e38); mask: [b, L] bool, False where the state is
    left unchanged (padding); positions: local indices whose state after the step is returned; edits:
    {local index: [b, 3, C]} added to the state right after that step (and carried on).
    Returns (wkv [b, L, C], final state [b, 3, C], states at ``positions`` [b, k, 3, C] or None)."""
    b, L, C = k.shape
    ft = torch.promote_types(k.dtype, torch.float32)  # float32 (HF's), float64 stays float64
    if state is None:
        num = torch.zeros(b, C, dtype=ft, device=k.device)
        den = torch.zeros_like(num)
        mx = torch.full_like(num, MAX_INIT)
    else:
        num, den, mx = state.to(ft).unbind(1)
    out = []
    want = set(positions or [])
    seen = []
    for t in range(L):
        kt, vt, wt, ut = (x[:, t].to(ft) for x in (k, v, w, u))
        mo = torch.maximum(mx, kt + ut)
        e1, e2 = torch.exp(mx - mo), torch.exp(kt + ut - mo)
        out.append((e1 * num + e2 * vt) / (e1 * den + e2))
        ms = torch.maximum(mx + wt, kt)
        e1, e2 = torch.exp(mx + wt - ms), torch.exp(kt - ms)
        new = (e1 * num + e2 * vt, e1 * den + e2, ms)
        if mask is not None:
            keep = mask[:, t, None]
            new = tuple(torch.where(keep, n, o) for n, o in zip(new, (num, den, mx)))
        num, den, mx = new
        if edits is not None and t in edits:
            d = edits[t].to(ft)
            num, den, mx = num + d[:, 0], den + d[:, 1], mx + d[:, 2]
        if t in want:
            seen.append(torch.stack([num, den, mx], 1))
    y = torch.stack(out, 1).to(v.dtype)
    return y, torch.stack([num, den, mx], 1), torch.stack(seen, 1) if seen else None


# --------------------------------------------------------------------------------------------
# time mixing and channel mixing
# --------------------------------------------------------------------------------------------
def _shifted(x: Tensor, prev: Tensor | None) -> Tensor:
    """x [b, L, d] one position later: position t holds x_{t-1}, position 0 ``prev`` [b, d] (default zeros)."""
    first = torch.zeros_like(x[:, :1]) if prev is None else prev[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


def _left_mask(attention_mask: Tensor | None) -> Tensor | None:
    """The mask as bool [b, L], refused when a row has a 0 between two 1s (only left / right padding is exact)."""
    if attention_mask is None:
        return None
    m = attention_mask.bool()
    started = m.long().cummax(1).values.bool()  # from the first real token on
    after = started & ~m
    ended = (m.long().flip(1).cummax(1).values.flip(1).bool())  # up to the last real token
    if bool((after & ended).any()):
        raise ValueError("attention_mask has a 0 between two 1s in a row: RWKV supports left or right padding only")
    return m


class TimeMix(nn.Module):
    """RWKV-4 time mixing (HF ``RwkvSelfAttention``; parameter names follow it)."""

    fire_state_hook: bool = False

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        self.cfg = cfg
        d, C = cfg.d_model, cfg.d_att
        self.time_decay = nn.Parameter(torch.zeros(C))
        self.time_first = nn.Parameter(torch.zeros(C))
        self.time_mix_key = nn.Parameter(torch.zeros(1, 1, d))
        self.time_mix_value = nn.Parameter(torch.zeros(1, 1, d))
        self.time_mix_receptance = nn.Parameter(torch.zeros(1, 1, d))
        self.key = nn.Linear(d, C, bias=False)
        self.value = nn.Linear(d, C, bias=False)
        self.receptance = nn.Linear(d, C, bias=False)
        self.output = nn.Linear(C, d, bias=False)
        for name in ("in", "shift", "xk", "xv", "xr", "k", "v", "r", "decay", "first", "state", "y", "gated", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    @property
    def w(self) -> Tensor:
        """Log-space decay per channel, -exp(time_decay): [C] (at least float32)."""
        return -torch.exp(self.time_decay.to(torch.promote_types(self.time_decay.dtype, torch.float32)))

    @property
    def W_out(self) -> Tensor:
        return self.output.weight

    def forward(self, x: Tensor, mask: Tensor | None = None, state_positions: PositionsLike = None,
                state: RWKVState | None = None, layer: int = 0) -> Tensor:
        """x [b, L, d] (ln1 output) -> [b, L, d]; with ``state``, continue from / update layer ``layer``'s entries."""
        b, L, _ = x.shape
        continuing = state is not None and len(state.wkv) > layer
        x = self.hook_in(x)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        shift = self.hook_shift(_shifted(x, state.shift[layer] if continuing else None))
        mix = lambda mu: x * mu + shift * (1 - mu)  # noqa: E731
        xk = self.hook_xk(mix(self.time_mix_key))
        xv = self.hook_xv(mix(self.time_mix_value))
        xr = self.hook_xr(mix(self.time_mix_receptance))
        k = self.hook_k(self.key(xk))  # [b, L, C]
        v = self.hook_v(self.value(xv))
        r = self.hook_r(self.receptance(xr))
        w = self.hook_decay(self.w.expand(b, L, -1))
        u = self.hook_first(self.time_first.to(self.w.dtype).expand(b, L, -1))
        s0 = state.wkv[layer] if continuing else None
        y, final = self._wkv(k, v, w, u, s0, mask, state_positions, 0 if state is None else state.offset)
        y = self.hook_y(y)
        gated = self.hook_gated(torch.sigmoid(r) * y)
        out = self.hook_out(self.output(gated))
        if state is not None:
            prev = state.shift[layer] if continuing else None
            _put(state.shift, layer, x[:, -1] if mask is None else _last_real(x, mask, prev))
            _put(state.wkv, layer, final)
        return out

    def _wkv(self, k: Tensor, v: Tensor, w: Tensor, u: Tensor, s0: Tensor | None, mask: Tensor | None,
             state_positions: PositionsLike, offset: int) -> tuple[Tensor, Tensor]:
        """The scan; fires ``hook_state`` when anything observes it, carrying an edit (and, under autograd, the
        gradient of the state it showed) through a second scan with the edits added."""
        if not _state_observed(self):
            y, final, _ = wkv_scan(k, v, w, u, s0, mask)
            return y, final
        L = k.shape[1]
        pos = _resolve_positions(state_positions, L, offset)
        if not pos and L == 1:  # a decoding step outside the requested positions (as Mamba's step): nothing shown
            y, final, _ = wkv_scan(k, v, w, u, s0, mask)
            return y, final
        if not pos:
            raise ValueError(f"{self.hook_state.name} has a hook but none of state_positions={state_positions!r} "
                             f"lies in this forward's positions [{offset}, {offset + L})")
        y, final, states = wkv_scan(k, v, w, u, s0, mask, positions=pos)
        self.hook_state.ctx["positions"] = torch.tensor([offset + p for p in pos], device=k.device)
        shown = states.clone()
        delta = self.hook_state(shown) - states
        if delta.is_meta:  # a forward for shapes only
            return y, final
        if bool(delta.detach().ne(0).any()) or (torch.is_grad_enabled() and delta.requires_grad):
            y, final, _ = wkv_scan(k, v, w, u, s0, mask, edits={p: delta[:, j] for j, p in enumerate(pos)})
        return y, final


def _last_real(x: Tensor, mask: Tensor, prev: Tensor | None) -> Tensor:
    """Each row's input at its last real position ([b, d]); ``prev`` (or zeros) for a row with none."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, idx, torch.full_like(idx, -1)).max(1).values  # [b]
    got = x[torch.arange(x.shape[0], device=x.device), last.clamp(min=0)]
    fallback = torch.zeros_like(got) if prev is None else prev.to(got.dtype)
    return torch.where((last >= 0)[:, None], got, fallback)


def _put(store: list[Tensor], layer: int, value: Tensor) -> None:
    if len(store) > layer:
        store[layer] = value
    else:
        store.append(value)


class ChannelMix(nn.Module):
    """RWKV-4 channel mixing (HF ``RwkvFeedForward``): sigmoid(receptance(xr)) · value(relu(key(xk))²)."""

    def __init__(self, cfg: RWKVConfig):
        super().__init__()
        d = cfg.d_model
        self.time_mix_key = nn.Parameter(torch.zeros(1, 1, d))
        self.time_mix_receptance = nn.Parameter(torch.zeros(1, 1, d))
        self.key = nn.Linear(d, cfg.d_mlp, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(cfg.d_mlp, d, bias=False)
        for name in ("in", "shift", "pre", "post", "value", "r", "gated"):
            setattr(self, f"hook_{name}", HookPoint())

    @staticmethod
    def act(x: Tensor) -> Tensor:
        """relu(x)² (HF ``torch.square(torch.relu(.))``)."""
        return torch.square(torch.relu(x))

    def forward(self, x: Tensor, mask: Tensor | None = None, state: RWKVState | None = None,
                layer: int = 0) -> Tensor:
        continuing = state is not None and len(state.ffn_shift) > layer
        x = self.hook_in(x)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        prev = state.ffn_shift[layer] if continuing else None
        shift = self.hook_shift(_shifted(x, prev))
        xk = x * self.time_mix_key + shift * (1 - self.time_mix_key)
        xr = x * self.time_mix_receptance + shift * (1 - self.time_mix_receptance)
        post = self.hook_post(self.act(self.hook_pre(self.key(xk))))
        value = self.hook_value(self.value(post))
        out = self.hook_gated(torch.sigmoid(self.hook_r(self.receptance(xr))) * value)
        if state is not None:
            _put(state.ffn_shift, layer, x[:, -1] if mask is None else _last_real(x, mask, prev))
        return out


# --------------------------------------------------------------------------------------------
# block and model
# --------------------------------------------------------------------------------------------
class RWKVBlock(nn.Module):
    """resid_mid = resid_pre + 2^-s · TimeMix(ln1(resid_pre)); resid_post = (resid_mid + 2^-s ·
    ChannelMix(ln2(resid_mid))) [/ 2 after every rescale_every-th block], s = ``cfg.rescale_power(layer)``."""

    def __init__(self, cfg: RWKVConfig, layer: int):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln1 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.ssm = TimeMix(cfg)
        self.hook_mixer_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = ChannelMix(cfg)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.scale = 2.0 ** -cfg.rescale_power(layer)
        self.halve = cfg.halves_after(layer)

    def forward(self, resid: Tensor, layer: int, attention_mask: Tensor | None = None,
                state_positions: PositionsLike = None, state: RWKVState | None = None) -> Tensor:
        mask = _left_mask(attention_mask)
        resid = self.hook_resid_pre(resid)
        mixed = self.ssm(self.ln1(resid), mask=mask, state_positions=state_positions, state=state, layer=layer)
        resid = self.hook_resid_mid(resid + self.hook_mixer_out(self._scaled(mixed)))
        ffn = self.hook_mlp_out(self._scaled(self.mlp(self.ln2(resid), mask=mask, state=state, layer=layer)))
        resid = resid + ffn
        return self.hook_resid_post(resid / 2 if self.halve else resid)

    def _scaled(self, x: Tensor) -> Tensor:
        return x if self.scale == 1.0 else x * self.scale


#: Hugging Face RwkvForCausalLM tensor names -> ours
HF_TO_OURS = [
    (r"^rwkv\.embeddings\.weight$", "embed.weight"),
    (r"^rwkv\.blocks\.0\.pre_ln\.(weight|bias)$", r"embed.ln.\1"),
    (r"^rwkv\.blocks\.(\d+)\.(ln1|ln2)\.(weight|bias)$", r"blocks.\1.\2.\3"),
    (r"^rwkv\.blocks\.(\d+)\.attention\.(.+)$", r"blocks.\1.ssm.\2"),
    (r"^rwkv\.blocks\.(\d+)\.feed_forward\.(.+)$", r"blocks.\1.mlp.\2"),
    (r"^rwkv\.ln_out\.(weight|bias)$", r"ln_final.\1"),
    (r"^head\.weight$", "unembed.weight"),
]
#: ours -> Hugging Face (for :meth:`HookedRWKV.save_pretrained`)
OURS_TO_HF = [
    (r"^embed\.weight$", "rwkv.embeddings.weight"),
    (r"^embed\.ln\.(weight|bias)$", r"rwkv.blocks.0.pre_ln.\1"),
    (r"^blocks\.(\d+)\.(ln1|ln2)\.(weight|bias)$", r"rwkv.blocks.\1.\2.\3"),
    (r"^blocks\.(\d+)\.ssm\.(.+)$", r"rwkv.blocks.\1.attention.\2"),
    (r"^blocks\.(\d+)\.mlp\.(.+)$", r"rwkv.blocks.\1.feed_forward.\2"),
    (r"^ln_final\.(weight|bias)$", r"rwkv.ln_out.\1"),
    (r"^unembed\.weight$", "head.weight"),
]


class HookedRWKV(HookedSSM):
    """An RWKV-4 language model whose every hidden state is a TransformerLens hook (see the module docstring).

    The forward, ``run_with_cache`` / ``run_with_hooks``, ``stop_at_layer`` / ``start_at_layer`` (the residual
    entering a block: for block 0 that is ``hook_embed``, after the embedding LayerNorm), tokens and ``generate``
    are HookedSSM's; generation carries an :class:`RWKVState`. Load with :func:`interp.load` (an in-memory
    ``RwkvForCausalLM`` or a folder it saved) or :meth:`from_pretrained`.
    """

    state_class = RWKVState

    def __init__(self, cfg: RWKVConfig, tokenizer: object | None = None):
        super(HookedSSM, self).__init__()  # HookedRootModule's, not HookedSSM's (the blocks differ)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = NormedEmbedding(cfg.d_vocab, cfg.d_model, cfg.norm_eps)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([RWKVBlock(cfg, i) for i in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg.d_model, cfg.final_norm_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.setup()
        if cfg.device is not None:
            self.to(cfg.device)
        cfg.device = str(self.device)

    # --- loading and saving -----------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> "HookedRWKV":
        """Load a Hugging Face ``RwkvForCausalLM`` checkpoint (hub id or a folder written by ``save_pretrained``),
        safetensors only, with its tokenizer. The folder's weights are taken as saved (not rescaled)."""
        from transformers import AutoConfig

        from . import loading

        folder = loading.resolve_checkpoint(name_or_path)
        raw = loading.read_config(folder)
        if raw.get("model_type") not in RWKV_MODEL_TYPES:
            raise loading.CheckpointError(f"{folder}/config.json: model_type {raw.get('model_type')!r} is not an "
                                          f"RWKV model ({', '.join(RWKV_MODEL_TYPES)})")
        loading.check_model_size(raw, folder / "config.json")
        cfg = RWKVConfig.from_hf(AutoConfig.from_pretrained(str(folder)))
        for k, v in raw.get("interp", {}).items():
            if k in ("name", "default_prepend_bos", "extra"):
                setattr(cfg, k, v)
        model = cls(cfg, tokenizer=loading.load_tokenizer(folder))
        loading.load_ssm_state(model, loading.read_safetensors(folder), str(folder), rules=HF_TO_OURS)
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_hf_model(cls, hf_model: nn.Module, tokenizer: object | None = None) -> "HookedRWKV":
        """Wrap the weights of an in-memory ``RwkvForCausalLM`` (copied). HF rescales its output weights in place
        on its first eval forward (``rwkv.layers_are_rescaled``); that is undone on the copy."""
        from . import loading

        cfg = RWKVConfig.from_hf(hf_model.config)
        state = dict(hf_model.state_dict())
        if getattr(getattr(hf_model, "rwkv", None), "layers_are_rescaled", False):
            for i in range(cfg.n_layers):
                for name in (f"rwkv.blocks.{i}.attention.output.weight", f"rwkv.blocks.{i}.feed_forward.value.weight"):
                    state[name] = state[name] * 2.0 ** cfg.rescale_power(i)
        model = cls(cfg, tokenizer=tokenizer)
        loading.load_ssm_state(model, state, type(hf_model).__name__, rules=HF_TO_OURS)
        p = next(hf_model.parameters())
        return model.to(device=p.device, dtype=p.dtype).eval()

    def save_pretrained(self, folder: str) -> None:
        """Write a Hugging Face ``RwkvForCausalLM`` checkpoint (safetensors) that this class and ``transformers``
        load, with the tokenizer and the checksums every load verifies."""
        from transformers import RwkvForCausalLM

        from . import loading

        hf = RwkvForCausalLM(self.cfg.to_hf())
        hf.load_state_dict(loading.hf_to_ours(self.state_dict(), OURS_TO_HF), strict=True)
        hf.save_pretrained(folder)
        loading.write_model_checksums(Path(folder), getattr(self, "tokenizer", None))

    @property
    def W_E(self) -> Tensor:
        """The embedding matrix [vocab, d_model], before the embedding LayerNorm (``hook_embed`` is after it)."""
        return self.embed.weight

    # --- decoding ---------------------------------------------------------------------------
    def decoding_states(self, tokens: Tensor, positions: list[int]) -> dict[int, RWKVState | None]:
        """{p: the decoding state after reading ``tokens[:, :p]``} (None for p = 0), one forward per position."""
        return self._states_by_forwards(tokens, positions)

    def _meta_twins(self) -> list["HookedRWKV"]:
        with torch.device("meta"):
            return [HookedRWKV(replace(self.cfg, device="meta"))]


__all__ = ["HookedRWKV", "RWKVConfig", "RWKVState", "wkv_scan", "MAX_INIT", "HF_TO_OURS"]
