"""Hidden attention of selective SSMs (Ali, Zimerman, Wolf): the implicit token-to-token matrix.

Pure functions on the cached SSM parameters, in the heads view of ``interp.hooks.scan``
(b batch, L positions, H heads/channels, G groups, N state):

    dt [b, L, H]   A [H, N] (Mamba-1) or [H] (Mamba-2)   B, C [b, L, G, N]

With S = cumsum(Δ) over positions, for j <= i (0 otherwise)

    α[h, i, j] = Σ_n C_i[n] · exp(A[h, n] (S_i[h] - S_j[h])) · Δ_j[h] · B_j[n]
    y_i[h]     = Σ_j α[h, i, j] u_j[h] + D[h] u_i[h]                       (exact)

Mamba-2 is the case of a scalar A per head: α[h] = (C·Bᵀ) ⊙ exp(A_h (S_i - S_j)) Δ_j, cheap to
build directly. Mamba-1 has one decay per (channel, state): a direct build needs a [H, N, L, L]
tensor, which is never materialised here. Instead, for a block of query rows I starting at k,

    α[h, i, j] = Σ_n (C_i[n] e^{A(S_i - S_k)}) (e^{A(S_k - S_j)} Δ_j B_j[n])   for j < k <= i,

a rank-N matmul whose both factors have exponents <= 0. The right factor is carried from block to
block by multiplying with the decay between anchors (<= 1; no prefix product is ever divided).
Diagonal blocks are built directly. Time O(H·N·L²), memory O(H·N·L + H·T·L).

The channel-reduced functions (:func:`hidden_attention_reduced`, :func:`hidden_attention_rows_reduced`,
:func:`channel_mass`) take ``backend="auto" | "torch" | "numba" | "triton"`` and run where
:func:`interp.attention.backends.choose_backend` decides: the Triton kernels (:mod:`interp.kernels.hidden_attention`)
for CUDA tensors, on the CPU the fused numba kernel of Mamba-1 layers (:mod:`interp.kernels.hidden_attention_cpu`:
the same anchored-block algorithm, each channel's blocks folded into the reduced map without being written to
memory), when installed and no input needs a gradient; otherwise (or with ``backend="torch"``) the PyTorch code
below, the reference the kernels are tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from interp.hooks.scan import expand_groups, segsum
from interp.hooks.positions import check_index, check_indices

from . import backends

Aggregate = str  # "mean" | "mean_abs" | "max" | "none"

AGGREGATES = ("mean", "mean_abs", "max", "none")


# --------------------------------------------------------------------------------------------
# reference: direct construction (small sizes; tests and benchmarks compare against it)
# --------------------------------------------------------------------------------------------
def hidden_attention_direct(dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """α [b, H, L, L] built directly from the per-(head, state) decay tensor [b, H, N, L, L].

    Memory O(H·N·L²): the textbook construction, kept as the reference. Use
    :func:`hidden_attention` or :func:`hidden_attention_reduced` for real sizes.
    """
    b, L, H = dt.shape
    Bh, Ch = expand_groups(B.float(), H), expand_groups(C.float(), H)  # [b, L, H, N]
    A2 = A.float() if A.dim() == 2 else A.float()[:, None].expand(H, Bh.shape[-1])
    log_a = dt.float().transpose(1, 2)[:, :, None, :] * A2[None, :, :, None]  # [b, H, N, L]
    decay = torch.exp(segsum(log_a))  # [b, H, N, L(i), L(j)], masked before exp
    alpha = torch.einsum("bihn,bhnij,bjhn->bhij", Ch, decay, Bh)
    return alpha * dt.float().transpose(1, 2)[:, :, None, :]


def reconstruct_y(alpha: Tensor, u: Tensor, D: Tensor) -> Tensor:
    """y [b, L, H, P] = Σ_j α[b, h, i, j] u_j + D u_i, from α [b, H, L, L] and u [b, L, H, P]."""
    return torch.einsum("bhij,bjhp->bihp", alpha, u.float()) + D.float()[:, None] * u.float()


# --------------------------------------------------------------------------------------------
# Mamba-2 (scalar A per head): direct and cheap
# --------------------------------------------------------------------------------------------
def _alpha_scalar_decay(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, heads: Tensor | None) -> Tensor:
    b, L, H = dt.shape
    G = B.shape[2]
    hs = torch.arange(H, device=dt.device) if heads is None else heads
    CB = torch.einsum("bign,bjgn->bgij", C.float(), B.float())  # [b, G, L, L]
    CB = CB[:, hs // (H // G)]  # [b, H', L, L]
    a = dt.float()[:, :, hs].transpose(1, 2) * A.float()[hs, None]  # [b, H', L]
    return CB * torch.exp(segsum(a)) * dt.float()[:, :, hs].transpose(1, 2)[:, :, None, :]


# --------------------------------------------------------------------------------------------
# Mamba-1 (A per channel and state): anchored blocks
# --------------------------------------------------------------------------------------------
def _channelwise(
    dt: Tensor, A: Tensor, B: Tensor, C: Tensor, reduce: str | None, block: int = 64, inner: int = 8,
    budget: int = 8 * 2**20,
) -> Tensor:
    """α of one sequence, per channel [H, L, L] (reduce=None) or reduced over channels [L, L].

    dt [L, H], A [H, N], B/C [L, N]. Query rows go in blocks of ``block``; channels in chunks sized
    so the off-diagonal product [chunk, block, L] stays under ``budget`` floats. A diagonal block is
    itself computed by this algorithm with blocks of ``inner`` rows (all channels at once), so only
    inner×inner blocks are built directly from their decay tensor.
    R[h, n, j] = e^{A (S_a - S_j)} Δ_j B_j[n] for the current anchor a (the position before the
    block): kept in one buffer, rescaled in place by e^{A (S_a' - S_a)} <= 1 when the anchor moves.
    """
    L, H = dt.shape
    N = A.shape[-1]
    S = dt.cumsum(0)  # [L, H]
    out = dt.new_zeros(H) if reduce == "mass" else dt.new_zeros(L, L) if reduce else dt.new_zeros(H, L, L)
    R = dt.new_empty(H, N, L)
    prev = 0  # columns [0, prev) of R are valid for anchor prev - 1
    chunk = max(1, min(H, budget // max(1, block * L)))
    for i0 in range(0, L, block):
        i1 = min(i0 + block, L)
        if i0 > 0:
            a = i0 - 1
            if prev > 0:
                R[:, :, :prev] *= torch.exp(A * (S[a] - S[prev - 1])[:, None])[:, :, None]
            R[:, :, prev:i0] = torch.exp(A[:, :, None] * (S[a][:, None, None] - S[prev:i0].T[:, None, :])) \
                * (dt[prev:i0].T[:, None, :] * B[prev:i0].T[None, :, :])
            prev = i0
            Lf = C[i0:i1][None] * torch.exp(A[:, None, :] * (S[i0:i1].T[:, :, None] - S[a][:, None, None]))
        if i1 - i0 > inner:  # recurse: the diagonal block is a short sequence of its own
            diag_all = _channelwise(dt[i0:i1], A, B[i0:i1], C[i0:i1], None, inner, inner, budget)
        else:
            decay = torch.exp(segsum(dt[i0:i1].T[:, None, :] * A[:, :, None]))  # [H, N, T, T], masked first
            diag_all = (C[i0:i1].T[None, :, :, None] * decay * B[i0:i1].T[None, :, None, :]).sum(1)
            diag_all *= dt[i0:i1].T[:, None, :]
        for h0 in range(0, H, chunk):
            h1 = min(h0 + chunk, H)
            diag = diag_all[h0:h1]
            off = torch.bmm(Lf[h0:h1], R[h0:h1, :, :i0]) if i0 > 0 else None  # [hc, T, i0]
            if reduce == "mass":  # Σ_ij |α| per channel, for top-k channel selection
                out[h0:h1] += diag.abs().sum((1, 2)) + (off.abs().sum((1, 2)) if off is not None else 0)
            elif reduce is None:
                out[h0:h1, i0:i1, i0:i1] = diag
                if off is not None:
                    out[h0:h1, i0:i1, :i0] = off
            else:
                _accumulate(out[i0:i1, i0:i1], diag, reduce)
                if off is not None:
                    _accumulate(out[i0:i1, :i0], off, reduce)
    if reduce in ("mean", "mean_abs"):
        out /= H
    return out


def _accumulate(acc: Tensor, part: Tensor, reduce: str) -> None:
    """Fold channels of ``part`` [hc, T, k] into ``acc`` [T, k]: sums for the means, max for max."""
    if reduce == "mean":
        acc += part.sum(0)
    elif reduce == "mean_abs":
        acc += part.abs_().sum(0)
    else:  # max of |α|
        torch.maximum(acc, part.abs_().amax(0), out=acc)


def _check_aggregate(aggregate: str) -> None:
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


REDUCERS: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": lambda a: a.mean(0),
    "mean_abs": lambda a: a.abs().mean(0),
    "max": lambda a: a.abs().amax(0),
}


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def hidden_attention(
    dt: Tensor, A: Tensor, B: Tensor, C: Tensor, heads: Sequence[int] | Tensor | None = None, block: int = 64
) -> Tensor:
    """Per-channel (Mamba-1) or per-head (Mamba-2) hidden attention α [b, H', L, L].

    ``heads`` selects channels/heads (default all). Memory: H'·L² floats for the result.
    """
    hs = None if heads is None else torch.as_tensor(heads, device=dt.device, dtype=torch.long)
    if A.dim() == 1:
        return _alpha_scalar_decay(dt, A, B, C, hs)
    dt, A = _select(dt.float(), A.float(), hs)
    return torch.stack([_channelwise(dt[i], A, _one_group(B[i]), _one_group(C[i]), None, block)
                        for i in range(dt.shape[0])])


def hidden_attention_reduced(
    dt: Tensor, A: Tensor, B: Tensor, C: Tensor, aggregate: Aggregate = "mean_abs",
    heads: Sequence[int] | Tensor | None = None, block: int = 64, backend: str = "auto", **kernel_kwargs: Any,
) -> Tensor:
    """Channel/head-reduced hidden attention [b, L, L], never holding more than a block of channels.

    aggregate: "mean" (signed mean over channels), "mean_abs" (mean of |α|), "max" (max of |α|).
    backend: "auto" | "torch" | "numba" | "triton", decided by :func:`interp.attention.backends.choose_backend`
    ("auto": Triton for CUDA tensors, numba for CPU tensors of a Mamba-1 layer, PyTorch when an input needs a
    gradient or no kernel fits). ``block``: query-row block of the PyTorch and numba paths; ``kernel_kwargs``
    (block_i, block_j, precision, num_warps) go to the Triton kernel only.
    """
    _check_aggregate(aggregate)
    if aggregate == "none":
        raise ValueError("aggregate='none' keeps every channel: call hidden_attention() instead")
    chosen = backends.backend_for(dt, A, B, C, backend, "reduced")
    if chosen == "triton":
        from interp.kernels import hidden_attention as triton_kernels

        return triton_kernels.hidden_attention_reduced_triton(dt, A, B, C, aggregate=aggregate, heads=heads,
                                                              **kernel_kwargs)
    hs = None if heads is None else torch.as_tensor(heads, device=dt.device, dtype=torch.long)
    if chosen == "numba":
        from interp.kernels import hidden_attention_cpu as numba_kernels

        return numba_kernels.hidden_attention_reduced_numba(dt, A, B, C, aggregate, heads=hs, block=block)
    if A.dim() == 1:
        return REDUCERS[aggregate](_alpha_scalar_decay(dt, A, B, C, hs).transpose(0, 1))
    dt, A = _select(dt.float(), A.float(), hs)
    return torch.stack([_channelwise(dt[i], A, _one_group(B[i]), _one_group(C[i]), aggregate, block)
                        for i in range(dt.shape[0])])


def hidden_attention_rows_reduced(
    dt: Tensor, A: Tensor, B: Tensor, C: Tensor, rows: Sequence[int] | Tensor, aggregate: Aggregate = "mean_abs",
    heads: Sequence[int] | Tensor | None = None, backend: str = "auto", **kernel_kwargs: Any,
) -> Tensor:
    """Query rows of the channel-reduced map: [b, len(rows), L] (zeros right of each row's position), O(L)
    memory per row with the kernel, O(H·N·L) with PyTorch. Equals ``hidden_attention_reduced(...)[:, rows]``.

    aggregate: "mean", "mean_abs" or "max"; negative rows count from the end. backend: as for
    :func:`hidden_attention_reduced` (query rows have a Triton kernel, no numba one); ``kernel_kwargs``
    (block_j, num_warps) go to the Triton kernel only.
    """
    if aggregate not in REDUCERS:
        raise ValueError(f"aggregate must be one of {tuple(REDUCERS)}, got {aggregate!r}")
    chosen = backends.backend_for(dt, A, B, C, backend, "rows")
    if chosen == "triton":
        from interp.kernels import hidden_attention as triton_kernels

        return triton_kernels.hidden_attention_rows_reduced_triton(dt, A, B, C, rows, aggregate=aggregate,
                                                                   heads=heads, **kernel_kwargs)
    alpha = hidden_attention_rows(dt, A, B, C, [int(r) for r in torch.as_tensor(rows).flatten().tolist()])
    if heads is not None:  # only the selected heads' rows, keeping each head's group
        H = dt.shape[-1]
        alpha = alpha[:, torch.tensor(check_indices(heads, H, "heads", of=f"{H} heads"), device=dt.device)]
    return REDUCERS[aggregate](alpha.transpose(0, 1))


def channel_mass(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, backend: str = "auto") -> Tensor:
    """Σ_{i,j} |α[h, i, j]| per channel/head, summed over the batch: [H] (picks top-k channels).

    backend: as for :func:`hidden_attention_reduced` (a numba kernel only; its per-block sums are float64).
    """
    if backends.backend_for(dt, A, B, C, backend, "mass") == "numba":
        from interp.kernels import hidden_attention_cpu as numba_kernels

        return numba_kernels.channel_mass_numba(dt, A, B, C)
    if A.dim() == 1:
        return _alpha_scalar_decay(dt, A, B, C, None).abs().sum((0, 2, 3))
    dt, A = dt.float(), A.float()
    return sum(_channelwise(dt[i], A, _one_group(B[i]), _one_group(C[i]), "mass") for i in range(dt.shape[0]))


def _select(dt: Tensor, A: Tensor, hs: Tensor | None) -> tuple[Tensor, Tensor]:
    return (dt, A) if hs is None else (dt[:, :, hs], A[hs])


def hidden_attention_rows(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, rows: Sequence[int]) -> Tensor:
    """Query rows of α: [b, H, len(rows), L] (zeros right of each row's position), O(H·N·L) memory per row."""
    b, L, H = dt.shape
    dt, A = dt.float(), A.float()
    Bh, Ch = expand_groups(B.float(), H), expand_groups(C.float(), H)  # [b, L, H, N]
    A2 = A if A.dim() == 2 else A[:, None].expand(H, Bh.shape[-1])
    S = dt.cumsum(1)  # [b, L, H]
    out = dt.new_zeros(b, H, len(rows), L)
    for r, i in enumerate(rows):
        i = check_index(i, L, "rows", of=f"a sequence of {L} tokens")
        # e^{A (S_i - S_j)} for j <= i: [b, j, H, N], exponent <= 0
        decay = torch.exp((S[:, i : i + 1] - S[:, : i + 1])[..., None] * A2)
        out[:, :, r, : i + 1] = torch.einsum("bhn,bjhn,bjhn->bhj", Ch[:, i], decay, Bh[:, : i + 1]) \
            * dt[:, : i + 1].transpose(1, 2)
    return out


def _one_group(X: Tensor) -> Tensor:
    """[L, G, N] with G == 1 -> [L, N] (Mamba-1 layout)."""
    if X.shape[1] != 1:
        raise ValueError("per-(channel, state) decays with several B/C groups are not a Mamba-1 layout")
    return X[:, 0].float()
