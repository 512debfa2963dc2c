"""Fused CPU kernels (numba) for the selective scan, the model forward's hot loop: Mamba-1's
(:func:`selective_scan_numba`) and Mamba-2's (:func:`ssd_scan_numba`, at the end). They live with the model, not in
``interp.kernels``: layers point one way (models ← kernels), and the forward itself calls them.

Same conventions and result as :func:`interp.hooks.scan.sequential_scan` (the reference) for the Mamba-1 layout,
without the skip term D·u (the caller adds it), one channel c per d_inner unit and one B/C group:

    u, dt [b, L, d]   A [d, N]   B, C [b, L, N]   h0 [b, d, N]

    h_t[c] = exp(Δ_t[c] A[c]) ⊙ h_{t-1}[c] + Δ_t[c] u_t[c] B_t        y_t[c] = C_t · h_t[c]

One pass over the positions, each state read and written once, nothing of size [b, L, d, N] ever materialised (the
PyTorch paths write the decays or the states and read them back; on a CPU that memory traffic, not the
b·L·d·N multiply-adds, is what bounds them). Per position and channel the N states are one SIMD vector: their
decays come from an inlined exp (Cody–Waite range reduction and a degree-6 polynomial, relative error ≤ 1.2e-7 on
[-87, 88]; an argument below -87 counts as -87: a decay below 1.6e-38 is given as 1.6e-38, an absolute error that
float32 states cannot show; above 88, where float32 overflows, as exp(88)), so the loop over the state vectorises,
which numba's ``math.exp`` (a scalar libm call) would prevent. Threads split the channels (each owns its states:
no races); denormals are flushed to zero inside the kernel (``hooks/_numba.py``, shared with the CPU kernels).

Forward only (inputs are detached): the model uses it when no gradient is needed (``interp.hooks.scan``), and the
PyTorch path otherwise. numba is optional: without it ``HAS_NUMBA`` is False and the model keeps its PyTorch scan.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._numba import HAS_NUMBA, Pool, ftz_enter, ftz_leave, jit

__all__ = ["HAS_NUMBA", "selective_scan_numba", "ssd_scan_numba"]

if HAS_NUMBA:
    import math

    f32 = np.float32

    @jit(inline="always")
    def _exp_parts(v):
        """exp(v) for v clamped to [-87, 88] as (mantissa p ∈ [0.7, 1.5), exponent -126 ≤ k ≤ 127): p · 2^k."""
        v = min(max(v, f32(-87.0)), f32(88.0))
        k = math.floor(v * f32(1.4426950408889634) + f32(0.5))
        r = v - k * f32(0.693359375) + k * f32(2.12194440e-4)  # v − k·ln 2 in two parts (Cody–Waite)
        p = f32(1.9875691500e-4)
        p = p * r + f32(1.3981999507e-3)
        p = p * r + f32(8.3334519073e-3)
        p = p * r + f32(4.1665795894e-2)
        p = p * r + f32(1.6666665459e-1)
        p = p * r + f32(5.0000001201e-1)
        return p * r * r + r + f32(1.0), k

    @jit()
    def _scan_channels(u, dt, A, B, C, h, y, start, step):
        """Thread ``start`` of ``step``: a contiguous slice of the channels (whole 16-channel blocks) of every
        sequence, positions in order; h [b, d, N] holds h0 on entry and the last state on exit."""
        csr = ftz_enter()
        b, L, d = u.shape
        N = A.shape[1]
        blocks = (d + 15) // 16
        c0, c1 = min(d, 16 * (blocks * start // step)), min(d, 16 * (blocks * (start + 1) // step))
        e = np.empty(N, np.float32)
        e_bits = e.view(np.int32)  # e · 2^k: add k to the exponent field of the mantissa's bits
        for s in range(b):
            us, dts, Bs, Cs, hs, ys = u[s], dt[s], B[s], C[s], h[s], y[s]
            for t in range(L):
                Bt, Ct, ut, dtt, yt = Bs[t], Cs[t], us[t], dts[t], ys[t]
                for c in range(c0, c1):
                    dv = dtt[c]
                    x = dv * ut[c]
                    a, hc = A[c], hs[c]
                    for n in range(N):
                        v = dv * a[n]
                        p, k = _exp_parts(v)
                        e[n] = p
                        e_bits[n] += np.int32(k) << 23
                    acc = f32(0.0)
                    for n in range(N):
                        hv = e[n] * hc[n] + x * Bt[n]
                        hc[n] = hv
                        acc += hv * Ct[n]
                    yt[c] = acc
        ftz_leave(csr)


    @jit()
    def _scan_heads(x, dt, A, B, C, h, y, start, step):
        """Thread ``start`` of ``step``: every ``step``-th (sequence, head) pair, positions in order; a head's state
        [P, N] stays in cache for the whole sequence. h [b, H, P, N] holds h0 on entry and the last state on exit."""
        csr = ftz_enter()
        b, L, H, P = x.shape
        N = B.shape[3]
        R = H // B.shape[2]
        for pair in range(start, b * H, step):
            s, hd = pair // H, pair % H
            g, hs, a_h = hd // R, h[s, hd], A[hd]
            for t in range(L):
                dv = dt[s, t, hd]
                decay = math.exp(dv * a_h)  # one scalar decay per head and step
                Bt, Ct, xt, yt = B[s, t, g], C[s, t, g], x[s, t, hd], y[s, t, hd]
                for p in range(P):
                    xp = dv * xt[p]
                    row = hs[p]
                    acc = f32(0.0)
                    for n in range(N):
                        v = decay * row[n] + xp * Bt[n]
                        row[n] = v
                        acc += v * Ct[n]
                    yt[p] = acc
        ftz_leave(csr)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def _launch(kernel, inputs: tuple[Tensor, ...], h0: Tensor | None, h_shape: tuple[int, ...],
            y_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Run ``kernel(*inputs, h, y, start, step)`` on the thread pool: h starts as h0 (zeros when None) and ends as the
    last state, y [y_shape] is the output. Returns (y, h) as tensors."""
    h = np.zeros(h_shape, np.float32) if h0 is None else _np(h0).copy()
    if h.shape != h_shape:
        raise ValueError(f"h0 must have shape {h_shape}, got {tuple(h0.shape)}")
    y = np.empty(y_shape, np.float32)
    if y.size:
        with Pool() as pool:
            pool.run(kernel, *[_np(t) for t in inputs], h, y)
    return torch.from_numpy(y), torch.from_numpy(h)


