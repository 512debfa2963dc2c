"""Implicit attention of an RWKV-4 time-mixing layer: the exact token-to-token weights of its WKV recurrence.

Pure functions on the cached k, w, u of one layer (``b`` batch, ``L`` positions, ``C`` channels = d_att)::

    k [b, L, C] (ssm.hook_k)   w [b, L, C] (ssm.hook_decay, log-space, < 0)   u [b, L, C] (ssm.hook_first)

The recurrence (:func:`interp.hooks.rwkv.wkv_scan`) a_t = e^{w_t} a_{t-1} + e^{k_t} v_t, b_t the same without v,
wkv_i = (a_{i-1} + e^{u_i + k_i} v_i) / (b_{i-1} + e^{u_i + k_i}), unrolls per channel c into

    wkv_i[c] = Σ_{j <= i} α[c, i, j] v_j[c],
    α[c, i, j] = exp(ℓ[c, i, j]) / Z_i[c],   Z_i[c] = Σ_{j <= i} exp(ℓ[c, i, j]),
    ℓ[c, i, j] = k_j[c] + Σ_{s=j+1}^{i-1} w_s[c]   (j < i;  = w_c (i - 1 - j) + k_j[c] for HF's constant decay)
    ℓ[c, i, i] = u_i[c] + k_i[c]                   (the bonus on the diagonal)

so each row α[c, i, :] is a softmax over the causal positions: computed as one (max-subtracted), exact to float
rounding, weights in [0, 1] summing to 1. The sums of w are differences of a float64 cumulative sum. The formula
holds for a forward from the zero state without padding (a forward continuing from a decoding state adds the
stored state's share; a masked position is skipped by the recurrence, not by these weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.positions import check_index, check_indices, check_layer
from interp.hooks.tokens import as_tokens

__all__ = ["RWKV_HOOKS", "RWKVParameters", "rwkv_parameters", "rwkv_logits", "rwkv_attention",
           "rwkv_attention_reduced", "reconstruct_wkv", "rwkv_map", "rwkv_layer_maps"]

#: the time-mix hooks the formula reads (``blocks.{i}.ssm.<hook>``)
RWKV_HOOKS = ("hook_k", "hook_v", "hook_decay", "hook_first", "hook_y")
_CHUNK_FLOATS = 2**24  # channels per chunk of the reduced maps: about this many floats of α at once


@dataclass(frozen=True)
class RWKVParameters:
    """The WKV inputs and output of one RWKV time-mixing layer on a batch.

    Attributes:
        k, v: [b, L, C] keys and values (``ssm.hook_k`` / ``hook_v``).
        w: [b, L, C] log-space decay (``ssm.hook_decay``, -exp(time_decay)).
        u: [b, L, C] the bonus of the current token (``ssm.hook_first``, time_first).
        y: [b, L, C] the WKV output (``ssm.hook_y``).
    """

    k: Tensor
    v: Tensor
    w: Tensor
    u: Tensor
    y: Tensor


def _is_rwkv(model: Any) -> bool:
    return getattr(getattr(model, "cfg", None), "family", None) == "rwkv"


def rwkv_parameters(model: Any, tokens: Any, *, layer: int) -> RWKVParameters:
    """k, v, w, u, wkv of ``layer`` from a hooked run on ``tokens`` (a batch [b, L] is fine); the forward stops
    after ``layer``."""
    from .methods import MethodNotApplicable

    if not _is_rwkv(model):
        raise MethodNotApplicable("rwkv_parameters needs an RWKV model (interp.hooks.rwkv.HookedRWKV)")
    tokens = as_tokens(model, tokens)
    layer = check_layer(model, layer)
    names = {h: f"blocks.{layer}.ssm.{h}" for h in RWKV_HOOKS}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(names.values()), stop_at_layer=layer + 1)
    c = {h[5:]: cache[n] for h, n in names.items()}
    return RWKVParameters(k=c["k"], v=c["v"], w=c["decay"], u=c["first"], y=c["y"])


def rwkv_logits(k: Tensor, w: Tensor, u: Tensor, channels: Sequence[int] | None = None) -> Tensor:
    """ℓ [b, n, L, L] (float32; -inf above the diagonal) of the channels ``channels`` (default all)."""
    if channels is not None:
        idx = torch.as_tensor(list(channels), device=k.device)
        k, w, u = k[..., idx], w[..., idx], u[..., idx]
    b, L, C = k.shape
    W = torch.cumsum(w.double(), dim=1)  # W_t = Σ_{s <= t} w_s
    W_prev = torch.cat([torch.zeros_like(W[:, :1]), W[:, :-1]], dim=1)  # W_{i-1}
    # Σ_{s=j+1}^{i-1} w_s = W_{i-1} - W_j  (j < i)
    decay = (W_prev.transpose(1, 2)[:, :, :, None] - W.transpose(1, 2)[:, :, None, :])  # [b, C, i, j]
    logits = (decay + k.double().transpose(1, 2)[:, :, None, :]).float()
    i = torch.arange(L, device=k.device)
    diag = (u.float() + k.float()).transpose(1, 2)  # [b, C, L]
    logits = logits.masked_fill(i[None, :] > i[:, None], float("-inf"))  # j > i
    logits[:, :, i, i] = diag
    return logits


def rwkv_attention(k: Tensor, w: Tensor, u: Tensor, channels: Sequence[int] | None = None) -> Tensor:
    """α [b, n, L, L] per channel (default every channel): softmax over j of :func:`rwkv_logits`."""
    return torch.softmax(rwkv_logits(k, w, u, channels), dim=-1)


def reconstruct_wkv(alpha: Tensor, v: Tensor, channels: Sequence[int] | None = None) -> Tensor:
    """Σ_j α[c, i, j] v_j[c]: [b, L, n] from α [b, n, L, L] and v [b, L, C] (its ``channels``)."""
    if channels is not None:
        v = v[..., list(channels)]
    return torch.einsum("bcij,bjc->bic", alpha, v.float())


def rwkv_attention_reduced(k: Tensor, w: Tensor, u: Tensor, aggregate: str = "mean_abs",
                           channels: Sequence[int] | None = None) -> Tensor:
    """α reduced over channels ("mean", "mean_abs" — the same, α >= 0 —, or "max"): [b, L, L], built a chunk of
    channels at a time (about 2^24 floats of α in flight)."""
    if aggregate not in ("mean", "mean_abs", "max"):
        raise ValueError(f"aggregate must be 'mean', 'mean_abs' or 'max', got {aggregate!r}")
    b, L, C = k.shape
    chans = list(range(C)) if channels is None else list(channels)
    step = max(1, _CHUNK_FLOATS // max(1, b * L * L))
    out = None
    for s in range(0, len(chans), step):
        a = rwkv_attention(k, w, u, chans[s:s + step])
        part = a.amax(1) if aggregate == "max" else a.sum(1)
        out = part if out is None else (torch.maximum(out, part) if aggregate == "max" else out + part)
    return out if aggregate == "max" else out / len(chans)


def rwkv_map(model: Any, tokens: Any, *, layer: int, aggregate: str | int = "mean_abs",
             heads: Sequence[int] | None = None, k: int | None = None) -> Tensor:
    """The implicit attention of RWKV layer ``layer`` on ``tokens``: [b, L, L] reduced over channels (``aggregate``
    "mean" / "mean_abs" / "max", "topk": mean over the ``k`` channels (default 8) with the most off-diagonal
    mass, an int: that channel), or [b, n, L, L] per channel (``aggregate="none"``); ``heads``: the channels to
    use. What ``interaction_map(model, tokens, layer=layer, method="rwkv")`` returns."""
    p = rwkv_parameters(model, tokens, layer=layer)
    C = p.k.shape[-1]
    if heads is not None:
        heads = check_indices(heads, C, "heads", of=f"{C} channels")
    if isinstance(aggregate, int):
        heads, aggregate = [check_index(aggregate, C, "aggregate", of=f"{C} channels")], "mean"
    if aggregate == "topk":
        chans = list(range(C)) if heads is None else list(heads)
        mass = torch.stack([(rwkv_attention(p.k, p.w, p.u, [c]).sum((0, 1)).tril(-1)).sum() for c in chans])
        heads, aggregate = [chans[i] for i in mass.topk(min(k or 8, len(chans))).indices.tolist()], "mean"
    if aggregate == "none":
        return rwkv_attention(p.k, p.w, p.u, heads)
    return rwkv_attention_reduced(p.k, p.w, p.u, aggregate, heads)


def rwkv_layer_maps(model: Any, tokens: Tensor, *, positions: list[int] | None = None,
                    layers: Sequence[int] | None = None) -> list[Tensor]:
    """The channel-mean α [L, L] (or its rows ``positions``) of every layer (or of ``layers``) for one sequence
    ``tokens`` [1, L], from one cached forward (the registry's per-layer maps of the "rwkv" method)."""
    layers = list(range(int(model.cfg.n_layers))) if layers is None else list(layers)
    names = [f"blocks.{l}.ssm.{h}" for l in layers for h in ("hook_k", "hook_decay", "hook_first")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
        out = []
        for l in layers:
            kk, w, u = (cache[f"blocks.{l}.ssm.{h}"] for h in ("hook_k", "hook_decay", "hook_first"))
            m = rwkv_attention_reduced(kk, w, u, "mean")[0]
            out.append(m if positions is None else m[positions])
    return out

