"""Patching (:mod:`interp.tasks.patching`): a layer × position heat map of activation / attribution patching on
prompt pairs (the built-in TokFSM task, or two typed prompts), per-component patching and direct logit attribution."""

import streamlit as st

from interp.apps import inputs as C
from interp.apps import ui
from interp.patching import patch_sites
from interp.tasks.patching import DIRECTIONS, METHODS, METRICS, TASKS, patching_pairs, patching_view
from interp.tasks.tokfsm import is_tokfsm_model


@st.cache_data(show_spinner="Patching…", max_entries=16)
def run(spec: str, pairs: dict, **kw):
    """:func:`interp.tasks.patching.patching_view` of the pairs :func:`~interp.tasks.patching.patching_pairs` builds."""
    model = ui.cached_model(spec)
    return patching_view(model, patching_pairs(model, max_tokens=ui.config().max_tokens, **pairs), **kw)


def main(spec: str, model, _) -> None:
    c = st.columns([2, 1, 1, 1])
    tasks = list(TASKS) if is_tokfsm_model(spec) else ["typed"]  # the built-in task needs a TokFSM model
    pairs = {"task": ui.widget(c[0].radio, "patch_task", "Prompt pairs", tasks, format_func=TASKS.get,
                               horizontal=True)}
    if pairs["task"] == "tokfsm":
        pairs["n"] = int(ui.widget(c[1].select_slider, "patch_n", "Pairs", [2, 4, 8, 16, 27]))
    else:
        a, b, d, e = st.columns([3, 3, 1, 1])
        pairs.update(clean=ui.widget(a.text_input, "patch_clean", "Clean prompt"),
                     corrupted=ui.widget(b.text_input, "patch_corr", "Corrupted prompt (same token length)"),
                     answer=ui.widget(d.text_input, "patch_ans", "Answer token"),
                     wrong=ui.widget(e.text_input, "patch_wrong", "Wrong token"))
    c = st.columns(4)
    site = ui.widget(c[0].selectbox, "patch_site", "Site", patch_sites(model))
    metric = ui.widget(c[1].selectbox, "patch_metric", "Metric", list(METRICS), format_func=METRICS.get)
    direction = ui.widget(c[2].selectbox, "patch_dir", "Direction", list(DIRECTIONS), format_func=DIRECTIONS.get)
    method = ui.widget(c[3].selectbox, "patch_method", "Method", list(METHODS), format_func=METHODS.get)
    c = st.columns(3)
    steps = ui.widget(c[0].slider, "patch_steps", "Integration steps", min_value=2, max_value=32,
                      disabled=method != "ig")
    comp = ui.widget(c[1].checkbox, "patch_comp", "Per-component view (activation patching)")
    dla = ui.widget(c[2].checkbox, "patch_dla", "Direct logit attribution (clean prompts)")
    if pairs["task"] == "typed" and not (pairs["clean"] and pairs["corrupted"]):
        return st.info("Type a clean and a corrupted prompt of the same token length, and the answer tokens.")
    view = ui.need(C.user_errors(run), spec, pairs, hook=site, metric=metric, direction=direction, method=method,
                   steps=int(steps), components=comp, dla=dla)
    ui.chart(view.figure, "patch")
    st.caption(view.caption)
    for fig, key in ((view.component_figure, "patch_components"), (view.dla_figure, "patch_dla")):
        if fig is not None:
            ui.chart(fig, key)


ui.show(main, "Patching", need_prompt=False)
