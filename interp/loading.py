"""``interp.load``: one entry point for every model the toolkit knows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from interp import zoo
from interp.io import read_json
from interp.locks import warn_if_being_written

SSM_TYPES = ("mamba", "mamba2")


def load(
    model: str | os.PathLike | torch.nn.Module,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> Any:
    """Load a hookable model.

    ``model`` may be:

    * the name of an embedded model shipped with the package (``interp.zoo.list_models()``);
    * a local folder written by ``save_pretrained`` (Mamba, Mamba-2, GPT-2, GPT-NeoX/Pythia, ...);
    * a Hugging Face hub id (``"state-spaces/mamba-130m-hf"``, needs network) or a TransformerLens
      model name (``"gpt2"``, ``"pythia-70m"``);
    * an in-memory ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` / transformers causal LM.

    Returns a :class:`interp.hooks.HookedSSM` for state-space models, otherwise a
    TransformerLens-based :class:`interp.hooks.HookedTransformerModel`. Both share the same API.
    """
    from interp.hooks import HookedSSM
    from interp.hooks.loading import read_config, resolve_checkpoint

    if isinstance(model, torch.nn.Module):
        if getattr(getattr(model, "config", None), "model_type", None) in SSM_TYPES:
            return HookedSSM.from_hf_model(model, **kwargs).to(device=device, dtype=dtype)
        from interp.hooks.transformer import HookedTransformerModel

        return HookedTransformerModel.from_hf_model(model, device=device, dtype=dtype, **kwargs)

    name = str(model)
    embedded = zoo.embedded_path(name)
    if embedded is not None:
        return HookedSSM.from_pretrained(str(embedded), device=device, dtype=dtype) \
            if _model_type(embedded) in SSM_TYPES else _load_transformer(str(embedded), device, dtype, **kwargs)

    if not Path(name).expanduser().is_dir() and "/" not in name:
        return _load_bare_name(name, device, dtype, **kwargs)
    folder = resolve_checkpoint(name)
    warn_if_being_written(folder, "model folder")  # `interp train` still writes it: a snapshot
    mt = read_config(folder, verify=False).get("model_type")  # the loader verifies the folder's checksums
    if mt in SSM_TYPES:
        return HookedSSM.from_pretrained(str(folder), device=device, dtype=dtype)
    return _load_transformer(str(folder), device, dtype, **kwargs)


def _model_type(folder: Path) -> str | None:
    return read_json(folder / "config.json", what="model config").get("model_type")


def _load_bare_name(name: str, device: Any, dtype: Any, **kwargs: Any) -> Any:
    """A name that is no folder and no hub id: a TransformerLens model name. An embedded model whose weights
    are not installed, or a name that is no TransformerLens name but close to an embedded one (a typo), fails
    saying so (no download is tried for a bare name)."""
    from interp.hooks.loading import CheckpointError, UnknownModelError, unknown_name_error

    if name in zoo.MODEL_NAMES:
        raise CheckpointError(f"the weights of the embedded model {name!r} are not installed: train and install "
                              f"them with `interp train {name} --install`")
    try:
        return _load_transformer(name, device, dtype, **kwargs)
    except UnknownModelError as e:
        typo = unknown_name_error(name, zoo.list_models())
        if typo.suggestions:
            raise typo from None
        raise UnknownModelError(f"{e} Embedded models: {', '.join(zoo.list_models())}.", name) from None


def _load_transformer(name: str, device: Any, dtype: Any, **kwargs: Any) -> Any:
    try:
        from interp.hooks.transformer import HookedTransformerModel
    except ImportError as e:  # pragma: no cover - adapter ships with the package
        raise ImportError(f"cannot load transformer {name!r}: {e}") from e
    return HookedTransformerModel.from_pretrained(name, device=device, dtype=dtype, **kwargs)


def find_folders(roots: list[Path] | tuple[Path, ...], holds: tuple[str, ...], limit: int = 200,
                 max_depth: int = 5) -> list[Path]:
    """Folders under ``roots`` holding every file named in ``holds`` (e.g. a model, an SAE, a codebook model),
    at most ``max_depth`` levels deep, resolved and sorted; at most ``limit``. A folder whose resolved path
    leaves every root (a symlink out) is skipped."""
    resolved = [Path(r).resolve() for r in roots]
    found: list[Path] = []
    for root in resolved:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            if len(Path(dirpath).relative_to(root).parts) >= max_depth:
                dirnames[:] = []
            if all(h in filenames for h in holds):
                p = Path(dirpath).resolve()
                if any(p == r or r in p.parents for r in resolved):
                    found.append(p)
            if len(found) >= limit:
                return sorted(found)
    return sorted(found)


DEFAULT_MODEL = "tokfsm-mamba"


def inside_roots(path: str | os.PathLike, roots: list[Path] | tuple[Path, ...]) -> Path:
    """``path`` resolved (symlinks followed), if it lies inside one of ``roots``; else ValueError."""
    p = Path(path).expanduser().resolve()
    if any(p == Path(r).resolve() or Path(r).resolve() in p.parents for r in roots):
        return p
    shown = ", ".join(str(r) for r in roots) or "(none configured)"
    raise ValueError(f"{path} is outside the folders this app may read ({shown}). "
                     "Start the app with --roots to allow another folder.")


def check_name(text: str, what: str) -> str:
    """A typed name stripped; ValueError if it holds control characters or is over 500 characters."""
    text = (text or "").strip()
    if any(ord(c) < 32 for c in text) or len(text) > 500:
        raise ValueError(f"The {what} name holds control characters or is too long.")
    return text


def default_model(requested: str | None = None) -> tuple[str, str | None]:
    """(model spec, note): ``requested`` if given, else the embedded ``tokfsm-mamba``, else the first installed
    embedded model (the note says why); ValueError when none is installed."""
    if requested:
        return requested, None
    installed = zoo.list_models()
    if DEFAULT_MODEL in installed:
        return DEFAULT_MODEL, None
    if installed:
        return installed[0], (f"The default embedded model {DEFAULT_MODEL!r} is not installed yet "
                              f"(train it with `interp train {DEFAULT_MODEL} --install`); showing "
                              f"{installed[0]!r} instead.")
    raise ValueError("No embedded model is installed and no --model was given: train one with "
                     "`interp train tokfsm-mamba --install` or start the app with --model FOLDER.")


def resolve_model_spec(spec: str, roots: list[Path] | tuple[Path, ...], cli_model: str | None = None) -> str:
    """A typed model name -> the string handed to :func:`load`; ValueError saying what is wrong.

    Embedded names pass if installed. An existing path must lie inside ``roots`` (or be ``cli_model``) and hold a
    ``config.json``. A path-like string (``/``, ``.``, ``~`` first, ``..`` in it) that does not exist is refused;
    ``owner/name`` and bare names pass as hub ids / TransformerLens names."""
    if not (spec or "").strip():
        raise ValueError("Enter a model: an embedded name, a folder inside the allowed roots, or a hub id.")
    spec = check_name(spec, "model")
    if spec in zoo.list_models(include_missing=True):
        if spec not in zoo.list_models():
            raise ValueError(f"The embedded model {spec!r} is not installed yet: train it with "
                             f"`interp train {spec} --install`.")
        return spec
    p = Path(spec).expanduser()
    if cli_model and p.exists() and Path(cli_model).expanduser().exists() and \
            p.resolve() == Path(cli_model).expanduser().resolve():
        return str(p.resolve())
    if p.exists():
        folder = inside_roots(p, roots)
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise ValueError(f"{spec} is not a model folder (it needs a config.json and weights).")
        return str(folder)
    if spec.startswith(("/", ".", "~")) or ".." in Path(spec).parts or spec.count("/") > 1 or "\\" in spec:
        raise ValueError(f"The model path {spec!r} does not exist.")
    return spec
