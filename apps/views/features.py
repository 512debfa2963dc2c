"""Features: SAE latents (top examples, density, logit effects, a test box) and codebook codes (the codes a
prompt selects, usage, top examples, similar codes, the TokFSM state of a code, forcing a code)."""

import streamlit as st

from interp.apps import inputs as C
from interp.apps import ui
from interp.attention.figures import token_highlight_html
from interp.codebook import (
    codebook_base_model, codebook_folder_mtime, codebook_hooks, codebook_index, embedded_codebook_models,
    find_codebook_models, forced_continuations,
)
from interp.codebook.figures import code_frequency_figure, codes_heatmap
from interp.sae import density_histogram, find_sae_folders, latent_report, latent_trace, logit_effects_figure
from interp.tasks.codes import code_view, task_corpus
from interp.tasks.tokfsm import is_tokfsm_model

NONE = "(type a folder below)"
CB_NONE = "(type a name or folder below)"


@st.cache_data(show_spinner="Reading the latent…", max_entries=32)
def report(spec: str, folder: str, mtime: float, toks: tuple, corpus: str, latent: int):
    """:func:`interp.sae.latent_report` of the latent on the prompt or on TokFSM sequences
    (:func:`interp.tasks.codes.task_corpus`)."""
    model = ui.cached_model(spec)
    sequences, _ = task_corpus(ui.tensor_of(model, toks), tokfsm=corpus == "tokfsm")
    return latent_report(model, sequences, sae=ui.cached_sae(spec, folder, mtime), latent=latent)


def pick_sae(spec: str) -> tuple[str, float, object]:
    cfg = ui.config()
    folder = ui.folder_choice("sae", "SAEs found in the run folders", [str(p) for p in find_sae_folders(cfg.roots)],
                              "SAE folders", NONE, "SAE folder (cfg.json + sae_weights.safetensors)")
    if not folder:
        st.info("Choose an SAE folder (inside the run folders) to browse its latents.")
        raise ui.Stop
    path = ui.need(C.inside, folder, cfg.roots)
    return str(path), C.folder_mtime(path), ui.need(ui.cached_sae, spec, str(path), C.folder_mtime(path))


def main() -> None:
    st.title("Features")
    tab_sae, tab_code = st.tabs(["SAE latents", "Codebook codes"])
    with tab_sae:
        ui.show(sae_page)
    with tab_code:
        ui.show(codebook_page)


def sae_page(spec: str, model, tokens) -> None:
    folder, mtime, sae = pick_sae(spec)
    st.caption(f"hook `{sae.cfg.hook_name}` · d_sae {sae.cfg.d_sae} · {sae.cfg.architecture}")
    c1, c2 = st.columns(2)
    latent = ui.widget(c1.number_input, "latent", "Latent", min_value=0, max_value=sae.cfg.d_sae - 1)
    corpora = ["prompt", "tokfsm"] if is_tokfsm_model(spec) else ["prompt"]
    corpus = ui.widget(c2.selectbox, "corpus", "Examples from", corpora,
                       format_func=lambda c: {"prompt": "the prompt", "tokfsm": "64 TokFSM sequences"}[c])
    r = ui.need(report, spec, folder, mtime, ui.key_of(tokens), corpus, int(latent))
    dens = r.density
    left, right = st.columns(2)
    with left:
        st.subheader(f"Latent {latent}: top examples")
        st.metric("density (fraction of tokens active)", f"{dens[int(latent)]:.4f}")
        if not r.examples:
            st.info("This latent never fires on the chosen text.")
        for ex in r.examples:
            st.html(token_highlight_html(ex.str_tokens, ex.activations, query=ex.focus,
                                         title=f"{ex.activation:.3f} at seq {ex.sequence}, pos {ex.position}"))
    with right:
        fig = density_histogram(dens, "Latent density (1e-7 = dead)", eps=1e-7, nbins=40).update_layout(height=300)
        ui.chart(fig, "density")
        if (eff := r.effects) is None:
            st.info(f"No logit effects: {r.effects_error}")
        else:
            ui.chart(logit_effects_figure(eff), "effects")
    st.subheader("Test box")
    text = ui.widget(st.text_input, "test", "Type text to see where the latent fires")
    t = text and ui.attempt(C.tokenize, model, text, ui.config().max_tokens)
    acts = None if t is None or not text else ui.attempt(lambda: latent_trace(model, t, sae=sae, latent=latent).numpy())
    if acts is not None:
        st.html(token_highlight_html(C.str_tokens(model, t), acts, title=f"latent {latent}, max {acts.max():.3f}"))


@st.cache_resource(show_spinner="Loading the codebook model…", max_entries=2)
def cached_codebook_model(folder: str, mtime: float):
    return C.load_codebook(folder, ui.config().roots)


@st.cache_data(show_spinner=False, max_entries=16)
def codebook_tokens(spec: str, folder: str, mtime: float, toks: tuple, text: str) -> tuple[tuple, str | None]:
    model = ui.cached_model(spec)
    t, note = C.codebook_prompt(cached_codebook_model(folder, mtime), model, ui.tensor_of(model, toks), text,
                                ui.config().max_tokens, tokfsm=is_tokfsm_model(codebook_base_model(folder)))
    return ui.key_of(t), note


