"""Hookable RG-LRU recurrent block (Griffin / Hawk, De et al. 2024; HF ``RecurrentGemmaRecurrentBlock``), the
recurrent layers of RecurrentGemma, one :class:`~interp.hooks.hybrid.HybridBlock` kind ("rglru", ``cfg.rglru`` an
:class:`RGLRUConfig`).

Two branches read the mixer input x [b, L, d_model]::

    gate branch:       z = linear_y(x),  gate = GeLU_tanh(z)                      [b, L, d_lru]
    recurrent branch:  c = conv1d(linear_x(x))  (causal, depthwise, with bias)     [b, L, d_lru]
                       i_t = σ(W_i c_t + b_i),  r_t = σ(W_a c_t + b_a)   (block-diagonal W: H blocks)
                       log a_t = −C · r_t · softplus(Λ)                  (C = 8; a_t = σ(Λ)^(C·r_t) in log space)
                       u_t = √(1 − a_t²) · i_t · c_t                     (√(1 − a²) := 1 at a reset position)
                       h_t = a_t · h_{t−1} + u_t,   y_t = h_t            (per channel, float32 state)
    out = linear_out(y · gate)

(HF ``RecurrentGemmaRglru``: ``-8.0 * recurrent_gate * softplus(recurrent_param)``; the multiplier
``SqrtBoundDerivative(1 − a²)``, replaced by 1 where ``position_ids == 0`` (``reset``), where HF also multiplies a
by 0; with a zero state before the reset that product is 0 either way, so a reset only changes the multiplier.)
A forward without a stored state resets at its first position (each row's first real token with an
``attention_mask``, which HF's own forward does not do: it neither masks padding in this block nor resets at the
first real token unless ``position_ids`` say so); the padding positions' conv input and u are zeroed, so a
left-padded row equals the same row unpadded.

Hook names (``b`` batch, ``pos`` positions, ``d`` = d_lru = HF ``lru_width``)::

    blocks.{i}.ssm.hook_in           [b, pos, d_model]   mixer input
    blocks.{i}.ssm.hook_conv         [b, pos, d]         conv1d(linear_x(x)), bias included
    blocks.{i}.ssm.hook_x            [b, pos, d]         the recurrence's input c_t (hook_conv, zero at padding)
    blocks.{i}.ssm.hook_input_gate   [b, pos, d]         i_t
    blocks.{i}.ssm.hook_decay        [b, pos, d]         log a_t (≤ 0), float32
    blocks.{i}.ssm.hook_u            [b, pos, d]         √(1 − a_t²) · i_t · c_t, what the recurrence adds
    blocks.{i}.ssm.hook_state        [b, k, d]           h_t at the requested positions only (float32); an edit
                                                         propagates through the rest of the recurrence (and
                                                         changes y_t at its own position t)
    blocks.{i}.ssm.hook_y            [b, pos, d]         h_t, the recurrence's output
    blocks.{i}.ssm.hook_z            [b, pos, d]         linear_y(x), the gate branch before its GeLU
    blocks.{i}.ssm.hook_gate         [b, pos, d]         GeLU_tanh(z)
    blocks.{i}.ssm.hook_gated        [b, pos, d]         y · gate
    blocks.{i}.ssm.hook_out          [b, pos, d_model]   linear_out
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hook_points import HookPoint
from .mamba import SSMState, _resolve_positions, _state_observed, _store
from .positions import PositionsLike


@dataclass
class RGLRUConfig:
    """One RG-LRU block (HF ``RecurrentGemmaConfig`` fields in brackets): ``d_model`` [hidden_size], ``d_lru``
    [lru_width] channels split into ``n_heads`` [num_attention_heads] blocks of the block-diagonal gates, conv
    width ``d_conv`` [conv1d_width], ``c`` the decay exponent's constant (8.0, fixed in HF), ``gate_act`` the
    gate branch's activation [hidden_activation]: "gelu_tanh" (``gelu_pytorch_tanh``) or "gelu"."""

    d_model: int = 2560
    d_lru: int = 2560
    n_heads: int = 10
    d_conv: int = 4
    c: float = 8.0
    gate_act: str = "gelu_tanh"

    def __post_init__(self) -> None:
        if self.d_lru % self.n_heads:
            raise ValueError(f"d_lru ({self.d_lru}) must be a multiple of n_heads ({self.n_heads})")
        if self.d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {self.d_conv}")
        if self.gate_act not in ("gelu_tanh", "gelu"):
            raise ValueError(f"gate_act must be 'gelu_tanh' or 'gelu', got {self.gate_act!r}")

    @property
    def block_width(self) -> int:
        return self.d_lru // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# the recurrence: pure functions
