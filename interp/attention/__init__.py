"""Token interaction maps for any model: hidden attention, softmax attention, LRP rows, rollout.

Formula modules (pure functions on cached activations): :mod:`.hidden` (hidden attention of
Mamba-1/Mamba-2), :mod:`.unified` (unified implicit attention), :mod:`.latim` (LaTIM
contributions). :mod:`.maps` puts one interface over all models; :mod:`.methods` is the registry of its
methods, :mod:`.backends` decides which implementation (PyTorch, numba, Triton) computes hidden attention,
:mod:`.perturbation` tests a relevance row by removing tokens, :mod:`.figures` plots, :mod:`.views` shapes
maps for display (a layer's map, rollout, sorted thumbnails, pooled overviews).
"""

from .hidden import (
    channel_mass, hidden_attention, hidden_attention_direct, hidden_attention_reduced, hidden_attention_rows,
    hidden_attention_rows_reduced, reconstruct_y,
)
from .latim import LatimContributions, latim_contributions, latim_layer, latim_scores, reconstruction_errors
from .unified import UnifiedAttention, unified_attention, unified_layer
from .maps import (
    MapTooLargeError, interaction_map, mamba_attr, normalize, query_rows, reduce_channels, rollout,
    ssm_parameters,
)

__all__ = [
    "MapTooLargeError", "channel_mass", "hidden_attention", "hidden_attention_direct", "hidden_attention_reduced",
    "hidden_attention_rows", "hidden_attention_rows_reduced", "interaction_map", "mamba_attr", "normalize", "query_rows", "reconstruct_y",
    "reduce_channels", "rollout", "ssm_parameters", "LatimContributions", "latim_contributions", "latim_layer",
    "latim_scores", "reconstruction_errors", "UnifiedAttention", "unified_attention", "unified_layer",
]
