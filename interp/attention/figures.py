"""Plotly figures for token-interaction maps (reused by the notebooks and the Streamlit app).

    fig = interaction_heatmap(map_LxL, model.to_str_tokens(tokens), title="layer 1, mean |α|")
    fig = interaction_heatmap(lrp_rows, str_tokens, signed=True)          # diverging, centred at 0
    fig = thumbnail_grid(per_channel_maps[:16], [f"ch {c}" for c in range(16)], cols=4)
    html = token_highlight_html(str_tokens, row)                          # one query row as coloured text
    fig = perturbation_figure({"hidden": {"morf": c1, "lerf": c2}, ...})
    save_html(fig, "map.html")                                            # self-contained: no CDN

Conventions: maps are [L(query i), L(source j)]; rows run top to bottom (query 0 at the top), the
causal upper triangle (j > i) is left blank. Tick labels are ``"{position}·{token}"`` so that repeated
tokens stay apart (plotly would merge equal category names); spaces show as ``␣`` and newlines as
``↵``. Every builder takes tensors or arrays and returns a ``plotly.graph_objects.Figure`` (the HTML
helper returns a string). Exported HTML embeds plotly.js (``include_plotlyjs=True``): nothing is
fetched from a CDN.
"""

from __future__ import annotations

import html as _html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from interp.hooks.positions import check_indices

__all__ = [
    "token_labels", "interaction_heatmap", "thumbnail_grid", "sorted_thumbnails_figure", "token_highlight_html",
    "perturbation_figure",
    "figure_html", "save_html", "SEQUENTIAL", "DIVERGING", "pooled_heatmap", "kaleido_available", "figure_exports",
    "npz_bytes",
]

SEQUENTIAL = "Viridis"
DIVERGING = [[0.0, "#2166ac"], [0.25, "#92c5de"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1.0, "#b2182b"]]


def _np(x: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(x, dtype=np.float64)


def _visible(tok: str) -> str:
    return str(tok).replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


def token_labels(str_tokens: Sequence[str] | None, n: int | None = None) -> list[str]:
    """Unique tick labels ``"{i}·{token}"`` (just ``"{i}"`` without tokens)."""
    if str_tokens is None:
        return [str(i) for i in range(n or 0)]
    return [f"{i}·{_visible(t)}" for i, t in enumerate(str_tokens)]


def _masked(m: np.ndarray, causal: bool) -> np.ndarray:
    m = m.astype(np.float64, copy=True)
    if causal and m.ndim == 2 and m.shape[0] == m.shape[1]:
        m[np.triu_indices(m.shape[0], k=1)] = np.nan
    return m


def _range(values: np.ndarray, signed: bool) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    if signed:
        lim = float(np.abs(finite).max()) if finite.size else 1.0
        lim = lim if lim > 0 else 1.0
        return {"zmin": -lim, "zmax": lim, "zmid": 0.0, "colorscale": DIVERGING}
    if not finite.size:
        return {"colorscale": SEQUENTIAL}
    return {"zmin": float(finite.min()), "zmax": float(finite.max()), "colorscale": SEQUENTIAL}


def interaction_heatmap(
    map_: Any,
    str_tokens: Sequence[str] | None = None,
    title: str | None = None,
    signed: bool = False,
    causal: bool = True,
    rows: Sequence[int] | None = None,
    colorbar_title: str | None = None,
    size: int | None = None,
) -> Any:
    """Heatmap of an interaction map [L, L] (query rows × source columns), or of some rows [R, L].

    Args:
        map_: [L, L] (or [1, L, L]) tensor/array; [R, L] with ``rows`` naming the query positions.
        str_tokens: the L tokens (tick labels ``"{i}·{token}"``).
        signed: diverging colour scale centred at 0 with a symmetric range (LRP, gradient × input);
            otherwise a sequential scale over the data range.
        causal: blank the upper triangle (j > i) of a square map / right of each query row.
        rows: query positions of the rows of a non-square ``map_``.
        size: figure width and height in pixels (default grows with L).
    """
    import plotly.graph_objects as go

    m = _np(map_)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"interaction_heatmap expects a 2-D map, got shape {m.shape}")
    L = m.shape[1]
    labels = token_labels(str_tokens, L)
    if str_tokens is not None and len(labels) != L:
        raise ValueError(f"{len(labels)} tokens for a map with {L} columns")
    if rows is None:
        if m.shape[0] != L:
            raise ValueError(f"a non-square map {m.shape} needs rows=[...] naming its query positions")
        rows = list(range(L))
        m = _masked(m, causal)
    else:
        rows = check_indices(rows, L, "rows", of=f"a map of {L} positions")
        m = m.astype(np.float64, copy=True)
        if causal:
            for k, r in enumerate(rows):
                m[k, r + 1:] = np.nan
    ylabels = [labels[r] for r in rows]
    fig = go.Figure(go.Heatmap(
        z=m, x=labels, y=ylabels, **_range(m, signed), hoverongaps=False,
        colorbar={"title": {"text": colorbar_title or ("relevance" if signed else "score")}},
        hovertemplate="query %{y}<br>source %{x}<br>value %{z:.4g}<extra></extra>",
    ))
    px = size or int(min(900, max(520, 14 * L + 200)))  # room for the title and colour bar on short prompts
    fig.update_layout(
        title=title, width=px, height=int(px * max(0.35, len(rows) / L)) if len(rows) < L else px,
        xaxis={"title": "source token j", "tickangle": -90, "type": "category", "tickfont": {"size": 9}},
        yaxis={"title": "query token i", "autorange": "reversed", "type": "category", "tickfont": {"size": 9}},
        margin={"l": 70, "r": 20, "t": 50 if title else 20, "b": 70}, plot_bgcolor="white",
    )
    return fig


