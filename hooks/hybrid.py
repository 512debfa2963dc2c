"""Hookable hybrid language models: Mamba-2 or Mamba-1 mixers interleaved with softmax-attention (and MLP or
mixture-of-experts) layers (Bamba, Nemotron-H, Jamba, Granite-4.0-H), or beside attention in one layer (Falcon-H1).

Read top to bottom: HybridState (the mixed decoding cache) -> rotary embedding -> Attention -> MLP ->
HybridBlock (RMSNorm + mixer [, RMSNorm + MLP]) -> HookedHybrid. The SSM layers reuse :class:`SSMMixer` unchanged
(their hooks are ``blocks.{i}.ssm.*`` exactly as in :mod:`interp.hooks.mamba`); HookedHybrid reuses HookedSSM's
forward loop, tokens, generation primitives and hook shapes, with hybrid blocks. ``cfg.layer_types[i]`` says
which kind block i is ("ssm" / "attention" / "mlp" / "shared_attention"); the layout (an MLP sublayer after every
mixer, as Bamba, or one mixer per layer, as Nemotron-H; gated or plain MLP; rotary or no positional embedding) is
read from the :class:`HybridConfig`, never from the family's name; so are the scalar multipliers
(``embedding_multiplier`` in ``embed``, ``residual_multiplier`` on every sublayer's output, ``attention_scale``,
``logits_scale`` in ``unembed``; Granite-4.0-H's), no-ops at their defaults.

Hook names besides the SSM mixer's (``b`` batch, ``pos`` positions, ``q``/``k`` query / key positions)::

    hook_embed                          [b, pos, d_model]
    blocks.{i}.hook_resid_pre           [b, pos, d_model]
    blocks.{i}.ln1.hook_scale           [b, pos, 1]         rms before the mixer (as in hooks/mamba.py)
    blocks.{i}.ln1.hook_normalized      [b, pos, d_model]
    SSM layers:
    blocks.{i}.ssm.hook_*                                   hooks/mamba.py (Mamba-2 / Mamba-1 mixer)
    blocks.{i}.hook_mixer_out           [b, pos, d_model]   residual_multiplier · ssm.hook_out (the summand)
    attention layers:
    blocks.{i}.attn.hook_q              [b, pos, n_heads, d_head]      before the rotary embedding (if any)
    blocks.{i}.attn.hook_k / hook_v     [b, pos, n_kv_heads, d_head]   (grouped KV heads, not repeated)
    blocks.{i}.attn.hook_rot_q / hook_rot_k                           after the rotary embedding
    blocks.{i}.attn.hook_attn_scores    [b, n_heads, q, k]  q·k · attention_scale (default 1/sqrt(d_head)), masked
    blocks.{i}.attn.hook_pattern        [b, n_heads, q, k]  softmax over k
                                        (from FUSED_ATTENTION_MIN query positions on, the two fire only when
                                        observed: a hook, a cache or an nnsight trace on one; else PyTorch's
                                        fused attention runs and skips the [q, k] maps)
    blocks.{i}.attn.hook_z              [b, pos, n_heads, d_head]      pattern · v
    blocks.{i}.attn.hook_gate           [b, pos, n_heads, d_head]      gate_proj(x), before the sigmoid; o_proj
                                        reads z · sigmoid(gate)        (cfg.attention_output_gate, Qwen3-Next)
    blocks.{i}.attn.q_norm / k_norm.hook_scale / hook_normalized      the q / k RMSNorms (cfg.qk_norm; "head":
                                        [b, pos, heads, 1 / d_head], Qwen3-Next)
    blocks.{i}.hook_attn_out            [b, pos, d_model]   residual_multiplier · o_proj(z)
    "parallel" layers (Falcon-H1): both of the above, on the same ln1 output (times ssm_in_multiplier /
    attention_in_multiplier; the outputs times ssm_out_multiplier / attention_out_multiplier);
    resid_mid = resid_pre + hook_mixer_out + hook_attn_out
    MLP layers (cfg.mlp_sublayer False, Nemotron-H), and the MLP sublayer of every layer (cfg.mlp_sublayer, Bamba),
    which comes after:
    blocks.{i}.hook_resid_mid           [b, pos, d_model]   resid_pre + mixer output      (mlp_sublayer only)
    blocks.{i}.ln2.hook_scale / hook_normalized             rms before the MLP            (mlp_sublayer only)
    blocks.{i}.mlp.hook_pre             [b, pos, d_mlp]     gate_proj (gated) / up_proj (plain), before the act
    blocks.{i}.mlp.hook_pre_linear      [b, pos, d_mlp]     up_proj                       (gated only)
    blocks.{i}.mlp.hook_post            [b, pos, d_mlp]     act(pre) · pre_linear (gated) / act(pre) (plain)
    blocks.{i}.hook_mlp_out             [b, pos, d_model]   residual_multiplier · down_proj (or the MoE's output,
                                        + the MLP's with cfg.moe_shared_mlp, Granite)
    MoE sublayers (layers in cfg.moe_layers, Jamba), instead of blocks.{i}.mlp.* (beside them with
    cfg.moe_shared_mlp, Granite-4.0-H):
    blocks.{i}.moe.hook_router_logits   [b, pos, n_experts]
    blocks.{i}.moe.hook_expert_weights  [b, pos, n_experts_per_tok]   top-k of softmax(router logits), unnormalised
                                        (cfg.moe_normalize_topk: softmax of the top-k logits, Granite)
    blocks.{i}.moe.hook_pre / hook_pre_linear / hook_post  [b, pos, n_experts_per_tok, d_mlp]  each chosen expert's
                                        gate(x), up(x), act(gate) · up (the slots of hook_expert_weights)
    blocks.{i}.mlp.hook_gate            [b, pos, 1]         the shared expert's gate logit shared_expert_gate(x); the
                                        MLP's output is sigmoid(gate) · down_proj  (cfg.moe_shared_gate, Qwen3-Next)
    shared-attention layers (cfg.layer_types "shared_attention", Zamba2; hooks/shared_block.py), before the SSM
    mixer, one use of a shared transformer block with this layer's own hooks:
    blocks.{i}.hook_shared_in           [b, pos, 2·d_model] concat(resid_pre, hook_embed)
    blocks.{i}.ln_attn.hook_scale / hook_normalized         rms before the attention (2·d_model wide)
    blocks.{i}.attn.hook_*                                  as above (q / k / v read 2·d_model)
    blocks.{i}.hook_attn_out            [b, pos, d_model]   o_proj(z)
    blocks.{i}.ln_mlp.hook_scale / hook_normalized          rms before the MLP
    blocks.{i}.mlp.hook_*, blocks.{i}.hook_mlp_out          as above (no residual inside the shared block)
    blocks.{i}.hook_shared_out          [b, pos, d_model]   shared_proj(mlp_out), added to the mixer's input only:
                                        ln1 reads resid_pre + hook_shared_out; resid_post = resid_pre + mixer_out
    every layer:
    blocks.{i}.hook_resid_post          [b, pos, d_model]
    ln_final.hook_scale / hook_normalized
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hybrid_config import HYBRID_MODEL_TYPES, KV_LAYER_KINDS, RECURRENT_MIXER_KINDS, HybridConfig
from .hook_points import HookPoint, hook_observed
from .mamba import HookedSSM, RMSNorm, SSMMixer, SSMState


# --------------------------------------------------------------------------------------------
# decoding state: recurrent state for SSM layers, keys and values for attention layers
# --------------------------------------------------------------------------------------------
@dataclass
class HybridState(SSMState):
    """The mixed decoding cache. ``conv`` / ``ssm`` (as :class:`SSMState`) hold the k-th *SSM* layer's entries at
    index k; ``keys`` / ``values`` [b, offset, n_kv_heads, d_head] (after the rotary embedding) and ``key_mask``
    [b, offset] (bool, False at padding) hold the k-th *attention* layer's at index k."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    key_mask: list[Tensor] = field(default_factory=list)

    def copy(self) -> "HybridState":
        """A snapshot: new lists of the same tensors (a forward replaces entries, never writes into them)."""
        return HybridState(conv=list(self.conv), ssm=list(self.ssm), offset=self.offset, keys=list(self.keys),
                           values=list(self.values), key_mask=list(self.key_mask))


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
#: forwards of at least this many query positions use PyTorch's fused attention when nobody observes
#: ``hook_attn_scores`` / ``hook_pattern`` (shorter ones, decoding steps included, compute the pattern: it costs
#: little there, and every length keeps one rounding)
FUSED_ATTENTION_MIN = 64


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    """Causal softmax attention with grouped KV heads and a rotary embedding on the first ``rotary_dim`` dims of
    each head (HF ``BambaAttention`` with its eager path; parameter names follow it). ``d_in``: the width q/k/v
    read (default d_model; Zamba2's shared block reads 2·d_model); the output is d_model wide."""

    def __init__(self, cfg: HybridConfig, d_in: int | None = None):
        super().__init__()
        self.cfg = cfg
        nh, nkv, dh, bias = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.attn_bias
        d_in = cfg.d_model if d_in is None else d_in
        self.q_proj = nn.Linear(d_in, nh * dh, bias=bias)
        self.k_proj = nn.Linear(d_in, nkv * dh, bias=bias)
        self.v_proj = nn.Linear(d_in, nkv * dh, bias=bias)
        self.o_proj = nn.Linear(nh * dh, cfg.d_model, bias=bias if cfg.attn_out_bias is None else cfg.attn_out_bias)
        if cfg.qk_norm == "projection":  # OLMo-2 / OLMo-Hybrid: RMSNorm over the whole q / k projection
            self.q_norm, self.k_norm = RMSNorm(nh * dh, cfg.norm_eps), RMSNorm(nkv * dh, cfg.norm_eps)
        elif cfg.qk_norm == "head":  # Qwen3-Next: one RMS per head over d_head, gain norm_offset + w
            self.q_norm, self.k_norm = (RMSNorm(dh, cfg.norm_eps, cfg.norm_offset) for _ in range(2))
        if cfg.attention_output_gate:  # Qwen3-Next: o_proj reads z · sigmoid(gate_proj(x)) (HF's q_proj gate rows)
            self.gate_proj = nn.Linear(d_in, nh * dh, bias=bias)
            self.hook_gate = HookPoint()
        rd = cfg.rotary_dim
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, rd, 2).float() / rd),
                             persistent=False)
        for name in ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def rotary(self, x: Tensor, positions: Tensor) -> Tensor:
        """x [b, pos, heads, d_head] at absolute ``positions`` [pos]: the first rotary_dim dims rotated."""
        rd = self.cfg.rotary_dim
        freqs = positions.float()[:, None] * self.inv_freq.float()  # [pos, rd/2]
        emb = torch.cat([freqs, freqs], dim=-1)[None, :, None]  # [1, pos, 1, rd]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        x_rot, x_pass = x[..., :rd], x[..., rd:]
        return torch.cat([x_rot * cos + _rotate_half(x_rot) * sin, x_pass], dim=-1)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None, state: HybridState | None = None,
                slot: int = 0) -> Tensor:
        """x [b, L, d_model] -> [b, L, d_model]. With ``state``, attend to the cached keys too and append this
        forward's keys / values to attention slot ``slot``."""
        cfg = self.cfg
        b, L, _ = x.shape
        by_proj, by_head = cfg.qk_norm == "projection", cfg.qk_norm == "head"
        q = self.q_norm(self.q_proj(x)) if by_proj else self.q_proj(x)
        q = q.unflatten(-1, (cfg.n_heads, cfg.d_head))  # [b, L, nh, dh]
        q = self.hook_q(self.q_norm(q) if by_head else q)
        k = self.k_proj(x) if cfg.key_multiplier == 1.0 else self.k_proj(x) * cfg.key_multiplier  # Falcon-H1
        k = (self.k_norm(k) if by_proj else k).unflatten(-1, (cfg.n_key_value_heads, cfg.d_head))  # [b, L, nkv, dh]
        k = self.hook_k(self.k_norm(k) if by_head else k)
        v = self.hook_v(self.v_proj(x).unflatten(-1, (cfg.n_key_value_heads, cfg.d_head)))
        offset = 0 if state is None else state.offset
        positions = torch.arange(offset, offset + L, device=x.device)
        q = self.hook_rot_q(self.rotary(q, positions))
        k = self.hook_rot_k(self.rotary(k, positions))
        key_mask = torch.ones(b, L, dtype=torch.bool, device=x.device) if attention_mask is None \
            else attention_mask.to(x.device).bool()
        if state is not None:
            if len(state.keys) > slot:  # earlier positions come first
                k = torch.cat([state.keys[slot], k], dim=1)
                v = torch.cat([state.values[slot], v], dim=1)
                key_mask = torch.cat([state.key_mask[slot], key_mask], dim=1)
                state.keys[slot], state.values[slot], state.key_mask[slot] = k, v, key_mask
            elif len(state.keys) == slot:  # the first forward fills the slots in layer order
                state.keys.append(k)
                state.values.append(v)
                state.key_mask.append(key_mask)
            else:
                raise ValueError(f"attention slot {slot}: the decoding state holds keys for {len(state.keys)} "
                                 "attention layers only (a state is filled by one forward through every layer)")
            if cfg.attention_window is not None:  # local attention: later queries read the last window − 1 keys
                keep = min(cfg.attention_window - 1, k.shape[1])
                state.keys[slot], state.values[slot], state.key_mask[slot] = (
                    t[:, t.shape[1] - keep:] for t in (k, v, key_mask))
        Lk = k.shape[1]
        groups = cfg.n_heads // cfg.n_key_value_heads
        k_rep = k.repeat_interleave(groups, dim=2)  # head h reads KV head h // groups (HF repeat_kv)
        v_rep = v.repeat_interleave(groups, dim=2)
        scale = cfg.d_head ** -0.5 if cfg.attention_scale is None else cfg.attention_scale
        causal = torch.arange(Lk, device=x.device)[None, :] <= (Lk - L + torch.arange(L, device=x.device))[:, None]
        if cfg.attention_window is not None:  # keys k with q − k < window (HF's sliding-window mask)
            causal = causal & (torch.arange(Lk, device=x.device)[None, :]
                               > (Lk - L + torch.arange(L, device=x.device))[:, None] - cfg.attention_window)
        allowed = causal[None, None] & key_mask[:, None, None, :]  # [b, 1, L, Lk]
        # the dtype's lowest value, not -inf: a query with every key masked (left padding) gets a finite,
        # uniform row instead of NaNs that would reach real positions through 0 · NaN
        lowest = torch.finfo(q.dtype).min
        if L < FUSED_ATTENTION_MIN or x.is_meta or hook_observed(self.hook_attn_scores) \
                or hook_observed(self.hook_pattern):
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k_rep) * scale  # [b, nh, L, Lk]
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, lowest))
            pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(q.dtype))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v_rep)  # [b, L, nh, dh]
        else:  # nobody looks at the scores or the pattern: PyTorch's fused kernel, the same values to rounding
            plain_causal = Lk == L and bool(key_mask.all()) and (cfg.attention_window or L) >= L
            mask = None if plain_causal else torch.zeros(allowed.shape, dtype=q.dtype, device=x.device).masked_fill(
                ~allowed, lowest)
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k_rep.transpose(1, 2), v_rep.transpose(1, 2),
                                               attn_mask=mask, is_causal=plain_causal, scale=scale).transpose(1, 2)
        z = self.hook_z(z)
        if cfg.attention_output_gate:  # Qwen3-Next: each head's output times sigmoid of its gate
            z = z * torch.sigmoid(self.hook_gate(self.gate_proj(x).unflatten(-1, (cfg.n_heads, cfg.d_head))))
        return self.o_proj(z.flatten(-2))


