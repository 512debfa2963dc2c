"""``interp.load``: one entry point for every model the toolkit knows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from interp import zoo
from interp.hooks.config import RWKV_MODEL_TYPES, SSM_MODEL_TYPES
from interp.hooks.hybrid_config import HYBRID_MODEL_TYPES
from interp.locks import warn_if_being_written

SSM_TYPES = SSM_MODEL_TYPES  # the Hugging Face model types HookedSSM loads (interp.hooks.config)


def load(
    model: str | os.PathLike | torch.nn.Module,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> Any:
    """Load a hookable model.

    ``model`` may be:

    * the name of an embedded model shipped with the package (``interp.zoo.list_models()``);
    * a local folder written by ``save_pretrained`` (Mamba, Mamba-2, FalconMamba, Bamba, Nemotron-H, Jamba, GPT-2,
      GPT-NeoX/Pythia, ...);
    * a Hugging Face hub id (``"state-spaces/mamba-130m-hf"``, needs network) or a TransformerLens
      model name (``"gpt2"``, ``"pythia-70m"``);
    * an in-memory ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` / ``FalconMambaForCausalLM`` /
      ``BambaForCausalLM`` / ``NemotronHForCausalLM`` / ``JambaForCausalLM`` / ``GraniteMoeHybridForCausalLM`` /
      transformers causal LM.

    Returns a :class:`interp.hooks.HookedSSM` for state-space models, a :class:`interp.hooks.HookedHybrid` for
    hybrids (Bamba, Nemotron-H, Jamba, Granite-4.0-H, Falcon-H1), otherwise a
    TransformerLens-based :class:`interp.hooks.HookedTransformerModel`. Both share the same API.
    """
    from interp.hooks import HookedSSM
    from interp.hooks.loading import read_config, resolve_checkpoint

    if isinstance(model, torch.nn.Module):
        if getattr(getattr(model, "config", None), "model_type", None) in SSM_TYPES:
            return HookedSSM.from_hf_model(model, **kwargs).to(device=device, dtype=dtype)
        if getattr(getattr(model, "config", None), "model_type", None) in HYBRID_MODEL_TYPES:
            from interp.hooks.hybrid import HookedHybrid

            return HookedHybrid.from_hf_model(model, **kwargs).to(device=device, dtype=dtype)
        if getattr(getattr(model, "config", None), "model_type", None) in RWKV_MODEL_TYPES:
            from interp.hooks.rwkv import HookedRWKV

            return HookedRWKV.from_hf_model(model, **kwargs).to(device=device, dtype=dtype)
        from interp.hooks.transformer import HookedTransformerModel

        return HookedTransformerModel.from_hf_model(model, device=device, dtype=dtype, **kwargs)

    name = str(model)
    embedded = zoo.embedded_path(name)
    if embedded is None and not Path(name).expanduser().is_dir() and "/" not in name:
        return _load_bare_name(name, device, dtype, **kwargs)
    folder = embedded or resolve_checkpoint(name)
    if embedded is None:
        warn_if_being_written(folder, "model folder")  # `interp train` still writes it: a snapshot
    mt = read_config(folder, verify=False).get("model_type")  # the loader verifies the folder's checksums
    if mt in SSM_TYPES:
        return HookedSSM.from_pretrained(str(folder), device=device, dtype=dtype)
    if mt in HYBRID_MODEL_TYPES:
        from interp.hooks.hybrid import HookedHybrid

        return HookedHybrid.from_pretrained(str(folder), device=device, dtype=dtype)
    if mt in RWKV_MODEL_TYPES:
        from interp.hooks.rwkv import HookedRWKV

        return HookedRWKV.from_pretrained(str(folder), device=device, dtype=dtype)
    return _load_transformer(str(folder), device, dtype, **kwargs)


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
                try:
                    found.append(inside_roots(dirpath, resolved))
                except ValueError:
                    pass
            if len(found) >= limit:
                return sorted(found)
    return sorted(found)


DEFAULT_MODEL = "tokfsm-mamba"


OUTSIDE = "is outside the folders this app may read"
#: JSON keys whose entries name files relative to the document's folder: a checksum record's files, a sharded
#: checkpoint's weight_map, a codebook model's sites
_PATH_KEYS = (("checksums", "files", "keys"), ("weight_map", None, "values"), ("sites", None, "values"))


def inside_roots(path: str | os.PathLike, roots: list[Path] | tuple[Path, ...], *, contents: bool = False,
                 shown: str | os.PathLike | None = None, max_entries: int = 10_000, max_depth: int = 4) -> Path:
    """``path`` resolved (``os.path.realpath``: every symlink followed, ``..`` collapsed) if it lies inside one
    of ``roots`` (resolved too, so a root given through a symlink works); else ValueError naming only ``shown``
    (default ``path``, what the user typed), worded the same whether or not the path exists.

    ``contents``: for a folder, also every file and folder under it (``max_depth`` levels, symlinks followed) and
    every path its JSON files name (checksum records, ``weight_map``, codebook ``sites``) must resolve inside
    the roots: a symlinked weights file, a folder of symlinks or an index naming ``/abs`` or ``../..`` is refused.
    The app's one path check; the library loaders themselves read any path their caller gives."""
    shown = path if shown is None else shown
    real = [Path(os.path.realpath(Path(r).expanduser())) for r in roots]

    def check(q: str | os.PathLike, name: Any) -> Path:
        q = Path(os.path.realpath(Path(q).expanduser()))
        if not any(q == r or r in q.parents for r in real):
            listed = ", ".join(str(r) for r in roots) or "(none configured)"
            raise ValueError(f"{name} {OUTSIDE} ({listed}). Start the app with --roots to allow another folder.")
        return q

    p = check(path, shown)
    if contents and p.is_dir():
        seen = 0
        for dirpath, dirnames, filenames in os.walk(p, followlinks=True):
            rel = Path(dirpath).relative_to(p)
            seen += len(dirnames) + len(filenames)
            if seen > max_entries:
                raise ValueError(f"{shown} holds over {max_entries} files: too many to check; choose its subfolder.")
            for n in dirnames + filenames:
                check(Path(dirpath) / n, Path(shown) / rel / n)
            if len(rel.parts) + 1 >= max_depth:
                dirnames[:] = []
            for n in filenames:
                for named in _named_paths(Path(dirpath) / n):
                    check(Path(dirpath) / named, f"A path named in {Path(shown) / rel / n}")
    return p


def _named_paths(file: Path, max_bytes: int = 4 * 2**20) -> list[str]:
    """The relative paths a JSON file names under :data:`_PATH_KEYS` ([] for other files or unreadable JSON: the
    loader reports damage)."""
    if file.suffix != ".json" or not file.is_file() or file.stat().st_size > max_bytes:
        return []
    try:
        doc = json.loads(file.read_bytes())
    except (OSError, ValueError):
        return []
    out: list[str] = []
    for key, sub, part in _PATH_KEYS:
        entry = doc.get(key) if isinstance(doc, dict) else None
        entry = entry.get(sub) if sub and isinstance(entry, dict) else entry
        if isinstance(entry, dict):
            out += [str(x) for x in (entry.keys() if part == "keys" else entry.values()) if isinstance(x, str)]
    return out


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
    pathlike = spec.startswith(("/", ".", "~")) or ".." in Path(spec).parts or spec.count("/") > 1 or "\\" in spec
    if not (p.exists() or pathlike):
        return spec
    folder = inside_roots(p, roots, contents=True, shown=spec)  # before any existence check: nothing leaks
    if not folder.exists():
        raise ValueError(f"The model path {spec!r} does not exist.")
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ValueError(f"{spec} is not a model folder (it needs a config.json and weights).")
    return str(folder)
