"""Evaluation harness for token-interaction maps: perturbation curves and the copying benchmark.

Every method is a function ``(model, tokens [1, L], positions) -> rows [len(positions), L]``: row r
scores each source token j for the prediction the model makes at query position ``positions[r]``
(the logit of token ``positions[r] + 1``). Entries right of the query are ignored.

Methods (:data:`BENCHMARK_METHODS`; a spec may add ``@rollout``, ``@sum``, ``@last`` or ``@<layer>`` to a
layer-wise method to choose how the per-layer maps are combined). They are built on the interaction-map
methods of :mod:`interp.attention.methods` (which models each applies to comes from there):

=================  ===========================================================================  =========
name               per-layer map (rows = query i, columns = source j)                           layers
=================  ===========================================================================  =========
``hidden``         hidden attention (Ali et al.), channel/head mean of |α| (``mean_abs``)       rollout
``hidden_last``    = ``hidden@last``: the last layer's map alone                                last
``attention``      transformers: softmax pattern, mean over heads                               rollout
``attention_last`` = ``attention@last``                                                         last
``unified``        unified implicit attention (Zimerman et al.), channel mean of |α̂|            rollout
``latim_l1``       LaTIM ‖T_i(x_j)‖₁, f = SiLU                                                  sum
``latim_l2``       LaTIM ‖T_i(x_j)‖₂                                                            sum
``latim_alti``     LaTIM ALTI score (row-normalised)                                            sum
``lrp``            MambaLRP / CP-LRP rows (:func:`interp.lrp.interaction_rows`), whole model,   —
                   signed (positive = evidence for the predicted token)
``lrp_abs``        absolute value of the LRP rows (magnitude only)                              —
``grad_x_input``   gradient × input rows, whole model, signed                                   —
``random``         uniform random scores (the chance reference: AUC 0.5)                        —
=================  ===========================================================================  =========

Combining layers (``combine_layers``): ``rollout`` is ρ = Π_l rownorm(I + |A_l|) (Abnar & Zuidema;
the identity stands for the residual stream), the usual way to chain hidden-attention maps through
depth. ``sum`` is the mean over layers of the row-normalised |maps| (each layer's row sums to 1, so a
layer with larger raw contributions does not dominate). ``last`` takes the last layer, ``@k`` layer k.
LaTIM defaults to ``sum``: its contributions are per-layer decompositions (T_i(x_j) is the share of
layer input token j in layer output i), read per layer in the LaTIM paper, and their norms are not on
the scale of the identity that rollout adds for the residual (``latim_l2@rollout`` is the worst LaTIM
variant on the copy task). On small trained copy models the retrieval of the source sits in the last
layer and ``latim_l2@last`` is the sharpest variant; the default benchmark reports it next to ``sum``.

Perturbation (docs/design.md §3.9; the curves are :mod:`interp.attention.perturbation`'s, re-exported here):
:func:`perturbation_curve` replaces the k most (MoRF) or least (LeRF) relevant tokens j <= position by a
baseline id and records the logit of the originally predicted token; ``delta_auc = A_LeRF - A_MoRF``.

Copying benchmark (LaTIM): on ``BOS a_1..a_n SEP a_1..a_n`` the prediction at copy position t
(``CopyBatch.loss_mask``) has one true source, ``CopyBatch.source_positions[t]`` (= t - n, in the
first half). Each method's row for t is scored against that one-hot target by ROC-AUC, average
precision and recall@1. **Candidates** are all positions j < t (BOS, the first half, SEP and the
copies already made; the query position itself is excluded because most maps have a large
diagonal that says nothing about retrieval). ``candidates="first_half"`` restricts them to
a_1..a_n, ``"upto"`` includes t. Metrics are averaged over all (sequence, position) pairs.
Ties: AUC counts half (Mann–Whitney), AP groups tied scores into one threshold (as scikit-learn),
recall@1 is the expected hit rate under random tie-breaking.

Command line::

    python -m interp.attention.evaluate copying [--models copy-mamba copy-mamba2] [--methods ...] [--n 50]
        [--markdown FILE] [--json FILE]
    python -m interp.attention.evaluate perturbation [--model copy-mamba | tokfsm-mamba ...] [--methods ...] [--n 20]
        [--data auto|copy|tokfsm] [--baseline ID] [--steps K]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.metrics import average_precision, roc_auc

from . import hidden, methods
from .maps import interaction_map, normalize, rollout
from .perturbation import (  # perturbation curves: re-exported, the harness's benchmarks run them
    _as_np, _logits, _one, area, delta_auc, perturbation_curve, perturbation_ks, perturbation_test,
)

__all__ = [
    "BENCHMARK_METHODS", "DEFAULT_COPY_METHODS", "LAYER_COMBINE", "MethodUnavailable", "BenchmarkTable",
    "register_method", "resolve_method", "method_rows", "layer_maps", "combine_layers",
    "roc_auc", "average_precision", "recall_at_1", "score_row",
    "perturbation_ks", "perturbation_curve", "area", "delta_auc", "perturbation_test",
    "copying_benchmark", "perturbation_benchmark", "main",
]

MethodFn = Callable[[Any, Tensor, Sequence[int]], Tensor]
LAYER_COMBINE = ("rollout", "sum", "last")
DEFAULT_COPY_METHODS = ("hidden", "hidden_last", "unified", "latim_l2", "latim_l2@last", "latim_alti", "latim_alti@last",
                        "lrp", "grad_x_input", "random")
CANDIDATES = ("before", "upto", "first_half")

# published on the copying task (LaTIM paper, via docs/design.md §3.9): (family, method) -> (AUC, AP)
PUBLISHED = {
    ("mamba2", "hidden"): (0.79, 0.49),
    ("mamba2", "latim_l2"): (0.98, 0.86),
    ("mamba1", "hidden"): (0.84, 0.36),
    ("mamba1", "lrp"): (0.40, 0.22),
}


class MethodUnavailable(RuntimeError):
    """The method does not apply to this model (e.g. softmax attention on an SSM) or its module is missing."""


# ============================================================================================
# metrics (pure functions; no scikit-learn needed at runtime). roc_auc and average_precision are
# interp.metrics's (re-exported here)
# ============================================================================================
def recall_at_1(labels: Any, scores: Any) -> float:
    """Fraction of the top-scored candidates that are positive: 1 if a positive is the unique argmax,
    1/m if it shares the maximum with m - 1 others (expected hit under random tie-breaking)."""
    y, s = _as_np(labels) > 0.5, _as_np(scores)
    top = s == s.max()
    return float(y[top].sum() / top.sum())


def score_row(row: Any, true_index: int, candidates: Sequence[int] | None = None) -> dict[str, float]:
    """ROC-AUC, AP and recall@1 of one score row against a one-hot target at ``true_index``.

    ``candidates`` (indices into ``row``, must contain ``true_index``) restricts the scored entries.
    NaN scores count as the lowest score.
    """
    s = _as_np(row)
    idx = np.arange(len(s)) if candidates is None else np.asarray(list(candidates), dtype=np.int64)
    s = s[idx]
    s = np.where(np.isnan(s), -np.inf, s)
    y = idx == int(true_index)
    if not y.any():
        raise ValueError(f"true index {true_index} is not among the candidates")
    return {"auc": roc_auc(y, s), "ap": average_precision(y, s), "recall_at_1": recall_at_1(y, s)}


# ============================================================================================
# methods
# ============================================================================================
def _n_layers(model: Any) -> int:
    return int(model.cfg.n_layers)


def _require(method: str, model: Any) -> None:
    """:class:`MethodUnavailable` unless the interaction-map ``method`` applies to ``model`` (the registry,
    :mod:`interp.attention.methods`, says which models each method is for)."""
    try:
        methods.check_applies(method, model)
    except methods.MethodNotApplicable as e:
        raise MethodUnavailable(str(e)) from None


def _hidden_maps(model: Any, tokens: Tensor, rows: list[int] | None = None) -> list[Tensor]:
    """Channel/head mean |α| of every layer from one cached forward (rows only: O(H·N·L) per row)."""
    _require("hidden", model)
    n = _n_layers(model)
    names = [f"blocks.{l}.ssm.hook_{h}" for l in range(n) for h in ("dt", "B", "C")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
        out = []
        for l in range(n):
            dt, B, C = (cache[f"blocks.{l}.ssm.hook_{h}"] for h in ("dt", "B", "C"))
            A = model.blocks[l].ssm.A.detach()
            if rows is None:
                out.append(hidden.hidden_attention_reduced(dt, A, B, C, "mean_abs")[0])
            else:
                out.append(hidden.hidden_attention_rows_reduced(dt, A, B, C, rows, "mean_abs")[0])
    return out


def _attention_maps(model: Any, tokens: Tensor, rows: list[int] | None = None) -> list[Tensor]:
    _require("attention", model)
    maps = [interaction_map(model, tokens, layer, "attention", aggregate="mean")[0] for layer in range(_n_layers(model))]
    return maps if rows is None else [m[rows] for m in maps]


def _unified_maps(model: Any, tokens: Tensor, rows: list[int] | None = None) -> list[Tensor]:
    _require("unified", model)
    try:
        from . import unified
    except ImportError as e:  # pragma: no cover - depends on the checkout
        raise MethodUnavailable(f"interp.attention.unified is not available: {e}") from e
    names = [f"blocks.{l}.ssm.{h}" for l in range(_n_layers(model)) for h in unified.UNIFIED_HOOKS]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    maps = [unified.unified_layer(model, cache, l, aggregate="mean_abs").map[0] for l in range(_n_layers(model))]
    return maps if rows is None else [m[rows] for m in maps]


def _latim_maps(score: str) -> Callable[..., list[Tensor]]:
    """LaTIM per-layer score maps via :mod:`interp.attention.latim` (``latim_layer`` + ``latim_scores``)."""

    def maps(model: Any, tokens: Tensor, rows: list[int] | None = None) -> list[Tensor]:
        _require("latim", model)
        try:
            from . import latim
        except ImportError as e:  # pragma: no cover - depends on the checkout
            raise MethodUnavailable(f"interp.attention.latim is not available in this checkout: {e}") from e
        L = tokens.shape[1]
        names = [f"blocks.{l}.ssm.{h}" for l in range(_n_layers(model)) for h in latim.LATIM_HOOKS]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=names)
            out = []
            for layer in range(_n_layers(model)):
                contrib = latim.latim_layer(model, cache, layer, f="silu", rows=rows)
                out.append(latim.latim_scores(contrib, score=score)[0].reshape(-1, L).float())
        return out

    return maps


LAYERWISE: dict[str, tuple[Callable[..., list[Tensor]], str]] = {
    "hidden": (_hidden_maps, "rollout"),
    "attention": (_attention_maps, "rollout"),
    "unified": (_unified_maps, "rollout"),
    "latim_l1": (_latim_maps("l1"), "sum"),
    "latim_l2": (_latim_maps("l2"), "sum"),
    "latim_alti": (_latim_maps("alti"), "sum"),
}
ALIASES = {"hidden_last": "hidden@last", "attention_last": "attention@last"}


def layer_maps(model: Any, tokens: Tensor, method: str, rows: Sequence[int] | None = None) -> list[Tensor]:
    """The per-layer maps [L, L] of a layer-wise method (a key of :data:`LAYERWISE`), or only the
    query ``rows`` of each ([len(rows), L], computed row-wise where the method allows)."""
    if method not in LAYERWISE:
        raise KeyError(f"{method!r} is not a layer-wise method; known: {', '.join(LAYERWISE)}")
    return LAYERWISE[method][0](model, _one(tokens), None if rows is None else [int(r) for r in rows])


def combine_layers(maps: Sequence[Tensor], how: str | int = "rollout") -> Tensor:
    """Combine per-layer maps [L, L] into one: "rollout", "sum", "last" or a layer index.

    "sum", "last" and an index act row by row, so they also take the query rows [R, L] of each layer;
    "rollout" needs the full square maps.
    """
    if not len(maps):
        raise ValueError("no layer maps to combine")
    if isinstance(how, int) or (isinstance(how, str) and how.lstrip("-").isdigit()):
        return maps[int(how)].float()
    if how == "last":
        return maps[-1].float()
    if how == "sum":
        return torch.stack([normalize(m.float(), "row") for m in maps]).mean(0)
    if how == "rollout":
        return rollout([m.float().abs() for m in maps])
    raise ValueError(f"layer combination must be one of {LAYER_COMBINE} or a layer index, got {how!r}")


def _whole_model(method: str, absolute: bool = False) -> MethodFn:
    def rows(model: Any, tokens: Tensor, positions: Sequence[int]) -> Tensor:
        from interp.lrp import interaction_rows

        r = interaction_rows(model, _one(tokens), positions=list(positions), method=method).float()
        return r.abs() if absolute else r

    return rows


def _random_rows(model: Any, tokens: Tensor, positions: Sequence[int]) -> Tensor:
    tokens = _one(tokens)
    g = torch.Generator().manual_seed(int(tokens.sum()) * 1009 + tokens.shape[1])
    return torch.rand(len(positions), tokens.shape[1], generator=g)


BENCHMARK_METHODS: dict[str, MethodFn] = {}  # name -> row function; built below on interp.attention.methods


def register_method(name: str, fn: MethodFn) -> None:
    """Add a method ``fn(model, tokens [1, L], positions) -> [len(positions), L]`` under ``name``."""
    if "@" in name:
        raise ValueError("method names may not contain '@' (it selects the layer combination)")
    BENCHMARK_METHODS[name] = fn


def _layerwise_fn(base: str, how: str | int) -> MethodFn:
    def rows(model: Any, tokens: Tensor, positions: Sequence[int]) -> Tensor:
        if how == "rollout":  # needs the full maps
            return combine_layers(layer_maps(model, tokens, base), how)[list(positions)]
        return combine_layers(layer_maps(model, tokens, base, rows=positions), how)  # row-wise combinations

    rows.__name__ = f"{base}@{how}"
    return rows


def resolve_method(spec: str | MethodFn) -> MethodFn:
    """The function of a method spec: a registered name, ``<layer-wise name>@<rollout|sum|last|k>``, or a callable."""
    if callable(spec):
        return spec
    spec = ALIASES.get(spec, spec)
    if spec in BENCHMARK_METHODS:
        return BENCHMARK_METHODS[spec]
    base, _, how = spec.partition("@")
    if base in LAYERWISE:
        how = how or LAYERWISE[base][1]
        if how not in LAYER_COMBINE and not how.lstrip("-").isdigit():
            raise ValueError(f"unknown layer combination {how!r} in {spec!r}; use one of {LAYER_COMBINE} or an index")
        return _layerwise_fn(base, how)
    known = sorted(set(BENCHMARK_METHODS) | set(LAYERWISE) | set(ALIASES))
    raise KeyError(f"unknown method {spec!r}; known: {', '.join(known)} (layer-wise ones take @rollout|@sum|@last|@k)")


for _name in LAYERWISE:
    register_method(_name, _layerwise_fn(_name, LAYERWISE[_name][1]))
for _alias, _target in ALIASES.items():
    register_method(_alias, _layerwise_fn(*_target.split("@")))
for _name in methods.WHOLE_MODEL:  # lrp, grad_x_input
    register_method(_name, _whole_model(_name))
register_method("lrp_abs", _whole_model("lrp", absolute=True))
register_method("random", _random_rows)


def method_rows(model: Any, tokens: Tensor, positions: Sequence[int], method: str | MethodFn) -> Tensor:
    """Rows [len(positions), L] of ``method`` (a spec or a callable) for one sequence."""
    tokens = _one(tokens)
    L = tokens.shape[1]
    positions = [int(p) % L for p in positions]
    rows = resolve_method(method)(model, tokens, positions)
    if tuple(rows.shape) != (len(positions), L):
        raise ValueError(f"method {method!r} returned {tuple(rows.shape)}, expected {(len(positions), L)}")
    return rows.detach().float().cpu()


# ============================================================================================
# benchmark tables
# ============================================================================================
@dataclass
class BenchmarkTable:
    """Rows of one benchmark: one dict per (model, method) with the columns in ``columns``."""

    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    metrics: tuple[str, ...]
    title: str = ""
    notes: list[str] = field(default_factory=list)
    labels: tuple[str, ...] | None = None  # display names of ``metrics`` in the table header

    def models(self) -> list[str]:
        return list(dict.fromkeys(r["model"] for r in self.rows))

    def methods(self) -> list[str]:
        return list(dict.fromkeys(r["method"] for r in self.rows))

    def cell(self, model: str, method: str) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["model"] == model and r["method"] == method), None)

    def _cell_text(self, model: str, method: str) -> str:
        r = self.cell(model, method)
        if r is None or r.get("note"):
            return "n/a"
        return " / ".join("nan" if r[m] is None or math.isnan(r[m]) else f"{r[m]:.2f}" for m in self.metrics)

    def _grid(self) -> tuple[list[str], list[list[str]]]:
        names = " / ".join(self.labels or self.metrics)
        head = ["method"] + [f"{m} ({names})" for m in self.models()]
        body = [[meth] + [self._cell_text(m, meth) for m in self.models()] for meth in self.methods()]
        return head, body

    def to_text(self) -> str:
        head, body = self._grid()
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
        out = ([self.title] if self.title else []) + [line(head), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in body] + self._footer()
        return "\n".join(out)

    def to_markdown(self) -> str:
        head, body = self._grid()
        out = ([f"**{self.title}**", ""] if self.title else [])
        out += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in body]
        foot = self._footer()
        return "\n".join(out + ([""] + [f"- {f}" for f in foot] if foot else [])) + "\n"

    def _footer(self) -> list[str]:
        foot = list(self.notes)
        for r in self.rows:
            if r.get("note"):
                foot.append(f"{r['model']} / {r['method']}: n/a ({r['note']})")
        return foot

    def to_json(self) -> str:
        return json.dumps({"title": self.title, "columns": list(self.columns), "rows": self.rows, "notes": self.notes},
                          indent=2)

    def __str__(self) -> str:
        return self.to_text()


def _resolve_models(models: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    if not isinstance(models, Mapping):
        models = {str(m): m for m in models}
    out = {}
    for name, m in models.items():
        if isinstance(m, str):
            import interp

            m = interp.load(m)
        out[name] = m.eval() if hasattr(m, "eval") else m
    return out


def _method_items(methods: Iterable[str | MethodFn] | Mapping[str, MethodFn] | None) -> list[tuple[str, Any]]:
    if methods is None:
        methods = DEFAULT_COPY_METHODS
    if isinstance(methods, Mapping):
        return list(methods.items())
    return [(m if isinstance(m, str) else getattr(m, "__name__", repr(m)), m) for m in methods]


def _candidates(t: int, n: int, which: str) -> list[int]:
    if which == "before":
        return list(range(t))
    if which == "upto":
        return list(range(t + 1))
    if which == "first_half":
        return list(range(1, n + 1))
    raise ValueError(f"candidates must be one of {CANDIDATES}, got {which!r}")


def _family(model: Any) -> str:
    return getattr(getattr(model, "cfg", None), "family", None) or "transformer"


def copying_benchmark(
    models: Mapping[str, Any] | Sequence[str],
    methods: Iterable[str | MethodFn] | Mapping[str, MethodFn] | None = None,
    n_sequences: int = 50,
    n_range: int | tuple[int, int] = (16, 32),
    seed: int = 0,
    candidates: str = "before",
    progress: bool = False,
) -> BenchmarkTable:
    """Score each method's rows against the true copy source on held-out copying sequences.

    Args:
        models: name -> model (or a name / folder that :func:`interp.load` accepts), or a list of names.
        methods: specs (see :data:`BENCHMARK_METHODS`), callables, or a name -> callable mapping
            (default :data:`DEFAULT_COPY_METHODS`).
        n_sequences: copying sequences (each contributes its n copy positions).
        n_range: copy lengths n, drawn uniformly from ``lo..hi``.
        seed: data seed (numpy ``default_rng(seed)``); every model sees the same sequences.
        candidates: "before" (j < t, default), "upto" (j <= t) or "first_half" (a_1..a_n).

    Returns:
        :class:`BenchmarkTable`; each row has ``model, method, auc, ap, recall_at_1, n_positions,
        copy_accuracy, seconds, note`` (``note`` explains a method that does not apply, metrics None).
    """
    from interp.data import sample_copy_batch

    if candidates not in CANDIDATES:
        raise ValueError(f"candidates must be one of {CANDIDATES}, got {candidates!r}")
    batch = sample_copy_batch(n_sequences, np.random.default_rng(seed), n_range=n_range)
    seqs = []
    for b in range(n_sequences):
        Lb = int(batch.seq_lengths[b])
        pos = torch.nonzero(batch.loss_mask[b, :Lb]).flatten().tolist()
        seqs.append((batch.tokens[b:b + 1, :Lb], pos, batch.source_positions[b, pos].tolist(), int(batch.lengths[b])))
    rows: list[dict[str, Any]] = []
    resolved = _resolve_models(models)
    for model_name, model in resolved.items():
        dev = getattr(model, "device", torch.device("cpu"))
        with torch.no_grad():
            hits = total = 0
            for toks, pos, _src, _n in seqs:
                pred = _logits(model, toks.to(dev))[0, pos].argmax(-1).cpu()
                hits += int((pred == toks[0, [p + 1 for p in pos]]).sum())
                total += len(pos)
        acc = hits / max(total, 1)
        for method_name, spec in _method_items(methods):
            t0 = time.perf_counter()
            vals: dict[str, list[float]] = {"auc": [], "ap": [], "recall_at_1": []}
            note = None
            try:
                for i, (toks, pos, src, n) in enumerate(seqs):
                    r = method_rows(model, toks.to(dev), pos, spec)
                    for row, t, s in zip(r, pos, src):
                        m = score_row(row, s, _candidates(t, n, candidates))
                        for k in vals:
                            vals[k].append(m[k])
                    if progress:
                        print(f"\r{model_name} {method_name}: {i + 1}/{len(seqs)}", end="", file=sys.stderr)
            except MethodUnavailable as e:
                note = str(e)
            if progress:
                print(file=sys.stderr)
            rows.append({
                "model": model_name, "method": method_name,
                **{k: (float(np.mean(v)) if v and note is None else None) for k, v in vals.items()},
                "n_positions": len(vals["auc"]) if note is None else 0,
                "copy_accuracy": acc, "family": _family(model),
                "seconds": round(time.perf_counter() - t0, 3), "note": note,
            })
    lo, hi = (n_range, n_range) if isinstance(n_range, int) else n_range
    notes = [f"{n_sequences} copying sequences, n in {lo}..{hi}, seed {seed}; candidates: "
             + {"before": "all positions j < t", "upto": "all positions j <= t",
                "first_half": "the first-half tokens a_1..a_n"}[candidates]
             + "; metrics averaged over all copy positions"]
    notes += [f"{m}: teacher-forced copy accuracy on these sequences {r['copy_accuracy']:.3f}"
              for m, r in {r["model"]: r for r in rows}.items()]
    pub = [f"{fam} {meth}: AUC {a:.2f} / AP {p:.2f}" for (fam, meth), (a, p) in PUBLISHED.items()]
    notes.append("published (LaTIM paper): " + "; ".join(pub))
    return BenchmarkTable(rows=rows, columns=("model", "method", "auc", "ap", "recall_at_1", "n_positions",
                                              "copy_accuracy", "seconds", "note"),
                          metrics=("auc", "ap", "recall_at_1"), labels=("AUC", "AP", "R@1"),
                          title="Copying benchmark: AUC / AP / R@1",
                          notes=notes)


def _vocab_size(model: Any) -> int | None:
    return getattr(getattr(model, "cfg", None), "d_vocab", None)


def _perturbation_data(data: str, n_sequences: int, n_range: int | tuple[int, int], seq_len: int,
                       rng: np.random.Generator, seed: int) -> tuple[list[tuple[Tensor, int]], int, str]:
    """(sequence [1, L], query position) pairs, the default baseline id and a description."""
    if data == "copy":
        from interp.data import COPY_PAD, sample_copy_batch

        batch = sample_copy_batch(n_sequences, rng, n_range=n_range)
        seqs = []
        for b in range(n_sequences):
            Lb = int(batch.seq_lengths[b])
            pos = torch.nonzero(batch.loss_mask[b, :Lb]).flatten().tolist()
            seqs.append((batch.tokens[b:b + 1, :Lb], int(rng.choice(pos))))
        lo, hi = (n_range, n_range) if isinstance(n_range, int) else n_range
        return seqs, COPY_PAD, f"{n_sequences} copying sequences (n in {lo}..{hi}, seed {seed}), one copy position each"
    if data == "tokfsm":
        from interp.data import TOKFSM_BOS, tokfsm_dataset

        tokens = tokfsm_dataset(n_sequences, seed=seed)[:, :seq_len]
        seqs = [(tokens[b:b + 1], int(rng.integers(seq_len // 2, seq_len - 1))) for b in range(n_sequences)]
        return seqs, TOKFSM_BOS, (f"{n_sequences} TokFSM sequences of {seq_len} tokens (seed {seed}), one position "
                                  f"each in the second half")
    raise ValueError(f"data must be 'copy' or 'tokfsm', got {data!r}")


def perturbation_benchmark(
    models: Mapping[str, Any] | Sequence[str],
    methods: Iterable[str | MethodFn] | Mapping[str, MethodFn] | None = None,
    n_sequences: int = 20,
    n_range: int | tuple[int, int] = (16, 32),
    seed: int = 0,
    baseline_id: int | None = None,
    steps: int | None = None,
    data: str = "auto",
    seq_len: int = 64,
    progress: bool = False,
) -> BenchmarkTable:
    """MoRF / LeRF areas and ΔA per method, one random query position per sequence.

    ``data``: "copy" (copying sequences, a random copy position; baseline PAD), "tokfsm" (TokFSM
    sequences of ``seq_len`` tokens, a random position in the second half; baseline BOS) or "auto"
    (TokFSM for models with the TokFSM vocabulary, else copy). ``baseline_id`` overrides the
    replacement token. Only tokens j <= position are replaced; the target is the clean argmax.
    """
    from interp.data import TOKFSM_VOCAB_SIZE

    rows = []
    notes: list[str] = []
    for model_name, model in _resolve_models(models).items():
        kind = data if data != "auto" else ("tokfsm" if _vocab_size(model) == TOKFSM_VOCAB_SIZE else "copy")
        seqs, default_base, desc = _perturbation_data(kind, n_sequences, n_range, seq_len,
                                                      np.random.default_rng(seed), seed)
        baseline = default_base if baseline_id is None else int(baseline_id)
        notes.append(f"{model_name}: {desc}; tokens j <= position replaced by id {baseline}")
        dev = getattr(model, "device", torch.device("cpu"))
        for method_name, spec in _method_items(methods):
            t0 = time.perf_counter()
            vals: dict[str, list[float]] = {"a_morf": [], "a_lerf": [], "delta": []}
            note = None
            try:
                for toks, p in seqs:
                    toks = toks.to(dev)
                    row = method_rows(model, toks, [p], spec)[0]
                    res = perturbation_test(model, toks, p, row, baseline, steps)
                    for k in vals:
                        vals[k].append(res[k])
            except MethodUnavailable as e:
                note = str(e)
            if progress:
                print(f"{model_name} {method_name}: done", file=sys.stderr)
            rows.append({"model": model_name, "method": method_name,
                         **{k: (float(np.mean(v)) if v and note is None else None) for k, v in vals.items()},
                         "n_positions": len(vals["delta"]) if note is None else 0,
                         "seconds": round(time.perf_counter() - t0, 3), "note": note})
    notes.append("target = the clean argmax; areas of the target-logit curves over k/n in [0, 1]; "
                 "ΔA = A_LeRF - A_MoRF (higher is better)")
    return BenchmarkTable(rows=rows, columns=("model", "method", "a_morf", "a_lerf", "delta", "n_positions",
                                              "seconds", "note"),
                          metrics=("a_morf", "a_lerf", "delta"), labels=("A_MoRF", "A_LeRF", "ΔA"),
                          title="Perturbation: A_MoRF / A_LeRF / ΔA", notes=notes)


# ============================================================================================
# command line
# ============================================================================================
def _model_arg(spec: str) -> tuple[str, str]:
    """``NAME``, ``PATH`` or ``LABEL=PATH`` -> (label, what interp.load gets)."""
    if "=" in spec:
        label, _, path = spec.partition("=")
        return label, path
    from pathlib import Path

    return (Path(spec).name or spec) if Path(spec).expanduser().is_dir() else spec, spec


def _available(specs: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    from pathlib import Path

    from interp import zoo

    found, missing = {}, []
    for s in specs:
        label, target = _model_arg(s)
        if Path(target).expanduser().is_dir() or zoo.embedded_path(target) is not None:
            found[label] = target
        else:
            missing.append(target)
    return found, missing


def main(argv: list[str] | None = None) -> BenchmarkTable | None:
    p = argparse.ArgumentParser(prog="interp attention",
                                description="Evaluate token-interaction methods (copying benchmark, perturbation).")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("copying", "ROC-AUC / AP / recall@1 of the true copy source"),
                        ("perturbation", "MoRF / LeRF perturbation curves (ΔA)")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--models", "--model", nargs="+", default=["copy-mamba", "copy-mamba2"],
                       help="embedded model names, checkpoint folders, or LABEL=FOLDER (default copy-mamba copy-mamba2)")
        s.add_argument("--methods", nargs="+", default=None,
                       help=f"method specs (default: {' '.join(DEFAULT_COPY_METHODS)}); layer-wise ones take "
                            "@rollout|@sum|@last|@K")
        s.add_argument("--n", type=int, default=50 if name == "copying" else 20, help="number of sequences")
        s.add_argument("--n-range", type=int, nargs=2, default=(16, 32), metavar=("LO", "HI"), help="copy lengths")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--markdown", default=None, metavar="FILE", help="also write the table as markdown")
        s.add_argument("--json", default=None, metavar="FILE", help="also write the raw rows as JSON")
        s.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
        s.add_argument("--progress", action="store_true")
        if name == "copying":
            s.add_argument("--candidates", choices=CANDIDATES, default="before",
                           help="scored source positions: j < t (default), j <= t, or the first half")
        else:
            s.add_argument("--baseline", type=int, default=None,
                           help="replacement token id (default: PAD for copy data, BOS for TokFSM)")
            s.add_argument("--data", choices=("auto", "copy", "tokfsm"), default="auto",
                           help="sequences: copying or TokFSM (auto: by the model's vocabulary)")
            s.add_argument("--seq-len", type=int, default=64, help="TokFSM sequence length (default 64)")
            s.add_argument("--steps", type=int, default=None, help="number of k steps (default: every k)")
    args = p.parse_args(argv)
    models, missing = _available(args.models)
    for m in missing:
        print(f"skipping {m}: not installed (train it with `python -m interp.zoo.train {m} --install`) "
              "and not a checkpoint folder", file=sys.stderr)
    if not models:
        print("no model to evaluate", file=sys.stderr)
        raise SystemExit(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        if args.cmd == "copying":
            table = copying_benchmark(models, args.methods, n_sequences=args.n, n_range=tuple(args.n_range),
                                      seed=args.seed, candidates=args.candidates, progress=args.progress)
        else:
            table = perturbation_benchmark(models, args.methods, n_sequences=args.n, n_range=tuple(args.n_range),
                                           seed=args.seed, baseline_id=args.baseline, steps=args.steps,
                                           data=args.data, seq_len=args.seq_len, progress=args.progress)
    finally:
        torch.set_num_threads(threads)
    print(table.to_text())
    print(f"({time.perf_counter() - t0:.1f} s)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table.to_markdown())
    if args.json:
        with open(args.json, "w") as f:
            f.write(table.to_json())
    return table


if __name__ == "__main__":  # pragma: no cover
    from interp.cli import run

    sys.exit(run("interp attention", main, sys.argv[1:]))
