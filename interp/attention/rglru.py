"""Exact implicit attention of an RG-LRU layer (hooks/rglru.py; RecurrentGemma's recurrent layers), after the
unified implicit attention of Zimerman, Ali and Wolf: per channel it is Mamba-1's hidden attention with N = 1.

Pure functions on the cached activations of one layer (``b`` batch, ``L`` positions, ``d`` channels = d_lru)::

    x [b, L, d] (ssm.hook_x)   i [b, L, d] (ssm.hook_input_gate)   log a [b, L, d] (ssm.hook_decay)

The recurrence h_t = a_t h_{t−1} + m_t i_t x_t (m_t = √(1 − a_t²), 1 at the reset position 0), y_t = h_t, unrolls
from the zero state, per channel c, into

    y_i[c] = Σ_{j ≤ i} α[c, i, j] x_j[c],     α[c, i, j] = (Π_{s=j+1..i} a_s[c]) · m_j[c] · i_j[c]

(:func:`rglru_attention`; the product is exp of a difference of a float64 cumulative sum of log a). α ≥ 0, so the
channel mean is also the mean of |α| ("mean" = "mean_abs").

The conv folded in (the unified form): x = conv1d(v) with v = linear_x(hook_in) [b, L, d], taps w [d, K] (tap
K − 1 on the current input) and bias b_conv [d], so

    y_i[c] = Σ_l α̂[c, i, l] v_l[c] + bias_i[c],     α̂[c] = α[c] · M_conv[c],     bias_i[c] = b_conv[c] Σ_j α[c, i, j]

(M_conv the causal Toeplitz matrix of :func:`interp.attention.unified.conv_toeplitz`; :func:`rglru_conv_attention`,
:func:`rglru_conv_bias`). The gate branch (y · GeLU(linear_y(x))) and linear_out act per position and mix no
tokens. The formulas hold for a forward from the zero state without padding (a continuation adds the stored
state's share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.positions import check_index, check_indices, check_layer
from interp.hooks.rglru import input_multiplier
from interp.hooks.tokens import as_tokens

from .unified import _conv_right

__all__ = ["RGLRU_HOOKS", "RGLRUParameters", "rglru_parameters", "rglru_gate", "rglru_attention",
           "reconstruct_rglru_y", "rglru_attention_reduced", "rglru_conv_attention", "rglru_conv_bias",
           "rglru_map", "rglru_layer_maps"]

#: the hooks the formula reads (``blocks.{i}.ssm.<hook>``)
RGLRU_HOOKS = ("hook_in", "hook_x", "hook_input_gate", "hook_decay", "hook_y")
_CHUNK_FLOATS = 2**24  # channels per chunk of the reduced maps: about this many floats of α at once


@dataclass(frozen=True)
class RGLRUParameters:
    """One RG-LRU layer's recurrence on a batch (float32): x = ``hook_x`` [b, L, d], gate = m · i [b, L, d] (the
    normalised input gate, :func:`rglru_gate`), log_a = ``hook_decay`` [b, L, d], y = ``hook_y`` [b, L, d]; the
    conv's input v = linear_x(``hook_in``) [b, L, d], its taps conv_weight [d, K] and conv_bias [d]."""

    x: Tensor
    gate: Tensor
    log_a: Tensor
    y: Tensor
    v: Tensor
    conv_weight: Tensor
    conv_bias: Tensor


def _is_rglru_layer(model: Any, layer: int) -> bool:
    types = getattr(getattr(model, "cfg", None), "layer_types", None)
    return isinstance(types, list) and types[layer] == "rglru"


def rglru_gate(log_a: Tensor, input_gate: Tensor) -> Tensor:
    """m · i [b, L, d] of a forward from the zero state: m = √(1 − a²) (:func:`interp.hooks.rglru.input_multiplier`,
    the mixer's own), 1 at position 0 (the reset)."""
    reset = torch.zeros(log_a.shape[:2], dtype=torch.bool, device=log_a.device)
    reset[:, :1] = True
    return input_multiplier(log_a.float(), reset) * input_gate.float()