def _relu2(x: Tensor) -> Tensor:
    """relu(x)² (HF ``ReLUSquaredActivation``, Nemotron-H's "relu2")."""
    return torch.square(F.relu(x))


def _gelu_tanh(x: Tensor) -> Tensor:
    """GeLU's tanh approximation (HF ``gelu_pytorch_tanh``, RecurrentGemma's hidden_activation)."""
    return F.gelu(x, approximate="tanh")


_MLP_ACTIVATIONS = {"silu": F.silu, "relu2": _relu2, "gelu": F.gelu,  # gelu: exact (HF ACT2FN["gelu"], Zamba2)
                    "gelu_tanh": _gelu_tanh}


class MLP(nn.Module):
    """With ``cfg.gated_mlp``: down_proj(act(gate_proj(x)) · up_proj(x)) (HF ``BambaMLP``), hooked as
    TransformerLens's gated MLP; else down_proj(act(up_proj(x))) (HF ``NemotronHMLP``), hooked as its plain MLP.
    ``act`` is ``cfg.act_fn``; ``d_mlp`` the hidden width (default ``cfg.d_mlp``). With ``output_gate`` (Qwen3-Next's
    shared expert, gated MLPs only) the output is multiplied by sigmoid(shared_expert_gate(x)), the gate's logit
    hooked at ``hook_gate`` [b, pos, 1]."""

    def __init__(self, cfg: HybridConfig, d_mlp: int | None = None, output_gate: bool = False):
        super().__init__()
        self.gated = cfg.gated_mlp
        d_mlp = cfg.d_mlp if d_mlp is None else d_mlp
        self.gate_multiplier, self.down_multiplier = cfg.mlp_gate_multiplier, cfg.mlp_down_multiplier  # Falcon-H1
        self.act = _MLP_ACTIVATIONS[cfg.act_fn]
        if self.gated:
            self.gate_proj = nn.Linear(cfg.d_model, d_mlp, bias=cfg.mlp_bias)
            self.hook_pre_linear = HookPoint()
        self.up_proj = nn.Linear(cfg.d_model, d_mlp, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(d_mlp, cfg.d_model, bias=cfg.mlp_bias)
        if output_gate:
            if not self.gated:
                raise ValueError("output_gate (a shared expert's sigmoid gate) needs a gated MLP (cfg.gated_mlp)")
            self.shared_expert_gate = nn.Linear(cfg.d_model, 1, bias=False)
            self.hook_gate = HookPoint()
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        if not self.gated:
            return self.down_proj(self.hook_post(self.act(self.hook_pre(self.up_proj(x)))))
        gate = self.gate_proj(x)
        pre = self.hook_pre(gate if self.gate_multiplier == 1.0 else gate * self.gate_multiplier)
        pre_linear = self.hook_pre_linear(self.up_proj(x))
        out = self.down_proj(self.hook_post(self.act(pre) * pre_linear))
        out = out if self.down_multiplier == 1.0 else out * self.down_multiplier
        if hasattr(self, "shared_expert_gate"):  # Qwen3-Next's shared expert: [b, pos, 1] gate per position
            out = torch.sigmoid(self.hook_gate(self.shared_expert_gate(x))) * out
        return out


GatedMLP = MLP  # the name Bamba's block used


def sigmoid_topk(logits: Tensor, bias: Tensor, k: int, n_group: int = 1, topk_group: int = 1,
                 normalize: bool = True, scaling: float = 1.0) -> tuple[Tensor, Tensor]:
    """(weights, experts) [.., k] of the sigmoid router (HF ``KimiLinearTopkRouter``, DeepSeek-V3's): scores =
    σ(logits) (float32); the experts are the top k of scores + ``bias`` (e_score_correction_bias, selection only)
    among the ``topk_group`` of ``n_group`` groups whose two best biased scores sum highest; weights = their scores,
    divided by their sum (+ 1e-20) with ``normalize``, times ``scaling``."""
    scores = logits.float().sigmoid()  # [.., E]
    choice = scores + bias.float()
    grouped = choice.unflatten(-1, (n_group, -1))  # [.., G, E/G]
    best = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1).topk(topk_group, dim=-1).indices
    keep = torch.zeros_like(grouped[..., 0], dtype=torch.bool).scatter(-1, best, True)  # [.., G]
    index = choice.masked_fill(~keep[..., None].expand_as(grouped).flatten(-2), float("-inf")).topk(k, dim=-1).indices
    weights = scores.gather(-1, index)
    if normalize:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * scaling, index


