"""Pure computation behind the Streamlit app: no ``streamlit`` import, every function testable on its own.

The formulas live in the library (:mod:`interp.attention`, :mod:`interp.lrp`, :mod:`interp.sae`,
:mod:`interp.probes`, :mod:`interp.steering`, :mod:`interp.codebook`); this module only validates inputs, calls
them and shapes their results for display (numpy arrays, pooled overviews, sort metrics, export bundles).

Conventions: ``tokens`` is a LongTensor [1, L]; maps are float numpy arrays [L(query i), L(source j)];
per-channel stacks are [n, L, L]. Every user-facing failure is an :class:`InputError` whose message is
meant to be shown as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp.attention.methods import LABELS, WHOLE_MODEL, methods_for

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "tokfsm-mamba"

# the sources of the token-interaction page: the interaction-map methods' registry (interp.attention.methods),
# method name -> label; WHOLE_MODEL: attributions, not a per-layer map
SOURCES: dict[str, str] = LABELS
SSM_SOURCES = methods_for("ssm")
TRANSFORMER_SOURCES = methods_for("transformer")
AGGREGATES = ("mean_abs", "mean", "max", "topk")
NORMALIZATIONS = ("raw", "minmax", "row")
METRICS = ("mass", "max", "distance", "diagonal")
# what each thumbnail sort metric measures (m: one map [L, L], i: query, j: source; see map_metric),
# written without Markdown markup (shown in captions and help)
METRIC_DEFINITIONS: dict[str, str] = {
    "mass": "Σᵢⱼ |mᵢⱼ|, the total absolute interaction of the map (grows with the prompt's length)",
    "max": "maxᵢⱼ |mᵢⱼ|, the strongest single interaction",
    "distance": "Σᵢⱼ |mᵢⱼ|·|i − j| ∕ Σᵢⱼ |mᵢⱼ|, how far back the map looks on average, in tokens",
    "diagonal": "Σᵢ |mᵢᵢ| ∕ Σᵢⱼ |mᵢⱼ|, the share of the map on each token's own position",
}


class InputError(ValueError):
    """A bad user input; the message is shown in the page as is."""


# ------------------------------------------------------------------------------------------------
# configuration (command line of `interp app`, or environment variables)
# ------------------------------------------------------------------------------------------------
@dataclass
class AppConfig:
    """Operator settings. ``roots``: folders the app may read models / SAEs from (resolved);
    ``max_tokens``: prompt cap; ``map_budget_bytes``: memory budget of one interaction map;
    ``pool_above``: prompts longer than this get a pooled overview; ``thumb_tokens``: for those long
    prompts, thumbnails use this many leading tokens (exact for causal maps: the top-left block of the
    full map)."""

    model: str | None = None
    roots: list[Path] = field(default_factory=list)
    max_tokens: int = 2048
    map_budget_bytes: int = 2 * 2**30
    pool_above: int = 256
    thumb_tokens: int = 128
    lrp_full_max: int = 48


def parse_config(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> AppConfig:
    """Settings from ``argv`` (``--model``, ``--roots A:B``, ``--max-tokens``, ``--map-budget-mb``,
    ``--pool-above``) over the environment (``INTERP_APP_MODEL``, ``INTERP_APP_ROOTS``,
    ``INTERP_APP_MAX_TOKENS``, ``INTERP_APP_MAP_BUDGET_MB``, ``INTERP_APP_POOL_ABOVE``). Unknown
    arguments are ignored (Streamlit and pytest put their own in ``sys.argv``)."""
    import argparse

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


# ------------------------------------------------------------------------------------------------
# paths and models
# ------------------------------------------------------------------------------------------------
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


def embedded_models(include_missing: bool = False) -> list[str]:
    from interp.zoo import list_models

    return list_models(include_missing=include_missing)


def default_model(requested: str | None = None) -> tuple[str, str | None]:
    """(model spec, note): ``requested`` if given, else the embedded ``tokfsm-mamba``, else the first
    installed embedded model (the note says why)."""
    if requested:
        return requested, None
    installed = embedded_models()
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

    Embedded names pass. An existing path must lie inside ``roots`` (or be the folder given with
    ``--model`` on the command line). A string that looks like a path (``/``, ``.``, ``~`` first, or
    ``..`` in it) but does not exist is refused; ``owner/name`` and bare names go to ``interp.load`` as
    hub ids / TransformerLens names (they need the network)."""
    spec = (spec or "").strip()
    if not spec:
        raise InputError("Enter a model: an embedded name, a folder inside the allowed roots, or a hub id.")
    if any(ord(c) < 32 for c in spec) or len(spec) > 500:
        raise InputError("The model name holds control characters or is too long.")
    if spec in embedded_models(include_missing=True):
        if spec not in embedded_models():
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
    pathlike = spec.startswith(("/", ".", "~")) or ".." in Path(spec).parts or spec.count("/") > 1 or "\\" in spec
    if pathlike:
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
    model.eval()
    return model


def warm_up(model: Any) -> None:
    """One small interaction map right after loading, so the first real request skips one-time set-up costs."""
    try:
        from interp.attention import interaction_map

        tokens = torch.arange(16).remainder(max(2, int(getattr(model.cfg, "d_vocab", 0) or model.cfg.vocab_size)))
        interaction_map(model, tokens[None], 0, method="auto")
    except Exception:  # noqa: BLE001 - warming up is best effort
        pass


def is_ssm(model: Any) -> bool:
    from interp.hooks import is_ssm as _is_ssm

    return bool(_is_ssm(model))


