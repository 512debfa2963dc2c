"""Probes as scikit-learn estimators, thin classes around :mod:`.functional`.

    probe = LogisticProbe().fit(X, y)            # X [n, d] activations (tensor or array), y [n] labels
    probe.score(X_test, y_test)                  # accuracy (ClassifierMixin)
    probe.metrics(X_test, y_test)                # accuracy, balanced_accuracy, f1, roc_auc
    v = probe.direction(17)                      # torch [d], in activation space: steer with it
    SparseProbe(k=4, method="f_stat").fit(X, y).features_
    LinearRegressionProbe().fit(X, targets).direction()

All three work with ``sklearn.base.clone``, ``get_params``/``set_params``, pipelines and
``cross_val_score``. Features are standardised inside the probe; ``coef_`` / ``intercept_`` /
``direction`` are de-standardised (they apply to raw activations). Predictions come back as numpy arrays
(as in scikit-learn); directions as torch tensors (ready for :mod:`interp.steering`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
except ImportError as e:  # pragma: no cover - sklearn is in the [ml] extra
    raise ImportError("interp.probes needs scikit-learn: pip install 'interp[ml]' (or scikit-learn>=1.5)") from e

from . import functional as Fn
from .metrics import classification_metrics, regression_metrics
from .ranking import rank_features

__all__ = ["LogisticProbe", "SparseProbe", "LinearRegressionProbe"]

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0, 100.0)
DEFAULT_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _labels(y: Any) -> np.ndarray:
    y = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D [n], got shape {y.shape}")
    return y


def _groups(groups: Any) -> Tensor | None:
    return None if groups is None else torch.as_tensor(np.asarray(groups.cpu() if isinstance(groups, Tensor)
                                                                  else groups))


class _LinearClassifier(ClassifierMixin, BaseEstimator):
    """Prediction and export shared by the classifiers: needs ``classes_``, ``_W`` [K, d], ``_b`` [K]
    (raw activation space; K = len(classes_), softmax over classes)."""

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits [n, K] (binary: [n], the log-odds of ``classes_[1]``)."""
        logits = Fn.logistic_logits(Fn.as_float_tensor(X).to(self._W.device), self._W, self._b)
        if len(self.classes_) == 2:
            logits = logits[:, 1] - logits[:, 0]
        return logits.cpu().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities [n, K] (columns = ``classes_``)."""
        logits = Fn.logistic_logits(Fn.as_float_tensor(X).to(self._W.device), self._W, self._b)
        return torch.softmax(logits, dim=1).cpu().numpy()

    def predict(self, X: Any) -> np.ndarray:
        """Labels [n] (values from ``classes_``)."""
        logits = Fn.logistic_logits(Fn.as_float_tensor(X).to(self._W.device), self._W, self._b)
        return self.classes_[logits.argmax(1).cpu().numpy()]

    def metrics(self, X: Any, y: Any) -> dict[str, float]:
        """accuracy, balanced_accuracy, f1 (macro), roc_auc on (X, y) (docs/design.md §5.2)."""
        return classification_metrics(_labels(y), self.predict_proba(X), self.classes_)

    @property
    def coef_(self) -> np.ndarray:
        """[K, d] weights on raw activations ([1, d] for two classes, as scikit-learn)."""
        W = self._W.cpu().numpy()
        return (W[1:] - W[:1]) if len(self.classes_) == 2 else W

    @property
    def intercept_(self) -> np.ndarray:
        b = self._b.cpu().numpy()
        return (b[1:] - b[:1]) if len(self.classes_) == 2 else b

    def direction(self, cls: Any = None, normalize: bool = False) -> Tensor:
        """The probe's direction for class ``cls`` in activation space: torch float32 [d].

        Multi-class: ``W[cls] - mean_k W[k]`` (raises class ``cls``'s logit against the average); two classes:
        ``coef_[0]`` for ``classes_[1]`` (the default) and its negative for ``classes_[0]``.
        ``normalize`` returns a unit vector."""
        classes = list(self.classes_)
        if cls is None:
            if len(classes) != 2:
                raise ValueError(f"a {len(classes)}-class probe has one direction per class: pass cls=... "
                                 f"(one of {classes[:10]}{'...' if len(classes) > 10 else ''})")
            cls = classes[1]
        try:
            k = classes.index(cls)
        except ValueError:
            raise KeyError(f"class {cls!r} was not in the training labels; known: {classes[:20]}") from None
        W = self._W.float()
        v = (W[1] - W[0]) * (1 if k == 1 else -1) if len(classes) == 2 else W[k] - W.mean(0)
        v = v.detach().cpu().clone()
        return v / v.norm().clamp(min=1e-12) if normalize else v


class LogisticProbe(_LinearClassifier):
    """Dense multinomial logistic-regression probe: class-balanced, L2 penalty chosen by cross-validation.

    Args:
        C: inverse penalty strength as in scikit-learn (penalty ``||W||² / (2 C n)`` on the mean loss),
            or ``"cv"``: pick it from ``Cs`` by ``cv``-fold cross-validated accuracy (ties go to the
            strongest penalty), warm-started along the path.
        Cs: grid for ``C="cv"``.
        cv: folds; with ``groups`` given to ``fit`` (e.g. sequence ids) whole groups stay in one fold.
        class_weight: ``"balanced"`` (weights n / (K n_c)) or None.
        max_iter, tol: L-BFGS iterations per fit and gradient tolerance.
        standardize: z-score the features before fitting (weights are mapped back afterwards).
        random_state: fold assignment seed.
        device: fit on this device (default: where X is).

    Attributes after ``fit``: ``classes_``, ``coef_``, ``intercept_``, ``C_`` (used), ``cv_scores_``
    (mean validation accuracy per entry of ``Cs``, or None), ``n_features_in_``.
    """

    def __init__(self, C: float | str = "cv", Cs: Sequence[float] = DEFAULT_CS, cv: int = 3,
                 class_weight: str | None = "balanced", max_iter: int = 100, tol: float = 1e-4,
                 standardize: bool = True, random_state: int = 0, device: str | None = None):
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.random_state = random_state
        self.device = device

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> "LogisticProbe":
        """X [n, d], y [n] labels (any values); ``groups`` [n] keeps CV folds group-disjoint."""
        y_np = _labels(y)
        Xt = Fn.as_float_tensor(X)
        if self.device is not None:
            Xt = Xt.to(self.device)
        if Xt.dim() != 2 or Xt.shape[0] != len(y_np):
            raise ValueError(f"X must be [n, d] with n = len(y) = {len(y_np)}, got {tuple(Xt.shape)}")
        self.classes_, yi = np.unique(y_np, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least two classes to fit a classifier, got {list(self.classes_)}")
        K, n = len(self.classes_), len(y_np)
        y_idx = torch.as_tensor(yi, dtype=torch.long, device=Xt.device)
        sw = self._weights(y_idx, K, sample_weight, Xt.device)
        mean, std = (Fn.standardize_stats(Xt) if self.standardize
                     else (torch.zeros(Xt.shape[1], device=Xt.device), torch.ones(Xt.shape[1], device=Xt.device)))
        Z = (Xt - mean) / std

        def fit_on(idx: Tensor, l2: float, init: tuple | None) -> tuple[Tensor, Tensor]:
            return Fn.fit_logistic(Z[idx], y_idx[idx], K, l2, None if sw is None else sw[idx], self.max_iter,
                                   self.tol, init)

        def val_accuracy(params: tuple[Tensor, Tensor], idx: Tensor) -> float:
            pred = Fn.logistic_logits(Z[idx], *params).argmax(1)
            hit = (pred == y_idx[idx]).float()
            return float(hit @ sw[idx] / sw[idx].sum()) if sw is not None else float(hit.mean())

        all_idx = torch.arange(n, device=Xt.device)
        self.cv_scores_ = None
        if isinstance(self.C, str):
            if self.C != "cv":
                raise ValueError(f"C must be a positive number or 'cv', got {self.C!r}")
            best_l2, scores = Fn.select_l2_by_cv(fit_on, val_accuracy, n, [1.0 / (c * n) for c in self.Cs],
                                                  self.cv, self.random_state, _groups(groups))
            self.C_ = 1.0 / (best_l2 * n)
            self.cv_scores_ = scores
        else:
            if not self.C > 0:
                raise ValueError(f"C must be > 0, got {self.C}")
            self.C_ = float(self.C)
        W, b = fit_on(all_idx, 1.0 / (self.C_ * n), None)
        self._W, self._b = Fn.destandardize(W, b, mean, std)
        self.n_features_in_ = Xt.shape[1]
        return self

    def _weights(self, y_idx: Tensor, K: int, sample_weight: Any, device: Any) -> Tensor | None:
        sw = None if sample_weight is None else Fn.as_float_tensor(sample_weight).to(device)
        if self.class_weight == "balanced":
            bw = Fn.balanced_weights(y_idx, K)
            sw = bw if sw is None else sw * bw
        elif self.class_weight is not None:
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        return sw


class SparseProbe(_LinearClassifier):
    """k-sparse probe: rank the features, keep the ``k`` best, fit a logistic probe on them.

    Args:
        k: features kept.
        method: ranking (see :mod:`.ranking`): ``"mean_diff"``, ``"f_stat"``, ``"mutual_info"``, ``"l1"``.
        C, class_weight, max_iter, tol, random_state: passed to the inner :class:`LogisticProbe`
            (``C="cv"`` works too).

    Attributes after ``fit``: ``features_`` [k] kept feature indices (best first), ``feature_scores_`` [d],
    ``coef_`` [K, d] (zero outside ``features_``), ``probe_`` (the inner probe on the k features).
    """

    def __init__(self, k: int = 8, method: str = "mean_diff", C: float | str = 1.0,
                 class_weight: str | None = "balanced", max_iter: int = 100, tol: float = 1e-4,
                 random_state: int = 0):
        self.k = k
        self.method = method
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> "SparseProbe":
        y_np = _labels(y)
        Xt = Fn.as_float_tensor(X)
        self.classes_, yi = np.unique(y_np, return_inverse=True)
        if not 1 <= self.k <= Xt.shape[1]:
            raise ValueError(f"k must be in 1..{Xt.shape[1]} (the number of features), got {self.k}")
        mean, std = Fn.standardize_stats(Xt)
        order, scores = rank_features((Xt - mean) / std, torch.as_tensor(yi, dtype=torch.long),
                                      len(self.classes_), self.method)
        self.features_ = order[: self.k].numpy()
        self.feature_scores_ = scores.numpy()
        self.probe_ = LogisticProbe(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter, tol=self.tol,
                                    random_state=self.random_state)
        self.probe_.fit(Xt[:, self.features_], y_np, groups=groups, sample_weight=sample_weight)
        W = torch.zeros(len(self.classes_), Xt.shape[1])
        W[:, torch.as_tensor(self.features_)] = self.probe_._W.cpu()
        self._W, self._b = W, self.probe_._b.cpu()
        self.n_features_in_ = Xt.shape[1]
        return self


class LinearRegressionProbe(RegressorMixin, BaseEstimator):
    """Ridge-regression probe for continuous targets (one or several), penalty chosen by cross-validation.

    Args:
        alpha: ridge penalty on standardised features (``||W||²`` weight on the mean squared error), or
            ``"cv"``: pick it from ``alphas`` by ``cv``-fold validation MSE.
        standardize: z-score the features first.

    Attributes after ``fit``: ``coef_`` [d] (one target) or [k, d], ``intercept_``, ``alpha_``, ``cv_scores_``.
    """

    def __init__(self, alpha: float | str = "cv", alphas: Sequence[float] = DEFAULT_ALPHAS, cv: int = 3,
                 standardize: bool = True, random_state: int = 0):
        self.alpha = alpha
        self.alphas = alphas
        self.cv = cv
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> "LinearRegressionProbe":
        Xt = Fn.as_float_tensor(X)
        Y = Fn.as_float_tensor(y)
        if Y.shape[0] != Xt.shape[0]:
            raise ValueError(f"X has {Xt.shape[0]} rows but y has {Y.shape[0]}")
        self._multi = Y.dim() == 2
        sw = None if sample_weight is None else Fn.as_float_tensor(sample_weight)
        d = Xt.shape[1]
        mean, std = Fn.standardize_stats(Xt) if self.standardize else (torch.zeros(d), torch.ones(d))
        Z = (Xt - mean) / std

        def fit_on(idx: Tensor, l2: float, _init: Any) -> tuple[Tensor, Tensor]:
            return Fn.fit_ridge(Z[idx], Y[idx], l2, None if sw is None else sw[idx])

        def neg_mse(params: tuple[Tensor, Tensor], idx: Tensor) -> float:
            W, b = params
            pred = Z[idx] @ W.T + b
            return -float((pred - (Y[idx] if self._multi else Y[idx, None])).pow(2).mean())

        self.cv_scores_ = None
        if isinstance(self.alpha, str):
            if self.alpha != "cv":
                raise ValueError(f"alpha must be a number >= 0 or 'cv', got {self.alpha!r}")
            self.alpha_, self.cv_scores_ = Fn.select_l2_by_cv(fit_on, neg_mse, Xt.shape[0], self.alphas, self.cv,
                                                              self.random_state, _groups(groups))
        else:
            self.alpha_ = float(self.alpha)
        W, b = fit_on(torch.arange(Xt.shape[0]), self.alpha_, None)
        self._W, self._b = Fn.destandardize(W, b, mean, std)
        self.n_features_in_ = Xt.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        """[n] (one target) or [n, k]."""
        out = Fn.as_float_tensor(X) @ self._W.T + self._b
        return (out if self._multi else out[:, 0]).cpu().numpy()

    def metrics(self, X: Any, y: Any) -> dict[str, float]:
        """r2 and mse on (X, y)."""
        return regression_metrics(Fn.as_float_tensor(y).cpu().numpy(), self.predict(X))

    @property
    def coef_(self) -> np.ndarray:
        W = self._W.cpu().numpy()
        return W if self._multi else W[0]

    @property
    def intercept_(self) -> np.ndarray:
        b = self._b.cpu().numpy()
        return b if self._multi else b[0]

    def direction(self, target: int = 0, normalize: bool = False) -> Tensor:
        """Weights of target ``target`` in activation space: torch float32 [d] (unit with ``normalize``)."""
        v = self._W[target].float().detach().cpu().clone()
        return v / v.norm().clamp(min=1e-12) if normalize else v
