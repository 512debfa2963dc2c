"""Do single SAE latents pick out known labels? Best-single-feature precision, for latents and for neurons.

The question of the codebook-features paper, asked of any feature basis: for each class ``c`` of a per-token
label (a TokFSM state, say), how well does the *best single feature* predict "label = c"?

Definition (:func:`best_feature_precision`), on a set of labelled tokens (held out from training):

* a feature ``j`` predicts class ``c`` on a token when its activation is ``>= t``;
* for each (class, feature) the threshold ``t`` is the one that maximises precision
  TP / (TP + FP) subject to recall TP / P_c >= ``min_recall`` (0.5 by default); thresholds range over the
  feature's observed values, so tied activations are always on the same side; the lowest value (every token
  predicted positive: precision = base rate, recall 1) is always allowed;
* the best feature of class ``c`` is the one with the highest such precision (ties: the higher recall);
* the score is the mean over classes of that precision (:attr:`LabelPrecision.mean_precision`).

Neurons get the same procedure over the columns of the activation matrix, each with both signs
(:func:`best_neuron_precision`: the columns of [x, -x]), since a direction's negative end is as readable as its
positive one. SAE latents are non-negative, so only their positive side is used (:func:`state_latent_precision`).

    la = labelled_activations(model, tokens, hook="blocks.2.hook_resid_post", labels=tokfsm_labels(tokens)["state"])
    sae_report = state_latent_precision(sae, la.acts, la.labels, n_classes=100)
    neuron_report = best_neuron_precision(la.acts, la.labels, n_classes=100)
    sae_report.mean_precision, neuron_report.mean_precision

Tokens whose label is negative (TokFSM: BOS and the trailing half state, whose state cannot be read) are left
out of every count. Cost: per feature, a few sorts and binary searches over the tokens where it is above its
minimum (for a sparse SAE latent: only where it fires), O(Σ_j n_j log n_j) time and O(n_j) memory; no
[tokens, classes] matrix is built.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.protocol import HookedModel

from . import metrics
from .model import SparseAutoencoder

__all__ = [
    "LabelPrecision", "best_feature_precision", "best_neuron_precision", "state_latent_precision", "score_selection",
    "encode_batched", "LabelledActivations", "labelled_activations", "SAEvsNeurons", "sae_vs_neurons",
]


@dataclass
class LabelPrecision:
    """The best single feature of each class and how well it predicts the class (tensors [n_classes]).

    Attributes:
        feature: index of the best feature (a latent, or a neuron of ``x``); -1 for a class with no token.
        sign: +1, or -1 when the feature is a neuron read with its sign flipped (``-x_j >= threshold``).
        threshold: the activation threshold (on the signed feature: predict the class when ``sign·f_j >= t``).
        precision, recall: of that feature at that threshold (float64; NaN for a class with no token).
        support: labelled tokens of each class (P_c).
        min_recall: the recall constraint the thresholds satisfy (a number, or a tensor [n_classes]).
        n_tokens: labelled tokens evaluated (negative labels excluded).
    """

    feature: Tensor
    sign: Tensor
    threshold: Tensor
    precision: Tensor
    recall: Tensor
    support: Tensor
    min_recall: float | Tensor
    n_tokens: int

    @property
    def n_classes(self) -> int:
        return int(self.precision.numel())

    @property
    def mean_precision(self) -> float:
        """Mean over classes that have at least one token of the best feature's precision."""
        p = self.precision[self.support > 0]
        return float(p.mean()) if p.numel() else math.nan

    @property
    def mean_recall(self) -> float:
        r = self.recall[self.support > 0]
        return float(r.mean()) if r.numel() else math.nan

    def summary(self) -> dict[str, float]:
        """Mean / min precision, mean recall, classes with precision >= 0.9, distinct features used."""
        present = self.support > 0
        p = self.precision[present]
        return {
            "mean_precision": self.mean_precision,
            "min_precision": float(p.min()) if p.numel() else math.nan,
            "mean_recall": self.mean_recall,
            "frac_precision_ge_0.9": float((p >= 0.9).double().mean()) if p.numel() else math.nan,
            "distinct_features": int(self.feature[present].unique().numel()),
            "n_classes": int(present.sum()),
            "n_tokens": self.n_tokens,
        }

    def table(self) -> list[dict[str, Any]]:
        """One row per class: class, feature, sign, threshold, precision, recall, support."""
        return [
            {"class": c, "feature": int(self.feature[c]), "sign": int(self.sign[c]),
             "threshold": float(self.threshold[c]), "precision": float(self.precision[c]),
             "recall": float(self.recall[c]), "support": int(self.support[c])}
            for c in range(self.n_classes)
        ]


