"""Perturbation tests of a relevance row: remove the tokens it ranks highest (MoRF) or lowest (LeRF).

    curve = perturbation_curve(model, tokens, position=17, scores=row, baseline_id=0, order="morf")  # [n + 1]
    res = perturbation_test(model, tokens, position=17, scores=row, baseline_id=0)  # PerturbationResult: ΔA

:func:`perturbation_curve` replaces the k most (MoRF) or least (LeRF) relevant tokens j <= position by a baseline
id, for k = 0..n in one batched forward, and records the logit of the originally predicted token; :func:`area`
is the trapezoid area over k/n in [0, 1] and ``delta_auc = A_LeRF - A_MoRF`` (higher is better: removing the
tokens a method calls relevant should hurt more than removing those it calls irrelevant). Definitions:
docs/design.md §3.9. Any model mapping tokens [b, L] to logits [b, L, vocab] works; the benchmarks that run
these tests on data sets live in :mod:`interp.attention.benchmarks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.hooks.tokens import as_tokens
from interp.hooks.positions import check_index

__all__ = ["PerturbationResult", "perturbation_ks", "perturbation_curve", "area", "delta_auc", "perturbation_test"]


def _as_np(x: Any) -> np.ndarray:
    """Any array-like or tensor -> flat float64 numpy array [n]."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def perturbation_ks(n: int, steps: int | None = None) -> list[int]:
    """Numbers of removed tokens: 0..n, or ``steps + 1`` values spread evenly over 0..n."""
    if steps is None or steps >= n:
        return list(range(n + 1))
    return sorted({int(round(x)) for x in np.linspace(0, n, int(steps) + 1)})


def _logits(model: Any, tokens: Tensor) -> Tensor:
    out = model(tokens)
    return out if isinstance(out, Tensor) else out[0]


@torch.no_grad()
def perturbation_curve(
    model: Any,
    tokens: Any,
    *,
    position: int,
    scores: Any,
    baseline_id: int,
    order: str = "morf",
    steps: int | None = None,
    target: int | None = None,
    batch_size: int = 128,
) -> Tensor:
    """Target logit at ``position`` after replacing the top-k tokens by ``baseline_id``, k = 0..n.

    Args:
        model: any model mapping tokens [b, L] to logits [b, L, vocab].
        tokens: one sequence [1, L] (or [L]); a batch is refused (ValueError): loop over its rows.
        position: the query position (the prediction of token ``position + 1`` is explained).
        scores: relevance [L] of each source token; only j <= position are candidates (n = position + 1).
            NaN counts as least relevant; ties are broken by position (earlier first), in both orders.
        baseline_id: the replacement token id.
        order: "morf" (most relevant first) or "lerf" (least relevant first).
        steps: None for every k in 0..n, else ``steps + 1`` evenly spread values (:func:`perturbation_ks`).
        target: the explained token; default the model's argmax at ``position`` on the clean sequence.
        batch_size: perturbed copies per forward (all k in one batch when it fits).

    Returns:
        Tensor [len(ks)]: the target logit for each k (entry 0 is the clean logit).
    """
    tokens = as_tokens(model, tokens, one_sequence=True)
    L = tokens.shape[1]
    p = check_index(position, L, "position", of=f"a sequence of {L} tokens")
    n = p + 1
    s = torch.as_tensor(_as_np(scores), dtype=torch.float64)
    if s.numel() < n:
        raise ValueError(f"scores has {s.numel()} entries, need at least position + 1 = {n}")
    s = torch.nan_to_num(s[:n], nan=-math.inf)
    if order == "morf":
        key = -s
    elif order == "lerf":
        key = s
    else:
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    ranked = torch.sort(key, stable=True).indices  # ranked[r] = r-th token removed
    rank = torch.empty(n, dtype=torch.long)
    rank[ranked] = torch.arange(n)
    ks = torch.tensor(perturbation_ks(n, steps))
    batch = tokens.repeat(len(ks), 1)
    remove = rank[None, :] < ks[:, None]  # [len(ks), n]
    batch[:, :n] = torch.where(remove.to(batch.device), torch.full_like(batch[:, :n], int(baseline_id)), batch[:, :n])
    out = []
    tgt = target
    for start in range(0, len(ks), batch_size):
        logits = _logits(model, batch[start:start + batch_size])[:, p].float()
        if tgt is None:
            tgt = int(logits[0].argmax())  # row 0 is k = 0: the clean sequence
        out.append(logits[:, tgt])
    return torch.cat(out).cpu()


def area(curve: Any, x: Any = None) -> float:
    """Trapezoid area under ``curve`` with x normalised to [0, 1] (evenly spaced unless ``x`` is given)."""
    y = _as_np(curve)
    if len(y) < 2:
        raise ValueError("a curve needs at least two points")
    xs = np.linspace(0.0, 1.0, len(y)) if x is None else _as_np(x) / max(_as_np(x)[-1], 1e-12)
    return float(np.sum((xs[1:] - xs[:-1]) * (y[1:] + y[:-1]) / 2.0))


def delta_auc(morf: Any, lerf: Any) -> float:
    """ΔA = A_LeRF - A_MoRF (higher is better)."""
    return area(lerf) - area(morf)


@dataclass(frozen=True)
class PerturbationResult:
    """Both perturbation curves of one query position and their areas.

    Attributes:
        morf, lerf: [len(ks)] the target logit after removing the k most / least relevant tokens (entry 0: clean).
        a_morf, a_lerf: their areas over k/n in [0, 1] (:func:`area`).
        delta: ΔA = a_lerf - a_morf (higher is better).
    """

    morf: Tensor
    lerf: Tensor
    a_morf: float
    a_lerf: float
    delta: float


def perturbation_test(
    model: Any, tokens: Any, *, position: int, scores: Any, baseline_id: int, steps: int | None = None,
    target: int | None = None,
) -> PerturbationResult:
    """Both curves (:func:`perturbation_curve`), their areas and ΔA for one query position of one sequence."""
    kw = dict(position=position, scores=scores, baseline_id=baseline_id, steps=steps, target=target)
    morf = perturbation_curve(model, tokens, order="morf", **kw)
    lerf = perturbation_curve(model, tokens, order="lerf", **kw)
    return PerturbationResult(morf=morf, lerf=lerf, a_morf=area(morf), a_lerf=area(lerf),
                              delta=area(lerf) - area(morf))
