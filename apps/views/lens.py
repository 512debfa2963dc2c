"""Logit lens (:mod:`interp.lens`): each layer's top-1 token per position, coloured by its probability or the true
next token's; layers in :data:`interp.lens.LAYER_ORDER`, long prompts through a window of positions."""

import pandas as pd
import streamlit as st

from interp.apps import inputs as C
from interp.apps import ui
from interp.lens import MAX_WINDOW, VALUES, WINDOW, clamp_window, logit_lens, logit_lens_figure, vocabulary


@st.cache_data(show_spinner="Computing the logit lens…", max_entries=32)
def lens_view(spec: str, toks: tuple, start: int, length: int, value: str):
    model = ui.cached_model(spec)
    tokens = ui.tensor_of(model, toks)
    lens = logit_lens(model, tokens, start=start, length=length)
    return logit_lens_figure(lens, C.str_tokens(model, tokens), vocabulary(model), value), lens


def window(L: int) -> tuple[int, int]:
    """(start, length) of the positions to show: the whole prompt up to ``WINDOW`` tokens, else two inputs."""
    if L <= WINDOW:
        return 0, L
    c1, c2 = st.columns(2)
    start = ui.widget(c1.number_input, "lens_start", f"Window start (0..{L - 1})", min_value=0, max_value=L - 1)
    length = ui.widget(c2.number_input, "lens_len", f"Window length (at most {min(MAX_WINDOW, L)})",
                       min_value=1, max_value=min(MAX_WINDOW, L))
    return clamp_window(L, start, length)


def main(spec: str, model, tokens) -> None:
    L = tokens.shape[1]
    value = ui.widget(st.radio, "lens_value", "Colour", list(VALUES), format_func=VALUES.get, horizontal=True)
    start, length = window(L)
    fig, lens = ui.need(lens_view, spec, ui.key_of(tokens), start, length, value)
    ui.chart(fig, "lens")
    st.caption(f"Each cell shows the layer's top-1 token; colour: {VALUES[value]}"
               + (" (blank at the prompt's last position: nothing follows it)" if value == "true" else "")
               + ". Layers run from the embedding side (bottom) to the final layer (top); hover for both "
                 "probabilities.")
    positions = [int(p) for p in lens.positions]
    v = ui.view()
    if v["lens_pos"] == -1:
        v["lens_pos"] = positions[-1]  # -1 (the default): the window's last position
    pos = ui.widget(st.select_slider, "lens_pos", "Position of the table (layers in the figure's order)", positions)
    st.dataframe(pd.DataFrame(lens.table(int(pos), vocabulary(model))), hide_index=True, key="lens_table")


ui.show(main, "Logit lens")
