"""One interface for token-to-token interaction maps on any model of the toolkit.

    maps = interaction_map(model, tokens, layer=3)                         # SSM: hidden attention
    maps = interaction_map(model, tokens, layer=3, aggregate=5)            # one channel/head
    rows = query_rows(model, tokens, layer=3, positions=[-1])              # O(L) memory per row
    rho  = rollout([interaction_map(model, tokens, layer=l, aggregate="mean") for l in range(n)])
    p    = ssm_parameters(model, tokens, layer=3)                          # SSMParameters: dt, A, B, C, D, u, y

Every function takes ``(model, tokens, *, ...)``: tokens are a text, ids [L] or a batch [b, L]
(:func:`interp.hooks.tokens.as_tokens`). Maps are [b, L(query i), L(key j)], causal (zero for j > i).
``aggregate`` reduces channels (SSM) or heads (transformer): "mean" (signed), "mean_abs", "max" (of |·|),
"topk" (mean |·| over the k channels with the most mass), an int (that channel/head), or "none"
([b, H, L, L], memory-checked). ``normalize_``: "raw", "minmax" (|·| scaled to [0, 1] per map) or "row"
(|·| / Σ_j |·| per row) (:mod:`interp.attention.ops`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks import HookedModel, is_ssm
from interp.hooks.positions import Positions, PositionsLike, check_index, check_indices, check_layer
from interp.hooks.tokens import as_tokens
from interp.lrp import interaction_rows

from . import deltanet, hidden, kda, latim, methods, mlstm, rglru, rwkv, unified
from .ops import normalize, reduce_channels, rollout

__all__ = ["DEFAULT_MAP_BUDGET_BYTES", "MapTooLargeError", "SSMParameters", "ssm_parameters", "interaction_map",
           "map_memory_bytes", "query_rows", "mamba_attr", "grad_weighted_rollout"]

DEFAULT_MAP_BUDGET_BYTES = 2 * 2**30


class MapTooLargeError(MemoryError):
    """A per-channel map was requested that exceeds the memory budget."""


@dataclass(frozen=True)
class SSMParameters:
    """The selective-scan inputs and output of one SSM layer on a batch (heads view of :mod:`interp.hooks.scan`).

    Attributes:
        dt: [b, L, H] step sizes Δ.
        A: [H, N] (Mamba-1) or [H] (Mamba-2), the static decay (detached).
        B, C: [b, L, G, N] input / output projections.
        D: [H] skip weights (float32, detached).
        u: [b, L, H, P] the scan input (after the conv and its activation).
        y: [b, L, H, P] the scan output C·h + D·u (before the gate).
    """

    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor
    u: Tensor
    y: Tensor


# --------------------------------------------------------------------------------------------
# per-model sources
# --------------------------------------------------------------------------------------------
def _layer(model: Any, layer: int | None, method: str) -> int:
    """``layer`` checked against the model's depth, negative counted from the end."""
    if layer is None:
        raise ValueError(f"method {method!r} needs a layer: pass layer=<0..{model.cfg.n_layers - 1}>")
    return check_layer(model, layer)


def ssm_parameters(model: HookedModel, tokens: Any, *, layer: int) -> SSMParameters:
    """dt, B, C, u, y of ``layer`` from a hooked run on ``tokens`` (a batch [b, L] is fine), plus its static A
    and D (:class:`SSMParameters`). The forward stops after ``layer``."""
    tokens = as_tokens(model, tokens)
    if not is_ssm(model):
        raise methods.MethodNotApplicable("ssm_parameters needs a state-space model (Mamba-1 / Mamba-2)")
    layer = _layer(model, layer, "hidden")
    if methods.model_kind(model, layer) != "ssm":  # raises for an MLP layer itself
        raise methods.MethodNotApplicable(f"ssm_parameters: layer {layer} of this hybrid is an attention layer "
                                          f"(cfg.layer_types); its SSM layers are {model.cfg.ssm_layers}")
    names = {h: f"blocks.{layer}.ssm.hook_{h}" for h in ("dt", "B", "C", "u", "y")}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=list(names.values()), stop_at_layer=layer + 1)
    mixer = model.blocks[layer].ssm
    return SSMParameters(A=mixer.A.detach(), D=mixer.D.detach().float(), **{h: cache[n] for h, n in names.items()})


