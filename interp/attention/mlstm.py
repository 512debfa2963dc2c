"""Exact implicit attention of an mLSTM layer (hooks/mlstm.py; xLSTM's blocks).

Per head, from the zero state (C̃, ñ, m all 0 before position 0), with the scaled query q̃_i = q_i / √d_k, the input
gate ĩ_j (log-space, soft-capped), the log forget gate log f_s and b_i = Σ_{s ≤ i} log f_s, the recurrence of
:mod:`interp.hooks.mlstm` unrolls to

    m_i = max(b_i, max_{j ≤ i} b_i − b_j + ĩ_j)              (the stabiliser: m_t = max(log f_t + m_{t−1}, ĩ_t))
    S[i, j] = (q̃_i · k_j) · exp(b_i − b_j + ĩ_j − m_i)        (j ≤ i; 0 above the diagonal)
    d_i = max(|Σ_j S[i, j]|, exp(−m_i)) + eps                 (the forward's normaliser, ``hook_normalizer``)
    h_i = Σ_j A[i, j] v_j,     A[i, j] = S[i, j] / d_i

so h (``hook_y``, the mixer's output before the multi-head LayerNorm) is exactly A applied to v: A depends on q, k
and the gates only. The normaliser is part of A (it depends on every k_j through ñ_i = Σ_j e^{…} k_j), as the
softmax denominator is part of a softmax pattern. The multi-head LayerNorm, the output gate and out_proj act per
position (they mix no tokens). :func:`mlstm_attention` builds A from q, k and the gates (its own normaliser,
O(L² · d_k) per head); ``mlstm_attention(..., normalizer=d)`` uses the forward's (``hook_normalizer``) instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.tokens import as_tokens

from .ops import reduce_channels

__all__ = ["MLSTM_HOOKS", "MLSTMParameters", "mlstm_parameters", "mlstm_attention", "reconstruct_mlstm_y",
           "mlstm_map", "mlstm_layer_maps"]

#: the hooks an mLSTM layer's map reads
MLSTM_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_input_gate", "hook_decay", "hook_normalizer", "hook_y")


@dataclass
class MLSTMParameters:
    """An mLSTM layer's recurrence inputs from one forward: q (scaled by 1/√d_k) and k [b, L, H, d_k], v [b, L, H,
    d_v], the input gate i (ĩ) and log f [b, L, H] (float32), the forward's normaliser [b, L, H] and y = ``hook_y``
    [b, L, H, d_v]; ``eps`` the normaliser's."""

    q: Tensor
    k: Tensor
    v: Tensor
    i: Tensor
    logf: Tensor
    normalizer: Tensor
    y: Tensor
    eps: float


def _is_mlstm_layer(model: Any, layer: int) -> bool:
    types = getattr(getattr(model, "cfg", None), "layer_types", None)
    return isinstance(types, list) and types[layer] == "mlstm"


def _parameters_from_cache(model: Any, cache: Any, layer: int) -> MLSTMParameters:
    c = lambda h: cache[f"blocks.{layer}.ssm.{h}"]  # noqa: E731
    cfg = model.blocks[layer].ssm.cfg
    return MLSTMParameters(q=c("hook_q").float() * cfg.d_k ** -0.5, k=c("hook_k").float(), v=c("hook_v").float(),
                           i=c("hook_input_gate").float(), logf=c("hook_decay").float(),
                           normalizer=c("hook_normalizer").float(), y=c("hook_y"), eps=cfg.eps)


def mlstm_parameters(model: Any, tokens: Any, *, layer: int) -> MLSTMParameters:
    """q, k, v, ĩ, log f, the normaliser and y of mLSTM layer ``layer`` on ``tokens`` (one forward up to it)."""
    if not _is_mlstm_layer(model, layer):
        raise ValueError(f"layer {layer} is not an mLSTM layer (cfg.layer_types: "
                         f"{getattr(model.cfg, 'layer_types', None)})")
    tokens = as_tokens(model, tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.ssm.{h}" for h in MLSTM_HOOKS],
                                        stop_at_layer=layer + 1)
    return _parameters_from_cache(model, cache, layer)


def mlstm_attention(q: Tensor, k: Tensor, i: Tensor, logf: Tensor, *, eps: float = 1e-6,
                    normalizer: Tensor | None = None, heads: Any = None) -> Tensor:
    """A [b, H, L, L] (rows = query i, columns = source j, zero above the diagonal) of q (scaled), k [b, L, H, d_k],
    the input gate ĩ and log f [b, L, H], from the zero state: S[i, j] / d_i as in the module docstring. The
    normaliser d is computed from S (``eps`` the forward's), or taken from ``normalizer`` [b, L, H] (the forward's
    ``hook_normalizer``). ``heads``: a subset of heads (default all)."""
    hs = slice(None) if heads is None else list(heads)
    q, k, i, logf = (x.float()[:, :, hs].transpose(1, 2) for x in (q, k, i, logf))  # [b, H', L, ...]
    L = q.shape[2]
    b_cum = logf.cumsum(-1)  # [b, H', L]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = (b_cum[..., :, None] - b_cum[..., None, :] + i[..., None, :]).masked_fill(~causal, float("-inf"))
    m = torch.maximum(b_cum, log_d.amax(-1))  # [b, H', L]: the stabiliser m_i
    S = (q @ k.transpose(-1, -2)) * torch.exp(log_d - m[..., None])  # [b, H', L, L]
    if normalizer is None:
        d = torch.maximum(S.sum(-1).abs(), torch.exp(-m)) + eps
    else:
        d = normalizer.float()[:, :, hs].transpose(1, 2)
    return S / d[..., None]


def reconstruct_mlstm_y(A: Tensor, v: Tensor) -> Tensor:
    """Σ_j A[i, j] v_j: A [b, H, L, L], v [b, L, H, d_v] -> [b, L, H, d_v] (equal to ``hook_y``)."""
    return torch.einsum("bhij,bjhd->bihd", A.float(), v.float())


def mlstm_map(model: Any, tokens: Any, *, layer: int, aggregate: str | int = "mean_abs", heads: Any = None,
              k: int | None = None) -> Tensor:
    """``interaction_map``'s "mlstm" method: A of layer ``layer`` per head [b, H, L, L] reduced over the heads by
    ``aggregate`` (:func:`interp.attention.ops.reduce_channels`)."""
    p = mlstm_parameters(model, tokens, layer=layer)
    per_head = mlstm_attention(p.q, p.k, p.i, p.logf, eps=p.eps, heads=heads)
    return reduce_channels(per_head, aggregate, k)


def mlstm_layer_maps(model: Any, tokens: Tensor, *, positions: list[int] | None = None,
                     layers: list[int] | None = None) -> list[Tensor]:
    """The head mean of |A| [L, L] (or its ``positions`` rows) of each mLSTM layer of ``layers`` on one sequence
    ``tokens`` [1, L], from one cached forward (the map registry's "mlstm" method)."""
    layers = [i for i, t in enumerate(model.cfg.layer_types) if t == "mlstm"] if layers is None else list(layers)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{l}.ssm.{h}" for l in layers
                                                              for h in MLSTM_HOOKS])
        out = []
        for layer in layers:
            p = _parameters_from_cache(model, cache, layer)
            m = mlstm_attention(p.q, p.k, p.i, p.logf, eps=p.eps).abs().mean(1)[0]
            out.append(m if positions is None else m[positions])
    return out
