"""Sparse autoencoders: configure, train, splice into a model, evaluate and analyse.

    from interp.sae import SAEConfig, SparseAutoencoder, train_sae, splice_metrics

    cfg = SAEConfig(d_in=64, d_sae=512, architecture="topk", k=16, hook_name="blocks.1.hook_resid_post")
    result = train_sae(cfg, batches, out="runs/sae")            # batches: re-creatable stream of [batch, d_in]
    sae = SparseAutoencoder.load("runs/sae")
    splice_metrics(model, sae, tokens)                          # CE loss recovered, KL, L0, explained variance

Modules: ``config`` (SAEConfig), ``functional`` (activation functions, geometric median), ``model``
(SparseAutoencoder), ``losses`` (training losses, SAETrainingModule), ``metrics`` (docs/design.md §5.3), ``train``
(train_sae: checkpoints, resume, NaN guard), ``splice`` (run a model with the SAE at its hook), ``analysis``
(top examples, density, logit effects, steering), ``saelens`` (SAE-Lens format: save_saelens, load_saelens,
from_saelens, to_saelens, load_sae for either format), ``distributed`` (torchrun / DDP training:
train_sae_distributed), ``cli`` (``interp train-sae``).
"""

from .analysis import (
    LatentExample,
    LatentReport,
    LogitEffects,
    activation_density,
    clamp_latent_hook,
    latent_activations,
    latent_report,
    latent_trace,
    logit_effects,
    steering_hook,
    top_activating_examples,
)
from .config import SAEConfig
from .losses import SAETrainingModule, TrainStepOutput, sae_loss
from .metrics import density_histogram, logit_effects_figure
from .model import SparseAutoencoder, check_fits, find_sae_folders
from .saelens import SAEFormatError, from_saelens, load_sae, load_saelens, save_saelens, to_saelens
from .splice import ablation_hook, run_with_sae, splice_hook, splice_metrics
from .train import NonFiniteTrainingError, SAETrainResult, TrainContext, load_checkpoint_sae, lr_factor, train_sae

__all__ = [
    "SAEConfig", "SparseAutoencoder", "SAETrainingModule", "TrainStepOutput", "sae_loss",
    "train_sae", "SAETrainResult", "NonFiniteTrainingError", "load_checkpoint_sae", "lr_factor", "TrainContext",
    "save_saelens", "load_saelens", "from_saelens", "to_saelens", "load_sae", "SAEFormatError",
    "splice_hook", "ablation_hook", "run_with_sae", "splice_metrics",
    "LatentExample", "LogitEffects", "latent_activations", "activation_density", "top_activating_examples",
    "logit_effects", "steering_hook", "clamp_latent_hook", "LatentReport", "latent_report",
    "latent_trace", "check_fits", "find_sae_folders", "density_histogram",
    "logit_effects_figure",
]