class MoE(nn.Module):
    """Sparse mixture of gated-MLP experts (HF ``JambaSparseMoeBlock``): router logits = router(x); weights = the
    top ``n_experts_per_tok`` of softmax(logits) (fp32, left unnormalised, in the model dtype, as HF's
    ``JambaTopKRouter``), or with ``cfg.moe_normalize_topk`` softmax over the top-k logits (those probabilities
    renormalised to sum 1, HF ``GraniteMoeHybridTopKRouter``); out = Σ_selected weight · down(act(gate(x)) · up(x))
    of each selected expert, d_mlp = ``cfg.moe_d_mlp`` (default ``cfg.d_mlp``) wide. The experts
    are stored as HF stores them, ``experts.gate_up_proj`` [E, 2·d_mlp, d_model] (gate rows first) and
    ``experts.down_proj`` [E, d_model, d_mlp]. Hooks: ``hook_router_logits`` [b, pos, E]; ``hook_expert_weights``
    [b, pos, k] (an edit of them is used); the chosen experts are ``topk(hook_router_logits, k).indices`` (softmax
    keeps the order), in the same order as the weights. ``hook_pre`` / ``hook_pre_linear`` / ``hook_post``
    [b, pos, k, d_mlp]: gate(x), up(x) and act(gate) · up of the expert in each of the k slots (the gated MLP's
    hooks with a slot axis). With ``cfg.moe_router`` "sigmoid" (Kimi-Linear) the weights and experts are
    :func:`sigmoid_topk`'s (chosen with the ``e_score_correction_bias`` buffer, so not the top-k of the logits)."""

    def __init__(self, cfg: HybridConfig):
        super().__init__()
        self.n_experts, self.top_k, self.d_mlp = cfg.n_experts, cfg.n_experts_per_tok, cfg.moe_d_mlp or cfg.d_mlp
        self.normalize_topk = cfg.moe_normalize_topk
        self.act = _MLP_ACTIVATIONS[cfg.act_fn]
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.router_kind = cfg.moe_router
        if self.router_kind == "sigmoid":  # Kimi-Linear: :func:`sigmoid_topk`, the selection bias a buffer as HF's
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_experts))
            self.groups, self.routed_scaling = (cfg.moe_n_group, cfg.moe_topk_group), cfg.moe_routed_scaling
        self.experts = nn.Module()
        self.experts.gate_up_proj = nn.Parameter(torch.zeros(cfg.n_experts, 2 * self.d_mlp, cfg.d_model))
        self.experts.down_proj = nn.Parameter(torch.zeros(cfg.n_experts, cfg.d_model, self.d_mlp))
        for name in ("router_logits", "expert_weights", "pre", "pre_linear", "post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: Tensor) -> Tensor:
        logits = self.hook_router_logits(self.router(x))  # [b, L, E]
        if self.router_kind == "sigmoid":  # σ scores, biased grouped selection (HF KimiLinearTopkRouter)
            weights, index = sigmoid_topk(logits, self.e_score_correction_bias, self.top_k, *self.groups,
                                          normalize=self.normalize_topk, scaling=self.routed_scaling)
        elif self.normalize_topk:  # softmax over the top-k logits (HF GraniteMoeHybridTopKRouter)
            top, index = torch.topk(logits.float(), self.top_k, dim=-1)  # [b, L, k]
            weights = torch.softmax(top, dim=-1)
        else:  # the top-k of the softmax, unnormalised (HF JambaTopKRouter)
            weights, index = torch.topk(torch.softmax(logits, dim=-1, dtype=torch.float), self.top_k, dim=-1)
        weights = self.hook_expert_weights(weights.to(x.dtype))
        flat, w, idx = x.reshape(-1, x.shape[-1]), weights.reshape(-1, self.top_k), index.reshape(-1, self.top_k)
        # each (token, slot)'s expert: [N, k, d_mlp] buffers, so that the hooks see every selected expert's units
        experts = [] if flat.is_meta else [(e, *torch.where(idx == e)) for e in idx.unique().tolist()]
        gate = flat.new_zeros(*idx.shape, self.d_mlp)
        up = flat.new_zeros(*idx.shape, self.d_mlp)
        for e, token, slot in experts:
            gate[token, slot], up[token, slot] = F.linear(flat[token], self.experts.gate_up_proj[e]).chunk(2, dim=-1)
        pre = self.hook_pre(gate.view(*x.shape[:-1], self.top_k, -1))  # [b, L, k, d_mlp]
        pre_linear = self.hook_pre_linear(up.view_as(pre))
        post = self.hook_post(self.act(pre) * pre_linear).reshape(-1, self.top_k, self.d_mlp)
        out = torch.zeros_like(flat)
        for e, token, slot in experts:
            h = F.linear(post[token, slot], self.experts.down_proj[e]) * w[token, slot, None]
            out.index_add_(0, token, h.to(out.dtype))
        return out.view_as(x)


class ScaledEmbedding(nn.Embedding):
    """An embedding whose output is multiplied by ``scale`` (``cfg.embedding_multiplier``; untouched at 1). The
    parameter is HF's unscaled ``embed_tokens.weight``; ``HookedHybrid.W_E`` is the scaled matrix."""

    def __init__(self, num_embeddings: int, embedding_dim: int, scale: float = 1.0):
        super().__init__(num_embeddings, embedding_dim)
        self.scale = float(scale)

    def forward(self, input: Tensor) -> Tensor:
        out = super().forward(input)
        return out if self.scale == 1.0 else out * self.scale


class ScaledLinear(nn.Linear):
    """A bias-free linear map whose output is multiplied by ``scale`` (the unembedding, ``cfg.logits_scale``;
    untouched at 1), then soft-capped as ``soft_cap · tanh(out / soft_cap)`` when ``soft_cap`` is set
    (``cfg.logits_soft_cap``). The parameter is HF's ``lm_head.weight``; ``HookedHybrid.W_U`` is the scaled matrix
    (the logits before the cap). With a cap, ``unembed.hook_pre_cap`` [b, pos, vocab] holds the logits before it
    and ``unembed.hook_post_cap`` the capped logits (the model's output; LRP's rule for the cap reads both)."""

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, soft_cap: float | None = None):
        super().__init__(in_features, out_features, bias=False)
        self.scale = float(scale)
        self.soft_cap = None if soft_cap is None else float(soft_cap)
        if self.soft_cap is not None:
            self.hook_pre_cap, self.hook_post_cap = HookPoint(), HookPoint()

    def forward(self, input: Tensor) -> Tensor:
        out = super().forward(input)
        out = out if self.scale == 1.0 else out * self.scale
        if self.soft_cap is None:
            return out
        out = self.hook_pre_cap(out)
        return self.hook_post_cap(self.soft_cap * torch.tanh(out / self.soft_cap))


