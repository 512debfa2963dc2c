"""The math of steering, as pure torch functions: where directions and maps come from, and how they edit.

Shapes: activations ``X`` [n, d]; a direction ``v`` [d]; several directions ``V`` [k, d]; an affine map
``f(h) = h A^T + b`` with ``A`` [d, d], ``b`` [d]. Fitting runs in float64 and returns float32.

Sources (docs/design.md §6):

* :func:`mean_difference` (CAA / ActAdd): mean(target) - mean(baseline).
* :func:`paired_pca` (RepE): top principal directions of paired differences.
* :func:`mean_matching_map`: f(h) = h + (μ_t - μ_s).
* :func:`gaussian_ot_map`: f(h) = μ_t + A (h - μ_s), A = Σ_s^{-1/2} (Σ_s^{1/2} Σ_t Σ_s^{1/2})^{1/2} Σ_s^{-1/2}, the
  optimal-transport map between the two Gaussians (it sends N(μ_s, Σ_s) onto N(μ_t, Σ_t) exactly).
* :func:`leace_map`: LEACE (Belrose et al. 2023), the least-squares edit after which no linear classifier
  beats a constant at predicting ``Z``: r(x) = x - W⁺ P W (x - μ), W = Σ_XX^{-1/2} (whitening),
  P the orthogonal projection onto the column space of W Σ_XZ, W⁺ = Σ_XX^{1/2} (unwhitening).

Operators (each maps ``x`` [..., d] to the same shape; ``scale`` 0 is the identity for every one):

* :func:`op_add`: x + scale · v.
* :func:`op_ablate`: x - scale · proj_V(x) (project out the span of V).
* :func:`op_clamp`: set the coordinate(s) along the orthonormalised V to ``value`` (moved by ``scale``).
* :func:`op_replace`: (1 - scale) x + scale · v.
* :func:`op_affine`: x + scale · (f(x) - x).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "mean_difference", "paired_pca", "orthonormal_basis", "sym_sqrt", "sym_inv_sqrt", "covariance",
    "mean_matching_map", "gaussian_ot_map", "leace_map", "op_add", "op_ablate", "op_clamp", "op_replace", "op_affine",
]


def _check2d(X: Tensor, name: str) -> Tensor:
    X = torch.as_tensor(X)
    if X.dim() != 2 or X.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [n, d] matrix of activations, got shape {tuple(X.shape)}")
    return X


# --------------------------------------------------------------------------------------------
# directions
# --------------------------------------------------------------------------------------------
def mean_difference(target: Tensor, baseline: Tensor) -> Tensor:
    """CAA / ActAdd direction: mean(target) - mean(baseline): [d] (target [n, d], baseline [m, d])."""
    target, baseline = _check2d(target, "target"), _check2d(baseline, "baseline")
    if target.shape[1] != baseline.shape[1]:
        raise ValueError(f"target has width {target.shape[1]} but baseline {baseline.shape[1]}")
    return (target.double().mean(0) - baseline.double().mean(0)).float()


def paired_pca(positive: Tensor, negative: Tensor, k: int = 1) -> Tensor:
    """RepE direction(s): the top ``k`` principal directions of the paired differences D = positive - negative.

    The pairs are ordered (positive first), so the SVD is taken without centring: the first direction is the
    dominant consistent difference. Each direction is signed so that the mean difference projects
    non-negatively on it, and has length sqrt(mean((D·u)²)) (the RMS of the differences along it).

    Returns: [k, d].
    """
    positive, negative = _check2d(positive, "positive"), _check2d(negative, "negative")
    if positive.shape != negative.shape:
        raise ValueError(f"paired activations must have the same shape, got {tuple(positive.shape)} and "
                         f"{tuple(negative.shape)}")
    D = (positive - negative).double()
    if not 1 <= k <= min(D.shape):
        raise ValueError(f"k must be in 1..{min(D.shape)}, got {k}")
    _, S, Vh = torch.linalg.svd(D, full_matrices=False)
    U = Vh[:k]  # [k, d]
    sign = torch.sign(U @ D.mean(0))
    sign[sign == 0] = 1
    return (U * (sign * S[:k] / D.shape[0] ** 0.5)[:, None]).float()


def orthonormal_basis(V: Tensor, tol: float = 1e-5) -> Tensor:
    """Orthonormal rows spanning the rows of V [k, d]: [r, d]. Rows whose new component is below ``tol`` times
    the largest are dropped (float32 round-off makes exactly dependent rows look independent)."""
    V = torch.as_tensor(V).double()
    V = V[None] if V.dim() == 1 else V
    Q, R = torch.linalg.qr(V.T)
    diag = R.diagonal()
    Q = Q * torch.where(diag < 0, -1.0, 1.0).to(Q)  # signs as given: the first row is V[0] / |V[0]|
    keep = diag.abs() > tol * max(1.0, float(diag.abs().max()) if R.numel() else 1.0)
    if not bool(keep.any()):
        raise ValueError("the direction(s) are zero: nothing to project onto")
    return Q.T[keep].float()


# --------------------------------------------------------------------------------------------
# covariances and affine maps
# --------------------------------------------------------------------------------------------
def covariance(X: Tensor) -> tuple[Tensor, Tensor]:
    """(mean [d], covariance [d, d]) of X [n, d] in float64 (maximum-likelihood, divided by n)."""
    X = _check2d(X, "X").double()
    mu = X.mean(0)
    Xc = X - mu
    return mu, Xc.T @ Xc / X.shape[0]


def _eigh_psd(S: Tensor) -> tuple[Tensor, Tensor]:
    S = (S + S.T) / 2
    w, Q = torch.linalg.eigh(S)
    return w.clamp(min=0), Q


def sym_sqrt(S: Tensor) -> Tensor:
    """Symmetric PSD square root of S [d, d] by eigendecomposition (negative eigenvalues clipped to 0)."""
    w, Q = _eigh_psd(S)
    return (Q * w.sqrt()) @ Q.T


def sym_inv_sqrt(S: Tensor, tol: float = 1e-10) -> Tensor:
    """Pseudo-inverse symmetric square root of S [d, d]: eigenvalues below ``tol · max`` are treated as 0."""
    w, Q = _eigh_psd(S)
    keep = w > tol * max(float(w.max()), 1e-300)
    inv = torch.where(keep, w.clamp(min=1e-300).rsqrt(), torch.zeros_like(w))
    return (Q * inv) @ Q.T


def mean_matching_map(source: Tensor, target: Tensor) -> Tensor:
    """Affine mean matching: the shift b = μ_t - μ_s [d] (the map is f(h) = h + b)."""
    return mean_difference(target, source)


def gaussian_ot_map(source: Tensor, target: Tensor, ridge: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Optimal-transport map between Gaussian fits of ``source`` and ``target`` activations.

    f(h) = μ_t + A (h - μ_s) with A = Σ_s^{-1/2} (Σ_s^{1/2} Σ_t Σ_s^{1/2})^{1/2} Σ_s^{-1/2} (symmetric PSD).
    ``ridge`` (relative to the mean variance) is added to both covariances so Σ_s is invertible.

    Returns: (A [d, d], b [d]) with f(h) = h A^T + b, b = μ_t - A μ_s.
    """
    mu_s, S_s = covariance(source)
    mu_t, S_t = covariance(target)
    d = S_s.shape[0]
    eye = torch.eye(d, dtype=torch.float64)
    S_s = S_s + ridge * float(S_s.diagonal().mean().clamp(min=1e-12)) * eye
    S_t = S_t + ridge * float(S_t.diagonal().mean().clamp(min=1e-12)) * eye
    r = sym_sqrt(S_s)
    r_inv = sym_inv_sqrt(S_s)
    A = r_inv @ sym_sqrt(r @ S_t @ r) @ r_inv
    A = (A + A.T) / 2
    return A.float(), (mu_t - A @ mu_s).float()


