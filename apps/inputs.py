"""What the app accepts (settings, folders, models, prompts, SAE / codebook folders) and text made safe to show. No
``streamlit``, no computation: the checks live in the library, whose ``ValueError`` s become :class:`InputError`
here (:func:`user_errors`), the one failure type the pages show as is."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interp import loading
from interp.app_cli import AppConfig, parse_config  # noqa: F401 - the app's settings
from interp.codebook import zoo as codebook_zoo
from interp.hooks import tokens as T
from interp.hooks.tokens import str_tokens  # noqa: F401 - used by the pages
from interp.sae.model import open_sae

DEFAULT_MODEL = loading.DEFAULT_MODEL


class InputError(ValueError):
    """A bad user input; the message is shown in the page as is."""


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its ``ValueError`` s (a library's message for a bad input) raised as :class:`InputError`."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except InputError:
            raise
        except ValueError as e:
            raise InputError(str(e)) from e
    return wrapped


inside = user_errors(loading.inside_roots)
default_model = user_errors(loading.default_model)
resolve_model_spec = user_errors(loading.resolve_model_spec)
validate_prompt = user_errors(T.check_prompt)
tokenize = user_errors(T.prompt_tokens)
load_sae = user_errors(open_sae)  # (folder, roots, model)
codebook_folder = user_errors(codebook_zoo.codebook_folder)  # (name or folder, roots)
load_codebook = user_errors(codebook_zoo.open_codebook_model)  # (folder, roots)
codebook_prompt = user_errors(codebook_zoo.codebook_prompt)  # (cb_model, page_model, tokens, text, max_tokens)
codebook_install_hint = codebook_zoo.install_hint


def codebook_recipes() -> list[str]:
    """Names of the embedded codebook models the toolkit can train (:mod:`interp.codebook.zoo`)."""
    return sorted(codebook_zoo.CODEBOOK_RECIPES)


def load_model(spec: str) -> Any:
    """:func:`interp.load` with failures turned into InputError (message shown to the user)."""
    try:
        model = loading.load(spec)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes a message
        hub = ("/" in spec and not Path(spec).expanduser().exists()) or "offline" in str(e).lower()
        hint = "\nHub ids need the network; this machine may be offline." if hub else ""
        raise InputError(f"Could not load model {spec!r}: {type(e).__name__}: {shorten(str(e))}{hint}") from e
    return model.eval()


def folder_mtime(folder: str | os.PathLike) -> float:
    """Latest modification time of a folder's own files (0 for a missing folder): the cache key of what was loaded
    from it."""
    path = Path(folder)
    return max((p.stat().st_mtime for p in path.iterdir()), default=0.0) if path.is_dir() else 0.0


def shorten(text: str, limit: int = 1200) -> str:
    """``text`` cut to about ``limit`` characters in the middle, so that its end (the hint) always survives."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return f"{text[:head]} … {text[-(limit - head):]}"


_INLINE_MARKUP = re.compile(r"([\\`*_\[\]<>~$|])")  # emphasis, code, links, HTML, strikethrough, math, tables
_LINE_MARKUP = re.compile(r"^(\d+)([.)])|^([#+=>-])")  # at a line's start: lists, headings, quotes, rules


def plain_markdown(text: str) -> str:
    """``text`` as Markdown that renders to exactly ``text`` (punctuation escaped, every line break kept), for
    Streamlit elements that always render Markdown (``st.error``, ``st.warning``)."""
    out = []
    for line in str(text).splitlines():
        line = _INLINE_MARKUP.sub(r"\\\1", line.strip())
        out.append(_LINE_MARKUP.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", line, count=1))
    return "  \n".join(out)
