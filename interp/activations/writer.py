"""``cache_activations``: run a model over a token stream and write hook activations to disk shards.

The run is resumable. After every shard the manifest is rewritten atomically, so a run killed at
any moment (SIGKILL included) leaves a folder whose manifest lists only complete, checksummed shards.
Restarted with the same arguments, it

1. checks the folder's manifest describes the same run (model weights, hooks, dtype, filters, shard
   size, limits, dataset description), else raises naming the differences;
2. checks every listed shard (size, sha256) and deletes shard files the manifest does not list
   (written just before a kill) and damaged ones;
3. re-reads the token stream from the start (it must be deterministic: the stream hash is compared at
   every stored shard's boundary), counts rows without running the model where they are already
   stored, and computes only the missing shards.

Shard ``i`` always holds global rows ``[i * shard_tokens, (i + 1) * shard_tokens)``, whatever the batch
boundaries, so nothing is lost or duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.hooks import HookedModel
from interp.hooks.loading import ExistingRunError
from interp.locks import FolderLock

from .collect import HookCollector, PosSlice, TokenStream, collector_for, row_meta
from .manifest import (
    MANIFEST_FILE, SHARD_PREFIX, TMP_SUFFIX, Manifest, ManifestError, ShardEntry, atomic_write,
    shard_name, shard_problem, weights_sha256,
)

DEFAULT_SHARD_TOKENS = 65536


class CacheMismatchError(ManifestError, ExistingRunError):
    """``out`` holds an activation cache of another run (other settings, or another token stream)."""


def model_name_of(model: Any) -> str:
    """``cfg.name`` (HookedSSM) or ``cfg.model_name`` (TransformerLens), else the class name."""
    cfg = getattr(model, "cfg", None)
    for attr in ("name", "model_name"):
        value = getattr(cfg, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


def cache_activations(
    model: HookedModel,
    batches: Iterable[Tensor],
    *,
    hook: str | Sequence[str],
    out: str | os.PathLike,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    dtype: torch.dtype | None = None,
    drop_bos: bool = True,
    drop_pad: bool = True,
    bos_id: int | None = None,
    pad_id: int | None = None,
    pos_slice: PosSlice = None,
    max_tokens: int | None = None,
    max_batches: int | None = None,
    dataset: Any = None,
    model_name: str | None = None,
    overwrite: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> Manifest:
    """Cache the activations of ``hook`` (one name or several) over a stream of token batches in safetensors
    shards under ``out``.

    Args:
        model: a hookable model (``interp.load(...)``).
        batches: iterable of LongTensor [batch, pos] token batches, e.g.
            ``interp.data.tokfsm_batches(64, seed=0)`` (endless: give ``max_tokens``/``max_batches``).
            It must yield the same batches when re-read, so an interrupted run can resume.
        hook: one hook name or several; each is stored as [rows, d] (dims after pos flattened).
        out: cache folder (created).
        shard_tokens: rows per shard (each shard is full but the last).
        dtype: storage dtype, cast inside the hook (float16/bfloat16 halve the memory); default: the
            model's dtype.
        drop_bos, drop_pad: drop rows whose token is the BOS / pad id (every occurrence); ids default to
            ``model.cfg`` then ``model.tokenizer``, or give ``bos_id`` / ``pad_id``.
        pos_slice: keep only these positions (slice, index or list), as ``run_with_cache``.
        max_tokens: stop after this many stored rows (the count after filtering).
        max_batches: stop after this many token batches.
        dataset: JSON-serialisable description of the data (e.g. ``{"name": "tokfsm", "seed": 0}``),
            stored in the manifest and compared on resume. The stream's sha256 is recorded anyway.
        model_name: name recorded in the manifest (default: from the model's config).
        overwrite: delete an existing cache in ``out`` (its manifest and shards only) and start over.
        verify: on resume, check every stored shard's sha256 (False: sizes only).
        progress: show a tqdm bar (tokens/s).

    Returns:
        The finished :class:`~interp.activations.manifest.Manifest` (also ``out/manifest.json``).

    Raises:
        UnknownHookError: a hook name the model does not have (closest names suggested).
        FolderLockedError: another job writes ``out`` (:mod:`interp.locks`; its PID and host are named).
        CacheMismatchError: ``out`` holds a cache of another run (the differences are listed), or the token
            stream differs from the one the stored shards came from (a :class:`ManifestError`).
        ValueError: empty stream, or no row left after the filters.
    """
    for name, value, low in (("shard_tokens", shard_tokens, 1), ("max_tokens", max_tokens, 1),
                             ("max_batches", max_batches, 1)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    folder = Path(out)
    collector = collector_for(model, hook, dtype, drop_bos, drop_pad, bos_id, pad_id, pos_slice)  # checks first
    dtype, row_filter = collector.dtype, collector.row_filter
    requested = Manifest(
        model={"name": model_name or model_name_of(model), "class": type(model).__name__,
               "weights_sha256": weights_sha256(model)},
        hooks={n: {"d": None, "shape": None} for n in collector.hooks},
        dtype=str(dtype).removeprefix("torch."), stop_at_layer=collector.stop_at_layer, shard_tokens=shard_tokens,
        filters=row_filter.to_dict(), limits={"max_tokens": max_tokens, "max_batches": max_batches},
        dataset={"description": _json_value(dataset, "dataset")},
    )

    with FolderLock(folder, job="interp cache"):  # one writer per folder, from the resume check to the end
        manifest = _prepare_folder(folder, requested, overwrite, verify)
        if manifest.complete:
            return manifest
        manifest.save(folder)
        return _run(manifest, folder, collector, batches, progress)


def _json_value(value: Any, name: str) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so a resume compares equal."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}= must be JSON-serialisable (str, number, list, dict), got {value!r}: {e}") from e


# --------------------------------------------------------------------------------------------
# the folder
# --------------------------------------------------------------------------------------------
def _our_files(folder: Path) -> list[Path]:
    """Files this module writes: the manifest, shards and their tmp files (nothing else is touched)."""
    return [p for p in folder.iterdir()
            if p.name.startswith((MANIFEST_FILE, SHARD_PREFIX)) and p.is_file()]


def _prepare_folder(folder: Path, requested: Manifest, overwrite: bool, verify: bool) -> Manifest:
    """Create / clear / validate ``folder``; return the manifest to continue from (complete if nothing to do)."""
    folder.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in _our_files(folder):
            p.unlink()
    if not (folder / MANIFEST_FILE).is_file():
        for p in _our_files(folder):  # shards written before the first manifest: orphans
            p.unlink()
        return requested

    existing = Manifest.load(folder)
    diffs = existing.differences(requested)
    if diffs:
        raise CacheMismatchError(f"{folder} holds an activation cache of a different run", restart="overwrite=True",
                                 details=diffs)
    listed = {e.file for e in existing.shards}
    for p in _our_files(folder):
        if p.name != MANIFEST_FILE and (p.name not in listed or p.name.endswith(TMP_SUFFIX)):
            p.unlink()  # a shard written just before the run was killed, or a half-written tmp file
    for entry in list(existing.shards):
        problem = shard_problem(folder, entry, checksum=verify)
        if problem is not None:
            warnings.warn(f"{folder / entry.file}: {problem}; recomputing it", stacklevel=3)
            (folder / entry.file).unlink(missing_ok=True)
            existing.shards.remove(entry)
            existing.complete = False
    return existing


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
class _ShardBuffer:
    """Rows of the shard being filled: per key a list of CPU chunks [n, ...]."""

    def __init__(self, index: int):
        self.index, self.n_rows, self.chunks = index, 0, {}

    def add(self, rows: dict[str, Tensor]) -> None:
        for k, v in rows.items():
            self.chunks.setdefault(k, []).append(v)
        self.n_rows += len(next(iter(rows.values())))

    def tensors(self) -> dict[str, Tensor]:
        return {k: torch.cat(v).contiguous() for k, v in self.chunks.items()}


def _write_shard(folder: Path, manifest: Manifest, buf: _ShardBuffer, batch_end: int, stream_sha: str) -> None:
    from safetensors.torch import save

    data = save(buf.tensors(), metadata={"format": "pt", "shard": str(buf.index), "hooks": ",".join(manifest.hooks)})
    entry = ShardEntry(
        index=buf.index, file=shard_name(buf.index), n_rows=buf.n_rows, row_start=buf.index * manifest.shard_tokens,
        n_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), batch_end=batch_end, stream_sha256=stream_sha,
    )
    atomic_write(folder / entry.file, data)
    manifest.add(entry)
    manifest.save(folder)


def _run(manifest: Manifest, folder: Path, collector: HookCollector, batches: Iterable[Tensor],
         progress: bool) -> Manifest:
    """Walk the stream; compute and write every shard the manifest does not list yet."""
    from tqdm.auto import tqdm

    S = manifest.shard_tokens
    stream = TokenStream(batches, collector.row_filter, **manifest.limits)
    stored = {e.index for e in manifest.shards}
    checkpoints = {e.batch_end: e.stream_sha256 for e in manifest.shards}
    buf: _ShardBuffer | None = None
    bar = tqdm(total=stream.max_tokens, unit="tok", unit_scale=True, disable=not progress,
               desc=f"caching {len(collector.hooks)} hook(s) -> {folder.name}")
    try:
        for tokens, keep, lo, seq_start in stream:
            _check_checkpoint(checkpoints, stream, folder)
            hi = stream.n_rows
            missing = [j for j in range(lo // S, (hi - 1) // S + 1) if j not in stored] if hi > lo else []
            if missing:
                rows = {k: v.cpu() for k, v in collector(tokens, keep).items()}
                rows.update(row_meta(tokens, keep, seq_start))
                if manifest.hooks[collector.hooks[0]]["d"] is None:
                    manifest.hooks = collector.hook_info()
                for j in missing:
                    a, b = max(lo, j * S), min(hi, (j + 1) * S)
                    if buf is None or buf.index != j:
                        buf = _ShardBuffer(j)
                    buf.add({k: v[a - lo:b - lo] for k, v in rows.items()})
                    if buf.n_rows == S:
                        _write_shard(folder, manifest, buf, stream.n_batches, stream.sha256.hexdigest())
                        stored.add(j)
                        buf = None
            bar.update(hi - lo)
    finally:
        bar.close()

    stream.check_nonempty()
    beyond = [e.file for e in manifest.shards if e.row_start + e.n_rows > stream.n_rows]
    if beyond:
        raise CacheMismatchError(
            f"the token stream ended after {stream.n_rows} rows, but {folder} already stores rows beyond that "
            f"({beyond}): it is not the stream the cache was written from; resume with the same stream",
            restart="overwrite=True",
        )
    if buf is not None and buf.n_rows:  # the last, partial shard
        _write_shard(folder, manifest, buf, stream.n_batches, stream.sha256.hexdigest())
    digest = stream.sha256.hexdigest()
    if manifest.dataset.get("sha256") not in (None, digest):
        raise CacheMismatchError(
            f"the token stream's sha256 differs from the one recorded in {folder / MANIFEST_FILE}: it is not the "
            "stream the cache was written from; resume with the same stream", restart="overwrite=True",
        )
    manifest.dataset.update(sha256=digest, n_batches=stream.n_batches, n_sequences=stream.n_sequences)
    manifest.complete = True
    manifest.save(folder)
    return manifest


def _check_checkpoint(checkpoints: dict[int, str], stream: TokenStream, folder: Path) -> None:
    """At a stored shard's ``batch_end``, the stream hash must equal the one recorded with it."""
    want = checkpoints.get(stream.n_batches)
    if want is not None and want != stream.sha256.hexdigest():
        raise CacheMismatchError(
            f"the token stream differs from the one the shards in {folder} were written from (hash mismatch after "
            f"batch {stream.n_batches}). Resuming needs a deterministic stream (same data, seed and batch size)",
            restart="overwrite=True",
        )
