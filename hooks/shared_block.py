"""Shared transformer blocks with per-use low-rank adapters (Zamba2, HF ``Zamba2HybridLayer``): the layers of kind
"shared_attention" (``HybridConfig.layer_types``) are an SSM layer whose mixer input first gets the output of a
transformer block that several layers share.

Layer i of kind "shared_attention" (use ``u`` = its index among those layers; it runs shared block
``u % cfg.n_shared_blocks``)::

    x         = concat(resid_pre, embed)                       [b, pos, 2·d_model]   hook_shared_in
    attn_out  = attn(ln_attn(x))                               [b, pos, d_model]     q/k/v read 2·d_model
    mlp_out   = mlp(ln_mlp(attn_out))                          [b, pos, d_model]     gated, act_fn
    shared    = shared_proj(mlp_out)                           [b, pos, d_model]     hook_shared_out (the use's own)
    resid_post = resid_pre + ssm(ln1(resid_pre + shared))                            the SSM layer, as in HybridBlock

There is no residual inside the shared block (HF ``Zamba2AttentionDecoderLayer``), and ``shared`` reaches the
residual stream only through the SSM mixer. ``embed`` is the forward's ``hook_embed`` value (HF
``original_hidden_states``), handed to the blocks by :class:`SharedInput`.

One parameter, several uses: each use is its own module (so that its hooks have its layer's names:
``blocks.{i}.attn.hook_q``, ``blocks.{i}.mlp.hook_pre``, ...), and :func:`tie_shared_weights` makes the norms' and
projections' parameters of every use of a shared block the same ``nn.Parameter`` objects (editing one edits every
use; ``state_dict`` lists them under each use, as tied embeddings are). The LoRA adapters (``cfg.shared_adapter_rank``
> 0) are each use's own: ``q_proj`` (..., ``up_proj``) is then a :class:`LoRALinear`, ``W x (+ b) + B A x``.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hybrid_config import KV_LAYER_KINDS, RECURRENT_MIXER_KINDS, SSM_LAYER_KINDS, HybridConfig
from .hook_points import HookPoint
from .hybrid import Attention, HybridBlock, HybridState, MLP
from .mamba import HookedSSM, RMSNorm

#: the submodules of a shared-attention use whose parameters all uses of one shared block share
SHARED_MODULES = ("ln_attn", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "ln_mlp", "mlp.gate_proj",
                  "mlp.up_proj", "mlp.down_proj")


class LoRALinear(nn.Linear):
    """A linear map plus a low-rank adapter: ``F.linear(x, weight, bias) + lora_B(lora_A(x))`` (HF Zamba2's adapter
    ``Sequential(Linear(in, rank), Linear(rank, out))``, no biases). ``weight`` / ``bias`` keep nn.Linear's names
    (shared between uses by :func:`tie_shared_weights`); ``lora_A`` [rank, in] / ``lora_B`` [out, rank] are the
    use's own."""

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool = False):
        super().__init__(d_in, d_out, bias=bias)
        self.lora_A = nn.Linear(d_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, d_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(x))


def _with_adapter(linear: nn.Linear, rank: int) -> LoRALinear:
    return LoRALinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)


