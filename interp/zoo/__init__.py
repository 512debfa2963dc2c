"""Embedded models: small models trained by this package on tasks with a known ground truth.

They ship inside the package (``interp/zoo/weights/<name>/``: ``config.json``, ``model.safetensors``,
the tokenizer and ``model_card.json``) and load by name without any download::

    import interp
    model = interp.load("tokfsm-mamba")
    interp.zoo.list_models()          # ['tokfsm-mamba', 'tokfsm-mamba2', 'tokfsm-transformer', ...]
    interp.zoo.model_card("tokfsm-mamba")["metrics"]

============================  ==========  =======  ===========================================
name                          arch        task     metric (see ``interp.zoo.evaluate``)
============================  ==========  =======  ===========================================
``tokfsm-mamba``              Mamba-1     TokFSM   transition accuracy of 100 sampled sequences
``tokfsm-mamba2``             Mamba-2     TokFSM   transition accuracy
``tokfsm-transformer``        4L d128     TokFSM   transition accuracy (paper: 96.77%)
``copy-mamba``                Mamba-1     copy     copy token accuracy, lengths 16..32
``copy-mamba2``               Mamba-2     copy     copy token accuracy, lengths 16..32
``copy-hybrid``               hybrid      copy     copy token accuracy (Mamba-2, attention, Mamba-2)
``copy-deltanet``             hybrid      copy     copy token accuracy (attention, Gated DeltaNet ×2)
============================  ==========  =======  ===========================================

Retrain one with ``python -m interp.zoo.train NAME --install`` (recipes in :mod:`interp.zoo.recipes`).
This module imports nothing heavy: ``interp.load`` consults it for every name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from interp.io import RECORD_KEY, read_json, verify_checksums, write_checksums

__all__ = ["MODEL_NAMES", "WEIGHTS_DIR", "list_models", "embedded_path", "model_card", "model_task", "cards_markdown",
           "write_shipped_checksums", "verify_shipped_checksums"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_NAMES = ("tokfsm-mamba", "tokfsm-mamba2", "tokfsm-transformer", "copy-mamba", "copy-mamba2", "copy-hybrid",
               "copy-deltanet")
CARD_FILE = "model_card.json"


def list_models(include_missing: bool = False) -> list[str]:
    """Names of the embedded models whose weights are installed (all registry names with
    ``include_missing=True``), in registry order."""
    return [n for n in MODEL_NAMES if include_missing or embedded_path(n) is not None]


def embedded_path(name: str) -> Path | None:
    """The folder of embedded model ``name`` if its weights are installed (it has ``config.json``), else None.

    Any string is accepted (``interp.load`` asks for every name it is given); only registry names resolve.
    """
    if not isinstance(name, str) or name not in MODEL_NAMES:
        return None
    folder = WEIGHTS_DIR / name
    return folder if (folder / "config.json").is_file() else None


def model_card(name: str) -> dict[str, Any]:
    """The model card of an embedded model: config, recipe, data seed, steps, final loss, metrics, training time.

    Raises:
        KeyError: ``name`` is not an embedded model (the message lists the known ones).
        FileNotFoundError: the model is known but its weights or card are not installed.
    """
    if name not in MODEL_NAMES:
        raise KeyError(f"no embedded model named {name!r}; known: {', '.join(MODEL_NAMES)}")
    card = WEIGHTS_DIR / name / CARD_FILE
    if not card.is_file():
        raise FileNotFoundError(
            f"{card} is missing: the weights of {name!r} are not installed. "
            f"Train and install them with `python -m interp.zoo.train {name} --install`."
        )
    doc = read_json(card, what="model card")  # the card carries its own sha256: an edited card is refused
    doc.pop(RECORD_KEY, None)
    return doc


def model_task(name: str | None) -> str | None:
    """The task an embedded model was trained on, from its model card ("tokfsm", "copy", ...); None for anything
    without an installed card (a folder, a hub id, an embedded model not installed)."""
    if not name or name not in MODEL_NAMES:
        return None
    try:
        return model_card(name).get("task")
    except (OSError, ValueError):
        return None


def describe(card: dict[str, Any]) -> str:
    """"Mamba-1, 4 layers, d_model 64" from a model card (HF Mamba configs or a TransformerLens config)."""
    cfg = card["config"].get("hooked_transformer_config", card["config"])
    width = cfg.get("d_model") or cfg.get("hidden_size")
    layers = cfg.get("n_layers") or cfg.get("num_hidden_layers")
    arch = {"mamba1": "Mamba-1", "mamba2": "Mamba-2", "transformer": "transformer",
            "hybrid": "hybrid (Mamba-2 + attention)"}[card["arch"]]
    if cfg.get("model_type") == "olmo_hybrid":
        arch = "hybrid (Gated DeltaNet + attention)"
    return f"{arch}, {layers} layers, d_model {width}"


def cards_markdown(names: list[str] | None = None) -> str:
    """A markdown table of the installed models' cards: architecture, size, training, metric vs target."""
    rows = ["| name | model | params | task | steps | train s | metric (held out) | target |",
            "|---|---|---|---|---|---|---|---|"]
    for name in names or list_models():
        c = model_card(name)
        metric = c["metric"]
        rows.append(f"| `{name}` | {describe(c)} | {c['n_params'] / 1e3:.0f}k | {c['task']} "
                    f"| {c['steps']} | {c['training_time_s']:.0f} | {metric.replace('_', ' ')} "
                    f"**{c['metrics'][metric]:.4f}** | {c['target']} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------------------------
# checksums of the shipped folders


def _record_of(folder: Path) -> str:
    """The JSON document of a shipped folder that holds its checksums: the model card, or a codebook model's
    ``codebooks.json``."""
    return CARD_FILE if (folder / CARD_FILE).is_file() else "codebooks.json"


def _shipped_folders() -> list[Path]:
    return sorted(p for p in WEIGHTS_DIR.iterdir() if p.is_dir() and (p / _record_of(p)).is_file())


def write_shipped_checksums(folders: list[Path] | None = None) -> list[Path]:
    """(Re)write the sha256 of every file of each shipped folder (``interp/zoo/weights/*``, or ``folders``) into
    its model card (``model_card.json``) or, for a codebook model, its ``codebooks.json``; run after retraining
    or installing a model: ``python -c "import interp.zoo as z; z.write_shipped_checksums()"``.
    ``interp.load`` verifies them (``tests/test_faults_integrity.py`` checks the shipped ones match)."""
    out = []
    for folder in folders or _shipped_folders():
        record = _record_of(folder)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                       if p.is_file() and p.name != record and not p.name.endswith(".tmp"))
        out.append(write_checksums(folder, files, into=record))
    return out


def verify_shipped_checksums(folders: list[Path] | None = None) -> None:
    """Check every shipped folder against its record (:func:`write_shipped_checksums`); a folder without one
    fails (``interp.io.IntegrityError``)."""
    for folder in folders or _shipped_folders():
        verify_checksums(folder, record=_record_of(folder), what="embedded model", required=True,
                         remedy="Reinstall the package, or regenerate with interp.zoo.write_shipped_checksums() "
                                "after retraining")
