"""Steering: baseline vs steered side by side (next-token distribution, generations, KL)."""

import streamlit as st

from interp.apps import inputs as C
from interp.apps import ui
from interp.hooks.hook_points import residual_hooks
from interp.lens import vocabulary
from interp.steering import (
    Direction, Intervention, SAELatents, compare_steering, distribution_figure, token_direction,
)


@st.cache_data(show_spinner="Steering…", max_entries=32)
def run(spec: str, toks: tuple, hook: str, src: str, scale: float, pos: str, tok: int, new: int,
        sae_folder: str, latent: int):
    """The steering comparison (:func:`interp.steering.compare_steering`) of adding ``scale`` × the unit embedding
    of token ``tok`` at ``hook`` (source "token") or an SAE latent's decoder row (source "sae")."""
    model = ui.cached_model(spec)
    if src == "sae":
        if not sae_folder:
            raise C.InputError("Choose an SAE on the Features page first (steering with a latent needs one).")
        path = C.inside(sae_folder, ui.config().roots)
        sae = ui.cached_sae(spec, str(path), C.folder_mtime(path))
        iv = Intervention(SAELatents(sae, int(latent)), sae.cfg.hook_name, "add", float(scale), positions=pos)
    else:
        iv = Intervention(Direction(token_direction(model, tok), label=f"embedding of token {tok}"), hook, "add",
                          float(scale), positions=pos)
    return compare_steering(model, ui.tensor_of(model, toks), intervention=iv, max_new_tokens=new)


def main(spec: str, model, tokens) -> None:
    hooks = residual_hooks(model)
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
    r = ui.need(run, spec, ui.key_of(tokens), hook, src, float(scale), pos, int(tok), int(new), v["sae"],
                int(v["latent"]))
    m1, m2, m3 = st.columns(3)
    m1.metric("KL(baseline ‖ steered), last position", f"{r.kl_last:.4f} nats")
    m2.metric("KL over edited positions (interp.steering.kl_cost)", f"{r.kl:.4f} nats")
    m3.metric("top-1 changed", "yes" if r.top1_changed else "no")
    ui.chart(distribution_figure(r.p_base, r.p_steer, vocab), "dist")
    for box, title, gen in zip(st.columns(2), ("Baseline", "Steered"), (r.gen_base, r.gen_steer)):
        box.subheader(title)
        box.code("".join(C.str_tokens(model, gen)) or "(nothing)", language=None)


ui.show(main, "Steering")