def model_summary(model: Any) -> dict[str, Any]:
    cfg = model.cfg
    return {"name": getattr(cfg, "name", None) or getattr(cfg, "model_name", "?"),
            "family": getattr(cfg, "family", None) or getattr(cfg, "original_architecture", "transformer"),
            "layers": cfg.n_layers, "d_model": cfg.d_model, "vocab": cfg.d_vocab if hasattr(cfg, "d_vocab")
            else cfg.vocab_size, "hook points": len(model.hook_dict)}


# ------------------------------------------------------------------------------------------------
# prompts
# ------------------------------------------------------------------------------------------------
def validate_prompt(text: str, max_chars: int) -> list[str]:
    """Check a prompt before tokenising. Returns warnings (strings); raises InputError for an empty
    prompt, one over ``max_chars`` characters, or one holding control characters / lone surrogates /
    unassigned code points."""
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


def tokenize(model: Any, text: str, max_tokens: int) -> torch.Tensor:
    """Prompt -> tokens [1, L] (``validate_prompt`` first). InputError if the tokenizer rejects the text or
    the prompt is longer than ``max_tokens``."""
    validate_prompt(text, max_chars=max_tokens * 32)
    if getattr(model, "tokenizer", None) is None:
        raise InputError("This model has no tokenizer, so it cannot read a text prompt.")
    prepend = False if digit_tokenizer(model) and text.lstrip().startswith("<bos>") else None
    try:
        tokens = model.to_tokens(text, prepend_bos=prepend) if prepend is not None else model.to_tokens(text)
    except Exception as e:  # noqa: BLE001 - the tokenizer's message says what is wrong
        raise InputError(f"This model's tokenizer cannot encode the prompt: {str(e)[:300]}") from e
    tokens = tokens[:1].cpu()
    if tokens.shape[1] > max_tokens:
        raise InputError(f"The prompt is {tokens.shape[1]:,} tokens long, over the cap of {max_tokens:,} tokens; "
                         "shorten it (or start the app with a larger --max-tokens).")
    return tokens


def str_tokens(model: Any, tokens: torch.Tensor) -> list[str]:
    """The L tokens as strings (for ticks and highlighted text)."""
    try:
        return [str(t) for t in model.to_str_tokens(tokens[0])]
    except Exception:  # noqa: BLE001
        return [str(int(t)) for t in tokens[0]]


def tokfsm_prompt(n_states: int = 16, seed: int = 0) -> str:
    """A valid TokFSM prompt as text: "<bos>" then 2-digit states (length 1 + 2·n_states tokens)."""
    from interp.data.tokfsm import TokFSM

    fsm = TokFSM()
    states = fsm.sample_states(1, n_states, np.random.default_rng(seed))[0]
    return "<bos>" + "".join(f"{int(s):02d}" for s in states)


def copy_prompt(n: int = 12, seed: int = 0) -> str:
    """A copying-task prompt as text: "<bos>", n symbols, "<sep>" and their copy (:mod:`interp.data.copying`)."""
    from interp.data.copying import COPY_N_SYMBOLS, copy_tokenizer, sample_copy_batch

    b = sample_copy_batch(1, np.random.default_rng(seed), n_range=int(n))
    syms = copy_tokenizer(COPY_N_SYMBOLS).symbols
    content = "".join(syms[int(t)] for t in b.tokens[0, 1:int(n) + 1])
    return f"<bos>{content}<sep>{content}"


def model_task(spec: str | None) -> str | None:
    """The task of an embedded model, from its model card (``interp.zoo.model_card(name)["task"]``: "tokfsm",
    "copy", ...); None for anything without a card (a folder, a hub id, a model whose card is not installed)."""
    from interp.zoo import MODEL_NAMES, model_card

    if not spec or spec not in MODEL_NAMES:
        return None
    try:
        return model_card(spec).get("task")
    except (OSError, ValueError):
        return None


def is_tokfsm(spec: str | None) -> bool:
    """Whether the model ``spec`` names was trained on TokFSM (its model card says so): only then do TokFSM
    tools (sampled TokFSM prompts, state probes, TokFSM corpora) mean anything."""
    return model_task(spec) == "tokfsm"


def default_prompt(spec: str, model: Any = None) -> str:
    """The prompt a model starts with, by the task on its model card: a TokFSM prompt, a copying prompt; with no
    card, the symbols of a digit tokenizer in order (``model`` reads digits only), else an English sentence."""
    task = model_task(spec)
    if task == "tokfsm":
        return tokfsm_prompt(16)
    if task == "copy":
        return copy_prompt(12)
    if model is not None and digit_tokenizer(model):
        tok = model.tokenizer
        return tok.bos_token + ("".join(tok.symbols) * 2)[:20]
    return "The cat sat on the mat because it was tired."


def digit_tokenizer(model: Any) -> bool:
    """Whether the model reads text with :class:`interp.data.DigitTokenizer` (TokFSM and copying models): such
    a prompt written with a leading "<bos>" is taken literally (no second BOS is prepended)."""
    from interp.data.tokfsm import DigitTokenizer

    return isinstance(getattr(model, "tokenizer", None), DigitTokenizer)


