"""``SAEConfig``: every knob of a sparse autoencoder and of its training run, named in one place.

Written next to the weights as ``cfg.json`` (:meth:`SAEConfig.to_dict` / :meth:`SAEConfig.from_dict`), in the
style of SAE-Lens configs::

    cfg = SAEConfig(d_in=64, d_sae=512, architecture="topk", k=16, hook_name="blocks.1.hook_resid_post")
    SAEConfig.from_dict(interp.io.read_json("sae/cfg.json", what="SAE config"))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["SAEConfig", "ARCHITECTURES", "LR_DECAYS", "B_DEC_INITS", "RESUME_FREE_FIELDS"]

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu")
LR_DECAYS = ("constant", "linear", "cosine")
B_DEC_INITS = ("geometric_median", "mean", "zeros")
DTYPES = ("float32", "float64", "bfloat16", "float16")

# fields that may differ between a run and its resumption: they do not change the trajectory
RESUME_FREE_FIELDS = ("checkpoint_every", "model_name", "hook_name", "log_every")


@dataclass
class SAEConfig:
    """A sparse autoencoder and its training run.

    Architecture:
        d_in: width of the activations encoded (the hook's last axis).
        d_sae: number of latents.
        architecture: ``"relu"`` (ReLU + L1 weighted by decoder norms), ``"topk"`` (k largest per token,
            Gao et al. 2024, with the AuxK dead-latent loss), ``"batchtopk"`` (the k·batch largest over the whole
            batch in training, a threshold estimated in training at inference; Bussmann et al. 2024) or
            ``"jumprelu"`` (learned per-latent thresholds, straight-through L0 penalty; Rajamanoharan et al. 2024).
        k: active latents per token (topk) or on average per token (batchtopk).
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
        normalize_decoder: keep every decoder row at unit norm (renormalised after each step, the gradient
            component parallel to a row removed before it).
        b_dec_init: ``"geometric_median"`` / ``"mean"`` of the first training batch, or ``"zeros"``.
        jumprelu_init_threshold: initial threshold of every JumpReLU latent.
        jumprelu_bandwidth: width ε of the rectangle kernel of the straight-through pseudo-derivative.
        batchtopk_threshold_momentum: EMA rate of the batchtopk inference threshold (the smallest kept
            activation of each training batch).

    Losses (loss = Σ_d (x - x̂)² averaged over tokens + sparsity + aux):
        l1_coefficient: relu: λ · Σ_i f_i ‖W_dec,i‖.
        l0_coefficient: jumprelu: λ · Σ_i H(pre_i - θ_i).
        sparsity_warmup_steps: the sparsity coefficient grows linearly from 0 over these steps.
        aux_k: topk/batchtopk: dead latents used by the AuxK loss (None: d_in // 2).
        aux_coefficient: weight of the AuxK loss (Gao et al.: 1/32).
        dead_window_tokens: a latent is dead when it has not fired in this many training tokens.

    Optimisation (Adam; the schedule is a function of the step, total steps from the token budget):
        lr, adam_beta1, adam_beta2: Adam. The defaults (lr 1e-3, constant, gradient norm clipped at 1.0) were chosen
            by held-out EV and dead latents on tokfsm-mamba's residual stream (TopK, 16x, k 8, 2M tokens:
            ``python bench/sae.py``, docs/benchmarks.md): lr 3e-4 gave EV 0.860, 1e-3 0.939, 1e-3 with clipping
            0.950 (0.29% dead); 1.5e-3 / 2e-3 reached 0.960 / 0.964 with 1.4% / 1.9% dead latents; a linear decay
            over the run lowered EV (0.906 at 1e-3).
        lr_warmup_steps: linear warm-up from lr / warmup to lr.
        lr_decay: ``"constant"``, ``"linear"`` or ``"cosine"`` decay to ``lr * min_lr_ratio``.
        lr_decay_steps: the decay covers the last this-many steps (None: every step after warm-up).
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        grad_clip: clip the gradient norm to this (None: no clipping; default 1.0, SAE-Lens's fixed value).
        batch_size: tokens per batch the trainer expects (steps = ceil(total_training_tokens / batch_size)).
        total_training_tokens: training stops after this many tokens (or when the batches run out).
        checkpoint_every: steps between resumable checkpoints (0: only at the end).
        log_every: steps between progress-bar updates of L0 / EV / MSE.
        seed: seed of the weight initialisation.

    Provenance:
        hook_name: the hook whose activations the SAE reads (``blocks.1.hook_resid_post``); splicing and
            analysis default to it.
        model_name: the model the activations came from (a name or folder for :func:`interp.load`).
        dtype: parameter dtype (``"float32"``, ...).
    """

    d_in: int
    d_sae: int
    architecture: Literal["relu", "topk", "batchtopk", "jumprelu"] = "relu"
    k: float = 32
    apply_b_dec_to_input: bool = True
    normalize_decoder: bool = True
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    jumprelu_init_threshold: float = 1e-3
    jumprelu_bandwidth: float = 1e-3
    batchtopk_threshold_momentum: float = 0.01

    l1_coefficient: float = 1.0
    l0_coefficient: float = 1e-3
    sparsity_warmup_steps: int = 0
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    dead_window_tokens: int = 1_000_000

    lr: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_warmup_steps: int = 0
    lr_decay: Literal["constant", "linear", "cosine"] = "constant"
    lr_decay_steps: int | None = None
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    batch_size: int = 4096
    total_training_tokens: int = 1_000_000
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 0

    hook_name: str | None = None
    model_name: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        errors = []
        if self.architecture not in ARCHITECTURES:
            errors.append(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        if self.d_in < 1 or self.d_sae < 1:
            errors.append(f"d_in ({self.d_in}) and d_sae ({self.d_sae}) must be positive")
        if self.architecture == "topk" and not (1 <= self.k <= self.d_sae and float(self.k).is_integer()):
            errors.append(f"topk needs an integer k in [1, d_sae={self.d_sae}], got k={self.k}")
        if self.architecture == "batchtopk" and not (0 < self.k <= self.d_sae):
            errors.append(f"batchtopk needs 0 < k <= d_sae={self.d_sae}, got k={self.k}")
        if self.lr_decay not in LR_DECAYS:
            errors.append(f"lr_decay {self.lr_decay!r} is not one of {LR_DECAYS}")
        if self.b_dec_init not in B_DEC_INITS:
            errors.append(f"b_dec_init {self.b_dec_init!r} is not one of {B_DEC_INITS}")
        if self.dtype not in DTYPES:
            errors.append(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.jumprelu_bandwidth <= 0:
            errors.append(f"jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            errors.append(f"lr must be a positive number, got {self.lr}")
        if self.batch_size < 1 or self.total_training_tokens < 1:
            errors.append("batch_size and total_training_tokens must be positive")
        if self.checkpoint_every < 0:
            errors.append("checkpoint_every must be >= 0 (0: checkpoint only at the end)")
        if self.aux_k is not None and self.aux_k < 1:
            errors.append(f"aux_k must be >= 1 or None, got {self.aux_k}")
        for name in ("l1_coefficient", "l0_coefficient", "aux_coefficient"):  # a negative penalty rewards density
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                errors.append(f"{name} must be a finite number >= 0, got {v}")
        if errors:
            raise ValueError("invalid SAEConfig: " + "; ".join(errors))
        if self.architecture == "topk":
            self.k = int(self.k)

    # --- derived ----------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        """Optimizer steps of the run: ceil(total_training_tokens / batch_size)."""
        return -(-self.total_training_tokens // self.batch_size)

    @property
    def effective_aux_k(self) -> int:
        """Dead latents the AuxK loss may use per token (``aux_k``, default d_in // 2, at least 1)."""
        return max(1, self.aux_k if self.aux_k is not None else self.d_in // 2)

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        """Build from :meth:`to_dict` output; unknown keys are an error (naming them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown SAEConfig field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "SAEConfig":
        """A copy with some fields changed (validated again)."""
        return self.from_dict({**self.to_dict(), **changes})

    def trajectory_dict(self) -> dict[str, Any]:
        """The fields that determine the training trajectory (a resumed run must match them)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_FREE_FIELDS}
