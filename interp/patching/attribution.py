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

Integrated gradients (``steps=k > 1``, as EAP-IG, Hanna et al. 2024): the gradient is averaged over k runs whose
input, the residual stream entering block 0, moves on the straight line from the base run's to the source run's,

    m(patched) ≈ m(base) + (a' - a) · (1/k) Σ_{j<k} ∂m/∂a |_{input = x + (j/k)(x' - x)}

(a left Riemann sum; ``steps=1`` is plain attribution patching). Where the site is that input itself
(``blocks.0.hook_resid_pre``) the estimates of all positions sum to m(source) - m(base) as k grows (completeness).
Cost: one source forward and k forward + backward passes.
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
    steps: int = 1,
) -> PatchSweep:
    """The attribution-patching estimate of ``patch_sweep(model, tokens, corrupted=..., metric=..., hook=...)``:
    one forward of the source prompts (their activations), one forward and one backward of the base prompts.

    Arguments as :func:`interp.patching.patch_sweep`; ``steps``: 1 (default) for attribution patching, k > 1 for
    its integrated-gradients variant (k forward + backward passes on inputs between the base and source runs'; see
    the module docstring). Returns a :class:`PatchSweep` whose ``values`` / ``raw`` / ``per_prompt`` hold the
    linear estimates (``per_prompt[l, p, i]`` = m_i(base) + (a'_i - a_i) · ∂m_i/∂a_i, the gradient averaged over
    the steps).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1 (1: attribution patching; k > 1: integrated gradients), "
                         f"got {steps!r}")
    g = check_grid(model, tokens, corrupted=corrupted, hook=hook, layers=layers, positions=positions, direction=direction)
    clean, corr, template, layers, pos, names = g.clean, g.corrupted, g.hook, g.layers, g.positions, g.names
    if _is_state(template):
        raise NotImplementedError("attribution patching of the SSM recurrent state is not available yet: its hook "
                                  "fires only at chosen positions; use patch_sweep(..., hook='state')")
    base, source = (corr, clean) if direction == "denoise" else (clean, corr)

    unique = sorted(set(names))
    with torch.no_grad():
        source_logits, cache = model.run_with_cache(source, names_filter=sorted(set(unique) | {_INPUT}))
        base_input = model.run_with_cache(base, names_filter=[_INPUT])[1][_INPUT] if steps > 1 else None
    grads: dict[str, Tensor] = {}
    acts: dict[str, Tensor] = {}
    for j in range(steps):
        alpha = j / steps
        reference = source_logits if direction == "denoise" else (None if j == 0 else first_logits)
        step_acts, base_logits, base_metric, step_grads = _gradients(
            model, base, unique, metric, reference, None if j == 0 else (base_input, cache[_INPUT], alpha))
        if j == 0:
            acts, first_logits, first_metric = step_acts, base_logits, base_metric
        for n in unique:
            grads[n] = step_grads[n] / steps + (grads[n] if n in grads else 0)
    base_logits, base_metric = first_logits, first_metric
    clean_logits, corr_logits = (source_logits, base_logits) if direction == "denoise" else \
        (base_logits, source_logits)
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
                      clean=float(score.clean), corrupted=float(score.corrupted), tokens=clean.cpu(),
                      n_forwards=1 + steps + (steps > 1))


#: where integrated gradients interpolate: the residual stream entering block 0 (embeddings included)
_INPUT = "blocks.0.hook_resid_pre"


def _gradients(model: Any, base: Tensor, names: list[str], metric: PatchMetric, clean_logits: Tensor | None,
               interpolate: tuple[Tensor, Tensor, float] | None
               ) -> tuple[dict[str, Tensor], Tensor, Tensor, dict[str, Tensor]]:
    """One forward + backward of ``base`` (its input moved to ``x + alpha (x' - x)`` when ``interpolate`` =
    (x, x', alpha)): (activations at ``names``, logits, metric [b], d Σ_i m_i / d activation). ``clean_logits``:
    the clean run's (None when ``base`` is the clean run: its own logits)."""
    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> None:
        acts[hook.name] = act

    hooks: list[tuple[str, Any]] = []
    if interpolate is not None:
        x, x_source, alpha = interpolate
        hooks.append((_INPUT, lambda act, hook: (x + alpha * (x_source - x)).requires_grad_()))
    hooks += [(n, keep) for n in names]
    with torch.enable_grad():
        logits = model.run_with_hooks(base, fwd_hooks=hooks)
        reference = logits if clean_logits is None else clean_logits
        value = metric(logits, reference.detach())  # [b]
        grads = dict(zip(names, torch.autograd.grad(value.sum(), [acts[n] for n in names])))
    return {n: a.detach() for n, a in acts.items()}, logits.detach(), value.detach(), grads
