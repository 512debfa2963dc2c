"""Hook shapes found by running the model's own forward on the meta device: no table to keep in step.

A *twin* is a copy of a model built on the ``meta`` device from its config (parameters with shapes and no
storage, so a forward costs no memory and does no arithmetic). :func:`symbolic_hook_shapes` runs each twin
on two token batches, [2, 3] and [5, 7], with a hook on every hook point recording the shape it sees, and
reads every axis back as symbolic::

    "b"   the axis followed the batch (2 -> 5)
    "L"   the axis followed the positions (3 -> 7)
    int   the axis kept its size (d_model, n_heads, ...)

An axis that does neither (a flattened b*L, a size that depends on L in another way) raises, so the shapes
are exact or loud. :func:`concrete_shapes` fills in a batch and a length. :func:`meta_shapes` memoises the
result per model class and config; the models' ``hook_shapes`` (for the cache estimate) read it through
:func:`hook_shapes_by_meta_forward`, and the transformer's ``hook_enabled`` reads which hooks its config fires.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Union

import torch

#: (batch, positions) of the two meta forwards; the four sizes differ, so every axis reads back unambiguously
PROBES: tuple[tuple[int, int], tuple[int, int]] = ((2, 3), (5, 7))

Dim = Union[int, str]  # a fixed size, or "b" (batch) / "L" (positions)


@dataclass(frozen=True)
class MetaShapes:
    """What the meta forwards of a model's twins found.

    shapes: symbolic shape of every hook that fires in a forward of some twin (the first twin it fires in).
    fires:  the hooks that fire in a forward of the first twin (the model's own config).
    names:  every hook point of the first twin (the model's own hooks, without modules inserted later).
    """

    shapes: dict[str, tuple[Dim, ...]]
    fires: frozenset[str]
    names: frozenset[str]


def record_hook_shapes(model: Any, batch: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    """Run ``model`` on a [batch, seq_len] batch of token 0 with a hook on every hook point; the shape of each
    activation that fired (a hook that fires several times keeps its last shape, as ``run_with_cache`` does).
    Tokens are made on the CPU: the models check ids there and move them to their own device (``meta`` for a
    twin)."""
    seen: dict[str, tuple[int, ...]] = {}

    def record(x: torch.Tensor, hook: Any) -> None:
        seen[hook.name] = tuple(x.shape)

    tokens = torch.zeros(batch, seq_len, dtype=torch.long)
    with torch.no_grad(), model.hooks(fwd_hooks=[(lambda name: True, record)]):
        model(tokens)
    return seen


def symbolic_hook_shapes(twins: Iterable[Any]) -> MetaShapes:
    """Symbolic shape of every hook that fires in a forward of one of ``twins`` (models on the meta device).
    A hook takes its shape from the first twin it fires in, so list the model's own config first and twins
    that switch on hooks the config leaves off after it."""
    shapes: dict[str, tuple[Dim, ...]] = {}
    fires: frozenset[str] | None = None
    names: frozenset[str] = frozenset()
    for twin in twins:
        runs = [record_hook_shapes(twin, b, L) for b, L in PROBES]
        if fires is None:
            fires, names = frozenset(runs[0]), frozenset(twin.hook_dict)
        for name in runs[0]:
            if name not in shapes:
                shapes[name] = _symbolic(name, runs[0][name], runs[1].get(name))
    return MetaShapes(shapes, fires or frozenset(), names)


def _symbolic(name: str, first: tuple[int, ...], second: tuple[int, ...] | None) -> tuple[Dim, ...]:
    (b1, L1), (b2, L2) = PROBES
    if second is None or len(first) != len(second):
        raise RuntimeError(f"hook {name!r} fired as {first} at [{b1}, {L1}] but as {second} at [{b2}, {L2}]: "
                           "its shape is not a function of batch and positions")
    dims: list[Dim] = []
    for x, y in zip(first, second):
        if x == y:
            dims.append(x)
        elif (x, y) == (b1, b2):
            dims.append("b")
        elif (x, y) == (L1, L2):
            dims.append("L")
        else:
            raise RuntimeError(f"hook {name!r}: an axis of size {x} at [{b1}, {L1}] and {y} at [{b2}, {L2}] is "
                               "neither the batch, the positions nor fixed")
    return tuple(dims)


def concrete_shapes(symbolic: dict[str, tuple[Dim, ...]], batch: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    """Symbolic shapes -> the shapes of a [batch, seq_len] forward."""
    size = {"b": batch, "L": seq_len}
    return {name: tuple(size[d] if isinstance(d, str) else d for d in dims) for name, dims in symbolic.items()}


def config_key(cfg: Any) -> str:
    """What the shapes depend on: every field of a dataclass config except its device (a memo key)."""
    fields = getattr(cfg, "__dataclass_fields__", None)
    if fields is None:
        return repr(cfg)
    return repr([(k, getattr(cfg, k, None)) for k in fields if k != "device"])


_MEMO: OrderedDict[tuple[type, str], MetaShapes] = OrderedDict()  # (model class, config key) -> shapes
_MEMO_SIZE = 64


def meta_shapes(model: Any, twins: Callable[[], Iterable[Any]]) -> MetaShapes:
    """:func:`symbolic_hook_shapes` of ``twins()``, found once per model class and config (memoised under
    :func:`config_key`, so a changed ``cfg`` switch takes effect and reloading a model costs nothing)."""
    key = (type(model), config_key(model.cfg))
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    found = _MEMO[key] = symbolic_hook_shapes(twins())
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return found


def hook_shapes_by_meta_forward(model: Any, twins: Callable[[], Iterable[Any]], batch: int,
                                seq_len: int) -> dict[str, tuple[int, ...]]:
    """``model``'s hook shapes for a [batch, seq_len] forward, from :func:`meta_shapes`."""
    return concrete_shapes(meta_shapes(model, twins).shapes, batch, seq_len)
