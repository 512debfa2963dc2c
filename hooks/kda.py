"""Hookable Kimi Delta Attention mixer (Kimi Team 2025, "Kimi Linear"; HF ``KimiLinearDeltaAttention``), the
linear-attention layers of Kimi-Linear, one :class:`~interp.hooks.hybrid.HybridBlock` kind ("kda", ``cfg.kda`` a
:class:`KDAConfig`).

KDA is the gated delta rule of :mod:`interp.hooks.deltanet` with a *per-channel* decay: per head (H heads, q, k, v
all d wide), with a state h [d_k, d_v] and α_t = exp(g_t) ∈ (0, 1]^{d_k},

    h_t = (I − β_t k_t k_tᵀ) Diag(α_t) h_{t−1} + β_t k_t v_tᵀ,     o_t = h_tᵀ q_t / √d_k

(HF ``recurrent_kimi_delta_attention``: the decay first, row by row of h, then the delta update with the decayed
state, then the read-out with the scaled query). q, k, v come from one causal depthwise conv (no bias) + SiLU over
concat(q_proj, k_proj, v_proj) (HF keeps three convs' weights in one ``conv1d``); q and k are l2-normalised per
head (eps 1e-6, FLA's ``l2norm``); β = σ(b_proj(x)); the decay is ``KimiLinearForgetGate``:
g = −exp(A_log[h]) · softplus(f_b_proj(f_a_proj(x)) + dt_bias) (a rank-d low-rank projection, one value per
channel). The output is o_proj(RMSNorm_d(o) · w · σ(g_b_proj(g_a_proj(x)))) (HF ``KimiLinearRMSNormGated``: one
RMS per head, eps ``rms_norm_eps``, a *sigmoid* output gate).

Hook names (``b`` batch, ``pos`` positions)::

    blocks.{i}.ssm.hook_in       [b, pos, d_model]          mixer input (the padding positions not yet zeroed)
    blocks.{i}.ssm.hook_conv     [b, pos, 3·H·d]            causal conv of concat(q, k, v) projections, before SiLU
    blocks.{i}.ssm.hook_q        [b, pos, H, d]             SiLU(conv) after the l2-norm, before the 1/√d scale
    blocks.{i}.ssm.hook_k        [b, pos, H, d]             SiLU(conv) after the l2-norm; float32
    blocks.{i}.ssm.hook_v        [b, pos, H, d]             SiLU(conv); float32
    blocks.{i}.ssm.hook_beta     [b, pos, H]                β ∈ [0, 1]; float32
    blocks.{i}.ssm.hook_decay    [b, pos, H, d]             g = log α per key channel (≤ 0); float32
    blocks.{i}.ssm.hook_state    [b, k, H, d, d]            h_t at the requested positions only (float32); an edit
                                                            propagates through the rest of the recurrence
    blocks.{i}.ssm.hook_y        [b, pos, H, d]             o_t (before the gated norm)
    blocks.{i}.ssm.hook_z        [b, pos, H·d]              g_b_proj(g_a_proj(x)), the output gate before σ
    blocks.{i}.ssm.hook_gated    [b, pos, H·d]              RMSNorm(o) · w · σ(z)
    blocks.{i}.ssm.hook_out      [b, pos, d_model]          o_proj
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deltanet import GatedDeltaNetMixer, l2norm
from .hook_points import HookPoint


@dataclass
class KDAConfig:
    """One KDA mixer (HF ``KimiLinearConfig`` fields in brackets): ``n_heads`` [linear_num_heads] heads of width
    ``d_head`` [linear_head_dim] (q, k and v alike), conv width ``d_conv`` [linear_conv_kernel_dim], conv activation
    ``activation`` [hidden_act], ``gate_norm_eps`` [rms_norm_eps] (the gated RMSNorm's), ``chunk_size`` of the
    chunked form (64, HF's; it changes only float rounding). β is σ(b_proj) (``beta_scale`` 1), q and k always
    l2-normalised (HF passes use_qk_l2norm_in_kernel=True)."""

    d_model: int = 2304
    n_heads: int = 32
    d_head: int = 128
    d_conv: int = 4
    activation: str = "silu"
    l2norm_eps: float = 1e-6
    gate_norm_eps: float = 1e-5
    chunk_size: int = 64

    def __post_init__(self) -> None:
        if self.activation not in ("silu", "swish"):
            raise ValueError(f"activation {self.activation!r} is not supported (silu only)")
        if self.chunk_size < 1 or self.d_conv < 1:
            raise ValueError(f"chunk_size ({self.chunk_size}) and d_conv ({self.d_conv}) must be >= 1")

    # the names GatedDeltaNet code reads (interp.lrp, interp.attention.deltanet): one kind of head here
    n_k_heads = property(lambda self: self.n_heads)
    n_v_heads = property(lambda self: self.n_heads)
    d_k = property(lambda self: self.d_head)
    d_v = property(lambda self: self.d_head)
    beta_scale = property(lambda self: 1.0)
    gate_activation = property(lambda self: "sigmoid")  # the output gate (GDN's is SiLU)

    @property
    def key_dim(self) -> int:
        return self.n_heads * self.d_head

    @property
    def value_dim(self) -> int:
        return self.n_heads * self.d_head

    @property
    def conv_dim(self) -> int:
        return 3 * self.key_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# the gated delta rule with per-channel decay: chunked (UT / WY) and recurrent forms
# --------------------------------------------------------------------------------------------
def chunk_kda_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h0: Tensor | None = None,
                   chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """KDA in chunks (HF ``chunk_kimi_delta_attention``'s algorithm: :func:`interp.hooks.deltanet.chunk_delta_rule`
    with the decay per key channel): q, k [b, L, H, d_k] (q already scaled, both normalised), v [b, L, H, d_v] (any
    d_v: the map of :mod:`interp.attention.kda` passes the identity), g [b, L, H, d_k] (log decay), beta [b, L, H];
    h0 [b, H, d_k, d_v]. Returns (o [b, L, H, d_v], h_final [b, H, d_k, d_v]), float32. Within a chunk the decay
    between positions i ≥ j is exp(G_i − G_j) per channel (G the within-chunk cumulative g), never exp(±G) alone,
    so nothing overflows; O(L · C · d_k · (C + d_v)) per head."""
    b, L, H, dk = k.shape
    dv = v.shape[-1]
    C = chunk_size
    q, k, v, g, beta = (x.transpose(1, 2).float() for x in (q, k, v, g, beta))  # [b, H, L, ...]
    pad = (C - L % C) % C
    q, k, v, g = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v, g))
    beta = F.pad(beta, (0, pad))
    n = (L + pad) // C
    kb, vb = k * beta[..., None], v * beta[..., None]
    q, k, kb, vb, g = (x.reshape(b, H, n, C, x.shape[-1]) for x in (q, k, kb, vb, g))
    g = g.cumsum(-2)  # [b, H, n, C, d_k] within-chunk cumulative log decay
    upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    decay = (g[..., :, None, :] - g[..., None, :, :]).masked_fill(upper[..., None], float("-inf")).exp()
    # [b, H, n, C(i), C(j), d_k]: exp(G_i − G_j) for i ≥ j, 0 above the diagonal
    system = torch.einsum("bhnic,bhnjc,bhnijc->bhnij", kb, k, decay)  # unit lower triangular system (+ I)
    intra = torch.einsum("bhnic,bhnjc,bhnijc->bhnij", q, k, decay)
    new_v = torch.linalg.solve_triangular(system, vb, upper=False, unitriangular=True)
    k_cum = torch.linalg.solve_triangular(system, kb * g.exp(), upper=False, unitriangular=True)
    h = q.new_zeros(b, H, dk, dv) if h0 is None else h0.float()
    out = q.new_empty(b, H, n, C, dv)
    qd = q * g.exp()
    kd = k * (g[..., -1:, :] - g).exp()
    chunk_decay = g[..., -1, :].exp()[..., None]  # [b, H, n, d_k, 1]
    for i in range(n):
        v_new = new_v[:, :, i] - k_cum[:, :, i] @ h
        out[:, :, i] = qd[:, :, i] @ h + intra[:, :, i] @ v_new
        h = h * chunk_decay[:, :, i] + kd[:, :, i].transpose(-1, -2) @ v_new
    return out.reshape(b, H, -1, dv)[:, :, :L].transpose(1, 2), h


def recurrent_kda_rule(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                       h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same rule one position at a time (HF ``recurrent_kimi_delta_attention``): per-channel decay of h's rows,
    delta update, read-out. Arguments and results as :func:`chunk_kda_rule`."""
    b, L, H, dk = k.shape
    h = q.new_zeros(b, H, dk, v.shape[-1], dtype=torch.float32) if h0 is None else h0.float()
    outs = []
    for t in range(L):
        qt, kt, vt = q[:, t].float(), k[:, t].float(), v[:, t].float()
        h = h * g[:, t].float().exp()[..., None]  # [b, H, d_k, d_v] · [b, H, d_k, 1]
        delta = (vt - (h * kt[..., None]).sum(-2)) * beta[:, t].float()[..., None]
        h = h + kt[..., None] * delta[..., None, :]
        outs.append((h * qt[..., None]).sum(-2))
    return torch.stack(outs, dim=1), h


# --------------------------------------------------------------------------------------------
# the mixer
# --------------------------------------------------------------------------------------------
class KimiDeltaAttentionMixer(GatedDeltaNetMixer):
    """KDA mixer; parameter names follow HF ``KimiLinearDeltaAttention`` (q/k/v/b/o_proj, conv1d,
    forget_gate.{f_a_proj, f_b_proj, A_log, dt_bias}, g_a_proj / g_b_proj, o_norm). The forward, the decoding state
    (``state.conv[slot]`` [b, 3·H·d, d_conv − 1], ``state.ssm[slot]`` [b, H, d, d]) and ``hook_state`` (segments
    ending at the requested positions, an edit carried by the rule with v = 0) are
    :class:`~interp.hooks.deltanet.GatedDeltaNetMixer`'s; this class supplies the decay, the output gate and the
    per-channel rule."""

    def __init__(self, cfg: KDAConfig):
        nn.Module.__init__(self)
        self.cfg = cfg
        self.fire_state_hook = False
        d, qkv, hd = cfg.d_model, cfg.key_dim, cfg.d_head
        self.q_proj = nn.Linear(d, qkv, bias=False)
        self.k_proj = nn.Linear(d, qkv, bias=False)
        self.v_proj = nn.Linear(d, qkv, bias=False)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                padding=cfg.d_conv - 1, bias=False)
        self.forget_gate = nn.Module()  # HF KimiLinearForgetGate: a low-rank projection to one value per channel
        self.forget_gate.f_a_proj = nn.Linear(d, hd, bias=False)
        self.forget_gate.f_b_proj = nn.Linear(hd, qkv, bias=False)
        self.forget_gate.A_log = nn.Parameter(torch.zeros(1, 1, cfg.n_heads, 1))
        self.forget_gate.dt_bias = nn.Parameter(torch.zeros(qkv))
        self.b_proj = nn.Linear(d, cfg.n_heads, bias=False)
        self.g_a_proj = nn.Linear(d, hd, bias=False)
        self.g_b_proj = nn.Linear(hd, qkv, bias=False)
        self.o_norm = nn.Module()
        self.o_norm.weight = nn.Parameter(torch.ones(hd))
        self.o_proj = nn.Linear(qkv, d, bias=False)
        for name in ("in", "conv", "q", "k", "v", "beta", "decay", "state", "y", "z", "gated", "out"):
            setattr(self, f"hook_{name}", HookPoint())

    # --- pieces -----------------------------------------------------------------------------
    def decay(self, x: Tensor) -> Tensor:
        """g [b, L, H, d] = −exp(A_log) · softplus(f_b(f_a(x)) + dt_bias), float32 (HF ``KimiLinearForgetGate``,
        whose softplus is log(1 + exp(x)), x above 20: written as HF writes it, which rounds differently from
        F.softplus's log1p; on the test models that halves the logit error at 70 positions; clamped inside so that
        the unused branch's gradient stays finite)."""
        fg, H = self.forget_gate, self.cfg.n_heads
        pre = (fg.f_b_proj(fg.f_a_proj(x)).float() + fg.dt_bias.float()).unflatten(-1, (H, -1))
        return -fg.A_log.float().exp() * torch.where(pre > 20.0, pre, torch.log(1.0 + torch.exp(pre.clamp(max=20.0))))

    def inputs(self, x: Tensor, conv: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(q, k, v, beta, g) of the mixer input x [b, L, d_model] (masked) and its conv output (pre-activation),
        hooked; float32."""
        cfg = self.cfg
        act = F.silu(conv.float())
        q, k, v = (t.unflatten(-1, (cfg.n_heads, cfg.d_head)) for t in act.chunk(3, dim=-1))  # [b, L, H, d]
        q, k = self.hook_q(l2norm(q, cfg.l2norm_eps)), self.hook_k(l2norm(k, cfg.l2norm_eps))
        v = self.hook_v(v)
        beta = self.hook_beta(self.b_proj(x).float().sigmoid())
        g = self.hook_decay(self.decay(x))
        return q, k, v, beta, g

    def heads(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """q scaled by 1/√d and k (one kind of head: nothing to repeat)."""
        return q * self.cfg.d_head ** -0.5, k

    def g_proj(self, x: Tensor) -> Tensor:
        """The output gate before its sigmoid, g_b_proj(g_a_proj(x)) [b, L, H·d] (the forward's ``hook_z``)."""
        return self.g_b_proj(self.g_a_proj(x))

    def _gate(self, y: Tensor, z: Tensor) -> Tensor:
        """RMSNorm over each head's d (float32), times the weight (float32), times σ(z) (HF
        ``KimiLinearRMSNormGated``)."""
        dtype = y.dtype
        yf = y.float()
        yn = yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + self.cfg.gate_norm_eps)
        out = self.o_norm.weight.float() * yn * torch.sigmoid(z.unflatten(-1, (self.cfg.n_heads, -1)).float())
        return out.to(dtype).flatten(-2)

    def _rule(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h0: Tensor | None,
              recurrent: bool) -> tuple[Tensor, Tensor]:
        if recurrent:
            return recurrent_kda_rule(q, k, v, g, beta, h0)
        return chunk_kda_rule(q, k, v, g, beta, h0, self.cfg.chunk_size)
