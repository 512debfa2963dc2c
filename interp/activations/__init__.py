"""Activation store: cache hook activations to disk (safetensors shards + a JSON manifest), read them
back as shuffled training batches, or stream them from the model without disk.

    from interp.activations import cache_activations, ActivationStore, stream_activations
    from interp.data import tokfsm_batches

    manifest = cache_activations(model, tokfsm_batches(64, seed=0), hook=["blocks.1.hook_resid_post"],
                                 out="runs/cache/x", dtype=torch.float16, max_tokens=2**20)
    store = ActivationStore("runs/cache/x")
    for x in store.shuffled_batches(4096, seed=0):          # float32 [4096, d_in]
        ...
    for x in stream_activations(model, tokfsm_batches(64, seed=0), hook="blocks.1.hook_resid_post",
                                batch_size=4096, max_tokens=2**20):  # same rows, no disk
        ...

Modules: :mod:`.manifest` (file format, hashes), :mod:`.collect` (row filters, running the hooks),
:mod:`.writer` (``cache_activations``: resumable, background shard writes, the cast error of float16 /
bfloat16 storage, torchrun), :mod:`.store` (``ActivationStore``),
:mod:`.stream` (``stream_activations``).
"""

from typing import TYPE_CHECKING, Any

from .manifest import CorruptShardError, Manifest, ManifestError, ShardEntry, weights_sha256
from .store import ActivationStore, IncompleteStoreError

if TYPE_CHECKING:  # pragma: no cover
    from .collect import RowFilter
    from .stream import stream_activations
    from .writer import DEFAULT_SHARD_TOKENS, ShardWriteError, cache_activations

# The modules that run models (collect, writer, stream) import the hook machinery (TransformerLens); they load on
# first use, so reading a store (e.g. in every torchrun worker of interp.sae.distributed) stays light.
_LAZY = {"RowFilter": ".collect", "stream_activations": ".stream", "cache_activations": ".writer",
         "DEFAULT_SHARD_TOKENS": ".writer", "ShardWriteError": ".writer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "cache_activations",
    "ActivationStore",
    "stream_activations",
    "Manifest",
    "ShardEntry",
    "RowFilter",
    "ManifestError",
    "CorruptShardError",
    "IncompleteStoreError",
    "weights_sha256",
    "DEFAULT_SHARD_TOKENS",
    "ShardWriteError",
]