def shorten(text: str, limit: int = 1200) -> str:
    """``text`` cut to about ``limit`` characters in the middle, so that its end (where loaders put the hint:
    what to do about it) always survives."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return f"{text[:head]} … {text[-(limit - head):]}"


_INLINE_MARKUP = re.compile(r"([\\`*_\[\]<>~$|])")  # emphasis, code, links, HTML, strikethrough, math, tables
_LINE_MARKUP = re.compile(r"^(\d+)([.)])|^([#+=>-])")  # at a line's start: lists, headings, quotes, rules


def plain_markdown(text: str) -> str:
    """``text`` as Markdown that renders to exactly ``text``: Markdown punctuation is backslash-escaped (file
    names keep their underscores and asterisks, ``<bos>`` stays visible) and every line break is kept (a hard
    break). For Streamlit elements that always render Markdown (``st.error``, ``st.warning``)."""
    out = []
    for line in str(text).splitlines():
        line = _INLINE_MARKUP.sub(r"\\\1", line.strip())
        out.append(_LINE_MARKUP.sub(lambda m: f"{m[1]}\\{m[2]}" if m[1] else f"\\{m[3]}", line, count=1))
    return "  \n".join(out)


# ------------------------------------------------------------------------------------------------
# token interactions
# ------------------------------------------------------------------------------------------------
def sources_for(model: Any) -> list[str]:
    return list(SSM_SOURCES if is_ssm(model) else TRANSFORMER_SOURCES)


def aggregates_for(source: str) -> list[str]:
    """Channel/head aggregates a source supports ("channel" = one channel/head); [] when it has none
    (LaTIM scores and the whole-model attributions have no channel axis)."""
    if source in ("hidden", "attention"):
        return [*AGGREGATES, "channel"]
    if source == "unified":
        return ["mean_abs", "mean", "max", "channel"]
    return []


def n_channels(model: Any) -> int:
    """Channels (Mamba-1: d_inner) or heads (Mamba-2, transformers) of a layer's map."""
    cfg = model.cfg
    if is_ssm(model):
        return int(cfg.n_heads) if cfg.family == "mamba2" else int(cfg.d_inner)
    return int(cfg.n_heads)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def detail_map(model: Any, tokens: torch.Tensor, layer: int, source: str, aggregate: str | int = "mean_abs",
               normalize: str = "raw", max_bytes: int | None = None) -> np.ndarray:
    """The interaction map [L, L] of ``layer`` by ``source`` (:func:`interp.attention.interaction_map`).
    ``aggregate`` int = one channel/head. LRP / gradient × input ignore the layer and aggregate."""
    from interp.attention import interaction_map

    kw: dict[str, Any] = {} if source in WHOLE_MODEL else {"aggregate": aggregate, "max_bytes": max_bytes}
    m = interaction_map(model, tokens, None if source in WHOLE_MODEL else layer, method=source, normalize_=normalize,
                        **kw)
    return _np(m[0])


def attribution_rows(model: Any, tokens: torch.Tensor, rows: Sequence[int], source: str,
                     normalize: str = "raw") -> np.ndarray:
    """Rows of an LRP / gradient × input map: [len(rows), L] (:func:`interp.attention.query_rows`)."""
    from interp.attention import query_rows

    return _np(query_rows(model, tokens, 0, rows=list(rows), method=source, normalize_=normalize)[0])


def rollout_map(model: Any, tokens: torch.Tensor, source: str, aggregate: str | int = "mean_abs",
                max_bytes: int | None = None) -> np.ndarray:
    """Rollout [L, L] of the per-layer maps of ``source`` (:func:`interp.attention.rollout`), each taken
    as |map| (rollout needs non-negative weights)."""
    from interp.attention import interaction_map, rollout

    maps = [interaction_map(model, tokens, layer, method=source, aggregate=aggregate, max_bytes=max_bytes).abs()
            for layer in range(model.cfg.n_layers)]
    return _np(rollout(maps)[0])


def thumbnail_maps(model: Any, tokens: torch.Tensor, source: str, per_layer: int = 8,
                   max_bytes: int | None = None) -> tuple[np.ndarray, list[tuple[int, int | None]]]:
    """Layer × channel/head maps for the thumbnail grid: (maps [n, L, L], [(layer, channel or None)]).

    hidden: per head (Mamba-2) or the ``per_layer`` channels with the most mass (Mamba-1,
    :func:`interp.attention.hidden.channel_mass`); attention: per head; unified / LaTIM: one
    channel-reduced map per layer (channel None)."""
    from interp.attention import interaction_map, ssm_parameters
    from interp.attention.hidden import channel_mass

    maps, keys = [], []
    for layer in range(model.cfg.n_layers):
        if source == "hidden" and model.cfg.family == "mamba1":
            p = ssm_parameters(model, tokens, layer)
            heads = channel_mass(p["dt"], p["A"], p["B"], p["C"]).topk(min(per_layer, p["dt"].shape[-1])).indices
            heads = heads.tolist()
            m = interaction_map(model, tokens, layer, method="hidden", aggregate="none", heads=heads,
                                max_bytes=max_bytes)[0]
        elif source in ("hidden", "attention"):
            m = interaction_map(model, tokens, layer, method=source, aggregate="none", max_bytes=max_bytes)[0]
            heads = list(range(m.shape[0]))
        else:
            m = interaction_map(model, tokens, layer, method=source, max_bytes=max_bytes)
            heads = [None]
        maps.append(_np(m))
        keys += [(layer, h) for h in heads]
    return np.concatenate(maps), keys


def map_metric(maps: np.ndarray, name: str) -> np.ndarray:
    """A score per map of [n, L, L] for sorting thumbnails: "mass" (Σ|m|), "max" (max |m|),
    "distance" (mean |i - j| weighted by |m|: how far back a map looks), "diagonal" (share of |m| on
    the diagonal: how much a token attends to itself)."""
    a = np.abs(np.nan_to_num(np.asarray(maps, dtype=np.float64)))
    if name == "mass":
        return a.sum((1, 2))
    if name == "max":
        return a.max((1, 2))
    L = a.shape[-1]
    total = a.sum((1, 2)) + 1e-30
    if name == "distance":
        i, j = np.indices((L, L))
        return (a * np.abs(i - j)).sum((1, 2)) / total
    if name == "diagonal":
        return np.trace(a, axis1=1, axis2=2) / total
    raise ValueError(f"metric must be one of {METRICS}, got {name!r}")


