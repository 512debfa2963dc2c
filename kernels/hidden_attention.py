"""Fused Triton kernels for the channel-reduced hidden-attention map of selective SSMs.

Same conventions as :mod:`interp.attention.hidden` (the PyTorch reference):

    dt [b, L, H]   A [H, N] (Mamba-1) or [H] (Mamba-2)   B, C [b, L, G, N]   (head h reads group h // (H // G))

With S = cumsum(Δ) over positions, for j <= i (0 otherwise)

    α[h, i, j] = Σ_n C_i[n] · exp(A[h, n] (S_i[h] - S_j[h])) · Δ_j[h] · B_j[n]

and the channel-reduced map is  mean_h α  ("mean"),  mean_h |α|  ("mean_abs")  or  max_h |α|  ("max").

Kernel layout. One program per (output tile, sequence); only tiles on or below the diagonal are
launched (a host-built tile table), the output starts at zero, so tiles above the diagonal cost
nothing. A program loops over groups g, then over the heads/channels h of that group, and folds each
channel's [BLOCK_I, BLOCK_J] tile into one register accumulator: no [H, N, L, L] or [H, L, L]
tensor is ever written, global memory holds the inputs and the [b, L, L] result only.

* Diagonal tiles (some j > some i): built directly, the causal mask applied to the exponent before
  exp (exponent set to -inf above the diagonal), one exp per (h, n, i, j) for Mamba-1, per (h, i, j)
  for Mamba-2.
* Off-diagonal tiles (every j < every i): through the anchor k = last column of the tile,
  exp(A(S_i - S_j)) = exp(A(S_i - S_k)) · exp(A(S_k - S_j)) with both exponents <= 0 (Δ > 0, A < 0),
  so the Mamba-1 tile is the rank-N product (C_i ⊙ e^{A(S_i-S_k)}) · (e^{A(S_k-S_j)} Δ_j B_j)ᵀ
  (one ``tl.dot``; exps per tile N·(BLOCK_I + BLOCK_J) instead of N·BLOCK_I·BLOCK_J) and the
  Mamba-2 tile is (C_i·B_jᵀ) ⊙ (u_i v_jᵀ) with C·Bᵀ computed once per group.

Query rows (:func:`hidden_attention_rows_reduced_triton`) use the direct, masked form for a few
arbitrary rows, tiled over columns: [b, n_rows, L], O(L) memory per row.

The module imports without triton and without a GPU (``HAS_TRITON`` False). Which implementation runs is
decided outside the kernels: :func:`interp.attention.hidden.hidden_attention_reduced` /
:func:`~interp.attention.hidden.hidden_attention_rows_reduced` with ``backend="auto"`` use these kernels for
CUDA tensors when triton is importable (:func:`interp.attention.backends.choose_backend`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from interp.kernels._triton import import_triton, require_triton

triton, tl = import_triton()  # optional dependency: the module stays importable without it
HAS_TRITON = triton is not None
_FALLBACK = "interp.attention.hidden.hidden_attention_reduced (backend='auto' or 'torch')"  # without triton

__all__ = [
    "HAS_TRITON",
    "KERNEL_AGGREGATES",
    "hidden_attention_reduced_triton",
    "hidden_attention_rows_reduced_triton",
]

KERNEL_AGGREGATES = {"mean": 0, "mean_abs": 1, "max": 2}
PRECISIONS = ("ieee", "tf32x3", "tf32")


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _fold(acc, tile, AGG: tl.constexpr):
        """Fold one channel's tile into the running reduction: sum (mean), sum of |.| (mean_abs) or max |.|."""
        if AGG == 0:
            out = acc + tile
        elif AGG == 1:
            out = acc + tl.abs(tile)
        else:
            out = tl.maximum(acc, tl.abs(tile))
        return out

    @triton.jit
    def _direct_tile(A_ptr, B_ptr, C_ptr, h, stride_ah, bc_base, offs_q, vq, offs_j, vj, live, diff, dtj, CB, N,
                     SCALAR_A: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_J: tl.constexpr):
        """One channel's masked tile α[h, q, j] for query positions ``offs_q`` (``diff`` = S_q - S_j,
        ``live`` the causal/validity mask): Mamba-2 from C·Bᵀ (``CB``), Mamba-1 state by state."""
        if SCALAR_A:
            a = tl.load(A_ptr + h * stride_ah)
            tile = CB * tl.exp(tl.where(live, a * diff, float("-inf"))) * dtj[None, :]
        else:
            tile = tl.zeros([BLOCK_Q, BLOCK_J], dtype=tl.float32)
            for n in range(N):
                an = tl.load(A_ptr + h * stride_ah + n)
                cn = tl.load(C_ptr + bc_base + offs_q * N + n, mask=vq, other=0.0)
                bn = tl.load(B_ptr + bc_base + offs_j * N + n, mask=vj, other=0.0)
                tile += (cn[:, None] * bn[None, :]) * tl.exp(tl.where(live, an * diff, float("-inf")))
            tile = tile * dtj[None, :]
        return tile

    @triton.jit
    def _hidden_attention_reduced_kernel(
        S_ptr, DT_ptr, A_ptr, B_ptr, C_ptr, OUT_ptr, TILES_ptr, GPTR_ptr, HEADS_ptr,
        L, N, G, scale,
        stride_sb, stride_sh,  # S, DT: [b, H, L], positions contiguous
        stride_ah,  # A: [H, N] (Mamba-1) or [H] (Mamba-2)
        stride_bb, stride_bg,  # B, C: [b, G, L, N], state contiguous, position stride N
        SCALAR_A: tl.constexpr,
        AGG: tl.constexpr,
        BLOCK_I: tl.constexpr,
        BLOCK_J: tl.constexpr,
        BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        pb = tl.program_id(1)
        bi = tl.load(TILES_ptr + 2 * pid)
        bj = tl.load(TILES_ptr + 2 * pid + 1)
        i0 = bi * BLOCK_I
        j0 = bj * BLOCK_J
        offs_i = i0 + tl.arange(0, BLOCK_I)
        offs_j = j0 + tl.arange(0, BLOCK_J)
        offs_n = tl.arange(0, BLOCK_N)
        vi = offs_i < L
        vj = offs_j < L
        vn = offs_n < N
        live = (offs_i[:, None] >= offs_j[None, :]) & vi[:, None] & vj[None, :]
        off_diag = j0 + BLOCK_J <= i0  # every column of the tile strictly left of every row
        k = j0 + BLOCK_J - 1  # anchor for off-diagonal tiles: a valid position < i0
        acc = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
        pb64 = pb.to(tl.int64)
        for g in range(G):
            h_start = tl.load(GPTR_ptr + g)
            h_end = tl.load(GPTR_ptr + g + 1)
            bc_base = pb64 * stride_bb + g * stride_bg
            CB = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)  # Mamba-2 only (dead code for Mamba-1)
            if SCALAR_A:  # C_i·B_jᵀ once per group, the state dimension in chunks of BLOCK_N
                for n0 in range(0, N, BLOCK_N):
                    cn = n0 + offs_n
                    Ci = tl.load(C_ptr + bc_base + offs_i[:, None] * N + cn[None, :],
                                 mask=vi[:, None] & (cn < N)[None, :], other=0.0)
                    Bj = tl.load(B_ptr + bc_base + offs_j[:, None] * N + cn[None, :],
                                 mask=vj[:, None] & (cn < N)[None, :], other=0.0)
                    CB += tl.dot(Ci, tl.trans(Bj), input_precision=PRECISION)
            else:  # all N states at once (BLOCK_N >= N), kept for every channel of the group
                Ci = tl.load(C_ptr + bc_base + offs_i[:, None] * N + offs_n[None, :],
                             mask=vi[:, None] & vn[None, :], other=0.0)
                Bj = tl.load(B_ptr + bc_base + offs_j[:, None] * N + offs_n[None, :],
                             mask=vj[:, None] & vn[None, :], other=0.0)
            for t in range(h_start, h_end):
                h = tl.load(HEADS_ptr + t)
                s_base = pb64 * stride_sb + h * stride_sh
                Si = tl.load(S_ptr + s_base + offs_i, mask=vi, other=0.0)
                Sj = tl.load(S_ptr + s_base + offs_j, mask=vj, other=0.0)
                dtj = tl.load(DT_ptr + s_base + offs_j, mask=vj, other=0.0)
                # SCALAR_A is static (tl.constexpr): each family compiles only its own branch
                if SCALAR_A:
                    if off_diag:
                        a = tl.load(A_ptr + h * stride_ah)
                        Sk = tl.load(S_ptr + s_base + k)
                        u = tl.exp(tl.where(vi, a * (Si - Sk), float("-inf")))
                        v = tl.exp(tl.where(vj, a * (Sk - Sj), float("-inf"))) * dtj
                        tile = CB * u[:, None] * v[None, :]
                    else:
                        tile = _direct_tile(A_ptr, B_ptr, C_ptr, h, stride_ah, bc_base, offs_i, vi, offs_j, vj, live,
                                            Si[:, None] - Sj[None, :], dtj, CB, N, SCALAR_A, BLOCK_I, BLOCK_J)
                else:
                    if off_diag:
                        Sk = tl.load(S_ptr + s_base + k)
                        Ah = tl.load(A_ptr + h * stride_ah + offs_n, mask=vn, other=0.0)
                        li = vi[:, None] & vn[None, :]
                        lj = vj[:, None] & vn[None, :]
                        Lf = Ci * tl.exp(tl.where(li, Ah[None, :] * (Si - Sk)[:, None], float("-inf")))
                        Rf = Bj * tl.exp(tl.where(lj, Ah[None, :] * (Sk - Sj)[:, None], float("-inf"))) \
                            * dtj[:, None]
                        tile = tl.dot(Lf, tl.trans(Rf), input_precision=PRECISION)
                    else:
                        tile = _direct_tile(A_ptr, B_ptr, C_ptr, h, stride_ah, bc_base, offs_i, vi, offs_j, vj, live,
                                            Si[:, None] - Sj[None, :], dtj, CB, N, SCALAR_A, BLOCK_I, BLOCK_J)
                acc = _fold(acc, tile, AGG)
        acc = acc * scale
        out_ptrs = OUT_ptr + pb64 * L * L + offs_i.to(tl.int64)[:, None] * L + offs_j[None, :]
        tl.store(out_ptrs, acc, mask=vi[:, None] & vj[None, :])

    @triton.jit
    def _hidden_attention_rows_kernel(
        S_ptr, DT_ptr, A_ptr, B_ptr, C_ptr, OUT_ptr, ROWS_ptr, GPTR_ptr, HEADS_ptr,
        L, N, G, R, scale,
        stride_sb, stride_sh,
        stride_ah,
        stride_bb, stride_bg,
        SCALAR_A: tl.constexpr,
        AGG: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_J: tl.constexpr,
    ):
        pr = tl.program_id(0)
        pj = tl.program_id(1)
        pb = tl.program_id(2)
        offs_r = pr * BLOCK_R + tl.arange(0, BLOCK_R)
        vr = offs_r < R
        rows = tl.load(ROWS_ptr + offs_r, mask=vr, other=0)
        j0 = pj * BLOCK_J
        offs_j = j0 + tl.arange(0, BLOCK_J)
        vj = offs_j < L
        live = (rows[:, None] >= offs_j[None, :]) & vr[:, None] & vj[None, :]
        rmax = tl.max(tl.where(vr, rows, -1), axis=0)
        acc = tl.zeros([BLOCK_R, BLOCK_J], dtype=tl.float32)
        pb64 = pb.to(tl.int64)
        if j0 <= rmax:  # otherwise every column is right of every row: zeros
            for g in range(G):
                h_start = tl.load(GPTR_ptr + g)
                h_end = tl.load(GPTR_ptr + g + 1)
                bc_base = pb64 * stride_bb + g * stride_bg
                CB = tl.zeros([BLOCK_R, BLOCK_J], dtype=tl.float32)  # Mamba-2 only
                if SCALAR_A:
                    for n in range(N):
                        cn = tl.load(C_ptr + bc_base + rows * N + n, mask=vr, other=0.0)
                        bn = tl.load(B_ptr + bc_base + offs_j * N + n, mask=vj, other=0.0)
                        CB += cn[:, None] * bn[None, :]
                for t in range(h_start, h_end):
                    h = tl.load(HEADS_ptr + t)
                    s_base = pb64 * stride_sb + h * stride_sh
                    Si = tl.load(S_ptr + s_base + rows, mask=vr, other=0.0)
                    Sj = tl.load(S_ptr + s_base + offs_j, mask=vj, other=0.0)
                    dtj = tl.load(DT_ptr + s_base + offs_j, mask=vj, other=0.0)
                    tile = _direct_tile(A_ptr, B_ptr, C_ptr, h, stride_ah, bc_base, rows, vr, offs_j, vj, live,
                                        Si[:, None] - Sj[None, :], dtj, CB, N, SCALAR_A, BLOCK_R, BLOCK_J)
                    acc = _fold(acc, tile, AGG)
        acc = acc * scale
        out_ptrs = OUT_ptr + pb64 * R * L + offs_r.to(tl.int64)[:, None] * L + offs_j[None, :]
        tl.store(out_ptrs, acc, mask=vr[:, None] & vj[None, :])


