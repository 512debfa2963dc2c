"""Pure operations on interaction maps (no model): normalising, reducing channels/heads, rolling layers out.

    normalize(maps, "row")                      # [..., L, L]: |·| / Σ_j |·| per row
    reduce_channels(per_channel, "mean_abs")    # [b, H, L, L] -> [b, L, L]
    rollout([A_0, A_1, ...])                    # ρ = Ã_{n-1} ⋯ Ã_0, Ã = rownorm(I + A), A [b, L, L] or [L, L]

Maps are [..., L(query i), L(source j)]. Used by :func:`interp.attention.interaction_map`, the per-layer
combinations of :mod:`interp.attention.methods` and the views of :mod:`interp.attention.views`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .hidden import REDUCERS

__all__ = ["NORMALIZATIONS", "normalize", "reduce_channels", "rollout"]

NORMALIZATIONS = ("raw", "minmax", "row")


def normalize(maps: Tensor, how: str = "raw", eps: float = 1e-12) -> Tensor:
    """Normalise maps [..., L, L]: "raw" (unchanged), "minmax" (|·| to [0, 1] per map), "row" (|·| / Σ_j |·|)."""
    if how == "raw":
        return maps
    a = maps.abs()
    if how == "minmax":
        lo = a.amin(dim=(-2, -1), keepdim=True)
        hi = a.amax(dim=(-2, -1), keepdim=True)
        return (a - lo) / (hi - lo).clamp_min(eps)
    if how == "row":
        return a / a.sum(-1, keepdim=True).clamp_min(eps)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {how!r}")


def reduce_channels(per_channel: Tensor, aggregate: str | int, k: int | None = None) -> Tensor:
    """[b, H, L, L] -> [b, L, L]: "mean" (signed), "mean_abs", "max" (of |·|), "topk" (mean |·| over the k
    channels with the most mass, default 8), an int (that channel/head), or "none" (unchanged [b, H, L, L])."""
    if isinstance(aggregate, int):
        return per_channel[:, aggregate]
    if aggregate == "none":
        return per_channel
    if aggregate == "topk":
        mass = per_channel.abs().sum((0, 2, 3))
        top = mass.topk(min(k or 8, mass.numel())).indices
        return per_channel[:, top].abs().mean(1)
    if aggregate not in REDUCERS:
        raise ValueError(f"aggregate must be an int or one of mean, mean_abs, max, topk, none; got {aggregate!r}")
    return REDUCERS[aggregate](per_channel.transpose(0, 1))


def rollout(maps: Sequence[Tensor], add_identity: bool = True, row_normalize: bool = True) -> Tensor:
    """Attention rollout ρ = Ã_{n-1} ⋯ Ã_0 with Ã = rownorm(I + A) (A = a layer's map [b, L, L] or [L, L])."""
    rho = None
    for A in maps:
        A = A.float()
        if add_identity:
            A = A + torch.eye(A.shape[-1], device=A.device)
        if row_normalize:
            A = A / A.sum(-1, keepdim=True).clamp_min(1e-12)
        rho = A if rho is None else A @ rho
    if rho is None:
        raise ValueError("rollout needs at least one map")
    return rho
