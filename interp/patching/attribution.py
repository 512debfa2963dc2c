"""Attribution patching: the first-order (gradient) estimate of a whole activation-patching grid from one forward
and one backward pass.

    from interp.patching import attribution_sweep, LogitDiff
    approx = attribution_sweep(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong))  # resid_pre
    approx.values          # [n_layers, n_positions], on the scale of patch_sweep(...).values

For a cell (layer l, position p) of hook h, activation patching replaces the base run's activation a = h_l[p]
by the source run's a' and measures the metric m. Attribution patching linearises m around the base run:

    m(patched) ≈ m(base) + (a' - a) · ∂m/∂a        (one dot product per cell, all cells from the same gradient)

with "base" the corrupted prompts and "source" the clean ones when denoising (the default), the reverse when
noising, as in :func:`interp.patching.patch_sweep`. The estimate is exact for a metric linear in the activation
and good where the patch is small; its quality on a task is measured against ``patch_sweep`` (docs/benchmarks.md).
The result is a :class:`~interp.patching.activation.PatchSweep` normalised the same way (clean 1, corrupted 0), so
the two grids compare cell for cell. The SSM's recurrent state is not a site here yet (its hook fires only at
chosen positions); use ``patch_sweep(hook="state")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from interp.hooks.positions import PositionsLike

from .activation import PatchSweep, _is_state, check_grid
from .metrics import NormalisedMetric, PatchMetric, describe, normalise

__all__ = ["attribution_sweep"]


def attribution_sweep(
    model: Any,
    tokens: Any,
    *,
    corrupted: Any,
    metric: PatchMetric,
    hook: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: PositionsLike = "all",
    direction: str = "denoise",
) -> PatchSweep:
    """The attribution-patching estimate of ``patch_sweep(model, tokens, corrupted=..., metric=..., hook=...)``:
    one forward of the source prompts (their activations), one forward and one backward of the base prompts.

    Arguments as :func:`interp.patching.patch_sweep`. Returns a :class:`PatchSweep` whose ``values`` /  ``raw`` /
    ``per_prompt`` hold the linear estimates (``per_prompt[l, p, i]`` = m_i(base) + (a'_i - a_i) · ∂m_i/∂a_i).
    """
    g = check_grid(model, tokens, corrupted=corrupted, hook=hook, layers=layers, positions=positions, direction=direction)
    clean, corr, template, layers, pos, names = g.clean, g.corrupted, g.hook, g.layers, g.positions, g.names
    if _is_state(template):
        raise NotImplementedError("attribution patching of the SSM recurrent state is not available yet: its hook "
                                  "fires only at chosen positions; use patch_sweep(..., hook='state')")
    base, source = (corr, clean) if direction == "denoise" else (clean, corr)

    with torch.no_grad():
        source_logits, cache = model.run_with_cache(source, names_filter=sorted(set(names)))
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> None:
        acts[hook.name] = act

    with torch.enable_grad():
        base_logits = model.run_with_hooks(base, fwd_hooks=[(n, keep) for n in sorted(set(names))])
        clean_logits, corr_logits = (source_logits, base_logits) if direction == "denoise" else \
            (base_logits, source_logits)
        base_metric = metric(base_logits, clean_logits.detach())  # [b]
        unique = sorted(set(names))
        grads = dict(zip(unique, torch.autograd.grad(base_metric.sum(), [acts[n] for n in unique])))
    score = NormalisedMetric(metric, clean_logits.detach(), corr_logits.detach())

    index = torch.tensor(pos, device=base_metric.device)
    rows = []
    for name in names:  # per prompt and position: (a' - a) · ∂m_i/∂a_i, summed over the other axes
        d = model.pos_dim(name)
        delta = (cache[name] - acts[name].detach()).movedim(d, 1)  # [b, L, ...]
        g = grads[name].movedim(d, 1)
        rows.append((delta * g).flatten(2).sum(-1)[:, index].T)  # [n_positions, b]
    per_prompt = (torch.stack(rows) + base_metric.detach()).float().cpu()  # [n_layers, n_positions, b]
    raw = per_prompt.mean(-1)
    values = normalise(raw, score.clean.float().cpu(), score.corrupted.float().cpu())
    return PatchSweep(values=values, raw=raw, per_prompt=per_prompt, hook=template, hooks=tuple(names),
                      layers=tuple(layers), positions=tuple(pos), metric=describe(metric), direction=direction,
                      clean=float(score.clean), corrupted=float(score.corrupted), tokens=clean.cpu(), n_forwards=2)