def pool_map(m: np.ndarray, out: int = 128) -> tuple[np.ndarray, int]:
    """Mean-pool a map [R, C] by a factor f = ceil(max(R, C)/out) -> ([ceil(R/f), ceil(C/f)], f).
    NaN cells (the causal blank) are ignored; an all-NaN block stays NaN."""
    m = np.asarray(m, dtype=np.float64)
    f = max(1, math.ceil(max(m.shape) / out))
    if f == 1:
        return m, 1
    R, C = (math.ceil(s / f) * f for s in m.shape)
    pad = np.full((R, C), np.nan)
    pad[:m.shape[0], :m.shape[1]] = m
    blocks = pad.reshape(R // f, f, C // f, f)
    with np.errstate(invalid="ignore"):
        cnt = np.isfinite(blocks).sum((1, 3))
        s = np.nansum(blocks, (1, 3))
        pooled = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    return pooled, f


def causal_masked(m: np.ndarray) -> np.ndarray:
    """A copy of a square map with the causal upper triangle (j > i) set to NaN."""
    m = np.asarray(m, dtype=np.float64).copy()
    if m.ndim == 2 and m.shape[0] == m.shape[1]:
        m[np.triu_indices(m.shape[0], k=1)] = np.nan
    return m


# ------------------------------------------------------------------------------------------------
# next-token distributions
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def next_token_probs(model: Any, tokens: torch.Tensor, fwd_hooks: Sequence = ()) -> np.ndarray:
    """Next-token distribution after the prompt: [vocab] (with ``fwd_hooks`` active)."""
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks)) if fwd_hooks else model(tokens)
    return _np(logits[0, -1].float().softmax(-1))


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p ‖ q) in nats of two distributions [vocab] (:func:`interp.metrics.kl_divergence` of their logs)."""
    from interp.metrics import kl_divergence

    with np.errstate(divide="ignore"):  # log 0 = -inf: a token p never emits adds 0
        log_p = np.log(np.asarray(p, np.float64))
    log_q = np.log(np.maximum(np.asarray(q, np.float64), 1e-300))
    return float(kl_divergence(torch.from_numpy(log_p), torch.from_numpy(log_q)))


# ------------------------------------------------------------------------------------------------
# optional back ends: probes, steering, codebooks
# ------------------------------------------------------------------------------------------------
def backend(module: str) -> tuple[Any | None, str | None]:
    """(imported module, None) or (None, why it is not available)."""
    if importlib.util.find_spec(module) is None:
        return None, f"`{module}` does not exist yet in this version of the toolkit."
    try:
        return importlib.import_module(module), None
    except Exception as e:  # noqa: BLE001 - a half-written back end must not break the app
        return None, f"`{module}` is present but cannot be imported ({type(e).__name__}: {str(e)[:200]})."


def hook_choices(model: Any) -> list[str]:
    """Residual-stream hooks for steering / SAEs: hook_embed, then resid_pre/post of every block."""
    out = ["hook_embed"] if "hook_embed" in model.hook_dict else []
    for i in range(model.cfg.n_layers):
        out += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_resid_post"]
    return [h for h in out if h in model.hook_dict]


def token_direction(model: Any, token_id: int) -> torch.Tensor:
    """The unit-norm embedding row of a token: [d_model] (a simple steering direction)."""
    v = model.W_E[int(token_id)].detach().float().cpu()
    return v / v.norm().clamp_min(1e-12)


@dataclass
class SteeringResult:
    """Baseline vs steered: ``p_base``, ``p_steer`` [vocab]; generations (strings); KL at the last
    position (``kl_last``) and over the edited positions (``kl``)."""

    p_base: np.ndarray
    p_steer: np.ndarray
    gen_base: str
    gen_steer: str
    kl_last: float
    kl: float


def steer(model: Any, tokens: torch.Tensor, intervention: Any, max_new_tokens: int = 16) -> SteeringResult:
    """Run baseline and steered side by side with an :class:`interp.steering.Intervention` (or Compose)."""
    from interp.steering import kl_cost

    hooks = intervention.hooks(model)
    p0 = next_token_probs(model, tokens)
    p1 = next_token_probs(model, tokens, hooks)
    L = tokens.shape[1]
    g0 = model.generate(tokens, max_new_tokens=max_new_tokens, stop_at_eos=False, return_type="tokens")
    g1 = model.generate(tokens, max_new_tokens=max_new_tokens, stop_at_eos=False, return_type="tokens",
                        fwd_hooks=hooks)
    cost = kl_cost(model, intervention, tokens)
    show = lambda g: "".join(str_tokens(model, g[:, L:]))  # noqa: E731
    return SteeringResult(p0, p1, show(g0), show(g1), kl(p0, p1), float(cost["kl"]))


# ------------------------------------------------------------------------------------------------
# SAEs
# ------------------------------------------------------------------------------------------------
def find_folders(roots: Sequence[Path], holds: Sequence[str], limit: int = 200, max_depth: int = 5) -> list[Path]:
    """Folders under ``roots`` that hold every file named in ``holds``, at most ``max_depth`` deep (symlinks
    leaving a root are skipped), sorted; at most ``limit``."""
    found: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            depth = len(Path(dirpath).relative_to(root).parts)
            if depth >= max_depth:
                dirnames[:] = []
            if all(h in filenames for h in holds):
                try:
                    found.append(inside(dirpath, roots))
                except InputError:
                    continue
            if len(found) >= limit:
                return sorted(found)
    return sorted(found)


def find_saes(roots: Sequence[Path], limit: int = 200, max_depth: int = 5) -> list[Path]:
    """SAE folders (``cfg.json`` + ``sae_weights.safetensors``) under ``roots``."""
    return find_folders(roots, ("cfg.json", "sae_weights.safetensors"), limit, max_depth)


def load_sae(folder: str, roots: Sequence[Path], model: Any) -> Any:
    """An SAE from a folder inside ``roots``, checked against ``model`` (hook exists, widths match)."""
    from interp.sae import load_sae as _load

    path = inside(folder, roots)
    try:
        sae = _load(path)
    except Exception as e:  # noqa: BLE001 - the loader's message says what is wrong
        raise InputError(f"Could not load an SAE from {path}: {str(e)[:400]}") from e
    hook = sae.cfg.hook_name
    if hook not in model.hook_dict:
        raise InputError(f"The SAE reads hook {hook!r}, which this model does not have: it was trained on another model.")
    if sae.cfg.d_in != model.cfg.d_model and hook.endswith(("resid_pre", "resid_post", "hook_embed")):
        raise InputError(f"The SAE's d_in={sae.cfg.d_in} differs from this model's d_model={model.cfg.d_model}.")
    return sae.eval()


@torch.no_grad()
def latent_acts(model: Any, sae: Any, tokens: torch.Tensor, latent: int) -> np.ndarray:
    """One latent's activation on each token: [L] (:func:`interp.sae.latent_activations`)."""
    from interp.sae import latent_activations

    for _, lat, _ in latent_activations(model, sae, tokens):
        return _np(lat[0, :, int(latent)])
    return np.zeros(tokens.shape[1])


