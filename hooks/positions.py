"""Which positions an edit or an analysis touches: one :class:`Positions` type for hooks, steering, SAE splicing
and interaction maps.

Hooks see the absolute positions of the current forward in ``hook.ctx["positions"]``
(:func:`interp.hooks.hook_points.absolute_positions`: the whole prompt in a full forward or a prefill, one new
position per decoding step of ``model.generate``, SSM recurrent decoding included), so one spec covers both::

    Positions.parse("all")            every position of every forward (prompt and each generated token)
    Positions.parse("last")           the last position of each forward: the prompt's last token, then
                                      every generated token while decoding
    Positions.parse([15, 16])         these absolute positions (negative: counted from the end of each forward)
    Positions.parse(slice(17, None))  absolute positions >= 17 (e.g. every generated token after a 17-token prompt)

An analysis over a fixed sequence of ``length`` tokens (interaction-map rows, LRP rows) reads the spec with
:meth:`Positions.indices`, which checks the bounds: ``Positions.parse([3, -1]).indices(10) == [3, 9]``, and
``Positions.parse([12]).indices(10)`` raises an ``IndexError`` naming the position and the length.

The index convention of every public function (positions, rows, layers, channels / heads, codes): an index into
n things is 0..n-1, or -n..-1 counted from the end (-1 the last); anything else raises
:class:`IndexOutOfRange` (an ``IndexError``) naming the argument, its value and the valid range, never wraps.
One home for the check: :func:`check_index` / :func:`check_indices` / :func:`check_layer`::

    check_index(-1, 12, "position")        # 11
    check_indices([0, -2], 12, "rows")     # [0, 10]
    check_layer(model, -1)                 # model.cfg.n_layers - 1
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["Positions", "PositionsLike", "position_mask", "IndexOutOfRange", "check_index", "check_indices",
           "check_layer"]

#: what every ``positions=`` argument accepts
PositionsLike = Union["Positions", str, int, Sequence[int], slice, Tensor, None]


class IndexOutOfRange(IndexError, ValueError):
    """An index argument outside its valid range. An ``IndexError``; also a ``ValueError`` (a bad argument value),
    so code that reports bad arguments by catching ``ValueError`` keeps doing so."""


def _valid(size: int) -> str:
    return f"0..{size - 1} or -{size}..-1 from the end" if size > 0 else "none: there is nothing to index"


def check_index(value: Any, size: int, name: str, *, of: str = "") -> int:
    """``value`` as a non-negative index into ``size`` things: 0..size-1 as it is, -size..-1 counted from the end.

    Raises :class:`IndexOutOfRange` naming ``name``, the value and the valid range (``of`` says what is indexed,
    e.g. "a sequence of 12 tokens"), and ``TypeError`` for a value that is not an integer (a bool included).
    """
    try:
        if isinstance(value, bool) or (isinstance(value, Tensor) and value.dtype == torch.bool):
            raise TypeError
        value = operator.index(value)  # ints, numpy integers, one-element integer tensors
    except TypeError:
        raise TypeError(f"{name} must be an integer index, got {value!r} ({type(value).__name__})") from None
    if not -size <= value < size:
        where = f" for {of}" if of else f" for size {size}"
        raise IndexOutOfRange(f"{name}={value} is out of range{where} (valid: {_valid(size)})")
    return value + size if value < 0 else value


def check_indices(values: Any, size: int, name: str, *, of: str = "") -> list[int]:
    """Each of ``values`` (an int, a sequence or a 1-d integer tensor) through :func:`check_index`; the whole
    list is named in the error. An empty list raises ``ValueError``."""
    if isinstance(values, Tensor):
        values = values.reshape(-1).tolist()
    vals = list(values) if isinstance(values, Iterable) and not isinstance(values, str) else [values]
    if not vals:
        raise ValueError(f"{name} is empty: give at least one index (valid: {_valid(size)})")
    out = []
    for v in vals:
        try:
            out.append(check_index(v, size, name, of=of))
        except IndexOutOfRange:
            where = f" for {of}" if of else f" for size {size}"
            bad = [u for u in vals if not -size <= operator.index(u) < size]
            raise IndexOutOfRange(f"{name}={vals}: {bad} out of range{where} (valid: {_valid(size)})") from None
    return out


def check_layer(model: Any, layer: Any, name: str = "layer") -> int:
    """``layer`` checked against ``model.cfg.n_layers`` (-1 the last layer): the non-negative layer index."""
    n = int(model.cfg.n_layers)
    return check_index(layer, n, name, of=f"a {n}-layer model's layers")


def position_mask(positions: Tensor, wanted: Iterable[int] | Tensor) -> Tensor:
    """bool [L]: True where ``positions`` [L] (absolute, see :func:`absolute_positions`) is one of ``wanted``.

    A negative wanted p counts from the end of this forward: end + p with end = max(positions) + 1 (so -1 is
    the last position of a prompt, and of each decoding step). An empty ``wanted`` selects nothing.
    """
    w = wanted if isinstance(wanted, Tensor) else torch.tensor(list(wanted), dtype=torch.long)
    w = w.to(device=positions.device, dtype=torch.long)
    end = int(positions.max()) + 1 if positions.numel() else 0
    return torch.isin(positions, torch.where(w < 0, w + end, w))


@dataclass(frozen=True)
class Positions:
    """A position spec: ``kind`` is "all", "last", "list" (``values``) or "range" (``start`` <= p < ``stop``)."""

    kind: str = "all"
    values: tuple[int, ...] = ()
    start: int | None = None
    stop: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("all", "last", "list", "range"):
            raise ValueError(f"Positions kind must be 'all', 'last', 'list' or 'range', got {self.kind!r}")
        if self.kind == "list" and not self.values:
            raise ValueError("an empty position list never fires: give at least one position")

    @classmethod
    def parse(cls, spec: PositionsLike) -> "Positions":
        """"all" / None, "last", an int, a list of ints, a slice (step 1), or a Positions."""
        if isinstance(spec, Positions):
            return spec
        if spec is None or (isinstance(spec, str) and spec == "all"):
            return cls("all")
        if isinstance(spec, str):
            if spec == "last":
                return cls("last")
            raise ValueError(f"positions must be 'all', 'last', an int, a list of ints or a slice; got {spec!r}")
        if isinstance(spec, slice):
            if spec.step not in (None, 1):
                raise ValueError(f"a position slice must have step 1, got {spec}")
            return cls("range", start=spec.start, stop=spec.stop)
        if isinstance(spec, bool):
            raise TypeError(f"positions must be 'all', 'last', an int, a list of ints or a slice; got {spec!r}")
        if isinstance(spec, int):
            return cls("list", (int(spec),))
        if isinstance(spec, Tensor):
            if spec.dtype.is_floating_point or spec.dtype == torch.bool or spec.dim() > 1:
                raise TypeError(f"positions as a tensor must be 0-d or 1-d integers, got {spec.dtype} "
                                f"{tuple(spec.shape)}")
            return cls("list", tuple(int(p) for p in spec.reshape(-1).tolist()))
        if isinstance(spec, Sequence):
            bad = [p for p in spec if isinstance(p, bool) or not isinstance(p, int)]
            if bad:
                raise TypeError(f"positions must be ints, got {bad[0]!r} ({type(bad[0]).__name__})")
            return cls("list", tuple(int(p) for p in spec))
        raise TypeError(f"cannot read positions from {type(spec).__name__}: {spec!r}")

    def mask(self, positions: Tensor) -> Tensor:
        """Absolute positions of a forward [L] (:func:`interp.hooks.hook_points.absolute_positions`) -> bool [L],
        True where this spec edits (a list: :func:`position_mask`)."""
        L = positions.shape[0]
        if self.kind == "all":
            return torch.ones(L, dtype=torch.bool, device=positions.device)
        if self.kind == "last":
            m = torch.zeros(L, dtype=torch.bool, device=positions.device)
            if L:
                m[-1] = True
            return m
        if self.kind == "range":
            m = torch.ones(L, dtype=torch.bool, device=positions.device)
            if self.start is not None:
                m &= positions >= self.start
            if self.stop is not None:
                m &= positions < self.stop
            return m
        return position_mask(positions, self.values)

    def indices(self, length: int, name: str = "positions") -> list[int]:
        """The positions of one sequence of ``length`` tokens this spec selects, absolute and in order.

        Raises ``IndexError`` (naming the argument ``name``) for a listed position outside
        ``-length <= p < length``, and for a range that selects nothing.
        """
        if self.kind == "list":
            bad = [p for p in self.values if not -length <= p < length]
            if bad:
                raise IndexOutOfRange(f"{name}={list(self.values)}: {bad} outside a sequence of {length} tokens "
                                 f"(valid: 0..{length - 1}, or -{length}..-1 from the end)")
            return [p % length for p in self.values]
        out = self.mask(torch.arange(length)).nonzero()[:, 0].tolist()
        if not out:
            raise IndexOutOfRange(f"{name}={self}: selects no position of a sequence of {length} tokens")
        return out

    def first(self, length: int) -> int | None:
        """The first position edited in a single forward over positions 0..length-1 (None: none)."""
        m = self.mask(torch.arange(length))
        idx = m.nonzero()
        return int(idx[0]) if len(idx) else None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "values": list(self.values), "start": self.start, "stop": self.stop}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Positions":
        return cls(d["kind"], tuple(d.get("values", ())), d.get("start"), d.get("stop"))
