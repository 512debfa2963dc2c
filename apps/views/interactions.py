"""Token interactions: a layer × channel/head thumbnail grid, a detail heatmap, rollout, a query row as coloured text."""

import time

import numpy as np
import plotly.graph_objects as go
import streamlit as st
import torch

from interp.apps import compute as C
from interp.apps import ui
from interp.attention import MapTooLargeError, normalize
from interp.attention.figures import interaction_heatmap, thumbnail_grid, token_highlight_html, token_labels


COLUMNS = [2.6, 0.9, 1.3, 1.2, 1.0, 1.4]  # source, layer, aggregate, channel, normalise, rollout: room for the
# longest source name ("unified implicit attention (SSM)") so that no name is cut off


def relabel(fig: go.Figure, labels: list[str], rows: list[int] | None = None) -> go.Figure:
    """Tick labels with absolute positions for a window of the map."""
    fig.data[0].x = labels
    fig.data[0].y = labels if rows is None else [labels[r] for r in rows]
    return fig


def main() -> None:
    t0 = time.perf_counter()
    st.title("Token interactions")
    got = ui.current()
    if got is None:
        return
    spec, model, tokens = got
    cfg = ui.config()
    L = tokens.shape[1]
    toks = C.str_tokens(model, tokens)
    key = ui.key_of(tokens)
    sources = C.sources_for(model)

    c = st.columns(COLUMNS)
    source = ui.widget(c[0].selectbox, "source", "Source", sources, format_func=lambda s: C.SOURCES[s])
    whole = source in C.WHOLE_MODEL
    layer = ui.widget(c[1].selectbox, "layer", "Layer", list(range(model.cfg.n_layers)), disabled=whole)
    aggs = C.aggregates_for(source)
    agg = ui.widget(c[2].selectbox, "agg", "Aggregate channels", aggs or ["mean_abs"], disabled=not aggs,
                    help="LaTIM and the whole-model attributions have no channel axis" if not aggs else None)
    ch = 0
    if agg == "channel" and aggs:
        ch = ui.widget(c[3].number_input, "ch", "Channel / head", min_value=0, max_value=C.n_channels(model) - 1)
    norm = ui.widget(c[4].selectbox, "norm", "Normalise", list(C.NORMALIZATIONS))
    roll = ui.widget(c[5].checkbox, "rollout", "Rollout over layers", disabled=whole)
    aggregate = int(ch) if agg == "channel" else agg
    q = ui.widget(st.slider, "q", "Query position (-1 = last)", min_value=-1, max_value=L - 1)
    qi = int(q) % L

    # ---- the detail map -----------------------------------------------------------------------------
    rows = None
    try:
        if whole and L > cfg.lrp_full_max:
            rows = sorted({qi, *range(max(0, L - 8), L)})
            st.info(f"{C.SOURCES[source]} needs one backward pass per query row: for a {L}-token prompt "
                    f"(over {cfg.lrp_full_max}) only the selected query and the last 8 rows are computed.")
            m = ui.cached_rows(spec, key, tuple(rows), source, norm)
        elif roll and not whole:
            m = ui.cached_rollout(spec, key, source, aggregate, cfg.map_budget_bytes)
            if norm != "raw":
                m = normalize(torch.from_numpy(m), norm).numpy()
        else:
            m = ui.cached_detail(spec, key, int(layer), source, aggregate, norm, cfg.map_budget_bytes)
    except MapTooLargeError as e:
        budget = f"{cfg.map_budget_bytes / 2**20:,.0f} MiB"
        st.warning(C.plain_markdown(f"This map would exceed the memory budget ({budget}): {e}"))
        return
    except Exception as e:  # noqa: BLE001
        ui.show_error(e)
        return
    signed = bool(np.nanmin(m) < 0)
    what = "rollout" if roll and not whole else (C.SOURCES[source] if whole else f"layer {layer}, {C.SOURCES[source]}")
    title = f"{what}, " + (f"{'channel ' + str(ch) if agg == 'channel' else agg}, " if aggs else "") + norm

    left, right = st.columns([3, 2])
    with left:
        if rows is not None:
            fig = interaction_heatmap(m, toks, title=title, signed=signed, rows=rows)
            st.plotly_chart(fig, key="detail", config={"displaylogo": False})
        elif L > cfg.pool_above:
            pooled, f = C.pool_map(C.causal_masked(m))
            ticks = [f"{i * f}–{min(L, (i + 1) * f) - 1}" for i in range(pooled.shape[0])]
            over = go.Figure(go.Heatmap(z=pooled, x=ticks, y=ticks, colorscale="Viridis", hoverongaps=False,
                                        hovertemplate="query %{y}<br>source %{x}<br>mean %{z:.4g}<extra></extra>"))
            over.update_layout(title=f"Pooled overview ({f}×{f} blocks), {title}", width=640, height=640,
                               yaxis={"autorange": "reversed", "type": "category"}, xaxis={"type": "category"})
            st.plotly_chart(over, key="overview", config={"displaylogo": False})
            W = cfg.pool_above
            win = ui.widget(st.slider, "win", "Detail window start", min_value=0, max_value=max(0, L - W), step=8)
            sub = m[win:win + W, win:win + W]
            fig = interaction_heatmap(sub, toks[win:win + W], title=f"tokens {win}–{win + W - 1}", signed=signed)
            relabel(fig, token_labels(toks)[win:win + W])
            st.plotly_chart(fig, key="detail", config={"displaylogo": False})
        else:
            fig = interaction_heatmap(m, toks, title=title, signed=signed)
            st.plotly_chart(fig, key="detail", config={"displaylogo": False})
        row = m[rows.index(qi)] if rows is not None else m[qi]
        st.html(token_highlight_html(toks, row, query=qi, title=f"query {qi}: row of the map as coloured text"))
    with right:
        if whole:
            st.caption("LRP and gradient × input explain the whole model: no per-layer thumbnails.")
        else:
            thumbs(spec, model, tokens, source, cfg)
    st.caption(f"rendered in {time.perf_counter() - t0:.2f} s · {L} tokens")


