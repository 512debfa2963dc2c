"""Activation patching on SSMs and transformers (one home: sweeps, cells, metrics, figures).

    from interp.patching import patch_sweep, run_patched, LogitDiff, AnswerProb, KLToClean, patch_figure
    sweep = patch_sweep(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong), hook="resid_pre")
    patch_figure(sweep, str_tokens=model.to_str_tokens(clean[0]))

:mod:`interp.patching.activation` (sweeps batched over cells, the recurrent state as a site),
:mod:`interp.patching.attribution` (attribution patching: the gradient estimate of a grid, one forward + backward),
:mod:`interp.patching.metrics` (metrics and their clean = 1 / corrupted = 0 normalisation),
:mod:`interp.patching.figures` (layer × position heat maps).
"""

from .activation import DIRECTIONS, STATE_HOOK, PatchSweep, hook_template, patch_sweep, run_patched
from .attribution import attribution_sweep
from .figures import patch_figure
from .metrics import AnswerProb, KLToClean, LogitDiff, NormalisedMetric, PatchMetric, normalise

__all__ = ["PatchSweep", "patch_sweep", "attribution_sweep", "run_patched", "hook_template", "DIRECTIONS", "STATE_HOOK", "patch_figure",
           "PatchMetric", "LogitDiff", "AnswerProb", "KLToClean", "NormalisedMetric", "normalise"]
