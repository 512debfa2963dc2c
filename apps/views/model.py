"""Model & prompt: pick any model interp.load accepts, type or sample a prompt, see its tokens."""

import streamlit as st

from interp.apps import inputs as C
from interp.apps import ui
from interp.tasks.tokfsm import is_tokfsm_model, tokfsm_prompt_text
from interp.attention.figures import token_highlight_html
from interp.hooks.protocol import describe
from interp.zoo import list_models, model_card


def main() -> None:
    st.title("Model & prompt")
    cfg = ui.config()
    installed = list_models()
    ui.widget(st.text_input, "model", "Model",
              help="an embedded name (" + (", ".join(installed) or "none installed") + "), a model folder inside "
                   f"the allowed roots ({', '.join(map(str, cfg.roots))}), or a hub id (needs the network)")
    st.caption("Embedded models: " + (", ".join(f"`{m}`" for m in installed) or "none installed yet"))
    if (got := ui.current(need_prompt=False)) is None:
        return
    spec, model, _ = got
    st.write(describe(model))
    if is_tokfsm_model(spec):  # from the model card: TokFSM tools only for TokFSM models
        c1, c2 = st.columns([1, 3])
        n_states = c1.number_input("States", min_value=1, max_value=1000, value=16, key="n_states")
        if c2.button("Sample a TokFSM prompt"):
            ui.set_view(prompt=tokfsm_prompt_text(int(n_states), seed=int(st.session_state.get("seed", 0))))
            st.session_state["seed"] = st.session_state.get("seed", 0) + 1
            st.rerun()
    ui.widget(st.text_area, "prompt", "Prompt", height=120,
              help=f"at most {cfg.max_tokens:,} tokens; the embedded TokFSM and copying models read digits "
                   "(copying: 0-9a-f) and special tokens such as '<bos>'")
    if (tokens := ui.prompt_tokens(model)) is None:
        return
    toks = C.str_tokens(model, tokens)
    st.success(f"{len(toks):,} tokens")
    shown = toks[:512]
    st.html(token_highlight_html(shown, [0.0] * len(shown))
            + (f"<p>… and {len(toks) - 512:,} more</p>" if len(toks) > 512 else ""))
    if spec in installed:
        try:
            st.json(model_card(spec).get("metrics", {}), expanded=False)
        except Exception:  # noqa: BLE001 - a card is optional
            pass


main()
