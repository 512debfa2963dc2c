"""What the app accepts (settings, folders, models, prompts, SAE / codebook folders) and text made safe to show. No
``streamlit``, no computation: the checks live in the library, whose ``ValueError`` s become :class:`InputError`
here (:func:`user_errors`), the one failure type the pages show as is."""

from __future__ import annotations

import argparse
import functools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp import loading
from interp.codebook import zoo as codebook_zoo
from interp.data.copying import copy_prompt
from interp.hooks import tokens as T
from interp.hooks.tokenizer import DigitTokenizer
from interp.hooks.tokens import str_tokens  # noqa: F401 - used by the pages
from interp.sae.model import open_sae
from interp.tasks.tokfsm import tokfsm_prompt_text
from interp.zoo import model_task

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


@dataclass
class AppConfig:
    """Operator settings. ``roots``: folders the app may read models / SAEs from (resolved); ``max_tokens``: prompt
    cap; ``map_budget_bytes``: memory budget of one interaction map; ``pool_above``: prompts longer than this get a
    pooled overview; ``thumb_tokens``: for those, thumbnails use this many leading tokens (exact for causal maps:
    the top-left block of the full map); ``lrp_full_max``: longer prompts get only some LRP rows."""

    model: str | None = None
    roots: list[Path] = field(default_factory=list)
    max_tokens: int = 2048
    map_budget_bytes: int = 2 * 2**30
    pool_above: int = 256
    thumb_tokens: int = 128
    lrp_full_max: int = 48


def parse_config(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> AppConfig:
    """Settings from ``argv`` (``--model``, ``--roots A:B``, ``--max-tokens``, ``--map-budget-mb``, ``--pool-above``)
    over the environment (``INTERP_APP_MODEL``, ``INTERP_APP_ROOTS``, ``INTERP_APP_MAX_TOKENS``,
    ``INTERP_APP_MAP_BUDGET_MB``, ``INTERP_APP_POOL_ABOVE``). Unknown arguments are ignored (Streamlit and pytest put
    their own in ``sys.argv``)."""
    env = dict(os.environ) if env is None else env
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", default=env.get("INTERP_APP_MODEL"))
    p.add_argument("--roots", default=env.get("INTERP_APP_ROOTS"))
    p.add_argument("--max-tokens", type=int, default=int(env.get("INTERP_APP_MAX_TOKENS", 2048)))
    p.add_argument("--map-budget-mb", type=float, default=float(env.get("INTERP_APP_MAP_BUDGET_MB", 2048)))
    p.add_argument("--pool-above", type=int, default=int(env.get("INTERP_APP_POOL_ABOVE", 256)))
    a, _ = p.parse_known_args(list(argv or []))
    roots = [Path(r) for r in (a.roots.split(os.pathsep) if a.roots else [])] or \
        [Path.cwd() / "runs", Path.cwd() / "models"]
    return AppConfig(model=a.model or None, roots=[r.expanduser().resolve() for r in roots],
                     max_tokens=max(1, a.max_tokens), map_budget_bytes=int(a.map_budget_mb * 2**20),
                     pool_above=max(16, a.pool_above))


def load_model(spec: str) -> Any:
    """:func:`interp.load` with failures turned into InputError (message shown to the user)."""
    try:
        model = loading.load(spec)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes a message
        hub = ("/" in spec and not Path(spec).expanduser().exists()) or "offline" in str(e).lower()
        hint = "\nHub ids need the network; this machine may be offline." if hub else ""
        raise InputError(f"Could not load model {spec!r}: {type(e).__name__}: {shorten(str(e))}{hint}") from e
    return model.eval()


def model_summary(model: Any) -> dict[str, Any]:
    cfg = model.cfg
    return {"name": getattr(cfg, "name", None) or getattr(cfg, "model_name", "?"),
            "family": getattr(cfg, "family", None) or getattr(cfg, "original_architecture", "transformer"),
            "layers": cfg.n_layers, "d_model": cfg.d_model, "vocab": cfg.d_vocab,
            "hook points": len(model.hook_dict)}


def default_prompt(spec: str, model: Any = None) -> str:
    """The prompt a model starts with, by the task on its model card: a TokFSM prompt, a copying prompt; with no
    card, the symbols of a digit tokenizer in order, else an English sentence."""
    task = model_task(spec)
    if task == "tokfsm":
        return tokfsm_prompt_text(16)
    if task == "copy":
        return copy_prompt(12)
    if isinstance(getattr(model, "tokenizer", None), DigitTokenizer):
        return model.tokenizer.bos_token + ("".join(model.tokenizer.symbols) * 2)[:20]
    return "The cat sat on the mat because it was tired."


def folder_mtime(folder: str | os.PathLike) -> float:
    """Latest modification time of a folder's own files: the cache key of what was loaded from it."""
    return max((p.stat().st_mtime for p in Path(folder).iterdir()), default=0.0)


@user_errors
def sae_folder(folder: str, roots: Sequence[Path]) -> Path:
    """An existing SAE folder inside ``roots``."""
    path = loading.inside_roots(folder, roots)
    if not path.exists():
        raise InputError(f"The SAE folder {folder} does not exist.")
    return path


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
