"""Views of interaction maps for display: a layer's map, rollout, per-channel thumbnails, their sort metrics,
pooled overviews of long prompts.

    detail_map(model, tokens, layer=2, method="hidden")      # [L, L] numpy, one layer (or the whole model)
    thumbs = thumbnail_maps(model, tokens, method="hidden")  # Thumbnails: maps [n, L, L], keys [(layer, channel)]
    order = thumbs.sorted_by("distance")                     # SortedThumbnails: order, scores, names, pooled maps
    pooled, f = pool_map(causal_masked(m), out=128)          # [ceil(L/f), ceil(L/f)]

Maps are float numpy arrays [L(query i), L(source j)]; stacks of per-channel maps are [n, L, L]. The methods
(names, labels, kinds of model) come from the registry :mod:`interp.attention.methods`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from interp.hooks.positions import PositionsLike, check_index

from .hidden import channel_mass
from .maps import interaction_map, query_rows, ssm_parameters
from .methods import (LABELS, WHOLE_MODEL, MethodNotApplicable, check_applies, default_method, layer_kinds,
                      layer_methods, model_kind)
from .ops import normalize, rollout

__all__ = [
    "AGGREGATES", "METRICS", "METRIC_DEFINITIONS", "Thumbnails", "SortedThumbnails", "MapView",
    "aggregates_for", "n_channels", "map_view", "detail_map", "attribution_rows", "rollout_map", "thumbnail_maps", "map_metric",
    "pool_map", "causal_masked", "warm_up",
]

AGGREGATES = ("mean_abs", "mean", "max", "topk")
METRICS = ("mass", "max", "distance", "diagonal")
# what each sort metric measures (m: one map [L, L], i: query, j: source), plain text (captions, help)
METRIC_DEFINITIONS: dict[str, str] = {
    "mass": "Σᵢⱼ |mᵢⱼ|, the total absolute interaction of the map (grows with the prompt's length)",
    "max": "maxᵢⱼ |mᵢⱼ|, the strongest single interaction",
    "distance": "Σᵢⱼ |mᵢⱼ|·|i − j| ∕ Σᵢⱼ |mᵢⱼ|, how far back the map looks on average, in tokens",
    "diagonal": "Σᵢ |mᵢᵢ| ∕ Σᵢⱼ |mᵢⱼ|, the share of the map on each token's own position",
}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def aggregates_for(method: str) -> list[str]:
    """Channel/head aggregates a method supports ("channel" = one channel/head); [] when it has none (LaTIM
    scores and the whole-model attributions have no channel axis)."""
    if method in ("hidden", "attention"):
        return [*AGGREGATES, "channel"]
    if method == "unified":
        return ["mean_abs", "mean", "max", "channel"]
    return []


def n_channels(model: Any) -> int:
    """Channels (Mamba-1: d_inner) or heads (Mamba-2, transformers) of a layer's map."""
    cfg = model.cfg
    if model_kind(model) == "ssm" and cfg.family != "mamba2":
        return int(cfg.d_inner)
    return int(cfg.n_heads)


def detail_map(model: Any, tokens: Any, *, layer: int, method: str, aggregate: str | int = "mean_abs",
               normalize_: str = "raw", max_bytes: int | None = None) -> np.ndarray:
    """The interaction map [L, L] of one sequence ``tokens`` ([1, L]) at ``layer`` by ``method``
    (:func:`interaction_map`); ``aggregate`` int = one channel/head. Whole-model methods (LRP, gradient × input)
    ignore ``layer`` and ``aggregate``."""
    if method in WHOLE_MODEL:
        return _np(interaction_map(model, tokens, method=method, normalize_=normalize_)[0])
    m = interaction_map(model, tokens, layer=layer, method=method, normalize_=normalize_, aggregate=aggregate,
                        max_bytes=max_bytes)
    return _np(m[0])


def attribution_rows(model: Any, tokens: Any, *, positions: PositionsLike, method: str,
                     normalize_: str = "raw") -> np.ndarray:
    """Query rows ``positions`` of a whole-model attribution map (LRP, gradient × input) of one sequence:
    [len(positions), L] (:func:`query_rows`)."""
    return _np(query_rows(model, tokens, positions=positions, method=method, normalize_=normalize_)[0])


