"""Steering: baseline vs steered side by side (next-token distribution, generations, KL)."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from interp.apps import compute as C
from interp.apps import ui
from interp.lens import vocabulary


@st.cache_data(show_spinner="Steering…", max_entries=32)
def run(spec: str, toks: tuple, hook: str, src: str, scale: float, pos: str, tok: int, new: int,
        sae_folder: str, latent: int):
    model = ui.cached_model(spec)
    sae = None
    if src == "sae" and sae_folder:
        path = C.inside(sae_folder, ui.config().roots)
        sae = ui.cached_sae(spec, str(path), max((p.stat().st_mtime for p in path.iterdir()), default=0.0))
    iv = C.steering_intervention(model, hook, src, scale, pos, tok, sae, latent)
    return C.steer(model, ui.tensor_of(toks), iv, new)


def dist_figure(p0: np.ndarray, p1: np.ndarray, labels: list[str], k: int = 12) -> go.Figure:
    top = np.argsort(-(p0 + p1), kind="stable")[:k]
    names = [f"{i}:{labels[i]}" for i in top]
    fig = go.Figure([go.Bar(name="baseline", x=names, y=p0[top]), go.Bar(name="steered", x=names, y=p1[top])])
    fig.update_layout(barmode="group", title="Next-token distribution after the prompt", yaxis_title="probability",
                      height=360)
    return fig


def main() -> None:
    st.title("Steering")
    mod, why = C.backend("interp.steering")
    if mod is None:
        st.info(f"Steering is not available yet: {why}")
        return
    got = ui.current()
    if got is None:
        return
    spec, model, tokens = got
    hooks = C.hook_choices(model)
    v = ui.view()
    if v["steer_hook"] not in hooks:
        ui.replace("steer_hook", hooks[len(hooks) // 2], "not a residual-stream hook of this model")
    vocab = vocabulary(model)
    c = st.columns(5)
    src = ui.widget(c[0].selectbox, "steer_src", "Direction", ["token", "sae"],
                    format_func=lambda s: {"token": "a token's embedding", "sae": "an SAE latent (Features page)"}[s])
    hook = ui.widget(c[1].selectbox, "steer_hook", "Hook", hooks, disabled=src == "sae")
    if src == "token":
        tok = ui.widget(c[2].selectbox, "steer_tok", "Token", list(range(len(vocab))),
                        format_func=lambda i: f"{i}: {vocab[i]!r}")
    else:
        tok = 0
        c[2].caption(f"SAE `{v['sae'] or '(none)'}`, latent {v['latent']}")
    scale = ui.widget(c[3].slider, "scale", "Scale", min_value=-20.0, max_value=20.0, step=0.5)
    pos = ui.widget(c[4].selectbox, "steer_pos", "Positions", ["all", "last"])
    new = ui.widget(st.slider, "new", "Generated tokens", min_value=1, max_value=64)
    try:
        r = run(spec, ui.key_of(tokens), hook, src, float(scale), pos, int(tok), int(new), v["sae"], int(v["latent"]))
    except Exception as e:  # noqa: BLE001
        ui.show_error(e)
        return
    m1, m2, m3 = st.columns(3)
    m1.metric("KL(baseline ‖ steered), last position", f"{r.kl_last:.4f} nats")
    m2.metric("KL over edited positions (interp.steering.kl_cost)", f"{r.kl:.4f} nats")
    m3.metric("top-1 changed", "yes" if int(np.argmax(r.p_base)) != int(np.argmax(r.p_steer)) else "no")
    st.plotly_chart(dist_figure(r.p_base, r.p_steer, vocab), key="dist", config={"displaylogo": False})
    a, b = st.columns(2)
    a.subheader("Baseline")
    a.code(r.gen_base or "(nothing)", language=None)
    b.subheader("Steered")
    b.code(r.gen_steer or "(nothing)", language=None)


main()
