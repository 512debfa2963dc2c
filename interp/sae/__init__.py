"""Sparse autoencoders: configure, train, splice into a model, evaluate and analyse.

    from interp.sae import SAEConfig, SparseAutoencoder, train_sae, splice_metrics

    cfg = SAEConfig(d_in=64, d_sae=512, architecture="topk", k=16, hook_name="blocks.1.hook_resid_post")
    result = train_sae(cfg, batches, out="runs/sae")            # batches: re-creatable stream of [batch, d_in]
    sae = SparseAutoencoder.load("runs/sae")
    splice_metrics(model, tokens, sae=sae)                      # CE loss recovered, KL, L0, explained variance
    with spliced(model, sae=sae, with_error=True):              # inserted at its hook (interp.hooks.insert)
        _, cache = model.run_with_cache(tokens)                 # cache["<hook>.sae.hook_sae_acts_post"]

Functions that run the model take ``(model, tokens, *, sae=..., hook=..., ...)`` (``hook`` defaults to the SAE's
``cfg.hook_name``). Steering: along a latent, :class:`interp.steering.SAELatents`; editing latents of the spliced
SAE, :func:`latent_intervention` (an Intervention at ``<hook>.sae.hook_sae_acts_post``).

Modules: ``config`` (SAEConfig), ``functional`` (activation functions, geometric median), ``model``
(SparseAutoencoder), ``losses`` (training losses, SAETrainingModule), ``metrics`` (docs/design.md §5.3), ``train``
(train_sae: checkpoints, resume, NaN guard), ``splice`` (run a model with the SAE at its hook, latent edits),
``analysis`` (top examples, density, logit effects), ``saelens`` (SAE-Lens format: save_saelens, load_saelens,
from_saelens, to_saelens, load_sae for either format), ``distributed`` (torchrun / DDP training:
train_sae_distributed), ``cli`` (``interp train-sae``).
"""

from .analysis import (
    LatentBatch,
    LatentExample,
    LatentReport,
    LogitEffects,
    activation_density,
    latent_activations,
    latent_report,
    latent_trace,
    logit_effects,
    top_activating_examples,
)
from .config import SAEConfig
from .losses import SAETrainingModule, TrainStepOutput, sae_loss
from .metrics import density_histogram, logit_effects_figure
from .model import SparseAutoencoder, check_fits, find_sae_folders
from .saelens import SAEFormatError, from_saelens, load_sae, load_saelens, save_saelens, to_saelens
from .splice import SpliceMetrics, ablation_hook, latent_intervention, run_with_sae, splice_metrics, spliced
from .train import NonFiniteTrainingError, SAETrainResult, TrainContext, load_checkpoint_sae, lr_factor, train_sae

__all__ = [
    "SAEConfig", "SparseAutoencoder", "SAETrainingModule", "TrainStepOutput", "sae_loss",
    "train_sae", "SAETrainResult", "NonFiniteTrainingError", "load_checkpoint_sae", "lr_factor", "TrainContext",
    "save_saelens", "load_saelens", "from_saelens", "to_saelens", "load_sae", "SAEFormatError",
    "spliced", "ablation_hook", "run_with_sae", "splice_metrics", "SpliceMetrics", "latent_intervention",
    "LatentExample", "LogitEffects", "LatentBatch", "latent_activations", "activation_density",
    "top_activating_examples", "logit_effects", "LatentReport", "latent_report",
    "latent_trace", "check_fits", "find_sae_folders", "density_histogram",
    "logit_effects_figure",
]
