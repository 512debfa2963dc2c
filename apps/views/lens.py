"""Logit lens: each layer's residual stream read through the final norm and unembedding."""

import streamlit as st

from interp.apps import compute as C
from interp.apps import ui


@st.cache_data(show_spinner="Computing the logit lens…", max_entries=32)
def lens_figure(spec: str, toks: tuple):
    return C.logit_lens_figure(ui.cached_model(spec), ui.tensor_of(toks))


def main() -> None:
    st.title("Logit lens")
    got = ui.current()
    if got is None:
        return
    spec, model, tokens = got
    try:
        fig = lens_figure(spec, ui.key_of(tokens))
    except Exception as e:  # noqa: BLE001
        ui.show_error(e)
        return
    st.plotly_chart(fig, key="lens", config={"displaylogo": False})
    st.caption("Colour: probability of the top-1 token of each layer's read-out; hover for the token.")


main()
