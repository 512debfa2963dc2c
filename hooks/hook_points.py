"""The hook primitive: TransformerLens's ``HookPoint`` plus a shape check, and name look-up helpers.

Every model in :mod:`interp.hooks` is built from :class:`HookPoint` (a TransformerLens ``HookPoint``
subclass, so ``run_with_hooks``, ``run_with_cache``, ``hooks()`` and nnsight tracing see it as
usual). The one addition: a hook that returns a tensor of the wrong shape fails at once, naming the
hook, instead of breaking three layers later.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

from torch import Tensor
from transformer_lens.hook_points import HookPoint as _TLHookPoint


class HookShapeError(ValueError):
    """A hook returned a tensor whose shape differs from the activation it replaced."""


class UnknownHookError(KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class HookPoint(_TLHookPoint):
    """Identity module that hook functions attach to; checks that edits keep the shape.

    Always called through ``nn.Module.__call__`` so tools that instrument modules (nnsight) see it.
    """

    def __call__(self, x: Tensor) -> Tensor:
        out = super().__call__(x)
        if out is not x and isinstance(out, Tensor) and out.shape != x.shape:
            raise HookShapeError(
                f"hook on {self.name!r} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}; "
                "a hook must return None or a tensor of the activation's shape"
            )
        return out


def suggest(name: str, valid: Iterable[str], n: int = 5, margin: float = 1.0) -> list[str]:
    """The valid names closest to ``name`` by string similarity (hook names, model names), best first: at most
    ``n``, and only those whose similarity is within ``margin`` of the best one's."""
    close = difflib.get_close_matches(name, list(valid), n=n, cutoff=0.4)
    score = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in close}
    return [c for c in close if score[c] >= max(score.values()) - margin]


def check_hook_names(names: Iterable[str | Callable], valid: dict) -> None:
    """Raise :class:`UnknownHookError` for the first string name not in ``valid``, with suggestions."""
    for name in names:
        if isinstance(name, str) and name not in valid:
            close = suggest(name, valid)
            hint = f" Closest valid names: {close}." if close else ""
            raise UnknownHookError(
                f"unknown hook name {name!r}.{hint} List them all with `model.hook_dict.keys()`."
            )
