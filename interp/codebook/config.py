"""Every knob of a codebook bottleneck and of its training, named in one place."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from .functional import SIMILARITIES

__all__ = ["CodebookConfig", "CodebookTrainConfig"]


@dataclass(frozen=True)
class CodebookConfig:
    """One codebook layer (variants are per instance: two layers of a model may differ).

    Attributes:
        d: activation width per group (d_model for a residual / mixer output, d_head for per-head outputs).
        n_codes: codes per codebook.
        k: codes summed (averaged) per position; k = 1 is the codebook-features paper's TokFSM setting.
        n_groups: independent codebooks; > 1 for a hook with a head axis ([..., n_heads, d_head], e.g.
            ``blocks.L.attn.hook_z``), one codebook per head.
        similarity: "cosine" (rank by x̃·c/‖c‖) or "dot" (x̃·c).
        layernorm: score LayerNorm(x) instead of x (the output is always made of the codes themselves).
        straight_through: pass the task gradient to the layers below (identity); False cuts it (only the
            codes learn from what comes after the bottleneck).
        commitment: weight β of ‖x - sg(q)‖² in the reconstruction loss (pulls x toward its codes).
        dead_after: a code unused for this many consecutive training positions is re-seeded from the
            activations the codebook reconstructs worst (0 = never).
    """

    d: int
    n_codes: int = 256
    k: int = 1
    n_groups: int = 1
    similarity: Literal["cosine", "dot"] = "cosine"
    layernorm: bool = True
    straight_through: bool = True
    commitment: float = 0.0
    dead_after: int = 20_000

    def __post_init__(self) -> None:
        for name in ("d", "n_codes", "k", "n_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.k > self.n_codes:
            raise ValueError(f"k={self.k} is more than n_codes={self.n_codes}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.commitment < 0 or self.dead_after < 0:
            raise ValueError("commitment and dead_after must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodebookConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown CodebookConfig fields {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class CodebookTrainConfig:
    """In-model training of the codebooks inserted in a model (:func:`interp.codebook.train_codebooks`: the LM
    loss through the bottlenecks). The other mode, post-hoc fitting to a frozen model's cached activations, is
    :func:`interp.codebook.fit_post_hoc`.

    Attributes:
        train_model: also update the model's own weights (otherwise only the codes learn).
        steps, batch_size, lr, model_lr, warmup_steps, weight_decay, grad_clip: AdamW with linear warm-up
            then constant; ``model_lr`` for the model's weights when ``train_model``.
        reconstruction_weight: weight of the codebooks' reconstruction loss added to the LM loss (in-model).
        kmeans_init: initialise each codebook by k-means on activations of the (unbottlenecked) model.
        kmeans_tokens, kmeans_iters: activations used and Lloyd iterations of that initialisation.
        data_seed: seed of the training batches (the recipe's data, ``default_rng([data_seed, step])``).
        seed: seed of code initialisation.
        checkpoint_every: resumable checkpoint interval (steps).
    """

    train_model: bool = True
    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    model_lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    reconstruction_weight: float = 1.0
    kmeans_init: bool = True
    kmeans_tokens: int = 16_384
    kmeans_iters: int = 15
    data_seed: int = 4321
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **kw: Any) -> "CodebookTrainConfig":
        return dataclasses.replace(self, **kw)