# ------------------------------------------------------------------------------------------------
# codebooks (interp.codebook): codebook models, the codes a prompt selects, usage, top examples, forcing
# ------------------------------------------------------------------------------------------------
CODEBOOK_INDEX = "codebooks.json"  # interp.codebook.train.INDEX_FILE
CODEBOOK_CORPUS_SEQS = 64


def _weights_dir() -> Path:
    from interp.zoo import WEIGHTS_DIR

    return Path(WEIGHTS_DIR)


def embedded_codebook_models() -> list[str]:
    """Names of the installed embedded codebook models: folders under ``interp/zoo/weights/`` holding
    ``codebooks.json``."""
    root = _weights_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CODEBOOK_INDEX).is_file())


def codebook_recipes() -> list[str]:
    """Names of the embedded codebook models the toolkit can train (:mod:`interp.codebook.zoo`)."""
    try:
        from interp.codebook.zoo import CODEBOOK_RECIPES
    except Exception:  # noqa: BLE001 - no recipes, nothing to suggest
        return []
    return sorted(CODEBOOK_RECIPES)


def codebook_install_hint(name: str) -> str:
    return f"`python -m interp.codebook.zoo {name} --install`"


def find_codebook_models(roots: Sequence[Path], limit: int = 200, max_depth: int = 5) -> list[Path]:
    """Codebook-model folders (holding ``codebooks.json``, written by
    :func:`interp.codebook.save_codebook_model`) under ``roots``."""
    return find_folders(roots, (CODEBOOK_INDEX,), limit, max_depth)


def codebook_folder(choice: str, roots: Sequence[Path]) -> Path:
    """The folder of a codebook model chosen by the user: an installed embedded name (folder under the
    weights folder) or a folder inside ``roots`` holding ``codebooks.json``; else InputError (nothing
    outside those folders is read)."""
    choice = (choice or "").strip()
    if not choice:
        raise InputError("Choose a codebook model: an embedded name or a folder inside the run folders.")
    if any(ord(c) < 32 for c in choice) or len(choice) > 500:
        raise InputError("The codebook model name holds control characters or is too long.")
    if choice in embedded_codebook_models():
        return (_weights_dir() / choice).resolve()
    if choice in codebook_recipes():
        raise InputError(f"The embedded codebook model {choice!r} is not installed yet: train it with "
                         f"{codebook_install_hint(choice)}.")
    path = inside(choice, roots)
    if not path.is_dir():
        raise InputError(f"The codebook folder {choice} does not exist.")
    if not (path / CODEBOOK_INDEX).is_file():
        raise InputError(f"{choice} holds no {CODEBOOK_INDEX}: it is not a codebook model (write one with "
                         "interp.codebook.save_codebook_model).")
    return path


def folder_mtime(folder: str | os.PathLike) -> float:
    """Latest modification time of a codebook-model folder's files (its own, and ``codebooks/*/``): the
    cache key that changes when the folder is rewritten."""
    folder = Path(folder)
    times = [folder.stat().st_mtime]
    for p in [folder, *sorted((folder / "codebooks").glob("*"))]:
        if p.is_dir():
            times += [q.stat().st_mtime for q in p.iterdir() if q.is_file()]
    return max(times)


