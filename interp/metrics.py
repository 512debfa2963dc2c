"""Metrics every layer shares, as small pure functions (base layer: torch, numpy and the standard library only).

Language modelling (torch, differentiable, computed in the dtype of the logits; cast first for float64):

* :func:`next_token_nll`: -log softmax(logits_p)[t_{p+1}], the loss of each next-token prediction;
* :func:`next_token_cross_entropy`: its (masked) mean, the usual LM loss;
* :func:`kl_divergence`: KL(p ‖ q) of two next-token distributions at each position;
* :func:`masked_mean`: the mean over the entries a mask selects (both reductions above use it).

Ranking (numpy, float64, Python floats; ``labels`` binary, ``scores`` real, any array-like or tensor of one shape):

* :func:`roc_auc`: P(score of a random positive > score of a random negative), ties counting 1/2;
* :func:`average_precision`: Σ_k (R_k - R_{k-1}) P_k over the distinct score thresholds.

Reconstruction (torch, float64, Python floats):

* :func:`explained_variance`: 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²; :class:`ExplainedVariance` streams it over batches
  and :func:`explained_variance_from_sums` evaluates it from sufficient statistics (e.g. all-reduced ones).

Definitions: docs/design.md §3.9 (ROC-AUC, AP), §5.3 (explained variance, CE, KL), §5.5 (KL cost).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "masked_mean", "next_token_nll", "next_token_cross_entropy", "kl_divergence",
    "roc_auc", "average_precision",
    "explained_variance", "explained_variance_from_sums", "ExplainedVariance",
]


# ============================================================================================
# reductions
# ============================================================================================
def masked_mean(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is true: Σ m·v / max(Σ m, 1).

    values [...]; mask [...] (bool or 0/1, the shape of ``values``) or None for the plain mean. A mask that
    selects nothing gives 0 (so an all-padding batch adds neither loss nor a NaN gradient). Entries outside
    the mask never reach the result, not even as NaN or inf. Returns a 0-dim tensor (differentiable).
    """
    if mask is None:
        return values.mean()
    m = mask.to(device=values.device, dtype=torch.bool)
    if m.shape != values.shape:
        raise ValueError(f"mask {tuple(m.shape)} must have the shape of the values {tuple(values.shape)}")
    total = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / m.sum().clamp(min=1)


# ============================================================================================
# language modelling
# ============================================================================================
def next_token_nll(logits: Tensor, tokens: Tensor) -> Tensor:
    """Negative log-likelihood of each next token: logits [b, L, V], tokens [b, L] -> [b, L-1].

        nll[b, p] = -log softmax(logits[b, p])[tokens[b, p+1]]      (p = 0..L-2; the last position predicts nothing)

    Computed in the dtype of ``logits`` (pass ``logits.double()`` for float64); differentiable.
    """
    if logits.dim() != 3 or tokens.dim() != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"need logits [b, L, V] and tokens [b, L]; got {tuple(logits.shape)} and {tuple(tokens.shape)}")
    logp = logits[:, :-1].log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None].to(device=logits.device, dtype=torch.long))[..., 0]


