"""Insert codebook bottlenecks into any hookable model at named hook points, and take them out again.

    books = attach(model, {"blocks.0.ssm.hook_out": CodebookLayer(cfg), ...})   # or make_codebooks(model, sites)
    model(tokens)                           # every forward and generation step now goes through the codebooks
    model.hook_dict["blocks.0.ssm.hook_out.codebook.hook_codes"]                # the codes, as a hook point
    detach(model)                           # the model is as before

A codebook becomes a child module of the hook point it replaces (so its codes are model parameters, move with
``model.to``, and its own hook points get names ``<hook>.codebook.hook_codes`` etc. in ``model.hook_dict``),
and a permanent hook, run before any other hook at that point, swaps the activation for its codebook output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from interp.hooks.config import is_ssm
from interp.hooks.hook_points import check_hook_names

from .config import CodebookConfig
from .layer import CodebookLayer

__all__ = ["attach", "detach", "attached", "mixer_output_sites", "make_codebooks", "CHILD"]

CHILD = "codebook"


def _apply(act: torch.Tensor, hook: Any) -> torch.Tensor:
    return getattr(hook, CHILD)(act)


def attached(model: Any) -> dict[str, CodebookLayer]:
    """{site: codebook} for every codebook inserted in ``model``."""
    return {name: getattr(hp, CHILD) for name, hp in model.hook_dict.items()
            if isinstance(getattr(hp, CHILD, None), CodebookLayer)}


def attach(model: Any, codebooks: Mapping[str, CodebookLayer]) -> dict[str, CodebookLayer]:
    """Insert ``codebooks`` {hook name: layer} into ``model`` (moved to its device). Returns them."""
    check_hook_names(list(codebooks), model.hook_dict)
    already = sorted(set(codebooks) & set(attached(model)))
    if already:
        raise ValueError(f"codebooks already attached at {already}; detach(model, {already}) first")
    device = next(model.parameters()).device
    for name, layer in codebooks.items():
        if not isinstance(layer, CodebookLayer):
            raise TypeError(f"{name}: expected a CodebookLayer, got {type(layer).__name__}")
        hp = model.hook_dict[name]
        hp.add_module(CHILD, layer.to(device))
        before = {id(h) for h in hp.fwd_hooks}
        hp.add_hook(_apply, dir="fwd", is_permanent=True, prepend=True)
        layer._handle = next(h for h in hp.fwd_hooks if id(h) not in before)
    model.setup()
    return dict(codebooks)


def detach(model: Any, sites: Iterable[str] | None = None) -> dict[str, CodebookLayer]:
    """Remove the codebooks at ``sites`` (default: all); returns the removed layers."""
    books = attached(model)
    sites = list(books) if sites is None else list(sites)
    missing = [s for s in sites if s not in books]
    if missing:
        raise KeyError(f"no codebook attached at {missing}; attached: {sorted(books)}")
    for s in sites:
        hp, layer = model.hook_dict[s], books[s]
        handle = getattr(layer, "_handle", None)
        if handle is not None:
            handle.hook.remove()
            hp.fwd_hooks = [h for h in hp.fwd_hooks if h is not handle]
            layer._handle = None
        del hp._modules[CHILD]
    model.setup()
    return {s: books[s] for s in sites}


def mixer_output_sites(model: Any) -> list[str]:
    """The sequence-mixer output of every layer: ``blocks.L.ssm.hook_out`` (SSMs) or ``blocks.L.hook_attn_out``
    (transformers), the sites of the codebook-features paper's attention codebooks."""
    n = model.cfg.n_layers
    return [f"blocks.{i}.ssm.hook_out" if is_ssm(model) else f"blocks.{i}.hook_attn_out" for i in range(n)]


def _site_shape(model: Any, site: str) -> tuple[int, ...]:
    shapes = {}
    try:
        shapes = model.hook_shapes(1, 2)
    except (NotImplementedError, AttributeError, TypeError):
        pass
    if site not in shapes:
        tokens = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=[site])
        return tuple(cache[site].shape)
    return tuple(shapes[site])


def make_codebooks(model: Any, sites: Iterable[str], **config: Any) -> dict[str, CodebookLayer]:
    """A fresh codebook per site, its width (and head axis: one codebook per head for hooks shaped
    [batch, pos, head, d_head]) read from the model; ``config``: other :class:`CodebookConfig` fields."""
    sites = list(sites)
    check_hook_names(sites, model.hook_dict)
    out = {}
    for s in sites:
        shape = _site_shape(model, s)
        if len(shape) == 3:
            cfg = CodebookConfig(d=shape[-1], **config)
        elif len(shape) == 4:
            cfg = CodebookConfig(d=shape[-1], n_groups=shape[-2], **config)
        else:
            raise ValueError(f"{s}: activations of shape {shape} are not [batch, pos, d] or [batch, pos, head, d]")
        out[s] = CodebookLayer(cfg)
    return out
