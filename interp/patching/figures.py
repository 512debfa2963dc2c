"""Figures of patching results: a layer × position heat map with token tick labels, a layer × component one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .activation import PatchSweep
from .components import ComponentSweep

__all__ = ["patch_figure", "component_figure"]


def patch_figure(sweep: PatchSweep, *, str_tokens: Sequence[str] | None = None, title: str | None = None) -> Any:
    """Plotly heat map of a :class:`~interp.patching.activation.PatchSweep`: layers (first layer at the bottom) ×
    positions, coloured by the normalised metric on a diverging scale centred on 0 (clean = 1, corrupted = 0).

    ``str_tokens``: the L tokens of the (first clean) prompt, e.g. ``model.to_str_tokens(sweep.tokens[0])``; the
    x ticks are ``"{position}·{token}"`` (positions alone without them). Hover gives the raw metric too."""
    from interp.attention.figures import token_labels

    L = sweep.tokens.shape[1]
    if str_tokens is not None and len(str_tokens) != L:
        raise ValueError(f"{len(str_tokens)} str_tokens for a sweep of {L}-token prompts")
    labels = token_labels(str_tokens, L)
    x = [labels[p] for p in sweep.positions]
    names = [[f"{sweep.hooks[i]} @ {x[j]}" for j in range(len(x))] for i in range(len(sweep.layers))]
    fig = _heat_map(sweep, x, names, title or f"Activation patching of {sweep.hook}: {sweep.metric}, "
                    f"{_action(sweep.direction)}")
    fig.update_layout(margin={"b": 80}, xaxis={"title": {"text": "position·token"}, "tickangle": -60})
    return fig


def component_figure(sweep: ComponentSweep, *, title: str | None = None) -> Any:
    """Plotly heat map of a :class:`~interp.patching.components.ComponentSweep`: layers (first at the bottom) ×
    components (heads ``H{h}`` / channel groups ``G{g}``), coloured by the normalised metric on a diverging scale
    centred on 0 (clean = 1, corrupted = 0). Hover gives the component's label and the raw metric."""
    x = [label.split(f"L{sweep.layers[0]}", 1)[1] for label in sweep.labels[0]]
    fig = _heat_map(sweep, x, [list(row) for row in sweep.labels], title or f"Per-component patching of "
                    f"{sweep.hook}: {sweep.metric}, {_action(sweep.direction)}")
    fig.update_layout(xaxis={"title": {"text": "component"}})
    return fig


def _action(direction: str) -> str:
    return "clean → corrupted run (denoising)" if direction == "denoise" else "corrupted → clean run (noising)"


def _heat_map(sweep: PatchSweep | ComponentSweep, x: list[str], names: list[list[str]], title: str) -> Any:
    """The layers × ``x`` heat map both figures share: normalised values on a diverging scale centred on 0 (at
    least -1..1), hover ``names[i][j]`` with the normalised and raw metric."""
    import plotly.graph_objects as go

    values, raw = sweep.values.numpy(), sweep.raw.numpy()
    y = [f"layer {layer}" for layer in sweep.layers]
    hover = [[f"{names[i][j]}<br>normalised {values[i, j]:.3f}<br>{sweep.metric} {raw[i, j]:.4g}"
              for j in range(len(x))] for i in range(len(y))]
    bound = max(1.0, float(abs(sweep.values).max())) if sweep.values.numel() else 1.0
    fig = go.Figure(go.Heatmap(
        z=values, x=x, y=y, hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", zmin=-bound, zmax=bound,
        zmid=0.0, colorscale="RdBu", colorbar={"title": {"text": "normalised", "side": "right"}},
    ))
    fig.update_layout(
        title=title, height=160 + 36 * len(y), margin={"l": 70, "r": 20, "t": 50, "b": 60},
        xaxis={"type": "category"}, yaxis={"title": {"text": "layer"}, "type": "category"},
    )
    return fig
