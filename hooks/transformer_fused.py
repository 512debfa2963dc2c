"""A fused inference forward for TransformerLens blocks, used when no hook inside the block is watched.

TransformerLens computes a block step by step so that every intermediate can be hooked: LayerNorm
as five element-wise passes (run three times, once each for the query, key and value inputs), the
attention pattern materialised and masked, GELU-new as seven passes over the ``[batch, pos, d_mlp]``
hidden layer, each pass a freshly allocated tensor. On the CPU the allocations are the larger cost:
glibc serves every block over 32 MiB with a fresh ``mmap``, so each such pass faults its pages in
anew (``docs/benchmarks.md``, activation caching).

When nothing observes a block's internals the same block is computed here with fused operations
(``F.layer_norm`` once, one QKV product, ``F.scaled_dot_product_attention`` with its causal flag, the
activation in place) and, when no gradient is recorded, the large intermediates written into a
per-thread workspace reused from one forward to the next. The block's residual hooks still fire, with
the same values up to float32 rounding (``tests/test_transformer_fused.py``: ≤ 1e-5 against
TransformerLens's path):

    resid_pre  -> hook_resid_pre  -> attention -> hook_attn_out -> + -> hook_resid_mid
               -> MLP -> hook_mlp_out -> + -> hook_resid_post

With gradients on, the same kernels run on fresh tensors, so values do not depend on the grad mode
(bitwise) and gradients are autograd's. The fused path runs only where it computes what
TransformerLens computes; otherwise the block is TransformerLens's own: a hook or ``torch`` module hook
on anything else in the block, a key/value cache, a padding mask with zeros, a shortformer position
embedding, or a config feature this file does not compute (:func:`unsupported_reason` names it). So the
values of one block can differ at rounding level between a run that watches its internals and one that
does not. ``HookedTransformerModel.set_fused_inference(False)`` switches it off.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformer_lens.components import Attention, LayerNorm, LayerNormPre, RMSNorm, RMSNormPre, TransformerBlock
from transformer_lens.components.mlps.mlp import MLP
from transformer_lens.utilities.activation_functions import softcap_enabled
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

#: the block's hook points the fused path fires (each sees the whole tensor TransformerLens gives it)
FUSED_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")

#: config fields the fused path does not compute, with the value under which they are inactive
_INACTIVE = {
    "attention_dir": "causal", "n_key_value_heads": None, "use_attn_result": False, "use_split_qkv_input": False, "use_attn_in": False,
    "use_hook_mlp_in": False, "use_local_attn": False, "use_qk_norm": False, "clip_qkv": None,
    "use_logn_attn": False, "use_attention_sinks": False, "use_normalization_before_and_after": False,
    "load_in_4bit": False, "gated_mlp": False, "num_experts": None,
}
_NORMS = {LayerNorm: "LN", LayerNormPre: "LNPre", RMSNorm: "RMS", RMSNormPre: "RMSPre"}
_ACTIVATIONS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu", "relu", "silu")


def unsupported_reason(block: TransformerBlock) -> str | None:
    """Why the fused path cannot compute this block (a config field or a module type), or None."""
    cfg = block.cfg
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        return f"cfg.positional_embedding_type={cfg.positional_embedding_type!r}"
    for field, inactive in _INACTIVE.items():
        if getattr(cfg, field, inactive) != inactive:
            return f"cfg.{field}={getattr(cfg, field)!r}"
    if cfg.original_architecture in (*POST_NORM_ARCHITECTURES, "OlmoeForCausalLM", "Olmo2ForCausalLM",
                                     "Olmo3ForCausalLM"):
        return f"cfg.original_architecture={cfg.original_architecture!r} (post-norm / q-k norms)"
    if softcap_enabled(cfg.attn_scores_soft_cap):
        return f"cfg.attn_scores_soft_cap={cfg.attn_scores_soft_cap}"
    if cfg.dtype not in (torch.float32, torch.float64):
        return f"cfg.dtype={cfg.dtype} (TransformerLens normalises in float32 and casts back)"
    if type(block.attn) is not Attention or getattr(block.attn, "_attention_dir_override", None):
        return f"attention module {type(block.attn).__name__}"
    if type(block.ln1) not in _NORMS:
        return f"norm module {type(block.ln1).__name__}"
    if not cfg.attn_only:
        if type(block.mlp) is not MLP or cfg.act_fn not in _ACTIVATIONS:
            return f"MLP {type(block.mlp).__name__} with act_fn={cfg.act_fn!r}"
        if type(block.ln2) not in _NORMS:
            return f"norm module {type(block.ln2).__name__}"
    return None


def block_is_watched(block: TransformerBlock) -> bool:
    """Whether anything outside :data:`FUSED_HOOKS` in the block carries a hook (any module's forward or
    backward hook, or a global module hook), so that the step-by-step forward must run."""
    g = torch.nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks \
            or g._global_backward_pre_hooks:
        return True
    fired = {getattr(block, name, None) for name in FUSED_HOOKS}
    for module in block.modules():
        if module is block or module in fired:
            continue
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks \
                or module._backward_pre_hooks:
            return True
    return False


# --- workspace ------------------------------------------------------------------------------------
_WORKSPACE = threading.local()

#: buffers up to this size stay in the workspace between forwards; larger ones (very large batches) are
#: allocated per call, so a notebook never keeps gigabytes after one big forward
WORKSPACE_KEEP_BYTES = 256 * 2**20


def _buffer(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A reusable tensor of ``shape`` (this thread, ``like``'s device and dtype, the current inference mode).

    Only intermediates that die inside the block live here: no hook sees them, so the next forward
    (or a forward run from inside a hook, which fires only between uses) may overwrite them."""
    store = getattr(_WORKSPACE, "store", None)
    if store is None:
        store = _WORKSPACE.store = {}
    key = (name, like.device, like.dtype, torch.is_inference_mode_enabled())
    numel = 1
    for n in shape:
        numel *= n
    if numel * like.element_size() > WORKSPACE_KEEP_BYTES:
        store.pop(key, None)
        return torch.empty(shape, device=like.device, dtype=like.dtype)
    flat = store.get(key)
    if flat is None or flat.numel() < numel:
        flat = store[key] = torch.empty(numel, device=like.device, dtype=like.dtype)
    return flat[:numel].view(shape)