def rollout_map(model: Any, tokens: Any, *, method: str, aggregate: str | int = "mean_abs",
                normalize_: str = "raw", max_bytes: int | None = None) -> np.ndarray:
    """Rollout [L, L] of the per-layer maps of ``method`` (:func:`rollout`), each taken as |map| (rollout needs
    non-negative weights), then normalised (:func:`normalize`). On a hybrid each layer uses ``method`` where it
    applies and its kind's default elsewhere, one factor per token-mixing step
    (:func:`~interp.attention.methods.layer_methods`: none for MLP layers, attention + SSM maps summed on a parallel
    layer, attention then SSM on a shared-attention layer): ``method="auto"`` chains hidden attention on the SSM
    layers with the softmax pattern on the attention layers."""
    maps = [sum(interaction_map(model, tokens, layer=layer, method=name, aggregate=aggregate,
                                max_bytes=max_bytes).abs() for name in names)
            for layer, names in layer_methods(model, method)]
    return _np(normalize(rollout(maps), normalize_)[0])


@dataclass
class MapView:
    """One interaction map as a page shows it (:func:`map_view`).

    ``values``: float [n_rows, L] (query i, source j): all L query rows, or only ``rows`` when not None;
    ``title``: the method, its layer (or "rollout"), the channel aggregate and the normalisation.
    """

    values: np.ndarray
    rows: list[int] | None
    title: str

    @property
    def signed(self) -> bool:
        """Whether the map has negative entries (then a diverging colour scale)."""
        return bool(np.nanmin(self.values) < 0)

    def row(self, query: int) -> np.ndarray:
        """Query row ``query`` (absolute) [L]."""
        return self.values[self.rows.index(query) if self.rows is not None else query]


def map_view(model: Any, tokens: Any, *, method: str, layer: int = 0, aggregate: str | int = "mean_abs",
             normalize_: str = "raw", query: int = -1, rollout: bool = False, all_rows_max: int = 48,
             max_bytes: int | None = None) -> MapView:
    """The interaction map of one sequence ``tokens`` [1, L] as the app's pages show it: layer ``layer``'s map,
    or the rollout over all layers (``rollout``), by ``method`` (``aggregate`` int = one channel/head). A
    whole-model method (LRP, gradient × input) needs one backward pass per query row: over ``all_rows_max`` tokens
    only query ``query`` and the last 8 rows are computed."""
    L = tokens.shape[-1]
    where = "rollout" if rollout else f"layer {layer}"
    channels = f"channel {aggregate}" if isinstance(aggregate, int) else aggregate
    if method in WHOLE_MODEL:
        title = f"{LABELS[method]}, {normalize_}"
        if L <= all_rows_max:
            return MapView(detail_map(model, tokens, layer=0, method=method, normalize_=normalize_), None, title)
        rows = sorted({check_index(query, L, "query", of=f"a sequence of {L} tokens"), *range(max(0, L - 8), L)})
        return MapView(attribution_rows(model, tokens, positions=rows, method=method, normalize_=normalize_), rows,
                       title)
    title = ", ".join([where, LABELS[method], *([channels] if aggregates_for(method) else []), normalize_])
    kw = dict(method=method, aggregate=aggregate, normalize_=normalize_, max_bytes=max_bytes)
    values = rollout_map(model, tokens, **kw) if rollout else detail_map(model, tokens, layer=layer, **kw)
    return MapView(values, None, title)


@dataclass
class SortedThumbnails:
    """Thumbnails in the order of a metric: ``order`` [k] indices into the stack, ``scores`` [k] their metric,
    ``names`` ("L1 ch3"), ``pooled`` [k, l, l] the maps causally masked and mean-pooled to at most ``l`` cells."""

    metric: str
    order: np.ndarray
    scores: np.ndarray
    names: list[str]
    pooled: np.ndarray


@dataclass
class Thumbnails:
    """Layer × channel/head maps: ``maps`` [n, L, L]; ``keys`` [(layer, channel or None)] (None: a map reduced over
    channels)."""

    maps: np.ndarray
    keys: list[tuple[int, int | None]]

    def sorted_by(self, metric: str, top: int = 32, out: int = 48) -> SortedThumbnails:
        """The ``top`` maps with the largest ``metric`` (:func:`map_metric`; ties keep layer order), pooled to
        at most ``out`` × ``out`` cells."""
        score = map_metric(self.maps, metric)
        order = np.argsort(-score, kind="stable")[:top]
        names = [f"L{self.keys[k][0]}" + ("" if self.keys[k][1] is None else f" ch{self.keys[k][1]}") for k in order]
        pooled = np.stack([pool_map(causal_masked(self.maps[k]), out)[0] for k in order])
        return SortedThumbnails(metric, order, score[order], names, pooled)


