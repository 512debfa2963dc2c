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
from safetensors.torch import save_file

from interp.io import (
    CHECKSUMS_FILE, REPAIR, CorruptFileError, FileError, IntegrityError, read_json, verify_checksums,
    write_checksums,
)
from interp.io import read_safetensors as read_safetensors_file

from .config import RWKV_MODEL_TYPES, SSM_MODEL_TYPES, SSMConfig
from .hybrid_config import HYBRID_MODEL_TYPES
from .tokenizer import TOKENIZER_FILE, DigitTokenizer

WEIGHT_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


class CheckpointError(OSError):
    """A checkpoint is missing, incomplete, corrupt or in an unsafe format."""


class CorruptCheckpointError(CheckpointError, CorruptFileError):
    """A file of a model folder cannot be read (empty, not JSON, not safetensors): a :class:`CheckpointError`
    and an :class:`interp.io.CorruptFileError`; the message names the file."""


class CheckpointIntegrityError(CheckpointError, IntegrityError):
    """A file of a model folder fails its sha256 checksum: a :class:`CheckpointError` and an
    :class:`interp.io.IntegrityError`; the message names the file and what to do."""


def _as_checkpoint_error(e: FileError) -> CheckpointError:
    cls = (CheckpointIntegrityError if isinstance(e, IntegrityError) else
           CorruptCheckpointError if isinstance(e, CorruptFileError) else CheckpointError)
    return cls(str(e)) if cls is CheckpointError else cls(str(e), e.path)


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


MODEL_RECORDS = (CHECKSUMS_FILE, "model_card.json", "codebooks.json")  # where a model folder's checksums live


def verify_model_folder(folder: Path) -> bool:
    """Check every file of a model folder against its checksum record(s) (``checksums.json`` written by
    ``save_pretrained``, an embedded model's ``model_card.json``, a codebook model's ``codebooks.json``) before
    anything is parsed: :class:`interp.io.IntegrityError` naming a changed file. A folder without a record (a hub
    download, a folder another library wrote) is read with an :class:`interp.io.UncheckedWarning`."""
    if not (folder / WEIGHT_FILE).is_file() and not (folder / INDEX_FILE).is_file() and _pickles(folder):
        _weight_files(folder)  # a pickle-only folder: the safetensors hint comes first
    try:
        return verify_checksums(folder, record=MODEL_RECORDS, what="model folder",
                                remedy="Save the model again (save_pretrained), re-run its training, or restore "
                                       "the folder from a copy")
    except FileError as e:
        raise _as_checkpoint_error(e) from e


def read_config(folder: Path, verify: bool = True) -> dict[str, Any]:
    """The folder's ``config.json``, after :func:`verify_model_folder` (``verify=True``)."""
    f = folder / "config.json"
    if not f.is_file():
        raise CheckpointError(f"missing {f}: a checkpoint folder needs config.json")
    if verify:
        verify_model_folder(folder)
    try:
        cfg = read_json(f, what="model config")
    except FileError as e:
        raise _as_checkpoint_error(e) from e
    if not isinstance(cfg, dict):
        raise CorruptCheckpointError(f"{f}: the model config holds no JSON object. {REPAIR}.", f)
    return cfg


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder; refuses pickle formats, names any corrupt file."""
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        if not f.is_file():
            raise CheckpointError(f"missing weight shard {f} listed in {folder / INDEX_FILE}")
        try:
            state.update(read_safetensors_file(f, what="weight file"))
        except FileError as e:
            raise _as_checkpoint_error(e) from e
    return state


def _pickles(folder: Path) -> list[str]:
    return [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder; a folder with pickles only is refused with a conversion
    hint (pickles are never loaded)."""
    files: list[Path]
    if (folder / INDEX_FILE).is_file():
        try:
            index = read_json(folder / INDEX_FILE, what="weight index")
            files = sorted({folder / f for f in index["weight_map"].values()})
        except FileError as e:
            raise _as_checkpoint_error(e) from e
        except (KeyError, TypeError, AttributeError) as e:
            raise CorruptCheckpointError(f"{folder / INDEX_FILE}: no weight_map of file names. {REPAIR}.",
                                         folder / INDEX_FILE) from e
    elif (folder / WEIGHT_FILE).is_file():
        files = [folder / WEIGHT_FILE]
    else:
        pickled = _pickles(folder)
        hint = (
            f" Found {pickled}: pickle files are not loaded (they can run code). Convert once on a trusted "
            "machine: `AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`."
            if pickled else ""
        )
        raise CheckpointError(f"missing {folder / WEIGHT_FILE}: weights load from safetensors only.{hint}")
    return files


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


#: Hugging Face Bamba -> ours (hooks/hybrid.py): SSM layers' ``mamba`` -> ``ssm``, ``self_attn`` -> ``attn``,
#: ``feed_forward`` -> ``mlp``, ``input_layernorm`` / ``pre_ff_layernorm`` -> ``ln1`` / ``ln2``
_HYBRID_HF_TO_OURS = [
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"blocks.\1.ln1.weight"),
    (r"^model\.layers\.(\d+)\.pre_ff_layernorm\.weight$", r"blocks.\1.ln2.weight"),
    (r"^model\.layers\.(\d+)\.mamba\.(.+)$", r"blocks.\1.ssm.\2"),
    (r"^model\.layers\.(\d+)\.self_attn\.(.+)$", r"blocks.\1.attn.\2"),
    (r"^model\.layers\.(\d+)\.feed_forward\.(.+)$", r"blocks.\1.mlp.\2"),
    (r"^model\.final_layernorm\.weight$", "ln_final.weight"),
    (r"^lm_head\.weight$", "unembed.weight"),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pat, rep in rules:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    return None


