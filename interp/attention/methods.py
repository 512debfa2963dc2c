"""The one registry of interaction-map methods: their names, labels, and the models they apply to.

    METHODS                          # ("attention", "hidden", "unified", "latim", "lrp", "grad_x_input")
    MAP_METHODS["latim"].label       # "LaTIM (SSM)"
    methods_for(model)               # the methods that apply to this model, in registry order
    default_method(model)            # "hidden" for state-space models, "attention" for transformers
    check_applies("unified", model)  # MethodNotApplicable unless the method applies to the model

:func:`interp.attention.interaction_map` computes them, the evaluation harness (:mod:`interp.attention.evaluate`)
builds its benchmark methods on them, and the app lists them (its "source" menu). A method is per layer (a
[b, L, L] map of one layer) or whole-model (an attribution through every layer: ``layer`` is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interp.hooks import is_ssm

__all__ = [
    "MapMethod", "MAP_METHODS", "METHODS", "LABELS", "WHOLE_MODEL", "KINDS", "MethodNotApplicable",
    "model_kind", "default_method", "methods_for", "get_method", "check_applies",
]

KINDS = ("ssm", "transformer")
_KIND_NAMES = {"ssm": "state-space models", "transformer": "transformers"}


class MethodNotApplicable(ValueError):
    """The method does not apply to this kind of model (e.g. softmax attention on a state-space model)."""


@dataclass(frozen=True)
class MapMethod:
    """One interaction-map method. ``kinds``: the model kinds it applies to (of :data:`KINDS`);
    ``whole_model``: an attribution through the whole model (``layer`` ignored) rather than one layer's map."""

    name: str
    label: str
    kinds: tuple[str, ...]
    whole_model: bool = False

    def applies_to(self, model: Any) -> bool:
        return model_kind(model) in self.kinds


MAP_METHODS: dict[str, MapMethod] = {m.name: m for m in (
    MapMethod("attention", "attention (softmax, transformers)", ("transformer",)),
    MapMethod("hidden", "hidden attention (SSM)", ("ssm",)),
    MapMethod("unified", "unified implicit attention (SSM)", ("ssm",)),
    MapMethod("latim", "LaTIM (SSM)", ("ssm",)),
    MapMethod("lrp", "LRP (whole model)", KINDS, whole_model=True),
    MapMethod("grad_x_input", "gradient × input (whole model)", KINDS, whole_model=True),
)}
METHODS: tuple[str, ...] = tuple(MAP_METHODS)
LABELS: dict[str, str] = {name: m.label for name, m in MAP_METHODS.items()}
WHOLE_MODEL: tuple[str, ...] = tuple(name for name, m in MAP_METHODS.items() if m.whole_model)
_DEFAULT = {"ssm": "hidden", "transformer": "attention"}


def model_kind(model: Any) -> str:
    """"ssm" (Mamba-1 / Mamba-2) or "transformer"."""
    return "ssm" if is_ssm(model) else "transformer"


def default_method(model: Any) -> str:
    """What ``method="auto"`` means for ``model``: hidden attention for SSMs, softmax attention for transformers."""
    return _DEFAULT[model_kind(model)]


def methods_for(model_or_kind: Any) -> tuple[str, ...]:
    """The methods that apply to a model (or a kind of :data:`KINDS`), in registry order."""
    kind = model_or_kind if isinstance(model_or_kind, str) else model_kind(model_or_kind)
    return tuple(name for name, m in MAP_METHODS.items() if kind in m.kinds)


def get_method(name: str) -> MapMethod:
    """The registry entry of ``name``; ValueError naming the methods for an unknown one."""
    try:
        return MAP_METHODS[name]
    except KeyError:
        raise ValueError(f"method must be one of {('auto',) + METHODS}, got {name!r}") from None


def check_applies(name: str, model: Any) -> MapMethod:
    """The registry entry of ``name`` if it applies to ``model``, else :class:`MethodNotApplicable` naming what
    it is for and what this model uses instead."""
    method = get_method(name)
    kind = model_kind(model)
    if kind not in method.kinds:
        wanted = " and ".join(_KIND_NAMES[k] for k in method.kinds)
        raise MethodNotApplicable(f"method={name!r} is for {wanted}; {_KIND_NAMES[kind]} use {_DEFAULT[kind]!r}")
    return method
