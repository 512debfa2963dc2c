"""Benchmarks of token-interaction methods on data with a known answer: the copying benchmark and perturbation curves.

    table = copying_benchmark({"copy-mamba": model}, methods=["hidden", "latim_l2", "random"], n_sequences=50)
    table = perturbation_benchmark(["copy-mamba"], methods=["hidden_last", "lrp"], n_sequences=20)
    print(table.to_text()); table.to_markdown(); table.to_json()            # BenchmarkTable

The methods and their specs (``hidden@last``, ``latim_l2@sum``, ...) are those of the registry
:mod:`interp.attention.methods`; a method is scored through its rows (:func:`~interp.attention.methods.method_rows`).

Copying benchmark (LaTIM): on ``BOS a_1..a_n SEP a_1..a_n`` the prediction at copy position t
(``CopyBatch.loss_mask``) has one true source, ``CopyBatch.source_positions[t]`` (= t - n, in the
first half). Each method's row for t is scored against that one-hot target by ROC-AUC, average
precision (:mod:`interp.metrics`) and recall@1. **Candidates** are all positions j < t (BOS, the first half,
SEP and the copies already made; the query position itself is excluded because most maps have a large
diagonal that says nothing about retrieval). ``candidates="first_half"`` restricts them to
a_1..a_n, ``"upto"`` includes t. Metrics are averaged over all (sequence, position) pairs.
Ties: AUC counts half (Mann–Whitney), AP groups tied scores into one threshold (as scikit-learn),
recall@1 is the expected hit rate under random tie-breaking.

Perturbation (docs/design.md §3.9; the curves are :mod:`interp.attention.perturbation`'s):
:func:`~interp.attention.perturbation.perturbation_test` replaces the k most (MoRF) or least (LeRF) relevant
tokens j <= position by a baseline id and records the logit of the originally predicted token;
``delta = A_LeRF - A_MoRF``.

The command line is :mod:`interp.attention.cli` (``interp attention copying|perturbation``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.data import COPY_PAD, TOKFSM_BOS, TOKFSM_VOCAB_SIZE, sample_copy_batch, tokfsm_dataset
from interp.hooks.tokens import model_device, vocab_size
from interp.loading import load
from interp.metrics import average_precision, roc_auc

from .methods import MethodNotApplicable, RowFn, method_rows
from .perturbation import _as_np, _logits, perturbation_test

__all__ = [
    "DEFAULT_COPY_METHODS", "CANDIDATES", "PUBLISHED", "BenchmarkTable", "RowScore", "recall_at_1", "score_row",
    "copying_benchmark", "perturbation_benchmark",
]

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


# ============================================================================================
# scoring one row against a one-hot target (ROC-AUC and AP are interp.metrics's)
# ============================================================================================
def recall_at_1(labels: Any, scores: Any) -> float:
    """Fraction of the top-scored candidates that are positive: 1 if a positive is the unique argmax,
    1/m if it shares the maximum with m - 1 others (expected hit under random tie-breaking)."""
    y, s = _as_np(labels) > 0.5, _as_np(scores)
    top = s == s.max()
    return float(y[top].sum() / top.sum())


@dataclass(frozen=True)
class RowScore:
    """How well one score row finds its one true source: ROC-AUC, average precision and recall@1 (each in [0, 1])."""

    auc: float
    ap: float
    recall_at_1: float


def score_row(row: Any, true_index: int, candidates: Sequence[int] | None = None) -> RowScore:
    """ROC-AUC, AP and recall@1 (:class:`RowScore`) of one score row against a one-hot target at ``true_index``.

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
    return RowScore(auc=roc_auc(y, s), ap=average_precision(y, s), recall_at_1=recall_at_1(y, s))


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
            m = load(m)
        out[name] = m.eval() if hasattr(m, "eval") else m
    return out


