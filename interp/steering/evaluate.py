"""Evaluating steering: behaviour against cost over the scale (a dose-response curve), with a baseline row.

    curve = dose_response(model, neutral_tokens, intervention=iv, scales=[1, 2, 4, 8], behaviour=score_fn)
    curve.rows        # [{"scale": 0.0, "label": "baseline", "behaviour": .., "kl": 0.0, ..}, {"scale": 1.0, ..}, ..]
    dose_response_figure({"mean difference": curve}).show()

* behaviour: any score of the model under the intervention, ``behaviour(fwd_hooks) -> float`` (e.g. the
  fraction of generated TokFSM transitions valid for a target state, :mod:`interp.tasks.tokfsm`);
* cost: KL(unsteered ‖ steered) of the next-token distributions on neutral prompts (``tokens``), averaged over
  the positions the intervention can affect (from the first edited position on; a causal model's earlier
  predictions cannot change), and at the last position alone (``kl_last``): :func:`kl_cost`, a :class:`KLCost`.

Scale 0 (no intervention) is always the first row, labelled "baseline".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp.hooks import HookedModel
from interp.hooks.tokens import as_tokens
from interp.metrics import kl_divergence

from .intervention import Compose, Intervention

__all__ = ["kl_cost", "KLCost", "dose_response", "DoseResponse", "dose_response_figure", "next_token_probs",
           "SteeringComparison", "compare_steering", "distribution_figure"]

Steering = Intervention | Compose


@dataclass(frozen=True)
class KLCost:
    """The cost of an intervention on some prompts [n, L]: KL(unsteered ‖ steered) of the next-token
    distributions, in nats, averaged over the prompts.

    Attributes:
        kl: mean over the positions >= ``from_position`` (default: the first position the intervention edits).
        kl_last: mean at the last position.
    """

    kl: float
    kl_last: float


@torch.no_grad()
def kl_cost(model: HookedModel, tokens: Any, *, intervention: Steering | None, batch_size: int = 64,
            from_position: int | None = None) -> KLCost:
    """KL(unsteered ‖ steered) of next-token distributions on ``tokens`` ([L] or [n, L], any form
    :func:`interp.hooks.tokens.as_tokens` reads), in batches of ``batch_size`` prompts: a :class:`KLCost`;
    zeros without an intervention (None) or one that edits nothing."""
    tokens = as_tokens(model, tokens)
    n, L = tokens.shape
    if intervention is None:
        return KLCost(0.0, 0.0)
    start = intervention.edited_from(L) if from_position is None else from_position
    if start is None:
        return KLCost(0.0, 0.0)
    hooks = intervention.hooks(model)
    total, last = 0.0, 0.0
    for i in range(0, n, batch_size):
        tb = tokens[i:i + batch_size]
        clean = model(tb).float()
        steered = model.run_with_hooks(tb, fwd_hooks=hooks).float()
        kl = kl_divergence(clean, steered).clamp(min=0)  # [b, L]; clamp: rounding never gives negative costs
        total += float(kl[:, start:].mean(1).sum())
        last += float(kl[:, -1].sum())
    return KLCost(total / n, last / n)


@dataclass
class DoseResponse:
    """Rows of one dose-response curve: scale, label, behaviour, kl, kl_last (+ extras), baseline first."""

    rows: list[dict[str, Any]]
    name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> dict[str, Any]:
        return self.rows[0]

    def at(self, scale: float) -> dict[str, Any]:
        for r in self.rows[1:]:
            if abs(r["scale"] - scale) < 1e-12:
                return r
        raise KeyError(f"no row at scale {scale}; scales: {[r['scale'] for r in self.rows[1:]]}")

    def first_reaching(self, behaviour: float) -> dict[str, Any] | None:
        """The smallest-scale steered row whose behaviour is >= ``behaviour`` (None if none)."""
        ok = [r for r in self.rows[1:] if r["behaviour"] >= behaviour]
        return min(ok, key=lambda r: r["scale"]) if ok else None

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)

    def figure(self, title: str | None = None) -> Any:
        return dose_response_figure({self.name or "steered": self}, title=title)


def dose_response(
    model: HookedModel,
    tokens: Any,
    *,
    intervention: Steering | Callable[[float], Steering],
    scales: Sequence[float],
    behaviour: Callable[[list], float],
    name: str = "",
    batch_size: int = 64,
) -> DoseResponse:
    """Behaviour and KL cost at each scale, plus the unsteered baseline row.

    Args:
        tokens: the neutral prompts [n, L] the KL cost is measured on (:func:`kl_cost`); None: no cost column.
        intervention: an Intervention / Compose (re-scaled with ``with_scale``), or a function
            ``scale -> intervention``.
        scales: the doses (a 0 in the list is still run as a steered row, normally equal to the baseline).
        behaviour: ``behaviour(fwd_hooks) -> float``, the score with these hooks attached (``[]`` = unsteered).
    """
    make = intervention if callable(intervention) and not isinstance(intervention, (Intervention, Compose)) \
        else intervention.with_scale  # type: ignore[union-attr]
    rows = [{"scale": 0.0, "label": "baseline", "behaviour": float(behaviour([])), "kl": 0.0, "kl_last": 0.0}]
    for s in scales:
        iv = make(float(s))
        row = {"scale": float(s), "label": name or "steered", "behaviour": float(behaviour(iv.hooks(model)))}
        if tokens is not None:
            row.update(dataclasses.asdict(kl_cost(model, tokens, intervention=iv, batch_size=batch_size)))
        rows.append(row)
    return DoseResponse(rows, name)


def dose_response_figure(curves: DoseResponse | Mapping[str, DoseResponse], title: str | None = None,
                         behaviour_name: str = "behaviour") -> Any:
    """Two panels: behaviour against scale (baseline dashed), and behaviour against KL cost."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    if isinstance(curves, DoseResponse):
        curves = {curves.name or "steered": curves}
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"{behaviour_name} vs scale",
                                                        f"{behaviour_name} vs KL on neutral prompts"])
    for k, (name, c) in enumerate(curves.items()):
        color = qualitative.Plotly[k % len(qualitative.Plotly)]
        steered = c.rows[1:]
        x = [r["scale"] for r in steered]
        y = [r["behaviour"] for r in steered]
        kl = [r.get("kl", np.nan) for r in steered]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, line={"color": color},
                                 customdata=kl, hovertemplate="scale %{x}<br>behaviour %{y:.3f}<br>KL %{customdata:.3f}"
                                                              "<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=x and [min(x), max(x)], y=[c.baseline["behaviour"]] * 2, mode="lines",
                                 name=f"{name} baseline", line={"color": color, "dash": "dash"}, showlegend=False),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=[0.0] + kl, y=[c.baseline["behaviour"]] + y, mode="lines+markers",
                                 name=f"{name} (cost)", line={"color": color}, showlegend=False,
                                 customdata=[0.0] + x,
                                 hovertemplate="KL %{x:.3f}<br>behaviour %{y:.3f}<br>scale %{customdata}"
                                               "<extra></extra>"),
                      row=1, col=2)
    fig.update_xaxes(title_text="scale", row=1, col=1, gridcolor="#eee")
    fig.update_xaxes(title_text="KL(unsteered ‖ steered), nats", row=1, col=2, gridcolor="#eee")
    values = [r["behaviour"] for c in curves.values() for r in c.rows]
    fraction = all(0.0 <= v <= 1.0 for v in values)  # a success rate: show the whole [0, 1] range
    fig.update_yaxes(title_text=behaviour_name, range=[0, 1.02] if fraction else None, gridcolor="#eee")
    fig.update_layout(title=title or "dose-response", width=900, height=400, plot_bgcolor="white",
                      legend={"font": {"size": 10}})
    return fig


