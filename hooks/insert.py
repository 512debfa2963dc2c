"""Insert a module into a hookable model at a hook point, so the model's activation there becomes ``module(act)``.

    insert(model, "blocks.1.hook_resid_post", sae)          # until remove(model, "blocks.1.hook_resid_post")
    with insert(model, "blocks.1.hook_resid_post", sae):    # or for one block only (removed even on an error)
        logits, cache = model.run_with_cache(tokens)
    cache["blocks.1.hook_resid_post.sae.hook_sae_acts_post"]  # the module's own hook points are the model's
    inserted(model)                                         # {hook: module}; inserted(model, kind=CodebookLayer)
    remove(model)                                           # every inserted module out: the model is as before

The module becomes a child of the :class:`~interp.hooks.hook_points.HookPoint` at ``hook``, named by its class
attribute ``insert_name`` ("sae" for :class:`interp.sae.SparseAutoencoder`) or ``name=``: so its parameters
are the model's (they move with ``model.to``) and, after ``model.setup()`` (done here), its own hook points
appear in ``model.hook_dict`` as ``<hook>.<name>.hook_...``. A permanent forward hook, run before any other hook
at that point, swaps the activation for the module's output (a full forward, a prefill and every generation step
alike); ``model.reset_hooks()`` keeps it, :func:`remove` takes it out.

The module maps an activation [batch, pos, ...] to one of the same shape. SAEs (:mod:`interp.sae`) and
codebooks (:mod:`interp.codebook`) are inserted this way. This module imports neither torch nor
TransformerLens, so ``interp.hooks`` can export it eagerly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["insert", "remove", "inserted", "Insertion"]

# attribute of a HookPoint holding (child name, TransformerLens handle of the permanent hook) while a module is in
_SLOT = "_interp_inserted"


def _swap(act: Any, hook: Any) -> Any:
    """The permanent hook: the activation becomes the inserted module's output."""
    name, _ = getattr(hook, _SLOT)
    return getattr(hook, name)(act)


def _device(model: Any) -> Any:
    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return None if p is None else p.device


def _names(hook: str | Sequence[str] | None, model: Any) -> list[str]:
    if hook is None:
        return list(inserted(model))
    return [hook] if isinstance(hook, str) else list(hook)


@dataclass(eq=False)
class Insertion:
    """A module inserted into ``model`` at ``hook`` (as child ``name`` of its hook point), returned by
    :func:`insert`. ``remove()`` takes it out; as a context manager it is taken out when the block ends (also when
    the block raises) and ``with`` gives the module."""

    model: Any
    hook: str
    module: Any
    name: str

    def __repr__(self) -> str:
        return f"Insertion({type(self.module).__name__} at {self.hook!r} as {self.name!r})"

    def remove(self) -> Any:
        """Take the module out (nothing happens if it already was). Returns the module."""
        hp = self.model.hook_dict.get(self.hook)
        slot = getattr(hp, _SLOT, None) if hp is not None else None
        if slot is not None and slot[0] == self.name and hp._modules.get(self.name) is self.module:
            remove(self.model, self.hook)
        return self.module

    def __enter__(self) -> Any:
        return self.module

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def insert(model: Any, hook: str, module: Any, *, name: str | None = None) -> Insertion:
    """Insert ``module`` (an ``nn.Module`` mapping the activation at ``hook`` to one of the same shape) into
    ``model`` at the hook point ``hook``, moved to the model's device.

    ``name``: the child's name, so its hook points are ``<hook>.<name>.hook_...`` (default: the module's class
    attribute ``insert_name``). Returns an :class:`Insertion` (``.remove()``, or use it as a context manager).
    Raises :class:`~interp.hooks.hook_points.UnknownHookError` for an unknown hook (closest names suggested) and
    ValueError if a module is already inserted at ``hook``.
    """
    from .hook_points import check_hook_names

    check_hook_names([hook], model.hook_dict)
    name = name or getattr(module, "insert_name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"insert(): cannot name the inserted {type(module).__name__}: give name='...' (a Python "
                         "identifier), or set a class attribute insert_name on the module's class")
    hp = model.hook_dict[hook]
    if getattr(hp, _SLOT, None) is not None:
        raise ValueError(f"a {type(hp._modules[getattr(hp, _SLOT)[0]]).__name__} is already inserted at {hook!r}; "
                         f"remove(model, {hook!r}) first")
    device = _device(model)
    hp.add_module(name, module if device is None else module.to(device))
    hp.add_hook(_swap, dir="fwd", is_permanent=True, prepend=True)
    setattr(hp, _SLOT, (name, hp.fwd_hooks[0]))  # prepend=True: the handle just added is the first
    model.setup()
    return Insertion(model, hook, module, name)


def remove(model: Any, hook: str | Sequence[str] | None = None) -> dict[str, Any]:
    """Take the modules inserted at ``hook`` (one name or several; default: every one) out of ``model``.
    Returns {hook: module}. KeyError, naming the hooks that have one, if ``hook`` has no inserted module."""
    present = inserted(model)
    names = _names(hook, model)
    missing = [n for n in names if n not in present]
    if missing:
        raise KeyError(f"no module inserted at {missing}; inserted at: {sorted(present)}")
    for n in names:
        hp = model.hook_dict[n]
        child, handle = getattr(hp, _SLOT)
        handle.hook.remove()
        hp.fwd_hooks = [h for h in hp.fwd_hooks if h is not handle]
        setattr(hp, _SLOT, None)
        del hp._modules[child]
    model.setup()
    for n in names:  # an inserted module that is a hooked root module names its hook points afresh
        setup = getattr(present[n], "setup", None)
        if callable(setup):
            setup()
    return {n: present[n] for n in names}


def inserted(model: Any, kind: type | tuple[type, ...] | None = None) -> dict[str, Any]:
    """{hook: module} for every module inserted in ``model`` (only those that are instances of ``kind``, if
    given), in hook order."""
    return dict(_inserted(model, kind))


def _inserted(model: Any, kind: type | tuple[type, ...] | None) -> Iterator[tuple[str, Any]]:
    for name, hp in model.hook_dict.items():
        slot = getattr(hp, _SLOT, None)
        if slot is not None:
            module = hp._modules[slot[0]]
            if kind is None or isinstance(module, kind):
                yield name, module