class SharedInput:
    """The token embeddings the shared-attention blocks of one model read (HF ``original_hidden_states``): set for
    the length of one forward by :meth:`bind`, from the residual stream entering block 0 (``hook_embed``'s value,
    edits included) or from the ``embeddings`` the caller passes with ``start_at_layer``."""

    def __init__(self) -> None:
        self.value: Tensor | None = None
        self.capture = False

    @contextmanager
    def bind(self, embeddings: Tensor | None, start_at_layer: int | None) -> Iterator[None]:
        self.value, self.capture = embeddings, embeddings is None and not start_at_layer
        try:
            yield
        finally:
            self.value, self.capture = None, False

    def capture_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook of block 0: its input is the embedding when the forward started from tokens."""
        if self.capture:
            self.value, self.capture = (args[0] if args else kwargs["resid"]), False

    def get(self, layer: int, length: int) -> Tensor:
        if self.value is None:
            raise ValueError(f"layer {layer} runs a shared attention block, which reads the token embeddings: with "
                             "start_at_layer, pass embeddings= (the forward's hook_embed value, "
                             "model.embed(tokens)) [b, pos, d_model]")
        if self.value.shape[1] != length:
            raise ValueError(f"embeddings cover {self.value.shape[1]} positions, the residual stream {length}")
        return self.value


class SharedAttentionBlock(HybridBlock):
    """One use of a shared transformer block followed by this layer's SSM mixer (the module docstring's formula).
    ``slot`` is the layer's SSM entry in a :class:`HybridState`, ``kv_slot`` its attention (KV cache) entry; ``use``
    its index among the shared-attention layers."""

    def __init__(self, cfg: HybridConfig, slot: int, layer: int, kv_slot: int, use: int, shared_input: SharedInput):
        super().__init__(cfg, "ssm", slot, layer)
        self.kind, self.kv_slot, self.use = "shared_attention", kv_slot, use
        self.shared_block = use % cfg.n_shared_blocks
        self.shared_input = shared_input  # a plain object: the model's, not a submodule
        d, rank = cfg.d_model, cfg.shared_adapter_rank
        self.hook_shared_in = HookPoint()
        self.ln_attn = RMSNorm(2 * d, cfg.norm_eps)
        self.attn = Attention(cfg, d_in=2 * d)
        if cfg.shared_attn_adapter:
            for name in ("q_proj", "k_proj", "v_proj"):
                setattr(self.attn, name, _with_adapter(getattr(self.attn, name), rank))
        self.hook_attn_out = HookPoint()
        self.ln_mlp = RMSNorm(d, cfg.norm_eps)
        self.mlp = MLP(cfg)
        if cfg.shared_mlp_adapter:  # HF's one gate_up adapter: A shared by the gate and up halves, B split
            self.mlp.gate_proj = _with_adapter(self.mlp.gate_proj, rank)
            self.mlp.up_proj = _with_adapter(self.mlp.up_proj, rank)
            self.mlp.up_proj.lora_A = self.mlp.gate_proj.lora_A
        self.hook_mlp_out = HookPoint()
        self.shared_proj = nn.Linear(d, d, bias=False)
        self.hook_shared_out = HookPoint()

    def forward(self, resid: Tensor, layer: int, attention_mask: Tensor | None = None,
                state_positions: Any = None, state: HybridState | None = None) -> Tensor:
        resid = self.hook_resid_pre(resid)
        embed = self.shared_input.get(layer, resid.shape[1])
        x = self.hook_shared_in(torch.cat([resid, embed.to(resid.dtype)], dim=-1))  # [b, L, 2·d_model]
        attn_out = self.hook_attn_out(self.attn(self.ln_attn(x), attention_mask=attention_mask, state=state,
                                                slot=self.kv_slot))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln_mlp(attn_out)))
        shared = self.hook_shared_out(self.shared_proj(mlp_out))
        h = self.ln1(resid + shared)
        mixed = self.hook_mixer_out(self._scaled(self.ssm(h, attention_mask=attention_mask,
                                                          state_positions=state_positions, state=state,
                                                          layer=self.slot)))
        return self.hook_resid_post(resid + mixed)


def tie_shared_weights(blocks: nn.ModuleList) -> None:
    """Make every use of a shared block hold its first use's parameters (:data:`SHARED_MODULES`' weights and
    biases): the same ``nn.Parameter`` objects."""
    first: dict[int, SharedAttentionBlock] = {}
    for block in blocks:
        if not isinstance(block, SharedAttentionBlock):
            continue
        src = first.setdefault(block.shared_block, block)
        if src is block:
            continue
        for path in SHARED_MODULES:
            a, b = src.get_submodule(path), block.get_submodule(path)
            for name, p in list(a._parameters.items()):
                if p is not None:
                    setattr(b, name, p)


def build_blocks(cfg: HybridConfig, block_cls: type[HybridBlock], shared_input: SharedInput | None) -> nn.ModuleList:
    """The blocks of ``cfg.layer_types``: ``block_cls`` for "ssm" / "attention" / "mlp" layers, a
    :class:`SharedAttentionBlock` for "shared_attention" layers (tied). A layer's SSM slot counts the earlier layers
    with an SSM mixer, its KV slot those with attention (their entries in a :class:`HybridState`)."""
    has_ssm, has_kv = SSM_LAYER_KINDS, KV_LAYER_KINDS
    blocks, use = [], 0
    for layer, kind in enumerate(cfg.layer_types):
        before = cfg.layer_types[:layer]
        ssm_slot, kv_slot = sum(t in has_ssm for t in before), sum(t in has_kv for t in before)
        if kind == "shared_attention":
            blocks.append(SharedAttentionBlock(cfg, ssm_slot, layer, kv_slot, use, shared_input))
            use += 1
        else:
            slot = ssm_slot if kind in RECURRENT_MIXER_KINDS else kv_slot if kind == "attention" \
                else before.count(kind)  # a "parallel" block finds its KV slot itself
            blocks.append(block_cls(cfg, kind, slot, layer))
    out = nn.ModuleList(blocks)
    tie_shared_weights(out)
    return out


_FORWARD_SIGNATURE = inspect.signature(HookedSSM.forward)


def start_layer_of(model: nn.Module, input: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    """The ``start_at_layer`` of a call ``HookedSSM.forward(model, input, *args, **kwargs)``."""
    return _FORWARD_SIGNATURE.bind_partial(model, input, *args, **kwargs).arguments.get("start_at_layer")