def hf_to_ours(state: dict[str, torch.Tensor], rules: list[tuple[str, str]] | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        new = _rename(k, _HF_TO_OURS if rules is None else rules)
        if new is not None:
            out[new] = v
    return out


#: the module each layer kind's mixer is in a HybridBlock (hooks/hybrid.py)
_HYBRID_MIXER_MODULE = {"ssm": "ssm", "attention": "attn", "mlp": "mlp"}


def _nemotron_h_rules(layer_types: Sequence[str]) -> list[tuple[str, str]]:
    """Hugging Face Nemotron-H -> ours: ``model.`` (in memory) or ``backbone.`` (the checkpoints, and what
    ``save_pretrained`` writes) prefix; each layer's one ``norm`` -> ``ln1``, its ``mixer`` -> ``ssm`` / ``attn`` /
    ``mlp`` by the layer's kind; ``embeddings`` / ``norm_f`` / ``lm_head``. ``mtp.*`` (multi-token prediction)
    matches nothing and is skipped, as HF skips it."""
    pre = r"^(?:model|backbone)\."
    rules = [(pre + r"embeddings\.weight$", "embed.weight"),
             (pre + r"layers\.(\d+)\.norm\.weight$", r"blocks.\1.ln1.weight")]
    rules += [(pre + rf"layers\.{i}\.mixer\.(.+)$", rf"blocks.{i}.{_HYBRID_MIXER_MODULE[kind]}.\1")
              for i, kind in enumerate(layer_types)]
    return rules + [(pre + r"norm_f\.weight$", "ln_final.weight"), (r"^lm_head\.weight$", "unembed.weight")]


def load_hybrid_state(model: torch.nn.Module, hf_state: dict[str, torch.Tensor], source: str) -> None:
    """Copy Hugging Face Bamba- (:data:`_HYBRID_HF_TO_OURS`), Nemotron-H- (:func:`_nemotron_h_rules`) or
    Jamba-named (:data:`_JAMBA_HF_TO_OURS`) tensors into a HookedHybrid, by ``model.cfg.hf_model_type``."""
    cfg = model.cfg
    if cfg.hf_model_type == "jamba":
        hf_state = _stack_jamba_experts(hf_state)
    if cfg.hf_model_type == "granitemoehybrid":
        hf_state = _split_granite_shared_mlp(hf_state)
    if cfg.hf_model_type == "zamba2":
        hf_state = _spread_zamba2_shared(hf_state, cfg, source)
    if cfg.hf_model_type == "olmo_hybrid":
        hf_state = _join_olmo_hybrid_conv(hf_state)
    if cfg.hf_model_type == "qwen3_next":
        hf_state = _split_qwen3_next_fused(_stack_jamba_experts(hf_state), cfg)
    if cfg.hf_model_type == "xlstm":
        hf_state = _split_xlstm_fused(hf_state, cfg)
    if cfg.hf_model_type == "kimi_linear":
        hf_state = _kimi_linear_in_memory_names(hf_state)
    load_ssm_state(model, hf_state, source, rules=_HYBRID_WEIGHT_TABLES[cfg.hf_model_type](cfg.layer_types))


def _stack_jamba_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Jamba checkpoints (and ``save_pretrained``) store each expert as ``feed_forward.experts.{e}.gate_proj`` /
    ``up_proj`` / ``down_proj.weight`` (Qwen3-Next's as ``mlp.experts.{e}.*``); the in-memory model (and ours)
    stack them as ``experts.gate_up_proj`` [E, 2·d_mlp, d_model] (gate rows first) and ``experts.down_proj``
    [E, d_model, d_mlp], as HF's conversion mapping for "jamba" does. Keys already stacked pass through."""
    per: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*\.(?:feed_forward|mlp)\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", k)
        if m is None:
            out[k] = v
        else:
            per.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = v
    for prefix, experts in per.items():
        order = [experts[e] for e in sorted(experts)]
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([x["gate_proj"], x["up_proj"]], 0) for x in order])
        out[f"{prefix}.down_proj"] = torch.stack([x["down_proj"] for x in order])
    return out


#: Hugging Face Jamba -> ours: Bamba's names (same layer layout); a MoE layer's ``feed_forward.router`` /
#: ``feed_forward.experts`` -> ``moe.router`` / ``moe.experts`` (the first rule wins, so they come first)
_JAMBA_HF_TO_OURS = [
    (r"^model\.layers\.(\d+)\.feed_forward\.((?:router|experts)\..+)$", r"blocks.\1.moe.\2"),
    *_HYBRID_HF_TO_OURS,
]


