"""One interface for token-to-token interaction maps on any model of the toolkit.

    maps = interaction_map(model, tokens, layer=3)                         # SSM: hidden attention
    maps = interaction_map(model, tokens, layer=3, aggregate=5)            # one channel/head
    rows = query_rows(model, tokens, layer=3, rows=[-1])                   # O(L) memory per row
    rho  = rollout([interaction_map(model, tokens, layer=l, aggregate="mean") for l in range(n)])

Maps are [b, L(query i), L(key j)], causal (zero for j > i). ``aggregate`` reduces channels (SSM)
or heads (transformer): "mean" (signed), "mean_abs", "max" (of |·|), "topk" (mean |·| over the k
channels with the most mass), an int (that channel/head), or "none" ([b, H, L, L], memory-checked).
``normalize``: "raw", "minmax" (|·| scaled to [0, 1] per map) or "row" (|·| / Σ_j |·| per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from interp.hooks import HookedModel, is_ssm
from interp.hooks.tokens import as_tokens

from . import hidden, methods

NORMALIZATIONS = ("raw", "minmax", "row")
DEFAULT_MAP_BUDGET_BYTES = 2 * 2**30


class MapTooLargeError(MemoryError):
    """A per-channel map was requested that exceeds the memory budget."""


# --------------------------------------------------------------------------------------------
# pure helpers on maps
# --------------------------------------------------------------------------------------------
def normalize(maps: Tensor, how: str = "raw", eps: float = 1e-12) -> Tensor:
    """Normalise maps [..., L, L]: "raw" (unchanged), "minmax" (|·| to [0, 1] per map), "row"."""
    if how == "raw":
        return maps
    a = maps.abs()
    if how == "minmax":
        lo = a.amin(dim=(-2, -1), keepdim=True)
        hi = a.amax(dim=(-2, -1), keepdim=True)
        return (a - lo) / (hi - lo).clamp_min(eps)
    if how == "row":
        return a / a.sum(-1, keepdim=True).clamp_min(eps)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {how!r}")


def reduce_channels(per_channel: Tensor, aggregate: str | int, k: int | None = None) -> Tensor:
    """[b, H, L, L] -> [b, L, L] by the aggregate named in the module docstring."""
    if isinstance(aggregate, int):
        return per_channel[:, aggregate]
    if aggregate == "none":
        return per_channel
    if aggregate == "topk":
        mass = per_channel.abs().sum((0, 2, 3))
        top = mass.topk(min(k or 8, mass.numel())).indices
        return per_channel[:, top].abs().mean(1)
    if aggregate not in hidden.REDUCERS:
        raise ValueError(f"aggregate must be an int or one of mean, mean_abs, max, topk, none; got {aggregate!r}")
    return hidden.REDUCERS[aggregate](per_channel.transpose(0, 1))


def rollout(maps: Sequence[Tensor], add_identity: bool = True, row_normalize: bool = True) -> Tensor:
    """Attention rollout ρ = Ã_{n-1} ⋯ Ã_0 with Ã = rownorm(I + A) (A = a layer's map [b, L, L])."""
    rho = None
    for A in maps:
        A = A.float()
        if add_identity:
            A = A + torch.eye(A.shape[-1], device=A.device)
        if row_normalize:
            A = A / A.sum(-1, keepdim=True).clamp_min(1e-12)
        rho = A if rho is None else A @ rho
    if rho is None:
        raise ValueError("rollout needs at least one map")
    return rho


# --------------------------------------------------------------------------------------------
# per-model sources
# --------------------------------------------------------------------------------------------
def ssm_parameters(model: Any, tokens: Tensor, layer: int) -> dict[str, Tensor]:
    """dt, B, C, u, y of one layer from a hooked run, plus its static A and D."""
    names = [f"blocks.{layer}.ssm.hook_{h}" for h in ("dt", "B", "C", "u", "y")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=layer + 1)
    mixer = model.blocks[layer].ssm
    p = {h: cache[f"blocks.{layer}.ssm.hook_{h}"] for h in ("dt", "B", "C", "u", "y")}
    return dict(p, A=mixer.A.detach(), D=mixer.D.detach().float())


def _check_budget(n_floats: int, max_bytes: int | None, what: str) -> None:
    if max_bytes is not None and n_floats * 4 > max_bytes:
        raise MapTooLargeError(
            f"{what} needs about {n_floats * 4 / 2**30:.2f} GiB, over the budget of {max_bytes / 2**30:.2f} GiB. "
            "Use a channel-reduced map (aggregate='mean_abs' / 'mean' / 'max', O(L²) memory), pick channels "
            "(aggregate=<int> or heads=[...]), or compute a few rows with query_rows(...) (O(L) per row); "
            "or raise max_bytes=..."
        )


def interaction_map(
    model: HookedModel,
    tokens: Any,
    layer: int | None = None,
    method: str = "auto",
    aggregate: str | int = "mean_abs",
    normalize_: str = "raw",
    heads: Sequence[int] | None = None,
    k: int | None = None,
    max_bytes: int | None = DEFAULT_MAP_BUDGET_BYTES,
    **method_kwargs: Any,
) -> Tensor:
    """Token-interaction map(s) of ``layer`` by ``method``: [b, L, L] (or [b, H, L, L] for aggregate="none").

    method (:mod:`interp.attention.methods`): "auto" (hidden attention for SSMs, softmax attention for
    transformers), "hidden", "attention", "unified" (unified implicit attention, channel-reduced; bias and skip
    terms in :mod:`interp.attention.unified`), "latim" (LaTIM scores; ``score="l1"|"l2"|"alti"``,
    ``f="silu"|"identity"``), "lrp" or "grad_x_input" (whole-model attributions; ``layer`` ignored). A method
    that does not apply to the model raises :class:`~interp.attention.methods.MethodNotApplicable` (a ValueError).
    Hidden attention runs on the backend :func:`interp.attention.backends.choose_backend` picks for the
    tensors' device (the Triton kernel for CUDA tensors, numba on the CPU, else PyTorch).
    """
    tokens = as_tokens(model, tokens)
    if method == "auto":
        method = methods.default_method(model)
    if methods.check_applies(method, model).whole_model:
        from interp.lrp import interaction_rows

        rows = torch.stack([interaction_rows(model, t[None], method=method, **method_kwargs) for t in tokens])
        return normalize(rows, normalize_)
    if layer is None:
        raise ValueError(f"method {method!r} needs a layer")
    n_layers = model.cfg.n_layers
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range for a {n_layers}-layer model")
    layer %= n_layers
    b, L = tokens.shape

    if method == "attention":
        name = f"blocks.{layer}.attn.hook_pattern"
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=name)
        per_head = cache[name]
        per_head = per_head if heads is None else per_head[:, list(heads)]
        return normalize(reduce_channels(per_head, aggregate, k), normalize_)

    if method in ("unified", "latim"):
        return normalize(_unified_or_latim(model, tokens, layer, method, aggregate, heads, max_bytes, **method_kwargs),
                         normalize_)
    p = ssm_parameters(model, tokens, layer)
    H = p["dt"].shape[-1]
    if isinstance(aggregate, int):
        heads, aggregate = [aggregate], "mean"
    if aggregate == "topk":
        mass = hidden.channel_mass(p["dt"], p["A"], p["B"], p["C"])
        heads, aggregate = mass.topk(min(k or 8, H)).indices.tolist(), "mean_abs"
    n_sel = H if heads is None else len(heads)
    if aggregate == "none" or p["A"].dim() == 1:  # Mamba-2 builds per-head maps directly
        _check_budget(b * n_sel * L * L, max_bytes, f"a per-{'channel' if p['A'].dim() == 2 else 'head'} map "
                      f"[{b}, {n_sel}, {L}, {L}]")
    if aggregate == "none":
        out = hidden.hidden_attention(p["dt"], p["A"], p["B"], p["C"], heads)
    else:
        out = hidden.hidden_attention_reduced(p["dt"], p["A"], p["B"], p["C"], aggregate, heads)
    return normalize(out, normalize_)


