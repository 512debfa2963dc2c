"""Entry point of the Streamlit app (package ``interp.apps``): ``interp app [--model NAME]`` or ``streamlit run
apps/app.py -- --model NAME``. Registers the pages (``views/``); the view state and the URL live in :mod:`.ui`."""

import streamlit as st

from interp.apps import ui

st.set_page_config(page_title="interp", layout="wide")

# The default page is served at the root URL only (Streamlit gives it the pathname ""), so /model would be "Page
# not found": the root gets a hidden copy of the model page, and the listed one keeps its own URL.
PAGES = [
    st.Page("views/model.py", title="Model & prompt", url_path="start", default=True, visibility="hidden"),
    st.Page("views/model.py", title="Model & prompt", url_path="model"),
    st.Page("views/interactions.py", title="Token interactions", url_path="interactions"),
    st.Page("views/lens.py", title="Logit lens", url_path="lens"),
    st.Page("views/probes.py", title="Probes", url_path="probes"),
    st.Page("views/features.py", title="Features", url_path="features"),
    st.Page("views/steering.py", title="Steering", url_path="steering"),
    st.Page("views/patching.py", title="Patching", url_path="patching"),
    st.Page("views/export.py", title="Export", url_path="export"),
]
nav = st.navigation(PAGES)
v = ui.view()
with st.sidebar:
    st.caption(f"model: `{v['model'] or '(default)'}`")
    n = len(v["prompt"])
    st.caption(f"prompt: {n:,} characters" if n else "prompt: (default)")
notes = st.container()  # above the page: what the link held that was ignored (filled once the page has run)
try:
    nav.run()
finally:
    ui.show_link_notes(notes)
    ui.sync_url()