def leace_map(X: Tensor, Z: Tensor, tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    """LEACE concept erasure (Belrose et al. 2023), closed form.

    Args:
        X: [n, d] activations.
        Z: [n] integer class labels (one-hot encoded here) or [n, k] concept values.

    Returns:
        (A [d, d], b [d]) of the eraser r(x) = x A^T + b = x - W⁺ P W (x - μ), so that the covariance between
        r(X) and Z is zero (no linear probe does better than chance on r(X)).
    """
    X = _check2d(X, "X").double()
    Z = torch.as_tensor(Z)
    if Z.dim() == 1:
        if Z.is_floating_point():
            Z = Z[:, None].double()
        else:
            _, inv = torch.unique(Z, return_inverse=True)
            Z = torch.nn.functional.one_hot(inv).double()
    Z = Z.double()
    if Z.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Z has {Z.shape[0]}")
    mu, S_xx = covariance(X)
    S_xz = (X - mu).T @ (Z - Z.mean(0)) / X.shape[0]  # [d, k]
    W = sym_inv_sqrt(S_xx, tol)
    W_pinv = sym_sqrt(S_xx)
    U, s, _ = torch.linalg.svd(W @ S_xz, full_matrices=False)
    U = U[:, s > tol * max(float(s.max()) if s.numel() else 0.0, 1e-300)]  # basis of the column space
    P = U @ U.T
    E = W_pinv @ P @ W  # the oblique projection that is removed
    A = torch.eye(X.shape[1], dtype=torch.float64) - E
    return A.float(), (E @ mu).float()


# --------------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------------
def op_add(x: Tensor, v: Tensor, scale: float = 1.0) -> Tensor:
    """x [..., d] + scale · v [d]."""
    return x + scale * v


def op_ablate(x: Tensor, Q: Tensor, scale: float = 1.0) -> Tensor:
    """Project out the span of the orthonormal rows Q [k, d]: x - scale · (x Q^T) Q."""
    return x - scale * (x @ Q.T) @ Q


def op_clamp(x: Tensor, Q: Tensor, value: Tensor, scale: float = 1.0) -> Tensor:
    """Set the coordinates x·Q_j (Q [k, d] orthonormal) to ``value`` [k] (or a scalar):
    x + scale · (value - x Q^T) Q."""
    return x + scale * (value - x @ Q.T) @ Q


def op_replace(x: Tensor, v: Tensor, scale: float = 1.0) -> Tensor:
    """(1 - scale) x + scale · v: scale 1 replaces x by v."""
    return x + scale * (v - x)


def op_affine(x: Tensor, A: Tensor | None, b: Tensor, scale: float = 1.0) -> Tensor:
    """x + scale · (f(x) - x) with f(x) = x A^T + b (A None: the identity, a pure shift)."""
    fx = x + b if A is None else x @ A.T + b
    return x + scale * (fx - x)
