"""Hugging Face GPT-2 / GPT-NeoX checkpoints -> TransformerLens configs and state dicts, and the
TransformerLens config's JSON round trip (``config.json`` of a folder written by
:meth:`~interp.hooks.transformer.HookedTransformerModel.save_pretrained`).

Weights are converted exactly as Hugging Face has them: no LayerNorm folding, no centering, so the
converted model's logits equal the Hugging Face model's. The weight converters are TransformerLens's
own, run on a flat safetensors state dict through :class:`_Tree`.

    hf_to_tl(hf_config, state, where, dtype)  -> (HookedTransformerConfig, TransformerLens state dict)
    cfg_to_json(cfg) / cfg_from_json(d, dtype)   HookedTransformerConfig <-> JSON-safe dict
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig

from .loading import CheckpointError

#: ``model_type`` in the ``config.json`` of a folder written by ``HookedTransformerModel.save_pretrained``
MODEL_TYPE = "hooked_transformer"
SUPPORTED_MODEL_TYPES = ("gpt2", "gpt_neox", MODEL_TYPE)

# HookedTransformerConfig fields never written to / read from config.json: derived in
# __post_init__ or from the tokenizer, machine-specific, or with side effects (seed reseeds torch).
_CFG_SKIP = {"device", "n_devices", "n_params", "seed", "tokenizer_prepends_bos", "init_weights", "dtype"}


class _Tree:
    """Attribute view of a flat state dict (``tree.transformer.h[0].ln_1.weight``), so that
    TransformerLens's weight converters, written against HF module trees, run on safetensors."""

    def __init__(self, state: dict[str, Tensor], prefix: str = ""):
        self._state, self._prefix = state, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = self._prefix + name
        if key in self._state:
            return self._state[key]
        if any(k.startswith(key + ".") for k in self._state):
            return _Tree(self._state, key + ".")
        raise AttributeError(f"checkpoint has no tensor {key!r}")

    def __getitem__(self, i: int) -> Any:
        return getattr(self, str(i))


# --------------------------------------------------------------------------------------------
# config: Hugging Face field -> TransformerLens field, per model type
# --------------------------------------------------------------------------------------------
def _gpt2_cfg(hf: Any) -> dict[str, Any]:
    n_embd, n_head = hf.n_embd, hf.n_head
    return {
        "d_model": n_embd, "d_head": n_embd // n_head, "n_heads": n_head,
        "d_mlp": getattr(hf, "n_inner", None) or 4 * n_embd, "n_layers": hf.n_layer,
        "n_ctx": hf.n_positions, "eps": hf.layer_norm_epsilon, "d_vocab": hf.vocab_size,
        "act_fn": hf.activation_function, "use_attn_scale": getattr(hf, "scale_attn_weights", True),
        "use_local_attn": False,
        "scale_attn_by_inverse_layer_idx": bool(getattr(hf, "scale_attn_by_inverse_layer_idx", False)),
        "normalization_type": "LN", "positional_embedding_type": "standard",
        "original_architecture": "GPT2LMHeadModel",
    }


def _neox_cfg(hf: Any) -> dict[str, Any]:
    from transformer_lens.loading_from_pretrained import _get_rope_theta
    from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config

    d_head = hf.hidden_size // hf.num_attention_heads
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size, "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings,
        "eps": hf.layer_norm_eps, "d_vocab": hf.vocab_size, "act_fn": hf.hidden_act, "use_attn_scale": True,
        "use_local_attn": False, "scale_attn_by_inverse_layer_idx": False,
        "parallel_attn_mlp": getattr(hf, "use_parallel_residual", True),
        "positional_embedding_type": "rotary", "rotary_adjacent_pairs": False,
        "rotary_dim": round(get_rotary_pct_from_config(hf) * d_head), "rotary_base": _get_rope_theta(hf),
        "normalization_type": "LN", "default_prepend_bos": False,
        "original_architecture": "GPTNeoXForCausalLM",
    }


