"""Load and save Hugging Face checkpoints, from safetensors only.

A checkpoint is a folder with ``config.json``, ``model.safetensors`` (or a sharded
``model.safetensors.index.json``) and, optionally, tokenizer files. Hub ids are fetched with
``huggingface_hub.snapshot_download`` restricted to those files, so no pickle is ever read.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import SSMConfig
from .tokenizer import TOKENIZER_FILE, DigitTokenizer

WEIGHT_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


class CheckpointError(OSError):
    """A checkpoint is missing, incomplete, corrupt or in an unsafe format."""


class UnknownModelError(KeyError, ValueError):
    """A model name that names nothing: no embedded model, folder, hub id or TransformerLens model.

    ``name`` is the name given and ``suggestions`` the known names closest to it. A ``KeyError`` (a failed
    look-up in a registry) and a ``ValueError`` (a bad argument), so code catching either keeps working.
    """

    def __init__(self, message: str, name: str | None = None, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.name, self.suggestions = name, list(suggestions)

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def unknown_name_error(name: str, known: Sequence[str], what: str = "embedded model") -> UnknownModelError:
    """The error for ``name`` missing from ``known``: the close names (as for hook names) or, if none is close,
    the list of known names."""
    from .hook_points import suggest

    close = suggest(name, known, margin=0.1)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"known: {', '.join(known)}"
    return UnknownModelError(f"no {what} named {name!r}; {hint}", name, close)


class ExistingRunError(ValueError):
    """An output folder holds the results of another run (a training checkpoint, an activation cache) that
    this call would mix with its own, so it refuses to continue.

    ``problem`` says what is wrong and ``details`` list the differences; ``restart`` is the keyword argument
    that starts over (``"resume=False"``, ``"overwrite=True"``) and ``folder`` the one that names the output
    folder (``"out"``). The message names them as Python arguments; :meth:`describe` renames them (the
    ``interp`` command names its flags).
    """

    def __init__(self, problem: str, restart: str, folder: str = "out", details: Sequence[str] = ()) -> None:
        super().__init__(problem, restart, folder, tuple(details))
        self.problem, self.restart, self.folder, self.details = problem, restart, folder, list(details)

    def describe(self, names: Mapping[str, str] | None = None, one_line: bool = False) -> str:
        """The message, with the arguments renamed by ``names`` (e.g. ``{"resume=False": "--no-resume"}``), the
        differences on one line each (or all on one line)."""
        names = names or {}
        remedy = (f"Pass {names.get(self.restart, self.restart)} to start over, or choose another folder "
                  f"({names.get(self.folder, self.folder + '=...')}).")
        if not self.details:
            return f"{self.problem}. {remedy}"
        if one_line:
            return f"{self.problem}: {'; '.join(self.details)}. {remedy}"
        return f"{self.problem}:\n" + "".join(f"  - {d}\n" for d in self.details) + remedy

    def __str__(self) -> str:
        return self.describe()


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id downloaded (config, safetensors, tokenizer only)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"checkpoint folder not found: {path}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated, ...
        raise CheckpointError(
            f"could not get {name!r}: it is not a local folder and the hub download failed "
            f"({type(e).__name__}: {e}). Offline (HF_HUB_OFFLINE=1)? Save the model with "
            "`save_pretrained(folder)` on a connected machine and pass the folder."
        ) from e


def read_config(folder: Path) -> dict[str, Any]:
    f = folder / "config.json"
    if not f.is_file():
        raise CheckpointError(f"missing {f}: a checkpoint folder needs config.json")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"corrupt {f}: {e}") from e


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder; refuses pickle formats, names any corrupt file."""
    files: list[Path]
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text())
        files = sorted({folder / f for f in index["weight_map"].values()})
    elif (folder / WEIGHT_FILE).is_file():
        files = [folder / WEIGHT_FILE]
    else:
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        hint = (
            f" Found {pickled}: pickle files are not loaded (they can run code). Convert once on a trusted "
            "machine: `AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`."
            if pickled else ""
        )
        raise CheckpointError(f"missing {folder / WEIGHT_FILE}: weights load from safetensors only.{hint}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"missing weight shard {f} listed in {folder / INDEX_FILE}")
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"corrupt weight file {f}: {e}") from e
    return state