# --------------------------------------------------------------------------------------------
# block and model
# --------------------------------------------------------------------------------------------
def _times(x: Tensor, scale: float) -> Tensor:
    """x · scale (x itself at 1)."""
    return x if scale == 1.0 else x * scale


def _mlstm(cfg: HybridConfig) -> nn.Module:
    from .mlstm import MLSTMMixer  # xLSTM's mLSTM layers

    return MLSTMMixer(cfg.mlstm)


def _rglru(cfg: HybridConfig) -> nn.Module:
    from .rglru import RGLRUMixer  # RecurrentGemma's recurrent layers

    return RGLRUMixer(cfg.rglru)


def _mla(cfg: HybridConfig) -> nn.Module:
    from .mla import MultiHeadLatentAttention  # Kimi-Linear's attention layers

    return MultiHeadLatentAttention(cfg.mla)


def _kda(cfg: HybridConfig) -> nn.Module:
    from .kda import KimiDeltaAttentionMixer  # Kimi-Linear's linear-attention layers

    return KimiDeltaAttentionMixer(cfg.kda)


def _gated_deltanet(cfg: HybridConfig) -> nn.Module:
    from .deltanet import GatedDeltaNetMixer  # OLMo-Hybrid's linear-attention layers

    return GatedDeltaNetMixer(cfg.delta)