def load_codebook(folder: str | os.PathLike, roots: Sequence[Path]) -> Any:
    """:func:`interp.codebook.load_codebook_model` of a folder checked first: it lies inside ``roots`` or the
    embedded weights folder, every codebook file its ``codebooks.json`` names lies inside it, and its base
    model is an installed embedded model (or the folder itself holds the model). Failures -> InputError."""
    import json

    from interp.codebook import load_codebook_model

    folder = inside(folder, [*roots, _weights_dir()])
    try:
        index = json.loads((folder / CODEBOOK_INDEX).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"Could not read {folder / CODEBOOK_INDEX}: {str(e)[:300]}") from e
    sites = index.get("sites") if isinstance(index, dict) else None
    if not isinstance(sites, dict) or not sites or not all(isinstance(v, str) for v in sites.values()):
        raise InputError(f"{folder / CODEBOOK_INDEX} names no codebooks (its 'sites' entry is missing or malformed).")
    for site, sub in sites.items():
        try:
            files = [inside(folder / sub / f, [folder]) for f in ("codebook.json", "codebook.safetensors")]
        except InputError:
            raise InputError(f"The codebook of {site} points outside its folder ({sub!r}): refused.") from None
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise InputError(f"The codebook of {site} is missing {sub}/{missing[0]}.")
    base = index.get("base")
    if base:
        if base not in embedded_models(include_missing=True):
            raise InputError(f"This codebook model's base {base!r} is not an embedded model; the app loads "
                             "codebooks only on embedded models or on a model saved in the same folder.")
        if base not in embedded_models():
            raise InputError(f"The base model {base!r} of these codebooks is not installed yet: train it with "
                             f"`interp train {base} --install`.")
    elif not (folder / "config.json").is_file():
        raise InputError(f"{folder} names no base model and holds no model (config.json) of its own.")
    try:
        return load_codebook_model(folder)
    except Exception as e:  # noqa: BLE001 - the loader's message says what is wrong
        raise InputError(f"Could not load the codebook model in {folder}: {type(e).__name__}: {str(e)[:400]}") from e