# --------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------
def _require_triton() -> None:
    require_triton(HAS_TRITON, _FALLBACK)


def _check_inputs(dt: Tensor, A: Tensor, B: Tensor, C: Tensor, aggregate: str) -> tuple[int, int, int, int, int]:
    if aggregate not in KERNEL_AGGREGATES:
        raise ValueError(f"aggregate must be one of {tuple(KERNEL_AGGREGATES)}, got {aggregate!r}")
    if dt.dim() != 3:
        raise ValueError(f"dt must be [b, L, H], got {tuple(dt.shape)}")
    b, L, H = dt.shape
    if B.dim() != 4 or B.shape != C.shape or B.shape[:2] != (b, L):
        raise ValueError(f"B and C must both be [b, L, G, N] with b, L of dt; got {tuple(B.shape)}, {tuple(C.shape)}")
    G, N = B.shape[2], B.shape[3]
    if H % G:
        raise ValueError(f"number of heads {H} is not a multiple of the number of groups {G}")
    if not (A.shape == (H, N) or A.shape == (H,)):
        raise ValueError(f"A must be [H, N] = [{H}, {N}] (Mamba-1) or [H] = [{H}] (Mamba-2), got {tuple(A.shape)}")
    return b, L, H, G, N


def _head_table(H: int, G: int, heads, device) -> tuple[Tensor, Tensor, int]:
    """Selected heads sorted by group, and per-group offsets [G + 1] into that list (CSR)."""
    if heads is None:
        hs = torch.arange(H, dtype=torch.long)
    else:
        hs = torch.as_tensor(heads, dtype=torch.long).flatten().cpu() % H
        if hs.numel() == 0:
            raise ValueError("heads is empty")
    group = hs // (H // G)
    order = torch.argsort(group, stable=True)
    hs = hs[order]
    counts = torch.bincount(group, minlength=G)
    gptr = torch.zeros(G + 1, dtype=torch.long)
    gptr[1:] = counts.cumsum(0)
    return hs.to(device, torch.int32), gptr.to(device, torch.int32), int(hs.numel())


