"""Pure functions of the SAE math: the activation functions of each architecture, their straight-through
gradients, and the geometric median used to initialise ``b_dec``.

Shapes: ``pre`` is the encoder pre-activation [..., d_sae]; every function returns the same shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "relu", "topk", "batch_topk", "jumprelu", "step", "rectangle", "geometric_median",
    "remove_parallel_component", "unit_norm_rows",
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
