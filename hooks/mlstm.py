"""Hookable mLSTM mixer (Beck et al. 2024, xLSTM; HF ``xLSTMLayer`` with its native PyTorch backend), the layer of
every xLSTM block, one :class:`~interp.hooks.hybrid.HybridBlock` kind ("mlstm", ``cfg.mlstm`` an
:class:`MLSTMConfig`; the block is HF's ``xLSTMBlock``: resid += mLSTM(RMSNorm(resid)); resid += SwiGLU(RMSNorm(resid))).

Per head (H heads; q, k of width d_k, v of width d_v), with the gate pre-activations soft-capped,
ĩ_t = cap · tanh(igate_preact(x_t) / cap) and log f_t = logsigmoid(cap · tanh(fgate_preact(x_t) / cap)), and a
stabiliser m_t (HF ``mlstm_recurrent_step_native``; the stabilised states C̃ = e^{−m} C, ñ = e^{−m} n are what HF
carries and what the decoding state holds):

    m_t = max(log f_t + m_{t−1}, ĩ_t)                                    (m_{−1} = 0, C̃_{−1} = 0, ñ_{−1} = 0)
    C̃_t = e^{log f_t + m_{t−1} − m_t} C̃_{t−1} + e^{ĩ_t − m_t} k_t v_tᵀ,   ñ_t = e^{log f_t + m_{t−1} − m_t} ñ_{t−1} + e^{ĩ_t − m_t} k_t
    h_t = C̃_tᵀ q̃_t / (max(|ñ_tᵀ q̃_t|, e^{−m_t}) + eps),                 q̃_t = q_t / √d_k

HF's chunkwise form (``mlstm_chunkwise_native_autograd``, ``chunk_size``) computes the same m_t, states and h_t
(to rounding): within a chunk the stabiliser is max(b_i + m_inter, max_{j ≤ i} b_i − b_j + ĩ_j) with b the
cumulative log f, which unrolls the recursion above. :func:`mlstm_chunkwise` is that form; :func:`mlstm_recurrent`
the step-by-step one (HF's decoding path; this mixer takes it for a 1-token forward that continues a state).
The output is out_proj(σ(o_t) · MultiHeadLayerNorm(h_t)) (HF ``xLSTMMultiHeadLayerNorm``: a LayerNorm per head
over d_v, eps ``norm_eps``, then one weight (and bias) over H·d_v).

Hook names (``b`` batch, ``pos`` positions)::

    blocks.{i}.ssm.hook_in          [b, pos, d_model]        mixer input (norm_mlstm's output)
    blocks.{i}.ssm.hook_q / hook_k  [b, pos, H, d_k]         q(x), k(x) (q before the 1/√d_k scale)
    blocks.{i}.ssm.hook_v           [b, pos, H, d_v]         v(x)
    blocks.{i}.ssm.hook_input_gate  [b, pos, H]              ĩ: the soft-capped input-gate pre-activation (log-space)
    blocks.{i}.ssm.hook_decay       [b, pos, H]              log f_t (≤ 0)
    blocks.{i}.ssm.hook_state       [b, k, H, d_k, d_v]      C̃_t (the stabilised memory, HF's matC state) at the
                                                             requested positions only; an edit propagates through
                                                             the rest of the recurrence (and changes h_t at its own
                                                             position t); ñ and m are not edited
    blocks.{i}.ssm.hook_normalizer  [b, pos, H]              the denominator max(|ñ_tᵀ q̃_t|, e^{−m_t}) + eps
    blocks.{i}.ssm.hook_y           [b, pos, H, d_v]         h_t (before the multi-head norm)
    blocks.{i}.ssm.hook_z           [b, pos, H·d_v]          ogate_preact(x), the output gate before the sigmoid
    blocks.{i}.ssm.hook_gated       [b, pos, H·d_v]          σ(z) · MultiHeadLayerNorm(h)
    blocks.{i}.ssm.hook_out         [b, pos, d_model]        out_proj

Padding: HF's xLSTM has no ``attention_mask`` (its forward ignores one); this mixer ignores it too, so a padded
token enters the state as in HF (a left-padded batch equals HF's, not the unpadded rows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hook_points import HookPoint
from .mamba import SSMState, _resolve_positions, _state_observed
from .positions import PositionsLike

#: (C̃ [b, H, d_k, d_v], ñ [b, H, d_k], m [b, H]): one layer's recurrent state, float32
MLSTMState = tuple[Tensor, Tensor, Tensor]


@dataclass
class MLSTMConfig:
    """One mLSTM layer (HF ``xLSTMConfig``'s fields in brackets): ``n_heads`` [num_heads]; ``qk_dim`` =
    int(hidden_size · [qk_dim_factor]) and ``v_dim`` = int(hidden_size · [v_dim_factor]) (HF ``xLSTMLayer``'s
    widths, not the config's rounded ``qk_dim`` property), split evenly over the heads; ``gate_soft_cap``
    [gate_soft_cap] (None: no cap); ``eps`` [eps], the normaliser's; ``norm_eps`` [norm_eps], the multi-head
    LayerNorm's; ``bias`` [use_bias] on q / k / v / ogate_preact / out_proj and the norm; ``chunk_size``
    [chunk_size] of the chunkwise form (it changes only rounding)."""

    d_model: int = 4096
    n_heads: int = 8
    qk_dim: int = 2048
    v_dim: int = 4096
    gate_soft_cap: float | None = 15.0
    eps: float = 1e-6
    norm_eps: float = 1e-6
    bias: bool = False
    chunk_size: int = 64

    def __post_init__(self) -> None:
        if self.qk_dim % self.n_heads or self.v_dim % self.n_heads:
            raise ValueError(f"qk_dim ({self.qk_dim}) and v_dim ({self.v_dim}) must be multiples of n_heads "
                             f"({self.n_heads})")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def d_k(self) -> int:
        return self.qk_dim // self.n_heads

    @property
    def d_v(self) -> int:
        return self.v_dim // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# the mLSTM recurrence: chunkwise and recurrent forms
# --------------------------------------------------------------------------------------------
def soft_cap(x: Tensor, cap: float | None) -> Tensor:
    """cap · tanh(x / cap) (HF ``soft_cap``); x itself when cap is None."""
    return x if cap is None else cap * torch.tanh(x / cap)


def zero_state(b: int, H: int, dk: int, dv: int, device: Any = None) -> MLSTMState:
    """The state before the first token: C̃ = 0, ñ = 0, m = 0 (HF's initial states)."""
    return (torch.zeros(b, H, dk, dv, device=device), torch.zeros(b, H, dk, device=device),
            torch.zeros(b, H, device=device))


def mlstm_chunkwise(q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor, state: MLSTMState | None = None,
                    chunk_size: int = 64) -> tuple[Tensor, Tensor, Tensor, MLSTMState]:
    """The recurrence in chunks (HF ``mlstm_chunkwise_recurrent_fw_C`` + ``mlstm_chunkwise_parallel_fw_H``; a last
    chunk shorter than ``chunk_size`` is one chunk of its own length). q (already scaled by 1/√d_k), k [b, L, H, d_k],
    v [b, L, H, d_v], i (ĩ), logf [b, L, H]; state (C̃, ñ, m) before position 0 (default zeros).
    Returns (num [b, L, H, d_v] = C̃_tᵀ q̃_t, qn [b, L, H] = ñ_tᵀ q̃_t, m [b, L, H], final state), float32:
    h_t = num_t / (max(|qn_t|, e^{−m_t}) + eps)."""
    b, L, H, dk = k.shape
    dv = v.shape[-1]
    C, n, m0 = zero_state(b, H, dk, dv, k.device) if state is None else (s.float() for s in state)
    q, k, v = (x.float().transpose(1, 2) for x in (q, k, v))  # [b, H, L, d]
    i, logf = i.float().transpose(1, 2), logf.float().transpose(1, 2)  # [b, H, L]
    nums, qns, ms = [], [], []
    for s in range(0, L, chunk_size):
        sl = slice(s, min(s + chunk_size, L))
        qc, kc, vc, ic = q[:, :, sl], k[:, :, sl], v[:, :, sl], i[:, :, sl]
        c = qc.shape[2]
        bc = logf[:, :, sl].cumsum(-1)  # [b, H, c] cumulative log forget gate within the chunk
        causal = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
        log_d = (bc[..., :, None] - bc[..., None, :] + ic[..., None, :]).masked_fill(~causal, float("-inf"))
        m_inter = bc + m0[..., None]  # [b, H, c]: the carried state's log weight at each position
        m = torch.maximum(m_inter, log_d.amax(-1))  # [b, H, c]
        S = (qc @ kc.transpose(-1, -2)) * torch.exp(log_d - m[..., None])  # [b, H, c, c]
        q_inter = qc * torch.exp(m_inter - m)[..., None]
        nums.append(q_inter @ C + S @ vc)  # [b, H, c, d_v]
        qns.append((q_inter * n[:, :, None]).sum(-1) + S.sum(-1))  # [b, H, c]
        ms.append(m)
        m_last = m[..., -1]  # = max(b_c + m0, max_j b_c − b_j + ĩ_j): the state's stabiliser after the chunk
        w = torch.exp(bc[..., -1:] - bc + ic - m_last[..., None])  # [b, H, c]
        carry = torch.exp(bc[..., -1] + m0 - m_last)  # [b, H]
        C = carry[..., None, None] * C + (kc * w[..., None]).transpose(-1, -2) @ vc
        n = carry[..., None] * n + (kc * w[..., None]).sum(-2)
        m0 = m_last
    num, qn, m = torch.cat(nums, 2), torch.cat(qns, 2), torch.cat(ms, 2)
    return num.transpose(1, 2), qn.transpose(1, 2), m.transpose(1, 2), (C, n, m0)


def mlstm_step(q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor,
               state: MLSTMState) -> tuple[Tensor, Tensor, Tensor, MLSTMState]:
    """One position (HF ``mlstm_recurrent_step_native``): q (scaled), k [b, H, d_k], v [b, H, d_v], i, logf [b, H],
    state (C̃, ñ, m). Returns (num [b, H, d_v], qn [b, H], m [b, H], new state)."""
    C, n, m0 = state
    m = torch.maximum(logf + m0, i)
    fa, ia = torch.exp(logf + m0 - m), torch.exp(i - m)  # [b, H]
    C = fa[..., None, None] * C + ia[..., None, None] * (k[..., :, None] * v[..., None, :])
    n = fa[..., None] * n + ia[..., None] * k
    return (q[..., None] * C).sum(-2), (q * n).sum(-1), m, (C, n, m)


def mlstm_recurrent(q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor,
                    state: MLSTMState | None = None) -> tuple[Tensor, Tensor, Tensor, MLSTMState]:
    """The same recurrence one position at a time (HF ``mlstm_recurrent_sequence_native``); arguments and results
    as :func:`mlstm_chunkwise`."""
    b, L, H, dk = k.shape
    st = zero_state(b, H, dk, v.shape[-1], k.device) if state is None else tuple(s.float() for s in state)
    nums, qns, ms = [], [], []
    for t in range(L):
        num, qn, m, st = mlstm_step(q[:, t].float(), k[:, t].float(), v[:, t].float(), i[:, t].float(),
                                    logf[:, t].float(), st)
        nums.append(num)
        qns.append(qn)
        ms.append(m)
    return torch.stack(nums, 1), torch.stack(qns, 1), torch.stack(ms, 1), st


def normalizer(qn: Tensor, m: Tensor, eps: float) -> Tensor:
    """The denominator max(|ñ_tᵀ q̃_t|, e^{−m_t}) + eps [b, L, H] (HF's ``h_denom`` / ``vecDenom_max_common + eps``)."""
    return torch.maximum(qn.abs(), torch.exp(-m)) + eps


def multihead_layer_norm(y: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    """HF ``xLSTMMultiHeadLayerNorm``: y [b, L, H, d_v] normalised per head (mean, biased variance; float32), then
    flattened to [b, L, H·d_v] and times ``weight`` (plus ``bias``)."""
    dtype = y.dtype
    yf = y.float()
    yn = (yf - yf.mean(-1, keepdim=True)) * torch.rsqrt(yf.var(-1, keepdim=True, unbiased=False) + eps)
    out = yn.to(dtype).flatten(-2) * weight
    return out if bias is None else out + bias


# --------------------------------------------------------------------------------------------
# the mixer
# --------------------------------------------------------------------------------------------
class MLSTMMixer(nn.Module):
    """The mLSTM layer; parameter names follow HF ``xLSTMLayer`` with ``weight_mode`` "single" (q, k, v,
    ogate_preact, igate_preact, fgate_preact, multihead_norm, out_proj; a "fused" checkpoint is split on loading).
    ``fire_state_hook`` as :class:`~interp.hooks.mamba.SSMMixer`'s. Its decoding state: ``state.ssm[slot]`` C̃
    [b, H, d_k, d_v] and ``state.conv[slot]`` (no conv here) ñ and m side by side, [b, H, d_k + 1]."""

    def __init__(self, cfg: MLSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.fire_state_hook = False
        d, bias = cfg.d_model, cfg.bias
        self.q = nn.Linear(d, cfg.qk_dim, bias=bias)
        self.k = nn.Linear(d, cfg.qk_dim, bias=bias)
        self.v = nn.Linear(d, cfg.v_dim, bias=bias)
        self.ogate_preact = nn.Linear(d, cfg.v_dim, bias=bias)
        self.igate_preact = nn.Linear(d, cfg.n_heads, bias=True)
        self.fgate_preact = nn.Linear(d, cfg.n_heads, bias=True)
        self.multihead_norm = nn.Module()
        self.multihead_norm.weight = nn.Parameter(torch.ones(cfg.v_dim))
        self.multihead_norm.bias = nn.Parameter(torch.zeros(cfg.v_dim)) if bias else None
        self.out_proj = nn.Linear(cfg.v_dim, d, bias=bias)
        for name in ("in", "q", "k", "v", "input_gate", "decay", "state", "normalizer", "y", "z", "gated", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    # --- pieces -----------------------------------------------------------------------------
    def inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(q, k, v, ĩ, log f) of the mixer input x [b, L, d_model], hooked: q, k [b, L, H, d_k] (q unscaled),
        v [b, L, H, d_v], ĩ and log f [b, L, H] (float32)."""
        cfg = self.cfg
        q = self.hook_q(self.q(x).unflatten(-1, (cfg.n_heads, cfg.d_k)))
        k = self.hook_k(self.k(x).unflatten(-1, (cfg.n_heads, cfg.d_k)))
        v = self.hook_v(self.v(x).unflatten(-1, (cfg.n_heads, cfg.d_v)))
        i = self.hook_input_gate(soft_cap(self.igate_preact(x), cfg.gate_soft_cap).float())
        logf = self.hook_decay(F.logsigmoid(soft_cap(self.fgate_preact(x), cfg.gate_soft_cap).float()))
        return q, k, v, i, logf

    def read_state(self, state: SSMState | None, layer: int) -> MLSTMState | None:
        """Slot ``layer``'s (C̃, ñ, m) of a decoding state (None before the first forward)."""
        if state is None or len(state.ssm) <= layer:
            return None
        nm = state.conv[layer]
        return state.ssm[layer], nm[..., :-1], nm[..., -1]

    @staticmethod
    def write_state(state: SSMState, layer: int, st: MLSTMState) -> None:
        C, n, m = st
        nm = torch.cat([n, m[..., None]], dim=-1)  # [b, H, d_k + 1]
        if len(state.ssm) > layer:
            state.conv[layer], state.ssm[layer] = nm, C
        else:
            state.conv.append(nm)
            state.ssm.append(C)

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor, attention_mask: Tensor | None = None, state_positions: PositionsLike = None,
                state: SSMState | None = None, layer: int = 0) -> Tensor:
        """x [b, L, d_model] -> [b, L, d_model]. With ``state``, continue from / update slot ``layer``; L = 1 with a
        stored state takes HF's recurrent step, anything else the chunkwise form. ``attention_mask`` is ignored
        (as HF's xLSTM ignores it)."""
        cfg = self.cfg
        x = self.hook_in(x)
        q, k, v, i, logf = self.inputs(x)
        st0 = self.read_state(state, layer)
        recurrent = st0 is not None and x.shape[1] == 1
        num, qn, m, final = self._scan(q.float() * cfg.d_k ** -0.5, k.float(), v.float(), i, logf, st0,
                                       state_positions, 0 if state is None else state.offset, recurrent)
        denom = self.hook_normalizer(normalizer(qn, m, cfg.eps))  # [b, L, H]
        y = self.hook_y((num / denom[..., None]).to(x.dtype))  # [b, L, H, d_v]
        z = self.hook_z(self.ogate_preact(x))  # [b, L, H·d_v]
        h = multihead_layer_norm(y, self.multihead_norm.weight, self.multihead_norm.bias, cfg.norm_eps)
        out = self.hook_out(self.out_proj(self.hook_gated(torch.sigmoid(z) * h)))
        if state is not None:
            self.write_state(state, layer, final)
        return out

    def _rule(self, q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor, st: MLSTMState | None,
              recurrent: bool) -> tuple[Tensor, Tensor, Tensor, MLSTMState]:
        if recurrent:
            return mlstm_recurrent(q, k, v, i, logf, st)
        return mlstm_chunkwise(q, k, v, i, logf, st, self.cfg.chunk_size)

    def _scan(self, q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor, st0: MLSTMState | None,
              state_positions: PositionsLike, offset: int,
              recurrent: bool) -> tuple[Tensor, Tensor, Tensor, MLSTMState]:
        """The rule, firing ``hook_state`` when anything observes it: the sequence is scanned in segments ending at
        the requested positions, and an edit δ of C̃ at position p adds q̃_pᵀδ to num_p and
        e^{b_t − b_p + m_p − m_t} q̃_tᵀδ to every later num_t (b the cumulative log f; the denominators, which read ñ,
        are unchanged), and the same decayed δ to the final C̃. Under autograd a zero edit takes the same path, so
        the state shown carries dL/dC̃."""
        if not _state_observed(self):
            return self._rule(q, k, v, i, logf, st0, recurrent)
        L = q.shape[1]
        pos = _resolve_positions(state_positions, L, offset)
        if not pos:
            raise ValueError(f"{self.hook_state.name} has a hook but none of state_positions={state_positions!r} "
                             f"lies in this forward's positions [{offset}, {offset + L})")
        parts, states, st, start = [], [], st0, 0
        for p in pos + ([L - 1] if pos[-1] < L - 1 else []):
            sl = slice(start, p + 1)
            *out, st = self._rule(q[:, sl], k[:, sl], v[:, sl], i[:, sl], logf[:, sl], st, recurrent)
            parts.append(out)
            states.append(st[0])
            start = p + 1
        num, qn, m = (torch.cat([part[j] for part in parts], dim=1) for j in range(3))
        C_final, n_final, m_final = st
        states = torch.stack(states[:len(pos)], dim=1)  # [b, k, H, d_k, d_v]
        self.hook_state.ctx["positions"] = torch.tensor([offset + p for p in pos], device=q.device)
        delta = self.hook_state(states.clone()) - states
        if delta.is_meta or not (bool(delta.detach().ne(0).any()) or (torch.is_grad_enabled()
                                                                      and delta.requires_grad)):
            return num, qn, m, (C_final, n_final, m_final)
        b_cum = logf.float().cumsum(1)  # [b, L, H]
        later = torch.arange(L, device=q.device)
        num = num.clone()
        for j, p in enumerate(pos):
            d = delta[:, j].float()  # [b, H, d_k, d_v]
            log_w = b_cum - b_cum[:, p:p + 1] + m[:, p:p + 1] - m  # [b, L, H]: log of δ's weight in C̃_t
            scale = torch.exp(log_w.masked_fill((later < p)[None, :, None], float("-inf")))
            num = num + scale[..., None] * torch.einsum("blhk,bhkv->blhv", q.float(), d)
            C_final = C_final + torch.exp(b_cum[:, -1] - b_cum[:, p] + m[:, p] - m_final)[..., None, None] * d
        return num, qn, m, (C_final, n_final, m_final)
