"""``ActivationStore``: read an activation cache written by :func:`~.writer.cache_activations`.

Works on a finished cache and on a partial one (a run still going, or killed): it reads the shards the
manifest lists. Every shard read is checked against its manifest size and sha256; a damaged one
raises :class:`~.manifest.CorruptShardError` naming the file and how to repair it.

    store = ActivationStore("runs/cache/x")
    len(store), store.d_in, store.hooks                 # rows, width, hook names
    for x in store.shuffled_batches(4096, seed=0, epochs=2):   # float32 [4096, d_in]
        ...
    X = store.all()                                     # float32 [len(store), d_in], small caches only
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from interp.locks import lock_holder, warn_if_being_written

from .manifest import META_KEYS, ManifestError, ShardEntry, load_cache_manifest, read_shard

DEFAULT_BUFFER_SHARDS = 4  # shards shuffled together by shuffled_batches


class IncompleteStoreError(ManifestError):
    """A training run was given an activation cache whose writing run has not finished (killed, or still going):
    its manifest is not marked complete. ``folder``, ``n_shards`` (present) and ``expected`` (None if unknown)."""

    def __init__(self, message: str, folder: Path, n_shards: int, expected: int | None):
        super().__init__(message)
        self.folder, self.n_shards, self.expected = folder, n_shards, expected


class ActivationStore:
    """A cache folder (``manifest.json`` + safetensors shards), finished or partial.

    Args:
        folder: the ``out`` folder of :func:`~interp.activations.cache_activations`.
        verify: check each shard's sha256 when it is read (sizes are always checked).
    """

    def __init__(self, folder: str | os.PathLike, verify: bool = True):
        self.folder = Path(folder)
        warn_if_being_written(self.folder, "activation cache")  # readable while it grows, but a snapshot
        self.manifest = load_cache_manifest(self.folder)  # + the rank manifests of an unfinished torchrun cache
        self.verify = verify

    # --- what is stored ----------------------------------------------------------------------
    def __len__(self) -> int:
        """Rows stored (one row per kept token)."""
        return self.manifest.n_rows

    def __repr__(self) -> str:
        state = "complete" if self.complete else "partial"
        return (f"ActivationStore({str(self.folder)!r}, {state}, rows={len(self)}, shards={self.n_shards}, "
                f"hooks={self.hooks}, dtype={self.manifest.dtype})")

    @property
    def hooks(self) -> list[str]:
        return self.manifest.hook_names

    @property
    def complete(self) -> bool:
        """True once the writing run finished (a partial cache is readable too)."""
        return self.manifest.complete

    @property
    def n_shards(self) -> int:
        return len(self.manifest.shards)

    def expected_shards(self) -> tuple[int | None, bool]:
        """(shards the writing run will have written when it finishes, whether that number is exact): exact for a
        complete cache or one written with ``max_tokens``; estimated from the rows per token batch of the shards
        present for one written with ``max_batches`` only; (None, False) when the run had no limit."""
        m = self.manifest
        if m.complete:
            return self.n_shards, True
        if m.limits.get("max_tokens") and m.world_size > 1:  # each rank ends on its own partial shard
            return -(-int(m.limits["max_tokens"]) // m.shard_tokens), False
        if m.limits.get("max_tokens"):
            return -(-int(m.limits["max_tokens"]) // m.shard_tokens), True
        last = m.shards[-1] if m.shards else None
        if m.limits.get("max_batches") and last is not None and last.batch_end > 0:
            rows = (last.row_start + last.n_rows) / last.batch_end * int(m.limits["max_batches"])
            return max(self.n_shards, -(-int(rows) // m.shard_tokens)), False
        return None, False

    def require_complete(self, *, allow_partial: bool = False) -> None:
        """Raise :class:`IncompleteStoreError` unless the writing run finished (or ``allow_partial``): training on
        the shards of a killed or running ``interp cache`` would use a fraction of the data without saying so. The
        message names the folder, the shards present and expected, and whether a job still writes it."""
        if self.complete or allow_partial:
            return
        expected, exact = self.expected_shards()
        of = (f"of {expected} expected" if exact else f"of about {expected} expected") if expected is not None \
            else "of an unknown total (the run had no --n-tokens / --max-batches limit)"
        holder = lock_holder(self.folder)
        why = (f"it is still being written by {holder.describe()}: wait for that job to finish"
               if holder is not None else "the run that wrote it stopped before the end: re-run the same "
               "`interp cache` command (cache_activations with the same arguments) to finish it")
        raise IncompleteStoreError(
            f"the activation cache {self.folder} is incomplete: {self.n_shards} shard(s) ({len(self)} rows) present "
            f"{of}; {why}, or pass --allow-partial (allow_partial=True) to train on the rows present",
            self.folder, self.n_shards, expected)

    @property
    def cast_error(self) -> dict[str, dict] | None:
        """What the storage dtype lost, per narrowed hook over every stored row: ``{"max_abs_error": max |x -
        cast(x)|, "rel_rms_error": sqrt(Σ(x - cast(x))² / Σx²), "n_rows"}``; None for a lossless dtype (or a cache
        written before the figures were recorded). See :meth:`~.manifest.Manifest.cast_error`."""
        return self.manifest.cast_error()

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype (readers return float32 unless told otherwise)."""
        return self.manifest.torch_dtype

    def hook(self, hook: str | None = None) -> str:
        """Resolve a hook argument: the name itself, or the only hook of a single-hook cache."""
        if hook is None:
            if len(self.hooks) != 1:
                raise ValueError(f"this cache holds several hooks {self.hooks}: pass hook=... to choose one")
            return self.hooks[0]
        if hook not in self.manifest.hooks:
            raise KeyError(f"hook {hook!r} is not in this cache; it holds {self.hooks}")
        return hook

    def d(self, hook: str | None = None) -> int:
        """Width of a hook's rows (its activation flattened after the position axis)."""
        d = self.manifest.hooks[self.hook(hook)]["d"]
        if d is None:
            raise ValueError(f"{self.folder} has no shard yet, so the width of the hook is unknown")
        return int(d)

    @property
    def d_in(self) -> int:
        """Row width of the cache's only hook (``d(hook)`` for a multi-hook cache)."""
        return self.d()

    # --- shards ------------------------------------------------------------------------------
    def shard(self, i: int) -> dict[str, Tensor]:
        """The ``i``-th listed shard: {hook: [n_rows, d] (storage dtype), "tokens"/"seq_idx"/"pos": int64 [n_rows]}."""
        return read_shard(self.folder, self.manifest.shards[i], verify=self.verify)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        """Shards in row order, as :meth:`shard` returns them."""
        for i in range(self.n_shards):
            yield self.shard(i)

    def all(self, hook: str | None = None, dtype: torch.dtype | None = torch.float32) -> Tensor:
        """Every row of a hook in memory: [len(store), d] (``dtype=None`` keeps the storage dtype)."""
        name = self.hook(hook)
        parts = [s[name] for s in self]
        x = torch.cat(parts) if parts else torch.empty(0, self.d(name), dtype=self.dtype)
        return x if dtype is None else x.to(dtype)

    def row_meta(self) -> dict[str, Tensor]:
        """Where every row comes from, aligned with :meth:`all`: int64 [len(store)] each of ``tokens``
        (token id), ``seq_idx`` (sequence index in the token stream) and ``pos`` (position in it)."""
        shards = list(self)
        return {k: torch.cat([s[k] for s in shards]) if shards else torch.empty(0, dtype=torch.long)
                for k in META_KEYS}

    # --- training batches ----------------------------------------------------------------------
    def rank_shards(self, rank: int = 0, world_size: int = 1) -> list[ShardEntry]:
        """The shards of one rank: every ``world_size``-th listed shard, starting at ``rank`` (disjoint
        across ranks and together covering the cache)."""
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if self.n_shards < world_size:
            raise ValueError(
                f"{self.folder} has {self.n_shards} shard(s), fewer than world_size={world_size}, so some rank "
                "would get no data; rebuild the cache with a smaller shard_tokens or use fewer ranks"
            )
        return self.manifest.shards[rank::world_size]

    def shuffled_batches(
        self,
        batch_size: int,
        seed: int = 0,
        hook: str | None = None,
        epochs: int = 1,
        buffer_shards: int = DEFAULT_BUFFER_SHARDS,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        device: str | torch.device | None = None,
    ) -> Iterator[Tensor]:
        """Shuffled float32 training batches [batch_size, d] of one hook.

        Each epoch visits this rank's shards in a random order, ``buffer_shards`` at a time; the rows of
        those shards (and the rows left over from the previous group) are permuted together and cut into
        batches. Every row of the rank's shards comes exactly once per epoch; the last batch of an
        epoch is smaller unless ``drop_last``. The order depends only on ``seed`` and the epoch.

        Args:
            batch_size: rows per batch.
            seed: shuffling seed (epoch ``e`` uses the numpy stream ``default_rng([seed, e])``).
            hook: which hook (optional for a single-hook cache).
            epochs: passes over the data.
            buffer_shards: shards shuffled together (memory: about buffer_shards * shard_tokens rows).
            rank, world_size: read only this rank's disjoint subset of shards (:meth:`rank_shards`), e.g.
                ``rank=dist.get_rank(), world_size=dist.get_world_size()`` under torchrun. Ranks may get
                one shard more or less than others; use ``drop_last`` and count steps if they must agree.
            drop_last: drop each epoch's last, smaller batch.
            device: where batches go (default CPU).
        """
        if batch_size < 1 or epochs < 0 or buffer_shards < 1:
            raise ValueError(f"need batch_size >= 1, epochs >= 0, buffer_shards >= 1; got {batch_size}, "
                             f"{epochs}, {buffer_shards}")
        name = self.hook(hook)  # argument errors are raised here, not at the first next()
        shards = self.rank_shards(rank, world_size)
        return self._shuffled(name, shards, batch_size, seed, epochs, buffer_shards, drop_last, device)

    def _shuffled(self, name: str, shards: list[ShardEntry], batch_size: int, seed: int, epochs: int,
                  buffer_shards: int, drop_last: bool, device: str | torch.device | None) -> Iterator[Tensor]:
        for epoch in range(epochs):
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(shards))
            carry = torch.empty(0, self.d(name), dtype=self.dtype)
            for start in range(0, len(order), buffer_shards):
                group = [read_shard(self.folder, shards[k], self.verify)[name]
                         for k in order[start:start + buffer_shards]]
                rows = torch.cat([carry, *group])
                rows = rows[torch.from_numpy(rng.permutation(len(rows)))]
                n_full = len(rows) // batch_size * batch_size
                for i in range(0, n_full, batch_size):
                    yield rows[i:i + batch_size].to(device=device, dtype=torch.float32)
                carry = rows[n_full:]
            if len(carry) and not drop_last:
                yield carry.to(device=device, dtype=torch.float32)
