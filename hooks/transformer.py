"""Transformers through TransformerLens, with the toolkit's hook API.

:class:`HookedTransformerModel` is a TransformerLens ``HookedTransformer`` (usual hook names:
``hook_embed``, ``blocks.{i}.hook_resid_pre``, ``blocks.{i}.attn.hook_pattern``, ...) with the
:class:`~interp.hooks.api.InterpModelMixin` in front, so ``run_with_hooks`` checks names,
``run_with_cache`` estimates memory first, and ``generate`` decodes with a key/value cache (one
token of work per step) while every attached hook fires at every step, exactly as for
:class:`~interp.hooks.HookedSSM`.

Loading (safetensors only, weights exactly as Hugging Face has them: no LayerNorm folding, no
centering, so logits equal the Hugging Face model's; the conversion is :mod:`interp.hooks.convert_hf`):

* a folder written by ``transformers`` ``save_pretrained`` (``model_type`` gpt2 or gpt_neox);
* a folder written by :meth:`HookedTransformerModel.save_pretrained` (``model_type``
  ``"hooked_transformer"``: a TransformerLens config and state dict, for models trained here);
* an in-memory ``GPT2LMHeadModel`` / ``GPTNeoXForCausalLM`` (:meth:`from_hf_model`);
* a TransformerLens model name (``"gpt2"``, ``"pythia-70m"``), through TransformerLens (network).

A tiny model for training is ``HookedTransformerModel(HookedTransformerConfig(...), tokenizer)``.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.components import TransformerBlock
from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig
from transformer_lens.hook_points import HookPoint as _TLHookPoint
from transformer_lens.utilities.defaults_utils import USE_DEFAULT_VALUE

from .api import InterpModelMixin, as_filter
from .convert_hf import MODEL_TYPE, SUPPORTED_MODEL_TYPES, cfg_from_json, cfg_to_json, hf_to_tl, unsupported_model_error
from .hook_points import HookPoint
from .loading import WEIGHT_FILE, CheckpointError
from .shapes import hook_shapes_by_meta_forward, meta_shapes
from .tokens import check_token_ids
from .transformer_fused import FusedTransformerBlock


class HookedTransformerModel(InterpModelMixin, HookedTransformer):
    """A TransformerLens ``HookedTransformer`` with the toolkit's API (same as ``HookedSSM``).

    * ``run_with_hooks`` rejects unknown hook names (closest names suggested) and raises if a hook
      named by string never fired; ``run_with_cache`` refuses requests over ``max_cache_bytes``.
    * ``generate`` decodes with a key/value cache; hooks fire once on the prompt, then once per new
      token (position axis of length 1), with ``hook.ctx["positions"]`` the absolute positions.
    * ``to_tokens(..., return_mask=True)`` pads exactly (per-text tokenisation) and returns the mask.

    Build a fresh model with ``HookedTransformerModel(HookedTransformerConfig(...), tokenizer)``;
    the tokenizer may be a Hugging Face tokenizer or :class:`interp.hooks.tokenizer.DigitTokenizer`.
    """

    def __init__(
        self,
        cfg: HookedTransformerConfig | dict,
        tokenizer: Any | None = None,
        move_to_device: bool = True,
        default_padding_side: Literal["left", "right"] | None = None,
    ):
        with warnings.catch_warnings():  # TransformerLens 3 deprecates HookedTransformer for its bridge
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(cfg, tokenizer, move_to_device=move_to_device, default_padding_side=default_padding_side)

    def setup(self) -> None:
        """TransformerLens's ``setup`` (names every hook point) after turning each TransformerLens
        ``HookPoint`` into the toolkit's, which rejects an edit that changes the activation's shape
        (:class:`~interp.hooks.HookShapeError`) and costs nothing when no hook is attached, and each
        ``TransformerBlock`` into a :class:`~interp.hooks.transformer_fused.FusedTransformerBlock`
        (same weights and hooks; a fused forward when nothing inside it is watched, see
        :meth:`set_fused_inference`)."""
        for module in self.modules():
            if type(module) is _TLHookPoint:
                module.__class__ = HookPoint
            elif type(module) is TransformerBlock:
                module.__class__ = FusedTransformerBlock
        super().setup()

    def set_fused_inference(self, on: bool) -> None:
        """Switch the fused inference forward on (the default) or off for every block.

        With it on, a block runs fused operations (one LayerNorm call, one QKV product, PyTorch's
        scaled-dot-product attention, the activation in place and large intermediates in a reused
        workspace when no gradient is recorded) whenever no hook other than ``hook_resid_pre`` /
        ``hook_attn_out`` / ``hook_resid_mid`` / ``hook_mlp_out`` / ``hook_resid_post`` is attached in it;
        those hooks fire as usual and see the same values up to float32 rounding, with gradients on or off.
        Otherwise (and with it off) the block is TransformerLens's own step-by-step forward.
        :mod:`interp.hooks.transformer_fused` lists the configs it covers (GPT-2 and GPT-NeoX / Pythia blocks)."""
        for block in self.blocks:
            block.fused = bool(on)

    # --- tokenizer -----------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer: Any, default_padding_side: str | None = None) -> None:
        """TransformerLens's ``set_tokenizer`` for Hugging Face tokenizers; also accepts HF-shaped
        tokenizers such as :class:`interp.hooks.tokenizer.DigitTokenizer`, and never needs the network."""
        from transformers import PreTrainedTokenizerBase

        if isinstance(tokenizer, PreTrainedTokenizerBase):
            try:
                super().set_tokenizer(tokenizer, default_padding_side=default_padding_side)
                return
            except Exception:  # noqa: BLE001 - TL re-loads the tokenizer by name to add BOS; offline
                pass  # or for an in-memory tokenizer that fails, so fall back to the tokenizer as is
        self.tokenizer = tokenizer
        if default_padding_side is not None:
            tokenizer.padding_side = default_padding_side
        if getattr(tokenizer, "padding_side", None) is None:
            tokenizer.padding_side = "right"
        if isinstance(tokenizer, PreTrainedTokenizerBase):
            if tokenizer.eos_token is None:
                tokenizer.eos_token = "<|endoftext|>"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if tokenizer.bos_token is None:
                tokenizer.bos_token = tokenizer.eos_token
        self.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
        if self.cfg.d_vocab == -1:
            self.cfg.d_vocab = len(tokenizer)
        if self.cfg.d_vocab_out == -1:
            self.cfg.d_vocab_out = self.cfg.d_vocab

    def to_tokens(
        self,
        input: str | list[str],
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: Literal["left", "right"] | None = USE_DEFAULT_VALUE,
        move_to_device: bool = True,
        truncate: bool = True,
        return_mask: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Text -> token ids [b, L] (TransformerLens ``to_tokens``).

        With ``return_mask=True`` also returns the attention mask [b, L] (1 = real token), built
        exactly: each text is tokenised alone and padded on ``padding_side`` with the pad id, so a
        real token equal to the pad id (GPT-2's BOS is its pad) is never mistaken for padding.
        """
        if self.tokenizer is None:
            raise ValueError(
                "this model has no tokenizer: pass token ids (a LongTensor [batch, pos]) instead of text, "
                "or give a tokenizer (HookedTransformerModel(cfg, tokenizer) / set_tokenizer)"
            )
        if not return_mask:
            return super().to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side,
                                     move_to_device=move_to_device, truncate=truncate)
        texts = [input] if isinstance(input, str) else list(input)
        if not texts:
            raise ValueError("empty input: pass at least one string")
        rows = [super(HookedTransformerModel, self).to_tokens(
            t, prepend_bos=prepend_bos, padding_side=padding_side, move_to_device=False, truncate=truncate)[0]
            for t in texts]
        side = padding_side if padding_side is not USE_DEFAULT_VALUE else self.tokenizer.padding_side
        L = max(len(r) for r in rows)
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        pad_id = 0 if pad_id is None else pad_id
        tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(L - len(r), L) if side == "left" else slice(0, len(r))
            tokens[i, sl] = r
            mask[i, sl] = 1
        if move_to_device:
            tokens, mask = tokens.to(self.cfg.device), mask.to(self.cfg.device)
        return tokens, mask

    def to_string(self, tokens: Any) -> str | list[str]:
        """Token ids [pos] -> text, [b, pos] -> list of texts (any tokenizer with ``decode``)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer to decode with")
        from transformers import PreTrainedTokenizerBase

        if isinstance(self.tokenizer, PreTrainedTokenizerBase):
            return super().to_string(tokens)
        if not isinstance(tokens, Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dim() == 2:
            return [self.tokenizer.decode(row.tolist()) for row in tokens]
        return self.tokenizer.decode(tokens.reshape(-1).tolist())

    def to_str_tokens(self, input: Any, prepend_bos: bool | None = USE_DEFAULT_VALUE,
                      padding_side: Any = USE_DEFAULT_VALUE) -> list[str] | list[list[str]]:
        from transformers import PreTrainedTokenizerBase

        if self.tokenizer is None or isinstance(self.tokenizer, PreTrainedTokenizerBase):
            return super().to_str_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(t, prepend_bos, padding_side) for t in input]  # type: ignore[misc]
        tokens = self.to_tokens(input, prepend_bos=prepend_bos)[0] if isinstance(input, str) \
            else torch.as_tensor(input).reshape(-1)
        return [self.tokenizer.decode([int(t)]) for t in tokens]

    # --- forward -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    def forward(
        self,
        input: str | list[str] | Tensor,
        return_type: str | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = USE_DEFAULT_VALUE,
        padding_side: Literal["left", "right"] | None = USE_DEFAULT_VALUE,
        start_at_layer: int | None = None,
        tokens: Tensor | None = None,
        shortformer_pos_embed: Tensor | None = None,
        attention_mask: Tensor | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache: TransformerLensKeyValueCache | None = None,
    ) -> Any:
        """TransformerLens's forward, plus:

        * a list of texts is padded exactly and masked (pads never attended, loss ignores them);
        * attached hooks see the absolute positions of this forward in ``hook.ctx["positions"]``
          (offset by the key/value cache length when decoding);
        * a cached forward on token ids without a tokenizer attends to every token.
        """
        if start_at_layer is None and isinstance(input, (str, list)):
            if isinstance(input, list) and len(input) > 1 and attention_mask is None:
                input, mask = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side,
                                             return_mask=True)
                if not bool(mask.all()):
                    attention_mask = mask
            else:
                input = self.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)
        if isinstance(input, Tensor) and start_at_layer is None:
            input = input[None] if input.dim() == 1 else input
            check_token_ids(input, self.cfg.d_vocab, "input")  # a negative id would index W_E from its end
            if input.shape[-1] == 0:
                raise ValueError(f"input has no positions (shape {tuple(input.shape)}): pass at least one token")
        if past_kv_cache is not None and attention_mask is None and self.tokenizer is None \
                and start_at_layer is None:
            attention_mask = torch.ones(input.shape[:2], dtype=torch.long, device=input.device)
        if any(hp._forward_hooks for hp in self.hook_dict.values()):
            offset = past_kv_cache.entries[0].past_keys.shape[1] if past_kv_cache is not None and \
                past_kv_cache.entries else 0
            length = input.shape[1]
            self._set_hook_positions(torch.arange(offset, offset + length, device=self.cfg.device))
        return super().forward(
            input, return_type=return_type, loss_per_token=loss_per_token, prepend_bos=prepend_bos,
            padding_side=padding_side, start_at_layer=start_at_layer, tokens=tokens,
            shortformer_pos_embed=shortformer_pos_embed, attention_mask=attention_mask,
            stop_at_layer=stop_at_layer, past_kv_cache=past_kv_cache,
        )

    # --- generation primitives ----------------------------------------------------------------
    def _prefill(self, tokens: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, TransformerLensKeyValueCache]:
        """Run the prompt once, filling a key/value cache. Left padding only (pads before the text)."""
        b, L = tokens.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(tokens)
        attention_mask = attention_mask.to(tokens.device).long()
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != tokens shape {tuple(tokens.shape)}")
        if not bool(attention_mask[:, -1].all()) or bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
            raise ValueError(
                "generation needs left padding (pads before the text, mask 0...0 1...1 per row): right-padded "
                "rows would continue from their padding. Pass a list of strings (padded left for you) or "
                "left-pad the token batch and its attention_mask."
            )
        self._check_ctx(L)
        cache = TransformerLensKeyValueCache.init_cache(self.cfg, self.cfg.device, b)
        logits = self(tokens, attention_mask=attention_mask, past_kv_cache=cache)
        return logits[:, -1], cache

    def _decode_step(self, token: Tensor, cache: TransformerLensKeyValueCache) -> tuple[Tensor, TransformerLensKeyValueCache]:
        """Feed one token per row; attends to the cached keys/values (one position of work)."""
        self._check_ctx(cache.entries[0].past_keys.shape[1] + 1 if cache.entries else 1)
        token = token[:, None]
        logits = self(token, attention_mask=torch.ones_like(token), past_kv_cache=cache)
        return logits[:, -1], cache

    def _check_ctx(self, length: int) -> None:
        if self.cfg.positional_embedding_type in ("standard", "shortformer") and length > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of {length} tokens exceeds the model's context of n_ctx={self.cfg.n_ctx} positions "
                "(learned position embeddings): use a shorter prompt or fewer max_new_tokens"
            )

    # --- shapes for the cache estimate --------------------------------------------------------
    def hook_shapes(self, batch: int, seq_len: int, **_: Any) -> dict[str, tuple[int, ...]]:
        """Shape of every hook's activation for a [batch, seq_len] forward (no KV cache), found by running this
        model's forward on the meta device (:mod:`interp.hooks.shapes`); hooks the config switches off
        (:meth:`hook_enabled`) have the shape they take when switched on, and hooks that never fire (MLP hooks
        of an attention-only block) have none."""
        return hook_shapes_by_meta_forward(self, self._meta_twins, batch, seq_len)

    def _meta_twins(self) -> Iterator["HookedTransformerModel"]:
        """Copies of this model on the meta device: its own config, then, if the config switches any hook off,
        the config with every switch on (TransformerLens refuses ``use_attn_in`` with grouped-query attention
        and ``use_hook_mlp_in`` without MLPs, so those hooks never fire and have no shape)."""
        cfg = self.cfg.to_dict()
        meta = {"device": "meta", "n_devices": 1, "init_weights": False, "seed": None, "tokenizer_name": None}
        allowed = {"use_attn_result": True, "use_split_qkv_input": True,
                   "use_attn_in": cfg["n_key_value_heads"] is None, "use_hook_mlp_in": not cfg["attn_only"]}
        switched_on = {k: True for k, ok in allowed.items() if ok and not cfg[k]}
        for extra in ({}, switched_on) if switched_on else ({},):
            with torch.device("meta"):  # parameters get shapes and no storage
                twin = HookedTransformerModel(HookedTransformerConfig.from_dict({**cfg, **meta, **extra}),
                                              move_to_device=False)
            yield twin

    def hook_enabled(self, name: str) -> bool:
        """Whether a hook fires with the current config, as the meta-device forward found (TransformerLens
        computes some activations, e.g. ``attn.hook_result``, only when the matching ``cfg.use_*`` flag is
        on, and an attention-only block never fires its MLP hooks). Hook points of modules inserted into the
        model (an SAE, a codebook) fire with their host and count as enabled."""
        found = meta_shapes(self, self._meta_twins)
        return name in found.fires or name not in found.names

    def run_with_cache(self, *model_args: Any, names_filter: Any = None, return_cache_object: bool = True,
                       **kwargs: Any) -> Any:
        """Run and cache activations: see :meth:`InterpModelMixin.run_with_cache`. With no
        ``names_filter`` (or a predicate), hooks that the config switches off (``attn.hook_result``
        without ``cfg.use_attn_result``, ...) are left out; name them explicitly after
        ``set_use_attn_result(True)`` etc. ``return_cache_object=False`` gives a plain dict, as in
        TransformerLens."""
        if names_filter is None or (callable(names_filter) and not isinstance(names_filter, str)):
            keep = as_filter(names_filter)
            names_filter = [n for n in self.hook_dict if keep(n) and self.hook_enabled(n)]
        out, cache = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        return (out, cache) if return_cache_object else (out, dict(cache.cache_dict))

    def pos_dim(self, hook_name: str) -> int:
        """Position axis of a hook: 2 (query position) for attention scores/pattern, else 1."""
        return 2 if hook_name.endswith(("hook_attn_scores", "hook_pattern")) else 1

    # --- loading and saving -------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_folder: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **kw: Any,
    ) -> "HookedTransformerModel":
        """Load a transformer without any weight processing (logits equal Hugging Face's).

        Args:
            name_or_folder: a folder written by ``save_pretrained`` (Hugging Face GPT-2 / GPT-NeoX
                / Pythia, or this class), a Hugging Face hub id (``"org/name"``, needs network), or a
                TransformerLens model name (``"gpt2"``, ``"pythia-70m"``; needs network).
            device, dtype: where and in what precision to put the weights (default: CPU, as stored).
            **kw: ``default_prepend_bos`` for folders; passed to TransformerLens for model names.
        """
        from . import loading

        path = Path(name_or_folder).expanduser()
        name = str(name_or_folder)
        if path.is_dir():
            return cls._from_folder(path, device=device, dtype=dtype, **kw)
        if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise CheckpointError(f"checkpoint folder not found: {path}")
        if _official_tl_name(name) is not None:
            return cls._from_tl_name(name, device=device, dtype=dtype, **kw)
        if "/" in name:  # a hub id: download config, safetensors and tokenizer files only
            return cls._from_folder(loading.resolve_checkpoint(name), device=device, dtype=dtype, **kw)
        raise loading.UnknownModelError(_unknown_name_message(name), name)

    @classmethod
    def _from_folder(cls, folder: Path, device: Any = None, dtype: torch.dtype | None = None,
                     default_prepend_bos: bool | None = None, **kw: Any) -> "HookedTransformerModel":
        from . import loading

        if kw:
            raise TypeError(f"unexpected arguments for loading a folder: {sorted(kw)}")
        raw = loading.read_config(folder)
        mt = raw.get("model_type")
        where = str(folder / "config.json")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise unsupported_model_error(mt, where)
        loading.check_model_size(raw, where)  # before anything is allocated
        state = loading.read_safetensors(folder)
        if mt == MODEL_TYPE:
            cfg = cfg_from_json(raw.get("hooked_transformer_config", {}), dtype)
            if default_prepend_bos is not None:
                cfg.default_prepend_bos = default_prepend_bos
            tl_state = state
        else:
            from transformers import CONFIG_MAPPING

            try:
                hf_cfg = CONFIG_MAPPING[mt].from_dict(raw)
            except (TypeError, ValueError, KeyError) as e:
                raise CheckpointError(f"{where}: not a valid {mt} config: {e}") from e
            hf_cfg._name_or_path = str(folder)
            cfg, tl_state = hf_to_tl(hf_cfg, state, where, dtype, default_prepend_bos)
        tokenizer = loading.load_tokenizer(folder)
        tokenizer_name, cfg.tokenizer_name = cfg.tokenizer_name, None  # never fetch one while loading
        model = cls(cfg, tokenizer=tokenizer, move_to_device=False)
        model.cfg.tokenizer_name = tokenizer_name
        if tokenizer is None and tokenizer_name:
            model._try_tokenizer_by_name(tokenizer_name)
        model.load_weights(tl_state, source=str(folder))
        return model._place(device, dtype)

    def _try_tokenizer_by_name(self, name: str) -> None:
        try:
            from transformers import AutoTokenizer

            self.set_tokenizer(AutoTokenizer.from_pretrained(name))
        except Exception as e:  # noqa: BLE001 - offline or unknown name: the model still works on ids
            warnings.warn(f"no tokenizer files in the folder and tokenizer {name!r} could not be loaded "
                          f"({type(e).__name__}); the model takes token ids only", stacklevel=3)

    @classmethod
    def _from_tl_name(cls, name: str, device: Any = None, dtype: torch.dtype | None = None,
                      **kw: Any) -> "HookedTransformerModel":
        official = _official_tl_name(name) or name
        if official.startswith(PICKLE_ONLY_ORGS):
            raise CheckpointError(
                f"{name!r} ({official}) is published as a PyTorch pickle (.pth) only, and interp never unpickles (a "
                f"pickle can run code). {SAFETENSORS_HINT}")
        opts = dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                    fold_value_biases=False, refactor_factored_attn_matrices=False)
        opts.update(kw)
        opts["use_safetensors"] = True  # transformers then never falls back to pytorch_model.bin (a pickle)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                model = HookedTransformer.from_pretrained.__func__(  # type: ignore[attr-defined]
                    cls, name, device=device or "cpu", dtype=dtype or torch.float32, **opts
                )
        except Exception as e:  # noqa: BLE001 - offline, unknown revision, gated repo, ...
            text = str(e)
            if "safetensors" in text.lower() or ".bin" in text or "weights_only" in text:
                raise CheckpointError(
                    f"could not load {name!r} through TransformerLens: no safetensors weights for {official} "
                    f"(weights load from safetensors only; a pytorch_model.bin is a pickle and is never loaded). "
                    f"{SAFETENSORS_HINT}") from None
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            raise CheckpointError(
                f"could not load {name!r} through TransformerLens ({type(e).__name__}: {e}). It downloads from "
                f"the Hugging Face hub{' and HF_HUB_OFFLINE is set' if offline else ''}: offline "
                "(HF_HUB_OFFLINE=1), load it once on a connected machine and save it to a folder with "
                "`save_pretrained(folder)` (this class or transformers), then pass the folder."
            ) from e
        return model.eval()

    @classmethod
    def from_hf_model(
        cls,
        hf_model: torch.nn.Module,
        tokenizer: Any | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        default_prepend_bos: bool | None = None,
    ) -> "HookedTransformerModel":
        """Copy the weights of an in-memory ``GPT2LMHeadModel`` / ``GPTNeoXForCausalLM`` (no
        processing). Device and dtype default to the Hugging Face model's."""
        hf_cfg = getattr(hf_model, "config", None)
        name = type(hf_model).__name__
        p = next(hf_model.parameters())
        state = {k: v.detach() for k, v in hf_model.state_dict().items()}
        cfg, tl_state = hf_to_tl(hf_cfg, state, name, dtype or p.dtype, default_prepend_bos)
        model = cls(cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_weights(tl_state, source=name)
        return model._place(device or p.device, dtype or p.dtype)

    def load_weights(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Load a TransformerLens-named state dict as is (no folding/centering), strictly: missing
        weights, unexpected names and shape mismatches raise :class:`CheckpointError`. Only
        buffers and an absent unembedding bias (zeros) are filled in."""
        expected = self.state_dict()
        params = dict(self.named_parameters())
        state = {k: v for k, v in state.items()}
        for k in expected:
            if k not in state and (k not in params or k.endswith("b_U")):
                state[k] = torch.zeros_like(expected[k]) if k in params else expected[k]
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: state dict does not fit the model: missing {missing[:6]}"
                f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
            )
        bad = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
        if bad:
            k, got, want = bad[0]
            raise CheckpointError(f"{source}: tensor {k} has shape {got}, expected {want}")
        with torch.no_grad():
            self.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)

    def _place(self, device: Any, dtype: torch.dtype | None) -> "HookedTransformerModel":
        return self.to(device if device is not None else "cpu", dtype).eval()

    def to(self, *args: Any, device: Any = None, dtype: torch.dtype | None = None,
           print_details: bool = False, **kwargs: Any) -> "HookedTransformerModel":  # type: ignore[override]
        """Move / cast the model and keep ``cfg.device`` / ``cfg.dtype`` in step. Accepts
        ``to(device)``, ``to(dtype)``, ``to(device, dtype)`` and ``to(device=..., dtype=...)``."""
        from transformer_lens.utilities.devices import move_to_and_update_config

        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif a is not None:
                device = a
        kwargs.pop("non_blocking", None)
        if kwargs:
            raise TypeError(f"unexpected arguments to to(): {sorted(kwargs)}")
        if device is not None:
            move_to_and_update_config(self, str(torch.device(device)), print_details)
        if dtype is not None:
            move_to_and_update_config(self, dtype, print_details)
        return self

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` (``model_type: "hooked_transformer"`` and the TransformerLens config),
        ``model.safetensors`` (the TransformerLens state dict) and the tokenizer, if any.
        :meth:`from_pretrained` and :func:`interp.load` read it back, checking ``checksums.json``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg_json = {"model_type": MODEL_TYPE, "architectures": ["HookedTransformer"],
                    "hooked_transformer_config": cfg_to_json(self.cfg)}
        (folder / "config.json").write_text(json.dumps(cfg_json, indent=2))
        params = dict(self.named_parameters())
        state: dict[str, Tensor] = {}
        seen: dict[int, str] = {}
        for k, v in self.state_dict().items():
            if k not in params:  # buffers (causal masks, rotary tables) are rebuilt from the config
                continue
            if v.data_ptr() in seen:  # shared storage (tied weights) would break safetensors
                v = v.clone()
            seen[v.data_ptr()] = k
            state[k] = v.detach().contiguous().cpu()
        save_file(state, str(folder / WEIGHT_FILE), metadata={"format": "pt"})
        from .loading import write_model_checksums

        write_model_checksums(folder, getattr(self, "tokenizer", None))  # the tokenizer, then checksums.json
        return folder


# TransformerLens loads these organisations' models from .pth pickles (torch.load): refused before any download
PICKLE_ONLY_ORGS = ("NeelNanda/", "ArthurConmy/", "Baidicoot/")
SAFETENSORS_HINT = (
    "Convert once on a trusted machine, e.g. `transformers.AutoModelForCausalLM.from_pretrained(src)"
    ".save_pretrained(folder, safe_serialization=True)` (or HookedTransformerModel.save_pretrained(folder)), then "
    "pass the folder.")


def _official_tl_name(name: str) -> str | None:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _unknown_name_message(name: str) -> str:
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    close = difflib.get_close_matches(name.lower(), list(make_model_alias_map()), n=5, cutoff=0.6)
    hint = f" Did you mean {close}?" if close else ""
    return (
        f"{name!r} is not a folder, a Hugging Face hub id (org/name) or a TransformerLens model name.{hint} "
        "Pass a folder written by save_pretrained, or see transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES."
    )
