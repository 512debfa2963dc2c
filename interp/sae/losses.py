"""Training losses of the four architectures, as pure functions, and the module the trainer optimises.

    loss = reconstruction + sparsity + aux
    reconstruction = mean over tokens of Σ_d (x - x̂)²
    sparsity       = relu:     λ₁ · Σ_i f_i ‖W_dec,i‖            (L1 weighted by decoder norms)
                     jumprelu: λ₀ · Σ_i H(pre_i - θ_i)             (L0, straight-through in θ)
                     topk / batchtopk: none (k fixes the sparsity)
    aux            = topk / batchtopk: AuxK (Gao et al. 2024): the top ``aux_k`` dead latents reconstruct the
                     residual x - x̂ (detached); scaled by min(n_dead / aux_k, 1) · ``aux_coefficient``.

:class:`SAETrainingModule` computes the loss in ``forward``, so ``DistributedDataParallel`` can wrap it.

TopK training takes a sparse path (:func:`_topk_sparse_forward`): only the encoder matmul is dense; the decoder,
the encoder's backward and the AuxK loss touch the k (aux_k) chosen latents per token, so a step costs about one
[batch, d_in] x [d_in, d_sae] product instead of five. Values and gradients are the dense path's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .functional import gather_pre, sparse_decode, step
from .model import SparseAutoencoder

__all__ = [
    "TrainStepOutput", "reconstruction_loss", "l1_penalty", "l0_penalty", "auxk_loss", "sae_loss",
    "SAETrainingModule",
]


@dataclass
class TrainStepOutput:
    """One training forward. ``loss`` is the scalar optimised; ``losses`` its parts (scalar tensors):
    ``reconstruction_loss`` and, by architecture, ``l1_loss`` / ``l0_loss`` / ``auxk_loss`` (weighted)."""

    loss: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    latents: Tensor | None = None  # [batch, d_sae]
    x_hat: Tensor | None = None  # [batch, d_in]


def reconstruction_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """Mean over tokens of the squared error summed over features: x, x̂ [batch, d_in] -> scalar."""
    return (x_hat - x).pow(2).sum(-1).mean()


def l1_penalty(latents: Tensor, decoder_norms: Tensor) -> Tensor:
    """Mean over tokens of Σ_i |f_i| ‖W_dec,i‖: latents [batch, d_sae], norms [d_sae] -> scalar."""
    return (latents.abs() * decoder_norms).sum(-1).mean()


def l0_penalty(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Mean over tokens of Σ_i H(pre_i - θ_i), differentiable in θ through the rectangle-kernel
    straight-through estimator: pre [batch, d_sae], threshold [d_sae] -> scalar."""
    return step(pre, threshold, bandwidth).sum(-1).mean()