def thumbnail_maps(model: Any, tokens: Any, *, method: str, per_layer: int = 8,
                   max_bytes: int | None = None) -> Thumbnails:
    """Layer × channel/head maps of one sequence for a thumbnail grid.

    hidden: per head (Mamba-2) or the ``per_layer`` channels with the most mass (Mamba-1, :func:`channel_mass`);
    attention: per head; unified / LaTIM: one channel-reduced map per layer (channel None). On a hybrid each layer
    uses ``method`` where it applies to the layer's kind and the kind's default elsewhere (as a rollout does,
    :func:`~interp.attention.methods.layer_methods`); MLP-only layers have no thumbnail."""
    maps, keys = [], []
    wanted, kinds = method, layer_kinds(model)
    hybrid = isinstance(getattr(model.cfg, "layer_types", None), list)
    for layer in range(model.cfg.n_layers):
        method = wanted
        if hybrid:
            if kinds[layer] == "mlp":
                continue  # a position-wise layer: no map
            try:
                check_applies(wanted, model, layer)
            except MethodNotApplicable:
                method = default_method(model, layer)
        if method == "hidden" and model.cfg.family == "mamba1":
            p = ssm_parameters(model, tokens, layer=layer)
            heads = channel_mass(p.dt, p.A, p.B, p.C).topk(min(per_layer, p.dt.shape[-1])).indices.tolist()
            m = interaction_map(model, tokens, layer=layer, method="hidden", aggregate="none", heads=heads,
                                max_bytes=max_bytes)[0]
        elif method in ("hidden", "attention"):
            m = interaction_map(model, tokens, layer=layer, method=method, aggregate="none", max_bytes=max_bytes)[0]
            heads = list(range(m.shape[0]))
        else:
            m = interaction_map(model, tokens, layer=layer, method=method, max_bytes=max_bytes)
            heads = [None]
        maps.append(_np(m))
        keys += [(layer, h) for h in heads]
    return Thumbnails(np.concatenate(maps), keys)


def map_metric(maps: np.ndarray, name: str) -> np.ndarray:
    """A score per map of [n, L, L] (:data:`METRIC_DEFINITIONS`): "mass" (Σ|m|), "max" (max |m|), "distance"
    (mean |i - j| weighted by |m|: how far back a map looks), "diagonal" (share of |m| on the diagonal). NaN = 0."""
    a = np.abs(np.nan_to_num(np.asarray(maps, dtype=np.float64)))
    if name == "mass":
        return a.sum((1, 2))
    if name == "max":
        return a.max((1, 2))
    L = a.shape[-1]
    total = a.sum((1, 2)) + 1e-30
    if name == "distance":
        i, j = np.indices((L, L))
        return (a * np.abs(i - j)).sum((1, 2)) / total
    if name == "diagonal":
        return np.trace(a, axis1=1, axis2=2) / total
    raise ValueError(f"metric must be one of {METRICS}, got {name!r}")


def pool_map(m: np.ndarray, out: int = 128) -> tuple[np.ndarray, int]:
    """Mean-pool a map [R, C] by a factor f = ceil(max(R, C)/out) -> ([ceil(R/f), ceil(C/f)], f).
    NaN cells (the causal blank) are ignored; an all-NaN block stays NaN."""
    m = np.asarray(m, dtype=np.float64)
    f = max(1, math.ceil(max(m.shape) / out))
    if f == 1:
        return m, 1
    R, C = (math.ceil(s / f) * f for s in m.shape)
    pad = np.full((R, C), np.nan)
    pad[:m.shape[0], :m.shape[1]] = m
    blocks = pad.reshape(R // f, f, C // f, f)
    with np.errstate(invalid="ignore"):
        cnt = np.isfinite(blocks).sum((1, 3))
        s = np.nansum(blocks, (1, 3))
        pooled = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    return pooled, f


def causal_masked(m: np.ndarray) -> np.ndarray:
    """A float64 copy of a map with the causal upper triangle (j > i) set to NaN (square maps only)."""
    m = np.asarray(m, dtype=np.float64).copy()
    if m.ndim == 2 and m.shape[0] == m.shape[1]:
        m[np.triu_indices(m.shape[0], k=1)] = np.nan
    return m


def warm_up(model: Any, n_tokens: int = 16) -> None:
    """One small interaction map, so that a first real request skips one-time set-up costs (kernel compilation);
    best effort: failures are ignored."""
    try:
        vocab = max(2, int(model.cfg.d_vocab))
        interaction_map(model, torch.arange(n_tokens).remainder(vocab)[None], layer=0, method="auto")
    except Exception:  # noqa: BLE001 - warming up is best effort
        pass
