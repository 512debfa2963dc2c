"""What the codes of a codebook model mean: usage, dead codes, code ↔ label precision against the best
single neuron, top examples, similar codes.

    model = load_codebook_model("tokfsm-mamba-codebooks")
    run = collect_codes(model, tokens)                       # CodeRun: ids per hook + the codebook inputs
    usage_stats(run)                                         # per hook: used codes, dead fraction, entropy
    report = code_label_precision(run, labels, n_classes=100)
    report.codes.mean_precision, report.neurons.mean_precision  # codes vs best neuron at matched recall
    top_examples(run, tokens, hook=hook, code=code)          # where a code fires, with context
    similar_codes(model, hook=hook, code=code)               # nearest codes by cosine similarity
    code_report(model, prompt, corpus=corpus, hook=hook, code=code)   # one code: all of the above

A codebook is named by the hook it is attached at (``hook``, e.g. ``"blocks.2.ssm.hook_out"``); its own hook
points are ``<hook>.codebook.hook_codes`` etc.

A code is a binary feature (1 where it is among the k selected codes). The label precision of codes is
:func:`interp.sae.evaluate.best_feature_precision` over those binary features (every hook's codes together);
the neuron baseline is :func:`~interp.sae.evaluate.best_neuron_precision` over the codebooks' *inputs* at the
same hooks (the activations the codes replace), with each class's recall constraint set to the recall its
best code reached: precision compared at matched recall, as in the codebook-features paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.sae.evaluate import LabelPrecision, best_feature_precision, best_neuron_precision, score_selection

from interp.hooks import HookedModel
from interp.hooks.tokens import as_tokens

from .insert import CHILD, attached

__all__ = ["CodeRun", "collect_codes", "usage_stats", "code_features", "code_label_precision", "CodeLabelReport",
           "top_examples", "similar_codes", "CodeReport", "code_report", "codebook_hooks"]


def _hook_list(hook: str | Sequence[str] | None, default: Sequence[str]) -> list[str]:
    return list(default) if hook is None else [hook] if isinstance(hook, str) else list(hook)


@dataclass
class CodeRun:
    """Codes selected on a batch of sequences, per codebook (named by the hook it is attached at).

    Attributes:
        ids: hook -> int64 [n_seq, pos, k] selected codes, best first ([n_seq, pos, G, k] for per-head codebooks).
        inputs: hook -> the activations the codebook replaced [n_seq, pos, d] (None without ``keep_inputs``).
        n_codes: hook -> codebook size.
    """

    ids: dict[str, Tensor]
    inputs: dict[str, Tensor | None]
    n_codes: dict[str, int]

    @property
    def hooks(self) -> list[str]:
        """The hooks whose codebooks were run, in order."""
        return list(self.ids)


@torch.no_grad()
def collect_codes(model: HookedModel, tokens: Any, *, hook: str | Sequence[str] | None = None,
                  batch_size: int = 64, keep_inputs: bool = True) -> CodeRun:
    """Run ``tokens`` [n_seq, pos] (any form :func:`interp.hooks.tokens.as_tokens` reads) through the codebook
    model, ``batch_size`` sequences at a time, and record the codes (and inputs) of the codebooks at ``hook``
    (one hook or several; default: every attached codebook)."""
    books = attached(model)
    if not books:
        raise ValueError("the model has no codebooks attached: interp.codebook.attach(model, ...) or "
                         "load_codebook_model(...) first")
    sites = _hook_list(hook, books)
    missing = [s for s in sites if s not in books]
    if missing:
        raise KeyError(f"hook={missing}: no codebook there; codebooks are at {sorted(books)}")
    tokens = as_tokens(model, tokens)
    names = [f"{s}.{CHILD}.hook_codes" for s in sites]
    names += [f"{s}.{CHILD}.hook_in" for s in sites] if keep_inputs else []
    ids: dict[str, list[Tensor]] = {s: [] for s in sites}
    ins: dict[str, list[Tensor]] = {s: [] for s in sites}
    for i in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[i:i + batch_size], names_filter=names)
        for s in sites:
            ids[s].append(cache[f"{s}.{CHILD}.hook_codes"].cpu())
            if keep_inputs:
                ins[s].append(cache[f"{s}.{CHILD}.hook_in"].float().cpu())
    return CodeRun(ids={s: torch.cat(v) for s, v in ids.items()},
                   inputs={s: torch.cat(ins[s]) if keep_inputs else None for s in sites},
                   n_codes={s: books[s].cfg.n_codes for s in sites})


def _counts(ids: Tensor, n_codes: int) -> Tensor:
    """Selections per code [G, n_codes] of ids [..., k] (G = 1) or [..., G, k]."""
    flat = ids.reshape(-1, *ids.shape[-2:]) if ids.dim() >= 4 else ids.reshape(-1, 1, ids.shape[-1])
    G = flat.shape[1]
    return torch.stack([torch.bincount(flat[:, g].reshape(-1), minlength=n_codes) for g in range(G)])


def usage_stats(run: CodeRun, mask: Tensor | None = None) -> dict[str, dict[str, float]]:
    """Per hook: codes used, dead fraction (never selected on these tokens), usage entropy (nats) and the share
    of selections taken by the most used code. ``mask`` [n_seq, pos] bool: positions to count (default all)."""
    out = {}
    for s, ids in run.ids.items():
        sel = ids[mask] if mask is not None else ids
        c = _counts(sel, run.n_codes[s]).double()
        p = c / c.sum(1, keepdim=True).clamp_min(1)
        ent = -(p * p.clamp_min(1e-300).log()).sum(1)
        out[s] = {"n_codes": run.n_codes[s], "used": float((c > 0).sum(1).double().mean()),
                  "dead_fraction": float((c == 0).double().mean()), "entropy": float(ent.mean()),
                  "top_share": float(p.max(1).values.mean())}
    return out


def code_features(run: CodeRun, *, hook: str | Sequence[str] | None = None
                  ) -> tuple[Tensor, list[tuple[str, int, int]]]:
    """Binary code features of every token: [n_seq * pos, Σ G·n_codes] (1 where the code is selected) of the
    codebooks at ``hook`` (default: all of ``run``), and the (hook, group, code) each column stands for."""
    sites = _hook_list(hook, run.hooks)
    cols, names = [], []
    for s in sites:
        ids = run.ids[s]
        g_ids = ids if ids.dim() >= 4 else ids.unsqueeze(-2)  # [n, pos, G, k]
        n, L, G, _ = g_ids.shape
        n_codes = run.n_codes[s]
        for g in range(G):
            f = torch.zeros(n * L, n_codes)
            f.scatter_(1, g_ids[:, :, g].reshape(n * L, -1), 1.0)
            cols.append(f)
            names += [(s, g, c) for c in range(n_codes)]
    return torch.cat(cols, 1), names


@dataclass
class CodeLabelReport:
    """Codes vs neurons on one labelling. ``codes`` / ``neurons``: :class:`LabelPrecision` (neurons at the
    codes' recall); ``code_names[j]``: (hook, group, code) of feature column j; ``neuron_names[j]``: (hook, unit)."""

    codes: LabelPrecision
    neurons: LabelPrecision
    code_names: list[tuple[str, int, int]]
    neuron_names: list[tuple[str, int]]

    def best_code(self, cls: int) -> tuple[str, int, int] | None:
        j = int(self.codes.feature[cls])
        return self.code_names[j] if j >= 0 else None

    def summary(self) -> dict[str, float]:
        return {"code_mean_precision": self.codes.mean_precision, "code_mean_recall": self.codes.mean_recall,
                "neuron_mean_precision": self.neurons.mean_precision,
                "neuron_mean_recall": self.neurons.mean_recall,
                "code_frac_precision_ge_0.95": float((self.codes.precision[self.codes.support > 0] >= 0.95)
                                                     .double().mean()),
                "n_classes": int((self.codes.support > 0).sum()), "n_tokens": self.codes.n_tokens}


def code_label_precision(run: CodeRun, labels: Tensor, *, n_classes: int | None = None, min_recall: float = 0.5,
                         hook: str | Sequence[str] | None = None,
                         held_out: tuple[CodeRun, Tensor] | None = None) -> CodeLabelReport:
    """For each class of ``labels`` [n_seq, pos] (negative = unlabelled), the code (over the codebooks at all of
    ``hook``, default every one in ``run``) with the best precision at recall >= ``min_recall``, and the best
    single neuron of the codebook inputs at the same hooks at the recall that code reached (see the module
    docstring). With ``held_out=(run2, labels2)`` the codes and neurons are chosen on ``run`` and their
    precision and recall are measured on ``run2``."""
    sites = _hook_list(hook, run.hooks)
    if any(r.inputs[s] is None for r in (run, *(held_out[:1] if held_out else ())) for s in sites):
        raise ValueError("the neuron baseline needs the codebook inputs: collect_codes(..., keep_inputs=True)")

    def flat(r: CodeRun, lab: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lab = torch.as_tensor(lab).reshape(-1)
        feats, _ = code_features(r, hook=sites)
        acts = torch.cat([r.inputs[s].reshape(lab.numel(), -1) for s in sites], 1)
        return feats, acts, lab

    feats, acts, lab = flat(run, labels)
    _, code_names = code_features(CodeRun({s: run.ids[s][:1] for s in sites}, {}, run.n_codes), hook=sites)
    neuron_names = [(s, j) for s in sites for j in range(run.inputs[s].reshape(lab.numel(), -1).shape[1])]
    codes = best_feature_precision(feats, lab, n_classes, min_recall)
    matched = torch.where(torch.isnan(codes.recall), torch.tensor(min_recall, dtype=torch.float64), codes.recall)
    neurons = best_neuron_precision(acts, lab, codes.n_classes, matched.clamp(1e-9, 1.0))
    if held_out is not None:
        feats2, acts2, lab2 = flat(*held_out)
        codes = score_selection(codes, feats2, lab2)
        neurons = score_selection(neurons, acts2, lab2)
    return CodeLabelReport(codes, neurons, code_names, neuron_names)


def top_examples(run: CodeRun, tokens: Tensor, *, hook: str, code: int, n: int = 10, context: int = 8,
                 group: int = 0, decode: Any = None) -> list[dict[str, Any]]:
    """Up to ``n`` places of ``tokens`` [n_seq, pos] (those ``run`` was collected on) where ``code`` is selected by
    the codebook at ``hook``: sequence, position, the ``context`` tokens up to it (decoded with
    ``decode(list_of_ids)`` if given) and the code's slot (0 = best)."""
    ids = run.ids[hook]
    g_ids = ids if ids.dim() >= 4 else ids.unsqueeze(-2)
    hits = (g_ids[:, :, group] == code).nonzero()
    out = []
    for seq, pos, slot in hits[:n].tolist():
        ctx = tokens[seq, max(0, pos - context + 1):pos + 1].tolist()
        out.append({"seq": seq, "pos": pos, "slot": slot, "context": decode(ctx) if decode else ctx})
    return out


def similar_codes(model_or_layer: Any, *, hook: str | None = None, code: int = 0, n: int = 10,
                  group: int = 0) -> list[tuple[int, float]]:
    """The ``n`` codes closest to ``code`` by cosine similarity: [(code, similarity), ...], best first. Of a
    :class:`~interp.codebook.CodebookLayer`, or of the codebook a model has at ``hook``."""
    layer = model_or_layer if hook is None else attached(model_or_layer)[hook]
    C = layer.codes.detach()[group].float()
    C = C / C.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    sims = C @ C[code]
    sims[code] = -math.inf
    top = sims.topk(min(n, C.shape[0] - 1))
    return list(zip(top.indices.tolist(), top.values.tolist()))


def codebook_hooks(model: HookedModel) -> dict[str, dict[str, int]]:
    """{hook: {n_codes, k, n_groups}} of the codebooks attached to ``model``."""
    return {s: {"n_codes": b.cfg.n_codes, "k": b.cfg.k, "n_groups": b.cfg.n_groups} for s, b in attached(model).items()}


def _group_ids(ids: Tensor, group: int) -> Tensor:
    """ids [n, pos, k] or [n, pos, G, k] -> [n, pos, k] of one group."""
    return ids[:, :, int(group)] if ids.dim() >= 4 else ids


@dataclass
class CodeReport:
    """One code of the codebook at ``hook``: ``prompt_ids`` [k, L] the codes selected at each position of the
    prompt (slot 0 = best); on the corpus: ``usage`` ({hook: :func:`usage_stats` entry}), ``freq`` [n_codes]
    (share of the codebook's selections each code takes), ``fires`` [n, pos] bool (the code is selected), ``examples``
    (:func:`top_examples`, each with ``context`` token ids [c] and ``fires`` [c] of its context window),
    ``similar`` (:func:`similar_codes` [(code, cosine)])."""

    hook: str
    code: int
    group: int
    n_codes: int
    k: int
    prompt_ids: Tensor
    usage: dict[str, dict[str, float]]
    freq: Tensor
    fires: Tensor
    examples: list[dict[str, Any]]
    similar: list[tuple[int, float]]

    @property
    def n_fires(self) -> int:
        return int(self.fires.sum())


@torch.no_grad()
def code_report(model: HookedModel, tokens: Any, *, corpus: Any, hook: str, code: int, group: int = 0,
                n_examples: int = 8, context: int = 12, n_similar: int = 10) -> CodeReport:
    """``code`` of the codebook at ``hook`` of a codebook model: the codes of one prompt ``tokens`` ([L] or
    [1, L]), and usage, top examples (``context`` tokens up to the firing position) and similar codes on
    ``corpus`` [n, L]. ValueError for a hook, code or group the model does not have, or a batch of prompts."""
    books = attached(model)
    if hook not in books:
        raise ValueError(f"This codebook model has no codebook at hook={hook!r}; its codebooks are at "
                         f"{sorted(books)}.")
    cfg = books[hook].cfg
    code, group = int(code), int(group)
    if not 0 <= code < cfg.n_codes:
        raise ValueError(f"Code {code} is out of range: the codebook at {hook} has codes 0..{cfg.n_codes - 1}.")
    if not 0 <= group < cfg.n_groups:
        raise ValueError(f"Group {group} is out of range: the codebook at {hook} has {cfg.n_groups} group(s).")
    tokens = as_tokens(model, tokens, one_sequence=True)
    corpus = as_tokens(model, corpus, name="corpus").cpu()
    prompt_ids = _group_ids(collect_codes(model, tokens, hook=hook, keep_inputs=False).ids[hook], group)[0].T
    run = collect_codes(model, corpus, keep_inputs=False)
    ids = _group_ids(run.ids[hook], group)  # [n, pos, k]
    counts = torch.bincount(ids.reshape(-1), minlength=cfg.n_codes).double()
    fires = (ids == code).any(-1)  # [n, pos]
    examples = []
    for ex in top_examples(run, corpus, hook=hook, code=code, n=n_examples, context=context, group=group):
        start = max(0, ex["pos"] - context + 1)
        examples.append({**ex, "context": corpus[ex["seq"], start:ex["pos"] + 1],
                         "fires": fires[ex["seq"], start:ex["pos"] + 1].float()})
    return CodeReport(hook, code, group, cfg.n_codes, cfg.k, prompt_ids, usage_stats(run),
                      counts / counts.sum().clamp_min(1), fires, examples,
                      similar_codes(model, hook=hook, code=code, n=min(n_similar, cfg.n_codes - 1), group=group))
