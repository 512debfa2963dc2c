"""Hookable models: our own Mamba-1/Mamba-2 and the TransformerLens transformer adapter.

The model classes import TransformerLens; they load on first use (PEP 562), so the pure modules
(``interp.hooks.config``, ``interp.hooks.scan``) and everything built only on them (the attention
formulas, the kernels) import without it.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import SSMConfig, is_ssm
from .hybrid_config import HybridConfig
from .insert import Insertion, insert, inserted, remove  # eager: the function ``insert`` must shadow the submodule
from .protocol import HookedModel, HookedModelConfig

# public name -> submodule that defines it
_LAZY = {
    "CacheTooLargeError": ".api", "HookNotFiredError": ".api",
    "InterpActivationCache": ".cache", "NoSSMCounterpartError": ".cache",
    "HookPoint": ".hook_points", "Positions": ".positions", "HookShapeError": ".hook_points", "UnknownHookError": ".hook_points",
    "CheckpointError": ".loading", "ExistingRunError": ".loading", "UnknownModelError": ".loading",
    "HookedSSM": ".mamba", "SSMState": ".mamba",
    "HookedHybrid": ".hybrid", "HybridState": ".hybrid",
    "HookedRWKV": ".rwkv", "RWKVState": ".rwkv",
    "HookedTransformerModel": ".transformer",
}

__all__ = sorted([*_LAZY, "HookedModel", "HookedModelConfig", "HybridConfig", "SSMConfig", "is_ssm", "Insertion", "insert",
                  "inserted", "remove"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