def _split_granite_shared_mlp(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Granite-4.0-H's shared MLP stores gate and up as one ``shared_mlp.input_linear.weight`` [2·d_mlp, d_model]
    (HF chunks its output in two: gate first, then up): split it into ``shared_mlp.gate_proj.weight`` and
    ``shared_mlp.up_proj.weight`` (our gated MLP's); ``output_linear`` is renamed by :data:`_GRANITE_HF_TO_OURS`."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*\.shared_mlp)\.input_linear\.weight$", k)
        if m is None:
            out[k] = v
        else:
            out[f"{m.group(1)}.gate_proj.weight"], out[f"{m.group(1)}.up_proj.weight"] = v.chunk(2, dim=0)
    return out


#: Hugging Face Granite-4.0-H (GraniteMoeHybrid) -> ours: ``mamba`` -> ``ssm``, ``self_attn`` -> ``attn``,
#: ``input_layernorm`` / ``post_attention_layernorm`` -> ``ln1`` / ``ln2``, ``model.norm`` -> ``ln_final``; the shared
#: MLP (split by :func:`_split_granite_shared_mlp`) -> ``mlp`` (``output_linear`` -> ``down_proj``); the experts
#: ``block_sparse_moe`` -> ``moe``, under the in-memory names (``router.weight``, ``experts.gate_up_proj`` /
#: ``experts.down_proj``) or the checkpoints' (``router.layer.weight``, ``input_linear.weight`` /
#: ``output_linear.weight``, the same layouts: HF's conversion mapping only renames them)
_GRANITE_HF_TO_OURS = [
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"blocks.\1.ln1.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"blocks.\1.ln2.weight"),
    (r"^model\.layers\.(\d+)\.mamba\.(.+)$", r"blocks.\1.ssm.\2"),
    (r"^model\.layers\.(\d+)\.self_attn\.(.+)$", r"blocks.\1.attn.\2"),
    (r"^model\.layers\.(\d+)\.shared_mlp\.(gate_proj|up_proj)\.weight$", r"blocks.\1.mlp.\2.weight"),
    (r"^model\.layers\.(\d+)\.shared_mlp\.output_linear\.weight$", r"blocks.\1.mlp.down_proj.weight"),
    (r"^model\.layers\.(\d+)\.block_sparse_moe\.router(?:\.layer)?\.weight$", r"blocks.\1.moe.router.weight"),
    (r"^model\.layers\.(\d+)\.block_sparse_moe\.(?:experts\.gate_up_proj|input_linear\.weight)$",
     r"blocks.\1.moe.experts.gate_up_proj"),
    (r"^model\.layers\.(\d+)\.block_sparse_moe\.(?:experts\.down_proj|output_linear\.weight)$",
     r"blocks.\1.moe.experts.down_proj"),
    (r"^model\.norm\.weight$", "ln_final.weight"),
    (r"^lm_head\.weight$", "unembed.weight"),
]

#: Hugging Face Zamba2 -> ours (the shared transformer's tensors are renamed by :func:`_spread_zamba2_shared` first
#: and pass through): a plain layer's ``mamba`` / ``input_layernorm``, a hybrid layer's ``mamba_decoder.mamba`` /
#: ``mamba_decoder.input_layernorm`` -> ``ssm`` / ``ln1``; its ``linear`` (the projection back) -> ``shared_proj``
_ZAMBA2_HF_TO_OURS = [
    (r"^(blocks\.\d+\..+)$", r"\1"),
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^model\.layers\.(\d+)\.(?:mamba_decoder\.)?mamba\.(.+)$", r"blocks.\1.ssm.\2"),
    (r"^model\.layers\.(\d+)\.(?:mamba_decoder\.)?input_layernorm\.weight$", r"blocks.\1.ln1.weight"),
    (r"^model\.layers\.(\d+)\.linear\.weight$", r"blocks.\1.shared_proj.weight"),
    (r"^model\.final_layernorm\.weight$", "ln_final.weight"),
    (r"^lm_head\.weight$", "unembed.weight"),
]

#: a Zamba2 shared transformer's parameters (after ``model.layers.{i}.shared_transformer.``) -> ours in each use
_ZAMBA2_SHARED = [(r"^self_attn\.([qkvo]_proj\.(?:weight|bias))$", r"attn.\1"),
                  (r"^feed_forward\.(down_proj\.(?:weight|bias))$", r"mlp.\1"),
                  (r"^input_layernorm\.weight$", "ln_attn.weight"), (r"^pre_ff_layernorm\.weight$", "ln_mlp.weight")]


def _spread_zamba2_shared(state: dict[str, torch.Tensor], cfg: Any, source: str) -> dict[str, torch.Tensor]:
    """HF Zamba2 keeps each shared transformer under the hybrid layers that use it (``model.layers.{i}.
    shared_transformer.*``; ``save_pretrained`` writes only the first use of each, the rest being tied) and its
    per-use adapters in lists indexed by use (``linear_q_adapter_list.{u}.0`` / ``.1``, ``gate_up_proj_adapter_list.
    {u}``). Ours: every use's module holds the shared tensors (the model ties them) and its own adapters
    (``attn.q_proj.lora_A`` / ``lora_B``, ...). The fused ``gate_up_proj`` [2·d_mlp, ...] (gate rows first) and its
    adapter's up half are split into ``mlp.gate_proj`` / ``mlp.up_proj``, whose adapters share ``lora_A``. Two uses
    of one shared block holding different tensors (HF leaves them untied when ``tie_word_embeddings`` is False) are
    refused (:class:`CheckpointError`): ours shares them."""
    uses = cfg.shared_attention_layers
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}

    def put(key: str, value: torch.Tensor, hf_key: str) -> None:
        if key in origin and not torch.equal(out[key], value):
            raise CheckpointError(f"{source}: {hf_key} differs from {origin[key]}, but both layers use shared block "
                                  f"{uses.index(int(hf_key.split('.')[2])) % cfg.n_shared_blocks} "
                                  f"(num_mem_blocks={cfg.n_shared_blocks}), whose weights are one tensor here (HF "
                                  "Zamba2 leaves them untied when tie_word_embeddings is False)")
        out[key], origin[key] = value, hf_key

    for k, v in state.items():
        m = re.match(r"^model\.layers\.(\d+)\.shared_transformer\.(.+)$", k)
        if m is None or int(m.group(1)) not in uses:
            out[k] = v
            continue
        rest = m.group(2)
        if a := re.match(r"^self_attn\.linear_([qkv])_adapter_list\.(\d+)\.([01])\.weight$", rest):
            layer = uses[int(a.group(2))]
            out[f"blocks.{layer}.attn.{a.group(1)}_proj.lora_{'AB'[int(a.group(3))]}.weight"] = v
            continue
        if a := re.match(r"^feed_forward\.gate_up_proj_adapter_list\.(\d+)\.([01])\.weight$", rest):
            pre = f"blocks.{uses[int(a.group(1))]}.mlp"
            if a.group(2) == "0":
                out[f"{pre}.gate_proj.lora_A.weight"] = out[f"{pre}.up_proj.lora_A.weight"] = v
            else:
                out[f"{pre}.gate_proj.lora_B.weight"], out[f"{pre}.up_proj.lora_B.weight"] = v.chunk(2, dim=0)
            continue
        block = uses.index(int(m.group(1))) % cfg.n_shared_blocks
        for u, layer in enumerate(uses):
            if u % cfg.n_shared_blocks != block:
                continue
            if g := re.match(r"^feed_forward\.gate_up_proj\.(weight|bias)$", rest):
                gate, up = v.chunk(2, dim=0)
                put(f"blocks.{layer}.mlp.gate_proj.{g.group(1)}", gate, k)
                put(f"blocks.{layer}.mlp.up_proj.{g.group(1)}", up, k)
            elif (new := _rename(rest, _ZAMBA2_SHARED)) is not None:
                put(f"blocks.{layer}.{new}", v, k)
            else:
                out[k] = v  # unknown: matches no rule, so it is reported missing / skipped as any other
    return out


def _join_olmo_hybrid_conv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OLMo-Hybrid checkpoints store each Gated DeltaNet's conv as ``q_conv1d`` / ``k_conv1d`` / ``v_conv1d``
    weights; the in-memory model (and ours) has one ``conv1d`` over concat(q, k, v) (HF's conversion mapping
    concatenates them on dim 0). Keys already joined pass through. Kimi-Linear's (``self_attn``) too."""
    out, parts = {}, {}
    for k, v in state.items():
        m = re.match(r"^(.*\.(?:linear_attn|self_attn))\.([qkv])_conv1d\.weight$", k)
        if m is None:
            out[k] = v
        else:
            parts.setdefault(m.group(1), {})[m.group(2)] = v
    for prefix, p in parts.items():
        if set(p) == {"q", "k", "v"}:
            out[f"{prefix}.conv1d.weight"] = torch.cat([p["q"], p["k"], p["v"]], dim=0)
    return out


def _olmo_hybrid_rules(layer_types: Sequence[str]) -> list[tuple[str, str]]:
    """Hugging Face OLMo-Hybrid -> ours: ``linear_attn`` (the Gated DeltaNet, hooks/deltanet.py; its parameter
    names are HF's) -> ``ssm``, ``self_attn`` -> ``attn`` (``q_norm`` / ``k_norm`` included), ``mlp`` -> ``mlp``.
    The norms by the layer's kind: a "gated_deltanet" layer's ``input_layernorm`` / ``post_attention_layernorm``
    (pre-norms of the mixer / the MLP) -> ``ln1`` / ``ln2``; a post-norm "attention" layer's
    ``post_attention_layernorm`` / ``post_feedforward_layernorm`` (norms of the attention's / the MLP's output) ->
    ``ln1`` / ``ln2``. The checkpoints name ``input_layernorm`` / ``post_attention_layernorm``
    ``attention_layer_norm`` / ``feedforward_layer_norm`` (HF's conversion mapping renames them); both are read.
    ``model.norm`` -> ``ln_final``; ``mtp.*`` matches nothing and is skipped, as HF skips it."""
    rules = [(r"^model\.embed_tokens\.weight$", "embed.weight"),
             (r"^model\.layers\.(\d+)\.linear_attn\.(.+)$", r"blocks.\1.ssm.\2"),
             (r"^model\.layers\.(\d+)\.self_attn\.(.+)$", r"blocks.\1.attn.\2"),
             (r"^model\.layers\.(\d+)\.mlp\.(.+)$", r"blocks.\1.mlp.\2"),
             (r"^model\.norm\.weight$", "ln_final.weight"), (r"^lm_head\.weight$", "unembed.weight")]
    for i, t in enumerate(layer_types):
        names = ("(?:post_attention_layernorm|feedforward_layer_norm)", "post_feedforward_layernorm") \
            if t == "attention" else ("(?:input_layernorm|attention_layer_norm)",
                                      "(?:post_attention_layernorm|feedforward_layer_norm)")
        rules += [(rf"^model\.layers\.{i}\.{n}\.weight$", f"blocks.{i}.ln{j + 1}.weight") for j, n in enumerate(names)]
    return rules


def _split_qwen3_next_fused(state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """Qwen3-Next fuses projections that ours keeps apart; split them (HF ``fix_query_key_value_ordering`` and
    ``Qwen3NextAttention.forward``). A GDN's ``in_proj_qkvz`` [H_k·(2·d_k + 2·r·d_v), d] (r = H_v / H_k) is grouped
    by key head, each group q (d_k rows), k (d_k), v (r·d_v), z (r·d_v): -> ``q_proj`` / ``k_proj`` / ``v_proj`` /
    ``g_proj`` (z, the output gate), each the groups' parts in group order; ``in_proj_ba`` [H_k·2r, d], each group
    b (r rows), a (r): -> ``b_proj`` / ``a_proj``. An attention ``q_proj`` [n_heads·2·d_head, d] (and its bias) is
    per head query (d_head rows) then gate (d_head): -> ``q_proj`` / ``gate_proj``. Other keys pass through."""
    dc, nh, dh = cfg.delta, cfg.n_heads, cfg.d_head
    out = {}
    for k, v in state.items():
        if m := re.match(r"^(.*\.linear_attn)\.in_proj_qkvz\.weight$", k):
            r = dc.n_v_heads // dc.n_k_heads
            parts = v.view(dc.n_k_heads, 2 * dc.d_k + 2 * r * dc.d_v, -1).split(
                [dc.d_k, dc.d_k, r * dc.d_v, r * dc.d_v], dim=1)  # each [H_k, rows, d]
            for name, w in zip(("q_proj", "k_proj", "v_proj", "g_proj"), parts):
                out[f"{m.group(1)}.{name}.weight"] = w.reshape(-1, v.shape[-1])
        elif m := re.match(r"^(.*\.linear_attn)\.in_proj_ba\.weight$", k):
            b, a = v.view(dc.n_k_heads, 2, -1, v.shape[-1]).unbind(1)  # each [H_k, r, d]
            out[f"{m.group(1)}.b_proj.weight"], out[f"{m.group(1)}.a_proj.weight"] = (
                b.reshape(-1, v.shape[-1]), a.reshape(-1, v.shape[-1]))
        elif m := re.match(r"^(.*\.self_attn)\.q_proj\.(weight|bias)$", k):
            query, gate = v.view(nh, 2, dh, *v.shape[1:]).unbind(1)  # each [n_heads, d_head, (d)]
            out[f"{m.group(1)}.q_proj.{m.group(2)}"] = query.reshape(nh * dh, *v.shape[1:])
            out[f"{m.group(1)}.gate_proj.{m.group(2)}"] = gate.reshape(nh * dh, *v.shape[1:])
        else:
            out[k] = v
    return out


def _qwen3_next_rules(layer_types: Sequence[str]) -> list[tuple[str, str]]:
    """Hugging Face Qwen3-Next -> ours (after :func:`_split_qwen3_next_fused` and the experts' stacking):
    ``linear_attn`` -> ``ssm`` (``norm`` -> ``o_norm``, ``out_proj`` -> ``o_proj``), ``self_attn`` -> ``attn``;
    ``input_layernorm`` / ``post_attention_layernorm`` -> ``ln1`` / ``ln2`` (pre-norms on every layer); a MoE
    layer's ``mlp.gate`` (the router) -> ``moe.router``, ``mlp.experts`` -> ``moe.experts``, ``mlp.shared_expert``
    -> ``mlp`` and ``mlp.shared_expert_gate`` -> ``mlp.shared_expert_gate``; a dense layer's ``mlp`` -> ``mlp``.
    ``mtp.*`` (multi-token prediction) matches nothing and is skipped, as HF skips it."""
    pre = r"^model\.layers\.(\d+)\."
    return [(r"^model\.embed_tokens\.weight$", "embed.weight"),
            (pre + r"linear_attn\.norm\.weight$", r"blocks.\1.ssm.o_norm.weight"),
            (pre + r"linear_attn\.out_proj\.weight$", r"blocks.\1.ssm.o_proj.weight"),
            (pre + r"linear_attn\.(.+)$", r"blocks.\1.ssm.\2"),
            (pre + r"self_attn\.(.+)$", r"blocks.\1.attn.\2"),
            (pre + r"mlp\.gate\.weight$", r"blocks.\1.moe.router.weight"),
            (pre + r"mlp\.experts\.(.+)$", r"blocks.\1.moe.experts.\2"),
            (pre + r"mlp\.shared_expert\.(.+)$", r"blocks.\1.mlp.\2"),
            (pre + r"mlp\.(.+)$", r"blocks.\1.mlp.\2"),
            (pre + r"input_layernorm\.weight$", r"blocks.\1.ln1.weight"),
            (pre + r"post_attention_layernorm\.weight$", r"blocks.\1.ln2.weight"),
            (r"^model\.norm\.weight$", "ln_final.weight"), (r"^lm_head\.weight$", "unembed.weight")]


#: Hugging Face RecurrentGemma -> ours: each layer's ``temporal_block`` is an RG-LRU block (hooks/rglru.py, HF's
#: parameter names; its ``conv_1d``, ``linear_x`` ... as they are) -> ``ssm``, or local attention (``q/k/v/o_proj``)
#: -> ``attn`` (the first rule that matches wins: the attention names first); ``temporal_pre_norm`` /
#: ``channel_pre_norm`` -> ``ln1`` / ``ln2``, ``mlp_block`` -> ``mlp``, ``final_norm`` -> ``ln_final``; the tied
#: ``lm_head`` may be absent (the embedding is used)
_RECURRENT_GEMMA_HF_TO_OURS = [
    (r"^model\.embed_tokens\.weight$", "embed.weight"),
    (r"^model\.layers\.(\d+)\.temporal_block\.([qkvo]_proj\..+)$", r"blocks.\1.attn.\2"),
    (r"^model\.layers\.(\d+)\.temporal_block\.(.+)$", r"blocks.\1.ssm.\2"),
    (r"^model\.layers\.(\d+)\.temporal_pre_norm\.weight$", r"blocks.\1.ln1.weight"),
    (r"^model\.layers\.(\d+)\.channel_pre_norm\.weight$", r"blocks.\1.ln2.weight"),
    (r"^model\.layers\.(\d+)\.mlp_block\.(.+)$", r"blocks.\1.mlp.\2"),
    (r"^model\.final_norm\.weight$", "ln_final.weight"), (r"^lm_head\.weight$", "unembed.weight"),
]


#: Kimi-Linear checkpoint names -> the in-memory ones (HF's conversion mapping "kimi_linear", which
#: ``save_pretrained`` reverses): the MoE / MLP under ``block_sparse_moe``, the forget gate's tensors on
#: ``self_attn``, each expert's w1 / w3 / w2 (gate / up / down)
_KIMI_LINEAR_RENAMES = [(r"\.block_sparse_moe\.", ".mlp."),
                        (r"\.self_attn\.(f_a_proj|f_b_proj|dt_bias|A_log)\b", r".self_attn.forget_gate.\1"),
                        (r"(\.experts\.\d+)\.w1\.", r"\1.gate_proj."), (r"(\.experts\.\d+)\.w3\.", r"\1.up_proj."),
                        (r"(\.experts\.\d+)\.w2\.", r"\1.down_proj.")]


def _kimi_linear_in_memory_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Kimi-Linear state (a checkpoint's names or the in-memory model's) under the in-memory names: renamed by
    :data:`_KIMI_LINEAR_RENAMES`, experts stacked (:func:`_stack_jamba_experts`), the q / k / v convs joined
    (:func:`_join_olmo_hybrid_conv`)."""
    renamed = {}
    for k, v in state.items():
        for pat, rep in _KIMI_LINEAR_RENAMES:
            k = re.sub(pat, rep, k)
        renamed[k] = v
    return _join_olmo_hybrid_conv(_stack_jamba_experts(renamed))


def _kimi_linear_rules(layer_types: Sequence[str]) -> list[tuple[str, str]]:
    """Hugging Face Kimi-Linear (in-memory names) -> ours: ``self_attn`` -> ``ssm`` on "kda" layers (hooks/kda.py,
    HF's parameter names) and ``attn`` on attention layers (hooks/mla.py, HF's names); a MoE layer's ``mlp.gate``
    (router weight and ``e_score_correction_bias``) and ``mlp.experts`` -> ``moe``, its ``mlp.shared_experts`` ->
    ``mlp``; a dense layer's ``mlp`` -> ``mlp``; ``input_layernorm`` / ``post_attention_layernorm`` -> ``ln1`` /
    ``ln2``."""
    rules = [(r"^model\.embed_tokens\.weight$", "embed.weight"),
             (r"^model\.layers\.(\d+)\.mlp\.gate\.weight$", r"blocks.\1.moe.router.weight"),
             (r"^model\.layers\.(\d+)\.mlp\.gate\.e_score_correction_bias$", r"blocks.\1.moe.e_score_correction_bias"),
             (r"^model\.layers\.(\d+)\.mlp\.experts\.(.+)$", r"blocks.\1.moe.experts.\2"),
             (r"^model\.layers\.(\d+)\.mlp\.(?:shared_experts\.)?(.+)$", r"blocks.\1.mlp.\2"),
             (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"blocks.\1.ln1.weight"),
             (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"blocks.\1.ln2.weight"),
             (r"^model\.norm\.weight$", "ln_final.weight"), (r"^lm_head\.weight$", "unembed.weight")]
    return rules + [(rf"^model\.layers\.{i}\.self_attn\.(.+)$", rf"blocks.{i}.{'ssm' if t == 'kda' else 'attn'}.\1")
                    for i, t in enumerate(layer_types)]


#: each hybrid ``model_type`` (hooks/hybrid_config.py ``HYBRID_MODEL_TYPES``) -> its weight-name rules, given the layer kinds
_HYBRID_WEIGHT_TABLES = {"bamba": lambda layer_types: _HYBRID_HF_TO_OURS, "nemotron_h": _nemotron_h_rules,
                         "jamba": lambda layer_types: _JAMBA_HF_TO_OURS,
                         "granitemoehybrid": lambda layer_types: _GRANITE_HF_TO_OURS,
                         "zamba2": lambda layer_types: _ZAMBA2_HF_TO_OURS,
                         "falcon_h1": lambda layer_types: _HYBRID_HF_TO_OURS,  # Falcon-H1 names as Bamba's
                         "olmo_hybrid": _olmo_hybrid_rules, "qwen3_next": _qwen3_next_rules,
                         "kimi_linear": _kimi_linear_rules,
                         "recurrent_gemma": lambda layer_types: _RECURRENT_GEMMA_HF_TO_OURS,
                         "xlstm": lambda layer_types: _XLSTM_HF_TO_OURS}


def _split_xlstm_fused(state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """xLSTM with ``weight_mode`` "fused" stores ``mlstm_layer.qkv_opreact`` (rows q, k, v, o),
    ``mlstm_layer.ifgate_preact`` (rows i, f) and ``ffn.proj_up_gate_z`` (rows gate, up); ours (HF's "single"
    layout) holds them apart. Keys already apart pass through."""
    c = cfg.mlstm
    splits = {"mlstm_layer.qkv_opreact": (["q", "k", "v", "ogate_preact"], [c.qk_dim, c.qk_dim, c.v_dim, c.v_dim]),
              "mlstm_layer.ifgate_preact": (["igate_preact", "fgate_preact"], [c.n_heads, c.n_heads]),
              "ffn.proj_up_gate_z": (["proj_up_gate", "proj_up"], [cfg.d_mlp, cfg.d_mlp])}
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*\.blocks\.\d+\.)(mlstm_layer\.\w+|ffn\.\w+)\.(weight|bias)$", k)
        if m is None or m.group(2) not in splits:
            out[k] = v
            continue
        names, sizes = splits[m.group(2)]
        owner = m.group(2).split(".")[0]
        for name, part in zip(names, torch.split(v, sizes, dim=0)):
            out[f"{m.group(1)}{owner}.{name}.{m.group(3)}"] = part
    return out


#: Hugging Face xLSTM (``xLSTMForCausalLM``, "single" weight layout) -> ours: ``mlstm_layer`` (hooks/mlstm.py keeps
#: its names) -> ``ssm``, ``norm_mlstm`` / ``norm_ffn`` -> ``ln1`` / ``ln2``, the FFN's ``proj_up_gate`` /
#: ``proj_up`` / ``proj_down`` -> the gated MLP's ``gate_proj`` / ``up_proj`` / ``down_proj``
_XLSTM_HF_TO_OURS = [(r"^backbone\.embeddings\.weight$", "embed.weight"),
                     (r"^backbone\.blocks\.(\d+)\.norm_mlstm\.weight$", r"blocks.\1.ln1.weight"),
                     (r"^backbone\.blocks\.(\d+)\.mlstm_layer\.(.+)$", r"blocks.\1.ssm.\2"),
                     (r"^backbone\.blocks\.(\d+)\.norm_ffn\.weight$", r"blocks.\1.ln2.weight"),
                     (r"^backbone\.blocks\.(\d+)\.ffn\.proj_up_gate\.(\w+)$", r"blocks.\1.mlp.gate_proj.\2"),
                     (r"^backbone\.blocks\.(\d+)\.ffn\.proj_up\.(\w+)$", r"blocks.\1.mlp.up_proj.\2"),
                     (r"^backbone\.blocks\.(\d+)\.ffn\.proj_down\.(\w+)$", r"blocks.\1.mlp.down_proj.\2"),
                     (r"^backbone\.out_norm\.weight$", "ln_final.weight"), (r"^lm_head\.weight$", "unembed.weight")]


def load_ssm_state(model: torch.nn.Module, hf_state: dict[str, torch.Tensor], source: str,
                   rules: list[tuple[str, str]] | None = None) -> None:
    """Copy Hugging Face-named tensors into a HookedSSM (or, with ``rules``, another of our models); complain
    precisely about mismatches."""
    ours = hf_to_ours(hf_state, rules)
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


#: the Hugging Face class that loads each model type this module saves (``config.json`` "architectures")
HF_ARCHITECTURES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM",
                    "falcon_mamba": "FalconMambaForCausalLM"}


def to_hf_config(cfg: SSMConfig) -> Any:
    """An equivalent ``transformers`` MambaConfig / Mamba2Config / FalconMambaConfig (``cfg.hf_model_type``)."""
    from transformers import FalconMambaConfig, Mamba2Config, MambaConfig

    if cfg.in_proj_multipliers is not None or cfg.gate_norm != "after" or cfg.out_proj_bias not in (None,
                                                                                               cfg.proj_bias):
        raise ValueError("cannot save this mixer as a Mamba checkpoint: in_proj_multipliers, gate_norm other than "
                         "'after' or out_proj_bias != proj_bias (Falcon-H1's knobs) have no Mamba config field")
    common = dict(
        vocab_size=cfg.d_vocab, hidden_size=cfg.d_model, state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layers, layer_norm_epsilon=cfg.norm_eps, expand=cfg.expand,
        conv_kernel=cfg.d_conv, use_bias=cfg.proj_bias, use_conv_bias=cfg.conv_bias,
        hidden_act="silu" if cfg.activation == "silu" else "linear", residual_in_fp32=cfg.residual_in_fp32,
        tie_word_embeddings=cfg.tie_embeddings, pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
    )
    if cfg.hf_model_type == "falcon_mamba":
        return FalconMambaConfig(time_step_rank=cfg.dt_rank, mixer_rms_eps=cfg.mixer_rms_eps, **common)
    if cfg.family == "mamba1":
        return MambaConfig(time_step_rank=cfg.dt_rank, **common)
    return Mamba2Config(
        num_heads=cfg.n_heads, head_dim=cfg.head_dim, n_groups=cfg.n_groups, chunk_size=cfg.chunk_size,
        time_step_limit=tuple(cfg.dt_limit), **common,
    )


def save_ssm(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write a Hugging Face-compatible checkpoint (config.json, model.safetensors, tokenizer)."""
    return write_checkpoint(model, folder, to_hf_config(model.cfg).to_dict(),
                            HF_ARCHITECTURES[model.cfg.hf_model_type], _OURS_TO_HF)


def write_checkpoint(model: torch.nn.Module, folder: str | os.PathLike, hf_config: dict[str, Any], architecture: str,
                     rules: list[tuple[str, str]], transform: Any = None) -> Path:
    """Write ``model`` as a Hugging Face checkpoint into ``folder``: ``hf_config`` (the HF config dict; our own
    fields name / default_prepend_bos / extra under "interp") as config.json, the weights renamed by ``rules``
    (ours -> HF; a tied unembedding left out; ``transform(state)`` for layout changes) as model.safetensors, the
    tokenizer, and the checksums every load verifies."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    hf_config = {**hf_config, "architectures": [architecture],
                 "interp": {"name": cfg.name, "default_prepend_bos": cfg.default_prepend_bos, "extra": cfg.extra}}
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2, default=str))
    state = {_rename(k, rules): v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not (k == "unembed.weight" and cfg.tie_embeddings)}
    save_file(transform(state) if transform else state, str(folder / WEIGHT_FILE), metadata={"format": "pt"})
    write_model_checksums(folder, getattr(model, "tokenizer", None))
    return folder


#: ours -> Hugging Face Bamba names (the inverse of :data:`_HYBRID_HF_TO_OURS`), for :func:`save_hybrid`
_OURS_TO_BAMBA = [
    (r"^embed\.weight$", "model.embed_tokens.weight"),
    (r"^blocks\.(\d+)\.ln1\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^blocks\.(\d+)\.ln2\.weight$", r"model.layers.\1.pre_ff_layernorm.weight"),
    (r"^blocks\.(\d+)\.ssm\.(.+)$", r"model.layers.\1.mamba.\2"),
    (r"^blocks\.(\d+)\.attn\.(.+)$", r"model.layers.\1.self_attn.\2"),
    (r"^blocks\.(\d+)\.mlp\.(.+)$", r"model.layers.\1.feed_forward.\2"),
    (r"^ln_final\.weight$", "model.final_layernorm.weight"),
    (r"^unembed\.weight$", "lm_head.weight"),
]


def to_hf_bamba_config(cfg: Any) -> Any:
    """The ``BambaConfig`` of a Bamba-layout :class:`HybridConfig` (Mamba-2 and attention layers, each followed by a
    gated SiLU MLP, rotary embedding on half of each head); ValueError naming what a Bamba checkpoint cannot hold."""
    from transformers import BambaConfig

    s = cfg.ssm
    problems = [msg for bad, msg in (
        (cfg.hf_model_type != "bamba", f"model_type {cfg.hf_model_type!r} (only Bamba-layout hybrids are saved)"),
        (s.family != "mamba2" or "mlp" in cfg.layer_types or "parallel" in cfg.layer_types or not cfg.mlp_sublayer
         or not cfg.gated_mlp or cfg.moe_layers,
         "a layout other than Mamba-2 / attention layers with a gated MLP sublayer"),
        (cfg.act_fn != "silu" or s.activation != "silu", "an activation other than SiLU"),
        (cfg.d_head * cfg.n_heads != cfg.d_model, "d_head * n_heads != d_model"),
        (cfg.rotary_dim != cfg.d_head // 2, "rotary_dim != d_head // 2 (Bamba rotates half of each head)"),
        (s.d_inner != s.expand * cfg.d_model, "d_inner != expand * d_model"),
        (any(getattr(cfg, f, d) != d for f, d in (("embedding_multiplier", 1.0), ("residual_multiplier", 1.0),
                                                   ("attention_scale", None), ("logits_scale", 1.0),
                                                   ("attention_in_multiplier", 1.0), ("attention_out_multiplier", 1.0),
                                                   ("key_multiplier", 1.0), ("ssm_in_multiplier", 1.0),
                                                   ("ssm_out_multiplier", 1.0), ("mlp_gate_multiplier", 1.0),
                                                   ("mlp_down_multiplier", 1.0))),
         "scalar multipliers"),
        (s.in_proj_multipliers is not None or s.gate_norm != "after" or s.out_proj_bias not in (None, s.proj_bias),
         "Falcon-H1's mixer knobs (in_proj_multipliers, gate_norm, out_proj_bias)"),
    ) if bad]
    if problems:
        raise ValueError(f"cannot save this hybrid as a Bamba checkpoint: {'; '.join(problems)}")
    return BambaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
        attn_layer_indices=cfg.attention_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads, intermediate_size=cfg.d_mlp, hidden_act="silu",
        rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.n_ctx, tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        mamba_n_heads=s.H, mamba_d_head=s.P, mamba_n_groups=s.G, mamba_d_state=s.d_state, mamba_d_conv=s.d_conv,
        mamba_expand=s.expand, mamba_chunk_size=s.chunk_size, mamba_conv_bias=s.conv_bias,
        mamba_proj_bias=s.proj_bias, time_step_limit=tuple(s.dt_limit), attention_bias=cfg.attn_bias,
        mlp_bias=cfg.mlp_bias, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    )


def _ours_to_olmo_hybrid(layer_types: Sequence[str]) -> list[tuple[str, str]]:
    """Ours -> Hugging Face OLMo-Hybrid names (the inverse of :func:`_olmo_hybrid_rules`, in the names HF's
    ``save_pretrained`` writes: a GDN layer's ``attention_layer_norm`` / ``feedforward_layer_norm``, an attention
    layer's ``feedforward_layer_norm`` / ``post_feedforward_layernorm``); the GDN's ``conv1d`` is split into
    ``q_conv1d`` / ``k_conv1d`` / ``v_conv1d`` by :func:`save_hybrid`."""
    rules = [(r"^embed\.weight$", "model.embed_tokens.weight"),
             (r"^blocks\.(\d+)\.ssm\.(.+)$", r"model.layers.\1.linear_attn.\2"),
             (r"^blocks\.(\d+)\.attn\.(.+)$", r"model.layers.\1.self_attn.\2"),
             (r"^blocks\.(\d+)\.mlp\.(.+)$", r"model.layers.\1.mlp.\2"),
             (r"^ln_final\.weight$", "model.norm.weight"), (r"^unembed\.weight$", "lm_head.weight")]
    for i, t in enumerate(layer_types):
        names = ("feedforward_layer_norm", "post_feedforward_layernorm") if t == "attention" \
            else ("attention_layer_norm", "feedforward_layer_norm")
        rules += [(rf"^blocks\.{i}\.ln{j + 1}\.weight$", f"model.layers.{i}.{n}.weight") for j, n in enumerate(names)]
    return rules


def to_hf_olmo_hybrid_config(cfg: Any) -> Any:
    """The ``OlmoHybridConfig`` of an OLMo-Hybrid-layout :class:`HybridConfig` (the inverse of
    ``HybridConfig._from_olmo_hybrid``: Gated DeltaNet layers (pre-norm) and post-norm attention layers with q/k
    projection norms and a rotary embedding on the whole head, each followed by a gated SiLU MLP); ValueError naming
    what an OLMo-Hybrid checkpoint cannot hold. transformers' ``OlmoHybridConfig`` needs at least one layer of each
    kind, and fills a missing ``rope_parameters`` with a default rotary embedding, so NoPE attention is refused."""
    from transformers import OlmoHybridConfig

    d = cfg.delta
    kinds = set(cfg.layer_types)
    problems = [msg for bad, msg in (
        (cfg.hf_model_type != "olmo_hybrid", f"model_type {cfg.hf_model_type!r}"),
        (cfg.ssm is not None or d is None or not kinds <= {"gated_deltanet", "attention"},
         "layers other than 'gated_deltanet' and 'attention'"),
        (kinds != {"gated_deltanet", "attention"},
         "no 'attention' or no 'gated_deltanet' layer (OlmoHybridConfig needs at least one of each)"),
        (not cfg.mlp_sublayer or not cfg.gated_mlp or cfg.moe_layers or cfg.mlp_bias,
         "a layout other than one gated MLP sublayer (no bias) per layer"),
        (cfg.act_fn != "silu" or (d is not None and d.activation not in ("silu", "swish")),
         "an activation other than SiLU"),
        (sorted(cfg.post_norm_layers) != cfg.attention_layers, "post_norm_layers other than the attention layers"),
        (cfg.qk_norm != "projection", "qk_norm other than 'projection'"),
        (cfg.rotary_dim != cfg.d_head, "rotary_dim != d_head (OLMo-Hybrid rotates the whole head; NoPE is refused)"),
        (d is not None and (d.conv_bias or not d.qk_l2norm or d.gate_norm_eps != 1e-5 or d.l2norm_eps != 1e-6
                            or d.beta_scale not in (1.0, 2.0) or d.d_model != cfg.d_model),
         "Gated DeltaNet knobs HF fixes (conv_bias False, qk_l2norm, gate_norm_eps 1e-5, l2norm_eps 1e-6, "
         "beta_scale 1 or 2, d_model)"),
        (any(getattr(cfg, f, v) != v for f, v in (("embedding_multiplier", 1.0), ("residual_multiplier", 1.0),
                                                  ("attention_scale", None), ("logits_scale", 1.0),
                                                  ("attention_in_multiplier", 1.0), ("attention_out_multiplier", 1.0),
                                                  ("key_multiplier", 1.0), ("ssm_in_multiplier", 1.0),
                                                  ("ssm_out_multiplier", 1.0), ("mlp_gate_multiplier", 1.0),
                                                  ("mlp_down_multiplier", 1.0))),
         "scalar multipliers"),
    ) if bad]
    if problems:
        raise ValueError(f"cannot save this hybrid as an OLMo-Hybrid checkpoint: {'; '.join(problems)}")
    kinds_hf = {"gated_deltanet": "linear_attention", "attention": "full_attention"}
    extra = {} if cfg.d_head * cfg.n_heads == cfg.d_model else {"head_dim": cfg.d_head}
    return OlmoHybridConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_key_value_heads,
        hidden_act="silu", max_position_embeddings=cfg.n_ctx, rms_norm_eps=cfg.norm_eps,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        tie_word_embeddings=cfg.tie_embeddings, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=cfg.attn_bias, layer_types=[kinds_hf[t] for t in cfg.layer_types],
        linear_num_key_heads=d.n_k_heads, linear_num_value_heads=d.n_v_heads, linear_key_head_dim=d.d_k,
        linear_value_head_dim=d.d_v, linear_conv_kernel_dim=d.d_conv, linear_allow_neg_eigval=d.beta_scale == 2.0,
        **extra,
    )


def _split_olmo_hybrid_conv(state: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """The inverse of :func:`_join_olmo_hybrid_conv`: each ``linear_attn.conv1d.weight`` as the checkpoints'
    ``q_conv1d`` / ``k_conv1d`` / ``v_conv1d`` weights (key_dim, key_dim, value_dim rows)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*\.linear_attn)\.conv1d\.weight$", k)
        if m is None:
            out[k] = v
            continue
        q, kk, vv = torch.split(v, [cfg.delta.key_dim, cfg.delta.key_dim, cfg.delta.value_dim], dim=0)
        out.update({f"{m.group(1)}.q_conv1d.weight": q.contiguous(), f"{m.group(1)}.k_conv1d.weight": kk.contiguous(),
                    f"{m.group(1)}.v_conv1d.weight": vv.contiguous()})
    return out


#: the hybrid model types :func:`save_hybrid` writes: (config builder, HF class, ours -> HF weight-name rules)
_HYBRID_SAVERS = {"bamba": (to_hf_bamba_config, "BambaForCausalLM", lambda layer_types: _OURS_TO_BAMBA),
                  "olmo_hybrid": (to_hf_olmo_hybrid_config, "OlmoHybridForCausalLM", _ours_to_olmo_hybrid)}


def save_hybrid(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write a Bamba- or OLMo-Hybrid-layout HookedHybrid (by ``cfg.hf_model_type``; other types go to
    :func:`to_hf_bamba_config`, which names what a Bamba checkpoint cannot hold) as a Hugging Face checkpoint
    (config.json, model.safetensors, tokenizer, checksums) that both :func:`interp.load` and
    ``BambaForCausalLM`` / ``OlmoHybridForCausalLM.from_pretrained`` read."""
    if model.cfg.hf_model_type == "qwen3_next":  # its fused projections are split at load and not re-fused here
        raise ValueError("cannot save a Qwen3-Next model (hf_model_type 'qwen3_next'): save_pretrained writes Bamba "
                         "and OLMo-Hybrid checkpoints only; keep the original Qwen3-Next checkpoint instead")
    to_config, arch, rules = _HYBRID_SAVERS.get(model.cfg.hf_model_type, _HYBRID_SAVERS["bamba"])
    hf_config = to_config(model.cfg).to_dict()  # raises, naming what the format cannot hold, before any write
    split = (lambda state: _split_olmo_hybrid_conv(state, model.cfg)) if model.cfg.hf_model_type == "olmo_hybrid" \
        else None
    return write_checkpoint(model, folder, hf_config, arch, rules(model.cfg.layer_types), transform=split)


def write_model_checksums(folder: Path, tokenizer: Any = None) -> Path:
    """Save ``tokenizer`` (if any) into a model folder, then write ``checksums.json`` for ``config.json``, the
    weights and the tokenizer's files (:func:`verify_model_folder` checks them at every load)."""
    written: list[str] = []
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        written = [str(p) for p in tokenizer.save_pretrained(str(folder)) or ()]
    files = {"config.json", WEIGHT_FILE} | {Path(p).name for p in written if (folder / Path(p).name).is_file()}
    return write_checksums(folder, sorted(files))


# --------------------------------------------------------------------------------------------
# memory guard for models built from a config.json
# --------------------------------------------------------------------------------------------
#: the most parameter memory a model built from a ``config.json`` may take (float32 bytes) before anything is
#: allocated; ``INTERP_MAX_MODEL_BYTES`` overrides it. 48 GiB: every embedded model, Mamba-2.8B (11 GB) and a 7B
#: model (29 GB) pass; a ``hidden_size`` or layer count off by orders of magnitude does not.
DEFAULT_MODEL_BUDGET_BYTES = 48 * 2**30
#: the config.json fields that set a model's size, in the names of every family we load
SIZE_FIELDS = ("hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "n_layers", "vocab_size",
               "d_vocab", "intermediate_size", "n_inner", "d_mlp", "state_size", "expand", "num_heads", "head_dim",
               "n_groups", "time_step_rank")


class ModelTooLargeError(CheckpointError, MemoryError):
    """A config.json describes a model over the memory budget (refused before any allocation)."""


def _first(raw: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    return next((raw[n] for n in names if isinstance(raw.get(n), (int, float)) and not isinstance(raw[n], bool)),
                default)


def estimate_parameters(raw: Mapping[str, Any]) -> int:
    """Parameters of the model a ``config.json`` dict describes, from its size fields alone (an upper estimate):
    Mamba-1 / Mamba-2 / FalconMamba (embedding + per layer in_proj, conv, x/dt projections, A, D, out_proj, norm), a
    hybrid (every layer counted with a Mamba mixer, attention and a gated MLP or all its experts), RWKV-4 (time and
    channel mixing) or a transformer (embedding, unembedding, per layer 4·d² attention + 2·d·d_mlp MLP)."""
    inner = raw.get("hooked_transformer_config")
    if isinstance(inner, Mapping):
        raw = {**raw, **inner}
    d = int(_first(raw, "hidden_size", "n_embd", "d_model", default=0))
    n = int(_first(raw, "num_hidden_layers", "n_layer", "n_layers", default=0))
    v = int(_first(raw, "vocab_size", "d_vocab", default=0))
    if raw.get("model_type") in SSM_MODEL_TYPES:
        di = int(_first(raw, "intermediate_size", default=0) or _first(raw, "expand", default=2) * d)
        N = int(_first(raw, "state_size", default=16))
        G = int(_first(raw, "n_groups", default=1))
        H = int(_first(raw, "num_heads", default=0))
        r = int(_first(raw, "time_step_rank", default=0) or -(-d // 16))
        K = int(_first(raw, "conv_kernel", default=4))
        per = d * (2 * di + 2 * G * N + H) + (di + 2 * G * N) * K + di * (r + 2 * N) + r * di + di * (N + 2) \
            + di * d + 2 * d  # in_proj, conv, x_proj, dt_proj, A and D, out_proj, norms
        return v * d * 2 + n * per
    m = int(_first(raw, "intermediate_size", "n_inner", "d_mlp", default=0) or 4 * d)
    if raw.get("model_type") in HYBRID_MODEL_TYPES:
        return _estimate_hybrid(raw, d, n, v, m)
    if raw.get("model_type") in RWKV_MODEL_TYPES:  # time mixing: k, v, r, output (d x a); channel mixing: k, v, r
        a = int(_first(raw, "attention_hidden_size", default=0) or d)
        return 2 * v * d + n * (4 * d * a + 2 * d * m + d * d + 4 * a + 8 * d)
    return 2 * v * d + n * (4 * d * d + 2 * d * m + 4 * d)


#: hybrid config layer-list entries -> what the layer holds (s: SSM mixer, a: attention, f: MLP / experts)
_HYBRID_LAYER_PARTS = {"mamba": "s", "linear_attention": "s", "m": "s", "attention": "a", "full_attention": "a",
                       "*": "a", "hybrid": "sa", "mlp": "f", "-": "f", "moe": "e", "e": "e", "recurrent": "s"}


def _estimate_hybrid(raw: Mapping[str, Any], d: int, n: int, v: int, m: int) -> int:
    """:func:`estimate_parameters` of a hybrid, layer by layer from its layer list (``layers_block_type`` /
    ``layer_types`` / ``hybrid_override_pattern``; without one every layer holds both mixers, as Falcon-H1's);
    every expert counted (an upper estimate)."""
    listed = next((raw[k] for k in ("layers_block_type", "layer_types", "hybrid_override_pattern")
                   if isinstance(raw.get(k), (list, str)) and raw.get(k)), None)
    if listed is None and isinstance(raw.get("block_types"), list) and raw["block_types"]:  # RecurrentGemma: the
        listed = (list(raw["block_types"]) * n)[:n]                                           # pattern repeats
    layers = [_HYBRID_LAYER_PARTS.get(str(t).lower(), "sa") for t in listed] if listed else ["sa"] * n
    if raw.get("model_type") != "nemotron_h":  # every other family has an MLP sublayer in every layer, counted as the
        layers = [parts + "e" for parts in layers]  # larger of a dense MLP and the experts (which layers hold experts
    #                                                  is per-family knowledge; Nemotron-H lists its "moe" layers)
    di = int(_first(raw, "mamba_d_ssm", default=0) or _first(raw, "mamba_expand", "expand", default=2) * d)
    N = int(_first(raw, "mamba_d_state", "ssm_state_size", default=128))
    G = int(_first(raw, "mamba_n_groups", "mamba_ngroups", "n_groups", default=1))
    H = int(_first(raw, "mamba_n_heads", "n_mamba_heads", "mamba_num_heads", default=0))
    di = max(di, H * int(_first(raw, "mamba_head_dim", default=0)))
    K = int(_first(raw, "mamba_d_conv", "conv_kernel", default=4))
    r = int(_first(raw, "mamba_dt_rank", default=0) or -(-d // 16))
    ssm = d * (2 * di + 2 * G * N + H) + (di + 2 * G * N) * K + di * (r + 2 * N) + r * di + di * d
    d_attn = max(d, int(_first(raw, "num_attention_heads", default=0)) * int(_first(raw, "head_dim",
                                                                                    "attention_head_dim", default=0)))
    attn = 8 * d * d_attn  # 4 projections, counted at 2·d wide (Zamba2's shared blocks read concat(resid, embed))
    experts = int(_first(raw, "num_experts", "num_local_experts", "n_routed_experts", default=0))
    shared = int(_first(raw, "shared_intermediate_size", "shared_expert_intermediate_size", default=0))  # Qwen3-Next
    me = int(_first(raw, "moe_intermediate_size", default=0) or m)  # each expert's width (Kimi-Linear: < m)
    dense = 3 * d * (m + shared)  # a gated MLP (and a shared expert's)
    moe = 3 * d * (max(m, me * experts) + shared) + d * experts  # the gated MLP or every expert, shared MLP, router
    per = {"s": ssm, "a": attn, "f": dense, "e": moe}
    return 2 * v * d + sum(sum(per[c] for c in parts) + 4 * d for parts in layers)


def check_model_size(raw: Mapping[str, Any], where: str | os.PathLike, *, dtype_bytes: int = 4,
                     max_bytes: int | None = None) -> int:
    """Refuse (:class:`ModelTooLargeError`, naming ``where`` and its size fields) a ``config.json`` whose model
    would take more than ``max_bytes`` (default ``INTERP_MAX_MODEL_BYTES`` or :data:`DEFAULT_MODEL_BUDGET_BYTES`),
    before anything is allocated. Returns the estimated bytes."""
    if max_bytes is None:
        max_bytes = int(os.environ.get("INTERP_MAX_MODEL_BYTES", DEFAULT_MODEL_BUDGET_BYTES))
    need = estimate_parameters(raw) * dtype_bytes
    if need > max_bytes:
        inner = raw.get("hooked_transformer_config")
        merged = {**raw, **inner} if isinstance(inner, Mapping) else raw
        fields = ", ".join(f"{k}={merged[k]}" for k in SIZE_FIELDS if k in merged)
        raise ModelTooLargeError(
            f"{where}: the model it describes needs about {need / 2**30:.1f} GiB of parameters ({fields}), over the "
            f"budget of {max_bytes / 2**30:.1f} GiB; check these fields of config.json, or raise the budget with "
            "INTERP_MAX_MODEL_BYTES=<bytes>")
    return need
