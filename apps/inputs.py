"""What the app accepts: its settings, the folders it may read, models, prompts, SAE and codebook folders checked
before use, and text made safe to show. No ``streamlit`` here, and no computation: every number a page shows comes
from a library function. Every user-facing failure is an :class:`InputError` whose message is shown as is.
"""

from __future__ import annotations

import argparse
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp.codebook import check_codebook_folder, embedded_codebook_models, load_codebook_model
from interp.codebook.train import INDEX_FILE
from interp.data.copying import copy_prompt
from interp.data.tokfsm import DigitTokenizer
from interp.hooks.tokens import as_tokens, same_vocabulary
from interp.tasks.tokfsm import tokfsm_prompt_text
from interp.zoo import WEIGHTS_DIR, list_models, model_task

DEFAULT_MODEL = "tokfsm-mamba"


class InputError(ValueError):
    """A bad user input; the message is shown in the page as is."""


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


def inside(path: str | os.PathLike, roots: Sequence[Path]) -> Path:
    """``path`` resolved (symlinks followed), if it lies inside one of ``roots``; else InputError."""
    p = Path(path).expanduser().resolve()
    for r in roots:
        r = Path(r).resolve()
        if p == r or r in p.parents:
            return p
    shown = ", ".join(str(r) for r in roots) or "(none configured)"
    raise InputError(f"{path} is outside the folders this app may read ({shown}). "
                     "Start the app with --roots to allow another folder.")


def _check_name(text: str, what: str) -> str:
    text = (text or "").strip()
    if any(ord(c) < 32 for c in text) or len(text) > 500:
        raise InputError(f"The {what} name holds control characters or is too long.")
    return text


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
def default_model(requested: str | None = None) -> tuple[str, str | None]:
    """(model spec, note): ``requested`` if given, else the embedded ``tokfsm-mamba``, else the first installed
    embedded model (the note says why)."""
    if requested:
        return requested, None
    installed = list_models()
    if DEFAULT_MODEL in installed:
        return DEFAULT_MODEL, None
    if installed:
        return installed[0], (f"The default embedded model {DEFAULT_MODEL!r} is not installed yet "
                              f"(train it with `interp train {DEFAULT_MODEL} --install`); showing "
                              f"{installed[0]!r} instead.")
    raise InputError("No embedded model is installed and no --model was given: train one with "
                     "`interp train tokfsm-mamba --install` or start the app with --model FOLDER.")


def resolve_model_spec(spec: str, roots: Sequence[Path], cli_model: str | None = None) -> str:
    """Validate a model name typed by the user -> the string handed to :func:`interp.load`.

    Embedded names pass. An existing path must lie inside ``roots`` (or be the folder given with ``--model``). A
    string that looks like a path (``/``, ``.``, ``~`` first, or ``..`` in it) but does not exist is refused;
    ``owner/name`` and bare names go to ``interp.load`` as hub ids / TransformerLens names (they need the network)."""
    if not (spec or "").strip():
        raise InputError("Enter a model: an embedded name, a folder inside the allowed roots, or a hub id.")
    spec = _check_name(spec, "model")
    if spec in list_models(include_missing=True):
        if spec not in list_models():
            raise InputError(f"The embedded model {spec!r} is not installed yet: train it with "
                             f"`interp train {spec} --install`.")
        return spec
    p = Path(spec).expanduser()
    if cli_model and p.exists() and Path(cli_model).expanduser().exists() and \
            p.resolve() == Path(cli_model).expanduser().resolve():
        return str(p.resolve())
    if p.exists():
        folder = inside(p, roots)
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise InputError(f"{spec} is not a model folder (it needs a config.json and weights).")
        return str(folder)
    if spec.startswith(("/", ".", "~")) or ".." in Path(spec).parts or spec.count("/") > 1 or "\\" in spec:
        raise InputError(f"The model path {spec!r} does not exist.")
    return spec


def load_model(spec: str) -> Any:
    """:func:`interp.load` with failures turned into InputError (message shown to the user)."""
    import interp

    try:
        model = interp.load(spec)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes a message
        hub = ("/" in spec and not Path(spec).expanduser().exists()) or "offline" in str(e).lower()
        hint = "\nHub ids need the network; this machine may be offline." if hub else ""
        raise InputError(f"Could not load model {spec!r}: {type(e).__name__}: {shorten(str(e))}{hint}") from e
    return model.eval()


def model_summary(model: Any) -> dict[str, Any]:
    cfg = model.cfg
    return {"name": getattr(cfg, "name", None) or getattr(cfg, "model_name", "?"),
            "family": getattr(cfg, "family", None) or getattr(cfg, "original_architecture", "transformer"),
            "layers": cfg.n_layers, "d_model": cfg.d_model, "vocab": cfg.d_vocab if hasattr(cfg, "d_vocab")
            else cfg.vocab_size, "hook points": len(model.hook_dict)}


