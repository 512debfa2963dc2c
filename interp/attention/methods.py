"""The one registry of interaction-map methods: names, labels, the models they apply to, and their rows.

    METHODS                          # ("attention", "hidden", "unified", "latim", "lrp", "grad_x_input")
    MAP_METHODS["latim"].label       # "LaTIM (SSM)"
    methods_for(model)               # the map methods that apply to this model, in registry order
    default_method(model)            # "hidden" for state-space models, "attention" for transformers
    check_applies("unified", model)  # MethodNotApplicable unless the method applies to the model
    method_rows(model, tokens, positions=[5, 9], method="hidden@last")   # [2, L] rows for the benchmarks
    layer_maps(model, tokens, method="hidden")                          # every layer's map [L, L]

Every entry of :data:`MAP_METHODS` is a :class:`MapMethod`. The *map methods* (:data:`METHODS`) are what
:func:`interp.attention.interaction_map` computes and what the app lists (its "source" menu); a method is per
layer (a [b, L, L] map of one layer) or whole-model (an attribution through every layer: ``layer`` is ignored).
The benchmarks (:mod:`interp.attention.benchmarks`) score *rows* of the same entries: a row function
``fn(model, tokens [1, L], *, positions) -> [len(positions), L]`` (row r scores each source token j for the
prediction at query ``positions[r]``). Entries marked ``benchmark_only`` have rows but no map of their own
(LaTIM's three scores, ``lrp_abs``, the ``random`` reference, and methods added by :func:`register_method`).

Method specs for the rows (:func:`resolve_method`; a layer-wise method may add ``@rollout``, ``@sum``, ``@last``
or ``@<layer>`` to choose how its per-layer maps are combined):

=================  ===========================================================================  =========
name               per-layer map (rows = query i, columns = source j)                           layers
=================  ===========================================================================  =========
``hidden``         hidden attention (Ali et al.), channel/head mean of |α| (``mean_abs``)       rollout
``hidden_last``    = ``hidden@last``: the last layer's map alone                                last
``attention``      transformers: softmax pattern, mean over heads                               rollout
``attention_last`` = ``attention@last``                                                         last
``unified``        unified implicit attention (Zimerman et al.), channel mean of |α̂|            rollout
``rwkv``           RWKV-4 time-decay softmax weights α (attention/rwkv.py), channel mean         rollout
``mlstm``          mLSTM exact implicit attention A (attention/mlstm.py), head mean of |A|        rollout
``rglru``          RG-LRU implicit attention α (attention/rglru.py), channel mean                 rollout
``kda``            Kimi Delta Attention exact implicit attention A (attention/kda.py), head mean  rollout
``latim_l1``       LaTIM ‖T_i(x_j)‖₁, f = SiLU                                                  sum
``latim_l2``       LaTIM ‖T_i(x_j)‖₂                                                            sum
``latim_alti``     LaTIM ALTI score (row-normalised)                                            sum
``lrp``            MambaLRP / CP-LRP rows (:func:`interp.lrp.interaction_rows`), whole model,   —
                   signed (positive = evidence for the predicted token)
``lrp_abs``        absolute value of the LRP rows (magnitude only)                              —
``grad_x_input``   gradient × input rows, whole model, signed                                   —
``random``         uniform random scores (the chance reference: AUC 0.5)                        —
=================  ===========================================================================  =========

Combining layers (:func:`combine_layers`): ``rollout`` is ρ = Π_l rownorm(I + |A_l|) (Abnar & Zuidema;
the identity stands for the residual stream), the usual way to chain hidden-attention maps through
depth. ``sum`` is the mean over layers of the row-normalised |maps| (each layer's row sums to 1, so a
layer with larger raw contributions does not dominate). ``last`` takes the last layer, ``@k`` layer k.
LaTIM defaults to ``sum``: its contributions are per-layer decompositions (T_i(x_j) is the share of
layer input token j in layer output i), read per layer in the LaTIM paper, and their norms are not on
the scale of the identity that rollout adds for the residual (``latim_l2@rollout`` is the worst LaTIM
variant on the copy task). On small trained copy models the retrieval of the source sits in the last
layer and ``latim_l2@last`` is the sharpest variant; the default benchmark reports it next to ``sum``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks import is_ssm
from interp.hooks.positions import Positions, PositionsLike
from interp.hooks.tokens import as_tokens
from interp.lrp import interaction_rows

from . import deltanet, hidden, kda, latim, mlstm, rglru, rwkv, unified
from .ops import normalize, reduce_channels, rollout

__all__ = [
    "MapMethod", "MAP_METHODS", "METHODS", "LABELS", "WHOLE_MODEL", "KINDS", "LAYER_COMBINE", "ALIASES",
    "MethodNotApplicable", "RowFn", "model_kind", "layer_kinds", "mixing_kinds", "layer_methods", "default_method",
    "methods_for", "layers_for", "get_method", "check_applies",
    "register_method", "benchmark_methods", "resolve_method", "method_rows", "layer_maps", "combine_layers",
]

KINDS = ("ssm", "transformer", "delta", "rwkv", "rglru", "kda", "mlstm")
_KIND_NAMES = {"ssm": "state-space models", "transformer": "transformers",
               "delta": "Gated DeltaNet layers", "rwkv": "RWKV models", "rglru": "RG-LRU layers",
               "kda": "Kimi Delta Attention layers", "mlstm": "mLSTM layers"}
#: hybrid layer kinds (``cfg.layer_types``) whose map kind is not "ssm"
_LAYER_MAP_KIND = {"attention": "transformer", "gated_deltanet": "delta", "rglru": "rglru", "kda": "kda",
                   "mlstm": "mlstm"}
LAYER_COMBINE = ("rollout", "sum", "last")
#: row functions: ``fn(model, tokens [1, L], *, positions: list[int]) -> [len(positions), L]``
RowFn = Callable[..., Tensor]
#: per-layer maps: ``fn(model, tokens [1, L], positions: list[int] | None, layers: list[int] | None = None) ->
#: one [L or R, L] map per layer (of ``layers``, default every layer)``
LayerMapsFn = Callable[..., "list[Tensor]"]


class MethodNotApplicable(ValueError):
    """The method does not apply to this kind of model (e.g. softmax attention on a state-space model)."""


@dataclass(frozen=True)
class MapMethod:
    """One interaction-map method.

    Attributes:
        name, label: registry key and display name.
        kinds: the model kinds it applies to (of :data:`KINDS`).
        whole_model: an attribution through the whole model (``layer`` ignored) rather than one layer's map.
        layer_maps: per-layer maps of every layer from one forward (layer-wise methods), combined into rows by
            :func:`combine_layers` with ``combine`` unless a spec says otherwise; None for other methods.
        combine: the default layer combination of ``layer_maps`` (of :data:`LAYER_COMBINE`).
        rows: the row function of a method that is not layer-wise (whole-model attributions, references).
        benchmark_only: rows for the benchmarks only: not a map of :func:`interp.attention.interaction_map`
            and not in :data:`METHODS`.
    """

    name: str
    label: str
    kinds: tuple[str, ...]
    whole_model: bool = False
    layer_maps: LayerMapsFn | None = None
    combine: str = "rollout"
    rows: RowFn | None = None
    benchmark_only: bool = False

    def applies_to(self, model: Any) -> bool:
        return model_kind(model) in self.kinds


def model_kind(model: Any, layer: int | None = None) -> str:
    """"ssm" (Mamba-1 / Mamba-2) or "transformer". On a hybrid (a config with ``layer_types``, e.g. Bamba), the
    kind of ``layer``: its "attention" layers are "transformer" layers, its "ssm" layers "ssm"; an "mlp" layer
    raises :class:`MethodNotApplicable` (the model as a whole, ``layer=None``: "ssm")."""
    types = getattr(getattr(model, "cfg", None), "layer_types", None)
    if layer is not None and isinstance(types, list) and -len(types) <= layer < len(types):
        if types[layer] == "mlp":  # a position-wise layer (Nemotron-H): nothing to map
            raise MethodNotApplicable(f"layer {layer} of this hybrid is an MLP layer (cfg.layer_types): it mixes no "
                                      f"positions, so it has no interaction map; its SSM layers are "
                                      f"{getattr(model.cfg, 'ssm_layers', '?')}")
        return _LAYER_MAP_KIND.get(types[layer], "ssm")
    if getattr(getattr(model, "cfg", None), "family", None) == "rwkv":  # RWKV-4 (interp.hooks.rwkv)
        return "rwkv"
    return "ssm" if is_ssm(model) else "transformer"


def layer_kinds(model: Any) -> list[str]:
    """Each layer's kind: "ssm" or "transformer" (an attention layer), or "mlp" for a layer that mixes no
    positions (Nemotron-H's MLP layers); the model's kind for every layer of a pure SSM or transformer."""
    types = getattr(getattr(model, "cfg", None), "layer_types", None)
    if not isinstance(types, list):
        return [model_kind(model)] * int(model.cfg.n_layers)
    return ["mlp" if t == "mlp" else _LAYER_MAP_KIND.get(t, "ssm") for t in types]


#: hybrid layer kinds (``cfg.layer_types``) -> the map kinds of their token-mixing steps, in order; the kinds in
#: one step are summed (Falcon-H1's "parallel" layer: attention and SSM read the same input, their outputs add);
#: consecutive steps are chained (Zamba2's "shared_attention" layer: the shared block's attention feeds the SSM)
_MIXING_STEPS = {"ssm": [["ssm"]], "attention": [["transformer"]], "mlp": [],
                 "parallel": [["transformer", "ssm"]], "shared_attention": [["transformer"], ["ssm"]],
                 "gated_deltanet": [["delta"]], "mlstm": [["mlstm"]], "rglru": [["rglru"]], "kda": [["kda"]]}


def layer_methods(model: Any, method: str) -> list[tuple[int, list[str]]]:
    """The token-mixing steps of a map through depth (rollout), in order: ``(layer, methods)`` whose maps are summed
    in that step. On a pure model one step per layer with ``method`` (:class:`MethodNotApplicable` if it does not
    apply; "auto" is the model's default). On a hybrid each step uses ``method`` where it applies to the step's kind
    and the kind's default elsewhere (``"unified"``: unified attention on the SSM layers, the softmax pattern on
    the attention layers); MLP-only layers have no step (the identity in a rollout), a Falcon-H1 "parallel" layer
    one step with its attention and SSM maps summed, a Zamba2 "shared_attention" layer two steps (the shared
    block's attention, then the SSM mixer)."""
    kinds = layer_kinds(model)
    if method != "auto":
        if method not in MAP_METHODS:
            get_method(method)  # the ValueError naming the map methods
        _check_some_layer(MAP_METHODS[method], model)
    types = getattr(model.cfg, "layer_types", None)
    if not isinstance(types, list):
        return [(layer, [default_method(model) if method == "auto" else method]) for layer in range(len(kinds))]

    def resolved(kind: str) -> str:
        return method if method != "auto" and kind in MAP_METHODS[method].kinds else _DEFAULT[kind]

    return [(layer, [resolved(kind) for kind in step]) for layer, t in enumerate(types)
            for step in _MIXING_STEPS.get(t, [["ssm"]])]


# --------------------------------------------------------------------------------------------
# per-layer maps of every layer, one forward each (rows only where the method computes them row-wise)
# --------------------------------------------------------------------------------------------
def _layers(model: Any, layers: Sequence[int] | None) -> list[int]:
    return list(range(int(model.cfg.n_layers))) if layers is None else list(layers)


def _hidden_maps(model: Any, tokens: Tensor, positions: list[int] | None,
                 layers: Sequence[int] | None = None) -> list[Tensor]:
    """Channel/head mean |α| of every layer (or of ``layers``) from one cached forward (rows only: O(H·N·L) per
    row)."""
    layers = _layers(model, layers)
    names = [f"blocks.{l}.ssm.hook_{h}" for l in layers for h in ("dt", "B", "C")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
        out = []
        for l in layers:
            dt, B, C = (cache[f"blocks.{l}.ssm.hook_{h}"] for h in ("dt", "B", "C"))
            A = model.blocks[l].ssm.A.detach()
            if positions is None:
                out.append(hidden.hidden_attention_reduced(dt, A, B, C, "mean_abs")[0])
            else:
                out.append(hidden.hidden_attention_rows_reduced(dt, A, B, C, positions, "mean_abs")[0])
    return out


def _attention_maps(model: Any, tokens: Tensor, positions: list[int] | None,
                    layers: Sequence[int] | None = None) -> list[Tensor]:
    """The softmax pattern of every layer (or of ``layers``), mean over heads."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in _layers(model, layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    maps = [reduce_channels(cache[name], "mean")[0] for name in names]
    return maps if positions is None else [m[positions] for m in maps]


def _unified_maps(model: Any, tokens: Tensor, positions: list[int] | None,
                  layers: Sequence[int] | None = None) -> list[Tensor]:
    layers = _layers(model, layers)
    names = [f"blocks.{l}.ssm.{h}" for l in layers for h in unified.UNIFIED_HOOKS]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    maps = [unified.unified_layer(model, cache, layer=l, aggregate="mean_abs").map[0] for l in layers]
    return maps if positions is None else [m[positions] for m in maps]


def _delta_maps(model: Any, tokens: Tensor, positions: list[int] | None,
                layers: Sequence[int] | None = None) -> list[Tensor]:
    """Head mean of |A| of each Gated DeltaNet layer (:mod:`interp.attention.deltanet`, exact implicit attention)."""
    return deltanet.delta_layer_maps(model, tokens, positions=positions, layers=None if layers is None else
                                     list(layers))


def _kda_maps(model: Any, tokens: Tensor, positions: list[int] | None,
              layers: Sequence[int] | None = None) -> list[Tensor]:
    """Head mean of |A| of each KDA layer (:mod:`interp.attention.kda`, exact implicit attention)."""
    return kda.kda_layer_maps(model, tokens, positions=positions, layers=None if layers is None else list(layers))


def _latim_maps(score: str) -> LayerMapsFn:
    """LaTIM per-layer score maps (``latim_layer`` + ``latim_scores``, f = SiLU) with the score ``score``."""

    def maps(model: Any, tokens: Tensor, positions: list[int] | None,
             layers: Sequence[int] | None = None) -> list[Tensor]:
        L, layers = tokens.shape[1], _layers(model, layers)
        names = [f"blocks.{l}.ssm.{h}" for l in layers for h in latim.LATIM_HOOKS]
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=names)
            out = []
            for layer in layers:
                contrib = latim.latim_layer(model, cache, layer=layer, f="silu", rows=positions)
                out.append(latim.latim_scores(contrib, score=score)[0].reshape(-1, L).float())
        return out

    return maps


def _rglru_maps(model: Any, tokens: Tensor, positions: list[int] | None,
                layers: Sequence[int] | None = None) -> list[Tensor]:
    """Channel-mean α of each RG-LRU layer (:func:`interp.attention.rglru.rglru_layer_maps`, exact implicit
    attention)."""
    return rglru.rglru_layer_maps(model, tokens, positions=positions, layers=layers)


def _mlstm_maps(model: Any, tokens: Tensor, positions: list[int] | None,
                layers: Sequence[int] | None = None) -> list[Tensor]:
    """Head mean of |A| of each mLSTM layer (:mod:`interp.attention.mlstm`, exact implicit attention)."""
    return mlstm.mlstm_layer_maps(model, tokens, positions=positions, layers=None if layers is None else list(layers))


def _rwkv_maps(model: Any, tokens: Tensor, positions: list[int] | None,
               layers: Sequence[int] | None = None) -> list[Tensor]:
    """Channel-mean α of every RWKV layer (or of ``layers``): :func:`interp.attention.rwkv.rwkv_layer_maps`."""
    return rwkv.rwkv_layer_maps(model, tokens, positions=positions, layers=layers)


def _whole_model(method: str, absolute: bool = False) -> RowFn:
    def rows(model: Any, tokens: Tensor, *, positions: Sequence[int]) -> Tensor:
        r = interaction_rows(model, tokens, positions=list(positions), method=method).float()
        return r.abs() if absolute else r

    return rows


def _random_rows(model: Any, tokens: Tensor, *, positions: Sequence[int]) -> Tensor:
    g = torch.Generator().manual_seed(int(tokens.sum()) * 1009 + tokens.shape[1])
    return torch.rand(len(positions), tokens.shape[1], generator=g)


MAP_METHODS: dict[str, MapMethod] = {m.name: m for m in (
    MapMethod("attention", "attention (softmax, transformers)", ("transformer",), layer_maps=_attention_maps),
    MapMethod("hidden", "hidden attention (SSM)", ("ssm",), layer_maps=_hidden_maps),
    MapMethod("unified", "unified implicit attention (SSM)", ("ssm",), layer_maps=_unified_maps),
    MapMethod("delta", "implicit attention (Gated DeltaNet)", ("delta",), layer_maps=_delta_maps),
    MapMethod("kda", "implicit attention (Kimi Delta Attention)", ("kda",), layer_maps=_kda_maps),
    MapMethod("latim", "LaTIM (SSM)", ("ssm",)),
    MapMethod("mlstm", "implicit attention (mLSTM)", ("mlstm",), layer_maps=_mlstm_maps),
    MapMethod("rwkv", "RWKV time-decay attention", ("rwkv",), layer_maps=_rwkv_maps),
    MapMethod("rglru", "implicit attention (RG-LRU)", ("rglru",), layer_maps=_rglru_maps),
    MapMethod("lrp", "LRP (whole model)", KINDS, whole_model=True, rows=_whole_model("lrp")),
    MapMethod("grad_x_input", "gradient × input (whole model)", KINDS, whole_model=True,
              rows=_whole_model("grad_x_input")),
    # rows for the benchmarks only
    *(MapMethod(f"latim_{s}", f"LaTIM {s} score (SSM)", ("ssm",), layer_maps=_latim_maps(s), combine="sum",
                benchmark_only=True) for s in ("l1", "l2", "alti")),
    MapMethod("lrp_abs", "|LRP| (whole model)", KINDS, whole_model=True, rows=_whole_model("lrp", absolute=True),
              benchmark_only=True),
    MapMethod("random", "random scores (chance reference)", KINDS, rows=_random_rows, benchmark_only=True),
)}
METHODS: tuple[str, ...] = tuple(name for name, m in MAP_METHODS.items() if not m.benchmark_only)
LABELS: dict[str, str] = {name: MAP_METHODS[name].label for name in METHODS}
WHOLE_MODEL: tuple[str, ...] = tuple(name for name in METHODS if MAP_METHODS[name].whole_model)
ALIASES = {"hidden_last": "hidden@last", "attention_last": "attention@last"}
_DEFAULT = {"ssm": "hidden", "transformer": "attention", "delta": "delta", "rwkv": "rwkv", "rglru": "rglru",
            "kda": "kda", "mlstm": "mlstm"}


def default_method(model: Any, layer: int | None = None) -> str:
    """What ``method="auto"`` means for ``model`` (for ``layer`` of a hybrid): hidden attention for SSMs (SSM
    layers), softmax attention for transformers (attention layers)."""
    return _DEFAULT[model_kind(model, layer)]


def methods_for(model_or_kind: Any) -> tuple[str, ...]:
    """The map methods that apply to a model (or a kind of :data:`KINDS`), in registry order; on a hybrid those
    that apply to some layer (softmax attention and hidden attention on a Mamba + attention hybrid)."""
    kinds = {model_or_kind} if isinstance(model_or_kind, str) else set(mixing_kinds(model_or_kind))
    return tuple(name for name in METHODS if kinds & set(MAP_METHODS[name].kinds))


def layers_for(model: Any, method: str) -> list[int]:
    """The layers whose map ``method`` gives (every layer for a whole-model method or a pure model it applies to;
    on a hybrid the layers of the kinds it applies to, e.g. the attention layers for "attention")."""
    out = []
    for layer in range(int(model.cfg.n_layers)):
        try:
            check_applies(method, model, layer)
        except MethodNotApplicable:
            continue
        out.append(layer)
    return out


def get_method(name: str) -> MapMethod:
    """The registry entry of the map method ``name``; ValueError naming the map methods for any other name."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {('auto',) + METHODS}, got {name!r}")
    return MAP_METHODS[name]


def _is_parallel(model: Any, layer: int | None) -> bool:
    """Whether ``layer`` of a hybrid has softmax attention beside its SSM mixer ("parallel", Falcon-H1, or
    "shared_attention", Zamba2): kind "ssm" (hidden attention by default), and its softmax pattern is a map too
    (the transformer methods apply)."""
    types = getattr(getattr(model, "cfg", None), "layer_types", None)
    return layer is not None and isinstance(types, list) and -len(types) <= layer < len(types) \
        and types[layer] in ("parallel", "shared_attention")


def _check_kinds(method: MapMethod, model: Any, layer: int | None = None) -> MapMethod:
    kind = model_kind(model, None if method.whole_model else layer)
    if kind not in method.kinds and not (not method.whole_model and "transformer" in method.kinds
                                         and _is_parallel(model, layer)):
        wanted = " and ".join(_KIND_NAMES[k] for k in method.kinds)
        raise MethodNotApplicable(f"method={method.name!r} is for {wanted}; {_KIND_NAMES[kind]} use {_DEFAULT[kind]!r}")
    return method


def mixing_kinds(model: Any) -> list[str]:
    """The map kinds of the model's token-mixing steps (:func:`layer_methods`): every layer's kind on a pure model;
    on a hybrid each layer's steps (both kinds of a parallel or shared-attention layer, none of an MLP layer)."""
    types = getattr(model.cfg, "layer_types", None)
    if not isinstance(types, list):
        return layer_kinds(model)
    return [k for t in types for step in _MIXING_STEPS.get(t, [["ssm"]]) for k in step]


def _check_some_layer(method: MapMethod, model: Any) -> MapMethod:
    """``method`` if it applies to at least one token-mixing step of ``model`` (every layer of a pure model), else
    :class:`MethodNotApplicable` naming what it is for."""
    kinds = sorted(set(mixing_kinds(model)))
    if not isinstance(getattr(model.cfg, "layer_types", None), list):
        return _check_kinds(method, model)
    if set(kinds) & set(method.kinds):
        return method
    wanted = " and ".join(_KIND_NAMES[k] for k in method.kinds)
    raise MethodNotApplicable(f"method={method.name!r} is for {wanted}; this hybrid's layers are "
                              f"{', '.join(_KIND_NAMES[k] for k in kinds)} (cfg.layer_types): use "
                              f"{' or '.join(repr(_DEFAULT[k]) for k in kinds)}")


def check_applies(name: str, model: Any, layer: int | None = None) -> MapMethod:
    """The registry entry of the map method ``name`` if it applies to ``model`` (to ``layer`` of a hybrid), else
    :class:`MethodNotApplicable` naming what it is for and what this model uses instead."""
    return _check_kinds(get_method(name), model, layer)


# --------------------------------------------------------------------------------------------
# rows of a method spec (the benchmarks)
# --------------------------------------------------------------------------------------------
def register_method(name: str, rows: RowFn, *, label: str | None = None,
                    kinds: tuple[str, ...] = KINDS) -> MapMethod:
    """Add a benchmark method ``rows(model, tokens [1, L], *, positions) -> [len(positions), L]`` under ``name``
    (for models of ``kinds``). Map methods (:data:`METHODS`) cannot be replaced."""
    if "@" in name:
        raise ValueError("method names may not contain '@' (it selects the layer combination)")
    if name in METHODS or name in ALIASES:
        raise ValueError(f"{name!r} is a built-in method; register under another name")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"kinds must be among {KINDS}, got {bad}")
    MAP_METHODS[name] = MapMethod(name, label or name, tuple(kinds), rows=rows, benchmark_only=True)
    return MAP_METHODS[name]


def benchmark_methods() -> tuple[str, ...]:
    """Every method name :func:`resolve_method` takes without ``@`` (registry entries with rows, and aliases)."""
    names = [n for n, m in MAP_METHODS.items() if m.rows is not None or m.layer_maps is not None]
    return tuple(names + list(ALIASES))


def _entry(name: str) -> MapMethod:
    if name in MAP_METHODS and (MAP_METHODS[name].rows or MAP_METHODS[name].layer_maps):
        return MAP_METHODS[name]
    raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(benchmark_methods()))} "
                   "(layer-wise ones take @rollout|@sum|@last|@k)")


