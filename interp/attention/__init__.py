"""Token interaction maps for any model: hidden attention, softmax attention, LRP rows, rollout.

Formula modules (pure functions on cached activations): :mod:`.hidden` (hidden attention of
Mamba-1/Mamba-2), :mod:`.unified` (unified implicit attention), :mod:`.latim` (LaTIM
contributions); :mod:`.ops` (normalising, reducing channels, rollout: pure operations on maps).
:mod:`.maps` puts one interface over all models (``interaction_map(model, tokens, *, layer, method, ...)``);
:mod:`.methods` is the one registry of its methods (labels, model kinds, per-layer maps and benchmark rows),
:mod:`.backends` decides which implementation (PyTorch, numba, Triton) computes hidden attention,
:mod:`.perturbation` tests a relevance row by removing tokens, :mod:`.figures` plots, :mod:`.views` shapes
maps for display (a layer's map, rollout, sorted thumbnails, pooled overviews). The benchmarks on data sets
(:mod:`.benchmarks`) and the command line (:mod:`.cli`) sit above the analyses and are not imported here.
"""

from .hidden import (
    channel_mass, hidden_attention, hidden_attention_direct, hidden_attention_reduced, hidden_attention_rows,
    hidden_attention_rows_reduced, reconstruct_y,
)
from .latim import LatimContributions, latim_contributions, latim_layer, latim_scores, reconstruction_errors
from .maps import (
    MapTooLargeError, SSMParameters, grad_weighted_rollout, interaction_map, mamba_attr, query_rows, ssm_parameters,
)
from .ops import normalize, reduce_channels, rollout
from .unified import UnifiedAttention, unified_attention, unified_layer

__all__ = [
    "MapTooLargeError", "SSMParameters", "channel_mass", "hidden_attention", "hidden_attention_direct",
    "hidden_attention_reduced", "hidden_attention_rows", "hidden_attention_rows_reduced", "interaction_map",
    "mamba_attr", "grad_weighted_rollout", "normalize", "query_rows", "reconstruct_y", "reduce_channels", "rollout",
    "ssm_parameters",
    "LatimContributions", "latim_contributions", "latim_layer", "latim_scores", "reconstruction_errors",
    "UnifiedAttention", "unified_attention", "unified_layer",
]
