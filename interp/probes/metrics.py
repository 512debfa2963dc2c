"""Probe metrics (docs/design.md §5.2): accuracy, balanced accuracy, macro F1, ROC-AUC, selectivity.

Inputs are tensors or arrays; ``y_true`` / ``y_pred`` [n] labels (any integer values), ``proba`` [n, K] class
probabilities whose columns follow ``classes`` [K]. Each function returns a Python float (``nan`` when the
metric is undefined, e.g. ROC-AUC with a single class present).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from interp.metrics import roc_auc as binary_roc_auc

__all__ = [
    "accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "selectivity", "classification_metrics",
    "r2_score", "regression_metrics",
]


def _np(x: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of rows predicted right."""
    t, p = _np(y_true), _np(y_pred)
    return float((t == p).mean()) if t.size else float("nan")


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean recall over the classes present in ``y_true``."""
    t, p = _np(y_true), _np(y_pred)
    if not t.size:
        return float("nan")
    classes, inv = np.unique(t, return_inverse=True)
    hits = np.bincount(inv, weights=(t == p).astype(np.float64), minlength=len(classes))
    return float(np.mean(hits / np.bincount(inv, minlength=len(classes))))


def f1_macro(y_true: Any, y_pred: Any) -> float:
    """Unweighted mean F1 over the classes in ``y_true`` or ``y_pred`` (sklearn's ``average="macro"``)."""
    t, p = _np(y_true), _np(y_pred)
    if not t.size:
        return float("nan")
    classes = np.union1d(t, p)
    ti, pi = np.searchsorted(classes, t), np.searchsorted(classes, p)
    K = len(classes)
    tp = np.bincount(ti[ti == pi], minlength=K).astype(np.float64)
    n_true, n_pred = np.bincount(ti, minlength=K), np.bincount(pi, minlength=K)
    denom = n_true + n_pred
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def roc_auc(y_true: Any, proba: Any, classes: Sequence[Any] | None = None) -> float:
    """ROC-AUC: binary (``proba`` [n] or [n, 2]) or macro one-vs-rest over the classes of ``y_true`` that
    have both positive and negative rows (multi-class ``proba`` [n, K], columns = ``classes``).

    Each class's AUC is the binary :func:`interp.metrics.roc_auc` (Mann-Whitney U, ties counting 1/2), so the
    value equals sklearn's ``roc_auc_score``."""
    t, s = _np(y_true), _np(proba).astype(np.float64)
    if s.ndim == 1:
        s = np.stack([-s, s], axis=1)
        classes = classes if classes is not None else np.unique(t)
    classes = np.arange(s.shape[1]) if classes is None else _np(classes)
    if len(classes) != s.shape[1]:
        raise ValueError(f"proba has {s.shape[1]} columns but {len(classes)} classes were given")
    cols = range(1, 2) if s.shape[1] == 2 else range(s.shape[1])
    aucs = []
    for c in cols:
        pos = t == classes[c]
        if pos.any() and not pos.all():
            aucs.append(binary_roc_auc(pos, s[:, c]))
    return float(np.mean(aucs)) if aucs else float("nan")


def selectivity(task_accuracy: float, control_accuracy: float) -> float:
    """Task accuracy minus control-task accuracy (Hewitt & Liang 2019): high when the probe reads the
    representation rather than memorising token identities."""
    return float(task_accuracy) - float(control_accuracy)


def classification_metrics(y_true: Any, proba: Any, classes: Sequence[Any]) -> dict[str, float]:
    """accuracy, balanced_accuracy, f1 (macro) and roc_auc of class probabilities [n, K] (columns = ``classes``)."""
    classes = _np(classes)
    pred = classes[_np(proba).argmax(axis=1)]
    return {
        "accuracy": accuracy(y_true, pred),
        "balanced_accuracy": balanced_accuracy(y_true, pred),
        "f1": f1_macro(y_true, pred),
        "roc_auc": roc_auc(y_true, proba, classes),
    }


def r2_score(y_true: Any, y_pred: Any) -> float:
    """Coefficient of determination, averaged uniformly over targets: 1 - SS_res / SS_tot."""
    t, p = _np(y_true).astype(np.float64), _np(y_pred).astype(np.float64)
    t, p = t.reshape(len(t), -1), p.reshape(len(p), -1)
    ss_res = ((t - p) ** 2).sum(0)
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    return float(np.mean(np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), 0.0)))


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """r2 and mse."""
    t, p = _np(y_true).astype(np.float64), _np(y_pred).astype(np.float64)
    return {"r2": r2_score(t, p), "mse": float(((t.reshape(p.shape) - p) ** 2).mean())}
