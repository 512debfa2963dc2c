"""Unified implicit attention of Mamba layers (Zimerman, Ali, Wolf): x̃ -> gated output, exactly.

The map goes from the in_proj x-branch x̃ (``ssm.hook_x``, before the causal conv) to the pre-out_proj
output (``ssm.hook_gated``). Everything data-dependent except x̃ itself is frozen at its value in the
true forward (the selective Δ, B, C, the SiLU slope σ(c) of the post-conv activation and the gate), so
for every channel c (b batch, L positions, C channels = d_inner)::

    gated_i[c] = g_i[c] · ( Σ_l α[h(c), i, l] u_l[c] + D[h(c)] u_i[c] )          u = act(conv)
    u_l[c]     = σ(conv_l[c]) · ( Σ_j M_conv[c, l, j] x̃_j[c] + b_conv[c] )       act = SiLU: x·σ(x)

    α̂[c]      = diag(g[c]) · α[h(c)] · diag(σ(conv[c])) · M_conv[c]             [L, L], causal
    bias_i[c]  = g_i[c] · Σ_l α[h(c), i, l] σ(conv_l[c]) b_conv[c]
    skip_i[c]  = g_i[c] · D[h(c)] u_i[c]

    gated_i[c] = Σ_j α̂[c, i, j] x̃_j[c] + bias_i[c] + skip_i[c]                  (exact)

* α is the hidden attention of :mod:`interp.attention.hidden` (per channel for Mamba-1, h(c) = c;
  per head for Mamba-2, h(c) = c // head_dim);
* M_conv[c] is the causal Toeplitz matrix of channel c's depthwise conv: M[l, j] = w[c, K-1-(l-j)] for
  0 <= l-j < K (tap K-1 multiplies the current input), see :func:`conv_toeplitz`;
* σ(conv) is the sigmoid of the conv pre-activation (``ssm.hook_conv``, x part); a model with
  ``activation="identity"`` uses 1 instead;
* g is the gate factor: Mamba-1 SiLU(z); Mamba-2 w ⊙ SiLU(z) / rms_group, the gated RMSNorm with its
  per-token, per-group RMS fixed from the true forward (:func:`gate_factor`).

``skip_in_map=True`` folds the D skip into the map (α -> α + D·I, its conv-bias part going to ``bias``).

Ablation variants (``variant=``, the original code's ``ablate_attn_mat`` dictionary in
github Itamarzimm/UnifiedImplicitAttnRepr, MambaNLP/mamba_ssm/ops/selective_scan_interface.py): each drops one
factor of α̂ and is a map for comparison, not a decomposition (``bias`` and ``skip`` stay the full variant's)::

    "full"          diag(g) · α · diag(σ(conv)) · M_conv      ("finalMat")
    "without_conv"  diag(g) · α · diag(σ(conv))               ("withoutConv")
    "without_gate"          α · diag(σ(conv)) · M_conv        ("withoutGate"; Mamba-2: the whole gated-norm factor)
    "without_act"   diag(g) · α · M_conv                      ("withoutAct")

Memory: a per-channel map is b·C'·L² floats; it is refused over ``max_bytes`` with a message naming the
cheaper calls (``channels=`` for a few channels, ``aggregate=`` for a channel-reduced [b, L, L] map).
Reduced maps are accumulated over channel chunks: O(chunk·L²) memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from interp.hooks.positions import check_indices, check_layer
from interp.attention.hidden import hidden_attention

__all__ = [
    "AGGREGATES", "VARIANTS", "UNIFIED_HOOKS", "MixerParams", "UnifiedAttention", "conv_toeplitz", "gate_factor",
    "mixer_params", "unified_attention", "unified_layer",
]

AGGREGATES = ("none", "mean", "mean_abs", "max")
#: the original code's ablations of the unified map (module docstring)
VARIANTS = ("full", "without_conv", "without_gate", "without_act")
UNIFIED_HOOKS = ("hook_x", "hook_z", "hook_conv", "hook_u", "hook_dt", "hook_B", "hook_C", "hook_y")
DEFAULT_MAX_BYTES = 2**30  # 1 GiB for a per-channel map
CHUNK_BYTES = 2**27  # working set of one channel chunk (128 MiB)


# --------------------------------------------------------------------------------------------
# mixer parameters
# --------------------------------------------------------------------------------------------
@dataclass
class MixerParams:
    """Static parameters of one SSM mixer, detached and in float32 (shapes below).

    family "mamba1" | "mamba2"; activation "silu" | "identity" (after the conv);
    A [H, N] (Mamba-1) | [H] (Mamba-2); D [H]; conv_weight [d_inner, K] and conv_bias [d_inner] | None:
    the x part of the depthwise conv; W_out [d_model, d_inner]; out_bias [d_model] | None;
    norm_weight [d_inner] (Mamba-2 gated RMSNorm) | None; n_groups: groups of that norm (1 for Mamba-1).
    H heads, P head width (Mamba-1: H = d_inner, P = 1).
    """

    family: str
    activation: str
    A: Tensor
    D: Tensor
    conv_weight: Tensor
    conv_bias: Tensor | None
    W_out: Tensor
    out_bias: Tensor | None
    norm_weight: Tensor | None
    n_groups: int
    norm_eps: float
    H: int
    P: int

    @property
    def d_inner(self) -> int:
        return self.H * self.P

    @property
    def d_conv(self) -> int:
        return self.conv_weight.shape[1]

    def act(self, x: Tensor) -> Tensor:
        return F.silu(x) if self.activation == "silu" else x

    def head_of(self, channels: Tensor) -> Tensor:
        """Head index h(c) of each channel c = h·P + p."""
        return channels // self.P

    @classmethod
    def from_mixer(cls, mixer: Any) -> "MixerParams":
        """From an :class:`interp.hooks.mamba.SSMMixer` (``model.blocks[i].ssm``)."""
        cfg = mixer.cfg
        d_in = cfg.d_inner

        def f(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().float()

        norm = getattr(mixer, "norm", None)
        return cls(
            family=cfg.family, activation=cfg.activation, A=f(mixer.A), D=f(mixer.D),
            conv_weight=f(mixer.conv_weight[:d_in]),
            conv_bias=None if mixer.conv_bias is None else f(mixer.conv_bias[:d_in]),
            W_out=f(mixer.W_out), out_bias=f(mixer.out_proj.bias),
            norm_weight=None if norm is None else f(norm.weight),
            n_groups=norm.n_groups if norm is not None else 1,
            norm_eps=float(norm.eps) if norm is not None else float(cfg.norm_eps),
            H=cfg.H, P=cfg.P,
        )


def mixer_params(source: Any, layer: int | None = None) -> MixerParams:
    """MixerParams from a :class:`MixerParams`, an SSM mixer module, or a HookedSSM and a ``layer``."""
    if isinstance(source, MixerParams):
        return source
    if hasattr(source, "blocks"):
        if layer is None:
            raise ValueError("pass layer= to take the mixer parameters of one layer of a model")
        mixer = getattr(source.blocks[check_layer(source, layer)], "ssm", None)
        if mixer is None:
            raise TypeError(f"{type(source).__name__} has no SSM mixer (blocks[{layer}].ssm): "
                            "unified attention and LaTIM are defined for Mamba models")
        return MixerParams.from_mixer(mixer)
    if hasattr(source, "conv1d") and hasattr(source, "cfg"):
        return MixerParams.from_mixer(source)
    raise TypeError(f"expected MixerParams, an SSM mixer or a HookedSSM, got {type(source).__name__}")


# --------------------------------------------------------------------------------------------
# cached activations of one layer
# --------------------------------------------------------------------------------------------
@dataclass
class LayerActs:
    """One layer's cached activations, float32: x, z, conv_x (x part), u [b, L, d_inner];
    dt [b, L, H]; B, C [b, L, G, N]; y [b, L, H, P]; out [b, L, d_model] | None."""

    x: Tensor
    z: Tensor
    conv_x: Tensor
    u: Tensor
    dt: Tensor
    B: Tensor
    C: Tensor
    y: Tensor
    out: Tensor | None


def layer_acts(cache: Mapping[str, Tensor] | Any, layer: int, params: MixerParams, need_out: bool = False) -> LayerActs:
    """Read the hooks of ``blocks.{layer}.ssm`` from a cache (ActivationCache or dict)."""
    pre = f"blocks.{layer}.ssm."
    names = list(UNIFIED_HOOKS) + (["hook_out"] if need_out else [])
    keys = set(cache.keys())
    missing = [pre + n for n in names if pre + n not in keys]
    if missing:
        raise KeyError(f"the cache lacks {missing}: run model.run_with_cache(tokens) without a names_filter, "
                       f"or with one that keeps {', '.join(names)} of layer {layer}")
    get = lambda n: cache[pre + n].detach().float()  # noqa: E731
    d_in = params.d_inner
    return LayerActs(
        x=get("hook_x"), z=get("hook_z"), conv_x=get("hook_conv")[..., :d_in], u=get("hook_u").flatten(-2),
        dt=get("hook_dt"), B=get("hook_B"), C=get("hook_C"), y=get("hook_y"),
        out=get("hook_out") if need_out else None,
    )


def gate_factor(params: MixerParams, y: Tensor, z: Tensor) -> Tensor:
    """g [b, L, d_inner] with hook_gated = g ⊙ y, from y [b, L, H, P] and z [b, L, d_inner].

    Mamba-1: SiLU(z). Mamba-2: w ⊙ SiLU(z) / rms_group(y ⊙ SiLU(z)), the grouped RMS taken from the
    true forward and held fixed (so the map is linear in y).
    """
    s = F.silu(z.float())
    if params.family == "mamba1":
        return s
    G = params.n_groups
    yg = (y.flatten(-2).float() * s).unflatten(-1, (G, -1))
    r = torch.rsqrt(yg.pow(2).mean(-1, keepdim=True) + params.norm_eps)  # [b, L, G, 1]
    return params.norm_weight * (s.unflatten(-1, (G, -1)) * r).flatten(-2)


def conv_slope(params: MixerParams, conv_x: Tensor) -> Tensor:
    """σ(conv) [b, L, d_inner]: act(c) = σ(c)·c for SiLU; ones for the identity activation."""
    return torch.sigmoid(conv_x) if params.activation == "silu" else torch.ones_like(conv_x)


def conv_toeplitz(weight: Tensor, L: int) -> Tensor:
    """Causal Toeplitz matrices [C, L, L] of a depthwise conv with taps ``weight`` [C, K]:
    M[c, l, j] = weight[c, K-1-(l-j)] for 0 <= l-j < K, else 0 (reference; O(C·L²))."""
    Cc, K = weight.shape
    M = weight.new_zeros(Cc, L, L)
    idx = torch.arange(L, device=weight.device)
    for m in range(min(K, L)):
        M[:, idx[m:], idx[: L - m]] = weight[:, K - 1 - m, None]
    return M


def alpha_channels(params: MixerParams, acts: LayerActs, channels: Tensor) -> Tensor:
    """Hidden attention expanded to channels: [b, len(channels), L, L], channel c reading α[h(c)]."""
    if params.P == 1:
        return hidden_attention(acts.dt, params.A, acts.B, acts.C, heads=channels)
    heads, inv = torch.unique(params.head_of(channels), return_inverse=True)
    return hidden_attention(acts.dt, params.A, acts.B, acts.C, heads=heads)[:, inv]


def _conv_right(a: Tensor, w: Tensor) -> Tensor:
    """a [b, c, R, L] @ M_conv[c] [L, L] without building M: out[..., j] = Σ_m w[c, K-1-m] a[..., j+m]."""
    K, L = w.shape[1], a.shape[-1]
    out = a * w[:, K - 1, None, None]
    for m in range(1, min(K, L)):
        out[..., : L - m] += a[..., m:] * w[:, K - 1 - m, None, None]
    return out


def _channel_list(channels: int | Sequence[int] | Tensor | None, d_inner: int, device: torch.device) -> Tensor:
    if channels is None:
        return torch.arange(d_inner, device=device)
    return torch.tensor(check_indices(channels, d_inner, "channels", of=f"d_inner = {d_inner} channels"),
                        dtype=torch.long, device=device)


def _chunk_size(b: int, L: int, n: int, chunk: int | None) -> int:
    if chunk is not None:
        return max(1, min(int(chunk), n))
    return max(1, min(n, CHUNK_BYTES // (4 * 4 * max(1, b * L * L))))  # ~4 live [b, chunk, L, L] tensors


# --------------------------------------------------------------------------------------------
# result and main entry point
# --------------------------------------------------------------------------------------------
@dataclass
class UnifiedAttention:
    """Unified implicit attention of one layer.

    map: [b, C', L(i), L(j)] per selected channel (aggregate "none") or [b, L, L] reduced over them
        ("mean" signed mean, "mean_abs" mean of |·|, "max" max of |·|); causal (zero for j > i).
    bias: [b, L, C'] = g ⊙ Σ_l α σ(conv_l) b_conv (conv-bias term; with skip_in_map also g ⊙ D σ b_conv).
    skip: [b, L, C'] = g ⊙ D u (zeros with skip_in_map).
    x: [b, L, C'] the input x̃ (ssm.hook_x) of the selected channels.
    channels: [C'] channel indices into d_inner, in the order of ``map``'s channel axis.
    variant: "full" (the exact decomposition) or an ablation of :data:`VARIANTS` (``map`` only; ``bias`` and
        ``skip`` are the full variant's and do not complete an ablated map to the output).
    """

    map: Tensor
    bias: Tensor
    skip: Tensor
    x: Tensor
    channels: Tensor
    aggregate: str = "none"
    layer: int | None = None
    skip_in_map: bool = False
    variant: str = "full"

    def reconstruct(self) -> Tensor:
        """Σ_j map[c, i, j] x̃_j[c] + bias + skip: [b, L, C'], equal to hook_gated[..., channels]."""
        if self.aggregate != "none":
            raise ValueError("reconstruct() needs the per-channel map: compute it with aggregate='none'")
        if self.variant != "full":
            raise ValueError(f"the {self.variant!r} map drops a factor of the layer and reconstructs nothing: "
                             "compute variant='full' to reconstruct hook_gated")
        return torch.einsum("bcij,bjc->bic", self.map, self.x) + self.bias + self.skip


def unified_attention(
    cache: Mapping[str, Tensor] | Any,
    params: MixerParams | Any,
    layer: int,
    *,
    channels: int | Sequence[int] | Tensor | None = None,
    aggregate: str = "none",
    skip_in_map: bool = False,
    chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    variant: str = "full",
) -> UnifiedAttention:
    """Unified implicit attention of ``layer`` from a cache of ``model.run_with_cache(tokens)``.

    Args:
        cache: ActivationCache or dict holding ``blocks.{layer}.ssm.`` + :data:`UNIFIED_HOOKS`
            (an unpadded batch: no attention mask).
        params: :class:`MixerParams`, the layer's mixer, or the HookedSSM itself.
        layer: block index.
        channels: channel indices into d_inner (default all). For Mamba-2, channel c belongs to head
            c // head_dim.
        aggregate: "none" (per-channel map [b, C', L, L]) or "mean" | "mean_abs" | "max" (reduced over
            the selected channels, [b, L, L], computed chunk by chunk in O(chunk·L²) memory).
        skip_in_map: fold the D skip into the map instead of returning it in ``skip``.
        chunk: channels per chunk (default: sized to a 128 MiB working set).
        max_bytes: refuse a per-channel map larger than this (ValueError naming the cheaper calls).
        variant: "full", or an ablation "without_conv" | "without_gate" | "without_act" (:data:`VARIANTS`,
            the module docstring).

    Returns:
        :class:`UnifiedAttention`; ``Σ_j map[c,i,j] x̃_j[c] + bias + skip == hook_gated`` (per channel).
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    p = mixer_params(params, layer)
    acts = layer_acts(cache, layer, p)
    b, L, d_in = acts.x.shape
    dev = acts.x.device
    ch = _channel_list(channels, d_in, dev)
    n = ch.numel()
    if aggregate == "none":
        need = 4 * b * n * L * L
        if need > max_bytes:
            raise ValueError(
                f"the per-channel unified map of layer {layer} needs {need / 2**20:.0f} MiB "
                f"(batch {b} x {n} channels x L={L}², float32) > max_bytes={max_bytes / 2**20:.0f} MiB: "
                f"select a few channels with channels=[...], or reduce over channels with "
                f"aggregate='mean_abs' | 'mean' | 'max' ([b, L, L], O(L²) memory), or raise max_bytes="
            )

    g_all = gate_factor(p, acts.y, acts.z)  # [b, L, d_inner]
    sig_all = conv_slope(p, acts.conv_x)
    D_ch = p.D.to(dev)[p.head_of(ch)]  # [n]
    w = p.conv_weight.to(dev)
    bconv = p.conv_bias.to(dev) if p.conv_bias is not None else None

    out = acts.x.new_zeros(b, n, L, L) if aggregate == "none" else acts.x.new_zeros(b, L, L)
    bias = acts.x.new_zeros(b, L, n)
    skip = acts.x.new_zeros(b, L, n)
    cs = _chunk_size(b, L, n, chunk)
    for k0 in range(0, n, cs):
        k1 = min(k0 + cs, n)
        c = ch[k0:k1]
        alpha = alpha_channels(p, acts, c)  # [b, cc, L, L]
        if skip_in_map:
            alpha.diagonal(dim1=-2, dim2=-1).add_(D_ch[None, k0:k1, None])
        g = g_all[:, :, c]  # [b, L, cc]
        sig = sig_all[:, :, c].transpose(1, 2)  # [b, cc, L]
        if bconv is not None:
            bias[:, :, k0:k1] = g * torch.einsum("bcil,bcl->bic", alpha, sig * bconv[c][None, :, None])
        if not skip_in_map:
            skip[:, :, k0:k1] = g * D_ch[k0:k1] * acts.u[:, :, c]
        m = alpha if variant == "without_act" else alpha * sig[:, :, None, :]
        if variant != "without_conv":
            m = _conv_right(m, w[c])
        if variant != "without_gate":
            m *= g.transpose(1, 2)[..., None]
        if aggregate == "none":
            out[:, k0:k1] = m
        elif aggregate == "mean":
            out += m.sum(1)
        elif aggregate == "mean_abs":
            out += m.abs_().sum(1)
        else:
            torch.maximum(out, m.abs_().amax(1), out=out)
    if aggregate in ("mean", "mean_abs"):
        out /= n
    return UnifiedAttention(map=out, bias=bias, skip=skip, x=acts.x[:, :, ch], channels=ch, aggregate=aggregate,
                            layer=layer, skip_in_map=skip_in_map, variant=variant)


def unified_layer(model: Any, cache: Mapping[str, Tensor] | Any, *, layer: int, **kwargs: Any) -> UnifiedAttention:
    """``unified_attention(cache, model, layer, **kwargs)`` with the model first (``cache`` of
    ``model.run_with_cache(tokens)``; ``channels``, ``aggregate``, ``skip_in_map``, ``chunk``, ``max_bytes``,
    ``variant`` as there)."""
    return unified_attention(cache, model, check_layer(model, layer), **kwargs)
