"""Layer × position probe sweeps in one call, with the control task and a plotly figure.

    from interp.data import tokfsm_dataset, tokfsm_labels
    lab = tokfsm_labels(tokens)
    result = probe_sweep(model, tokens, labels=lab["state"],
                         positions={"tens digit": lab["digit_pos"] == 0, "units digit": lab["digit_pos"] == 1})
    result.best()                    # the row with the highest held-out accuracy
    result.figure().show()           # accuracy and selectivity, hooks × positions
    result.probes[(hook, position)]  # the fitted probes

Each cell fits a fresh clone of ``probe`` on the training sequences and scores it on held-out sequences;
for classifiers a second clone is fitted to the control task (a random label per token type, Hewitt &
Liang 2019) and ``selectivity = accuracy - control_accuracy``. The type is the token by default;
``control_context=k`` makes it the token with the ``k`` tokens before it, for vocabularies so small that a
per-token control task is trivially decodable (TokFSM: use ``control_context=2``, see
``docs/benchmarks.md``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.hooks import HookedModel
from interp.hooks.hook_points import layer_of
from interp.hooks.positions import Positions
from interp.hooks.tokens import as_tokens

from .data import ProbeRows, collect_rows, default_hooks, sequence_split
from .functional import control_labels, ngram_types

__all__ = ["probe_sweep", "SweepResult", "position_groups", "sweep_figure"]

PositionSpec = int | slice | Sequence[int] | Tensor | None


def _pos_mask(spec: PositionSpec, shape: tuple[int, int]) -> Tensor:
    """A position spec -> bool [n_seq, L]. Ints/lists/slices are positions (negative from the end; ints and
    lists bounds-checked by :meth:`interp.hooks.positions.Positions.indices`); a bool tensor [n_seq, L] or [L] is a
    mask; None is every position."""
    n, L = shape
    if spec is None:
        return torch.ones(n, L, dtype=torch.bool)
    if isinstance(spec, Tensor) and spec.dtype == torch.bool:
        m = spec.cpu()
        if m.dim() == 1:
            m = m[None].expand(n, L)
        if tuple(m.shape) != (n, L):
            raise ValueError(f"a position mask must be [n_seq, pos] = {(n, L)} or [pos], got {tuple(spec.shape)}")
        return m
    cols = torch.zeros(L, dtype=torch.bool)
    if isinstance(spec, slice):
        cols[torch.arange(L)[spec]] = True
    else:
        cols[Positions.parse(spec).indices(L, name="positions")] = True
    return cols[None].expand(n, L)


def position_groups(spec: Any, shape: tuple[int, int]) -> dict[str, Tensor]:
    """The ``positions`` argument of :func:`probe_sweep` -> {name: bool [n_seq, L]}.

    ``None`` -> {"all": every position}; ``"each"`` -> one group per position; a list of ints -> one group
    per position; a dict name -> spec (int, list, slice, bool mask [n_seq, L] or [L])."""
    n, L = shape
    if spec is None:
        return {"all": _pos_mask(None, shape)}
    if isinstance(spec, str):
        if spec != "each":
            raise ValueError(f"positions must be None, 'each', a list of positions or a dict, got {spec!r}")
        return {str(p): _pos_mask(p, shape) for p in range(L)}
    if isinstance(spec, Mapping):
        return {str(k): _pos_mask(v, shape) for k, v in spec.items()}
    if isinstance(spec, (int, slice)):
        return {str(spec): _pos_mask(spec, shape)}
    return {str(int(p)): _pos_mask(int(p), shape) for p in spec}


@dataclass
class SweepResult:
    """Probe results per (hook, position group).

    Attributes:
        rows: one dict per cell: hook, layer, position, n_train, n_test, the probe's metrics (accuracy,
            balanced_accuracy, f1, roc_auc; r2/mse for regressors), control_accuracy, selectivity, seconds.
        hooks, positions: the axes, in order.
        probes: (hook, position) -> the fitted task probe.
    """

    rows: list[dict[str, Any]]
    hooks: list[str]
    positions: list[str]
    probes: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    seconds: float = 0.0

    def get(self, hook: str, position: str | None = None) -> dict[str, Any]:
        position = self.positions[0] if position is None and len(self.positions) == 1 else position
        for r in self.rows:
            if r["hook"] == hook and r["position"] == str(position):
                return r
        raise KeyError(f"no cell ({hook!r}, {position!r}); hooks {self.hooks}, positions {self.positions}")

    def best(self, metric: str = "accuracy", position: str | None = None) -> dict[str, Any]:
        """The row with the highest ``metric`` (in one position group if given); ties -> the earlier hook."""
        rows = [r for r in self.rows if position is None or r["position"] == str(position)]
        if not rows:
            raise KeyError(f"no rows for position {position!r}; positions are {self.positions}")
        def key(r: dict[str, Any]) -> tuple[float, int]:
            return float(np.nan_to_num(r.get(metric, np.nan), nan=-np.inf)), -self.hooks.index(r["hook"])

        return max(rows, key=key)

    def matrix(self, metric: str = "accuracy") -> np.ndarray:
        """[n_hooks, n_positions] of ``metric`` (nan where missing)."""
        out = np.full((len(self.hooks), len(self.positions)), np.nan)
        for r in self.rows:
            out[self.hooks.index(r["hook"]), self.positions.index(r["position"])] = r.get(metric, np.nan)
        return out

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def figure(self, metrics: Sequence[str] | None = None, title: str | None = None) -> Any:
        return sweep_figure(self, metrics, title)


PANEL_PX = 70  # width of one position column of a panel, in pixels (at least MIN_PANEL_PX a panel)
MIN_PANEL_PX = 220
BAR_PX = 100  # room right of each panel for its colour bar (bar, tick labels, title), in pixels
LEFT_PX = 190  # room for the hook names, left of the first panel


def sweep_figure(result: SweepResult, metrics: Sequence[str] | None = None, title: str | None = None) -> Any:
    """Heatmaps hooks (rows, input at the top) × position groups (columns), one panel per metric
    (default: accuracy and, if computed, selectivity).

    The panels share their hook axis (names only left of the first panel) and each colour bar sits in the gap
    right of its own panel (the last one in the right margin), so no label or bar covers another panel's cells.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp.attention.figures import DIVERGING, SEQUENTIAL

    if metrics is None:
        first = "accuracy" if "accuracy" in result.rows[0] else "r2"
        metrics = [first] + (["selectivity"] if "selectivity" in result.rows[0] else [])
    n = len(metrics)
    panel = max(MIN_PANEL_PX, PANEL_PX * len(result.positions))
    plot_w = n * panel + (n - 1) * BAR_PX  # the plotting area: panels and the gaps holding their colour bars
    fig = make_subplots(rows=1, cols=n, subplot_titles=list(metrics), shared_yaxes=True,
                        horizontal_spacing=BAR_PX / plot_w if n > 1 else 0.0)
    for k, metric in enumerate(metrics):
        z = result.matrix(metric)
        signed = metric == "selectivity"
        scale = {"zmin": -1.0, "zmax": 1.0, "zmid": 0.0, "colorscale": DIVERGING} if signed else \
            {"zmin": float(np.nanmin(z)) if np.isfinite(z).any() else 0.0, "zmax": 1.0, "colorscale": SEQUENTIAL}
        bar_x = (k * (panel + BAR_PX) + panel + 6) / plot_w  # 6 px right of panel k, in paper coordinates
        fig.add_trace(go.Heatmap(
            z=z, x=result.positions, y=result.hooks, text=np.round(z, 3), texttemplate="%{text}", **scale,
            colorbar={"title": {"text": metric, "side": "right"}, "x": bar_x, "xanchor": "left", "xpad": 6,
                      "thickness": 14, "len": 0.9},
            hovertemplate=f"%{{y}}<br>position %{{x}}<br>{metric} %{{z:.4f}}<extra></extra>",
        ), row=1, col=k + 1)
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=k + 1)
        fig.update_xaxes(type="category", title_text="position", row=1, col=k + 1)
    fig.update_layout(title=title or f"probe sweep ({result.seconds:.1f} s)", plot_bgcolor="white",
                      width=LEFT_PX + plot_w + BAR_PX, height=max(300, 40 * len(result.hooks) + 160),
                      margin={"l": LEFT_PX, "r": BAR_PX})
    return fig