def auxk_loss(x: Tensor, x_hat: Tensor, pre: Tensor, dead_mask: Tensor | None, W_dec: Tensor, aux_k: int,
              gather: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """AuxK loss (Gao et al. 2024, appendix A.2): the ``aux_k`` largest pre-activations among dead latents
    reconstruct the residual e = x - x̂ (detached) through W_dec (no bias); ‖e - ê‖² averaged over tokens,
    scaled by min(n_dead / aux_k, 1). Zero when no latent is dead.

    x, x_hat [batch, d_in]; pre [batch, d_sae]; dead_mask [d_sae] bool; W_dec [d_sae, d_in] -> scalar.
    ``gather``: the sparse path (topk training): ``pre`` is then detached, the chosen latents are taken from it and
    ``gather(idx [batch, aux_k])`` gives their differentiable pre-activations (:func:`~.functional.gather_pre`);
    the value and gradients are those of the dense path.
    """
    if dead_mask is None:
        return x.new_zeros(())
    n_dead = int(dead_mask.sum())
    if n_dead == 0:
        return x.new_zeros(())
    k = min(aux_k, n_dead)
    scale = min(n_dead / aux_k, 1.0)
    residual = (x - x_hat).detach()
    masked = pre.masked_fill(~dead_mask, float("-inf"))
    values, idx = torch.topk(masked, k, dim=-1, sorted=False)
    if gather is not None:
        recons = sparse_decode(idx, torch.relu(gather(idx)), W_dec)
    else:
        aux_latents = torch.zeros_like(pre).scatter(-1, idx, torch.relu(values))
        recons = aux_latents @ W_dec
    return scale * (recons - residual).pow(2).sum(-1).mean()


def _topk_sparse_forward(sae: SparseAutoencoder,
                         x: Tensor) -> tuple[Tensor, Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """TopK training forward that never builds a dense gradient: x [batch, d_in] -> (latents [batch, d_sae]
    without autograd, for bookkeeping; pre-activations [batch, d_sae] without autograd; x̂ [batch, d_in] with
    autograd; ``gather(idx)``, differentiable pre-activations of chosen latents).

    The encoder matmul is the only dense product; the k active latents' pre-activations are re-read with a
    sparse backward (:func:`~.functional.gather_pre`) and decoded with :func:`~.functional.sparse_decode`.
    Values and gradients equal the dense path's (``encode_with_pre`` + ``decode``) up to summation order.
    """
    x_in = x - sae.b_dec if sae.cfg.apply_b_dec_to_input else x
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc, x_in, sae.W_enc)
        idx = torch.topk(pre, int(sae.cfg.k), dim=-1, sorted=False).indices

    def gather(i: Tensor) -> Tensor:
        return gather_pre(x_in, sae.W_enc, sae.b_enc, pre, i)

    vals = torch.relu(gather(idx))
    x_hat = sparse_decode(idx, vals, sae.W_dec, sae.b_dec)
    latents = torch.zeros_like(pre).scatter_(-1, idx, vals.detach())
    return latents, pre, x_hat, gather


def sae_loss(sae: SparseAutoencoder, x: Tensor, dead_mask: Tensor | None = None,
             sparsity_scale: float = 1.0) -> TrainStepOutput:
    """The training loss of ``sae`` on a batch x [batch, d_in] (see the module docstring).

    Args:
        dead_mask: [d_sae] bool, latents counted as dead (used by the AuxK loss).
        sparsity_scale: multiplier of the sparsity coefficient (the trainer's warm-up, 0 -> 1).
    """
    cfg = sae.cfg
    x = x.to(sae.dtype)
    gather = None
    if cfg.architecture == "topk" and x.dim() == 2:
        latents, pre, x_hat, gather = _topk_sparse_forward(sae, x)
    else:
        latents, pre = sae.encode_with_pre(x)
        x_hat = sae.decode(latents)
    losses = {"reconstruction_loss": reconstruction_loss(x, x_hat)}
    if cfg.architecture == "relu":
        losses["l1_loss"] = sparsity_scale * cfg.l1_coefficient * l1_penalty(latents, sae.decoder_norms)
    elif cfg.architecture == "jumprelu":
        losses["l0_loss"] = sparsity_scale * cfg.l0_coefficient * l0_penalty(pre, sae.threshold, cfg.jumprelu_bandwidth)
    else:
        losses["auxk_loss"] = cfg.aux_coefficient * auxk_loss(x, x_hat, pre, dead_mask, sae.W_dec, cfg.effective_aux_k,
                                                              gather)
    loss = sum(losses.values())
    return TrainStepOutput(loss=loss, losses=losses, latents=latents, x_hat=x_hat)


class SAETrainingModule(nn.Module):
    """What the trainer optimises: the SAE plus the dead-latent clock.

    Buffers: ``tokens_since_fired`` [d_sae] int64, training tokens since each latent was last active (saved in
    checkpoints). ``forward(x, sparsity_scale)`` returns a :class:`TrainStepOutput`, so the module can be wrapped
    in ``torch.nn.parallel.DistributedDataParallel``.
    """

    def __init__(self, sae: SparseAutoencoder):
        super().__init__()
        self.sae = sae
        self.register_buffer("tokens_since_fired", torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.device))

    @property
    def dead_mask(self) -> Tensor:
        """[d_sae] bool: latents not active in the last ``cfg.dead_window_tokens`` training tokens."""
        return self.tokens_since_fired >= self.sae.cfg.dead_window_tokens

    def forward(self, x: Tensor, sparsity_scale: float = 1.0) -> TrainStepOutput:
        """x [batch, d_in] -> loss and its parts."""
        return sae_loss(self.sae, x, self.dead_mask, sparsity_scale)

    @torch.no_grad()
    def record_firing(self, latents: Tensor) -> None:
        """Advance the dead-latent clock by a batch's tokens; reset it for the latents active in ``latents``
        [batch, d_sae]."""
        rows = latents.reshape(-1, latents.shape[-1])
        if rows.shape[0] == 0:
            return
        fired = rows.abs().amax(0) > 0  # = (rows != 0).any(0), several times faster on the CPU
        self.tokens_since_fired += rows.shape[0]
        self.tokens_since_fired[fired] = 0
