"""Probes: layer × position accuracy and selectivity of linear probes (interp.probes)."""

import pandas as pd
import streamlit as st

from interp.apps import inputs as C
from interp.apps import ui
from interp.tasks.tokfsm import is_tokfsm_model, tokfsm_probe_sweep


@st.cache_data(show_spinner="Fitting probes…", max_entries=8)
def sweep(spec: str, n_seq: int):
    res = tokfsm_probe_sweep(ui.cached_model(spec), n_seq)
    return res.figure(title=f"TokFSM state probes on {n_seq} sequences"), res.rows


def main(spec: str, model, _) -> None:
    if not is_tokfsm_model(spec):  # from the model card, not the tokenizer (copy-mamba reads the same digits)
        st.info(C.plain_markdown(
            "This page fits probes on TokFSM state labels (the ground truth of the embedded TokFSM models); "
            f"{spec!r} is not a TokFSM model (its model card names another task, or it has none). Use "
            "interp.probes.probe_sweep in a notebook with your own labels."))
        return
    n = ui.widget(st.select_slider, "probe_n", "Sequences (33 tokens each)", [32, 64, 128, 256])
    st.caption("Each (hook, position) cell fits a logistic probe of the current FSM state on 75% of the sequences "
               "and scores it on the rest; selectivity = accuracy − control-task accuracy (Hewitt & Liang).")
    if not st.toggle("Run the sweep", key="probe_run"):
        return
    fig, rows = ui.need(sweep, spec, int(n))
    ui.chart(fig, "probes", width="content")  # the figure's own layout
    st.dataframe(pd.DataFrame(rows), hide_index=True)


ui.show(main, "Probes", need_prompt=False)
