"""Activation patching on SSMs and transformers (one home: sweeps, cells, metrics, figures).

    from interp.patching import patch_sweep, run_patched, LogitDiff, AnswerProb, KLToClean, patch_figure
    sweep = patch_sweep(model, clean, corrupted=corrupted, metric=LogitDiff(answer, wrong), hook="resid_pre")
    patch_figure(sweep, str_tokens=model.to_str_tokens(clean[0]))

:mod:`interp.patching.activation` (sweeps batched over cells, the recurrent state as a site),
:mod:`interp.patching.attribution` (attribution patching: the gradient estimate of a grid, one forward + backward),
:mod:`interp.patching.path` (path patching: one site's effect on another through the residual stream only),
:mod:`interp.patching.metrics` (metrics and their clean = 1 / corrupted = 0 normalisation),
:mod:`interp.patching.figures` (layer × position heat maps),
:mod:`interp.patching.components` (per-component patching: heads / channel groups; the resample-ablation ground truth),
:mod:`interp.patching.sae_codes` (circuit identification from discrete SAE codes),
:mod:`interp.patching.sites` (the sites a model offers the sweeps: ``patch_sites``).
"""

from .activation import DIRECTIONS, STATE_HOOK, PatchSweep, hook_template, patch_sweep, run_patched
from .attribution import attribution_sweep
from .components import (CircuitGroundTruth, ComponentSweep, circuit_ground_truth, component_labels,
                         component_sweep, precision_recall, run_components_patched)
from .figures import component_figure, patch_figure
from .metrics import AnswerProb, KLToClean, LogitDiff, NormalisedMetric, PatchMetric, normalise
from .path import PathPatch, path_patch
from .sae_codes import ComponentRanking, SAECodeConfig, sae_code_circuit
from .sites import patch_sites

__all__ = ["PatchSweep", "patch_sweep", "attribution_sweep", "run_patched", "hook_template", "DIRECTIONS", "STATE_HOOK", "patch_figure",
           "PatchMetric", "LogitDiff", "AnswerProb", "KLToClean", "NormalisedMetric", "normalise",
           "ComponentSweep", "component_sweep", "run_components_patched", "component_labels", "component_figure",
           "CircuitGroundTruth", "circuit_ground_truth", "precision_recall",
           "SAECodeConfig", "ComponentRanking", "sae_code_circuit", "PathPatch", "path_patch"]