#: layer kind -> its recurrent mixer (``HybridBlock.ssm``), built from the model's config; each takes (x [b, L,
#: d_model], attention_mask, state_positions, state, layer=slot) and returns [b, L, d_model]
RECURRENT_MIXERS: dict[str, Any] = {"ssm": lambda cfg: SSMMixer(cfg.ssm), "parallel": lambda cfg: SSMMixer(cfg.ssm),
                                    "gated_deltanet": _gated_deltanet, "rglru": _rglru, "kda": _kda,
                                    "mlstm": _mlstm}


class HybridBlock(nn.Module):
    """resid = resid_pre + mixer(RMSNorm(resid_pre)); with ``cfg.mlp_sublayer`` that is ``resid_mid`` and
    resid_post = resid_mid + MLP(RMSNorm(resid_mid)), else resid_post = resid. The mixer is ``ssm`` (an
    :class:`SSMMixer`), ``attn`` (:class:`Attention`) or ``mlp`` (:class:`MLP`), ``kind`` says which; ``slot`` is
    the block's index among the blocks of its kind (its entry in a :class:`HybridState`). On a layer of
    ``cfg.moe_layers`` the MLP sublayer is ``moe`` (:class:`MoE`), or ``moe`` + ``mlp`` with ``cfg.moe_shared_mlp``.
    Each sublayer's output is multiplied by ``cfg.residual_multiplier`` before it is added (and before its
    ``hook_*_out``, which so holds exactly what the residual stream adds). A "parallel" block (Falcon-H1) has both
    ``ssm`` and ``attn``, reading the same normed input: resid_mid = resid_pre + hook_mixer_out + hook_attn_out;
    ``slot`` is its SSM slot and ``kv_slot`` its attention slot. The mixers' input / output multipliers
    (``cfg.ssm_in_multiplier`` ... ``attention_out_multiplier``) apply on every SSM / attention mixer."""

    def __init__(self, cfg: HybridConfig, kind: str, slot: int, layer: int = -1):
        super().__init__()
        self.kind, self.slot = kind, slot
        self.hook_resid_pre = HookPoint()
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_offset)
        if kind in RECURRENT_MIXER_KINDS:
            self.ssm = RECURRENT_MIXERS[kind](cfg)
            self.hook_mixer_out = HookPoint()
        if kind in ("attention", "parallel"):
            self.attn = Attention(cfg) if cfg.mla is None else _mla(cfg)
            self.hook_attn_out = HookPoint()
        self.kv_slot = slot if kind != "parallel" else sum(t in KV_LAYER_KINDS for t in cfg.layer_types[:layer])
        self.residual_multiplier = cfg.residual_multiplier
        self.mults = (cfg.ssm_in_multiplier, cfg.ssm_out_multiplier, cfg.attention_in_multiplier,
                      cfg.attention_out_multiplier)
        moe = layer in cfg.moe_layers
        if moe:  # the MLP sublayer is a mixture of experts (Jamba), or experts + the dense MLP (moe_shared_mlp)
            self.moe = MoE(cfg)
            self.hook_mlp_out = HookPoint()
        if (not moe or cfg.moe_shared_mlp) and (kind == "mlp" or cfg.mlp_sublayer):  # HybridConfig refuses "mlp"
            self.mlp = MLP(cfg, d_mlp=cfg.moe_shared_d_mlp if moe else None,         # layers with an MLP sublayer
                           output_gate=moe and cfg.moe_shared_gate)                    # (Qwen3-Next's shared expert)
            self.hook_mlp_out = HookPoint()
        self.mlp_sublayer = kind != "mlp" and cfg.mlp_sublayer
        if self.mlp_sublayer:
            self.hook_resid_mid = HookPoint()
            self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_offset)
        self.post_norm = layer in cfg.post_norm_layers  # OLMo-2's layout: ln1 / ln2 normalise the sublayer outputs
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, layer: int, attention_mask: Tensor | None = None,
                state_positions: Any = None, state: HybridState | None = None) -> Tensor:
        resid = self.hook_resid_pre(resid)
        post = self.post_norm
        h = resid if post else self.ln1(resid)
        m, (s_in, s_out, a_in, a_out) = self._scaled, self.mults
        if self.kind in RECURRENT_MIXER_KINDS:
            mixed = self.ssm(_times(h, s_in), attention_mask=attention_mask, state_positions=state_positions,
                             state=state, layer=self.slot)
            mixed = self.hook_mixer_out(m(_times(self.ln1(mixed) if post else mixed, s_out)))
        if self.kind in ("attention", "parallel"):
            attn = self.attn(_times(h, a_in), attention_mask=attention_mask, state=state, slot=self.kv_slot)
            attn = self.hook_attn_out(m(_times(self.ln1(attn) if post else attn, a_out)))
            mixed = attn if self.kind == "attention" else mixed + attn
        if self.kind == "mlp":
            mixed = self.hook_mlp_out(m(self.mlp(h)))
        if not self.mlp_sublayer:
            return self.hook_resid_post(resid + mixed)
        resid = self.hook_resid_mid(resid + mixed)
        h = resid if post else self.ln2(resid)
        if not hasattr(self, "moe"):
            ffn = self.mlp(h)
        else:  # HF's order: experts + shared MLP
            ffn = self.moe(h) + self.mlp(h) if hasattr(self, "mlp") else self.moe(h)
        return self.hook_resid_post(resid + self.hook_mlp_out(m(self.ln2(ffn) if post else ffn)))

    def _scaled(self, x: Tensor) -> Tensor:
        """A sublayer's output times ``cfg.residual_multiplier`` (untouched at 1)."""
        return _times(x, self.residual_multiplier)