def thumbnail_grid(
    maps: Any,
    labels: Sequence[str] | None = None,
    cols: int = 4,
    signed: bool = False,
    causal: bool = True,
    shared_scale: bool = False,
    title: str | None = None,
    thumb_px: int = 160,
    colorbar_title: str | None = None,
    hover: Sequence[str] | None = None,
) -> Any:
    """Small multiples of n maps [n, L, L] (e.g. one per channel, head or layer), ``cols`` per row.

    Each thumbnail has its own colour range (and no colour bar) unless ``shared_scale``: then every thumbnail
    uses one range over all maps, shown by one colour bar right of the grid (titled ``colorbar_title``).
    ``signed`` centres the colours at 0. ``hover``: one extra hover line per map (e.g. what its label means).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ms = _np(maps)
    if ms.ndim != 3:
        raise ValueError(f"thumbnail_grid expects maps [n, L, L], got shape {ms.shape}")
    n = ms.shape[0]
    labels = list(labels) if labels is not None else [str(i) for i in range(n)]
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} maps")
    if hover is not None and len(hover) != n:
        raise ValueError(f"{len(hover)} hover lines for {n} maps")
    cols = max(1, min(int(cols), n))
    nrows = -(-n // cols)
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=labels, horizontal_spacing=0.02,
                        vertical_spacing=0.06 if nrows > 1 else 0.0)
    masked = np.stack([_masked(m, causal) for m in ms])
    shared = _range(masked, signed) if shared_scale else None
    bar_px = 90 if shared_scale else 0  # room right of the grid for the one shared colour bar
    for k in range(n):
        rng = shared or _range(masked[k], signed)
        extra = f"<br>{_html.escape(hover[k])}" if hover is not None else ""
        bar = {"showscale": True, "colorbar": {"title": {"text": colorbar_title or "value", "side": "right"},
                                               "x": 1.0, "xanchor": "left", "xpad": 12, "thickness": 14, "len": 0.9}} \
            if shared_scale and k == 0 else {"showscale": False}
        fig.add_trace(go.Heatmap(z=masked[k], hoverongaps=False, **rng, **bar,
                                 hovertemplate=f"{_html.escape(labels[k])}{extra}<br>i %{{y}} j %{{x}}<br>%{{z:.3g}}"
                                               "<extra></extra>"),
                      row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    fig.update_annotations(font_size=10)
    fig.update_layout(title=title, width=cols * thumb_px + 40 + bar_px,
                      height=nrows * (thumb_px + 20) + (60 if title else 30),
                      margin={"l": 10, "r": 10 + bar_px, "t": 50 if title else 30, "b": 10}, plot_bgcolor="white")
    return fig


def sorted_thumbnails_figure(top: Any, metric: str, cols: int = 4, thumb_px: int = 120) -> Any:
    """The thumbnail grid of :class:`~interp.attention.views.SortedThumbnails` ``top`` (sorted by ``metric``): each
    thumbnail named by its layer, channel/head and score, one colour scale for all (so strengths compare)."""
    return thumbnail_grid(top.pooled, [f"{n} {v:.3g}" for n, v in zip(top.names, top.scores)], cols=cols,
                          causal=False, signed=bool(np.nanmin(top.pooled) < 0), shared_scale=True,
                          colorbar_title="value (all thumbnails)", title=f"layer × channel/head, sorted by {metric}",
                          thumb_px=thumb_px, hover=[f"{metric} = {v:.4g}" for v in top.scores])


def token_highlight_html(
    str_tokens: Sequence[str],
    weights: Any,
    signed: bool | None = None,
    query: int | None = None,
    title: str | None = None,
) -> str:
    """One query row as coloured text: token j's background shows ``weights[j]``.

    Unsigned weights shade from white to orange (scaled by the max |w|); signed ones (default when any
    weight is negative) go red for positive and blue for negative. ``query`` is outlined. Tokens past
    the query (j > query) are greyed out. Returns an HTML fragment (a ``<div>``) with hover titles.
    """
    w = _np(weights).reshape(-1)
    if len(w) != len(str_tokens):
        raise ValueError(f"{len(w)} weights for {len(str_tokens)} tokens")
    finite = w[np.isfinite(w)]
    signed = bool((finite < 0).any()) if signed is None else signed
    scale = float(np.abs(finite).max()) if finite.size else 1.0
    scale = scale if scale > 0 else 1.0
    spans = []
    for j, (tok, x) in enumerate(zip(str_tokens, w)):
        a = 0.0 if not np.isfinite(x) else min(1.0, abs(float(x)) / scale)
        if signed:
            rgb = "178,24,43" if x >= 0 else "33,102,172"
        else:
            rgb = "230,120,20"
        style = [f"background-color: rgba({rgb},{a:.3f})", "padding: 1px 2px", "margin: 1px",
                 "border-radius: 3px", "font-family: monospace", "white-space: pre"]
        if query is not None and j == int(query) % len(w):
            style.append("outline: 2px solid #333")
        if query is not None and j > int(query) % len(w):
            style.append("color: #bbb")
        text = _html.escape(_visible(tok))
        spans.append(f'<span title="{j}: {float(x):.4g}" style="{"; ".join(style)}">{text}</span>')
    head = f"<div style=\"font-weight: bold; margin-bottom: 4px\">{_html.escape(title)}</div>" if title else ""
    return f'<div style="line-height: 1.9; font-size: 13px">{head}{"".join(spans)}</div>'


def perturbation_figure(
    curves: Mapping[str, Any],
    title: str | None = "Perturbation curves",
    yaxis_title: str = "target logit",
) -> Any:
    """Perturbation curves against the fraction of tokens replaced.

    ``curves``: name -> a curve (1-D), or name -> {"morf": curve, "lerf": curve} (MoRF solid, LeRF
    dashed, one colour per name; the legend shows A_MoRF, A_LeRF and ΔA).
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    from .perturbation import area

    fig = go.Figure()
    palette = qualitative.Plotly
    for k, (name, c) in enumerate(curves.items()):
        color = palette[k % len(palette)]
        pairs = c.items() if isinstance(c, Mapping) else [(None, c)]
        for order, y in pairs:
            y = _np(y).reshape(-1)
            x = np.linspace(0.0, 1.0, len(y))
            label = name if order is None else f"{name} {order.upper()} (A={area(y):.3g})"
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, line={
                "color": color, "dash": "dash" if order == "lerf" else "solid"}))
        if isinstance(c, Mapping) and {"morf", "lerf"} <= set(c):
            d = area(c["lerf"]) - area(c["morf"])
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker={"color": color},
                                     name=f"{name}: ΔA = {d:.3g}"))
    fig.update_layout(title=title, xaxis_title="fraction of tokens replaced (k / n)", yaxis_title=yaxis_title,
                      width=720, height=440, legend={"font": {"size": 10}}, plot_bgcolor="white")
    fig.update_xaxes(range=[0, 1], gridcolor="#eee")
    fig.update_yaxes(gridcolor="#eee")
    return fig