@torch.no_grad()
def next_token_probs(model: HookedModel, tokens: Any, *, fwd_hooks: Sequence = ()) -> Tensor:
    """The next-token distribution after one sequence ``tokens`` ([L] or [1, L]), with ``fwd_hooks`` active:
    [vocab] float32 on the CPU."""
    tokens = as_tokens(model, tokens, one_sequence=True)
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks)) if fwd_hooks else model(tokens)
    return logits[0, -1].float().softmax(-1).cpu()


@dataclass
class SteeringComparison:
    """Baseline against steered on one prompt: next-token distributions ``p_base``, ``p_steer`` [vocab];
    greedy continuations ``gen_base``, ``gen_steer`` (token ids [max_new_tokens]); ``kl_last``: KL(baseline ‖
    steered) at the prompt's last position, ``kl``: mean over the edited positions (:func:`kl_cost`), nats."""

    p_base: np.ndarray
    p_steer: np.ndarray
    gen_base: list[int]
    gen_steer: list[int]
    kl_last: float
    kl: float

    @property
    def top1_changed(self) -> bool:
        """Whether the most likely next token differs between baseline and steered."""
        return int(np.argmax(self.p_base)) != int(np.argmax(self.p_steer))


@torch.no_grad()
def compare_steering(model: HookedModel, tokens: Any, *, intervention: Steering,
                     max_new_tokens: int = 16) -> SteeringComparison:
    """Run one prompt ``tokens`` ([L] or [1, L]) without and with ``intervention``: distributions, greedy
    generations (the intervention active at every generated step) and KL costs (:func:`kl_cost`)."""
    tokens = as_tokens(model, tokens, one_sequence=True)
    hooks = intervention.hooks(model)
    L = tokens.shape[1]
    kw = dict(max_new_tokens=int(max_new_tokens), do_sample=False, stop_at_eos=False, return_type="tokens")
    g0 = model.generate(tokens, **kw)[0, L:]
    g1 = model.generate(tokens, fwd_hooks=hooks, **kw)[0, L:]
    cost = kl_cost(model, tokens, intervention=intervention)
    return SteeringComparison(next_token_probs(model, tokens).numpy(),
                              next_token_probs(model, tokens, fwd_hooks=hooks).numpy(), g0.tolist(), g1.tolist(),
                              cost.kl_last, cost.kl)


def distribution_figure(p_base: Any, p_steer: Any, vocab: Sequence[str], k: int = 12,
                        title: str = "Next-token distribution after the prompt") -> Any:
    """Grouped bars of two next-token distributions [vocab] (baseline, steered) over the ``k`` tokens with the
    largest summed probability; bars named ``"{id}:{token}"``."""
    import plotly.graph_objects as go

    p0, p1 = np.asarray(p_base), np.asarray(p_steer)
    top = np.argsort(-(p0 + p1), kind="stable")[:k]
    names = [f"{i}:{vocab[i]}" for i in top]
    fig = go.Figure([go.Bar(name="baseline", x=names, y=p0[top]), go.Bar(name="steered", x=names, y=p1[top])])
    fig.update_layout(barmode="group", title=title, yaxis_title="probability", height=360)
    return fig
