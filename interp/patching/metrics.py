"""Patching metrics: small callable objects that score a patched run, prompt by prompt, and their normalisation.

A metric reads the logits of a run, [..., b, L, V] (any leading copies), and the clean run's logits [b, L, V], and
returns one value per prompt, [..., b]::

    LogitDiff(answer, wrong)     logit[answer] - logit[wrong] at ``position`` (default: the last)
    AnswerProb(answer)           softmax probability of ``answer`` at ``position``
    KLToClean()                  KL(clean ‖ run) of the next-token distributions at ``position``, in nats

``answer`` / ``wrong`` are token ids: one int for every prompt, or one per prompt (a list or a LongTensor [b]).

Normalisation (what :func:`interp.patching.patch_sweep` reports, and what :meth:`PatchMetric.normalised` gives
TransformerLens's ``patching`` functions): with ``m(·)`` the metric averaged over the b prompts,

    score = (m(patched) - m(corrupted)) / (m(clean) - m(corrupted))

so the clean run scores 1 and the corrupted run 0, in either direction of patching (denoising: a cell near 1 restores
the clean behaviour; noising: a cell near 0 destroys it). For ``KLToClean``, m(clean) = 0 and the score is
1 - KL(patched) / KL(corrupted). The mean over prompts is taken before the ratio (as TransformerLens's IOI demo does),
so prompts with a small clean-corrupted gap do not blow up the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.positions import check_index
from interp.metrics import kl_divergence

__all__ = ["PatchMetric", "LogitDiff", "AnswerProb", "KLToClean", "NormalisedMetric", "normalise"]

Ids = int | Sequence[int] | Tensor


def _ids(ids: Ids, b: int, device: torch.device, name: str) -> Tensor:
    """Token ids for each of ``b`` prompts: LongTensor [b]."""
    t = torch.as_tensor(ids, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1:
        return t.expand(b)
    if t.numel() != b:
        raise ValueError(f"{name} has {t.numel()} token ids for {b} prompts: give one id, or one per prompt")
    return t


def _at(logits: Tensor, position: int) -> Tensor:
    """[..., b, L, V] -> [..., b, V] at ``position`` (negative: from the end), in float32."""
    L = logits.shape[-2]
    return logits[..., check_index(position, L, "position", of=f"logits of {L} positions"), :].float()


def _pick(x: Tensor, ids: Tensor) -> Tensor:
    """x [..., b, V], ids [b] -> [..., b]: x[..., i, ids[i]]."""
    return x.gather(-1, ids.expand(*x.shape[:-1])[..., None])[..., 0]


class PatchMetric:
    """Base class: ``metric(logits [..., b, L, V], clean_logits [b, L, V]) -> [..., b]`` (one value per prompt)."""

    name = "metric"

    def __call__(self, logits: Tensor, clean_logits: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def normalised(self, clean_logits: Tensor, corrupted_logits: Tensor) -> "NormalisedMetric":
        """This metric as a function of one run's logits [b, L, V] -> a 0-d tensor, normalised so that
        ``clean_logits`` scores 1 and ``corrupted_logits`` 0 (the ``patching_metric`` TransformerLens's
        ``transformer_lens.patching`` functions take)."""
        return NormalisedMetric(self, clean_logits, corrupted_logits)


@dataclass(frozen=True, eq=False)
class LogitDiff(PatchMetric):
    """logit[answer] - logit[wrong] at ``position``; ``answer``, ``wrong``: one id or one per prompt."""

    answer: Ids
    wrong: Ids
    position: int = -1
    name = "logit difference"

    def __call__(self, logits: Tensor, clean_logits: Tensor) -> Tensor:
        x = _at(logits, self.position)
        b = x.shape[-2]
        return _pick(x, _ids(self.answer, b, x.device, "answer")) - _pick(x, _ids(self.wrong, b, x.device, "wrong"))


@dataclass(frozen=True, eq=False)
class AnswerProb(PatchMetric):
    """softmax probability of ``answer`` at ``position``."""

    answer: Ids
    position: int = -1
    name = "answer probability"

    def __call__(self, logits: Tensor, clean_logits: Tensor) -> Tensor:
        x = _at(logits, self.position).softmax(-1)
        return _pick(x, _ids(self.answer, x.shape[-2], x.device, "answer"))


@dataclass(frozen=True, eq=False)
class KLToClean(PatchMetric):
    """KL(clean ‖ run) in nats of the next-token distributions at ``position`` (:func:`interp.metrics.kl_divergence`)."""

    position: int = -1
    name = "KL to clean"

    def __call__(self, logits: Tensor, clean_logits: Tensor) -> Tensor:
        return kl_divergence(_at(clean_logits, self.position), _at(logits, self.position))


def normalise(value: Tensor, clean: Tensor | float, corrupted: Tensor | float) -> Tensor:
    """(value - corrupted) / (clean - corrupted): clean -> 1, corrupted -> 0."""
    return (value - corrupted) / (clean - corrupted)


class NormalisedMetric:
    """``metric`` averaged over the prompts and normalised (clean 1, corrupted 0): logits [b, L, V] -> 0-d tensor.

    Raises ValueError when the clean and corrupted runs score the same (the ratio is undefined)."""

    def __init__(self, metric: PatchMetric, clean_logits: Tensor, corrupted_logits: Tensor):
        self.metric = metric
        self.clean_logits = clean_logits = clean_logits.detach()  # the baselines are constants
        self.clean = metric(clean_logits, clean_logits).mean()
        self.corrupted = metric(corrupted_logits.detach(), clean_logits).mean()
        if not bool(torch.isfinite(self.clean - self.corrupted)) or float(self.clean - self.corrupted) == 0.0:
            raise ValueError(f"the clean and corrupted prompts score the same {metric.name} ({float(self.clean):.6g}): "
                             "patching cannot be normalised; pick prompts, answers or a metric that tell them apart")

    def raw(self, logits: Tensor) -> Tensor:
        """The metric averaged over prompts, not normalised: [..., b, L, V] -> [...]."""
        return self.metric(logits, self.clean_logits).mean(-1)

    def __call__(self, logits: Tensor) -> Tensor:
        return normalise(self.raw(logits), self.clean, self.corrupted)

    def __repr__(self) -> str:
        return f"NormalisedMetric({self.metric!r}, clean={float(self.clean):.4g}, corrupted={float(self.corrupted):.4g})"


def describe(metric: Any) -> str:
    """A metric's display name."""
    return getattr(metric, "name", type(metric).__name__)
