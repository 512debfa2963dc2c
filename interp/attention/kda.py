"""Exact implicit attention of a Kimi Delta Attention layer (hooks/kda.py; Kimi-Linear's linear-attention layers).

Per head, with M_s = (I − β_s k_s k_sᵀ) Diag(α_s) (α_s = exp g_s ∈ (0, 1]^{d_k}, the per-channel decay) and the
scaled query q̃_i = q_i / √d_k, the recurrence h_t = M_t h_{t−1} + β_t k_t v_tᵀ, o_t = h_tᵀ q̃_t (HF
``recurrent_kimi_delta_attention``: the decay first, then the delta update, then the read-out) unrolls, from a zero
state, to

    o_i = Σ_{j ≤ i} A[i, j] v_j,     A[i, j] = β_j k_jᵀ M_{j+1}ᵀ M_{j+2}ᵀ ⋯ M_iᵀ q̃_i,
    M_sᵀ = Diag(α_s) (I − β_s k_s k_sᵀ)

(M_s is no longer symmetric: the decay sits on the other side of the projection). A depends on q, k, β, g only, so
o is linear in v: A is the output of the layer's own chunked rule (:func:`interp.hooks.kda.chunk_kda_rule`) with the
identity as values (v_j = e_j ∈ R^L), O(L² · d_k) time and O(L²) memory per head (plus the chunk's [C, C, d_k]
decays), never a d_k × d_k product per pair. :func:`kda_attention_direct` is the reference from the definition:
the d_k × d_k matrices M_sᵀ multiplied out for every pair (O(L² · d_k³), for tests).

The map reconstructs ``hook_y`` exactly (:func:`~interp.attention.deltanet.reconstruct_delta_y`). The gated norm,
the output gate and o_proj act per position; the short convs before q, k, v mix the d_conv − 1 previous positions
into each and are not part of A (as for Gated DeltaNet).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from interp.hooks.kda import chunk_kda_rule
from interp.hooks.tokens import as_tokens

from .deltanet import DELTA_HOOKS, DeltaNetParameters, _parameters_from_cache, reconstruct_delta_y

__all__ = ["KDA_HOOKS", "kda_parameters", "kda_attention", "kda_attention_direct", "reconstruct_delta_y",
           "kda_layer_maps"]

#: the hooks a KDA layer's map reads (Gated DeltaNet's names; hook_decay is [b, L, H, d_k] here)
KDA_HOOKS = DELTA_HOOKS


def _kda_layers(model: Any) -> list[int]:
    return [i for i, t in enumerate(model.cfg.layer_types) if t == "kda"]


def kda_parameters(model: Any, tokens: Any, *, layer: int) -> DeltaNetParameters:
    """q (scaled), k, v, β, g [b, L, H, d_k] and y of KDA layer ``layer`` on ``tokens`` (one forward up to it)."""
    types = getattr(getattr(model, "cfg", None), "layer_types", None)
    if not isinstance(types, list) or types[layer] != "kda":
        raise ValueError(f"layer {layer} is not a KDA layer (cfg.layer_types: {types})")
    tokens = as_tokens(model, tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.ssm.{h}" for h in KDA_HOOKS],
                                        stop_at_layer=layer + 1)
    return _parameters_from_cache(model, cache, layer)


def kda_attention(q: Tensor, k: Tensor, g: Tensor, beta: Tensor, *, heads: Any = None,
                  chunk_size: int = 64) -> Tensor:
    """A [b, H, L, L] (rows = query i, columns = source j, zero above the diagonal) of q (scaled), k, g [b, L, H,
    d_k], beta [b, L, H]: the chunked rule's output with the identity as values, one head at a time. ``heads``: a
    subset of heads (default all)."""
    b, L, H, _ = k.shape
    hs = list(range(H)) if heads is None else list(heads)
    eye = torch.eye(L, dtype=torch.float32, device=k.device)[None, :, None].expand(b, L, 1, L)
    out = []
    for h in hs:
        sl = slice(h, h + 1)
        o, _ = chunk_kda_rule(q[:, :, sl], k[:, :, sl], eye, g[:, :, sl], beta[:, :, sl], chunk_size=chunk_size)
        out.append(o[:, :, 0].tril())  # [b, L, L]; above the diagonal is zero up to rounding
    return torch.stack(out, dim=1)


def kda_attention_direct(q: Tensor, k: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    """The reference for :func:`kda_attention`, from the definition in float64: for every row i, P = I and j from i
    down to 0: A[i, j] = β_j k_jᵀ P q̃_i, then P ← M_jᵀ P with the dense M_jᵀ = Diag(α_j) (I − β_j k_j k_jᵀ).
    Same arguments, [b, H, L, L]; O(L² · d_k³), for tests."""
    b, L, H, dk = k.shape
    q, k, g, beta = (x.double().transpose(1, 2) for x in (q, k, g, beta))  # [b, H, L, ...]
    eye = torch.eye(dk, dtype=torch.float64, device=k.device)
    Mt = g.exp()[..., :, None] * (eye - beta[..., None, None] * k[..., :, None] * k[..., None, :])  # [b,H,L,dk,dk]
    A = torch.zeros(b, H, L, L, dtype=torch.float64, device=k.device)
    for i in range(L):
        w = q[:, :, i, :, None]  # [b, H, d_k, 1]: P q̃_i with P = M_{j+1}ᵀ ⋯ M_iᵀ
        for j in range(i, -1, -1):
            A[:, :, i, j] = beta[:, :, j] * (k[:, :, j, :, None] * w).sum((-1, -2))
            w = Mt[:, :, j] @ w
    return A.float()


def kda_layer_maps(model: Any, tokens: Tensor, *, positions: list[int] | None = None,
                   layers: list[int] | None = None) -> list[Tensor]:
    """The head mean of |A| [L, L] (or its ``positions`` rows) of each KDA layer of ``layers`` on one sequence
    ``tokens`` [1, L], from one cached forward (the map registry's "kda" method)."""
    layers = _kda_layers(model) if layers is None else list(layers)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{l}.ssm.{h}" for l in layers
                                                              for h in KDA_HOOKS])
        out = []
        for layer in layers:
            p = _parameters_from_cache(model, cache, layer)
            m = kda_attention(p.q, p.k, p.g, p.beta, chunk_size=model.blocks[layer].ssm.cfg.chunk_size)
            m = m.abs().mean(1)[0]
            out.append(m if positions is None else m[positions])
    return out