def _layerwise_rows(entry: MapMethod, how: str | int) -> RowFn:
    def rows(model: Any, tokens: Tensor, *, positions: Sequence[int]) -> Tensor:
        if how == "rollout":  # needs the full maps
            return combine_layers(layer_maps(model, tokens, method=entry.name), how=how)[list(positions)]
        return combine_layers(layer_maps(model, tokens, method=entry.name, positions=positions), how=how)

    rows.__name__ = f"{entry.name}@{how}"
    return rows


def _checked_rows(entry: MapMethod) -> RowFn:
    def rows(model: Any, tokens: Tensor, *, positions: Sequence[int]) -> Tensor:
        _check_kinds(entry, model)
        return entry.rows(model, tokens, positions=positions)

    rows.__name__ = entry.name
    return rows


def resolve_method(spec: str | RowFn) -> RowFn:
    """The row function of a method spec: a method name, ``<layer-wise name>@<rollout|sum|last|k>``, or a callable
    (returned as it is). KeyError for an unknown name, ValueError for an unknown combination."""
    if callable(spec):
        return spec
    name, _, how = ALIASES.get(spec, spec).partition("@")
    entry = _entry(name)
    if entry.layer_maps is None:
        if how:
            raise ValueError(f"{name!r} is not layer-wise: it takes no @{how}")
        return _checked_rows(entry)
    how = how or entry.combine
    if how not in LAYER_COMBINE and not how.lstrip("-").isdigit():
        raise ValueError(f"unknown layer combination {how!r} in {spec!r}; use one of {LAYER_COMBINE} or an index")
    return _layerwise_rows(entry, how)