# --------------------------------------------------------------------------------------------
# weights: Hugging Face state dict -> TransformerLens state dict, per model type
# --------------------------------------------------------------------------------------------
def _convert_gpt2(state: dict[str, Tensor], cfg: HookedTransformerConfig) -> dict[str, Tensor]:
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    state = dict(state)
    if not any(k.startswith("transformer.") for k in state):  # saved from GPT2Model (no LM head)
        state = {f"transformer.{k}": v for k, v in state.items()}
    if "lm_head.weight" not in state:  # tied embeddings are stored once
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return convert_gpt2_weights(_Tree(state), cfg)


def _convert_neox(state: dict[str, Tensor], cfg: HookedTransformerConfig) -> dict[str, Tensor]:
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights

    state = dict(state)
    if "lm_head.weight" not in state and "embed_out.weight" not in state:
        state["lm_head.weight"] = state["gpt_neox.embed_in.weight"]  # tie_word_embeddings=True
    return convert_neox_weights(_Tree(state), cfg)


_HF_KINDS = {"gpt2": (_gpt2_cfg, _convert_gpt2), "gpt_neox": (_neox_cfg, _convert_neox)}


def unsupported_model_error(model_type: Any, where: str) -> ValueError:
    """The error for a ``config.json`` / Hugging Face model whose ``model_type`` the adapter cannot load."""
    return ValueError(
        f"{where}: model_type {model_type!r} is not supported by the transformer adapter. Supported model "
        f"types: {', '.join(SUPPORTED_MODEL_TYPES)} (Mamba / Mamba-2 load through interp.load as HookedSSM). "
        "Other architectures TransformerLens knows can be loaded by their TransformerLens name "
        "(HookedTransformerModel.from_pretrained('gpt2'), needs network)."
    )


def hf_to_tl(hf_config: Any, state: dict[str, Tensor], where: str, dtype: torch.dtype | None,
             default_prepend_bos: bool | None = None) -> tuple[HookedTransformerConfig, dict[str, Tensor]]:
    """A Hugging Face config and state dict (GPT-2 or GPT-NeoX) -> a TransformerLens config (on the CPU,
    in ``dtype``, default float32) and the TransformerLens-named state dict. ``where`` names the source
    in errors; a state dict that does not fit the config raises :class:`CheckpointError`."""
    mt = getattr(hf_config, "model_type", None)
    if mt not in _HF_KINDS:
        raise unsupported_model_error(mt, where)
    make_cfg, convert = _HF_KINDS[mt]
    cfg_dict = make_cfg(hf_config)
    cfg_dict.update(
        model_name=Path(str(getattr(hf_config, "_name_or_path", "") or mt)).name or mt,
        init_weights=False, device="cpu", dtype=dtype or torch.float32, tokenizer_name=None,
    )
    if default_prepend_bos is not None:
        cfg_dict["default_prepend_bos"] = default_prepend_bos
    cfg = HookedTransformerConfig.from_dict(cfg_dict)
    try:
        tl_state = convert(state, cfg)
    except (AttributeError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{where}: weights do not match a {mt} model of this config: {e}") from e
    return cfg, tl_state


# --------------------------------------------------------------------------------------------
# the TransformerLens config as JSON
# --------------------------------------------------------------------------------------------
def cfg_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The JSON-safe fields of a config (``dtype`` as its name; device, seed and derived fields left out)."""
    out: dict[str, Any] = {}
    for k, v in cfg.to_dict().items():
        if k in _CFG_SKIP:
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    out["dtype"] = str(cfg.dtype).removeprefix("torch.")
    return out


def cfg_from_json(d: dict[str, Any], dtype: torch.dtype | None) -> HookedTransformerConfig:
    """:func:`cfg_to_json`'s output -> a config on the CPU, in ``dtype`` (default: the saved one).
    Unknown fields (a newer TransformerLens) are ignored with a warning."""
    saved_dtype = getattr(torch, str(d.get("dtype", "float32")), None)
    valid = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    unknown = sorted(set(d) - valid)
    if unknown:
        warnings.warn(f"ignoring unknown HookedTransformerConfig fields in config.json: {unknown}", stacklevel=3)
    d = {k: v for k, v in d.items() if k in valid and k not in _CFG_SKIP}
    if not isinstance(saved_dtype, torch.dtype):
        saved_dtype = torch.float32
    d.update(init_weights=False, device="cpu", dtype=dtype or saved_dtype)
    return HookedTransformerConfig.from_dict(d)