def hook_choices(model: Any) -> list[str]:
    """Residual-stream hooks for steering: hook_embed, then resid_pre/post of every block."""
    out = ["hook_embed"] + [f"blocks.{i}.hook_resid_{w}" for i in range(model.cfg.n_layers) for w in ("pre", "post")]
    return [h for h in out if h in model.hook_dict]


# ------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------
def validate_prompt(text: str, max_chars: int) -> list[str]:
    """Check a prompt before tokenising. Returns warnings; raises InputError for an empty prompt, one over
    ``max_chars`` characters, or one holding control characters / lone surrogates / unassigned code points."""
    if text is None or not text.strip():
        raise InputError("The prompt is empty: type some text (or sample a TokFSM prompt).")
    if len(text) > max_chars:
        raise InputError(f"The prompt has {len(text):,} characters, over the cap of {max_chars:,}; "
                         "shorten it (or start the app with a larger --max-tokens).")
    warnings = []
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat == "Cc" and ch not in "\n\t\r":
            raise InputError(f"The prompt holds a control character U+{ord(ch):04X} at position {i}; remove it.")
        if cat in ("Cs", "Cn"):
            raise InputError(f"The prompt holds an invalid or unassigned code point U+{ord(ch):04X} at position {i}.")
        if cat == "Cf":
            warnings.append(f"The prompt holds an invisible formatting character U+{ord(ch):04X} "
                            f"({unicodedata.name(ch, 'unnamed')}) at position {i}.")
    if unicodedata.normalize("NFC", text) != text:
        warnings.append("The prompt is not in Unicode NFC form: visually equal prompts may tokenise differently.")
    return warnings[:5]


def digit_tokenizer(model: Any) -> bool:
    """Whether the model reads :class:`interp.data.DigitTokenizer` text (TokFSM and copying models): a prompt
    written with a leading "<bos>" is then taken literally (no second BOS is prepended)."""
    return isinstance(getattr(model, "tokenizer", None), DigitTokenizer)


def tokenize(model: Any, text: str, max_tokens: int) -> Any:
    """Prompt -> tokens, a LongTensor [1, L] (``validate_prompt`` first). InputError if the tokenizer rejects the
    text or the prompt is longer than ``max_tokens``."""
    validate_prompt(text, max_chars=max_tokens * 32)
    if getattr(model, "tokenizer", None) is None:
        raise InputError("This model has no tokenizer, so it cannot read a text prompt.")
    literal = digit_tokenizer(model) and text.lstrip().startswith("<bos>")
    try:
        tokens = model.to_tokens(text, prepend_bos=False) if literal else model.to_tokens(text)
    except Exception as e:  # noqa: BLE001 - the tokenizer's message says what is wrong
        raise InputError(f"This model's tokenizer cannot encode the prompt: {str(e)[:300]}") from e
    tokens = tokens[:1].cpu()
    if tokens.shape[1] > max_tokens:
        raise InputError(f"The prompt is {tokens.shape[1]:,} tokens long, over the cap of {max_tokens:,} tokens; "
                         "shorten it (or start the app with a larger --max-tokens).")
    return tokens


def str_tokens(model: Any, tokens: Any) -> list[str]:
    """The tokens of one sequence ([L] or [1, L]: a tensor or a list of ids) as strings (ticks, highlighted text)."""
    ids = as_tokens(model, tokens, one_sequence=True)[0]
    try:
        return [str(t) for t in model.to_str_tokens(ids)]
    except Exception:  # noqa: BLE001
        return [str(int(t)) for t in ids]


def default_prompt(spec: str, model: Any = None) -> str:
    """The prompt a model starts with, by the task on its model card: a TokFSM prompt, a copying prompt; with no
    card, the symbols of a digit tokenizer in order, else an English sentence."""
    task = model_task(spec)
    if task == "tokfsm":
        return tokfsm_prompt_text(16)
    if task == "copy":
        return copy_prompt(12)
    if model is not None and digit_tokenizer(model):
        return model.tokenizer.bos_token + ("".join(model.tokenizer.symbols) * 2)[:20]
    return "The cat sat on the mat because it was tired."


# ------------------------------------------------------------------------------------------------
# SAE and codebook folders
# ------------------------------------------------------------------------------------------------
def folder_mtime(folder: str | os.PathLike) -> float:
    """Latest modification time of a folder's own files: the cache key of what was loaded from it."""
    return max((p.stat().st_mtime for p in Path(folder).iterdir()), default=0.0)


def sae_folder(folder: str, roots: Sequence[Path]) -> Path:
    """An existing SAE folder inside ``roots``; else InputError."""
    path = inside(folder, roots)
    if not path.exists():
        raise InputError(f"The SAE folder {folder} does not exist.")
    return path