def _codebook_index(folder: str | os.PathLike) -> dict[str, Any]:
    import json

    try:
        index = json.loads((Path(folder) / CODEBOOK_INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def codebook_base(folder: str | os.PathLike) -> str | None:
    """The base model named by a codebook folder's ``codebooks.json`` (None: the folder holds its own model)."""
    return _codebook_index(folder).get("base")


def codebook_is_tokfsm(folder: str | os.PathLike) -> bool:
    """Whether a codebook model derives from a TokFSM model: its base, or the embedded model its card names as
    the one it was trained from (a model fine-tuned through its codebooks is saved in the folder), has a
    TokFSM model card (:func:`is_tokfsm`)."""
    index = _codebook_index(folder)
    card = index.get("card") if isinstance(index.get("card"), dict) else {}
    return is_tokfsm(index.get("base") or card.get("base"))


def codebook_sites(model: Any) -> dict[str, dict[str, int]]:
    """{site: {n_codes, k, n_groups}} of the codebooks attached to ``model`` (:func:`interp.codebook.attached`)."""
    from interp.codebook import attached

    return {s: {"n_codes": b.cfg.n_codes, "k": b.cfg.k, "n_groups": b.cfg.n_groups} for s, b in attached(model).items()}


def same_vocabulary(a: Any, b: Any, check: int = 4096) -> bool:
    """Whether two models read the same token ids as the same strings (same vocabulary size, tokenizer class
    and the first ``check`` token strings)."""
    if a is b:
        return True
    na = int(getattr(a.cfg, "d_vocab", 0) or a.cfg.vocab_size)
    nb = int(getattr(b.cfg, "d_vocab", 0) or b.cfg.vocab_size)
    if na != nb or type(getattr(a, "tokenizer", None)) is not type(getattr(b, "tokenizer", None)):
        return False
    ids = torch.arange(min(na, check))
    try:
        return [str(t) for t in a.to_str_tokens(ids)] == [str(t) for t in b.to_str_tokens(ids)]
    except Exception:  # noqa: BLE001
        return False


def codebook_prompt(cb_model: Any, page_model: Any, tokens: torch.Tensor, text: str,
                    max_tokens: int, tokfsm: bool = False) -> tuple[torch.Tensor, str | None]:
    """The tokens [1, L] the codebook tab runs through the codebook model, and a note when they are not the
    page's prompt tokens: the prompt tokens if the two vocabularies match, else a TokFSM prompt (``tokfsm``:
    TokFSM codebook models, :func:`codebook_is_tokfsm`), else the prompt text tokenized by the codebook model."""
    if page_model is not None and same_vocabulary(cb_model, page_model):
        return tokens, None
    if tokfsm:
        return tokenize(cb_model, tokfsm_prompt(16), max_tokens), (
            "The page's model reads another vocabulary than this codebook model: showing a TokFSM prompt instead.")
    return tokenize(cb_model, text, max_tokens), "The page's prompt, tokenized by the codebook model."


def _group_ids(ids: torch.Tensor, group: int) -> torch.Tensor:
    """ids [n, pos, k] or [n, pos, G, k] -> [n, pos, k] of one group."""
    return ids[:, :, int(group)] if ids.dim() >= 4 else ids


@torch.no_grad()
def code_report(model: Any, tokens: torch.Tensor, site: str, code: int, group: int = 0,
                n_seq: int = CODEBOOK_CORPUS_SEQS, seed: int = 0, n_examples: int = 8, context: int = 12,
                n_similar: int = 10, tokfsm: bool = False) -> dict[str, Any]:
    """What the codebook tab shows for ``code`` at ``site`` of a codebook model:

    * ``prompt_ids`` int [k, L]: the codes selected at each position of ``tokens`` (slot 0 = best);
      ``prompt_tokens``: the L token strings;
    * ``corpus``: "tokfsm" (``n_seq`` TokFSM sequences, when ``tokfsm``: a codebook model derived from a
      TokFSM model, :func:`codebook_is_tokfsm`) or "prompt"; ``usage``:
      {site: :func:`interp.codebook.usage_stats` entry} on it; ``freq`` [n_codes]: share of the site's
      selections each code takes;
    * ``examples``: :func:`interp.codebook.top_examples` on the corpus, each with ``str_tokens`` and ``fires``
      (1 where the code is selected in the context);
    * ``similar``: :func:`interp.codebook.similar_codes` [(code, cosine)];
    * ``states`` (TokFSM models): FSM states on units-digit tokens where the code fires, as rows
      {state, count, precision, recall}, most frequent first; ``units_fires``: how many such tokens."""
    from interp.codebook import attached, collect_codes, similar_codes, top_examples, usage_stats

    books = attached(model)
    if site not in books:
        raise InputError(f"This codebook model has no codebook at {site!r}; its sites are {sorted(books)}.")
    cfg = books[site].cfg
    code, group = int(code), int(group)
    if not 0 <= code < cfg.n_codes:
        raise InputError(f"Code {code} is out of range: the codebook at {site} has codes 0..{cfg.n_codes - 1}.")
    if not 0 <= group < cfg.n_groups:
        raise InputError(f"Group {group} is out of range: the codebook at {site} has {cfg.n_groups} group(s).")
    out: dict[str, Any] = {"site": site, "code": code, "n_codes": cfg.n_codes, "k": cfg.k}
    run = collect_codes(model, tokens, sites=[site], keep_inputs=False)
    out["prompt_ids"] = _group_ids(run.ids[site], group)[0].T.numpy().astype(np.int64)  # [k, L]
    out["prompt_tokens"] = str_tokens(model, tokens)

    if tokfsm:
        from interp.data.tokfsm import tokfsm_dataset

        corpus, out["corpus"] = tokfsm_dataset(int(n_seq), seed=seed), "tokfsm"
    else:
        corpus, out["corpus"] = tokens, "prompt"
    crun = collect_codes(model, corpus, keep_inputs=False)
    out["usage"] = usage_stats(crun)
    ids = _group_ids(crun.ids[site], group)  # [n, pos, k]
    counts = torch.bincount(ids.reshape(-1), minlength=cfg.n_codes).double()
    out["freq"] = (counts / counts.sum().clamp_min(1)).numpy()
    fires = (ids == code).any(-1)  # [n, pos]
    out["n_fires"] = int(fires.sum())

    examples = []
    for ex in top_examples(crun, corpus, site, code, n=n_examples, context=context, group=group):
        seq, pos = ex["seq"], ex["pos"]
        start = max(0, pos - context + 1)
        ctx = corpus[seq, start:pos + 1]
        examples.append({**ex, "str_tokens": str_tokens(model, ctx[None]),
                         "fires": fires[seq, start:pos + 1].float().numpy()})
    out["examples"] = examples
    out["similar"] = similar_codes(model, site, code, n=min(n_similar, cfg.n_codes - 1), group=group)

    out["states"], out["units_fires"] = None, 0
    if out["corpus"] == "tokfsm":
        from interp.data.tokfsm import TokFSM, tokfsm_labels

        lab = tokfsm_labels(corpus)
        units = (lab["digit_pos"] == 1) & (lab["state"] >= 0)
        hit = units & fires
        n_states = TokFSM().n_states
        count = torch.bincount(lab["state"][hit], minlength=n_states)
        total = torch.bincount(lab["state"][units], minlength=n_states)
        out["units_fires"] = int(hit.sum())
        order = [int(s) for s in torch.argsort(count, descending=True, stable=True) if count[s] > 0]
        out["states"] = [{"state": s, "count": int(count[s]), "precision": float(count[s]) / max(1, int(hit.sum())),
                          "recall": float(count[s]) / max(1, int(total[s]))} for s in order[:10]]
    return out


@torch.no_grad()
def force_code(model: Any, tokens: torch.Tensor, site: str, code: int, max_new_tokens: int = 8,
               group: int = 0) -> dict[str, Any]:
    """Greedy continuations of ``tokens`` without and with ``code`` forced at ``site`` at the last position
    (:func:`interp.codebook.code_intervention`, mode "force", positions "last": the prompt's last token and
    every generated one): {baseline, forced} token strings, their ids, ``differs``."""
    from interp.codebook import attached, code_intervention

    books = attached(model)
    if site not in books:
        raise InputError(f"This codebook model has no codebook at {site!r}.")
    if not 0 <= int(code) < books[site].cfg.n_codes:
        raise InputError(f"Code {code} is out of range: the codebook at {site} has codes "
                         f"0..{books[site].cfg.n_codes - 1}.")
    n = max(1, min(int(max_new_tokens), 256))
    iv = code_intervention(model, site, int(code), "force", positions="last", group=int(group))
    L = tokens.shape[1]
    kw = dict(max_new_tokens=n, do_sample=False, stop_at_eos=False, return_type="tokens")
    g0 = model.generate(tokens, **kw)[:, L:]
    g1 = model.generate(tokens, fwd_hooks=iv.hooks(model), **kw)[:, L:]
    return {"baseline": str_tokens(model, g0), "forced": str_tokens(model, g1),
            "baseline_ids": g0[0].tolist(), "forced_ids": g1[0].tolist(), "differs": not torch.equal(g0, g1)}


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def kaleido_available() -> bool:
    return importlib.util.find_spec("kaleido") is not None


def figure_exports(fig: Any) -> dict[str, bytes]:
    """A figure as self-contained HTML (plotly.js inlined, no CDN), JSON, and PNG when kaleido is installed."""
    from interp.attention.figures import figure_html

    out = {"html": figure_html(fig).encode(), "json": fig.to_json().encode()}
    if kaleido_available():
        try:
            out["png"] = fig.to_image(format="png")
        except Exception:  # noqa: BLE001 - kaleido present but unusable (no browser): leave PNG out
            pass
    return out


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    """Arrays (numpy / torch / lists) as one compressed .npz file."""
    buf = io.BytesIO()
    clean = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in arrays.items()}
    np.savez_compressed(buf, **clean)
    return buf.getvalue()


LENS_WINDOW = 64  # prompts longer than this show the logit lens through a window; the default window length
LENS_MAX_WINDOW = 256  # the most positions one logit-lens figure shows


def lens_window(n_tokens: int, start: int = 0, length: int = LENS_WINDOW) -> tuple[int, int]:
    """(start, length) of the logit-lens window of a prompt of ``n_tokens``: the whole prompt up to
    ``LENS_WINDOW`` tokens, else ``start`` and ``length`` brought inside the prompt (at most ``LENS_MAX_WINDOW``)."""
    if n_tokens <= LENS_WINDOW:
        return 0, n_tokens
    start = min(max(int(start), 0), n_tokens - 1)
    return start, min(max(int(length), 1), LENS_MAX_WINDOW, n_tokens - start)


def logit_lens_view(model: Any, tokens: torch.Tensor, start: int = 0, length: int | None = None,
                    value: str = "top") -> tuple[Any, Any]:
    """(figure, :class:`interp.lens.LogitLens`) of the logit lens of ``tokens`` over a window of positions
    (:func:`interp.lens.logit_lens`, :func:`interp.lens.logit_lens_figure`): colour ``value`` ("top" or "true"),
    each cell's top-1 token as its text. InputError for a window outside the prompt."""
    from interp.lens import logit_lens, logit_lens_figure, vocabulary

    try:
        lens = logit_lens(model, tokens, start, length)
    except ValueError as e:
        raise InputError(str(e)) from e
    return logit_lens_figure(lens, str_tokens(model, tokens), vocabulary(model), value), lens


def probe_sweep_tokfsm(model: Any, n_seq: int, seq_len: int = 33, seed: int = 0) -> tuple[Any, list[dict[str, Any]]]:
    """Layer × position probe sweep of the TokFSM state on ``n_seq`` sampled sequences
    (:func:`interp.probes.probe_sweep`, positions "tens digit" / "units digit"): (figure, rows). The control
    task types tokens by their trigram (``control_context=2``): with 10 digit tokens a per-token control is
    decodable everywhere (docs/benchmarks.md, issue 6)."""
    from interp.data.tokfsm import tokfsm_dataset, tokfsm_labels
    from interp.probes import probe_sweep

    tokens = tokfsm_dataset(int(n_seq), seed=seed, seq_len=seq_len)
    lab = tokfsm_labels(tokens)
    res = probe_sweep(model, tokens, lab["state"], seed=seed, control_context=2,
                      positions={"tens digit": lab["digit_pos"] == 0, "units digit": lab["digit_pos"] == 1})
    return res.figure(title=f"TokFSM state probes on {n_seq} sequences"), res.rows


def feature_corpus(model: Any, tokens: torch.Tensor, corpus: str, n_seq: int = 64) -> torch.Tensor:
    """Token sequences [n, L] to look for a latent's top examples: the prompt ("prompt") or ``n_seq``
    sampled TokFSM sequences ("tokfsm")."""
    if corpus == "tokfsm":
        from interp.data.tokfsm import tokfsm_dataset

        return tokfsm_dataset(n_seq, seed=0)
    return tokens


def feature_report(model: Any, sae: Any, corpus: torch.Tensor, latent: int, k: int = 8) -> dict[str, Any]:
    """What the features page shows for one latent: ``density`` [d_sae] (interp.sae.activation_density),
    ``examples`` (top_activating_examples), ``effects`` (logit_effects with the min(10, vocab/2) most
    promoted and suppressed tokens, or None with ``effects_error``)."""
    from interp.sae import activation_density, logit_effects, top_activating_examples

    out: dict[str, Any] = {"density": activation_density(model, sae, corpus).numpy()}
    out["examples"] = top_activating_examples(model, sae, corpus, latents=[int(latent)], k=k)[int(latent)]
    try:
        k_eff = max(1, min(10, int(model.W_U.shape[-1]) // 2))  # top and bottom tokens stay apart
        out["effects"], out["effects_error"] = logit_effects(model, sae, latents=[int(latent)], k=k_eff), None
    except ValueError as e:
        out["effects"], out["effects_error"] = None, str(e)
    return out


def steering_intervention(model: Any, hook: str, source: str, scale: float, positions: str,
                          token_id: int = 0, sae: Any = None, latent: int = 0) -> Any:
    """An :class:`interp.steering.Intervention` adding ``scale`` × a direction at ``hook``:
    the unit embedding of ``token_id`` (source "token") or an SAE latent's decoder row ("sae")."""
    from interp.steering import Direction, Intervention, SAELatents

    if source == "sae":
        if sae is None:
            raise InputError("Choose an SAE on the Features page first (steering with a latent needs one).")
        return Intervention(SAELatents(sae, int(latent)), sae.cfg.hook_name, "add", float(scale), positions=positions)
    return Intervention(Direction(token_direction(model, token_id), label=f"embedding of token {token_id}"), hook,
                        "add", float(scale), positions=positions)
