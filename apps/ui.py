"""Streamlit glue shared by the pages: settings, the view state (mirrored in the URL query parameters so a link
reproduces it), the cached model and maps (library functions), and error display (:func:`attempt`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import streamlit as st

from interp import app_links as L
from interp.apps import inputs as C
from interp.attention import MapTooLargeError
from interp.attention.views import MapView, map_view, thumbnail_maps, warm_up
from interp.hooks.tokens import as_tokens
from interp.tasks.prompts import default_prompt

VIEW = "_view"  # session key of the view dict (survives page switches, unlike widget keys)
LINKED = "_linked"  # session key: view entries read from the URL that their widget has not checked yet
NOTES = "_link_notes"  # session key: what the URL held that was ignored, shown until dismissed
DEFAULTS = L.DEFAULTS  # query parameter -> default (interp.app_links)


def config() -> C.AppConfig:
    return C.parse_config(sys.argv[1:])


def view() -> dict[str, Any]:
    """The view dict, initialised once per session from the URL query parameters. A parameter this app does
    not know, or a value of the wrong type, is left out with a note (:func:`show_link_notes`)."""
    if VIEW not in st.session_state:
        v, linked, notes = L.parse_link(st.query_params.to_dict())
        if not v["model"]:
            try:
                v["model"], note = C.default_model(config().model)
                st.session_state["model_note"] = (v["model"], note)
            except C.InputError as e:
                st.session_state["model_note"] = ("", str(e))
        st.session_state[VIEW] = v
        st.session_state[LINKED] = linked
        st.session_state[NOTES] = notes
    return st.session_state[VIEW]


def set_view(**kw: Any) -> None:
    v = view()
    v.update(kw)
    for k in kw:
        st.session_state.pop(f"w_{k}", None)
        st.session_state.get(LINKED, set()).discard(k)
    sync_url()


def sync_url() -> None:
    """Write the non-default view entries to the URL (defaults are left out to keep links short)."""
    want = L.link_of(view())
    if st.query_params.to_dict() != want:
        st.query_params.from_dict(want)


def replace(name: str, value: Any, why: str) -> Any:
    """Set view entry ``name`` to ``value`` because its value is unusable (``why``); if that value came from
    the URL, say so in a note. Returns ``value``."""
    v = view()
    if name in st.session_state.get(LINKED, set()):
        st.session_state[NOTES].append(f"{name}={v.get(name)!r}: {why}; using {value!r}")
        st.session_state[LINKED].discard(name)
    v[name] = value
    return value


def _checked(name: str, val: Any, options: list | None, kw: dict[str, Any]) -> Any:
    """``val`` if the widget accepts it, else the value it falls back to (:func:`interp.app_links.check_value`),
    with a note when ``val`` came from the URL."""
    out, why = L.check_value(val, options, kw.get("min_value"), kw.get("max_value"))
    if why:
        return replace(name, out, why)
    st.session_state.get(LINKED, set()).discard(name)
    return val


def checked(name: str, options: list | None = None, **bounds: Any) -> Any:
    """View entry ``name`` as a :func:`widget` with these ``options`` / ``min_value`` / ``max_value`` would take it,
    for a page that reads the view without drawing that widget."""
    return _checked(name, view()[name], options, bounds)


def widget(fn: Callable[..., Any], name: str, label: str, options: list | None = None, **kw: Any) -> Any:
    """A widget bound to view entry ``name`` (and the URL); a value outside ``options`` / ``min_value`` /
    ``max_value`` falls back to the first option / the bound, noted if it came from the URL (and quietly when the
    options or bounds change under a value the widget holds)."""
    v = view()
    key = f"w_{name}"
    if key not in st.session_state:
        st.session_state[key] = _checked(name, v.get(name, DEFAULTS.get(name)), options, kw)
    elif (val := _checked(name, st.session_state[key], options, kw)) != st.session_state[key]:
        st.session_state[key] = val  # its options or bounds changed (another model, codebook, site or prompt)
    out = fn(label, options, key=key, **kw) if options is not None else fn(label, key=key, **kw)
    v[name] = out
    return out


def folder_choice(name: str, label: str, found: list[str], what: str, none: str, text_label: str) -> str:
    """A select box of the ``found`` folders (choosing one sets view entry ``name``; the key is ``{name}_found``),
    or a caption that none of ``what`` was found; then the text input bound to ``name``, whose value it returns."""
    if found:
        def chosen() -> None:
            if st.session_state[f"{name}_found"] != none:
                set_view(**{name: st.session_state[f"{name}_found"]})

        st.selectbox(label, [none] + found, key=f"{name}_found", on_change=chosen)
    else:
        st.caption(f"No {what} found under {', '.join(map(str, config().roots))}.")
    return widget(st.text_input, name, text_label)


def show_link_notes(box: Any) -> None:
    """The link values this session ignored (unknown settings, wrong types, out-of-range or unknown choices),
    as one warning in ``box`` with a button that dismisses it."""
    notes = st.session_state.get(NOTES)
    if not notes:
        return
    box.warning(C.plain_markdown("Ignored in the link:\n" + "\n".join(f"• {n}" for n in notes)))
    box.button("Dismiss", key="dismiss_link_notes", on_click=lambda: st.session_state[NOTES].clear())


def show_error(e: Exception) -> None:
    """A failure as a message in the page, never a traceback: its text as plain text (no Markdown), every line
    kept (the last one is usually the hint)."""
    text = str(e) if isinstance(e, C.InputError) else f"{type(e).__name__}: {C.shorten(str(e))}"
    st.error(C.plain_markdown(text))


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def cached_model(spec: str) -> Any:
    model = C.load_model(spec)
    warm_up(model)
    return model


def model_spec() -> tuple[str, str | None]:
    """(validated spec, note) of the model of the current view; raises InputError."""
    cfg = config()
    v = view()
    note_model, note = st.session_state.get("model_note", (None, None))
    if not v["model"] and note:
        raise C.InputError(note)
    return C.resolve_model_spec(v["model"], cfg.roots, cfg.model), (note if v["model"] == note_model else None)


def current(need_prompt: bool = True) -> tuple[str, Any, Any] | None:
    """(spec, model, tokens [1, L]) of the view, or None after showing why (bad model / prompt). The first model of
    a session gives the view its default prompt (:func:`interp.tasks.prompts.default_prompt`) unless one is set."""
    if (got := attempt(model_spec)) is None:
        return None
    spec, note = got
    if note:
        st.info(note)
    if (model := attempt(cached_model, spec)) is None:
        return None
    v = view()
    if v["prompt"] == "" and "prompt_set" not in st.session_state:
        v["prompt"] = default_prompt(spec, model)
    st.session_state["prompt_set"] = True
    tokens = prompt_tokens(model) if need_prompt else None
    return None if need_prompt and tokens is None else (spec, model, tokens)


def show(page: Callable[[str, Any, Any], None], title: str | None = None, need_prompt: bool = True) -> None:
    """A page: ``title``, then ``page(spec, model, tokens)`` once the view's model and prompt load (:func:`current`;
    tokens None without ``need_prompt``), else the message saying why they do not; a :class:`Stop` ends the page."""
    if title:
        st.title(title)
    if (got := current(need_prompt)) is not None:
        try:
            page(*got)
        except Stop:
            pass


def prompt_tokens(model: Any) -> Any:
    """The view's prompt as tokens [1, L], its warnings shown; or None after showing why it is refused."""
    v = view()

    def checked() -> Any:
        for w in C.validate_prompt(v["prompt"], config().max_tokens * 32):
            st.warning(w)
        return C.tokenize(model, v["prompt"], config().max_tokens)
    return attempt(checked)