def load_sae(folder: str, roots: Sequence[Path], model: Any) -> Any:
    """An SAE from a folder inside ``roots``, checked against ``model`` (:func:`interp.sae.check_fits`)."""
    from interp.sae import check_fits, load_sae as _load

    path = inside(folder, roots)
    try:
        sae = _load(path)
    except Exception as e:  # noqa: BLE001 - the loader's message says what is wrong
        raise InputError(f"Could not load an SAE from {path}: {str(e)[:400]}") from e
    try:
        check_fits(sae, model)
    except ValueError as e:
        raise InputError(str(e)) from e
    return sae.eval()


def codebook_recipes() -> list[str]:
    """Names of the embedded codebook models the toolkit can train (:mod:`interp.codebook.zoo`)."""
    from interp.codebook.zoo import CODEBOOK_RECIPES

    return sorted(CODEBOOK_RECIPES)


def codebook_install_hint(name: str) -> str:
    return f"`python -m interp.codebook.zoo {name} --install`"


def codebook_folder(choice: str, roots: Sequence[Path]) -> Path:
    """The folder of a codebook model chosen by the user: an installed embedded name or a folder inside ``roots``
    holding ``codebooks.json``; else InputError (nothing outside those folders is read)."""
    if not (choice or "").strip():
        raise InputError("Choose a codebook model: an embedded name or a folder inside the run folders.")
    choice = _check_name(choice, "codebook model")
    if choice in embedded_codebook_models():
        return (Path(WEIGHTS_DIR) / choice).resolve()
    if choice in codebook_recipes():
        raise InputError(f"The embedded codebook model {choice!r} is not installed yet: train it with "
                         f"{codebook_install_hint(choice)}.")
    path = inside(choice, roots)
    if not path.is_dir():
        raise InputError(f"The codebook folder {choice} does not exist.")
    if not (path / INDEX_FILE).is_file():
        raise InputError(f"{choice} holds no {INDEX_FILE}: it is not a codebook model (write one with "
                         "interp.codebook.save_codebook_model).")
    return path


def load_codebook(folder: str | os.PathLike, roots: Sequence[Path]) -> Any:
    """:func:`interp.codebook.load_codebook_model` of a folder inside ``roots`` or the embedded weights, checked
    first (:func:`interp.codebook.check_codebook_folder`). Failures -> InputError."""
    folder = inside(folder, [*roots, Path(WEIGHTS_DIR)])
    try:
        check_codebook_folder(folder)
    except ValueError as e:
        raise InputError(str(e)) from e
    try:
        return load_codebook_model(folder)
    except Exception as e:  # noqa: BLE001 - the loader's message says what is wrong
        raise InputError(f"Could not load the codebook model in {folder}: {type(e).__name__}: {str(e)[:400]}") from e


def codebook_prompt(cb_model: Any, page_model: Any, tokens: Any, text: str, max_tokens: int,
                    tokfsm: bool = False) -> tuple[Any, str | None]:
    """The tokens [1, L] the codebook tab runs through the codebook model, and a note when they are not the page's
    prompt tokens: the prompt tokens if the two vocabularies match, else a TokFSM prompt (TokFSM codebook models),
    else the prompt text tokenized by the codebook model."""
    if page_model is not None and same_vocabulary(cb_model, page_model):
        return tokens, None
    if tokfsm:
        return tokenize(cb_model, tokfsm_prompt_text(16), max_tokens), (
            "The page's model reads another vocabulary than this codebook model: showing a TokFSM prompt instead.")
    return tokenize(cb_model, text, max_tokens), "The page's prompt, tokenized by the codebook model."


# ------------------------------------------------------------------------------------------------
# text shown in the page
# ------------------------------------------------------------------------------------------------
def shorten(text: str, limit: int = 1200) -> str:
    """``text`` cut to about ``limit`` characters in the middle, so that its end (where loaders put the hint: what
    to do about it) always survives."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return f"{text[:head]} … {text[-(limit - head):]}"


_INLINE_MARKUP = re.compile(r"([\\`*_\[\]<>~$|])")  # emphasis, code, links, HTML, strikethrough, math, tables
_LINE_MARKUP = re.compile(r"^(\d+)([.)])|^([#+=>-])")  # at a line's start: lists, headings, quotes, rules


def plain_markdown(text: str) -> str:
    """``text`` as Markdown that renders to exactly ``text``: Markdown punctuation is backslash-escaped (file names
    keep their underscores and asterisks, ``<bos>`` stays visible) and every line break is kept (a hard break).
    For Streamlit elements that always render Markdown (``st.error``, ``st.warning``)."""
    out = []
    for line in str(text).splitlines():
        line = _INLINE_MARKUP.sub(r"\\\1", line.strip())
        out.append(_LINE_MARKUP.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", line, count=1))
    return "  \n".join(out)
