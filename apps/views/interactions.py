"""Token interactions: a layer × channel/head thumbnail grid, a detail heatmap, rollout, a query row as coloured text."""

import time

import streamlit as st

from interp.apps import inputs as C
from interp.apps import ui
from interp.attention.figures import (
    interaction_heatmap, pooled_heatmap, sorted_thumbnails_figure, token_highlight_html, token_labels,
)
from interp.attention.methods import LABELS, WHOLE_MODEL, layers_for, methods_for
from interp.attention.ops import NORMALIZATIONS
from interp.attention.views import (
    METRIC_DEFINITIONS, METRICS, aggregates_for, causal_masked, n_channels, pool_map,
)


COLUMNS = [2.6, 0.9, 1.3, 1.2, 1.0, 1.4]  # source, layer, aggregate, channel, normalise, rollout: room for the
# longest source name ("unified implicit attention (SSM)") so that no name is cut off


T0 = time.perf_counter()  # this run of the page started


def main(spec: str, model, tokens) -> None:
    cfg = ui.config()
    L = tokens.shape[1]
    toks = C.str_tokens(model, tokens)
    sources = list(methods_for(model))

    c = st.columns(COLUMNS)
    source = ui.widget(c[0].selectbox, "source", "Source", sources, format_func=lambda s: LABELS[s])
    whole = source in WHOLE_MODEL
    layer = ui.widget(c[1].selectbox, "layer", "Layer", layers_for(model, source), disabled=whole)
    aggs = aggregates_for(source)
    agg = ui.widget(c[2].selectbox, "agg", "Aggregate channels", aggs or ["mean_abs"], disabled=not aggs,
                    help="LaTIM and the whole-model attributions have no channel axis" if not aggs else None)
    ch = 0
    if agg == "channel" and aggs:
        ch = ui.widget(c[3].number_input, "ch", "Channel / head", min_value=0, max_value=n_channels(model) - 1)
    norm = ui.widget(c[4].selectbox, "norm", "Normalise", list(NORMALIZATIONS))
    roll = ui.widget(c[5].checkbox, "rollout", "Rollout over layers", disabled=whole)
    aggregate = int(ch) if agg == "channel" else agg
    q = ui.widget(st.slider, "q", "Query position (-1 = last)", min_value=-1, max_value=L - 1)
    qi = int(q) % L

    # ---- the detail map -----------------------------------------------------------------------------
    if whole and L > cfg.lrp_full_max:
        st.info(f"{LABELS[source]} needs one backward pass per query row: for a {L}-token prompt "
                f"(over {cfg.lrp_full_max}) only the selected query and the last 8 rows are computed.")
    view = ui.need(ui.interaction_map, spec, tokens, method=source, layer=int(layer), aggregate=aggregate,
                   normalize_=norm, query=qi, rollout=roll and not whole)
    m = view.values

    left, right = st.columns([3, 2])
    with left:
        if view.rows is None and L > cfg.pool_above:
            ui.chart(pooled_heatmap(*pool_map(causal_masked(m)), L, view.title), "overview")
            W = cfg.pool_above
            win = ui.widget(st.slider, "win", "Detail window start", min_value=0, max_value=max(0, L - W), step=8)
            fig = interaction_heatmap(m[win:win + W, win:win + W], toks[win:win + W],
                                      title=f"tokens {win}–{win + W - 1}", signed=view.signed)
            fig.data[0].x = fig.data[0].y = token_labels(toks)[win:win + W]  # absolute positions
        else:
            fig = interaction_heatmap(m, toks, title=view.title, signed=view.signed, rows=view.rows)
        ui.chart(fig, "detail")
        st.html(token_highlight_html(toks, view.row(qi), query=qi, title=f"query {qi}: row of the map as coloured text"))
    with right:
        if whole:
            st.caption("LRP and gradient × input explain the whole model: no per-layer thumbnails.")
        else:
            thumbs(spec, model, tokens, source, cfg)
    st.caption(f"rendered in {time.perf_counter() - T0:.2f} s · {L} tokens")


def thumbs(spec, model, tokens, source, cfg) -> None:
    long = tokens.shape[1] > cfg.pool_above
    n = cfg.thumb_tokens if long else tokens.shape[1]
    metric = ui.widget(st.selectbox, "sort", "Sort thumbnails by", list(METRICS),
                       help="\n".join(f"- **{k}**: {d}" for k, d in METRIC_DEFINITIONS.items()))
    thumbnails = ui.attempt(ui.cached, "thumbs", spec, ui.key_of(tokens[:, :n]), method=source,
                            per_layer=4 if long else 8, max_bytes=cfg.map_budget_bytes,  # Mamba-1: top channels
                            too_large="The per-channel thumbnails")
    if thumbnails is None:
        return
    top = thumbnails.sorted_by(metric)
    names = top.names
    ui.chart(sorted_thumbnails_figure(top, metric), "thumbs")
    st.caption(f"Each thumbnail is named by its layer (L) and channel/head (ch), followed by its {metric}: "
               f"{METRIC_DEFINITIONS[metric]}. One colour scale for all thumbnails (the colour bar), so their "
               "strengths compare.")

    def open_thumb() -> None:
        layer, ch = thumbnails.keys[top.order[names.index(st.session_state["open_thumb"])]]
        ui.set_view(layer=layer, rollout=False, **({} if ch is None else {"agg": "channel", "ch": ch}))

    st.selectbox("Open a thumbnail in the detail view", names, index=None, key="open_thumb", on_change=open_thumb,
                 placeholder="L… ch…")
    if long:
        st.caption(f"Thumbnails show the first {n} of {tokens.shape[1]} tokens (the top-left block of each causal map)"
                   " and, for Mamba-1, the 4 channels with the most mass (Σ|α|) per layer.")

ui.show(main, "Token interactions")