def next_token_cross_entropy(logits: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean next-token cross-entropy (the LM loss): logits [b, L, V], tokens [b, L] -> 0-dim tensor.

        CE = Σ_{b,p} m[b, p] · nll[b, p] / max(Σ m, 1),   nll = :func:`next_token_nll` [b, L-1]

    ``mask`` [b, L-1] (bool or 0/1) selects the predictions that count, aligned with ``nll``: ``mask[b, p]``
    is the prediction *at* position p *of* token p+1. From an attention mask over tokens [b, L] (1 = real)
    pass ``attention_mask[:, 1:]`` (real targets); from a loss mask over predicting positions pass
    ``loss_mask[:, :-1]``. None: every prediction. Uniform logits give log V.
    """
    return masked_mean(next_token_nll(logits, tokens), mask)


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p ‖ q) in nats of the next-token distributions at each position: logits [..., V] -> [...].

        p = softmax(logits_p),  q = softmax(logits_q),  KL = Σ_v p_v (log p_v - log q_v)  (0 · log 0 = 0)

    Inputs are logits or log-probabilities (log_softmax normalises either; log p of a probability vector works,
    zeros included). Computed in the dtype of the logits; differentiable. Reduce with :func:`masked_mean`
    (e.g. over the real tokens of a padded batch, mask [...]).
    """
    lp, lq = logits_p.log_softmax(-1), logits_q.log_softmax(-1)
    p = lp.exp()
    diff = torch.where(p > 0, lp - lq, torch.zeros((), dtype=lp.dtype, device=lp.device))
    return (p * diff).sum(-1)


# ============================================================================================
# ranking metrics of binary labels against real scores
# ============================================================================================
def _flat64(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _binary(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """labels -> bool [n] (> 0.5 is positive), scores -> float64 [n]; shapes must agree."""
    y, s = _flat64(labels) > 0.5, _flat64(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    return y, s


def _midranks(scores: Any) -> np.ndarray:
    """1-based ranks of ``scores`` [n] ascending, tied values sharing their average rank: float64 [n]."""
    s = _flat64(scores)
    order = np.argsort(s, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(s[order]) != 0) + 1]  # runs of equal values
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks start+1 .. end
    return ranks


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of ``scores`` [n] for binary ``labels`` [n] (equals sklearn's ``roc_auc_score``).

    Mann–Whitney form, r the 1-based ranks of the scores (tied scores share their average rank), n₊ / n₋ the
    numbers of positives / negatives:

        AUC = (Σ_{i positive} r_i - n₊(n₊ + 1)/2) / (n₊ n₋) = P(s₊ > s₋) + ½ P(s₊ = s₋)

    1 for a perfect ranking, 0 for an inverted one, ½ when every score ties. Labels: bool or 0/1 (> 0.5 is
    positive). Raises ValueError when only one class is present (as scikit-learn). For several classes,
    average it one-vs-rest (:func:`interp.probes.roc_auc`).
    """
    y, s = _binary(labels, scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both positive and negative labels")
    return float((_midranks(s)[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision of ``scores`` [n] for binary ``labels`` [n] (equals sklearn's ``average_precision_score``).

        AP = Σ_k (R_k - R_{k-1}) P_k,   R_0 = 0

    over the distinct score thresholds t_k, descending (tied scores form one threshold): P_k, R_k the precision
    and recall of predicting positive where score >= t_k. 1 for a perfect ranking. Raises ValueError without a
    positive label.
    """
    y, s = _binary(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive label")
    order = np.argsort(s, kind="mergesort")[::-1]
    ss, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]  # last index of each threshold
    tps = np.cumsum(yy)[last]
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# ============================================================================================
# explained variance
# ============================================================================================
def _rows(t: Tensor, mask: Tensor | None) -> Tensor:
    """[..., d] -> [n, d] float64 (detached), keeping the rows where ``mask`` [...] is true."""
    t = t.detach()
    t = t[mask.to(device=t.device, dtype=torch.bool)] if mask is not None else t.reshape(-1, t.shape[-1])
    return t.double()


def _fraction_explained(residual: float, total: float) -> float:
    return 1 - residual / total if total > 0 else math.nan


def explained_variance(x: Tensor, x_hat: Tensor, mask: Tensor | None = None) -> float:
    """Explained variance of a reconstruction: x, x̂ [..., d] -> float (float64 inside).

        EV = 1 - Σ_n ‖x_n - x̂_n‖² / Σ_n ‖x_n - x̄‖²,   x̄ = the mean of x over the rows n

    Rows are the tokens: all of them, or those where ``mask`` [...] is true. 1 when x̂ = x, 0 when every x̂ = x̄,
    negative when worse than the mean; NaN when x has no variance.
    """
    a, b = _rows(x, mask), _rows(x_hat, mask)
    return _fraction_explained(float((a - b).pow(2).sum()), float((a - a.mean(0)).pow(2).sum()))


def explained_variance_from_sums(sse: float, sum_sq: float, sum_x: Any, n: int | float) -> float:
    """Explained variance from sufficient statistics over n rows (streaming, or all-reduced across processes).

        EV = 1 - SSE / (Σ‖x‖² - ‖Σx‖² / n),   SSE = Σ‖x - x̂‖²   (Σ‖x - x̄‖² = Σ‖x‖² - n‖x̄‖²)

    sse, sum_sq: floats; sum_x: Σ_n x_n [d] (tensor or array); n: the row count. NaN when n = 0 or x has no
    variance.
    """
    if n == 0:
        return math.nan
    sum_x = sum_x.double() if isinstance(sum_x, Tensor) else torch.as_tensor(np.asarray(sum_x, np.float64))
    return _fraction_explained(float(sse), float(sum_sq) - float(sum_x.pow(2).sum()) / float(n))


class ExplainedVariance:
    """Streaming :func:`explained_variance` over many batches (x̄ the mean over all of them), in float64.

        ev = ExplainedVariance()
        for x, x_hat in pairs: ev.update(x, x_hat)     # x, x̂ [..., d]; optional mask [...]
        ev.compute()                                   # = explained_variance(all x, all x̂) up to rounding
    """

    def __init__(self) -> None:
        self.n = 0
        self.resid = 0.0
        self.sum: Tensor | None = None
        self.sum_sq = 0.0

    def update(self, x: Tensor, x_hat: Tensor, mask: Tensor | None = None) -> None:
        a, b = _rows(x, mask), _rows(x_hat, mask)
        self.n += a.shape[0]
        self.resid += float((a - b).pow(2).sum())
        s = a.sum(0).cpu()
        self.sum = s if self.sum is None else self.sum + s
        self.sum_sq += float(a.pow(2).sum())

    def compute(self) -> float:
        if self.n == 0 or self.sum is None:
            return math.nan
        return explained_variance_from_sums(self.resid, self.sum_sq, self.sum, self.n)