def figure_html(fig: Any, full_html: bool = True) -> str:
    """Self-contained HTML of a figure: plotly.js is inlined (no CDN, works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=full_html, include_mathjax=False)


def save_html(fig: Any, path: str | Path) -> Path:
    """Write :func:`figure_html` to ``path``."""
    path = Path(path)
    path.write_text(figure_html(fig), encoding="utf-8")
    return path


def pooled_heatmap(pooled: Any, factor: int, n_tokens: int, title: str = "") -> Any:
    """A pooled overview of a long map: ``pooled`` [l, l] means of ``factor`` × ``factor`` blocks
    (:func:`interp.attention.views.pool_map`) of an ``n_tokens`` map; ticks name each block's position range."""
    import plotly.graph_objects as go

    ticks = [f"{i * factor}–{min(n_tokens, (i + 1) * factor) - 1}" for i in range(_np(pooled).shape[0])]
    fig = go.Figure(go.Heatmap(z=_np(pooled), x=ticks, y=ticks, colorscale=SEQUENTIAL, hoverongaps=False,
                               hovertemplate="query %{y}<br>source %{x}<br>mean %{z:.4g}<extra></extra>"))
    fig.update_layout(title=f"Pooled overview ({factor}×{factor} blocks), {title}", width=640, height=640,
                      yaxis={"autorange": "reversed", "type": "category"}, xaxis={"type": "category"})
    return fig


def kaleido_available() -> bool:
    """Whether PNG export can work: the ``kaleido`` package is installed."""
    import importlib.util

    return importlib.util.find_spec("kaleido") is not None


def figure_exports(fig: Any) -> dict[str, bytes]:
    """A figure as {"html": self-contained HTML (:func:`figure_html`), "json": plotly JSON, "png": when kaleido is
    installed and can render}."""
    out = {"html": figure_html(fig).encode(), "json": fig.to_json().encode()}
    if kaleido_available():
        try:
            out["png"] = fig.to_image(format="png")
        except Exception:  # noqa: BLE001 - kaleido present but unusable (no browser): leave PNG out
            pass
    return out


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """Arrays (numpy arrays, tensors, lists) as one compressed ``.npz`` file."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
                                for k, v in arrays.items()})
    return buf.getvalue()
