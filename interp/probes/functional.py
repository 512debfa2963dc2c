"""The math of linear probes, as pure torch functions (CPU-fast, full batch).

Shapes: ``X`` [n, d] activations, ``y`` [n] class indices in ``0..K-1`` (int64), ``Y`` [n, k] regression
targets, ``sample_weight`` [n]. Fitting functions work on standardised features; :func:`destandardize`
maps the weights back to activation space, so a probe's direction can be added to the model's activations.

* :func:`fit_logistic`: multinomial logistic regression, L2-penalised, full-batch L-BFGS (strong Wolfe);
  10^5 rows x 64 features x 100 classes in seconds on one core.
* :func:`fit_ridge`: ridge regression in closed form.
* :func:`select_l2_by_cv`: k-fold choice of the penalty over a grid, warm-started along the path.
* :func:`control_labels`: the control task of Hewitt & Liang (2019): a random label per token type;
  :func:`ngram_types` makes the type a token together with the tokens before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "standardize_stats", "destandardize", "balanced_weights", "fit_logistic", "logistic_logits", "fit_ridge",
    "kfold_indices", "select_l2_by_cv", "control_labels", "ngram_types", "as_float_tensor",
]


def as_float_tensor(X: object, dtype: torch.dtype = torch.float32) -> Tensor:
    """Array-like [n, d] -> float tensor on CPU (or the tensor's own device)."""
    if isinstance(X, Tensor):
        return X.detach().to(dtype)
    return torch.as_tensor(np.asarray(X), dtype=dtype)


def standardize_stats(X: Tensor, sample_weight: Tensor | None = None, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-feature mean and standard deviation of ``X`` [n, d] (weighted if given): ([d], [d]).

    Constant features get std 1 so that they stay constant (zero) after standardising."""
    if sample_weight is None:
        mean = X.mean(0)
        var = X.var(0, unbiased=False)
    else:
        w = sample_weight / sample_weight.sum()
        mean = w @ X
        var = w @ (X - mean).pow(2)
    std = var.sqrt()
    return mean, torch.where(std > eps, std, torch.ones_like(std))


def destandardize(W: Tensor, b: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """Weights on standardised features -> weights on raw activations.

    W [K, d], b [K] with ``logits = ((x - mean) / std) W^T + b`` become ``W' = W / std``,
    ``b' = b - W' mean`` so that ``logits = x W'^T + b'``."""
    Wr = W / std
    return Wr, b - Wr @ mean


def balanced_weights(y: Tensor, n_classes: int) -> Tensor:
    """Class-balanced sample weights [n] (sklearn's ``"balanced"``): n / (K_present * count[y_i])."""
    counts = torch.bincount(y, minlength=n_classes).to(torch.float32)
    present = int((counts > 0).sum())
    return (len(y) / (present * counts.clamp(min=1)))[y]


def logistic_logits(X: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """X [n, d], W [K, d], b [K] -> logits [n, K]."""
    return torch.addmm(b, X, W.T)


def fit_logistic(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    l2: float,
    sample_weight: Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-6,
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS.

    Minimises ``Σ_i s_i CE(x_i W^T + b, y_i) / Σ_i s_i + l2/2 ||W||²`` (the intercept is not penalised;
    ``l2 = 1 / (C n)`` is sklearn's ``C``).

    Args:
        X: [n, d] features (standardise them first for a well-conditioned problem).
        y: [n] int64 class indices in ``0..n_classes-1``.
        l2: penalty on the weights (> 0 keeps the solution finite on separable data).
        sample_weight: [n] non-negative weights (e.g. :func:`balanced_weights`).
        max_iter: L-BFGS iterations; tol: stop when the gradient's max-abs falls below it.
        init: warm start (W [K, d], b [K]).

    Returns:
        (W [n_classes, d], b [n_classes]).
    """
    n, d = X.shape
    if n == 0:
        raise ValueError("cannot fit a probe on 0 rows: check the label mask / position selection")
    if init is None:
        W = torch.zeros(n_classes, d, dtype=X.dtype, device=X.device)
        counts = torch.bincount(y, minlength=n_classes).to(X.dtype) + 1.0
        b = (counts / counts.sum()).log()
    else:
        W, b = init[0].clone().to(X), init[1].clone().to(X)
    W.requires_grad_(True)
    b.requires_grad_(True)
    w = None if sample_weight is None else (sample_weight / sample_weight.sum()).to(X)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        ce = F.cross_entropy(logistic_logits(X, W, b), y, reduction="none" if w is not None else "mean")
        loss = (ce @ w if w is not None else ce) + 0.5 * l2 * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


def fit_ridge(X: Tensor, Y: Tensor, l2: float, sample_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Ridge regression in closed form: X [n, d], Y [n] or [n, k] -> (W [k, d], b [k]).

    Minimises ``Σ_i s_i ||y_i - W x_i - b||² / Σ_i s_i + l2 ||W||²`` (intercept not penalised)."""
    Y2 = Y[:, None] if Y.dim() == 1 else Y
    X64, Y64 = X.double(), Y2.double()
    if sample_weight is None:
        w = torch.full((X.shape[0],), 1.0 / X.shape[0], dtype=torch.float64, device=X.device)
    else:
        w = sample_weight.double() / sample_weight.double().sum()
    mx, my = w @ X64, w @ Y64
    Xc, Yc = X64 - mx, Y64 - my
    G = (Xc * w[:, None]).T @ Xc + l2 * torch.eye(X.shape[1], dtype=torch.float64, device=X.device)
    W = torch.linalg.solve(G, (Xc * w[:, None]).T @ Yc).T  # [k, d]
    b = my - W @ mx
    return W.to(X.dtype), b.to(X.dtype)


def kfold_indices(n: int, k: int, seed: int = 0, groups: Tensor | None = None) -> list[tuple[Tensor, Tensor]]:
    """k (train, validation) index splits of ``range(n)``, shuffled with ``seed``.

    With ``groups`` [n] (e.g. the sequence of each row), whole groups go to one fold, so rows of one
    sequence never sit on both sides."""
    if k < 2:
        raise ValueError(f"cross-validation needs k >= 2 folds, got {k}")
    rng = np.random.default_rng(seed)
    if groups is None:
        fold_of = torch.from_numpy(rng.permutation(n) % k)
    else:
        uniq, inv = torch.unique(groups, return_inverse=True)
        if len(uniq) < k:
            raise ValueError(f"{len(uniq)} groups cannot fill {k} folds: use fewer folds or more sequences")
        fold_of = torch.from_numpy(rng.permutation(len(uniq)) % k)[inv]
    idx = torch.arange(n)
    return [(idx[fold_of != f], idx[fold_of == f]) for f in range(k)]


def select_l2_by_cv(
    fit: Callable[[Tensor, float, tuple | None], tuple],
    score: Callable[[tuple, Tensor], float],
    n: int,
    l2_grid: Sequence[float],
    k: int = 3,
    seed: int = 0,
    groups: Tensor | None = None,
) -> tuple[float, list[float]]:
    """Choose a penalty by k-fold cross-validation.

    Args:
        fit: ``fit(train_idx, l2, warm_start) -> params``.
        score: ``score(params, val_idx) -> float`` (higher is better).
        l2_grid: penalties, visited from the largest (fast to fit) to the smallest, each fold
            warm-started from the previous penalty's solution.

    Returns:
        (best l2, mean validation score per grid entry in the grid's order).
    """
    grid = sorted(set(float(v) for v in l2_grid), reverse=True)
    scores = np.zeros(len(grid))
    for tr, va in kfold_indices(n, k, seed, groups):
        params = None
        for j, l2 in enumerate(grid):
            params = fit(tr, l2, params)
            scores[j] += score(params, va) / k
    best = int(np.flatnonzero(scores >= scores.max() - 1e-12)[0])  # ties -> the strongest penalty
    order = [grid.index(float(v)) for v in l2_grid]
    return grid[best], [float(scores[i]) for i in order]


def control_labels(y: Tensor, types: Tensor, seed: int = 0) -> Tensor:
    """Control task (Hewitt & Liang 2019): every token type gets one random label.

    Args:
        y: [n] task labels (any integer values); their empirical distribution is what each type's
            label is drawn from, so the control task has the task's label marginal.
        types: [n] the type of each row (e.g. the token id), or [n, k] a tuple per row: rows with equal
            tuples share a type, e.g. the n-gram ending at the row's token (:func:`ngram_types`) when
            the token alone is too coarse a type (see below).

    Returns:
        [n] control labels: rows of the same type share a label, drawn independently per type.

    With few types (TokFSM has 10 digit tokens) the control task is decodable from any representation that
    still carries the token, so its accuracy is capped only by the number of types and selectivity says
    nothing; a type that includes the preceding tokens makes the control task as large as the local input
    allows (an n-gram type with ``n`` up to the span that determines the task label and one beyond it).
    """
    if types.dim() not in (1, 2) or y.dim() != 1 or types.shape[0] != y.shape[0]:
        raise ValueError(f"labels {tuple(y.shape)} and types {tuple(types.shape)} must align: [n] and [n] or [n, k]")
    rng = np.random.default_rng(seed)
    uniq, inv = torch.unique(types, dim=0, return_inverse=True)
    y_np = y.cpu().numpy()
    drawn = torch.as_tensor(rng.choice(y_np, size=len(uniq), replace=True), dtype=y.dtype)
    return drawn[inv.cpu()].to(y.device)


def ngram_types(tokens: Tensor, n: int = 1, pad: int = -1) -> Tensor:
    """The n-gram ending at each token, as a control-task type: [n_seq, L] -> int64 [n_seq, L, n].

    ``out[s, p] = (tokens[s, p - n + 1], ..., tokens[s, p])``, with ``pad`` for positions before the start;
    ``n = 1`` is the token itself (Hewitt & Liang's word type). Gather rows (``ProbeRows.gather``) and pass
    them to :func:`control_labels`."""
    tokens = torch.as_tensor(tokens).long()
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [n_seq, L], got shape {tuple(tokens.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    cols = [tokens]
    for k in range(1, n):
        shifted = torch.full_like(tokens, pad)
        shifted[:, k:] = tokens[:, :-k]
        cols.insert(0, shifted)
    return torch.stack(cols, dim=-1)