def _parameters_from_cache(model: Any, cache: Any, layer: int) -> RGLRUParameters:
    c = lambda h: cache[f"blocks.{layer}.ssm.{h}"]  # noqa: E731
    mixer = model.blocks[layer].ssm
    with torch.no_grad():
        v = mixer.linear_x(c("hook_in")).float()
    conv = mixer.conv_1d
    return RGLRUParameters(x=c("hook_x").float(), gate=rglru_gate(c("hook_decay"), c("hook_input_gate")),
                           log_a=c("hook_decay").float(), y=c("hook_y").float(), v=v,
                           conv_weight=conv.weight.detach()[:, 0].float(),
                           conv_bias=conv.bias.detach().float() if conv.bias is not None
                           else torch.zeros(conv.weight.shape[0], device=v.device))


def rglru_parameters(model: Any, tokens: Any, *, layer: int) -> RGLRUParameters:
    """x, gate, log a, y and the conv's input / taps / bias of RG-LRU layer ``layer`` on ``tokens`` (a batch [b, L]
    is fine; one forward up to that layer)."""
    from .methods import MethodNotApplicable

    layer = check_layer(model, layer)
    if not _is_rglru_layer(model, layer):
        raise MethodNotApplicable(f"layer {layer} is not an RG-LRU layer (cfg.layer_types: "
                                  f"{getattr(model.cfg, 'layer_types', None)})")
    tokens = as_tokens(model, tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.ssm.{h}" for h in RGLRU_HOOKS],
                                        stop_at_layer=layer + 1)
    return _parameters_from_cache(model, cache, layer)


def rglru_attention(log_a: Tensor, gate: Tensor, channels: Sequence[int] | None = None) -> Tensor:
    """α [b, n, L, L] (rows = query i, columns = source j, zero above the diagonal) of the channels ``channels``
    (default all): α[c, i, j] = exp(Σ_{s=j+1..i} log a_s[c]) · gate_j[c]; float32."""
    if channels is not None:
        idx = torch.as_tensor(list(channels), device=log_a.device)
        log_a, gate = log_a[..., idx], gate[..., idx]
    L = log_a.shape[1]
    cs = torch.cumsum(log_a.double(), dim=1).transpose(1, 2)  # [b, n, L]: Σ_{s ≤ t} log a_s
    decay = cs[:, :, :, None] - cs[:, :, None, :]  # [b, n, i, j]: Σ_{s=j+1..i} log a_s (i ≥ j)
    i = torch.arange(L, device=log_a.device)
    decay = decay.masked_fill(i[None, :] > i[:, None], float("-inf"))  # j > i
    return (decay.exp() * gate.double().transpose(1, 2)[:, :, None, :]).float()


def reconstruct_rglru_y(alpha: Tensor, x: Tensor, channels: Sequence[int] | None = None) -> Tensor:
    """Σ_j α[c, i, j] x_j[c]: [b, L, n] from α [b, n, L, L] and x [b, L, d] (its ``channels``); == ``hook_y``."""
    if channels is not None:
        x = x[..., list(channels)]
    return torch.einsum("bcij,bjc->bic", alpha.float(), x.float())


def rglru_conv_attention(alpha: Tensor, conv_weight: Tensor, channels: Sequence[int] | None = None) -> Tensor:
    """α̂ = α · M_conv [b, n, L, L]: the map from the conv's input v (linear_x's output) to y, per channel;
    ``conv_weight`` [d, K] (its ``channels`` rows are used)."""
    w = conv_weight if channels is None else conv_weight[list(channels)]
    return _conv_right(alpha.float().clone(), w.float())