@st.cache_data(show_spinner="Reading the code…", max_entries=32)
def code_report(folder: str, mtime: float, toks: tuple, site: str, code: int, group: int):
    """:func:`interp.tasks.codes.code_view` of the code (on TokFSM sequences for a TokFSM codebook model)."""
    model = cached_codebook_model(folder, mtime)
    return code_view(model, ui.tensor_of(model, toks), hook=site, code=code, group=group,
                     tokfsm=is_tokfsm_model(codebook_base_model(folder)))


@st.cache_data(show_spinner="Generating…", max_entries=32)
def forced(folder: str, mtime: float, toks: tuple, site: str, code: int, group: int, n: int):
    """(baseline token strings, forced token strings, whether the forced ids differ)."""
    model = cached_codebook_model(folder, mtime)
    g0, g1 = forced_continuations(model, ui.tensor_of(model, toks), hook=site, code=code, max_new_tokens=n, group=group)
    return C.str_tokens(model, g0), C.str_tokens(model, g1), g0 != g1


def pick_codebook() -> tuple[str, float] | None:
    cfg = ui.config()
    embedded = embedded_codebook_models()
    missing = [n for n in C.codebook_recipes() if n not in embedded]
    if missing:
        st.caption("Embedded codebook models not installed yet: " + "; ".join(
            f"{n} ({C.codebook_install_hint(n)})" for n in missing))
    choice = ui.folder_choice("cb", "Codebook models (embedded, and found in the run folders)",
                              embedded + [str(p) for p in find_codebook_models(cfg.roots)], "codebook models",
                              CB_NONE, "Codebook model: an embedded name or a folder holding codebooks.json")
    if not choice:
        hint = f"; or install an embedded one: {C.codebook_install_hint(missing[0])}" if missing else ""
        st.info("Choose a codebook model (an embedded name, or a folder written by "
                f"interp.codebook.save_codebook_model inside the run folders{hint}) to browse its codes.")
        return None
    path = ui.attempt(C.codebook_folder, choice, cfg.roots)
    return None if path is None else (str(path), codebook_folder_mtime(path))


def codebook_page(spec: str, _, tokens) -> None:
    v = ui.view()
    if (picked := pick_codebook()) is None:
        return
    folder, mtime = picked
    sites, toks, note = ui.need(lambda: (codebook_hooks(cached_codebook_model(folder, mtime)),
                                         *codebook_tokens(spec, folder, mtime, ui.key_of(tokens), v["prompt"])))
    base = codebook_index(folder).get("base")
    st.caption(f"{len(sites)} codebook(s) on {'`' + base + '`' if base else 'the model saved in the folder'}; "
               f"everything on this tab runs the codebook model (the page's model is `{spec}`).")
    if note:
        st.info(note)
    c1, c2, c3, c4 = st.columns(4)
    site = ui.widget(c1.selectbox, "cb_site", "Codebook site", list(sites))
    info = sites[site]
    code = ui.widget(c2.number_input, "cb_code", f"Code (0..{info['n_codes'] - 1})", min_value=0,
                     max_value=info["n_codes"] - 1)
    group = ui.widget(c3.number_input, "cb_group", "Head (group)", min_value=0, max_value=info["n_groups"] - 1,
                      disabled=info["n_groups"] == 1)
    groups = f" · {info['n_groups']} groups" if info["n_groups"] > 1 else ""
    c4.caption(f"{info['n_codes']} codes · k = {info['k']}{groups}")
    cv = ui.need(code_report, folder, mtime, toks, site, int(code), int(group))
    r, corpus, code = cv.report, cv.corpus_name, int(code)

    st.subheader("Codes on the prompt")
    ui.chart(codes_heatmap(r.prompt_ids.numpy(), cv.prompt_str_tokens, code, site), "cb_codes")
    at = cv.positions
    st.caption(f"code {code} is selected at positions {at}" if at else f"code {code} is not selected on the prompt")

    st.subheader(f"Usage on {corpus}")
    for box, (label, value) in zip(st.columns(4), cv.usage_summary().items()):
        box.metric(label, value)
    left, right = st.columns(2)
    ui.chart(code_frequency_figure(r.freq, code, site), "cb_freq", left)
    right.dataframe(cv.usage_table(), hide_index=True)

    left, right = st.columns(2)
    with left:
        st.subheader(f"Code {code}: top examples")
        if not r.examples:
            st.info(f"Code {code} is never selected on {corpus}.")
        for ex, ex_strs in zip(r.examples, cv.example_str_tokens):
            st.html(token_highlight_html(ex_strs, ex["fires"], query=len(ex_strs) - 1,
                                         title=f"seq {ex['seq']}, pos {ex['pos']}, slot {ex['slot']}"))
    with right:
        st.subheader("Similar codes")
        st.dataframe(cv.similar_table(), hide_index=True)
        if cv.states is not None:
            st.subheader("TokFSM state")
            st.caption(cv.state_note())
            if cv.states:
                st.dataframe(cv.states, hide_index=True)

    st.subheader("Force this code")
    new = ui.widget(st.slider, "cb_new", "Generated tokens", min_value=1, max_value=32)
    base_strs, forced_strs, differs = ui.need(forced, folder, mtime, toks, site, code, int(group), int(new))
    a, b = st.columns(2)
    a.markdown("**Baseline**")
    a.code(" ".join(base_strs) or "(nothing)", language=None)
    b.markdown(f"**Code {code} forced at {site}, last position**")
    b.code(" ".join(forced_strs) or "(nothing)", language=None)
    st.caption("The forced continuation differs from the baseline." if differs
               else "Forcing this code does not change the greedy continuation.")


main()
