"""SAE evaluation metrics (docs/design.md §5.3), as pure functions of tensors.

* ``l0``: mean number of active latents per token;
* ``explained_variance``: 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖², x̄ the mean over the evaluation set (0 for predicting the
  mean, 1 for a perfect reconstruction);
* ``mse``: mean squared error per element;
* ``ce_loss_recovered``: (CE_ablate - CE_sae) / (CE_ablate - CE_clean) (1 for a perfect splice, 0 when the SAE
  is no better than the ablation);
* ``kl_divergence``: KL(clean ‖ other) of the next-token distributions, mean over tokens;
* ``feature_density``, ``dead_fraction``, ``dense_fraction``, ``density_histogram`` (a plotly figure).

Tensors: x, x̂ [..., d_in]; latents [..., d_sae]; logits [..., vocab]; an optional ``mask`` [...] selects tokens.
The formulas of explained variance, cross-entropy and KL live in :mod:`interp.metrics`; here they return Python
floats computed in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from interp import metrics as M
from interp.metrics import ExplainedVariance, explained_variance

__all__ = [
    "l0", "mse", "explained_variance", "ce_loss_recovered", "cross_entropy", "kl_divergence",
    "feature_density", "dead_fraction", "dense_fraction", "density_histogram", "ExplainedVariance",
]


def _rows(t: Tensor, mask: Tensor | None) -> Tensor:
    """[..., d] -> [n, d], keeping the rows where ``mask`` [...] is true (detached)."""
    t = t.detach()
    if mask is not None:
        return t[mask.to(torch.bool)]
    return t.reshape(-1, t.shape[-1])


def l0(latents: Tensor, mask: Tensor | None = None) -> float:
    """Mean number of non-zero latents per token: latents [..., d_sae] -> float."""
    return float((_rows(latents, mask) != 0).sum(-1).double().mean())


def mse(x: Tensor, x_hat: Tensor, mask: Tensor | None = None) -> float:
    """Mean squared error over every element: x, x̂ [..., d_in] -> float."""
    return float((_rows(x, mask).double() - _rows(x_hat, mask).double()).pow(2).mean())


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_ablate: float) -> float:
    """(CE_ablate - CE_sae) / (CE_ablate - CE_clean): 1 for a perfect splice, 0 for one no better than the
    ablation. NaN when the ablation does not change the loss (the ratio is undefined)."""
    denom = ce_ablate - ce_clean
    return (ce_ablate - ce_sae) / denom if denom != 0 else math.nan


def cross_entropy(logits: Tensor, tokens: Tensor, attention_mask: Tensor | None = None) -> float:
    """Mean next-token cross-entropy in float64 (:func:`interp.metrics.next_token_cross_entropy`): logits
    [b, pos, vocab] predict tokens [b, pos] shifted by one; targets where ``attention_mask`` [b, pos] is 0 are
    ignored."""
    mask = None if attention_mask is None else attention_mask[:, 1:]
    return float(M.next_token_cross_entropy(logits.detach().double(), tokens, mask))


def kl_divergence(logits_clean: Tensor, logits_other: Tensor, mask: Tensor | None = None) -> float:
    """Mean over tokens (those where ``mask`` [...] is true) of KL(p_clean ‖ p_other) of the softmax
    distributions, in float64 (:func:`interp.metrics.kl_divergence`): logits [..., vocab] -> float."""
    return float(M.kl_divergence(_rows(logits_clean, mask).double(), _rows(logits_other, mask).double()).mean())


def feature_density(latents: Tensor, mask: Tensor | None = None) -> Tensor:
    """Fraction of tokens on which each latent is active: latents [..., d_sae] -> [d_sae] (float64)."""
    return (_rows(latents, mask) != 0).double().mean(0)


def dead_fraction(density: Tensor) -> float:
    """Fraction of latents never active (density 0): density [d_sae] -> float.

    For the trainer's definition (not active in the last N tokens) use ``tokens_since_fired >= N``.
    """
    return float((density == 0).double().mean())


def dense_fraction(density: Tensor, threshold: float = 0.1) -> float:
    """Fraction of latents active on more than ``threshold`` of tokens: density [d_sae] -> float."""
    return float((density > threshold).double().mean())


def density_histogram(density: Tensor, title: str = "latent density", eps: float = 1e-10,
                      nbins: int = 50) -> Any:
    """A plotly histogram of log10(density) over latents (dead latents shown at log10(eps))."""
    import plotly.graph_objects as go

    values = torch.log10(density.double().clamp(min=eps)).cpu().numpy()
    n_dead = int((density == 0).sum())
    fig = go.Figure(go.Histogram(x=values, nbinsx=nbins, marker_color="#4C78A8"))
    fig.update_layout(
        title=f"{title} ({n_dead} dead of {density.numel()})",
        xaxis_title="log10(fraction of tokens active)", yaxis_title="latents", bargap=0.02,
        template="plotly_white",
    )
    return fig


def logit_effects_figure(effects: Any, row: int = 0, title: str = "Direct logit effect (decoder row → unembedding)",
                         height: int = 420) -> Any:
    """Horizontal bars of one latent's most suppressed (↓, at the bottom) and promoted (↑, at the top) tokens, from
    :class:`interp.sae.LogitEffects` (``row``: which of its latents)."""
    import plotly.graph_objects as go

    names = [f"↓ {t!r}" for t in effects.bottom_tokens[row]] + [f"↑ {t!r}" for t in effects.top_tokens[row][::-1]]
    values = torch.cat([effects.bottom_values[row], effects.top_values[row].flip(0)]).cpu().numpy()
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h"))
    fig.update_layout(title=title, height=height)
    return fig