def _unified_or_latim(model: Any, tokens: Tensor, layer: int, method: str, aggregate: str | int,
                      heads: Sequence[int] | None, max_bytes: int | None, score: str = "l2", f: str = "silu") -> Tensor:
    from . import latim, unified

    hooks = unified.UNIFIED_HOOKS if method == "unified" else latim.LATIM_HOOKS
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.ssm.{h}" for h in hooks],
                                        stop_at_layer=layer + 1)
        budget = max_bytes if max_bytes is not None else 2**62
        if method == "latim":
            return latim.latim_scores(latim.latim_layer(model, cache, layer, f=f, max_bytes=budget), score)
        channels = [aggregate] if isinstance(aggregate, int) else heads
        agg = "mean" if isinstance(aggregate, int) else aggregate
        return unified.unified_layer(model, cache, layer, channels=channels, aggregate=agg, max_bytes=budget).map


def query_rows(
    model: HookedModel, tokens: Any, layer: int, rows: Sequence[int], method: str = "auto",
    aggregate: str = "mean_abs", normalize_: str = "raw",
) -> Tensor:
    """Rows ``rows`` of the interaction map: [b, len(rows), L], O(H·N·L) memory per row for SSMs (O(L) with the
    Triton kernel, which the backend dispatch picks for CUDA tensors)."""
    tokens = as_tokens(model, tokens)
    method = methods.default_method(model) if method == "auto" else method
    L = tokens.shape[1]
    rows = [int(r) % L for r in rows]
    if method == "hidden":
        p = ssm_parameters(model, tokens, layer % model.cfg.n_layers)
        if aggregate in hidden.REDUCERS:  # mean / mean_abs / max: the backend dispatch (Triton rows on CUDA)
            out = hidden.hidden_attention_rows_reduced(p["dt"], p["A"], p["B"], p["C"], rows, aggregate)
        else:  # a channel, "topk" or "none": from the per-channel rows [b, H, R, L]
            out = reduce_channels(hidden.hidden_attention_rows(p["dt"], p["A"], p["B"], p["C"], rows), aggregate)
    elif method in ("lrp", "grad_x_input"):
        from interp.lrp import interaction_rows

        out = torch.stack([interaction_rows(model, t[None], positions=rows, method=method) for t in tokens])
    else:
        out = interaction_map(model, tokens, layer, method, aggregate)[:, rows]
    return normalize(out, normalize_)