def release_workspace() -> None:
    """Free this thread's workspace (it is rebuilt at the next fused forward)."""
    _WORKSPACE.store = {}


# --- the fused block ------------------------------------------------------------------------------
def _norm(module: Any, x: Tensor) -> Tensor:
    """TransformerLens's LN / LNPre / RMS / RMSPre as one fused call: [..., d] -> [..., d]."""
    kind, d = _NORMS[type(module)], x.shape[-1]
    if kind == "LN":
        return F.layer_norm(x, (d,), module.w, module.b, module.eps)
    if kind == "LNPre":
        return F.layer_norm(x, (d,), None, None, module.eps)
    return F.rms_norm(x, (d,), module.w if kind == "RMS" else None, module.eps)


def _activate(act_fn: str, x: Tensor) -> Tensor:
    """The MLP activation; in place when no gradient is recorded (gelu_new and gelu_fast are GELU's tanh
    form, written out by TransformerLens). Both forms run the same kernel, so the values are the same."""
    grad = torch.is_grad_enabled()
    if act_fn in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu"):
        approximate = "none" if act_fn == "gelu" else "tanh"
        return F.gelu(x, approximate=approximate) if grad else torch._C._nn.gelu_(x, approximate=approximate)
    if act_fn == "relu":
        return x.relu() if grad else x.relu_()
    return F.silu(x, inplace=not grad)


def _linear(bias: Tensor, x: Tensor, w: Tensor, buffer: str | None = None) -> Tensor:
    """bias + x @ w for x [n, i], w [i, o] -> [n, o]; written into the workspace ``buffer`` when given and
    no gradient is recorded (autograd needs its own tensors)."""
    if buffer is None or torch.is_grad_enabled():
        return torch.addmm(bias, x, w)
    return torch.addmm(bias, x, w, out=_buffer(buffer, (x.shape[0], w.shape[1]), x))