def _n_units(model: Any, method: str) -> int:
    """Channels / heads a per-layer map of ``method`` has on ``model``, from its config (no forward)."""
    cfg = model.cfg
    if getattr(methods.MAP_METHODS.get(method), "whole_model", False):  # one [L, L] map per prompt, no channels
        return 1
    if method == "attention":
        return int(cfg.n_heads)
    if method == "delta":  # Gated DeltaNet: one map per value head
        return int(cfg.delta.n_v_heads)
    if method == "mlstm":  # mLSTM: one map per head
        return int(cfg.mlstm.n_heads)
    if method == "kda":  # Kimi Delta Attention: one map per head
        return int(cfg.kda.n_heads)
    if method == "rglru":  # RG-LRU: one map per recurrence channel
        return int(cfg.rglru.d_lru)
    if method == "rwkv":  # RWKV-4: one map per time-mix channel
        return int(cfg.d_att)
    if method == "unified" or getattr(cfg, "family", "mamba1") == "mamba1":
        return int(cfg.d_inner)
    return int(cfg.H)


def map_memory_bytes(model: HookedModel, batch: int, length: int, *, method: str, aggregate: str | int = "mean_abs",
                     heads: Sequence[int] | None = None) -> int:
    """Bytes that :func:`interaction_map` of one layer by ``method`` holds at its peak for tokens [batch, length]:
    the one estimate every method and aggregate is checked with, from the config alone, before any forward.

    Per method (float32, n = the selected channels / heads, d = d_model):

    * every method: the map itself, b·L² (b·n·L² for aggregate="none");
    * "hidden": Mamba-2 builds its per-head maps first (b·n·L² more); Mamba-1 works in blocks of query rows
      (b·n·64·L, at most 32 MiB);
    * "unified": one channel's α, its convolved and gated copies in flight (3·b·L² more, a chunk of >= 1 channel);
    * "latim": the contributions T [b, L, L, d] and one channel's α (b·L² more);
    * "attention": the cached softmax pattern of every head, b·H·L²;
    * "lrp" / "grad_x_input": the [b, L, L] rows (their forwards and backwards are per row, O(L)).
    """
    b, L = int(batch), int(length)
    sq = b * L * L
    n = _n_units(model, method) if heads is None else len(heads)
    if isinstance(aggregate, int):
        n = 1
    out = sq * n if aggregate == "none" else sq
    extra = 0
    if method == "hidden":
        mamba2 = getattr(model.cfg, "family", "mamba1") == "mamba2"
        extra = sq * n if mamba2 and aggregate != "none" else min(8 * 2**20, b * n * min(L, 64) * L)
    elif method == "unified":
        extra = 3 * sq
    elif method == "latim":
        out, extra = sq * int(model.cfg.d_model), sq
    elif method == "attention":
        extra = sq * int(model.cfg.n_heads)
    elif method == "delta":  # every selected head's A [b, L, L], the identity values and one head in flight
        extra = sq * (n + 2)
    elif method == "mlstm":  # every selected head's log-weights, weights and A [b, L, L]
        extra = 3 * sq * n
    elif method == "kda":  # as "delta", plus one chunk's per-channel decays [b, L / C, C, C, d_k] of one head
        extra = sq * (n + 2) + b * L * model.cfg.kda.chunk_size * model.cfg.kda.d_head
    elif method in ("rwkv", "rglru"):  # a chunk of channels' α (about 2^24 floats, >= 1 channel), the running sum
        extra = max(sq, min(sq * n, 2**24)) + sq
    return 4 * (out + extra)


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
    *,
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

    tokens: a text, ids [L] or a batch [b, L]. method (:mod:`interp.attention.methods`): "auto" (hidden attention
    for SSMs, softmax attention for transformers), "hidden", "attention", "unified" (unified implicit attention,
    channel-reduced; bias and skip terms in :mod:`interp.attention.unified`; ``variant="without_conv"|
    "without_gate"|"without_act"`` for the original code's ablations), "latim" (LaTIM scores;
    ``score="l1"|"l2"|"alti"``, ``f="silu"|"identity"``), "lrp" or "grad_x_input" (whole-model attributions;
    ``layer`` ignored). A method that does not apply to the model raises
    :class:`~interp.attention.methods.MethodNotApplicable` (a ValueError). Hidden attention runs on the backend
    :func:`interp.attention.backends.choose_backend` picks for the tensors' device (the Triton kernel for CUDA
    tensors, numba on the CPU, else PyTorch).
    """
    tokens = as_tokens(model, tokens)
    if method == "auto":
        method = methods.default_method(model, layer)
    whole_model = methods.check_applies(method, model, layer).whole_model
    if not whole_model:
        layer = _layer(model, layer, method)
        n_units = _n_units(model, method)
        if heads is not None:
            heads = check_indices(heads, n_units, "heads", of=f"{n_units} channels / heads")
        if isinstance(aggregate, int):
            aggregate = check_index(aggregate, n_units, "aggregate", of=f"{n_units} channels / heads")
    b, L = tokens.shape
    need = map_memory_bytes(model, b, L, method=method, aggregate=aggregate, heads=heads)
    _check_budget(need // 4, max_bytes, f"interaction_map(method={method!r}, aggregate={aggregate!r}) on "
                  f"tokens [{b}, {L}]")
    if whole_model:
        rows = torch.stack([interaction_rows(model, t[None], method=method, **method_kwargs) for t in tokens])
        return normalize(rows, normalize_)

    if method == "attention":
        name = f"blocks.{layer}.attn.hook_pattern"
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=name)
        per_head = cache[name]
        per_head = per_head if heads is None else per_head[:, list(heads)]
        return normalize(reduce_channels(per_head, aggregate, k), normalize_)

    if method == "delta":  # Gated DeltaNet: the exact implicit attention A per value head
        p = deltanet.deltanet_parameters(model, tokens, layer=layer)
        per_head = deltanet.delta_attention(p.q, p.k, p.g, p.beta, heads=heads,
                                            chunk_size=model.blocks[layer].ssm.cfg.chunk_size)
        return normalize(reduce_channels(per_head, aggregate, k), normalize_)

    if method == "kda":  # Kimi Delta Attention: the exact implicit attention A per head
        p = kda.kda_parameters(model, tokens, layer=layer)
        per_head = kda.kda_attention(p.q, p.k, p.g, p.beta, heads=heads,
                                     chunk_size=model.blocks[layer].ssm.cfg.chunk_size)
        return normalize(reduce_channels(per_head, aggregate, k), normalize_)

    if method == "rglru":  # RG-LRU: the exact implicit attention per channel (interp.attention.rglru)
        return normalize(rglru.rglru_map(model, tokens, layer=layer, aggregate=aggregate, heads=heads, k=k),
                         normalize_)

    if method == "mlstm":  # mLSTM: the exact implicit attention A per head (interp.attention.mlstm)
        return normalize(mlstm.mlstm_map(model, tokens, layer=layer, aggregate=aggregate, heads=heads, k=k),
                         normalize_)

    if method == "rwkv":  # RWKV-4: the exact time-decay softmax weights per channel (interp.attention.rwkv)
        return normalize(rwkv.rwkv_map(model, tokens, layer=layer, aggregate=aggregate, heads=heads, k=k), normalize_)

    if method in ("unified", "latim"):
        return normalize(_unified_or_latim(model, tokens, layer, method, aggregate, heads, max_bytes, **method_kwargs),
                         normalize_)
    p = ssm_parameters(model, tokens, layer=layer)
    H = p.dt.shape[-1]
    if isinstance(aggregate, int):
        heads, aggregate = [aggregate], "mean"
    if aggregate == "topk":
        mass = hidden.channel_mass(p.dt, p.A, p.B, p.C)
        heads, aggregate = mass.topk(min(k or 8, H)).indices.tolist(), "mean_abs"
    n_sel = H if heads is None else len(heads)
    if aggregate == "none" or p.A.dim() == 1:  # Mamba-2 builds per-head maps directly
        _check_budget(b * n_sel * L * L, max_bytes, f"a per-{'channel' if p.A.dim() == 2 else 'head'} map "
                      f"[{b}, {n_sel}, {L}, {L}]")
    if aggregate == "none":
        out = hidden.hidden_attention(p.dt, p.A, p.B, p.C, heads)
    else:
        out = hidden.hidden_attention_reduced(p.dt, p.A, p.B, p.C, aggregate, heads)
    return normalize(out, normalize_)


def _unified_or_latim(model: Any, tokens: Tensor, layer: int, method: str, aggregate: str | int,
                      heads: Sequence[int] | None, max_bytes: int | None, score: str = "l2", f: str = "silu",
                      variant: str = "full") -> Tensor:
    hooks = unified.UNIFIED_HOOKS if method == "unified" else latim.LATIM_HOOKS
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.ssm.{h}" for h in hooks],
                                        stop_at_layer=layer + 1)
        budget = max_bytes if max_bytes is not None else 2**62
        if method == "latim":
            return latim.latim_scores(latim.latim_layer(model, cache, layer=layer, f=f, max_bytes=budget), score)
        channels = [aggregate] if isinstance(aggregate, int) else heads
        agg = "mean" if isinstance(aggregate, int) else aggregate
        return unified.unified_layer(model, cache, layer=layer, channels=channels, aggregate=agg,
                                     max_bytes=budget, variant=variant).map


def query_rows(
    model: HookedModel, tokens: Any, *, positions: PositionsLike, layer: int | None = None, method: str = "auto",
    aggregate: str | int = "mean_abs", normalize_: str = "raw",
) -> Tensor:
    """The query rows ``positions`` of the interaction map of ``layer``: [b, len(positions), L].

    ``positions``: a :data:`~interp.hooks.positions.PositionsLike` (ints, negative from the end, bounds-checked).
    O(H·N·L) memory per row for SSMs (O(L) with the Triton kernel, which the backend dispatch picks for CUDA
    tensors); whole-model methods ("lrp", "grad_x_input") need no ``layer``."""
    tokens = as_tokens(model, tokens)
    method = methods.default_method(model) if method == "auto" else method
    entry = methods.check_applies(method, model)
    rows = Positions.parse(positions).indices(tokens.shape[1], name="positions")
    if entry.whole_model:
        out = torch.stack([interaction_rows(model, t[None], positions=rows, method=method) for t in tokens])
    elif method == "hidden":
        p = ssm_parameters(model, tokens, layer=_layer(model, layer, method))
        if aggregate in hidden.REDUCERS:  # mean / mean_abs / max: the backend dispatch (Triton rows on CUDA)
            out = hidden.hidden_attention_rows_reduced(p.dt, p.A, p.B, p.C, rows, aggregate)
        else:  # a channel, "topk" or "none": from the per-channel rows [b, H, R, L]
            out = reduce_channels(hidden.hidden_attention_rows(p.dt, p.A, p.B, p.C, rows), aggregate)
    else:
        out = interaction_map(model, tokens, layer=layer, method=method, aggregate=aggregate)[:, rows]
    return normalize(out, normalize_)


def _minmax(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """(x - min) / (max - min) over ``dims`` (per batch element); a constant slice gives zeros, not 0/0."""
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)


def _target_backward(model: Any, tokens: Tensor, hooks: list, target: int | None, pos: int) -> None:
    """Forward with ``hooks`` and backward of the ``target`` logit (default each row's argmax) at ``pos``."""
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    b = tokens.shape[0]
    tgt = logits[:, pos].argmax(-1) if target is None else torch.full((b,), int(target), device=logits.device)
    logits[torch.arange(b, device=logits.device), pos, tgt].sum().backward()


def _grad_keeper(grabbed: dict[str, Tensor]):
    def keep(x: Tensor, hook: Any) -> Tensor:
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        x.retain_grad()
        grabbed[hook.name] = x
        return x
    return keep


def mamba_attr(model: HookedModel, tokens: Any, *, target: int | None = None, position: int = -1,
               start_layer: int = 0) -> Tensor:
    """Mamba-Attr (Ali, Zimerman, Wolf, "The Hidden Attention of Mamba Models"), as the original code
    (``generate_mamba_attr``, github AmeenAli/HiddenMambaAttn, vim/xai_utils.py) computes it: [b, L], the
    relevance of each token j for the ``target`` logit (default each row's argmax) at ``position``.

    Per layer l (rows of a batch are independent):

        a_l = mean_c minmax_{c,j}( clamp(α_l[c, position, j], 0) )        α: hidden attention row, every channel
        s_l = minmax_j( max_d clamp(∂logit/∂resid_pre_l[j, d], 0) )         the gradient of the block's residual
        v_l = a_l ⊙ s_l                                                      [L]

    then the original's rollout of these vectors, M_l = rownorm(1 v_lᵀ + I) (every row of I + v_l's broadcast,
    as ``compute_rollout_attention`` does with a vector), ρ = M_{n-1} ⋯ M_{start_layer}, result ρ[position]
    (clamped at 0). Mamba-2: α is per head, shared by the head's P channels, so the channel mean is the head
    mean and min/max over channels those over heads. Transformers: α is the softmax pattern (per head).
    Differences from the original (docs/design.md §3.4): the explained position is a real token and stays in
    the result (the original drops its CLS token); a constant min-max slice gives 0 (the original divides 0/0);
    ``start_layer`` defaults to 0 (the original, for a 24-layer ViM, to 15). For the former attention × gradient
    map see :func:`grad_weighted_rollout`.
    """
    tokens = as_tokens(model, tokens)
    b, L = tokens.shape
    pos = Positions.parse(position).indices(L, name="position")[0]
    n = model.cfg.n_layers
    if not 0 <= start_layer < n:
        raise ValueError(f"start_layer={start_layer} out of range for a {n}-layer model (0..{n - 1})")
    ssm = is_ssm(model)
    grabbed: dict[str, Tensor] = {}
    keep = _grad_keeper(grabbed)

    def store(x: Tensor, hook: Any) -> Tensor:
        grabbed[hook.name] = x.detach()
        return x

    hooks = [(f"blocks.{i}.hook_resid_pre", keep) for i in range(n)]
    sites = ("ssm.hook_dt", "ssm.hook_B", "ssm.hook_C") if ssm else ("attn.hook_pattern",)
    hooks += [(f"blocks.{i}.{s}", store) for i in range(start_layer, n) for s in sites]
    _target_backward(model, tokens, hooks, target, pos)

    rho = torch.zeros(b, L, device=tokens.device)
    rho[:, pos] = 1.0  # e_pos; applying M_{n-1}, ..., M_start from the left gives row pos of ρ
    for i in range(n - 1, start_layer - 1, -1):
        if ssm:
            g = {h: grabbed[f"blocks.{i}.ssm.hook_{h}"] for h in ("dt", "B", "C")}
            alpha = hidden.hidden_attention_rows(g["dt"], model.blocks[i].ssm.A.detach(), g["B"], g["C"], [pos])[:, :, 0]
        else:
            alpha = grabbed[f"blocks.{i}.attn.hook_pattern"][:, :, pos].float()  # [b, heads, L]
        a = _minmax(alpha.clamp(min=0), (1, 2)).mean(1)  # [b, L]
        s = _minmax(grabbed[f"blocks.{i}.hook_resid_pre"].grad.float().clamp(min=0).amax(-1), (1,))  # [b, L]
        v = (a * s).to(rho)
        # r M_l = ((Σ_k r_k) v + r) / (Σ_j v_j + 1): the row form of rownorm(1 vᵀ + I)
        rho = (rho.sum(-1, keepdim=True) * v + rho) / (v.sum(-1, keepdim=True) + 1)
    return rho.clamp(min=0)


def grad_weighted_rollout(model: HookedModel, tokens: Any, *, target: int | None = None,
                          position: int = -1) -> Tensor:
    """Attention × gradient rollout (the quantity ``mamba_attr`` computed before it followed the original
    code): [b, L, L] for tokens [b, L], every layer's map weighted by its gradient for one logit, rolled out.

    Per layer, A_l = (E_h[∇α] ⊙ E_h[α])⁺, then ρ = rollout(A_0..A_{n-1}) (identity, row normalisation).
    For SSMs ∇α[h, i, j] = Σ_p g_i[h, p] u_j[h, p] with g = ∂logit/∂y (the SSM output, hook_y);
    for transformers the gradient of the softmax pattern. ``target``: the explained token id (default each
    row's argmax at ``position``); rows of a batch are independent.
    """
    tokens = as_tokens(model, tokens)
    grabbed: dict[str, Tensor] = {}
    keep = _grad_keeper(grabbed)
    ssm = is_ssm(model)
    suffixes = ("ssm.hook_y", "ssm.hook_u") if ssm else ("attn.hook_pattern",)
    hooks = [(f"blocks.{i}.{s}", keep) for i in range(model.cfg.n_layers) for s in suffixes]
    pos = Positions.parse(position).indices(tokens.shape[1], name="position")[0]
    _target_backward(model, tokens, hooks, target, pos)

    layer_maps = []
    for i in range(model.cfg.n_layers):
        if ssm:
            with torch.no_grad():
                alpha = interaction_map(model, tokens, layer=i, method="hidden", aggregate="mean")
            g, u = grabbed[f"blocks.{i}.ssm.hook_y"].grad, grabbed[f"blocks.{i}.ssm.hook_u"].detach()
            grad = torch.einsum("bihp,bjhp->bij", g.float(), u.float()) / u.shape[2]
            grad = torch.tril(grad)
        else:
            pat = grabbed[f"blocks.{i}.attn.hook_pattern"]
            alpha, grad = pat.detach().mean(1), pat.grad.mean(1)
        layer_maps.append((grad * alpha).clamp_min(0))
    return rollout(layer_maps)
