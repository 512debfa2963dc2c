"""Features: SAE latents (top examples, density, logit effects, a test box) and codebook codes."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from apps import compute as C
from apps import ui
from interp.attention.figures import token_highlight_html

NONE = "(type a folder below)"


@st.cache_data(show_spinner="Reading the latent…", max_entries=32)
def report(spec: str, folder: str, mtime: float, toks: tuple, corpus: str, latent: int):
    model = ui.cached_model(spec)
    sae = ui.cached_sae(spec, folder, mtime)
    return C.feature_report(model, sae, C.feature_corpus(model, ui.tensor_of(toks), corpus), latent)


def pick_sae(spec: str, model) -> tuple[str, float, object] | None:
    cfg = ui.config()
    found = [str(p) for p in C.find_saes(cfg.roots)]
    if found:
        def chosen() -> None:
            if st.session_state["sae_found"] != NONE:
                ui.set_view(sae=st.session_state["sae_found"])

        st.selectbox("SAEs found in the run folders", [NONE] + found, key="sae_found", on_change=chosen)
    else:
        st.caption(f"No SAE folders found under {', '.join(map(str, cfg.roots))}.")
    folder = ui.widget(st.text_input, "sae", "SAE folder (cfg.json + sae_weights.safetensors)")
    if not folder:
        st.info("Choose an SAE folder (inside the run folders) to browse its latents.")
        return None
    try:
        path = C.inside(folder, cfg.roots)
        if not path.exists():
            raise C.InputError(f"The SAE folder {folder} does not exist.")
        mtime = max((p.stat().st_mtime for p in path.iterdir()), default=0.0)
        return str(path), mtime, ui.cached_sae(spec, str(path), mtime)
    except Exception as e:  # noqa: BLE001
        ui.show_error(e)
        return None


def main() -> None:
    st.title("Features")
    tab_sae, tab_code = st.tabs(["SAE latents", "Codebook codes"])
    with tab_code:
        mod, why = C.backend("interp.codebook")
        st.info("Codebook codes are not available yet: " + (why or "the page lands with interp.codebook (#7)."))
    with tab_sae:
        sae_page()


def sae_page() -> None:
    mod, why = C.backend("interp.sae")
    if mod is None:
        st.info(f"SAE features are not available: {why}")
        return
    got = ui.current()
    if got is None:
        return
    spec, model, tokens = got
    picked = pick_sae(spec, model)
    if picked is None:
        return
    folder, mtime, sae = picked
    st.caption(f"hook `{sae.cfg.hook_name}` · d_sae {sae.cfg.d_sae} · {sae.cfg.architecture}")
    c1, c2 = st.columns(2)
    latent = ui.widget(c1.number_input, "latent", "Latent", min_value=0, max_value=sae.cfg.d_sae - 1)
    corpora = ["prompt", "tokfsm"] if C.is_tokfsm(model) else ["prompt"]
    corpus = ui.widget(c2.selectbox, "corpus", "Examples from", corpora,
                       format_func=lambda c: {"prompt": "the prompt", "tokfsm": "64 TokFSM sequences"}[c])
    try:
        r = report(spec, folder, mtime, ui.key_of(tokens), corpus, int(latent))
    except Exception as e:  # noqa: BLE001
        ui.show_error(e)
        return
    dens = r["density"]
    left, right = st.columns(2)
    with left:
        st.subheader(f"Latent {latent}: top examples")
        st.metric("density (fraction of tokens active)", f"{dens[int(latent)]:.4f}")
        if not r["examples"]:
            st.info("This latent never fires on the chosen text.")
        for ex in r["examples"]:
            st.html(token_highlight_html(ex.str_tokens, ex.activations, query=ex.focus,
                                         title=f"{ex.activation:.3f} at seq {ex.sequence}, pos {ex.position}"))
    with right:
        fig = go.Figure(go.Histogram(x=np.log10(np.maximum(dens, 1e-7)), nbinsx=40))
        fig.update_layout(title="Latent density (log10 fraction of tokens; 1e-7 = dead)", height=300,
                          xaxis_title="log10 density", yaxis_title="latents")
        st.plotly_chart(fig, key="density", config={"displaylogo": False})
        eff = r["effects"]
        if eff is None:
            st.info(f"No logit effects: {r['effects_error']}")
        else:
            names = [f"↓ {t!r}" for t in eff.bottom_tokens[0]] + [f"↑ {t!r}" for t in eff.top_tokens[0][::-1]]
            vals = np.concatenate([eff.bottom_values[0].numpy(), eff.top_values[0].numpy()[::-1]])
            bar = go.Figure(go.Bar(x=vals, y=names, orientation="h"))
            bar.update_layout(title="Direct logit effect (decoder row → unembedding)", height=420)
            st.plotly_chart(bar, key="effects", config={"displaylogo": False})
    st.subheader("Test box")
    text = ui.widget(st.text_input, "test", "Type text to see where the latent fires")
    if text:
        try:
            t = C.tokenize(model, text, ui.config().max_tokens)
            acts = C.latent_acts(model, ui.cached_sae(spec, folder, mtime), t, int(latent))
            st.html(token_highlight_html(C.str_tokens(model, t), acts, title=f"latent {latent}, max {acts.max():.3f}"))
        except Exception as e:  # noqa: BLE001
            ui.show_error(e)


main()
