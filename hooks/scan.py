"""Selective-scan math for Mamba-1 and Mamba-2 in the heads view. Pure functions, no modules.

Shapes (b = batch, L = positions, H = heads, P = head width, G = B/C groups, N = state size):

    u   [b, L, H, P]   SSM input (post-conv activation)
    dt  [b, L, H]      step size Δ (already softplus-ed / clamped)
    A   [H, N]         Mamba-1: one decay rate per channel and state
        [H]            Mamba-2: one scalar per head
    B,C [b, L, G, N]   head h reads group h // (H // G)
    D   [H]            skip
    h   [b, H, P, N]   recurrent state

Recurrence (exact definition; :func:`sequential_scan` is its reference implementation):

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_tᵀ
    y_t = h_t C_t + D u_t

The fast paths never divide prefix products: decays are cumulative sums of ``Δ A <= 0`` in log
space, with the causal mask applied before ``exp``.

States at chosen positions (what ``ssm.hook_state`` shows) come from :func:`scan_with_states`; an edit of
them is carried through the rest of the recurrence, exactly, by :func:`apply_state_edits`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def expand_groups(X: Tensor, n_heads: int) -> Tensor:
    """[b, L, G, N] -> [b, L, H, N]: head h reads group h // (H // G)."""
    G = X.shape[2]
    if G == n_heads:
        return X
    return X.repeat_interleave(n_heads // G, dim=2)


def _decay_log(dt: Tensor, A: Tensor) -> Tensor:
    """log of the per-step decay Δ_t A: [b, L, H, N] for Mamba-1 A [H, N], [b, L, H] for Mamba-2."""
    return dt[..., None] * A if A.dim() == 2 else dt * A


def update_state(h: Tensor, u: Tensor, dt: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_tᵀ. h [b,H,P,N], u [b,H,P], dt [b,H], B [b,G,N]."""
    Bh = expand_groups(B[:, None], u.shape[1])[:, 0]  # [b, H, N]
    decay = torch.exp(_decay_log(dt, A))  # [b,H,N] or [b,H]
    decay = decay[:, :, None, :] if A.dim() == 2 else decay[:, :, None, None]
    return decay * h + (dt[..., None] * u)[..., None] * Bh[:, :, None, :]


def step(
    h: Tensor, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor
) -> tuple[Tensor, Tensor]:
    """One recurrent step (decoding). h [b,H,P,N], u [b,H,P], dt [b,H], B/C [b,G,N] -> (y [b,H,P], h)."""
    h = update_state(h, u, dt, A, B)
    return read_state(h, C) + D[:, None] * u, h


def sequential_scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    initial_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference scan, one position at a time. Returns (y [b,L,H,P], states [b,L,H,P,N]).

    Slow; used by tests and as the definition every fast path is checked against.
    """
    b, L, H, P = u.shape
    N = B.shape[-1]
    h = u.new_zeros(b, H, P, N) if initial_state is None else initial_state
    ys, hs = [], []
    for t in range(L):
        y, h = step(h, u[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
        hs.append(h)
    return torch.stack(ys, 1), torch.stack(hs, 1)


def segsum(a: Tensor) -> Tensor:
    """Segment sums in log space: [..., T] -> [..., T, T], out[i, j] = Σ_{j<k<=i} a_k, -inf for j > i.

    Masks before summing, so no difference of large prefix sums is ever taken.
    """
    T = a.shape[-1]
    x = a[..., None].expand(*a.shape, T)  # x[..., i, j] = a_i
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    x = x.masked_fill(~strict, 0.0).cumsum(dim=-2)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return x.masked_fill(~causal, float("-inf"))


def _pad_positions(x: Tensor, pad: int) -> Tensor:
    """Zero-pad dim 1 (positions) at the end."""
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[1] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=1)


def _scan_channelwise(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """Mamba-1 fast path (A [H, N]): a two-level chunked scan without D, in O(b·L·H·P) memory.

    1. Inside every chunk of T positions, run the recurrence from a zero state, all chunks at once
       (T steps on [b, chunks, H, P, N]), reading each position out as it goes.
    2. Carry states across chunk boundaries (L/T steps on [b, H, P, N]).
    3. Add each chunk's start state, decayed by exp(Σ ΔA) <= 1, to every position of the chunk.
    About 2T + L/T Python steps instead of L. Decays are built per step from Δ and A, so no
    [L, H, N] tensor is ever materialised (that, not arithmetic, bounds speed on a CPU).
    """
    b, L, H, P = u.shape
    N = A.shape[-1]
    T = chunk
    pad = (-L) % T
    if B.shape[2] != 1:  # Mamba-1 has one B/C group; other layouts share by copying per head
        B, C = expand_groups(B, H), expand_groups(C, H)
    G = B.shape[2]
    x = _pad_positions(dt[..., None] * u, pad)  # Δ u, [b, L', H, P]
    dt, B, C = _pad_positions(dt, pad), _pad_positions(B, pad), _pad_positions(C, pad)  # pad: Δ = 0
    c = x.shape[1] // T
    x, dt = x.view(b, c, T, H, P), dt.view(b, c, T, H)
    B, C = B.view(b, c, T, G, 1, N), C.view(b, c, T, G, 1, N)  # broadcast over heads (G = 1) or per head

    if c == 1 and b * T * H * P * N <= _SEQUENTIAL_ELEMENTS:  # short: the plain recurrence from h0, one op a step
        decay = torch.exp(dt[:, 0, :, :, None] * A)[:, :, :, None, :]  # [b, T, H, 1, N]
        inputs = x[:, 0, :, :, :, None] * B[:, 0]  # Δ u B, [b, T, H, P, N]
        states = torch.empty_like(inputs)
        h = h0
        for t in range(T):
            h = torch.addcmul(inputs[:, t], decay[:, t], h)  # h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t
            states[:, t] = h
        return (states * C[:, 0]).sum(-1)[:, :L], h  # y_t = C_t · h_t, [b, L, H, P]
    y = u.new_empty(b, c, T, H, P)
    # 1. intra-chunk recurrence from zero, every chunk in parallel
    h = u.new_zeros(b, c, H, P, N)
    for t in range(T):
        decay = torch.exp(dt[:, :, t, :, None] * A)  # [b, c, H, N]
        h = torch.addcmul(decay[:, :, :, None, :] * h, x[:, :, t, :, :, None], B[:, :, t])
        y[:, :, t] = (h * C[:, :, t]).sum(-1)  # C·h; a [1, N] @ [N, 1] bmm per channel is ~10x slower
    # 2. chunk-start states
    chunk_log_decay = dt.sum(dim=2)[..., None] * A  # [b, c, H, N], <= 0
    starts = []
    s = h0
    for j in range(c):
        starts.append(s)
        s = torch.exp(chunk_log_decay[:, j])[:, :, None, :] * s + h[:, j]
    start = torch.stack(starts, dim=1)  # [b, c, H, P, N]
    # 3. decayed start state read out at every position
    log_decay = torch.zeros_like(chunk_log_decay)
    for t in range(T):
        log_decay = log_decay + dt[:, :, t, :, None] * A
        y[:, :, t] += (start * torch.exp(log_decay)[:, :, :, None, :] * C[:, :, t]).sum(-1)
    return y.view(b, c * T, H, P)[:, :L], s


def _scan_ssd(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """Mamba-2 fast path (A [H]): the chunked state-space-duality algorithm, without D.

    Diagonal blocks are masked attention-like matmuls, off-diagonal blocks factor through the chunk
    states (rank N). Heads are grouped as H = G * R so B/C are never copied per head.
    """
    b, L, H, P = u.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G
    T = chunk
    pad = (-L) % T
    x = _pad_positions(u * dt[..., None], pad)  # [b, L', H, P]
    a = _pad_positions(dt * A, pad)  # [b, L', H]
    B, C = _pad_positions(B, pad), _pad_positions(C, pad)
    c = x.shape[1] // T
    x = x.view(b, c, T, G, R, P)
    B, C = B.view(b, c, T, G, N), C.view(b, c, T, G, N)
    a = a.view(b, c, T, G, R).permute(0, 3, 4, 1, 2)  # [b, G, R, c, T]
    a_cum = a.cumsum(dim=-1)

    # 1. diagonal blocks
    Lmat = torch.exp(segsum(a))  # [b, G, R, c, T(l), T(s)]
    CB = torch.einsum("bclgn,bcsgn->bgcls", C, B)  # [b, G, c, T, T]
    M = CB[:, :, None] * Lmat  # [b, G, R, c, T, T]
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", M, x)
    # 2. state contributed by each chunk, at its end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [b, G, R, c, T]
    chunk_states = torch.einsum("bcsgn,bgrcs,bcsgrp->bcgrpn", B, decay_to_end, x)
    # 3. chunk-start states (recurrence over chunks, in log space)
    init = h0.view(b, 1, G, R, P, N)
    states = torch.cat([init, chunk_states], dim=1)  # [b, c+1, G, R, P, N]
    chunk_log = F.pad(a_cum[..., -1], (1, 0))  # [b, G, R, c+1]
    decay_chunk = torch.exp(segsum(chunk_log))  # [b, G, R, c+1, c+1]
    states = torch.einsum("bgrzs,bsgrpn->bzgrpn", decay_chunk, states)
    start, final = states[:, :-1], states[:, -1]
    # 4. start states read out inside each chunk
    y = y + torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", C, start, torch.exp(a_cum))
    return y.reshape(b, c * T, H, P)[:, :L], final.reshape(b, H, P, N)


#: up to this length the channelwise scan is one chunk, i.e. the plain recurrence (L steps instead of about
#: 2·sqrt(L) + sqrt(L) steps on sqrt(L)-times bigger tensors: on a CPU short scans are bound by per-step overhead)
SEQUENTIAL_MAX = 24
#: ... as long as its states [b, L, H, P, N] stay this small (elements); else the chunked loop, which keeps none
_SEQUENTIAL_ELEMENTS = 2**24


def default_chunk(L: int, A: Tensor, chunk_size: int) -> int:
    """Chunk length: the family's configured size for SSD; for the channelwise scan, 64 (measured
    fastest on a CPU at L = 1024, see bench/forward.py), fewer for short inputs, and all of a short input
    (<= :data:`SEQUENTIAL_MAX`)."""
    if A.dim() == 1:
        return chunk_size
    if L <= SEQUENTIAL_MAX:
        return max(L, 1)
    return int(min(64, max(8, 2 ** math.ceil(math.log2(max(L, 1)) / 2))))


def chunked_scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    initial_state: Tensor | None = None,
    chunk_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Fast scan for either family. Returns (y [b, L, H, P], final state [b, H, P, N]), float32 math."""
    b, L, H, P = u.shape
    N = B.shape[-1]
    dtype = u.dtype
    u, dt, B, C = u.float(), dt.float(), B.float(), C.float()
    A, D = A.float(), D.float()
    h0 = u.new_zeros(b, H, P, N) if initial_state is None else initial_state.float()
    if L == 0:
        return u.new_zeros(b, 0, H, P).to(dtype), h0
    inputs = (u, dt, A, B, C, h0)
    if not _use_fused_cpu_scan(*inputs):
        y, h = _torch_scan(*inputs, chunk_size)
    elif torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        y, h = _FusedScan.apply(*inputs, chunk_size)
    else:
        y, h = _fused_scan(*inputs)
    y = y + D[:, None] * u
    return y.to(dtype), h


def _torch_scan(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor,
                chunk_size: int) -> tuple[Tensor, Tensor]:
    """The PyTorch paths without D (float32 inputs): Mamba-2's chunked SSD or Mamba-1's two-level chunked scan."""
    chunk = default_chunk(u.shape[1], A, chunk_size)
    return (_scan_ssd if A.dim() == 1 else _scan_channelwise)(u, dt, A, B, C, h0, chunk)


def _fused_scan(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """The numba kernel without D (float32 CPU inputs, detached)."""
    mamba1, mamba2 = _fused_cpu_scans()
    if A.dim() == 1:
        return mamba2(u, dt, A, B, C, h0)
    y, h = mamba1(u[..., 0], dt, A, B[:, :, 0], C[:, :, 0], h0[..., 0, :])
    return y[..., None], h[:, :, None, :]


class _FusedScan(torch.autograd.Function):
    """The fused kernel forward, the PyTorch path's gradient: the backward recomputes the scan with
    :func:`_torch_scan` and differentiates that, so a forward under autograd gives the same values as one without
    (the kernel's) and exact gradients of the same function."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk_size):  # type: ignore[override]
        ctx.save_for_backward(u, dt, A, B, C, h0)
        ctx.chunk_size = chunk_size
        return _fused_scan(u.detach(), dt.detach(), A.detach(), B.detach(), C.detach(), h0.detach())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_h):  # type: ignore[override]
        inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad)]
        with torch.enable_grad():
            y, h = _torch_scan(*inputs, ctx.chunk_size)
        outputs, grads = zip(*[(o, g) for o, g in ((y, grad_y), (h, grad_h)) if g is not None])
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True))
        return (*[next(found) if t.requires_grad else None for t in inputs], None)


#: whether :func:`chunked_scan` may run the scan with the fused numba kernels (``interp.hooks.scan_cpu``) where they
#: apply; False: always the PyTorch paths
FUSED_CPU_SCAN = True
_FUSED: list = []


def _fused_cpu_scans():
    """(Mamba-1 kernel, Mamba-2 kernel), or None without numba (imported on first use: importing numba takes
    ~0.5 s)."""
    if not _FUSED:
        from .scan_cpu import HAS_NUMBA, selective_scan_numba, ssd_scan_numba

        _FUSED.append((selective_scan_numba, ssd_scan_numba) if HAS_NUMBA else None)
    return _FUSED[0]


def _use_fused_cpu_scan(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> bool:
    """A fused kernel applies: on the CPU, in Mamba-2's layout (A [H]) or in Mamba-1's (A [H, N], one channel per
    head, one B/C group), with numba installed. Under autograd the forward is the kernel's and the backward the
    PyTorch path's (:class:`_FusedScan`)."""
    if not FUSED_CPU_SCAN or u.device.type != "cpu":
        return False
    if A.dim() == 2 and (u.shape[-1] != 1 or B.shape[2] != 1):
        return False
    return _fused_cpu_scans() is not None


def read_state(h: Tensor, C: Tensor) -> Tensor:
    """y contribution of a state: h [b, H, P, N], C [b, G, N] -> [b, H, P]."""
    Ch = expand_groups(C[:, None], h.shape[1])[:, 0]
    return torch.einsum("bhpn,bhn->bhp", h, Ch)


# --------------------------------------------------------------------------------------------
# states at chosen positions, and editing them
# --------------------------------------------------------------------------------------------
def scan_with_states(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
    h0: Tensor | None, positions: list[int], chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Scan that also returns h_t at the sorted local ``positions``: (y, final, states [b, k, H, P, N]).

    Dense requests use the sequential scan; sparse ones split the sequence at the positions and
    run the chunked scan on each segment, carrying the state across.
    """
    L = u.shape[1]
    if len(positions) * 8 >= L:
        y, hs = sequential_scan(u.float(), dt.float(), A, B.float(), C.float(), D, None if h0 is None else h0.float())
        return y.to(u.dtype), hs[:, -1], hs[:, positions]
    ys, states, h = [], [], h0
    start = 0
    for end in [p + 1 for p in positions] + [L]:
        if end > start:
            y_seg, h = chunked_scan(u[:, start:end], dt[:, start:end], A, B[:, start:end], C[:, start:end], D, h, chunk_size)
            ys.append(y_seg)
        if end - 1 in positions and len(states) < len(positions):
            states.append(h)
        start = end
    return torch.cat(ys, dim=1), h, torch.stack(states, dim=1)


def apply_state_edits(
    y: Tensor, h_final: Tensor, delta: Tensor, positions: list[int], dt: Tensor, A: Tensor, C: Tensor
) -> tuple[Tensor, Tensor]:
    """Propagate state edits through the rest of the recurrence, exactly.

    The recurrence is linear in h, so adding δ to h_p adds exp(A (S_t - S_p)) ⊙ δ to every later
    state h_t (S = cumsum Δ) and C_t · that to y_t, for t >= p. delta: [b, k, H, P, N]. Each edit
    is applied as a difference; with one position this equals setting the state.
    """
    y, h_final = y.clone(), h_final.clone()
    H = y.shape[2]
    Ch = expand_groups(C.float(), H)  # [b, L, H, N]
    for j, p in enumerate(positions):
        d = delta[:, j].float()  # [b, H, P, N]
        if not d.requires_grad and not torch.any(d):  # a zero edit that carries a gradient (backward hook) stays
            continue
        # log decay from p to t, t = p..L-1 (zero at t = p), cumulated forward: [b, L-p, H(, N)]
        log_a = _decay_log(dt[:, p + 1:].float(), A)
        cum = F.pad(log_a.cumsum(dim=1), (0, 0) * (log_a.dim() - 2) + (1, 0))  # pad t at the front
        if A.dim() == 2:
            corr = torch.einsum("bthn,bhpn->bthp", Ch[:, p:] * torch.exp(cum), d)
            h_final += torch.exp(cum[:, -1])[:, :, None, :] * d
        else:
            corr = torch.einsum("bthn,bhpn->bthp", Ch[:, p:], d) * torch.exp(cum)[..., None]
            h_final += torch.exp(cum[:, -1])[:, :, None, None] * d
        y[:, p:] += corr.to(y.dtype)
    return y, h_final