class HookedHybrid(HookedSSM):
    """A hybrid (Mamba-2 or Mamba-1 + attention [+ MLP / MoE]) language model whose every hidden state is a
    TransformerLens hook.

    The forward, ``run_with_cache`` / ``run_with_hooks``, ``stop_at_layer`` / ``start_at_layer``, tokens and
    ``generate`` are HookedSSM's; generation carries a :class:`HybridState` (recurrent state on SSM layers, a KV
    cache on attention layers; MLP layers keep nothing). Load with :func:`interp.load` (an in-memory
    ``BambaForCausalLM`` / ``NemotronHForCausalLM`` / ``JambaForCausalLM`` / ``GraniteMoeHybridForCausalLM`` /
    ``Zamba2ForCausalLM`` / ``FalconH1ForCausalLM``, or a folder it saved) or :meth:`from_pretrained`.
    """

    state_class = HybridState

    def __init__(self, cfg: HybridConfig, tokenizer: object | None = None):
        super(HookedSSM, self).__init__()  # HookedRootModule's, not HookedSSM's (the blocks differ)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.embed = ScaledEmbedding(cfg.d_vocab, cfg.d_model, scale=cfg.embedding_multiplier)
        self.hook_embed = HookPoint()
        from .shared_block import SharedInput, build_blocks  # it builds on this module's blocks

        # the token embeddings shared-attention layers read (Zamba2), captured from block 0's input
        self._shared_input = SharedInput() if "shared_attention" in cfg.layer_types else None
        self.blocks = build_blocks(cfg, HybridBlock, self._shared_input)
        if self._shared_input is not None:
            self.blocks[0].register_forward_pre_hook(self._shared_input.capture_hook, with_kwargs=True)
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps, cfg.norm_offset)
        self.unembed = ScaledLinear(cfg.d_model, cfg.d_vocab, scale=cfg.logits_scale,
                                    soft_cap=cfg.logits_soft_cap)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.setup()
        if cfg.device is not None:
            self.to(cfg.device)
        cfg.device = str(self.device)

    @property
    def W_E(self) -> Tensor:
        """Embedding [vocab, d_model] as the model uses it, ``hook_embed == W_E[tokens]``: the parameter times
        ``cfg.embedding_multiplier`` (a new tensor when that is not 1, else the parameter itself)."""
        w, scale = self.embed.weight, self.cfg.embedding_multiplier
        return w if scale == 1.0 else w * scale

    @property
    def W_U(self) -> Tensor:
        """Unembedding [d_model, vocab] as the model uses it, logits = ``ln_final`` output @ W_U: the parameter's
        transpose times ``cfg.logits_scale`` (a new tensor when that is not 1)."""
        w, scale = self.unembed.weight.T, self.cfg.logits_scale
        return w if scale == 1.0 else w * scale

    # --- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> "HookedHybrid":
        """Load a Hugging Face hybrid checkpoint (``config.json`` model_type in ``HYBRID_MODEL_TYPES``; hub id or a
        folder written by ``save_pretrained``), safetensors only, with its tokenizer."""
        from transformers import AutoConfig

        from . import loading

        folder = loading.resolve_checkpoint(name_or_path)
        raw = loading.read_config(folder)
        if raw.get("model_type") not in HYBRID_MODEL_TYPES:
            raise loading.CheckpointError(f"{folder}/config.json: model_type {raw.get('model_type')!r} is not a "
                                          f"hybrid model ({', '.join(HYBRID_MODEL_TYPES)})")
        loading.check_model_size(raw, folder / "config.json")
        cfg = HybridConfig.from_hf(AutoConfig.from_pretrained(str(folder)))
        for k, v in raw.get("interp", {}).items():  # our own fields, written by save_pretrained
            if k in ("name", "default_prepend_bos", "extra"):
                setattr(cfg, k, v)
        model = cls(cfg, tokenizer=loading.load_tokenizer(folder))
        loading.load_hybrid_state(model, loading.read_safetensors(folder), str(folder))
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_hf_model(cls, hf_model: nn.Module, tokenizer: object | None = None) -> "HookedHybrid":
        """Wrap the weights of an in-memory Hugging Face hybrid (``BambaForCausalLM``, ``JambaForCausalLM``, ...;
        copied)."""
        from . import loading

        model = cls(HybridConfig.from_hf(hf_model.config), tokenizer=tokenizer)
        loading.load_hybrid_state(model, hf_model.state_dict(), type(hf_model).__name__)
        p = next(hf_model.parameters())
        return model.to(device=p.device, dtype=p.dtype).eval()

    def save_pretrained(self, folder: str) -> None:
        """Write a Hugging Face Bamba or OLMo-Hybrid checkpoint (safetensors, by ``cfg.hf_model_type``) that this
        class and ``BambaForCausalLM`` / ``OlmoHybridForCausalLM`` load; Bamba- and OLMo-Hybrid-layout models only
        (ValueError naming what else the checkpoint cannot hold)."""
        from .loading import save_hybrid

        save_hybrid(self, folder)

    # --- forward ----------------------------------------------------------------------------
    def forward(self, input: Any, *args: Any, embeddings: Tensor | None = None, **kwargs: Any) -> Any:
        """HookedSSM's forward. ``embeddings`` [b, pos, d_model]: the token embeddings that shared-attention layers
        read (``cfg.layer_types`` "shared_attention", Zamba2), needed with ``start_at_layer`` > 0 before such a
        layer (pass the forward's ``hook_embed`` value); by default this forward's ``hook_embed`` value."""
        if self._shared_input is None:
            if embeddings is not None:
                raise ValueError("embeddings= is for models with shared-attention layers (cfg.layer_types "
                                 "'shared_attention'); this model has none")
            return super().forward(input, *args, **kwargs)
        from .shared_block import start_layer_of

        with self._shared_input.bind(embeddings, start_layer_of(self, input, args, kwargs)):
            return super().forward(input, *args, **kwargs)

    # --- decoding ---------------------------------------------------------------------------
    def decoding_states(self, tokens: Tensor, positions: list[int]) -> dict[int, HybridState | None]:
        """{p: the decoding state after reading ``tokens[:, :p]``} (None for p = 0): one forward with a state per
        position (an attention layer's cache is its keys and values, so there is no one-forward shortcut)."""
        return self._states_by_forwards(tokens, positions)

    # --- shapes -----------------------------------------------------------------------------
    def pos_dim(self, hook_name: str) -> int:
        """Index of the position axis: 2 (the query axis) for ``attn.hook_attn_scores`` / ``hook_pattern``."""
        return 2 if hook_name.endswith(("attn.hook_attn_scores", "attn.hook_pattern")) else 1

    def _meta_twins(self) -> list["HookedHybrid"]:
        with torch.device("meta"):
            return [HookedHybrid(replace(self.cfg, device="meta"))]
