"""Hookable models: our own Mamba-1/Mamba-2 and the TransformerLens transformer adapter."""

from .api import CacheTooLargeError, HookNotFiredError
from .config import SSMConfig, is_ssm
from .hook_points import HookPoint, HookShapeError, UnknownHookError
from .loading import CheckpointError
from .mamba import HookedSSM, SSMState
from .transformer import HookedTransformerModel

__all__ = [
    "CacheTooLargeError", "CheckpointError", "HookNotFiredError", "HookPoint", "HookShapeError",
    "HookedSSM", "HookedTransformerModel", "SSMConfig", "SSMState", "UnknownHookError", "is_ssm",
]