def mamba_attr(model: HookedModel, tokens: Any, target: int | None = None, position: int = -1) -> Tensor:
    """Mamba-Attr (Ali et al.) / attention×gradient rollout: [b, L, L].

    Per layer, E_h[∇α] ⊙ E_h[α] clipped at 0, rolled out with identity and row normalisation.
    For SSMs ∇α[h, i, j] = Σ_p g_i[h, p] u_j[h, p] with g = ∂logit/∂y (the SSM output, hook_y);
    for transformers the gradient of the softmax pattern.
    """
    tokens = as_tokens(model, tokens)
    grabbed: dict[str, Tensor] = {}

    def keep(x: Tensor, hook: Any) -> Tensor:
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        x.retain_grad()
        grabbed[hook.name] = x
        return x

    ssm = is_ssm(model)
    suffixes = ("ssm.hook_y", "ssm.hook_u") if ssm else ("attn.hook_pattern",)
    hooks = [(f"blocks.{i}.{s}", keep) for i in range(model.cfg.n_layers) for s in suffixes]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    pos = position % tokens.shape[1]
    tgt = logits[:, pos].argmax(-1) if target is None else torch.full((tokens.shape[0],), target)
    logits[torch.arange(tokens.shape[0]), pos, tgt].sum().backward()

    layer_maps = []
    for i in range(model.cfg.n_layers):
        if ssm:
            with torch.no_grad():
                alpha = interaction_map(model, tokens, i, "hidden", aggregate="mean")
            g, u = grabbed[f"blocks.{i}.ssm.hook_y"].grad, grabbed[f"blocks.{i}.ssm.hook_u"].detach()
            grad = torch.einsum("bihp,bjhp->bij", g.float(), u.float()) / u.shape[2]
            grad = torch.tril(grad)
        else:
            pat = grabbed[f"blocks.{i}.attn.hook_pattern"]
            alpha, grad = pat.detach().mean(1), pat.grad.mean(1)
        layer_maps.append((grad * alpha).clamp_min(0))
    return rollout(layer_maps)
