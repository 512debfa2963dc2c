"""Exact implicit attention of a Gated DeltaNet layer (hooks/deltanet.py; OLMo-Hybrid's linear-attention layers).

Per value head, with M_s = α_s (I − β_s k_s k_sᵀ) (α_s = exp g_s) and the scaled query q̃_i = q_i / √d_k, the
recurrence h_t = M_t h_{t−1} + β_t k_t v_tᵀ, o_t = h_tᵀ q̃_t (HF ``torch_recurrent_gated_delta_rule``: decay,
then the delta update, then the read-out) unrolls, from a zero state, to

    o_i = Σ_{j ≤ i} A[i, j] v_j,     A[i, j] = β_j k_jᵀ (M_{j+1} M_{j+2} ⋯ M_i) q̃_i

(each M_s is symmetric, so the transposes of h's recurrence drop). A depends on q, k, β, g only, so o is linear in
v: A is the output of the layer's own rule with v replaced by the identity (v_j = e_j ∈ R^L).
:func:`delta_attention` computes it that way with the chunked UT / WY form (:func:`interp.hooks.deltanet.
chunk_delta_rule`): the L × L identity as values, a state of d_k × L per head, O(L² · d_k) time and O(L²) memory
per head, never a d_k × d_k product per pair. :func:`delta_attention_direct` is the reference: for every row i at
once it walks j = L−1 .. 0, reads A[i, j] = β_j k_jᵀ w_i and applies w_i ← M_j w_i (rank-one, O(d_k)).

The map reconstructs ``hook_y`` (the mixer's output before the gated RMSNorm) exactly:
``reconstruct_delta_y(A, v) == hook_y``. The gated norm, the output gate and o_proj act per position (they mix no
tokens); the short conv before q, k, v mixes the d_conv − 1 previous positions into each and is not part of A
(as the conv is not part of Mamba's hidden attention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.deltanet import chunk_delta_rule
from interp.hooks.tokens import as_tokens

__all__ = ["DELTA_HOOKS", "DeltaNetParameters", "deltanet_parameters", "delta_attention", "delta_attention_direct",
           "reconstruct_delta_y", "delta_layer_maps"]

#: the hooks a Gated DeltaNet layer's map reads
DELTA_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_beta", "hook_decay", "hook_y")


@dataclass
class DeltaNetParameters:
    """A Gated DeltaNet layer's recurrence inputs from one forward, on the value heads: q (scaled by 1/√d_k) and k
    [b, L, H_v, d_k] (query / key heads repeated as HF does), v [b, L, H_v, d_v], beta and g [b, L, H_v]
    (float32), y = ``hook_y`` [b, L, H_v, d_v]."""

    q: Tensor
    k: Tensor
    v: Tensor
    beta: Tensor
    g: Tensor
    y: Tensor


def _is_delta_layer(model: Any, layer: int) -> bool:
    types = getattr(getattr(model, "cfg", None), "layer_types", None)
    return isinstance(types, list) and types[layer] == "gated_deltanet"


def _parameters_from_cache(model: Any, cache: Any, layer: int) -> DeltaNetParameters:
    c = lambda h: cache[f"blocks.{layer}.ssm.{h}"]  # noqa: E731
    q, k = model.blocks[layer].ssm.heads(c("hook_q").float(), c("hook_k").float())
    return DeltaNetParameters(q=q, k=k, v=c("hook_v").float(), beta=c("hook_beta").float(),
                              g=c("hook_decay").float(), y=c("hook_y"))


def deltanet_parameters(model: Any, tokens: Any, *, layer: int) -> DeltaNetParameters:
    """q, k, v, β, g and y of Gated DeltaNet layer ``layer`` on ``tokens`` (one forward up to that layer)."""
    if not _is_delta_layer(model, layer):
        raise ValueError(f"layer {layer} is not a Gated DeltaNet layer (cfg.layer_types: "
                         f"{getattr(model.cfg, 'layer_types', None)})")
    tokens = as_tokens(model, tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.ssm.{h}" for h in DELTA_HOOKS],
                                        stop_at_layer=layer + 1)
    return _parameters_from_cache(model, cache, layer)


def delta_attention(q: Tensor, k: Tensor, g: Tensor, beta: Tensor, *, heads: Any = None,
                    chunk_size: int = 64) -> Tensor:
    """A [b, H, L, L] (rows = query i, columns = source j, zero above the diagonal) of q (scaled), k [b, L, H,
    d_k], g, beta [b, L, H]: the rule's output with the identity as values, by the chunked UT / WY form, one head at
    a time (peak memory O(b · L²) besides the inputs). ``heads``: a subset of heads (default all)."""
    b, L, H, _ = k.shape
    hs = list(range(H)) if heads is None else list(heads)
    eye = torch.eye(L, dtype=torch.float32, device=k.device)[None, :, None].expand(b, L, 1, L)
    out = []
    for h in hs:
        sl = slice(h, h + 1)
        o, _ = chunk_delta_rule(q[:, :, sl], k[:, :, sl], eye, g[:, :, sl], beta[:, :, sl], chunk_size=chunk_size)
        out.append(o[:, :, 0].tril())  # [b, L, L]; above the diagonal is zero up to rounding
    return torch.stack(out, dim=1)


def delta_attention_direct(q: Tensor, k: Tensor, g: Tensor, beta: Tensor) -> Tensor:
    """The reference for :func:`delta_attention`: A[i, j] = β_j k_jᵀ (M_{j+1} ⋯ M_i) q̃_i straight from the
    definition, every row at once, walking j from the last position down (w_i ← M_j w_i, M_j = α_j (I − β_j k_j
    k_jᵀ)); O(L² · d_k) in a Python loop of L steps. Same arguments (no head subset), [b, H, L, L]."""
    b, L, H, dk = k.shape
    q, k, g, beta = q.double(), k.double(), g.double(), beta.double()
    w = q.permute(0, 2, 1, 3).clone()  # [b, H, L(rows i), d_k]: w_i = M_{j+1} ⋯ M_i q̃_i once j is reached
    A = torch.zeros(b, H, L, L, dtype=torch.float64, device=k.device)
    rows = torch.arange(L, device=k.device)
    for j in range(L - 1, -1, -1):
        kj, bj, aj = k[:, j], beta[:, j], g[:, j].exp()  # [b, H, d_k], [b, H], [b, H]
        live = (rows >= j)[None, None, :, None]  # rows i ≥ j
        A[:, :, :, j] = torch.where(live[..., 0], bj[..., None] * (w * kj[:, :, None]).sum(-1), 0.0)
        proj = (w * kj[:, :, None]).sum(-1, keepdim=True)  # k_jᵀ w_i
        w = torch.where(live, aj[..., None, None] * (w - bj[..., None, None] * kj[:, :, None] * proj), w)
    return A.float()


def reconstruct_delta_y(A: Tensor, v: Tensor) -> Tensor:
    """Σ_j A[i, j] v_j: A [b, H, L, L], v [b, L, H, d_v] -> [b, L, H, d_v] (equal to ``hook_y``)."""
    return torch.einsum("bhij,bjhd->bihd", A.float(), v.float())


def delta_layer_maps(model: Any, tokens: Tensor, *, positions: list[int] | None = None,
                     layers: list[int] | None = None) -> list[Tensor]:
    """The head mean of |A| [L, L] (or its ``positions`` rows) of each Gated DeltaNet layer of ``layers`` on one
    sequence ``tokens`` [1, L], from one cached forward (the map registry's "delta" method)."""
    layers = [i for i, t in enumerate(model.cfg.layer_types) if t == "gated_deltanet"] if layers is None \
        else list(layers)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{l}.ssm.{h}" for l in layers
                                                              for h in DELTA_HOOKS])
        out = []
        for layer in layers:
            p = _parameters_from_cache(model, cache, layer)
            m = delta_attention(p.q, p.k, p.g, p.beta, chunk_size=model.blocks[layer].ssm.cfg.chunk_size)
            m = m.abs().mean(1)[0]
            out.append(m if positions is None else m[positions])
    return out