def _one_sequence(model: Any, tokens: Any) -> Tensor:
    return as_tokens(model, tokens, one_sequence=True)


def method_rows(model: Any, tokens: Any, *, positions: PositionsLike, method: str | RowFn) -> Tensor:
    """Rows [len(positions), L] of ``method`` (a spec of :func:`resolve_method` or a row function) for one
    sequence ``tokens`` ([L] or [1, L]; a batch is refused), on the CPU as float32.

    Raises :class:`MethodNotApplicable` when the method does not apply to the model, IndexError for a position
    outside the sequence."""
    tokens = _one_sequence(model, tokens)
    ps = Positions.parse(positions).indices(tokens.shape[1], name="positions")
    rows = resolve_method(method)(model, tokens, positions=ps)
    if tuple(rows.shape) != (len(ps), tokens.shape[1]):
        raise ValueError(f"method {method!r} returned {tuple(rows.shape)}, expected {(len(ps), tokens.shape[1])}")
    return rows.detach().float().cpu()


def layer_maps(model: Any, tokens: Any, *, method: str, positions: PositionsLike | None = None) -> list[Tensor]:
    """The per-layer maps [L, L] of the layer-wise ``method`` for one sequence ``tokens`` ([L] or [1, L]), or only
    the query rows ``positions`` of each ([len(positions), L], computed row-wise where the method allows). On a
    hybrid, one map per token-mixing step of :func:`layer_methods` (MLP-only layers have none, a Zamba2
    shared-attention layer two), so ``@k`` picks step k.

    Raises KeyError for a method that is not layer-wise, :class:`MethodNotApplicable` for one that does not apply."""
    entry = MAP_METHODS.get(method)
    if entry is None or entry.layer_maps is None:
        known = [n for n, m in MAP_METHODS.items() if m.layer_maps is not None]
        raise KeyError(f"{method!r} is not a layer-wise method; known: {', '.join(known)}")
    _check_some_layer(entry, model)
    tokens = _one_sequence(model, tokens)
    ps = None if positions is None else Positions.parse(positions).indices(tokens.shape[1], name="positions")
    if not isinstance(getattr(model.cfg, "layer_types", None), list):
        return entry.layer_maps(model, tokens, ps)
    # a hybrid: one map per token-mixing step (layer_methods), each the sum of its methods' maps
    steps = layer_methods(model, method)
    by_method: dict[str, list[int]] = {}
    for layer, names in steps:
        for name in names:
            by_method.setdefault(name, []).append(layer)
    maps = {}
    for name, layers in by_method.items():
        unique = sorted(set(layers))
        maps.update({(name, layer): m for layer, m in zip(unique, MAP_METHODS[name].layer_maps(model, tokens, ps,
                                                                                               unique))})
    return [sum(maps[name, layer] for name in names) for layer, names in steps]


def combine_layers(maps: Sequence[Tensor], *, how: str | int = "rollout") -> Tensor:
    """Combine per-layer maps [L, L] into one: "rollout", "sum", "last" or a layer index.

    "sum", "last" and an index act row by row, so they also take the query rows [R, L] of each layer;
    "rollout" needs the full square maps.
    """
    if not len(maps):
        raise ValueError("no layer maps to combine")
    if isinstance(how, int) or (isinstance(how, str) and how.lstrip("-").isdigit()):
        return maps[int(how)].float()
    if how == "last":
        return maps[-1].float()
    if how == "sum":
        return torch.stack([normalize(m.float(), "row") for m in maps]).mean(0)
    if how == "rollout":
        return rollout([m.float().abs() for m in maps])
    raise ValueError(f"layer combination must be one of {LAYER_COMBINE} or a layer index, got {how!r}")