def selective_scan_numba(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba-1 selective scan without D: u, dt [b, L, d], A [d, N], B, C [b, L, N], h0 [b, d, N] or None (zeros)
    -> (y [b, L, d], last state [b, d, N]), float32 CPU tensors. Threads: ``torch.get_num_threads()``. Not
    differentiable (inputs are detached)."""
    if not HAS_NUMBA:
        raise RuntimeError("numba is not installed (pip install 'interp[cpu-kernels]'); "
                           "interp.hooks.scan.chunked_scan falls back to PyTorch")
    b, L, d = u.shape
    N = A.shape[-1]
    if dt.shape != u.shape or A.shape != (d, N) or B.shape != (b, L, N) or C.shape != B.shape:
        raise ValueError(f"shapes do not match the Mamba-1 layout: u {tuple(u.shape)}, dt {tuple(dt.shape)}, "
                         f"A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    if any(x.device.type != "cpu" for x in (u, dt, A, B, C)):
        raise ValueError("the numba kernel takes CPU tensors")
    return _launch(_scan_channels, (u, dt, A, B, C), h0, (b, d, N), (b, L, d))


def ssd_scan_numba(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mamba-2 scan without D, as the plain recurrence per head (one scalar decay exp(Δ_t A_h) per head and step):
    u [b, L, H, P], dt [b, L, H], A [H], B, C [b, L, G, N] (head h reads group h // (H / G)), h0 [b, H, P, N] or None
    -> (y [b, L, H, P], last state [b, H, P, N]), float32 CPU tensors. The chunked SSD form
    (``interp.hooks.scan._scan_ssd``) turns the scan into matrix products, which pays on a GPU; on a CPU the
    recurrence, whose [P, N] state stays in cache, does the same b·L·H·P·N multiply-adds with far less memory
    traffic. Threads: ``torch.get_num_threads()`` over the (sequence, head) pairs. Not differentiable."""
    if not HAS_NUMBA:
        raise RuntimeError("numba is not installed (pip install 'interp[cpu-kernels]'); "
                           "interp.hooks.scan.chunked_scan falls back to PyTorch")
    b, L, H, P = u.shape
    G, N = B.shape[2], B.shape[3]
    if dt.shape != (b, L, H) or A.shape != (H,) or B.shape[:2] != (b, L) or C.shape != B.shape or H % G:
        raise ValueError(f"shapes do not match the Mamba-2 layout: u {tuple(u.shape)}, dt {tuple(dt.shape)}, "
                         f"A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    if any(x.device.type != "cpu" for x in (u, dt, A, B, C)):
        raise ValueError("the numba kernel takes CPU tensors")
    return _launch(_scan_heads, (u, dt, A, B, C), h0, (b, H, P, N), (b, L, H, P))