def _check_inputs(features: Tensor, labels: Tensor, n_classes: int | None) -> tuple[Tensor, Tensor, int]:
    if features.dim() != 2:
        raise ValueError(f"features must be [n_tokens, n_features], got shape {tuple(features.shape)}")
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.numel() != features.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {features.shape[0]} tokens: they must align row for row")
    if labels.is_floating_point():
        raise TypeError("labels must be integers (class ids; negative ids are ignored)")
    keep = labels >= 0
    labels = labels[keep].long().cpu()
    features = features.detach()[keep.to(features.device)].cpu()
    if n_classes is None:
        n_classes = int(labels.max()) + 1 if labels.numel() else 0
    elif labels.numel() and int(labels.max()) >= n_classes:
        raise ValueError(f"label {int(labels.max())} is out of range for n_classes={n_classes}")
    return features, labels, n_classes


def _best_cut(values: Tensor, labels: Tensor, vmin: float, n_classes: int, need: Tensor,
              support: Tensor, n_tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """For one feature: per class the best threshold's (precision, recall, threshold), each [n_classes].

    ``values`` / ``labels`` [n]: the tokens where the feature is above its minimum ``vmin`` (the cut at
    ``vmin`` itself, every token positive, is the fallback). ``need`` [n_classes]: TP needed for the recall.

    The best threshold of a class is always one of its positives' values (lowering the threshold to the next
    value only adds negatives), so it is enough to score, for every token, the cut "value >= this token's":
    TP = tokens of its class at or above its value, predicted = all tokens at or above it. O(n log n).
    """
    prec = support.double() / max(n_tokens, 1)
    rec = torch.ones(n_classes, dtype=torch.float64)
    thr = torch.full((n_classes,), vmin, dtype=torch.float64)
    n = values.numel()
    if n == 0:
        return prec, rec, thr
    uniq, rank, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    n_ranks = uniq.numel()
    at_or_above = counts.flip(0).cumsum(0).flip(0)  # [n_ranks]: tokens with value >= uniq[r]
    key = labels * n_ranks + rank  # sorted by (class, value)
    sorted_key = torch.sort(key).values
    class_end = torch.searchsorted(sorted_key, (labels + 1) * n_ranks)
    tp = (class_end - torch.searchsorted(sorted_key, key)).double()  # class tokens with value >= this one's
    p = tp / at_or_above[rank].double()
    r = tp / support[labels].double()
    valid = tp >= need[labels]
    p = torch.where(valid, p, torch.tensor(-1.0, dtype=torch.float64))
    best_p = torch.full((n_classes,), -1.0, dtype=torch.float64).scatter_reduce(0, labels, p, "amax")
    at_best = valid & (p == best_p[labels])
    best_r = torch.zeros(n_classes, dtype=torch.float64).scatter_reduce(
        0, labels, torch.where(at_best, r, torch.tensor(0.0, dtype=torch.float64)), "amax")
    chosen = at_best & (r == best_r[labels])
    best_rank = torch.full((n_classes,), n_ranks, dtype=torch.long).scatter_reduce(
        0, labels, torch.where(chosen, rank, torch.tensor(n_ranks)), "amin")
    better = best_p > prec  # ties with the every-token cut keep it (recall 1)
    prec = torch.where(better, best_p, prec)
    rec = torch.where(better, best_r, rec)
    thr = torch.where(better, uniq[best_rank.clamp(max=n_ranks - 1)].double(), thr)
    return prec, rec, thr


def best_feature_precision(features: Tensor, labels: Tensor, n_classes: int | None = None,
                           min_recall: float | Tensor = 0.5) -> LabelPrecision:
    """Best single feature per class: features [n_tokens, n_features], labels [n_tokens] int (negative = skip).

    For each class and feature, the threshold maximising precision at recall >= ``min_recall`` (one number, or
    one per class [n_classes], e.g. another feature basis's recall, to compare at matched recall); then the best
    feature per class (see the module docstring). ``sign`` is +1 everywhere (see :func:`best_neuron_precision`).
    """
    mr = torch.as_tensor(min_recall, dtype=torch.float64)
    if not bool(((mr > 0) & (mr <= 1)).all()):
        raise ValueError(f"min_recall must be in (0, 1], got {min_recall}")
    features, labels, n_classes = _check_inputs(features, labels, n_classes)
    if mr.dim() and mr.shape != (n_classes,):
        raise ValueError(f"min_recall per class must have shape [{n_classes}], got {tuple(mr.shape)}")
    n_tokens, n_features = features.shape
    support = torch.bincount(labels, minlength=n_classes)
    need = torch.ceil(mr * support.double() - 1e-9).long().clamp(min=1)
    best_p = torch.full((n_classes,), -1.0, dtype=torch.float64)
    best_r = torch.zeros(n_classes, dtype=torch.float64)
    best_t = torch.zeros(n_classes, dtype=torch.float64)
    best_f = torch.full((n_classes,), -1, dtype=torch.long)
    if n_tokens:
        feats = features.float()
        mins = feats.min(0).values
        for j in range(n_features):
            col = feats[:, j]
            above = col > mins[j]
            p, r, t = _best_cut(col[above], labels[above], float(mins[j]), n_classes, need, support, n_tokens)
            win = (p > best_p) | ((p == best_p) & (r > best_r))
            best_p = torch.where(win, p, best_p)
            best_r = torch.where(win, r, best_r)
            best_t = torch.where(win, t, best_t)
            best_f = torch.where(win, torch.tensor(j), best_f)
    absent = support == 0
    best_p[absent], best_r[absent], best_f[absent] = math.nan, math.nan, -1
    return LabelPrecision(feature=best_f, sign=torch.ones(n_classes, dtype=torch.long), threshold=best_t,
                          precision=best_p, recall=best_r, support=support, min_recall=min_recall,
                          n_tokens=n_tokens)


def best_neuron_precision(acts: Tensor, labels: Tensor, n_classes: int | None = None,
                          min_recall: float | Tensor = 0.5) -> LabelPrecision:
    """:func:`best_feature_precision` over the neurons (columns) of ``acts`` [n_tokens, d], each read with both
    signs: ``feature`` is the neuron index, ``sign`` -1 where ``-acts[:, j] >= threshold`` was the better test."""
    acts = acts.detach().reshape(-1, acts.shape[-1])
    d = acts.shape[-1]
    rep = best_feature_precision(torch.cat([acts, -acts], 1), labels, n_classes, min_recall)
    present = rep.feature >= 0
    rep.sign = torch.where(present & (rep.feature >= d), -1, 1)
    rep.feature = torch.where(present, rep.feature % d, rep.feature)
    return rep


def score_selection(chosen: LabelPrecision, features: Tensor, labels: Tensor) -> LabelPrecision:
    """Precision and recall, on other tokens (``features`` [n, n_features], ``labels`` [n]), of the features, signs
    and thresholds that ``chosen`` selected per class: select on one set, report on a held-out one. For neuron
    selections pass the same activation columns (signs are applied here)."""
    features, labels, n_classes = _check_inputs(features, labels, chosen.n_classes)
    support = torch.bincount(labels, minlength=n_classes)
    prec = torch.full((n_classes,), math.nan, dtype=torch.float64)
    rec = torch.full((n_classes,), math.nan, dtype=torch.float64)
    for c in range(n_classes):
        j = int(chosen.feature[c])
        if j < 0:
            continue
        fire = chosen.sign[c] * features[:, j].double() >= chosen.threshold[c]
        tp = int((fire & (labels == c)).sum())
        prec[c] = tp / int(fire.sum()) if int(fire.sum()) else 0.0
        rec[c] = tp / int(support[c]) if int(support[c]) else math.nan
    return LabelPrecision(feature=chosen.feature.clone(), sign=chosen.sign.clone(), threshold=chosen.threshold.clone(),
                          precision=prec, recall=rec, support=support, min_recall=chosen.min_recall,
                          n_tokens=int(labels.numel()))


@torch.no_grad()
def encode_batched(sae: SparseAutoencoder, acts: Tensor, batch_size: int = 8192) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (latents [b, d_sae], reconstruction [b, d_in]) for consecutive rows of ``acts`` [n, d_in]."""
    for i in range(0, acts.shape[0], batch_size):
        x = acts[i:i + batch_size].to(sae.device, sae.dtype)
        lat = sae.encode(x, use_batch_topk=False)
        yield lat, sae.decode(lat)


@torch.no_grad()
def state_latent_precision(sae: SparseAutoencoder, acts: Tensor, labels: Tensor, n_classes: int | None = None,
                           min_recall: float = 0.5) -> LabelPrecision:
    """:func:`best_feature_precision` over the SAE's latents of ``acts`` [n_tokens, d_in] (encoded in eval mode)."""
    latents = torch.cat([lat.float().cpu() for lat, _ in encode_batched(sae, acts.reshape(-1, sae.cfg.d_in))])
    return best_feature_precision(latents, labels, n_classes, min_recall)


@dataclass
class LabelledActivations:
    """Activations of the labelled tokens: ``acts`` float32 [n, d] on the CPU and their ``labels`` [n] int64,
    rows in (sequence, position) order."""

    acts: Tensor
    labels: Tensor


@torch.no_grad()
def labelled_activations(model: HookedModel, tokens: Any, *, hook: str, labels: Tensor,
                         batch_size: int = 64) -> LabelledActivations:
    """Activations of ``hook`` on the tokens that have a label.

    tokens [n_seq, pos], labels [n_seq, pos] int (negative: no label, e.g. BOS) -> :class:`LabelledActivations`.
    Collected with :class:`interp.activations.collect.HookCollector` (the model stops after the hook's block).
    """
    from interp.activations.collect import HookCollector, RowFilter
    from interp.hooks.tokens import as_tokens

    tokens = as_tokens(model, tokens)
    labels = torch.as_tensor(labels)
    if tuple(labels.shape) != tuple(tokens.shape):
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of tokens {tuple(tokens.shape)}")
    collector = HookCollector(model, hook=hook, dtype=torch.float32, row_filter=RowFilter())
    out, lab = [], []
    for i in range(0, tokens.shape[0], batch_size):
        keep = labels[i:i + batch_size] >= 0  # [b, pos]
        out.append(collector(tokens[i:i + batch_size], keep)[hook].cpu())  # [n_kept, d]
        lab.append(labels[i:i + batch_size][keep].long())
    return LabelledActivations(torch.cat(out), torch.cat(lab))


@dataclass
class SAEvsNeurons:
    """An SAE against the neurons it reads, on held-out labelled activations: ``explained_variance`` and ``l0``
    (over all rows), the best latent (``sae``) and best neuron (``neuron``) per class (:class:`LabelPrecision`),
    and their mean precisions ``sae_mean_precision`` / ``neuron_mean_precision``."""

    explained_variance: float
    l0: float
    sae: LabelPrecision
    neuron: LabelPrecision
    sae_mean_precision: float
    neuron_mean_precision: float


@torch.no_grad()
def sae_vs_neurons(sae: SparseAutoencoder, acts: Tensor, labels: Tensor, n_classes: int | None = None,
                   min_recall: float = 0.5) -> SAEvsNeurons:
    """Reconstruction and label precision of ``sae`` on held-out ``acts`` [n, d_in] with ``labels`` [n]
    (:class:`SAEvsNeurons`)."""
    acts = acts.reshape(-1, sae.cfg.d_in)
    ev = metrics.ExplainedVariance()
    active, n = 0.0, 0
    lats = []
    for lat, x_hat in encode_batched(sae, acts):
        x = acts[n:n + lat.shape[0]].to(x_hat.device, torch.float32)  # the rows this batch encoded
        ev.update(x, x_hat)
        active += float((lat != 0).sum())
        n += lat.shape[0]
        lats.append(lat.float().cpu())
    latents = torch.cat(lats)
    sae_rep = best_feature_precision(latents, labels, n_classes, min_recall)
    neuron_rep = best_neuron_precision(acts, labels, n_classes, min_recall)
    return SAEvsNeurons(
        explained_variance=ev.compute(), l0=active / max(n, 1), sae=sae_rep, neuron=neuron_rep,
        sae_mean_precision=sae_rep.mean_precision, neuron_mean_precision=neuron_rep.mean_precision,
    )