# --------------------------------------------------------------------------------------------
def block_diagonal(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x [b, L, H·w] times the block-diagonal ``weight`` [H, w, w] (x_h @ W_h, HF's baddbmm) plus ``bias`` [H, w]
    -> [b, L, H·w]."""
    H, w, _ = weight.shape
    return (torch.einsum("blhi,hio->blho", x.unflatten(-1, (H, w)), weight) + bias).flatten(-2)


def log_decay(r: Tensor, recurrent_param: Tensor, c: float = 8.0) -> Tensor:
    """log a = −c · r · softplus(Λ) [b, L, d] (r the recurrent gate, Λ = HF ``recurrent_param`` [d])."""
    return -c * r * F.softplus(recurrent_param)


def input_multiplier(log_a: Tensor, reset: Tensor | None = None) -> Tensor:
    """√(1 − a²) = √(1 − exp(2 log a)) [b, L, d], 1 at the ``reset`` positions [b, L] (bool; HF's
    ``reset + ~reset * multiplier``)."""
    m = torch.sqrt(1 - torch.exp(2 * log_a))
    return m if reset is None else torch.where(reset[..., None], torch.ones_like(m), m)


def rglru_scan(u: Tensor, log_a: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """h_t = a_t · h_{t−1} + u_t from h0 [b, d] (default 0), in float32 one position at a time (HF ``_rnn_scan``):
    u, log_a [b, L, d] -> (y = h [b, L, d] float32, h_final [b, d])."""
    b, L, d = u.shape
    a = log_a.float().exp()
    h = u.new_zeros(b, d, dtype=torch.float32) if h0 is None else h0.float()
    ys = []
    for t in range(L):
        h = a[:, t] * h + u[:, t].float()
        ys.append(h)
    return (torch.stack(ys, dim=1) if ys else u.new_zeros(b, 0, d, dtype=torch.float32)), h


def reset_positions(attention_mask: Tensor | None, b: int, L: int, continuing: bool,
                    device: Any = None) -> Tensor:
    """[b, L] bool: where the recurrence restarts, HF's ``position_ids == 0``: nowhere when ``continuing`` from a
    stored state; else the first position, or each row's first real token of ``attention_mask`` [b, L]."""
    reset = torch.zeros(b, L, dtype=torch.bool, device=device)
    if continuing or L == 0:
        return reset
    if attention_mask is None:
        reset[:, 0] = True
        return reset
    m = attention_mask[:, -L:].to(device).bool()
    return m & (m.long().cumsum(1) == 1)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


_GATE_ACTS = {"gelu_tanh": _gelu_tanh, "gelu": F.gelu}


# --------------------------------------------------------------------------------------------
# the mixer
# --------------------------------------------------------------------------------------------
class RGLRUMixer(nn.Module):
    """The RG-LRU recurrent block; parameter names follow HF ``RecurrentGemmaRecurrentBlock`` (linear_x, linear_y,
    linear_out, conv_1d, rg_lru.{recurrent_param, input_gate_weight, input_gate_bias, recurrent_gate_weight,
    recurrent_gate_bias}). ``fire_state_hook`` as :class:`~interp.hooks.mamba.SSMMixer`'s. Its decoding state:
    ``state.conv[slot]`` [b, d_lru, d_conv − 1] (the last conv inputs), ``state.ssm[slot]`` [b, d_lru] (float32)."""

    def __init__(self, cfg: RGLRUConfig):
        super().__init__()
        self.cfg = cfg
        self.fire_state_hook = False
        d, H, w = cfg.d_lru, cfg.n_heads, cfg.block_width
        self.linear_y = nn.Linear(cfg.d_model, d)
        self.linear_x = nn.Linear(cfg.d_model, d)
        self.linear_out = nn.Linear(d, cfg.d_model)
        self.conv_1d = nn.Conv1d(d, d, cfg.d_conv, groups=d, padding=cfg.d_conv - 1)
        self.rg_lru = nn.Module()
        self.rg_lru.recurrent_param = nn.Parameter(torch.zeros(d))
        self.rg_lru.input_gate_weight = nn.Parameter(torch.zeros(H, w, w))
        self.rg_lru.input_gate_bias = nn.Parameter(torch.zeros(H, w))
        self.rg_lru.recurrent_gate_weight = nn.Parameter(torch.zeros(H, w, w))
        self.rg_lru.recurrent_gate_bias = nn.Parameter(torch.zeros(H, w))
        self.act = _GATE_ACTS[cfg.gate_act]
        for name in ("in", "conv", "x", "input_gate", "decay", "u", "state", "y", "z", "gate", "gated",
                     "out"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: Tensor, attention_mask: Tensor | None = None, state_positions: PositionsLike = None,
                state: SSMState | None = None, layer: int = 0) -> Tensor:
        """x [b, L, d_model] -> [b, L, d_model]. With ``state``, continue from / update slot ``layer``."""
        cfg, g = self.cfg, self.rg_lru
        b, L, _ = x.shape
        x = self.hook_in(x)
        mask = None if attention_mask is None else attention_mask[:, -L:, None].to(device=x.device, dtype=x.dtype)
        gate = self.hook_gate(self.act(self.hook_z(self.linear_y(x))))  # [b, L, d]
        xb = self.linear_x(x)
        xb = xb if mask is None else xb * mask  # padding feeds zeros to the conv, as before a sequence's start
        K = cfg.d_conv
        conv_in = xb.transpose(1, 2)  # [b, d, L]
        continuing = state is not None and len(state.ssm) > layer
        if continuing:
            conv_in = torch.cat([state.conv[layer].to(conv_in.dtype), conv_in], dim=-1)
        start = K - 1 if continuing else 0
        conv = self.hook_conv(self.conv_1d(conv_in)[..., start:start + L].transpose(1, 2))  # [b, L, d]
        c = self.hook_x(conv if mask is None else conv * mask)
        i = self.hook_input_gate(torch.sigmoid(block_diagonal(c, g.input_gate_weight, g.input_gate_bias)))
        r = torch.sigmoid(block_diagonal(c, g.recurrent_gate_weight, g.recurrent_gate_bias))
        log_a = self.hook_decay(log_decay(r, g.recurrent_param, cfg.c).float())
        reset = reset_positions(attention_mask, b, L, continuing, x.device)
        u = self.hook_u((c * i) * input_multiplier(log_a, reset).to(c.dtype))  # [b, L, d]
        h0 = state.ssm[layer] if continuing else None
        y, h_final = self._scan(u, log_a, h0, state_positions, 0 if state is None else state.offset)
        y = self.hook_y(y.to(x.dtype))
        out = self.hook_out(self.linear_out(self.hook_gated(y * gate)))
        if state is not None:
            tail = F.pad(conv_in, (K - 1, 0))[..., -(K - 1):] if K > 1 else conv_in[..., :0]  # [b, d, K-1]
            _store(state, layer, tail, h_final)
        return out

    def _scan(self, u: Tensor, log_a: Tensor, h0: Tensor | None, state_positions: PositionsLike,
              offset: int) -> tuple[Tensor, Tensor]:
        """The recurrence, firing ``hook_state`` when anything observes it: an edit δ at position p adds δ to y_p
        and (Π_{s=p+1..t} a_s) δ to every later y_t and to h_final (the recurrence is affine in h). Under autograd a
        zero edit takes the same path, so the state shown carries dL/dh."""
        y, h_final = rglru_scan(u, log_a, h0)
        if not _state_observed(self):
            return y, h_final
        L = u.shape[1]
        pos = _resolve_positions(state_positions, L, offset)
        if not pos:
            raise ValueError(f"{self.hook_state.name} has a hook but none of state_positions={state_positions!r} "
                             f"lies in this forward's positions [{offset}, {offset + L})")
        states = y[:, pos]  # [b, k, d]
        self.hook_state.ctx["positions"] = torch.tensor([offset + p for p in pos], device=u.device)
        edited = self.hook_state(states.clone())
        delta = edited - states
        if delta.is_meta:
            return y, h_final
        if not (bool(delta.detach().ne(0).any()) or (torch.is_grad_enabled() and delta.requires_grad)):
            return y, h_final
        y, h_final = y.clone(), h_final.clone()
        for j, p in enumerate(pos):
            d = delta[:, j].float()
            y[:, p] = y[:, p] + d
            dy, d = rglru_scan(torch.zeros_like(u[:, p + 1:], dtype=torch.float32), log_a[:, p + 1:], d)
            y[:, p + 1:] = y[:, p + 1:] + dy
            h_final = h_final + d
        return y, h_final
