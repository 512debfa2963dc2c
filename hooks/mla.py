"""Hookable multi-head latent attention (MLA, DeepSeek-V2), as Kimi-Linear's attention layers use it (HF
``KimiLinearAttention``): the keys and values come from one low-rank latent per position, and Kimi applies *no*
rotary embedding (NoPE: the "rope" part of each key is a plain projection shared by every head, and nothing is
rotated; positions enter only through the causal mask and the KDA layers).

Per position, with x the block's normed input::

    q      = q_proj(x)                                      or q_b_proj(RMSNorm(q_a_proj(x)))   [H, d_nope + d_rope]
    c, k_r = split(kv_a_proj_with_mqa(x), [r_kv, d_rope])   c: the latent, k_r: one shared key part
    k_n, v = split(kv_b_proj(RMSNorm(c)), [d_nope, d_v])    per head
    k      = concat(k_n, k_r)                               [H, d_nope + d_rope] (k_r repeated on every head)
    z      = softmax(q · k / √(d_nope + d_rope), causal) · v;   out = o_proj(z)

(the latent norms are ``KimiLinearRMSNorm`` with its default eps 1e-6, not ``rms_norm_eps``). Hook names::

    blocks.{i}.attn.hook_q              [b, pos, H, d_nope + d_rope]
    blocks.{i}.attn.hook_latent         [b, pos, r_kv]           RMSNorm(c) · w, what kv_b_proj reads
    blocks.{i}.attn.hook_k              [b, pos, H, d_nope + d_rope]
    blocks.{i}.attn.hook_v              [b, pos, H, d_v]
    blocks.{i}.attn.hook_attn_scores    [b, H, q, k]   q·k / √(d_nope + d_rope), masked
    blocks.{i}.attn.hook_pattern        [b, H, q, k]   softmax over k (HF's eager attention weights)
    blocks.{i}.attn.hook_z              [b, pos, H, d_v]
    blocks.{i}.attn.q_a_layernorm / kv_a_layernorm .hook_scale / hook_normalized   (the latent RMSNorms)

The decoding state keeps the expanded keys and values (``HybridState.keys`` / ``values`` [b, offset, H, ·]), the
same numbers HF gets by expanding its cached latents.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .hook_points import HookPoint
from .mamba import RMSNorm

if TYPE_CHECKING:
    from .hybrid import HybridState


@dataclass
class MLAConfig:
    """One MLA layer (HF ``KimiLinearConfig`` fields in brackets): ``n_heads`` [num_attention_heads],
    ``q_lora_rank`` [q_lora_rank] (None: one q_proj), ``kv_lora_rank`` [kv_lora_rank], ``d_nope``
    [qk_nope_head_dim], ``d_rope`` [qk_rope_head_dim] (the shared key part; not rotated in Kimi-Linear), ``d_v``
    [v_head_dim], ``bias`` [attention_bias] (on q_a_proj, kv_a_proj_with_mqa and o_proj, as HF), ``latent_norm_eps``
    (1e-6: HF builds the latent RMSNorms with their default eps)."""

    d_model: int = 2304
    n_heads: int = 32
    q_lora_rank: int | None = None
    kv_lora_rank: int = 512
    d_nope: int = 128
    d_rope: int = 64
    d_v: int = 128
    bias: bool = False
    latent_norm_eps: float = 1e-6

    @property
    def d_qk(self) -> int:
        return self.d_nope + self.d_rope

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MultiHeadLatentAttention(nn.Module):
    """Causal MLA without a rotary embedding (HF ``KimiLinearAttention`` with its eager path; parameter names
    follow it). Called as :class:`~interp.hooks.hybrid.Attention` is: (x [b, L, d_model], attention_mask,
    state, slot) -> [b, L, d_model]."""

    def __init__(self, cfg: MLAConfig):
        super().__init__()
        self.cfg = cfg
        d, H = cfg.d_model, cfg.n_heads
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(d, H * cfg.d_qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, cfg.q_lora_rank, bias=cfg.bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.latent_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * cfg.d_qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, cfg.kv_lora_rank + cfg.d_rope, bias=cfg.bias)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.latent_norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, H * (cfg.d_nope + cfg.d_v), bias=False)
        self.o_proj = nn.Linear(H * cfg.d_v, d, bias=cfg.bias)
        for name in ("q", "latent", "k", "v", "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def queries(self, x: Tensor) -> Tensor:
        """q [b, L, H, d_qk] of x [b, L, d_model]."""
        q = self.q_proj(x) if self.cfg.q_lora_rank is None else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        return q.unflatten(-1, (self.cfg.n_heads, self.cfg.d_qk))

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(k [b, L, H, d_qk], v [b, L, H, d_v]) of x, through the hooked latent."""
        cfg = self.cfg
        c, k_rope = self.kv_a_proj_with_mqa(x).split([cfg.kv_lora_rank, cfg.d_rope], dim=-1)
        latent = self.hook_latent(self.kv_a_layernorm(c))  # [b, L, r_kv]
        k_nope, v = self.kv_b_proj(latent).unflatten(-1, (cfg.n_heads, -1)).split([cfg.d_nope, cfg.d_v], dim=-1)
        k = torch.cat([k_nope, k_rope[:, :, None].expand(-1, -1, cfg.n_heads, -1)], dim=-1)  # [b, L, H, d_qk]
        return k, v

    def forward(self, x: Tensor, attention_mask: Tensor | None = None, state: HybridState | None = None,
                slot: int = 0) -> Tensor:
        """x [b, L, d_model] -> [b, L, d_model]. With ``state``, attend to the cached keys too and append this
        forward's keys / values to attention slot ``slot``."""
        b, L, _ = x.shape
        q = self.hook_q(self.queries(x))
        k, v = self.keys_values(x)
        k, v = self.hook_k(k), self.hook_v(v)
        key_mask = torch.ones(b, L, dtype=torch.bool, device=x.device) if attention_mask is None \
            else attention_mask[:, -L:].to(x.device).bool()
        if state is not None:
            k, v, key_mask = _cache(state, slot, k, v, key_mask)
        Lk = k.shape[1]
        causal = torch.arange(Lk, device=x.device)[None, :] <= (Lk - L + torch.arange(L, device=x.device))[:, None]
        allowed = causal[None, None] & key_mask[:, None, None, :]  # [b, 1, L, Lk]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.cfg.d_qk ** -0.5  # [b, H, L, Lk]
        # the dtype's lowest value, not -inf: a query whose every key is padding gets a finite, uniform row
        scores = self.hook_attn_scores(scores.masked_fill(~allowed, torch.finfo(q.dtype).min))
        pattern = self.hook_pattern(torch.softmax(scores.float(), dim=-1).to(q.dtype))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))  # [b, L, H, d_v]
        return self.o_proj(z.flatten(-2))


def _cache(state: HybridState, slot: int, k: Tensor, v: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Append this forward's keys / values / key mask to attention slot ``slot`` of ``state`` (the first forward
    fills the slots in layer order) and return everything cached there."""
    if len(state.keys) > slot:  # earlier positions come first
        k = torch.cat([state.keys[slot], k], dim=1)
        v = torch.cat([state.values[slot], v], dim=1)
        key_mask = torch.cat([state.key_mask[slot], key_mask], dim=1)
        state.keys[slot], state.values[slot], state.key_mask[slot] = k, v, key_mask
    elif len(state.keys) == slot:
        state.keys.append(k)
        state.values.append(v)
        state.key_mask.append(key_mask)
    else:
        raise ValueError(f"attention slot {slot}: the decoding state holds keys for {len(state.keys)} attention "
                         "layers only (a state is filled by one forward through every layer)")
    return k, v, key_mask
