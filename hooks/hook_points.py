"""The hook primitive: TransformerLens's ``HookPoint`` plus a shape check; helpers on hook names (look-up with
suggestions, :func:`layer_of`) and the absolute positions hooks see (:func:`absolute_positions`; which of them an
edit selects is :mod:`interp.hooks.positions`).

Every model in :mod:`interp.hooks` is built from :class:`HookPoint` (a TransformerLens ``HookPoint``
subclass, so ``run_with_hooks``, ``run_with_cache``, ``hooks()`` and nnsight tracing see it as
usual). The one addition: a hook that returns a tensor of the wrong shape fails at once, naming the
hook, instead of breaking three layers later.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from transformer_lens.hook_points import HookPoint as _TLHookPoint


#: hooks that fire before the first block (layer -1 for :func:`layer_of`)
PRE_BLOCK_HOOKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


def layer_of(hook_name: str) -> int | None:
    """The block a hook name belongs to: ``"blocks.3.ssm.hook_dt"`` -> 3.

    Any name under ``blocks.{i}.`` gives i (hooks attached below a block hook too, e.g.
    ``blocks.0.ssm.hook_out.codebook.hook_codes`` -> 0); the hooks before the first block
    (:data:`PRE_BLOCK_HOOKS`: ``hook_embed``, ``hook_pos_embed``, ``hook_tokens``) give -1; every other name
    (after the last block, e.g. ``ln_final.hook_normalized``, or unknown) gives None. So a forward with
    ``stop_at_layer=k`` fires exactly the hooks whose layer is not None and < k.
    """
    parts = hook_name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return -1 if hook_name in PRE_BLOCK_HOOKS else None


def residual_hooks(model: Any, sides: Iterable[str] = ("pre", "post")) -> list[str]:
    """The residual stream's hook names in forward order: ``hook_embed``, then each block's ``hook_resid_{side}``
    for ``sides`` ("pre", "mid", "post"), those the model has."""
    sides = tuple(sides)
    names = ["hook_embed"] + [f"blocks.{i}.hook_resid_{s}" for i in range(model.cfg.n_layers) for s in sides]
    return [n for n in names if n in model.hook_dict]


def absolute_positions(source: Any, length: int, device: torch.device | str | None = None) -> Tensor:
    """The absolute positions (int64 [length]) of the position axis a hook sees in the current forward.

    Models put them in ``hook.ctx["positions"]`` before every forward: 0..L-1 for a full forward or a prefill,
    offset + 0..L-1 when continuing from a state or a key/value cache, the one new position per decoding step.
    ``source`` is the hook (anything with a ``ctx`` dict), or that positions tensor itself, or None. Without
    positions of ``length`` entries (a hook function called by hand, a sliced activation) the answer is
    0..length-1. On ``device`` if given.
    """
    positions = source
    if source is not None and not isinstance(source, Tensor):
        positions = (getattr(source, "ctx", None) or {}).get("positions")
    if positions is None or positions.numel() != length:
        return torch.arange(length, device=device)
    return positions if device is None else positions.to(device)



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


#: the attribute nnsight (0.8) keeps its per-module controller state under (``nnsight.intervention.source.STATE``)
_NNSIGHT_STATE = "__nnsight__"


def hook_observed(hook: HookPoint, force: bool = False) -> bool:
    """Whether anything will see ``hook`` in this forward, so that a forward may skip materialising an activation
    nobody looks at (the SSM state [b, L, H, P, N], an attention pattern [b, heads, L, L]).

    True when: a TransformerLens forward or backward hook is on it; ``force`` (a module's switch for tools that
    instrument modules in ways we cannot detect, e.g. ``SSMMixer.fire_state_hook``); or a running
    nnsight trace (0.8: nnsight installs a controller as the module's ``forward`` and registers no torch hooks)
    in which a worker is parked on, or a ``tracer.cache()`` observes, one of the hook's locations. A trace visit
    that nobody looks at is counted as nnsight counts it (``interleaver.counts``), so the occurrence numbers of
    later visits (``tracer.iter`` over generation steps) stay those of a forward that fired every time.
    """
    if hook._forward_hooks or hook._backward_hooks or force:
        return True
    controller = hook.__dict__.get(_NNSIGHT_STATE)
    if controller is None:
        return False
    try:
        interleaver, path, locations = controller.active()
        if interleaver is None:  # no trace running
            return False
        parked, observers, counts = interleaver.parked, interleaver.observers, interleaver.counts
    except (AttributeError, TypeError, ValueError):  # another nnsight version: fire (correct, only slower)
        return True
    prefix = f"{path}."
    if any(p.startswith(prefix) for p in (*parked, *observers) if isinstance(p, str)):
        return True
    for location in locations:  # nobody looks: count the visit, as Interleaver.handle's common path does
        counts[location] = counts.get(location, 0) + 1
    return False