def attention(attn: Attention, x: Tensor) -> Tensor:
    """Causal multi-head attention of normalised input x [B, L, d] -> output [B, L, d] (bias included)."""
    B, L, d = x.shape
    H, dh = attn.W_Q.shape[0], attn.W_Q.shape[2]
    if torch.is_grad_enabled():
        w = torch.stack((attn.W_Q, attn.W_K, attn.W_V)).permute(2, 0, 1, 3)  # [d, 3, H, dh]
    else:  # the three projections side by side, packed into the workspace
        w = _buffer("w_qkv", (d, 3, H, dh), x)
        for i, W in enumerate((attn.W_Q, attn.W_K, attn.W_V)):
            w[:, i].copy_(W.permute(1, 0, 2))
    bias = torch.stack((attn.b_Q, attn.b_K, attn.b_V)).reshape(3 * H * dh)
    qkv = _linear(bias, x.reshape(B * L, d), w.reshape(d, 3 * H * dh), "qkv")  # [B*L, 3*H*dh]
    q, k, v = qkv.view(B, L, 3, H, dh).permute(2, 0, 3, 1, 4)  # each [B, H, L, dh]
    if attn.cfg.positional_embedding_type == "rotary":  # TransformerLens's own rotation, on [B, L, H, dh]
        q, k = (attn.apply_rotary(t.transpose(1, 2)).transpose(1, 2) for t in (q, k))
    z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / attn.attn_scale)  # [B, H, L, dh]
    z = z.transpose(1, 2).reshape(B * L, H * dh)
    return _linear(attn.b_O, z, attn.W_O.reshape(H * dh, d)).view(B, L, d)


def mlp(block: TransformerBlock, x: Tensor) -> Tensor:
    """The MLP of normalised input x [B, L, d] -> [B, L, d] (the hidden layer in the workspace under no_grad)."""
    m, (B, L, d) = block.mlp, x.shape
    hidden = _activate(block.cfg.act_fn, _linear(m.b_in, x.reshape(B * L, d), m.W_in, "mlp_hidden"))  # [B*L, d_mlp]
    return _linear(m.b_out, hidden, m.W_out).view(B, L, d)


def fused_block_forward(block: TransformerBlock, resid_pre: Tensor) -> Tensor:
    """One pre-norm block, resid_pre [B, L, d] -> resid_post [B, L, d], firing :data:`FUSED_HOOKS` (a parallel
    block, GPT-NeoX / GPT-J: resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre)), no resid_mid)."""
    resid_pre = block.hook_resid_pre(resid_pre)
    attn_out = block.hook_attn_out(attention(block.attn, _norm(block.ln1, resid_pre)))
    if block.cfg.attn_only:
        return block.hook_resid_post(resid_pre + attn_out)
    if block.cfg.parallel_attn_mlp:
        mlp_out = block.hook_mlp_out(mlp(block, _norm(block.ln2, resid_pre)))
        return block.hook_resid_post(resid_pre + attn_out + mlp_out)
    resid_mid = block.hook_resid_mid(resid_pre + attn_out)
    mlp_out = block.hook_mlp_out(mlp(block, _norm(block.ln2, resid_mid)))
    return block.hook_resid_post(resid_mid + mlp_out)


class FusedTransformerBlock(TransformerBlock):
    """TransformerLens's block, computed by :func:`fused_block_forward` when that is exact and unobserved.

    ``fused`` (default True) switches the fused path on or off. The conditions are checked at every call
    (microseconds), so a config flag switched on later (``set_use_attn_result``) takes effect at once."""

    fused: bool = True

    def forward(self, resid_pre: Tensor, shortformer_pos_embed: Tensor | None = None,
                past_kv_cache_entry: Any = None, attention_mask: Tensor | None = None) -> Tensor:
        if self.fused and self._can_fuse(resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask):
            return fused_block_forward(self, resid_pre)
        return super().forward(resid_pre, shortformer_pos_embed=shortformer_pos_embed,
                               past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask)

    def _can_fuse(self, resid_pre: Tensor, shortformer_pos_embed: Tensor | None, past_kv_cache_entry: Any,
                  attention_mask: Tensor | None) -> bool:
        if shortformer_pos_embed is not None or past_kv_cache_entry is not None:
            return False
        if resid_pre.dtype != self.attn.W_Q.dtype or unsupported_reason(self) is not None or block_is_watched(self):
            return False
        return attention_mask is None or (not attention_mask.is_meta and bool(attention_mask.all()))