def load_tokenizer(folder: Path) -> Any | None:
    """The tokenizer saved with the checkpoint, or None if there is none."""
    if (folder / TOKENIZER_FILE).is_file():
        return DigitTokenizer.from_pretrained(folder)
    if any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:
            raise CheckpointError(f"tokenizer files in {folder} could not be loaded: {e}") from e
    return None


# --------------------------------------------------------------------------------------------
# Hugging Face Mamba <-> ours
# --------------------------------------------------------------------------------------------
_HF_TO_OURS = [
    (r"^backbone\.embeddings?\.weight$", "embed.weight"),
    (r"^backbone\.layers\.(\d+)\.norm\.weight$", r"blocks.\1.ln1.weight"),
    (r"^backbone\.layers\.(\d+)\.mixer\.(.+)$", r"blocks.\1.ssm.\2"),
    (r"^backbone\.norm_f\.weight$", "ln_final.weight"),
    (r"^lm_head\.weight$", "unembed.weight"),
]
_OURS_TO_HF = [
    (r"^embed\.weight$", "backbone.embeddings.weight"),
    (r"^blocks\.(\d+)\.ln1\.weight$", r"backbone.layers.\1.norm.weight"),
    (r"^blocks\.(\d+)\.ssm\.(.+)$", r"backbone.layers.\1.mixer.\2"),
    (r"^ln_final\.weight$", "backbone.norm_f.weight"),
    (r"^unembed\.weight$", "lm_head.weight"),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pat, rep in rules:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    return None


def hf_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        new = _rename(k, _HF_TO_OURS)
        if new is not None:
            out[new] = v
    return out


def load_ssm_state(model: torch.nn.Module, hf_state: dict[str, torch.Tensor], source: str) -> None:
    """Copy Hugging Face-named tensors into a HookedSSM; complain precisely about mismatches."""
    ours = hf_to_ours(hf_state)
    if "unembed.weight" not in ours and model.cfg.tie_embeddings:
        ours["unembed.weight"] = ours.get("embed.weight")
    expected = model.state_dict()
    missing = [k for k in expected if k not in ours]
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing[:6]}{' ...' if len(missing) > 6 else ''}")
    for k, v in ours.items():
        if k in expected and expected[k].shape != v.shape:
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    model.load_state_dict({k: v for k, v in ours.items() if k in expected}, strict=True)


def to_hf_config(cfg: SSMConfig) -> Any:
    """An equivalent ``transformers`` MambaConfig / Mamba2Config."""
    from transformers import Mamba2Config, MambaConfig

    common = dict(
        vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layers, layer_norm_epsilon=cfg.norm_eps, expand=cfg.expand,
        conv_kernel=cfg.d_conv, use_bias=cfg.proj_bias, use_conv_bias=cfg.conv_bias,
        hidden_act="silu" if cfg.activation == "silu" else "linear", residual_in_fp32=cfg.residual_in_fp32,
        tie_word_embeddings=cfg.tie_embeddings, pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
    )
    if cfg.family == "mamba1":
        return MambaConfig(time_step_rank=cfg.dt_rank, **common)
    return Mamba2Config(
        num_heads=cfg.n_heads, head_dim=cfg.head_dim, n_groups=cfg.n_groups, chunk_size=cfg.chunk_size,
        time_step_limit=tuple(cfg.dt_limit), **common,
    )


def save_ssm(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write a Hugging Face-compatible checkpoint (config.json, model.safetensors, tokenizer)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_cfg = to_hf_config(model.cfg)
    cfg_dict = hf_cfg.to_dict()
    cfg_dict["architectures"] = ["MambaForCausalLM" if model.cfg.family == "mamba1" else "Mamba2ForCausalLM"]
    cfg_dict["interp"] = {k: v for k, v in model.cfg.to_dict().items() if k in ("name", "default_prepend_bos", "extra")}
    (folder / "config.json").write_text(json.dumps(cfg_dict, indent=2, default=str))
    state = {}
    for k, v in model.state_dict().items():
        if k == "unembed.weight" and model.cfg.tie_embeddings:
            continue
        state[_rename(k, _OURS_TO_HF)] = v.detach().contiguous().cpu()
    save_file(state, str(folder / WEIGHT_FILE), metadata={"format": "pt"})
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "save_pretrained"):
        tok.save_pretrained(str(folder))
    return folder
