"""Plotly figures of codebook codes: the codes a prompt selects, and how often each code is selected.

    codes_heatmap(report.prompt_ids, str_tokens, code=3, site="blocks.0.ssm.hook_out")
    code_frequency_figure(report.freq, code=3, site="blocks.0.ssm.hook_out")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["codes_heatmap", "code_frequency_figure"]

HIGHLIGHT, BASE = "#f28e2b", "#4e79a7"


def codes_heatmap(prompt_ids: Any, str_tokens: Sequence[str], code: int, site: str) -> Any:
    """The code selected in each slot at each position: ``prompt_ids`` [k, L] (slot 0 = best) as a heat map with
    the ids as text, ``code`` highlighted; x ticks ``"{position}·{token}"``."""
    import plotly.graph_objects as go

    ids = np.asarray(prompt_ids)
    labels = [f"{i}·{t}" for i, t in enumerate(str_tokens)]
    fig = go.Figure(go.Heatmap(z=(ids == code).astype(float), x=labels, y=[f"slot {s}" for s in range(ids.shape[0])],
                               text=ids.astype(str), texttemplate="%{text}", zmin=0, zmax=1, showscale=False,
                               colorscale=[[0, "#f4f4f4"], [1, HIGHLIGHT]],
                               hovertemplate="%{x}<br>%{y}: code %{text}<extra></extra>"))
    fig.update_layout(title=f"Code selected at each position at {site} (code {code} highlighted)",
                      height=140 + 30 * ids.shape[0], xaxis=dict(type="category", tickangle=-60),
                      yaxis=dict(autorange="reversed"), margin=dict(t=40, b=80))
    return fig


def code_frequency_figure(freq: Any, code: int, site: str) -> Any:
    """Bars of each code's share of a site's selections, ``freq`` [n_codes], ``code`` highlighted."""
    import plotly.graph_objects as go

    freq = np.asarray(freq, dtype=np.float64)
    colors = [HIGHLIGHT if i == code else BASE for i in range(len(freq))]
    fig = go.Figure(go.Bar(x=list(range(len(freq))), y=freq, marker_color=colors))
    fig.update_layout(title=f"Code frequencies at {site} (share of selections)", height=320, xaxis_title="code",
                      yaxis_title="frequency")
    return fig
