"""Linear probes on the activations of any hook: dense, sparse and regression probes, control tasks,
selectivity, and layer × position sweeps. Functions that run the model take ``(model, tokens, *, hook=...,
positions=..., ...)``.

    from interp.probes import LogisticProbe, SparseProbe, LinearRegressionProbe, collect_rows, probe_sweep
    rows = collect_rows(model, tokens, hook="blocks.2.hook_resid_post", keep=labels >= 0)
    probe = LogisticProbe().fit(rows.acts["blocks.2.hook_resid_post"], rows.gather(labels))
    probe.direction(17)                      # torch [d] in activation space (for interp.steering)
    result = probe_sweep(model, tokens, labels=labels, positions={"units": digit_pos == 1})
    result.figure()

Modules: :mod:`.functional` (the math: L-BFGS logistic regression, ridge, CV, control labels),
:mod:`.ranking` (feature ranking for k-sparse probes), :mod:`.metrics` (docs/design.md §5.2),
:mod:`.estimators` (scikit-learn estimators), :mod:`.data` (activation rows from a model or a store),
:mod:`.sweep` (layer × position sweeps and their figure).
"""

from .data import ProbeRows, collect_rows, default_hooks, sequence_split
from .estimators import LinearRegressionProbe, LogisticProbe, SparseProbe
from .functional import control_labels, ngram_types
from .metrics import (
    accuracy, balanced_accuracy, classification_metrics, f1_macro, r2_score, regression_metrics, roc_auc, selectivity,
)
from .ranking import RANKERS, rank_features
from .sweep import SweepResult, position_groups, probe_sweep, sweep_figure

__all__ = [
    "LogisticProbe", "SparseProbe", "LinearRegressionProbe", "ProbeRows", "collect_rows", "default_hooks",
    "sequence_split", "control_labels", "ngram_types", "accuracy", "balanced_accuracy", "f1_macro", "roc_auc",
    "selectivity", "classification_metrics", "r2_score", "regression_metrics", "RANKERS", "rank_features",
    "probe_sweep", "SweepResult", "position_groups", "sweep_figure",
]
