"""Insert codebook bottlenecks into any hookable model at named hook points, and take them out again.

    books = attach(model, {"blocks.0.ssm.hook_out": CodebookLayer(cfg), ...})   # or make_codebooks(model, hook=[...])
    model(tokens)                           # every forward and generation step now goes through the codebooks
    model.hook_dict["blocks.0.ssm.hook_out.codebook.hook_codes"]                # the codes, as a hook point
    detach(model)                           # the model is as before

A codebook is inserted with :func:`interp.hooks.insert` (child name ``"codebook"``), as an SAE is: it becomes a
child module of the hook point it replaces (so its codes are model parameters, move with ``model.to``, and its
own hook points get names ``<hook>.codebook.hook_codes`` etc. in ``model.hook_dict``), and a permanent hook, run
before any other hook at that point, swaps the activation for its codebook output. :func:`attach`,
:func:`detach` and :func:`attached` are that primitive for a {hook: CodebookLayer} mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from interp.hooks.hook_points import check_hook_names
from interp.hooks.insert import insert, inserted, remove

from .config import CodebookConfig
from .layer import CodebookLayer

__all__ = ["attach", "detach", "attached", "mixer_output_hooks", "make_codebooks", "CHILD"]

CHILD = "codebook"


def attached(model: Any) -> dict[str, CodebookLayer]:
    """{hook: codebook} for every codebook inserted in ``model``."""
    return inserted(model, kind=CodebookLayer)


def attach(model: Any, codebooks: Mapping[str, CodebookLayer]) -> dict[str, CodebookLayer]:
    """Insert ``codebooks`` {hook name: layer} into ``model`` (moved to its device). Returns them."""
    check_hook_names(list(codebooks), model.hook_dict)
    already = sorted(set(codebooks) & set(inserted(model)))
    if already:
        raise ValueError(f"codebooks already attached at {already}; detach(model, {already}) first")
    for name, layer in codebooks.items():
        if not isinstance(layer, CodebookLayer):
            raise TypeError(f"{name}: expected a CodebookLayer, got {type(layer).__name__}")
    for name, layer in codebooks.items():
        insert(model, name, layer, name=CHILD)
    return dict(codebooks)


def detach(model: Any, hook: str | Iterable[str] | None = None) -> dict[str, CodebookLayer]:
    """Remove the codebooks at ``hook`` (one hook name or several; default: all); returns the removed layers."""
    books = attached(model)
    hooks = list(books) if hook is None else [hook] if isinstance(hook, str) else list(hook)
    missing = [h for h in hooks if h not in books]
    if missing:
        raise KeyError(f"no codebook attached at {missing}; attached: {sorted(books)}")
    return remove(model, hooks)


def mixer_output_hooks(model: Any) -> list[str]:
    """The sequence-mixer output of every layer: ``blocks.L.ssm.hook_out`` (SSM layers) and / or
    ``blocks.L.hook_attn_out`` (attention layers), where the codebook-features paper puts its attention codebooks.
    Read from the model's hooks layer by layer: a hybrid gives each layer its own mixer's output (both on a layer
    with an SSM mixer beside attention, none on an MLP-only layer)."""
    names = model.hook_dict
    return [name for i in range(model.cfg.n_layers)
            for name in (f"blocks.{i}.ssm.hook_out", f"blocks.{i}.hook_attn_out") if name in names]


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


def make_codebooks(model: Any, *, hook: str | Iterable[str], **config: Any) -> dict[str, CodebookLayer]:
    """A fresh codebook per hook name in ``hook`` (one or several), its width (and head axis: one codebook per
    head for hooks shaped [batch, pos, head, d_head]) read from the model; ``config``: other
    :class:`CodebookConfig` fields. Returns {hook: layer}, for :func:`attach`."""
    sites = [hook] if isinstance(hook, str) else list(hook)
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