def _prepare(dt: Tensor, A: Tensor, B: Tensor, C: Tensor):
    """float32 kernel layouts: S, Δ as [b, H, L]; B, C as [b, G, L, N]; S = cumsum(Δ) in float32."""
    dtf = dt.float()
    S = dtf.cumsum(1).transpose(1, 2).contiguous()
    dtT = dtf.transpose(1, 2).contiguous()
    Bt = B.float().transpose(1, 2).contiguous()
    Ct = C.float().transpose(1, 2).contiguous()
    Af = A.float().contiguous()
    return S, dtT, Af, Bt, Ct


def _pow2(x: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


def hidden_attention_reduced_triton(
    dt: Tensor, A: Tensor, B: Tensor, C: Tensor, aggregate: str = "mean_abs",
    heads: Sequence[int] | Tensor | None = None, block_i: int = 64, block_j: int = 64,
    precision: str = "ieee", num_warps: int = 8,
) -> Tensor:
    """Channel/head-reduced hidden attention [b, L, L] (float32), fused in one Triton kernel.

    Same arguments as :func:`interp.attention.hidden.hidden_attention_reduced`: aggregate "mean",
    "mean_abs" (mean |α| over channels) or "max" (max |α|); ``heads`` restricts the reduction to a
    subset of channels/heads. ``block_i`` × ``block_j`` is the output tile (powers of two >= 16);
    ``precision`` is the ``tl.dot`` input precision for the rank-N products: "ieee" (full float32,
    default), "tf32x3" (tensor cores, about float32 accuracy) or "tf32" (fastest, ~1e-3 relative).
    Memory: inputs plus the [b, L, L] result. The defaults (64 × 64 tiles, 8 warps) compile without
    register spills for sm_90 in both the Mamba-1 (N = 16) and the Mamba-2 (states in chunks of 32)
    variants; 4 warps at 64 × 64 spill.
    """
    _require_triton()
    b, L, H, G, N = _check_inputs(dt, A, B, C, aggregate)
    for name, blk in (("block_i", block_i), ("block_j", block_j)):
        if blk < 16 or blk & (blk - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {blk}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = dt.device
    out = torch.zeros(b, L, L, device=device, dtype=torch.float32)
    if b == 0 or L == 0:
        return out
    S, dtT, Af, Bt, Ct = _prepare(dt, A, B, C)
    hs, gptr, n_heads = _head_table(H, G, heads, device)
    n_i, n_j = triton.cdiv(L, block_i), triton.cdiv(L, block_j)
    tiles = [(bi, bj) for bi in range(n_i) for bj in range(n_j) if bj * block_j <= bi * block_i + block_i - 1]
    tiles = torch.tensor(tiles, dtype=torch.int32, device=device).reshape(-1, 2).contiguous()
    scale = 1.0 / n_heads if aggregate in ("mean", "mean_abs") else 1.0
    grid = (tiles.shape[0], b)
    _hidden_attention_reduced_kernel[grid](
        S, dtT, Af, Bt, Ct, out, tiles, gptr, hs,
        L, N, G, scale,
        S.stride(0), S.stride(1),
        Af.stride(0),
        Bt.stride(0), Bt.stride(1),
        SCALAR_A=A.dim() == 1,
        AGG=KERNEL_AGGREGATES[aggregate],
        BLOCK_I=block_i,
        BLOCK_J=block_j,
        BLOCK_N=_pow2(N, 16) if A.dim() == 2 else min(_pow2(N, 16), 32),
        PRECISION=precision,
        num_warps=num_warps,
    )
    return out


def hidden_attention_rows_reduced_triton(
    dt: Tensor, A: Tensor, B: Tensor, C: Tensor, rows: Sequence[int] | Tensor, aggregate: str = "mean_abs",
    heads: Sequence[int] | Tensor | None = None, block_j: int = 64, num_warps: int = 4,
) -> Tensor:
    """Query rows of the channel-reduced map: [b, len(rows), L] (zeros right of each row's position).

    Equals ``hidden_attention_reduced(...)[:, rows]`` and the channel reduction of
    :func:`interp.attention.hidden.hidden_attention_rows`; negative rows count from the end.
    O(L) memory per row.
    """
    _require_triton()
    b, L, H, G, N = _check_inputs(dt, A, B, C, aggregate)
    if block_j < 1 or block_j & (block_j - 1):
        raise ValueError(f"block_j must be a power of two, got {block_j}")
    device = dt.device
    rows_t = torch.as_tensor(rows, dtype=torch.long).flatten().cpu()
    R = int(rows_t.numel())
    out = torch.zeros(b, R, L, device=device, dtype=torch.float32)
    if b == 0 or L == 0 or R == 0:
        return out
    if ((rows_t < -L) | (rows_t >= L)).any():
        raise IndexError(f"rows {rows_t.tolist()} out of range for L = {L}")
    rows_t = (rows_t % L).to(device, torch.int32)
    S, dtT, Af, Bt, Ct = _prepare(dt, A, B, C)
    hs, gptr, n_heads = _head_table(H, G, heads, device)
    block_r = min(16, triton.next_power_of_2(R))
    scale = 1.0 / n_heads if aggregate in ("mean", "mean_abs") else 1.0
    grid = (triton.cdiv(R, block_r), triton.cdiv(L, block_j), b)
    _hidden_attention_rows_kernel[grid](
        S, dtT, Af, Bt, Ct, out, rows_t, gptr, hs,
        L, N, G, R, scale,
        S.stride(0), S.stride(1),
        Af.stride(0),
        Bt.stride(0), Bt.stride(1),
        SCALAR_A=A.dim() == 1,
        AGG=KERNEL_AGGREGATES[aggregate],
        BLOCK_R=block_r,
        BLOCK_J=block_j,
        num_warps=num_warps,
    )
    return out