def rglru_conv_bias(alpha: Tensor, conv_bias: Tensor, channels: Sequence[int] | None = None) -> Tensor:
    """The conv bias's share of y [b, L, n]: bias_i[c] = b_conv[c] · Σ_j α[c, i, j]."""
    bias = conv_bias if channels is None else conv_bias[list(channels)]
    return alpha.float().sum(-1).transpose(1, 2) * bias.float()


def rglru_attention_reduced(log_a: Tensor, gate: Tensor, aggregate: str = "mean_abs",
                            channels: Sequence[int] | None = None) -> Tensor:
    """α reduced over channels ("mean", "mean_abs" — the same, α ≥ 0 —, or "max"): [b, L, L], built a chunk of
    channels at a time (about 2^24 floats of α in flight)."""
    if aggregate not in ("mean", "mean_abs", "max"):
        raise ValueError(f"aggregate must be 'mean', 'mean_abs' or 'max', got {aggregate!r}")
    b, L, C = log_a.shape
    chans = list(range(C)) if channels is None else list(channels)
    step = max(1, _CHUNK_FLOATS // max(1, b * L * L))
    out = None
    for s in range(0, len(chans), step):
        a = rglru_attention(log_a, gate, chans[s:s + step])
        part = a.amax(1) if aggregate == "max" else a.sum(1)
        out = part if out is None else (torch.maximum(out, part) if aggregate == "max" else out + part)
    return out if aggregate == "max" else out / len(chans)


def rglru_map(model: Any, tokens: Any, *, layer: int, aggregate: str | int = "mean_abs",
              heads: Sequence[int] | None = None, k: int | None = None) -> Tensor:
    """The implicit attention α of RG-LRU layer ``layer`` on ``tokens``: [b, L, L] reduced over channels
    (``aggregate`` "mean" / "mean_abs" / "max", "topk": mean over the ``k`` channels (default 8) with the most
    off-diagonal mass, an int: that channel), or [b, n, L, L] per channel (``aggregate="none"``); ``heads``: the
    channels to use. What ``interaction_map(model, tokens, layer=layer, method="rglru")`` returns."""
    p = rglru_parameters(model, tokens, layer=layer)
    C = p.log_a.shape[-1]
    if heads is not None:
        heads = check_indices(heads, C, "heads", of=f"{C} channels")
    if isinstance(aggregate, int):
        heads, aggregate = [check_index(aggregate, C, "aggregate", of=f"{C} channels")], "mean"
    if aggregate == "topk":
        chans = list(range(C)) if heads is None else list(heads)
        mass = torch.stack([rglru_attention(p.log_a, p.gate, [c]).sum((0, 1)).tril(-1).sum() for c in chans])
        heads, aggregate = [chans[i] for i in mass.topk(min(k or 8, len(chans))).indices.tolist()], "mean"
    if aggregate == "none":
        return rglru_attention(p.log_a, p.gate, heads)
    return rglru_attention_reduced(p.log_a, p.gate, aggregate, heads)


def rglru_layer_maps(model: Any, tokens: Tensor, *, positions: list[int] | None = None,
                     layers: Sequence[int] | None = None) -> list[Tensor]:
    """The channel-mean α [L, L] (or its rows ``positions``) of every RG-LRU layer (or of ``layers``) for one
    sequence ``tokens`` [1, L], from one cached forward (the registry's per-layer maps of the "rglru" method)."""
    layers = [i for i, t in enumerate(model.cfg.layer_types) if t == "rglru"] if layers is None else list(layers)
    names = [f"blocks.{l}.ssm.{h}" for l in layers for h in ("hook_decay", "hook_input_gate")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
        out = []
        for l in layers:
            log_a, i = (cache[f"blocks.{l}.ssm.{h}"] for h in ("hook_decay", "hook_input_gate"))
            m = rglru_attention_reduced(log_a.float(), rglru_gate(log_a, i), "mean")[0]
            out.append(m if positions is None else m[positions])
    return out
