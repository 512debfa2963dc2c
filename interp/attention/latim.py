"""LaTIM (Pitorro, Treviso): token-to-token vector contributions of a Mamba mixer, in model space.

Notation as in :mod:`interp.attention.unified` (b batch, L positions, c a channel of d_inner, h(c) its
head, K the conv width, w[c, K-1-m] the tap applied to the input m positions back)::

    u_{l←j}[c]   = f(w[c, K-1-(l-j)] · x̃_j[c])                 for 0 <= l-j < K, else 0
    υ_{i←j}[c]   = Σ_l α[h(c), i, l] u_{l←j}[c] + D[h(c)] u_{i←j}[c]
    T_i(x_j)     = W_out (g_i ⊙ υ_{i←j})                        [d_model]
    bias_i       = W_out (g_i ⊙ (Σ_l α[h(c), i, l] + D) f(b_conv)) + b_out

α is the hidden attention (:mod:`interp.attention.hidden`), g the gate factor (Mamba-1 SiLU(z), Mamba-2
the gated RMSNorm with its per-token, per-group RMS fixed from the true forward), x̃ = ``ssm.hook_x``.
The conv bias enters as one more input through f and goes, with the out_proj bias, to ``bias``.

* f = "identity" on a model built with ``activation="identity"`` (no post-conv SiLU) is exact:
  Σ_j T_i(x_j) + bias_i == ``ssm.hook_out`` (the mixer output).
* f = "silu" (default) is the paper's approximation for real Mamba models (SiLU applied to each
  source's conv term separately); :attr:`LatimContributions.reconstruction_error` and
  :func:`reconstruction_errors` report how far Σ_j T + bias is from the mixer output.

Scores (:func:`latim_scores`, [b, L(i), L(j)], zero for j > i): "l1" ‖T_i(x_j)‖₁, "l2" ‖T_i(x_j)‖₂,
"alti" max(0, ‖y_i‖₁ - ‖y_i - T_i(x_j)‖₁) row-normalised (y = the mixer output).

Memory: T is b·R·L·d_model floats for R query rows (default all L rows), refused over ``max_bytes`` with
a message naming ``rows=``; the per-channel work goes in channel chunks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from interp.hooks.positions import check_indices, check_layer
from interp.attention.hidden import hidden_attention_rows, reconstruct_y
from interp.attention.unified import (
    LayerActs, MixerParams, alpha_channels, gate_factor, layer_acts, mixer_params,
)

__all__ = [
    "LATIM_HOOKS", "LatimContributions", "SCORES", "latim_contributions", "latim_layer", "latim_reconstruction",
    "latim_scores", "reconstruction_errors",
]

LATIM_HOOKS = ("hook_x", "hook_z", "hook_conv", "hook_u", "hook_dt", "hook_B", "hook_C", "hook_y", "hook_out")
SCORES = ("l1", "l2", "alti")
FUNCS = {"silu": F.silu, "identity": lambda x: x}
DEFAULT_MAX_BYTES = 2**30
CHUNK_BYTES = 2**27


@dataclass
class LatimContributions:
    """LaTIM contributions of one layer.

    T: [b, R, L(j), d_model] T_i(x_j) for the query rows i = rows[r] (zero for j > i).
    bias: [b, R, d_model] conv-bias and out_proj-bias term.
    y: [b, R, d_model] the mixer output (ssm.hook_out) at the rows.
    reconstruction_error: [b] ‖Σ_j T + bias − y‖ / ‖y‖ over the rows (≈ 0 when f is exact).
    rows: [R] query positions (all positions by default).
    """

    T: Tensor
    bias: Tensor
    y: Tensor
    reconstruction_error: Tensor
    rows: Tensor
    f: str = "silu"
    layer: int | None = None

    def reconstruct(self) -> Tensor:
        """Σ_j T_i(x_j) + bias_i: [b, R, d_model]."""
        return self.T.sum(2) + self.bias


def _check_f(f: str) -> None:
    if f not in FUNCS:
        raise ValueError(f"f must be one of {tuple(FUNCS)}, got {f!r}")


def _rows(rows: int | Sequence[int] | Tensor | None, L: int, device: torch.device) -> Tensor:
    if rows is None:
        return torch.arange(L, device=device)
    return torch.tensor(check_indices(rows, L, "rows", of=f"a sequence of {L} tokens"), dtype=torch.long,
                        device=device)


def _sources(p: MixerParams, x: Tensor, f: str) -> Tensor:
    """U[b, m, j, c] = f(w[c, K-1-m] x̃_j[c]) = u_{j+m←j}[c], m = 0..K-1: [b, K, L, d_inner]."""
    w = p.conv_weight.to(x.device)  # [d_inner, K]
    K = w.shape[1]
    taps = w.flip(1).T  # [K, d_inner], row m = w[:, K-1-m]
    return FUNCS[f](taps[None, :, None, :] * x[:, None])


def _f_bias(p: MixerParams, f: str, device: torch.device) -> Tensor | None:
    return None if p.conv_bias is None else FUNCS[f](p.conv_bias.to(device))


def latim_contributions(
    cache: Mapping[str, Tensor] | Any,
    params: MixerParams | Any,
    layer: int,
    *,
    f: str = "silu",
    rows: int | Sequence[int] | Tensor | None = None,
    chunk: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> LatimContributions:
    """LaTIM vector contributions T_i(x_j) of ``layer`` from a cache of ``model.run_with_cache(tokens)``.

    Args:
        cache: ActivationCache or dict with ``blocks.{layer}.ssm.`` + :data:`LATIM_HOOKS` (no padding).
        params: :class:`~interp.attention.unified.MixerParams`, the layer's mixer, or the HookedSSM.
        f: "silu" (the paper's approximation) or "identity" (exact without the post-conv SiLU).
        rows: query positions i (default all); with rows, α is built row by row (O(H·N·L) per row).
        chunk: channels per chunk (default: sized to a 128 MiB working set).
        max_bytes: refuse a T larger than this (ValueError naming rows=).

    Returns:
        :class:`LatimContributions` with T [b, R, L, d_model], bias, y and the reconstruction error.
    """
    _check_f(f)
    p = mixer_params(params, layer)
    acts = layer_acts(cache, layer, p, need_out=True)
    b, L, d_in = acts.x.shape
    dev = acts.x.device
    d_model = p.W_out.shape[0]
    r = _rows(rows, L, dev)
    R = r.numel()
    need = 4 * b * R * L * d_model
    if need > max_bytes:
        raise ValueError(
            f"LaTIM contributions of layer {layer} need {need / 2**20:.0f} MiB (batch {b} x {R} rows x L={L} x "
            f"d_model={d_model}, float32) > max_bytes={max_bytes / 2**20:.0f} MiB: ask for a few query rows "
            f"with rows=[...], or raise max_bytes="
        )

    U = _sources(p, acts.x, f)  # [b, K, L, d_inner]
    K = U.shape[1]
    g_rows = gate_factor(p, acts.y, acts.z)[:, r]  # [b, R, d_inner]
    fb = _f_bias(p, f, dev)
    D_all = p.D.to(dev)[p.head_of(torch.arange(d_in, device=dev))]  # [d_inner]
    W = p.W_out.to(dev)
    alpha_rows_all = None
    if rows is not None:  # query rows of every head: [b, H, R, L]
        alpha_rows_all = hidden_attention_rows(acts.dt, p.A, acts.B, acts.C, r.tolist())

    T = acts.x.new_zeros(b, R, L, d_model)
    bias_in = acts.x.new_zeros(b, R, d_in)  # (Σ_l α + D) f(b_conv), before the gate
    per = max(1, b * R * L)
    cs = chunk or max(1, min(d_in, CHUNK_BYTES // (4 * 3 * per + 4 * b * R * L)))
    # pairs (row r, source j = rows[r] - m) of the D skip, per conv offset m
    skip_pairs = [(m, (r >= m).nonzero()[:, 0]) for m in range(min(K, L))]
    for k0 in range(0, d_in, cs):
        k1 = min(k0 + cs, d_in)
        c = torch.arange(k0, k1, device=dev)
        if alpha_rows_all is None:
            a = alpha_channels(p, acts, c)  # [b, cc, L, L]
        else:
            a = alpha_rows_all[:, p.head_of(c)]  # [b, cc, R, L]
        a = a.permute(0, 2, 3, 1)  # [b, R, L(l), cc]
        Uc = U[..., k0:k1]  # [b, K, L, cc]
        v = a * Uc[:, 0, None]  # m = 0: l = j
        for m in range(1, min(K, L)):
            v[:, :, : L - m] += a[:, :, m:] * Uc[:, m, None, : L - m]
        for m, rr in skip_pairs:
            jj = r[rr] - m
            v[:, rr, jj] += D_all[k0:k1] * Uc[:, m, jj]
        v *= g_rows[:, :, None, k0:k1]
        T += torch.einsum("brjc,dc->brjd", v, W[:, k0:k1])
        if fb is not None:
            bias_in[..., k0:k1] = (a.sum(2) + D_all[k0:k1]) * fb[k0:k1]
    bias = torch.einsum("brc,dc->brd", g_rows * bias_in, W)
    if p.out_bias is not None:
        bias = bias + p.out_bias.to(dev)
    y = acts.out[:, r]
    err = (T.sum(2) + bias - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1).clamp_min(1e-30)
    return LatimContributions(T=T, bias=bias, y=y, reconstruction_error=err, rows=r, f=f, layer=layer)


def latim_layer(model: Any, cache: Mapping[str, Tensor] | Any, *, layer: int, f: str = "silu",
                **kwargs: Any) -> LatimContributions:
    """``latim_contributions(cache, model, layer, f=f, **kwargs)`` with the model first (``cache`` of
    ``model.run_with_cache(tokens)``; ``rows``, ``chunk``, ``max_bytes`` as there)."""
    return latim_contributions(cache, model, check_layer(model, layer), f=f, **kwargs)


def latim_scores(contrib: LatimContributions, score: str = "l2") -> Tensor:
    """Token-to-token scores [b, R, L] from LaTIM contributions; zero for j > i.

    "l1": ‖T_i(x_j)‖₁; "l2": ‖T_i(x_j)‖₂; "alti": max(0, ‖y_i‖₁ − ‖y_i − T_i(x_j)‖₁), each row divided
    by its sum (rows that are all zero stay zero), y_i the mixer output.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    T = contrib.T
    L = T.shape[2]
    causal = torch.arange(L, device=T.device)[None, :] <= contrib.rows[:, None]  # [R, L]
    if score == "l1":
        s = T.abs().sum(-1)
    elif score == "l2":
        s = T.norm(dim=-1)
    else:
        y = contrib.y  # [b, R, d]
        s = torch.empty(T.shape[:3], dtype=T.dtype, device=T.device)
        for i0 in range(0, T.shape[1], 64):  # bounded temporaries: a block of rows at a time
            yb = y[:, i0:i0 + 64, None]
            s[:, i0:i0 + 64] = (yb.abs().sum(-1) - (yb - T[:, i0:i0 + 64]).abs().sum(-1)).clamp_min(0)
    s = s * causal
    if score == "alti":
        tot = s.sum(-1, keepdim=True)
        s = torch.where(tot > 0, s / tot.clamp_min(1e-30), torch.zeros_like(s))
    return s


def latim_reconstruction(
    cache: Mapping[str, Tensor] | Any, params: MixerParams | Any, layer: int, f: str = "silu",
    chunk: int | None = None,
) -> Tensor:
    """Σ_j T_i(x_j) + bias_i for every position, [b, L, d_model], without building T.

    Σ_j u_{l←j} = Σ_m f(w_{m} x̃_{l-m}) =: ũ_l, so Σ_j T_i(x_j) + bias_i = W_out(g_i ⊙ ŷ_i) + b_out with
    ŷ = Σ_l α ũ'_l + D ũ'_i, ũ' = ũ + f(b_conv): the SSM output for the input ũ'. O(chunk·L²) memory.
    """
    _check_f(f)
    p = mixer_params(params, layer)
    acts = layer_acts(cache, layer, p, need_out=False)
    return _reconstruction(p, acts, f, chunk)


def _reconstruction(p: MixerParams, acts: LayerActs, f: str, chunk: int | None) -> Tensor:
    b, L, d_in = acts.x.shape
    dev = acts.x.device
    U = _sources(p, acts.x, f)  # [b, K, L, d_inner]
    ut = U[:, 0].clone()
    for m in range(1, min(U.shape[1], L)):
        ut[:, m:] += U[:, m, : L - m]
    fb = _f_bias(p, f, dev)
    if fb is not None:
        ut = ut + fb
    D_all = p.D.to(dev)[p.head_of(torch.arange(d_in, device=dev))]
    yhat = torch.empty_like(ut)
    cs = chunk or max(1, min(d_in, CHUNK_BYTES // (4 * 2 * max(1, b * L * L))))
    for k0 in range(0, d_in, cs):
        k1 = min(k0 + cs, d_in)
        c = torch.arange(k0, k1, device=dev)
        # channels as heads of width 1: reconstruct_y(α [b, cc, L, L], u [b, L, cc, 1], D [cc])
        yhat[..., k0:k1] = reconstruct_y(alpha_channels(p, acts, c), ut[..., k0:k1, None], D_all[k0:k1])[..., 0]
    out = torch.einsum("blc,dc->bld", gate_factor(p, acts.y, acts.z) * yhat, p.W_out.to(dev))
    return out if p.out_bias is None else out + p.out_bias.to(dev)


def reconstruction_errors(model: Any, cache: Mapping[str, Tensor] | Any, *, f: str = "silu") -> list[float]:
    """Per-layer ‖Σ_j T + bias − hook_out‖ / ‖hook_out‖ over the whole batch (LaTIM with ``f``).

    Uses :func:`latim_reconstruction` (no T is built). ≈ 1e-7 for f = "identity" on a model without the
    post-conv SiLU; the size of the SiLU approximation otherwise.
    """
    _check_f(f)
    errs = []
    for layer in range(len(model.blocks)):
        p = mixer_params(model, layer)
        acts = layer_acts(cache, layer, p, need_out=True)
        rec = _reconstruction(p, acts, f, None)
        errs.append(float((rec - acts.out).norm() / acts.out.norm().clamp_min(1e-30)))
    return errs
