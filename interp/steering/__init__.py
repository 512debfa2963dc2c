"""Steering and concept erasure through one intervention object: a source, an operator, hooks and positions.

    from interp.steering import Intervention, Direction, AffineMap, SAELatents, dose_response
    iv = Intervention(Direction.mean_difference(acts_target, acts_all), hook="blocks.1.hook_resid_post",
                      operator="add", scale=4.0, positions="last")
    model.generate(prompt, max_new_tokens=10, fwd_hooks=iv.hooks(model))    # every step (recurrent SSM decoding too)
    with iv.applied(model):
        ...
    (iv + other).save("runs/steer/x");  Intervention.load("runs/steer/x")

Modules: :mod:`.functional` (the math: mean difference, paired PCA, Gaussian OT, LEACE, operators),
:mod:`.sources` (Direction, AffineMap, SAELatents; new kinds register with ``register_source``: codebook codes
in :mod:`interp.codebook.steering`), :mod:`interp.hooks.positions` (when an edit fires), :mod:`.intervention`
(Intervention, Compose, save/load), :mod:`.evaluate` (KL cost, dose-response and its figure, one-prompt
comparison). Functions that run the model take ``(model, tokens, *, intervention=..., ...)``. The TokFSM
state-steering test built on them is a task: :mod:`interp.tasks.tokfsm`.
"""

from .evaluate import (
    DoseResponse, KLCost, SteeringComparison, compare_steering, distribution_figure, dose_response,
    dose_response_figure, kl_cost, next_token_probs,
)
from .intervention import Compose, Intervention, load
from interp.hooks.positions import Positions
from .sources import SOURCES, AffineMap, Direction, SAELatents, Source, register_source, token_direction

__all__ = [
    "Intervention", "Compose", "load", "Positions", "Source", "Direction", "AffineMap", "SAELatents", "SOURCES",
    "register_source", "kl_cost", "KLCost", "dose_response", "DoseResponse", "dose_response_figure",
    "next_token_probs", "SteeringComparison", "compare_steering", "token_direction", "distribution_figure",
]
