"""Export: the current view's figures as HTML (self-contained) / PNG / JSON, its arrays as .npz, and a link."""

import json

import numpy as np
import streamlit as st

from interp.apps import inputs as C
from interp.apps import ui
from interp.attention.figures import figure_exports, interaction_heatmap, npz_bytes
from interp.attention.methods import methods_for
from interp.attention.views import aggregates_for
from interp.lens import VALUES, clamp_window, logit_lens, logit_lens_figure, vocabulary


def current_map(spec, model, tokens):
    """(figure, arrays) of the interaction map of the view (same settings as the Token interactions page)."""
    v = ui.view()
    source = ui.checked("source", list(methods_for(model)))
    aggs = aggregates_for(source)
    agg = int(v["ch"]) if v["agg"] == "channel" and aggs else (v["agg"] if v["agg"] in aggs else "mean_abs")
    layer = ui.checked("layer", list(range(model.cfg.n_layers)))  # as the Token interactions page reads it
    view = ui.interaction_map(spec, tokens, method=source, layer=layer, aggregate=agg, normalize_=v["norm"],
                              query=v["q"])
    toks = C.str_tokens(model, tokens)
    fig = interaction_heatmap(view.values, toks, title=view.title, signed=view.signed, rows=view.rows)
    arrays = {"map": view.values, "tokens": tokens[0], "str_tokens": np.array(toks, dtype=object).astype(str)}
    if view.rows is not None:
        arrays["rows"] = np.array(view.rows)
    return fig, arrays


def current_lens(model, tokens):
    """(figure, arrays) of the logit lens of the view (as the Logit lens page shows it)."""
    v = ui.view()
    start, length = clamp_window(tokens.shape[1], v["lens_start"], v["lens_len"])
    lens = logit_lens(model, tokens, start=start, length=length)
    fig = logit_lens_figure(lens, C.str_tokens(model, tokens), vocabulary(model),
                            v["lens_value"] if v["lens_value"] in VALUES else "top")
    return fig, {**lens.arrays(), "tokens": tokens[0]}


def main(spec: str, model, tokens) -> None:
    what = ui.widget(st.radio, "exp", "Figure", ["interaction map", "logit lens"], horizontal=True)
    fig, arrays = ui.need(current_map, spec, model, tokens) if what == "interaction map" else \
        ui.need(current_lens, model, tokens)
    files = ui.need(figure_exports, fig)
    if tokens.shape[1] <= ui.config().pool_above:
        ui.chart(fig, "export_fig")
    else:
        st.caption(f"No preview for a {tokens.shape[1]}-token prompt (the Token interactions page shows a pooled "
                   "overview); the downloads hold the full figure and arrays.")
    stem = what.replace(" ", "_")
    c = st.columns(4)
    c[0].download_button("HTML (self-contained)", files["html"], f"{stem}.html", "text/html")
    c[1].download_button("JSON (plotly)", files["json"], f"{stem}.json", "application/json")
    if "png" in files:
        c[2].download_button("PNG", files["png"], f"{stem}.png", "image/png")
    else:
        c[2].info("PNG export needs the `kaleido` package, which is not installed (pip install kaleido).")
    c[3].download_button("Arrays (.npz)", npz_bytes(arrays), f"{stem}.npz", "application/octet-stream")
    st.subheader("This view")
    st.caption("The URL of this page reproduces the view; the settings as JSON:")
    st.code(json.dumps(ui.view(), indent=1, default=str), language="json")


ui.show(main, "Export")
