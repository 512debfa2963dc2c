"""When an intervention fires: which positions of each forward it edits.

Hooks see the absolute positions of the current forward in ``hook.ctx["positions"]`` (the whole prompt in
a full forward or a prefill, one new position per decoding step of ``model.generate``, SSM recurrent
decoding included), so one spec covers both::

    Positions.parse("all")            every position of every forward (prompt and each generated token)
    Positions.parse("last")           the last position of each forward: the prompt's last token, then
                                      every generated token while decoding
    Positions.parse([15, 16])         these absolute positions (negative: counted from the end of each forward)
    Positions.parse(slice(17, None))  absolute positions >= 17 (e.g. every generated token after a 17-token prompt)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.hooks.hook_points import position_mask

__all__ = ["Positions", "PositionsLike"]

PositionsLike = Any  # "all" | "last" | int | Sequence[int] | slice | Positions


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
        if isinstance(spec, int):
            return cls("list", (int(spec),))
        if isinstance(spec, (Sequence, Tensor)):
            return cls("list", tuple(int(p) for p in (spec.tolist() if isinstance(spec, Tensor) else spec)))
        raise TypeError(f"cannot read positions from {type(spec).__name__}: {spec!r}")

    def mask(self, positions: Tensor) -> Tensor:
        """Absolute positions of a forward [L] (:func:`interp.hooks.hook_points.absolute_positions`) -> bool [L],
        True where this spec edits (a list: :func:`interp.hooks.hook_points.position_mask`)."""
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
