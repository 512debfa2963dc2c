"""Feature ranking for k-sparse probes (Gurnee et al. 2023, "Finding neurons in a haystack").

Every ranker maps ``X`` [n, d] (standardised features) and ``y`` [n] class indices ``0..K-1`` to a score
per feature [d], higher = more informative; :func:`rank_features` sorts by it.

* ``mean_diff``: max over classes of |mean(class) - mean(rest)| (one-vs-rest; the classic binary
  mean-difference ranking for K = 2).
* ``f_stat``: one-way ANOVA F statistic (between-class over within-class variance).
* ``mutual_info``: plug-in mutual information between the class and the feature binned at its quantiles.
* ``l1``: entry order along a group-lasso logistic regularisation path (a feature's group = its weights for
  all classes); earlier entry = higher score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RANKERS", "rank_features", "mean_diff_scores", "f_stat_scores", "mutual_info_scores", "l1_path_scores"]


def _class_means(X: Tensor, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    counts = torch.bincount(y, minlength=n_classes).to(X.dtype)
    sums = torch.zeros(n_classes, X.shape[1], dtype=X.dtype, device=X.device).index_add_(0, y, X)
    return sums / counts.clamp(min=1)[:, None], counts


def mean_diff_scores(X: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """[d]: max_c |mean_c - mean_rest| (classes with no rows or all rows are skipped)."""
    means, counts = _class_means(X, y, n_classes)
    n = X.shape[0]
    total = X.sum(0)
    rest = (total[None] - means * counts[:, None]) / (n - counts).clamp(min=1)[:, None]
    valid = (counts > 0) & (counts < n)
    diff = (means - rest).abs()[valid]
    if n_classes == 2 and valid.all():
        diff = diff[:1]
    return diff.max(0).values if len(diff) else torch.zeros(X.shape[1], dtype=X.dtype)


def f_stat_scores(X: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """[d]: ANOVA F = (SS_between / (K - 1)) / (SS_within / (n - K)) over the classes present."""
    means, counts = _class_means(X, y, n_classes)
    present = counts > 0
    K, n = int(present.sum()), X.shape[0]
    if K < 2 or n <= K:
        return torch.zeros(X.shape[1], dtype=X.dtype)
    grand = X.mean(0)
    ss_between = (counts[:, None] * (means - grand).pow(2)).sum(0)
    ss_within = (X - means[y]).pow(2).sum(0)
    return (ss_between / (K - 1)) / (ss_within / (n - K)).clamp(min=1e-12)


def mutual_info_scores(X: Tensor, y: Tensor, n_classes: int, n_bins: int = 16) -> Tensor:
    """[d]: I(feature bin; class) in nats, each feature cut at its ``n_bins``-quantiles (plug-in estimate)."""
    n, d = X.shape
    qs = torch.linspace(0, 1, n_bins + 1, dtype=X.dtype)[1:-1]
    edges = torch.quantile(X, qs.to(X.device), dim=0).T.contiguous()  # [d, n_bins - 1]
    bins = torch.searchsorted(edges, X.T.contiguous(), right=True)  # [d, n]
    joint = torch.zeros(d, n_bins * n_classes, dtype=torch.float64, device=X.device)
    joint.scatter_add_(1, bins * n_classes + y[None], torch.ones(d, n, dtype=torch.float64, device=X.device))
    p = (joint / n).view(d, n_bins, n_classes)
    pb, pc = p.sum(2, keepdim=True), p.sum(1, keepdim=True)
    ratio = torch.where(p > 0, p / (pb * pc).clamp(min=1e-300), torch.ones_like(p))
    return (p * ratio.log()).sum((1, 2)).to(X.dtype)


def l1_path_scores(
    X: Tensor, y: Tensor, n_classes: int, n_lambdas: int = 20, min_ratio: float = 1e-3, iters: int = 40,
    max_rows: int = 8192, seed: int = 0,
) -> Tensor:
    """[d]: order of entry along a group-lasso multinomial logistic path (proximal gradient, warm starts).

    The penalty λ Σ_j ||W[:, j]||₂ runs from λ_max (all weights zero) down to ``min_ratio · λ_max`` over
    ``n_lambdas`` values. A feature scores ``n_lambdas - t`` if it first becomes non-zero at step ``t``,
    plus its final group norm as a tie-break (scaled below 1); features that never enter score their
    norm only. At most ``max_rows`` rows (a random subset) are used.
    """
    n, d = X.shape
    if n > max_rows:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(n, generator=g)[:max_rows].to(X.device)
        X, y = X[keep], y[keep]
        n = max_rows
    onehot = F.one_hot(y, n_classes).to(X.dtype)
    prior = onehot.mean(0).clamp(min=1e-8)
    W = torch.zeros(n_classes, d, dtype=X.dtype, device=X.device)
    b = prior.log()

    def grads(W: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        r = (torch.softmax(torch.addmm(b, X, W.T), dim=1) - onehot) / n  # [n, K]
        return r.T @ X, r.sum(0)

    gW, _ = grads(W, b)
    lam_max = float(gW.norm(dim=0).max())
    if lam_max <= 0:
        return torch.zeros(d, dtype=X.dtype)
    step = 1.0 / (0.5 * (float(torch.linalg.matrix_norm(X, ord=2)) ** 2 / n + 1.0))  # 1 / Lipschitz bound
    entered = torch.full((d,), -1, dtype=torch.long)
    for t, lam in enumerate([lam_max * r for r in torch.logspace(0, math.log10(min_ratio), n_lambdas).tolist()]):
        Wz, bz, Wprev, s = W.clone(), b.clone(), W.clone(), 1.0
        for _ in range(iters):  # FISTA
            gW, gb = grads(Wz, bz)
            V = Wz - step * gW
            norms = V.norm(dim=0, keepdim=True)
            Wn = V * (1 - step * lam / norms.clamp(min=1e-12)).clamp(min=0)
            bn = bz - step * gb
            s_next = (1 + math.sqrt(1 + 4 * s * s)) / 2
            Wz = Wn + ((s - 1) / s_next) * (Wn - Wprev)
            bz = bn + ((s - 1) / s_next) * (bn - b)
            Wprev, b, s = Wn, bn, s_next
        W = Wprev
        new = (W.norm(dim=0) > 0).cpu() & (entered < 0)
        entered[new] = t
    norms = W.norm(dim=0).cpu()
    tie = norms / (norms.max() + 1e-12) * 0.5
    return torch.where(entered >= 0, (n_lambdas - entered).to(X.dtype), torch.zeros(d, dtype=X.dtype)) + tie


RANKERS = {"mean_diff": mean_diff_scores, "f_stat": f_stat_scores, "mutual_info": mutual_info_scores,
           "l1": l1_path_scores}


def rank_features(X: Tensor, y: Tensor, n_classes: int, method: str = "mean_diff") -> tuple[Tensor, Tensor]:
    """Rank the features of ``X`` [n, d]: (indices [d] best first, scores [d]).

    ``method``: one of ``mean_diff``, ``f_stat``, ``mutual_info``, ``l1``."""
    if method not in RANKERS:
        raise ValueError(f"unknown ranking method {method!r}; choose one of {sorted(RANKERS)}")
    scores = RANKERS[method](X, y, n_classes)
    return torch.argsort(scores, descending=True, stable=True), scores
