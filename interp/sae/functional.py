"""Pure functions of the SAE math: the activation functions of each architecture, their straight-through
gradients, and the geometric median used to initialise ``b_dec``.

Shapes: ``pre`` is the encoder pre-activation [..., d_sae]; every function returns the same shape.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "relu", "topk", "batch_topk", "jumprelu", "step", "rectangle", "geometric_median",
    "remove_parallel_component", "unit_norm_rows", "gather_pre", "sparse_decode",
]


def relu(pre: Tensor) -> Tensor:
    """ReLU: [..., d_sae] -> [..., d_sae]."""
    return torch.relu(pre)


def topk(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest pre-activations of each token (then ReLU), zero the rest.

    pre [..., d_sae] -> [..., d_sae] with at most ``k`` non-zeros per row.
    """
    values, idx = torch.topk(pre, k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(values))


def batch_topk(pre: Tensor, k: float) -> Tensor:
    """BatchTopK: keep the ``round(k · n_tokens)`` largest ReLU'd pre-activations of the whole batch.

    pre [..., d_sae] -> [..., d_sae]; on average ``k`` non-zeros per token (fewer if some kept values are 0).
    """
    acts = torch.relu(pre)
    flat = acts.flatten()
    n_tokens = acts.shape[:-1].numel()
    keep = min(flat.numel(), max(1, round(k * n_tokens)))
    values, idx = torch.topk(flat, keep, sorted=False)
    return torch.zeros_like(flat).scatter(-1, idx, values).reshape(acts.shape)


class _GatherPre(torch.autograd.Function):
    """pre[m, idx[m, j]] of pre = x W_enc + b_enc, the matmul done once without autograd; sparse backward.

    Only the selected pre-activations carry a gradient, so instead of a dense [M, d_sae] gradient and a dense
    matmul the backward multiplies a sparse [M, d_sae] matrix G (M·k non-zeros) with x and W_enc:
    grad W_enc = xᵀ G, grad b_enc = column sums of G, grad x = G W_encᵀ (M·k·d_in multiply-adds each).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, idx)
        return pre.gather(-1, idx)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, W_enc, idx = ctx.saved_tensors
        m, k = idx.shape
        d_sae = W_enc.shape[1]
        # sparse CSR products exist for float32/float64 only: half-precision SAEs accumulate in float32
        work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        cols, vals = idx.reshape(-1), grad.reshape(-1).to(work)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[0]:
            crow = torch.arange(0, m * k + 1, k, device=idx.device, dtype=torch.int64)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": a plain CSR matmul is all we use
                warnings.simplefilter("ignore", UserWarning)
                g = torch.sparse_csr_tensor(crow, cols.to(torch.int64), vals, (m, d_sae), check_invariants=False)
            if ctx.needs_input_grad[1]:
                grad_w = (g.t() @ x.to(work)).t().to(W_enc.dtype)  # [d_in, d_sae]
            if ctx.needs_input_grad[0]:
                grad_x = (g @ W_enc.to(work).t()).to(x.dtype)  # [m, d_in]
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, device=x.device, dtype=work).index_add_(0, cols, vals).to(W_enc.dtype)
        return grad_x, grad_w, grad_b, None, None


def gather_pre(x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, idx: Tensor) -> Tensor:
    """The pre-activations ``pre[m, idx[m, j]]`` [M, k], differentiable in x [M, d_in], W_enc [d_in, d_sae] and
    b_enc [d_sae] with a sparse backward. ``pre`` [M, d_sae] must equal ``x @ W_enc + b_enc`` (computed without
    autograd); ``idx`` [M, k] int64. Same values and gradients as ``(x @ W_enc + b_enc).gather(-1, idx)``, at
    M·k·d_in instead of M·d_sae·d_in cost for the backward."""
    if x.dim() != 2 or idx.dim() != 2:
        raise ValueError(f"gather_pre takes x [M, d_in] and idx [M, k], got {tuple(x.shape)} and {tuple(idx.shape)}")
    return _GatherPre.apply(x, W_enc, b_enc, pre, idx)


def sparse_decode(idx: Tensor, vals: Tensor, W_dec: Tensor, b_dec: Tensor | None = None) -> Tensor:
    """Σ_j vals[m, j] · W_dec[idx[m, j]] (+ b_dec): idx, vals [M, k], W_dec [d_sae, d_in] -> [M, d_in].

    The decoder of k active latents without the dense [M, d_sae] matrix, at M·k·d_in cost (autograd for
    vals, W_dec and b_dec): :func:`interp.kernels.topk_decoder.sparse_decode`, the Triton kernel on CUDA
    and ``F.embedding_bag`` on the CPU. Indices come from top-k, so their range check is skipped.
    """
    from interp.kernels.topk_decoder import sparse_decode as _sparse_decode

    return _sparse_decode(idx, vals, W_dec, b_dec, check_indices=False)


def rectangle(x: Tensor) -> Tensor:
    """The rectangle kernel K(x) = 1 if -1/2 < x < 1/2 else 0."""
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


class _JumpReLU(torch.autograd.Function):
    """JumpReLU_θ(z) = z · H(z - θ); ∂/∂z = H(z - θ); ∂/∂θ = -(θ/ε) K((z - θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = (pre > threshold).to(grad.dtype) * grad
        grad_threshold = -(threshold / eps) * rectangle((pre - threshold) / eps) * grad
        return grad_pre, _sum_to(grad_threshold, threshold.shape), None


class _Step(torch.autograd.Function):
    """H(z - θ); ∂/∂z = 0; ∂/∂θ = -(1/ε) K((z - θ)/ε) (straight-through)."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1.0 / eps) * rectangle((pre - threshold) / eps) * grad
        return None, _sum_to(grad_threshold, threshold.shape), None


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient [..., d_sae] back to the threshold's shape [d_sae]."""
    return t.reshape(-1, *shape).sum(0) if t.shape != shape else t


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU (Rajamanoharan et al. 2024): pre [..., d_sae], threshold [d_sae] -> [..., d_sae].

    The threshold gets the rectangle-kernel pseudo-derivative of bandwidth ε; the input the ordinary one.
    """
    return _JumpReLU.apply(pre, threshold, bandwidth)


def step(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Heaviside H(pre - threshold) [..., d_sae] with the straight-through threshold gradient (for the L0 loss)."""
    return _Step.apply(pre, threshold, bandwidth)


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-6, eps: float = 1e-8) -> Tensor:
    """Geometric median of ``points`` [n, d] -> [d] (Weiszfeld's algorithm, in float64).

    The point minimising Σ_i ‖p_i - m‖; robust to outliers, unlike the mean it starts from.
    """
    p = points.detach().to(torch.float64).reshape(-1, points.shape[-1])
    m = p.mean(0)
    for _ in range(max_iter):
        w = 1.0 / torch.linalg.vector_norm(p - m, dim=-1).clamp(min=eps)
        new = (w[:, None] * p).sum(0) / w.sum()
        if torch.linalg.vector_norm(new - m) <= tol * max(1.0, float(torch.linalg.vector_norm(m))):
            m = new
            break
        m = new
    return m.to(points.dtype)


def unit_norm_rows(w: Tensor, eps: float = 1e-8) -> Tensor:
    """Rows of ``w`` [n, d] scaled to unit L2 norm."""
    return w / torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp(min=eps)


def remove_parallel_component(grad: Tensor, w: Tensor) -> Tensor:
    """Gradient [n, d] minus its component along each (unit-norm) row of ``w`` [n, d]."""
    w_unit = unit_norm_rows(w)
    return grad - (grad * w_unit).sum(-1, keepdim=True) * w_unit