def _method_items(methods: Iterable[str | RowFn] | Mapping[str, RowFn] | None) -> list[tuple[str, Any]]:
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
    *,
    methods: Iterable[str | RowFn] | Mapping[str, RowFn] | None = None,
    n_sequences: int = 50,
    n_range: int | tuple[int, int] = (16, 32),
    seed: int = 0,
    candidates: str = "before",
    progress: bool = False,
) -> BenchmarkTable:
    """Score each method's rows against the true copy source on held-out copying sequences.

    Args:
        models: name -> model (or a name / folder that :func:`interp.load` accepts), or a list of names.
        methods: specs (:func:`interp.attention.methods.resolve_method`), row functions, or a name -> callable mapping
            (default :data:`DEFAULT_COPY_METHODS`).
        n_sequences: copying sequences (each contributes its n copy positions).
        n_range: copy lengths n, drawn uniformly from ``lo..hi``.
        seed: data seed (numpy ``default_rng(seed)``); every model sees the same sequences.
        candidates: "before" (j < t, default), "upto" (j <= t) or "first_half" (a_1..a_n).

    Returns:
        :class:`BenchmarkTable`; each row has ``model, method, auc, ap, recall_at_1, n_positions,
        copy_accuracy, seconds, note`` (``note`` explains a method that does not apply, metrics None).
    """
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
        dev = model_device(model)
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
                    r = method_rows(model, toks.to(dev), positions=pos, method=spec)
                    for row, t, s in zip(r, pos, src):
                        m = score_row(row, s, _candidates(t, n, candidates))
                        for k in vals:
                            vals[k].append(getattr(m, k))
                    if progress:
                        print(f"\r{model_name} {method_name}: {i + 1}/{len(seqs)}", end="", file=sys.stderr)
            except MethodNotApplicable as e:
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


def _perturbation_data(data: str, n_sequences: int, n_range: int | tuple[int, int], seq_len: int,
                       rng: np.random.Generator, seed: int) -> tuple[list[tuple[Tensor, int]], int, str]:
    """(sequence [1, L], query position) pairs, the default baseline id and a description."""
    if data == "copy":
        batch = sample_copy_batch(n_sequences, rng, n_range=n_range)
        seqs = []
        for b in range(n_sequences):
            Lb = int(batch.seq_lengths[b])
            pos = torch.nonzero(batch.loss_mask[b, :Lb]).flatten().tolist()
            seqs.append((batch.tokens[b:b + 1, :Lb], int(rng.choice(pos))))
        lo, hi = (n_range, n_range) if isinstance(n_range, int) else n_range
        return seqs, COPY_PAD, f"{n_sequences} copying sequences (n in {lo}..{hi}, seed {seed}), one copy position each"
    if data == "tokfsm":
        tokens = tokfsm_dataset(n_sequences, seed=seed)[:, :seq_len]
        seqs = [(tokens[b:b + 1], int(rng.integers(seq_len // 2, seq_len - 1))) for b in range(n_sequences)]
        return seqs, TOKFSM_BOS, (f"{n_sequences} TokFSM sequences of {seq_len} tokens (seed {seed}), one position "
                                  f"each in the second half")
    raise ValueError(f"data must be 'copy' or 'tokfsm', got {data!r}")


def perturbation_benchmark(
    models: Mapping[str, Any] | Sequence[str],
    *,
    methods: Iterable[str | RowFn] | Mapping[str, RowFn] | None = None,
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
    rows = []
    notes: list[str] = []
    for model_name, model in _resolve_models(models).items():
        kind = data if data != "auto" else ("tokfsm" if vocab_size(model) == TOKFSM_VOCAB_SIZE else "copy")
        seqs, default_base, desc = _perturbation_data(kind, n_sequences, n_range, seq_len,
                                                      np.random.default_rng(seed), seed)
        baseline = default_base if baseline_id is None else int(baseline_id)
        notes.append(f"{model_name}: {desc}; tokens j <= position replaced by id {baseline}")
        dev = model_device(model)
        for method_name, spec in _method_items(methods):
            t0 = time.perf_counter()
            vals: dict[str, list[float]] = {"a_morf": [], "a_lerf": [], "delta": []}
            note = None
            try:
                for toks, p in seqs:
                    toks = toks.to(dev)
                    row = method_rows(model, toks, positions=[p], method=spec)[0]
                    res = perturbation_test(model, toks, position=p, scores=row, baseline_id=baseline, steps=steps)
                    for k in vals:
                        vals[k].append(getattr(res, k))
            except MethodNotApplicable as e:
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

