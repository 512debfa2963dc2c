"""The app's view as link parameters: every setting a page keeps in the URL (name, default, type), read from a
query string with a note for each value that is ignored, written back without the defaults, and a value checked
against a widget's options or bounds. No ``streamlit`` here: ``apps/ui.py`` keeps the state and calls these.

    view, linked, notes = parse_link({"layer": "2", "rollout": "maybe", "zoom": "3"})
    # view["layer"] == 2; notes: "rollout='maybe': not true or false; using False", "zoom='3': this app has no …"
    link_of(view)                                  # {"layer": "2"}: the non-default entries, as strings
    check_value(7, options=[0, 1, 2])              # (0, "not one of 0..2")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULTS", "STREAMLIT_PARAMS", "parse_link", "link_of", "coerce", "check_value", "describe_options"]

STREAMLIT_PARAMS = ("embed", "embed_options")  # query parameters Streamlit itself reads
#: query parameter -> default (the type of the default is the type of the parameter), page by page
DEFAULTS: dict[str, Any] = {
    "model": "", "prompt": "", "source": "hidden", "layer": 0, "agg": "mean_abs", "ch": -1, "norm": "raw",
    "q": -1, "rollout": False, "sort": "mass", "win": 0,
    "lens_value": "top", "lens_start": 0, "lens_len": 64, "lens_pos": -1,
    "sae": "", "latent": 0, "corpus": "prompt", "test": "",
    "steer_src": "token", "steer_hook": "", "steer_tok": 0, "scale": 4.0, "steer_pos": "all", "new": 12,
    "probe_n": 64, "exp": "interaction map",
    "cb": "", "cb_site": "", "cb_code": 0, "cb_group": 0, "cb_new": 8,
    "patch_task": "tokfsm", "patch_n": 8, "patch_clean": "", "patch_corr": "", "patch_ans": "", "patch_wrong": "",
    "patch_site": "resid_pre", "patch_metric": "logit_diff", "patch_dir": "denoise", "patch_method": "activation",
    "patch_steps": 8, "patch_comp": False, "patch_dla": False,
}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce(raw: Any, default: Any) -> Any:
    """A query-parameter string as the type of ``default``; ValueError saying what it should be."""
    text = str(raw)
    if isinstance(default, bool):
        if text.lower() not in TRUE + FALSE:
            raise ValueError("not true or false")
        return text.lower() in TRUE
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError("not a whole number" if isinstance(default, int) else "not a number") from None


def parse_link(params: Mapping[str, Any], defaults: Mapping[str, Any] = DEFAULTS) -> tuple[dict, set, list[str]]:
    """(view: the defaults with the parameters' values, linked: the names read from ``params``, notes: one line per
    parameter left out, an unknown name or a value of the wrong type)."""
    view, linked, notes = dict(defaults), set(), []
    for k, raw in params.items():
        if k not in defaults:
            if k not in STREAMLIT_PARAMS:
                notes.append(f"{k}={raw!r}: this app has no such setting")
            continue
        try:
            view[k] = coerce(raw, defaults[k])
            linked.add(k)
        except ValueError as e:
            notes.append(f"{k}={raw!r}: {e}; using {defaults[k]!r}")
    return view, linked, notes


def link_of(view: Mapping[str, Any], defaults: Mapping[str, Any] = DEFAULTS) -> dict[str, str]:
    """The view's entries that differ from their defaults, as query-parameter strings (short links)."""
    return {k: str(view[k]) for k in defaults if view.get(k) != defaults[k]}


def describe_options(options: Sequence) -> str:
    """A short description of a widget's options for a note: "0..3", or the first few."""
    options = list(options)
    if options and all(isinstance(o, int) for o in options) and options == list(range(options[0], options[-1] + 1)):
        return f"{options[0]}..{options[-1]}"
    shown = ", ".join(map(str, options[:8]))
    return shown + (", …" if len(options) > 8 else "")


def check_value(value: Any, options: Sequence | None = None, min_value: Any = None,
                max_value: Any = None) -> tuple[Any, str | None]:
    """(the value a widget with these ``options`` / bounds takes for ``value``, why it differs or None): outside the
    options, the first option; below or above a bound, that bound."""
    if options is not None and value not in options:
        return options[0], f"not one of {describe_options(options)}"
    if min_value is not None and value is not None and value < min_value:
        return min_value, f"below the minimum {min_value}"
    if max_value is not None and value is not None and value > max_value:
        return max_value, f"above the maximum {max_value}"
    return value, None
