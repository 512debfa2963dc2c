"""The sites a model offers the patching sweeps: every hook of a block, by the short name the sweeps take.

    from interp.patching import patch_sites
    patch_sites(model)   # tokfsm-mamba: ['resid_pre', 'resid_post', 'mixer_out', 'state', 'B', 'C', 'conv', 'dt', ...]

A site is a hook of a block that fires with the model's config (a transformer computes ``attn.hook_result`` only
with ``cfg.use_attn_result``: ``model.hook_enabled``); on a hybrid, a hook of some kinds of layer only (``state`` on
its SSM layers, ``attn_out`` on its attention layers: a sweep runs on the layers that have it). It is named by the
short name (``"dt"`` for ``blocks.{layer}.ssm.hook_dt``) when that name resolves to it, else by its path inside the
block (``"ln1.hook_scale"``). The residual stream comes first, then the block outputs and the recurrent state, then
the rest in the model's hook order.
"""

from __future__ import annotations

from typing import Any

from interp.hooks.hook_points import UnknownHookError

from .activation import hook_template

__all__ = ["patch_sites"]

#: shown first, in this order, where the model has them
FIRST = ("resid_pre", "resid_mid", "resid_post", "mixer_out", "attn_out", "mlp_out", "state")


def _resolves(model: Any, short: str, inside: str) -> bool:
    """Whether ``short`` names ``blocks.{layer}.<inside>`` (a hook some layers of a hybrid lack)."""
    try:
        return hook_template(model, short) == "blocks.{layer}." + inside
    except UnknownHookError:
        return False


def patch_sites(model: Any) -> list[str]:
    """The ``hook`` values :func:`~interp.patching.patch_sweep` takes on ``model``, one per hook of a block (of
    any layer: a sweep's rows default to the layers that have it), short names where they are unambiguous;
    :data:`FIRST` leads."""
    n_layers = model.cfg.n_layers
    names = model.hook_dict
    enabled = getattr(model, "hook_enabled", lambda name: True)
    sites, seen = [], set()
    for name in names:
        layer, _, inside = name.removeprefix("blocks.").partition(".")
        if not name.startswith("blocks.") or not layer.isdigit() or inside in seen:
            continue
        seen.add(inside)
        if not int(layer) < n_layers or not enabled(name):
            continue
        short = inside.rpartition(".")[2].removeprefix("hook_")
        sites.append(short if _resolves(model, short, inside) else inside)
    first = [s for s in FIRST if s in sites]
    return first + [s for s in sites if s not in first]