def _is_classifier(probe: Any) -> bool:
    from sklearn.base import is_classifier

    return bool(is_classifier(probe))


def _fit(est: Any, X: Tensor, y: Tensor, groups: Tensor) -> Any:
    """Fit ours with the sequence groups (group-disjoint CV folds), any other estimator on numpy arrays."""
    if hasattr(est, "metrics"):
        return est.fit(X, y, groups=groups)
    return est.fit(X.numpy(), y.numpy())


def _metrics(est: Any, X: Tensor, y: Tensor) -> dict[str, float]:
    if hasattr(est, "metrics"):
        return est.metrics(X, y)
    from .metrics import classification_metrics, regression_metrics

    if _is_classifier(est):
        return classification_metrics(y.numpy(), est.predict_proba(X.numpy()), est.classes_)
    return regression_metrics(y.numpy(), est.predict(X.numpy()))


def probe_sweep(
    model: HookedModel | None,
    tokens: Any,
    *,
    labels: Tensor,
    hook: str | Sequence[str] | None = None,
    positions: Any = None,
    probe: Any = None,
    control: str | Tensor | None = "tokens",
    test_size: float = 0.25,
    seed: int = 0,
    batch_size: int = 64,
    collected: ProbeRows | None = None,
    control_context: int = 0,
) -> SweepResult:
    """Fit one probe per (hook, position group) and score it on held-out sequences.

    Args:
        model: a hookable model (activations are collected in one pass for all hooks); may be None
            when ``collected`` is given.
        tokens: [n_seq, L] token ids (any form :func:`interp.hooks.tokens.as_tokens` reads).
        labels: [n_seq, L] per-token labels: int class labels (-1 = no label) for classifiers, float targets
            (nan = no label) for regressors.
        hook: a hook name or several (default: ``hook_embed`` and every ``blocks.{i}.hook_resid_post``; with
            ``collected``: every hook they hold).
        positions: position groups, each fitted apart (:func:`position_groups`): None (all positions pooled),
            ``"each"``, a list of positions, or a dict name -> position spec (int, list, slice, or a bool mask
            [n_seq, L] such as ``digit_pos == 1``).
        probe: an unfitted estimator, cloned per cell (default ``LogisticProbe(C=1.0)``: a fixed penalty
            keeps sweeps fast; ``LogisticProbe()`` chooses it by cross-validation in every cell).
        control: control-task types: ``"tokens"`` (the token id, Hewitt & Liang's word type), a per-token
            int tensor [n_seq, L] of types ([n_seq, L, k] for tuple types), or None to skip the control task.
        test_size: fraction of sequences held out.
        collected: precollected activations (:func:`collect_rows` / ``ProbeRows.from_store``) instead of
            running the model.
        control_context: with ``control="tokens"``, how many preceding tokens belong to a token's type
            (0: the token alone; 1: (previous token, token); k: the (k+1)-gram ending at the token,
            :func:`~.functional.ngram_types`). With few token types the per-token control task is decodable
            from any layer that keeps the token (control accuracy ~ 1 whatever the representation), so
            selectivity is uninformative; a longer type makes the control task as large as the local input.
    """
    from sklearn.base import clone

    from .estimators import LogisticProbe

    t0 = time.perf_counter()
    if control_context < 0:
        raise ValueError(f"control_context must be >= 0, got {control_context}")
    probe = LogisticProbe(C=1.0) if probe is None else probe
    classifier = _is_classifier(probe)
    tokens = as_tokens(model, tokens).cpu()
    labels = torch.as_tensor(labels).cpu()
    if labels.shape[:2] != tokens.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must be per token, [n_seq, L] = {tuple(tokens.shape)}")
    valid = labels >= 0 if classifier else torch.isfinite(labels.float())
    valid = valid.reshape(*tokens.shape, -1).all(-1)
    groups = position_groups(positions, tuple(tokens.shape))
    union = torch.zeros_like(valid)
    for m in groups.values():
        union |= m
    rows = collected
    if rows is None:
        if model is None:
            raise ValueError("pass a model to collect activations from, or collected=ProbeRows(...)")
        hooks = default_hooks(model) if hook is None else [hook] if isinstance(hook, str) else list(hook)
        rows = collect_rows(model, tokens, hook=hooks, keep=valid & union, batch_size=batch_size)
    else:
        hooks = list(rows.acts) if hook is None else [hook] if isinstance(hook, str) else list(hook)
        rows = rows.subset(rows.gather(valid & union))
    y_all = rows.gather(labels)
    types_all = None
    if classifier and control is not None:
        if isinstance(control, str):
            if control != "tokens":
                raise ValueError(f"control must be 'tokens', a per-token tensor of types or None, got {control!r}")
            types_all = rows.tokens if control_context == 0 else rows.gather(ngram_types(tokens, control_context + 1))
        else:
            types_all = rows.gather(control)
    train_all, _ = sequence_split(rows.seq, test_size, seed)

    out_rows, probes = [], {}
    for name, gmask in groups.items():
        m = rows.gather(gmask)
        if not bool(m.any()):
            continue
        y, train = y_all[m], train_all[m]
        if not bool(train.any()) or bool(train.all()):
            raise ValueError(f"position group {name!r} has no rows on one side of the train/test split")
        y_ctrl = control_labels(y, types_all[m], seed) if types_all is not None else None
        for hook in hooks:
            t_cell = time.perf_counter()
            X = rows.acts[hook][m]
            task = _fit(clone(probe), X[train], y[train], rows.seq[m][train])
            row: dict[str, Any] = {"hook": hook, "layer": layer_of(hook), "position": name,
                                   "n_train": int(train.sum()), "n_test": int((~train).sum())}
            row.update(_metrics(task, X[~train], y[~train]))
            if y_ctrl is not None:
                ctrl = _fit(clone(probe), X[train], y_ctrl[train], rows.seq[m][train])
                row["control_accuracy"] = float(ctrl.score(X[~train].numpy(), y_ctrl[~train].numpy()))
                row["selectivity"] = row["accuracy"] - row["control_accuracy"]
            row["seconds"] = round(time.perf_counter() - t_cell, 3)
            out_rows.append(row)
            probes[(hook, name)] = task
    return SweepResult(out_rows, hooks, [n for n in groups if any(r["position"] == n for r in out_rows)], probes,
                       seconds=time.perf_counter() - t0)