def thumbs(spec, model, tokens, source, cfg) -> None:
    long = tokens.shape[1] > cfg.pool_above
    n = cfg.thumb_tokens if long else tokens.shape[1]
    metric = ui.widget(st.selectbox, "sort", "Sort thumbnails by", list(C.METRICS),
                       help="\n".join(f"- **{k}**: {d}" for k, d in C.METRIC_DEFINITIONS.items()))
    try:
        maps, keys = ui.cached_thumbs(spec, ui.key_of(tokens[:, :n]), source, cfg.map_budget_bytes,
                                      4 if long else 8)  # Mamba-1: top channels per layer
    except MapTooLargeError as e:
        st.warning(C.plain_markdown(f"The per-channel thumbnails would exceed the memory budget: {e}"))
        return
    except Exception as e:  # noqa: BLE001
        ui.show_error(e)
        return
    score = C.map_metric(maps, metric)
    order = np.argsort(-score, kind="stable")[:32]
    names = [f"L{keys[k][0]}" + ("" if keys[k][1] is None else f" ch{keys[k][1]}") for k in order]
    labels = [f"{name} {score[k]:.3g}" for name, k in zip(names, order)]
    small = np.stack([C.pool_map(C.causal_masked(maps[k]), 48)[0] for k in order])
    signed = bool(np.nanmin(small) < 0)
    fig = thumbnail_grid(small, labels, cols=4, causal=False, signed=signed, shared_scale=True,
                         colorbar_title="value (all thumbnails)", title=f"layer × channel/head, sorted by {metric}",
                         thumb_px=120, hover=[f"{metric} = {score[k]:.4g}" for k in order])
    st.plotly_chart(fig, key="thumbs", config={"displaylogo": False})
    st.caption(f"Each thumbnail is named by its layer (L) and channel/head (ch), followed by its {metric}: "
               f"{C.METRIC_DEFINITIONS[metric]}. One colour scale for all thumbnails (the colour bar), so their "
               "strengths compare.")

    def open_thumb() -> None:
        k = order[names.index(st.session_state["open_thumb"])]
        layer, ch = keys[k]
        ui.set_view(layer=layer, rollout=False, **({} if ch is None else {"agg": "channel", "ch": ch}))

    st.selectbox("Open a thumbnail in the detail view", names, index=None, key="open_thumb", on_change=open_thumb,
                 placeholder="L… ch…")
    if long:
        st.caption(f"Thumbnails show the first {n} of {tokens.shape[1]} tokens (the top-left block of each causal map)"
                   " and, for Mamba-1, the 4 channels with the most mass (Σ|α|) per layer.")

main()