def attempt(fn: Callable[..., Any], *args: Any, too_large: str = "This map", **kw: Any) -> Any:
    """``fn(*args, **kw)``, or None after showing its failure: a map over the memory budget as a warning (naming
    ``too_large``), anything else as an error (:func:`show_error`)."""
    try:
        return fn(*args, **kw)
    except MapTooLargeError as e:
        budget = f"{config().map_budget_bytes / 2**20:,.0f} MiB"
        st.warning(C.plain_markdown(f"{too_large} would exceed the memory budget ({budget}): {e}"))
    except Exception as e:  # noqa: BLE001 - every failure becomes a message
        show_error(e)
    return None


class Stop(Exception):
    """Ends the page where it is raised (:func:`show` catches it), once the page has said why (:func:`need`)."""


def need(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """:func:`attempt`, ending the page (:class:`Stop`) after showing the failure."""
    if (out := attempt(fn, *args, **kw)) is None:
        raise Stop
    return out


def chart(fig: Any, key: str, box: Any = st, **kw: Any) -> None:
    """A plotly figure in ``box`` (the page, a column), without the plotly logo."""
    box.plotly_chart(fig, key=key, config={"displaylogo": False}, **kw)


def key_of(tokens: Any) -> tuple[int, ...]:
    """The tokens [1, L] as a hashable cache key."""
    return tuple(int(t) for t in tokens[0])


def tensor_of(model: Any, key: tuple[int, ...]) -> Any:
    """A cache key back to tokens [1, L] for ``model`` (:func:`interp.hooks.tokens.as_tokens`)."""
    return as_tokens(model, [list(key)])


ANALYSES = {"view": map_view, "thumbs": thumbnail_maps}


@st.cache_data(show_spinner="Computing…", max_entries=64)
def cached(kind: str, spec: str, toks: tuple, **kw: Any) -> Any:
    """``ANALYSES[kind](model, tokens, **kw)`` of model ``spec`` on the tokens of cache key ``toks``."""
    model = cached_model(spec)
    return ANALYSES[kind](model, tensor_of(model, toks), **kw)


def interaction_map(spec: str, tokens: Any, **kw: Any) -> MapView:
    """The view's interaction map (:func:`interp.attention.views.map_view`), cached, within the app's budgets."""
    cfg = config()
    return cached("view", spec, key_of(tokens), all_rows_max=cfg.lrp_full_max, max_bytes=cfg.map_budget_bytes, **kw)


@st.cache_resource(show_spinner="Loading the SAE…", max_entries=4)
def cached_sae(spec: str, folder: str, mtime: float) -> Any:
    return C.load_sae(folder, config().roots, cached_model(spec))
