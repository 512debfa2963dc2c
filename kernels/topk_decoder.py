"""TopK sparse-autoencoder decoder: Triton kernels (forward and backward) beside two PyTorch paths.

A TopK SAE keeps k of d_sae latents per token, so its decoder is a weighted sum of k decoder rows:

    idx  [M, k]  integer latent ids in [0, d_sae) (int32 or int64; duplicates within a row add up)
    vals [M, k]  their activations (floating)
    W_dec [d_sae, d_in]   b_dec [d_in] or None

    x̂[m, :] = Σ_j vals[m, j] · W_dec[idx[m, j], :]  (+ b_dec)                    -> [M, d_in]

Leading dimensions are free: ``idx`` and ``vals`` may be [..., k], the result is then [..., d_in].
The result dtype is the promotion of vals, W_dec (and b_dec) dtypes; the kernels always accumulate
in float32. With k ≈ 32 of d_sae ≈ 12288 latents the dense path (scatter into [M, d_sae], matmul)
does d_sae / k ≈ 400 times the needed work and materialises an [M, d_sae] matrix; the sparse paths
touch the k gathered rows only.

PyTorch paths (any device):

* :func:`sparse_decode_reference` — the obviously correct version: dense scatter-add of the values
  into [M, d_sae], then a matmul. Used by the tests (with torch.autograd for the gradients).
* :func:`sparse_decode_torch` — ``F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")``:
  no [M, d_sae] tensor, autograd for vals, W_dec and b_dec. The CPU path of :func:`sparse_decode`.

Kernel layout (:func:`sparse_decode_triton`, autograd through :class:`SparseDecode`):

* forward — one program per (tile of BLOCK_M rows, tile of BLOCK_D columns of d_in); it loops over
  the k slots, gathers the [BLOCK_M, BLOCK_D] slice of the k-th decoder rows (contiguous runs of
  BLOCK_D elements, one per row) and accumulates vals · rows in a float32 register tile, adds b_dec
  and stores once. Memory traffic: M·k·d_in gathered elements (W_dec is usually L2-resident) plus
  the output.
* grad vals — grad_vals[m, j] = <grad_out[m], W_dec[idx[m, j]]>: a gather-dot kernel, one program
  per (tile of BLOCK_M rows, slot j), looping over d_in in BLOCK_D chunks, float32 accumulation.
* grad W_dec — grad_W[l] = Σ_{(m, j): idx[m, j] = l} vals[m, j] · grad_out[m], a scatter-add. Two
  implementations (``grad_w=``):

  - ``"sort"`` (default): sort the M·k (latent, row) pairs by latent (``torch.sort``, stable), find
    each latent's segment with ``searchsorted``, then one program per (latent, BLOCK_D columns)
    reduces its segment BLOCK_P entries at a time in float32 registers and writes its row slice
    exactly once, in W_dec's dtype (rows of unused latents get zeros, so no zero-fill pass and no
    float32 staging buffer). Chosen as the default because it is deterministic (fixed summation
    order, bit-reproducible training) and has no contention: in TopK SAEs a few latents fire on a
    large fraction of tokens (and at initialisation many tokens pick the same latents), and
    float32 atomics on the same rows then serialise in L2. Cost: one sort of M·k keys, and load
    imbalance bounded by the most frequent latent's segment (M entries when each row's ids are
    distinct, as TopK gives; processed BLOCK_P at a time).
  - ``"atomic"``: one program per (BLOCK_M rows, BLOCK_D columns) loads its grad_out tile once and,
    for each slot, atomically adds vals · grad_out into rows idx of a float32 buffer (then cast to
    W_dec's dtype if it is not float32). No sort, but nondeterministic summation order and
    contention on hot latents. Kept for comparison (``bench/sae_decoder_gpu.py`` times both).

* grad b_dec = grad_out summed over rows (PyTorch). idx gets no gradient.

The module imports without triton and without a GPU; :func:`sparse_decode` uses the kernels for
CUDA tensors when triton is importable and :func:`sparse_decode_torch` otherwise.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from interp.kernels._triton import import_triton, require_triton, use_kernel

triton, tl = import_triton()  # optional dependency: the module stays importable without it
HAS_TRITON = triton is not None
_FALLBACK = ("interp.kernels.topk_decoder.sparse_decode_torch "  # what to use without triton
             "(or sparse_decode, which falls back to it)")

__all__ = [
    "HAS_TRITON",
    "GRAD_W_METHODS",
    "SparseDecode",
    "sparse_decode",
    "sparse_decode_reference",
    "sparse_decode_torch",
    "sparse_decode_triton",
]

GRAD_W_METHODS = ("sort", "atomic")
_MAX_GRID_1 = 65535  # CUDA limit on grid dimensions 1 and 2


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _sparse_decode_fwd_kernel(
        IDX_ptr, VALS_ptr, W_ptr, BIAS_ptr, OUT_ptr,
        M, K, D,
        stride_wr, stride_wc,  # W_dec: [d_sae, d_in], any strides
        HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """out[m, d] = Σ_j vals[m, j] · W[idx[m, j], d] (+ bias[d]); idx, vals, out contiguous."""
        pm = tl.program_id(0)
        pd = tl.program_id(1)
        offs_m = pm * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
        vm = offs_m < M
        vd = offs_d < D
        mask = vm[:, None] & vd[None, :]
        rows = offs_m.to(tl.int64)
        cols = offs_d.to(tl.int64) * stride_wc
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for j in range(K):
            lat = tl.load(IDX_ptr + rows * K + j, mask=vm, other=0).to(tl.int64)
            v = tl.load(VALS_ptr + rows * K + j, mask=vm, other=0.0).to(tl.float32)
            w = tl.load(W_ptr + lat[:, None] * stride_wr + cols[None, :], mask=mask, other=0.0)
            acc += v[:, None] * w.to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(BIAS_ptr + offs_d, mask=vd, other=0.0).to(tl.float32)
            acc += bias[None, :]
        out_ptrs = OUT_ptr + rows[:, None] * D + offs_d[None, :]
        tl.store(out_ptrs, acc.to(OUT_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _sparse_decode_grad_vals_kernel(
        IDX_ptr, GOUT_ptr, W_ptr, GV_ptr,
        M, K, D,
        stride_wr, stride_wc,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """grad_vals[m, j] = Σ_d grad_out[m, d] · W[idx[m, j], d] for one slot j per program."""
        pm = tl.program_id(0)
        j = tl.program_id(1)
        offs_m = pm * BLOCK_M + tl.arange(0, BLOCK_M)
        vm = offs_m < M
        rows = offs_m.to(tl.int64)
        lat = tl.load(IDX_ptr + rows * K + j, mask=vm, other=0).to(tl.int64)
        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = vm[:, None] & (offs_d < D)[None, :]
            g = tl.load(GOUT_ptr + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
            w = tl.load(W_ptr + lat[:, None] * stride_wr + offs_d.to(tl.int64)[None, :] * stride_wc,
                        mask=mask, other=0.0).to(tl.float32)
            acc += tl.sum(g * w, axis=1)
        tl.store(GV_ptr + rows * K + j, acc.to(GV_ptr.dtype.element_ty), mask=vm)

    @triton.jit
    def _sparse_decode_grad_w_sorted_kernel(
        SEG_ptr, ROWS_ptr, SVALS_ptr, GOUT_ptr, GW_ptr,
        D,
        BLOCK_P: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """grad_W[l, d] = Σ_{p in segment l} svals[p] · grad_out[rows[p], d]; segment l is
        [seg[l], seg[l + 1]) of the (latent-sorted) pair list. Every row is written once."""
        lat = tl.program_id(0)
        pd = tl.program_id(1)
        start = tl.load(SEG_ptr + lat)
        end = tl.load(SEG_ptr + lat + 1)
        offs_d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
        vd = offs_d < D
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for p0 in range(start, end, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            vp = offs_p < end
            r = tl.load(ROWS_ptr + offs_p, mask=vp, other=0).to(tl.int64)
            v = tl.load(SVALS_ptr + offs_p, mask=vp, other=0.0).to(tl.float32)
            g = tl.load(GOUT_ptr + r[:, None] * D + offs_d[None, :], mask=vp[:, None] & vd[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.sum(v[:, None] * g, axis=0)
        tl.store(GW_ptr + lat.to(tl.int64) * D + offs_d, acc.to(GW_ptr.dtype.element_ty), mask=vd)

    @triton.jit
    def _sparse_decode_grad_w_atomic_kernel(
        IDX_ptr, VALS_ptr, GOUT_ptr, GW_ptr,
        M, K, D,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """grad_W[idx[m, j], d] += vals[m, j] · grad_out[m, d] with float32 atomics (GW zeroed)."""
        pm = tl.program_id(0)
        pd = tl.program_id(1)
        offs_m = pm * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
        vm = offs_m < M
        mask = vm[:, None] & (offs_d < D)[None, :]
        rows = offs_m.to(tl.int64)
        g = tl.load(GOUT_ptr + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        for j in range(K):
            lat = tl.load(IDX_ptr + rows * K + j, mask=vm, other=0).to(tl.int64)
            v = tl.load(VALS_ptr + rows * K + j, mask=vm, other=0.0).to(tl.float32)
            tl.atomic_add(GW_ptr + lat[:, None] * D + offs_d[None, :], v[:, None] * g, mask=mask, sem="relaxed")


# --------------------------------------------------------------------------------------------
# input checks and PyTorch paths
# --------------------------------------------------------------------------------------------
def _require_triton() -> None:
    require_triton(HAS_TRITON, _FALLBACK)


def _check_inputs(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None,
                  check_indices: bool = True) -> tuple[int, int, torch.dtype]:
    """Validate shapes, dtypes, devices (and, if ``check_indices``, the index range: one device sync).
    Returns (d_sae, d_in, result dtype)."""
    for name, t in (("idx", idx), ("vals", vals), ("W_dec", W_dec)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if b_dec is not None and not isinstance(b_dec, Tensor):
        raise TypeError(f"b_dec must be a torch.Tensor or None, got {type(b_dec).__name__}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"idx must be int32 or int64 latent ids, got {idx.dtype}")
    if not vals.is_floating_point():
        raise TypeError(f"vals must be floating point, got {vals.dtype}")
    if not W_dec.is_floating_point():
        raise TypeError(f"W_dec must be floating point, got {W_dec.dtype}")
    if b_dec is not None and not b_dec.is_floating_point():
        raise TypeError(f"b_dec must be floating point, got {b_dec.dtype}")
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must be [d_sae, d_in], got {tuple(W_dec.shape)}")
    d_sae, d_in = W_dec.shape
    if idx.dim() < 1 or idx.shape != vals.shape:
        raise ValueError(f"idx and vals must have the same shape [..., k], got {tuple(idx.shape)} and "
                         f"{tuple(vals.shape)}")
    if b_dec is not None and b_dec.shape != (d_in,):
        raise ValueError(f"b_dec must be [d_in] = [{d_in}], got {tuple(b_dec.shape)}")
    devices = {t.device for t in (idx, vals, W_dec, b_dec) if t is not None}
    if len(devices) > 1:
        names = ", ".join(f"{n} on {t.device}" for n, t in (("idx", idx), ("vals", vals), ("W_dec", W_dec),
                                                            ("b_dec", b_dec)) if t is not None)
        raise ValueError(f"all inputs must be on one device, got {names}")
    if check_indices and idx.numel():
        if d_sae == 0:
            raise IndexError("idx is not empty but W_dec has no rows (d_sae = 0)")
        lo, hi = (int(x) for x in torch.aminmax(idx))
        if lo < 0 or hi >= d_sae:
            raise IndexError(f"idx must lie in [0, d_sae) = [0, {d_sae}), got values in [{lo}, {hi}]")
    dtype = torch.promote_types(vals.dtype, W_dec.dtype)
    if b_dec is not None:
        dtype = torch.promote_types(dtype, b_dec.dtype)
    return d_sae, d_in, dtype


def sparse_decode_reference(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """Dense reference: scatter-add ``vals`` into an [M, d_sae] matrix, multiply by ``W_dec``, add ``b_dec``.

    idx, vals [..., k]; W_dec [d_sae, d_in]; b_dec [d_in] or None -> [..., d_in] (promoted dtype).
    Differentiable in vals, W_dec and b_dec by torch.autograd. O(M · d_sae) memory: for tests.
    """
    d_sae, d_in, dtype = _check_inputs(idx, vals, W_dec, b_dec)
    lead, k = idx.shape[:-1], idx.shape[-1]
    M = math.prod(lead)
    i2 = idx.reshape(M, k).long()
    dense = torch.zeros(i2.shape[0], d_sae, dtype=dtype, device=W_dec.device)
    dense = dense.scatter_add(1, i2, vals.reshape(M, k).to(dtype))
    out = dense @ W_dec.to(dtype)
    if b_dec is not None:
        out = out + b_dec.to(dtype)
    return out.reshape(*lead, d_in)


def sparse_decode_torch(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None = None,
                        check_indices: bool = True) -> Tensor:
    """Sparse PyTorch path: ``F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum")`` (+ b_dec).

    idx, vals [..., k]; W_dec [d_sae, d_in]; b_dec [d_in] or None -> [..., d_in] (promoted dtype).
    No [M, d_sae] tensor; autograd for vals, W_dec, b_dec. (If W_dec's dtype is not the result
    dtype, W_dec is cast first, which copies it.)
    """
    d_sae, d_in, dtype = _check_inputs(idx, vals, W_dec, b_dec, check_indices)
    lead, k = idx.shape[:-1], idx.shape[-1]
    M = math.prod(lead)
    if k == 0 or idx.numel() == 0:  # embedding_bag rejects empty bags
        out = W_dec.new_zeros(*lead, d_in, dtype=dtype) + vals.sum() * 0
        return out + b_dec.to(dtype) if b_dec is not None else out
    # CUDA has no bfloat16 backward for per-sample-weighted embedding_bag (torch 2.11): compute in float32
    bag_dtype = torch.float32 if dtype == torch.bfloat16 and W_dec.is_cuda else dtype
    out = F.embedding_bag(idx.reshape(M, k), W_dec.to(bag_dtype), per_sample_weights=vals.reshape(M, k).to(bag_dtype),
                          mode="sum").to(dtype)
    if b_dec is not None:
        out = out + b_dec.to(dtype)
    return out.reshape(*lead, d_in)


# --------------------------------------------------------------------------------------------
# host side of the kernels
# --------------------------------------------------------------------------------------------
def _check_blocks(**blocks: int) -> None:
    for name, blk in blocks.items():
        if not isinstance(blk, int) or blk < 16 or blk & (blk - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {blk!r}")


def _decode_fwd(idx2: Tensor, vals2: Tensor, W_dec: Tensor, b_dec: Tensor | None, dtype: torch.dtype,
                block_m: int, block_d: int, num_warps: int) -> Tensor:
    """Kernel forward on 2-D contiguous idx2, vals2 [M, k] -> [M, d_in] of ``dtype``."""
    M, K = idx2.shape
    D = W_dec.shape[1]
    out = torch.empty(M, D, dtype=dtype, device=W_dec.device)
    if M == 0 or D == 0:
        return out
    if K == 0:
        out.zero_()
        return out + b_dec.to(dtype) if b_dec is not None else out
    n_d = triton.cdiv(D, block_d)
    if n_d > _MAX_GRID_1:
        raise ValueError(f"d_in = {D} needs {n_d} column tiles of {block_d} (> {_MAX_GRID_1}): raise block_d")
    bias = b_dec.contiguous() if b_dec is not None else out  # dummy pointer when there is no bias
    grid = (triton.cdiv(M, block_m), n_d)
    _sparse_decode_fwd_kernel[grid](
        idx2, vals2, W_dec, bias, out,
        M, K, D,
        W_dec.stride(0), W_dec.stride(1),
        HAS_BIAS=b_dec is not None,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return out


def _decode_grad_vals(idx2: Tensor, gout: Tensor, W_dec: Tensor, dtype: torch.dtype,
                      block_m: int, block_d: int, num_warps: int) -> Tensor:
    M, K = idx2.shape
    D = W_dec.shape[1]
    gv = torch.empty(M, K, dtype=dtype, device=gout.device)
    if M == 0 or K == 0:
        return gv
    if D == 0:
        return gv.zero_()
    if K > _MAX_GRID_1:
        raise ValueError(f"k = {K} is above the kernel's grid limit {_MAX_GRID_1}")
    grid = (triton.cdiv(M, block_m), K)
    _sparse_decode_grad_vals_kernel[grid](
        idx2, gout, W_dec, gv,
        M, K, D,
        W_dec.stride(0), W_dec.stride(1),
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return gv


def _decode_grad_w(idx2: Tensor, vals2: Tensor, gout: Tensor, d_sae: int, dtype: torch.dtype, method: str,
                   block_m: int, block_d: int, block_p: int, num_warps: int) -> Tensor:
    M, K = idx2.shape
    D = gout.shape[1]
    device = gout.device
    if M == 0 or K == 0 or D == 0 or d_sae == 0:
        return torch.zeros(d_sae, D, dtype=dtype, device=device)
    n_d = triton.cdiv(D, block_d)
    if n_d > _MAX_GRID_1:
        raise ValueError(f"d_in = {D} needs {n_d} column tiles of {block_d} (> {_MAX_GRID_1}): raise block_d")
    if method == "atomic":
        gw = torch.zeros(d_sae, D, dtype=torch.float32, device=device)
        grid = (triton.cdiv(M, block_m), n_d)
        _sparse_decode_grad_w_atomic_kernel[grid](
            idx2, vals2, gout, gw,
            M, K, D,
            BLOCK_M=block_m,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
        return gw if dtype == torch.float32 else gw.to(dtype)
    # "sort": latent-sorted pair list, per-latent segments [seg[l], seg[l + 1])
    flat = idx2.reshape(-1)
    lat_sorted, order = torch.sort(flat, stable=True)
    seg = torch.searchsorted(lat_sorted, torch.arange(d_sae + 1, device=device, dtype=lat_sorted.dtype))
    pos_dtype = torch.int32 if M * K < 2**31 else torch.int64
    rows = torch.div(order, K, rounding_mode="floor").to(pos_dtype)
    svals = vals2.reshape(-1)[order].contiguous()
    seg = seg.to(pos_dtype)
    gw = torch.empty(d_sae, D, dtype=dtype, device=device)
    grid = (d_sae, n_d)
    _sparse_decode_grad_w_sorted_kernel[grid](
        seg, rows, svals, gout, gw,
        D,
        BLOCK_P=block_p,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return gw


class SparseDecode(torch.autograd.Function):
    """Autograd wrapper of the kernels: ``SparseDecode.apply(idx, vals, W_dec, b_dec, options)``.

    idx, vals [M, k] (contiguous); W_dec [d_sae, d_in]; b_dec [d_in] or None; ``options`` a
    :class:`dict` with keys dtype, grad_w, block_m, block_d, block_p, num_warps (see
    :func:`sparse_decode_triton`, which validates inputs and builds it). Returns [M, d_in].
    Gradients for vals, W_dec and b_dec; none for idx; no double backward.
    """

    @staticmethod
    def forward(ctx, idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None, options: dict) -> Tensor:
        o = options
        out = _decode_fwd(idx, vals, W_dec, b_dec, o["dtype"], o["block_m"], o["block_d"], o["num_warps"])
        ctx.save_for_backward(idx, vals, W_dec)
        ctx.options = o
        ctx.b_dtype = b_dec.dtype if b_dec is not None else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        idx, vals, W_dec = ctx.saved_tensors
        o = ctx.options
        gout = grad_out.contiguous()
        grad_vals = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_vals = _decode_grad_vals(idx, gout, W_dec, vals.dtype, o["block_m"], o["block_d"], o["num_warps"])
        if ctx.needs_input_grad[2]:
            grad_w = _decode_grad_w(idx, vals, gout, W_dec.shape[0], W_dec.dtype, o["grad_w"], o["block_m"],
                                    o["block_d"], o["block_p"], o["num_warps"])
        if ctx.b_dtype is not None and ctx.needs_input_grad[3]:
            grad_b = gout.sum(0, dtype=torch.float32).to(ctx.b_dtype)
        return None, grad_vals, grad_w, grad_b, None


def sparse_decode_triton(
    idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None = None, grad_w: str = "sort",
    block_m: int = 16, block_d: int = 128, block_p: int = 32, num_warps: int = 4, check_indices: bool = True,
) -> Tensor:
    """TopK decode with the Triton kernels (differentiable through :class:`SparseDecode`).

    idx [..., k] int32/int64 in [0, d_sae); vals [..., k] floating; W_dec [d_sae, d_in] (any strides);
    b_dec [d_in] or None -> [..., d_in], dtype promoted from vals, W_dec, b_dec, accumulated in float32.
    ``grad_w``: "sort" (deterministic segmented reduction, default) or "atomic" (float32 atomics),
    see the module docstring. ``block_m`` × ``block_d``: row × column tile of the forward, the
    grad-vals and the atomic kernels; ``block_p``: pairs per step of the sorted reduction (powers of
    two >= 16). The defaults compile for sm_90 without spills at <= 128 registers per thread (16 × 128
    tiles at 4 warps; 32 × 128 needs 170-210); ``bench/sae_decoder_gpu.py --sweep`` times other
    choices. ``check_indices=False`` skips the index-range check (which syncs with the device):
    out-of-range ids then read and write out of bounds.
    """
    _require_triton()
    d_sae, d_in, dtype = _check_inputs(idx, vals, W_dec, b_dec, check_indices)
    if W_dec.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the Triton kernels need GPU tensors (CPU tensors only under TRITON_INTERPRET=1): "
                         "use sparse_decode_torch or sparse_decode(..., backend='auto')")
    if grad_w not in GRAD_W_METHODS:
        raise ValueError(f"grad_w must be one of {GRAD_W_METHODS}, got {grad_w!r}")
    _check_blocks(block_m=block_m, block_d=block_d, block_p=block_p)
    lead, k = idx.shape[:-1], idx.shape[-1]
    M = math.prod(lead)
    options = dict(dtype=dtype, grad_w=grad_w, block_m=block_m, block_d=block_d, block_p=block_p,
                   num_warps=num_warps)
    out = SparseDecode.apply(idx.reshape(M, k).contiguous(), vals.reshape(M, k).contiguous(), W_dec, b_dec,
                             options)
    return out.reshape(*lead, d_in)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------
def _use_kernel(t: Tensor, backend: str) -> bool:
    return use_kernel(t, backend, HAS_TRITON, _FALLBACK)


def sparse_decode(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None = None, backend: str = "auto",
                  check_indices: bool = True, **kernel_kwargs) -> Tensor:
    """TopK SAE decode x̂ = Σ_j vals[..., j] · W_dec[idx[..., j]] (+ b_dec) -> [..., d_in].

    The Triton kernels (:func:`sparse_decode_triton`) for CUDA tensors when triton is importable,
    else :func:`sparse_decode_torch` (``F.embedding_bag``). ``backend``: "auto" (default), "triton"
    (force the kernels) or "torch" (force PyTorch). ``kernel_kwargs`` (grad_w, block_m, block_d,
    block_p, num_warps) go to the kernels only. Differentiable in vals, W_dec, b_dec either way.
    """
    if _use_kernel(W_dec, backend):
        return sparse_decode_triton(idx, vals, W_dec, b_dec, check_indices=check_indices, **kernel_kwargs)
    return sparse_decode_torch(idx, vals, W_dec, b_dec, check_indices=check_indices)
