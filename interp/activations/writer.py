"""``cache_activations``: run a model over a token stream and write hook activations to disk shards.

The run is resumable. After every shard the manifest is rewritten atomically, so a run killed at
any moment (SIGKILL included) leaves a folder whose manifest lists only complete, checksummed shards.
Restarted with the same arguments, it

1. checks the folder's manifest describes the same run (model weights, hooks, dtype, filters, shard
   size, limits, number of processes, dataset description), else raises naming the differences;
2. checks every listed shard (size, sha256) and deletes shard files the manifest does not list
   (written just before a kill) and damaged ones;
3. re-reads the token stream from the start (it must be deterministic: the stream hash is compared at
   every stored shard's boundary), counts rows without running the model where they are already
   stored, and computes only the missing shards.

Shard ``i`` always holds global rows ``[i * shard_tokens, (i + 1) * shard_tokens)``, whatever the batch
boundaries, so nothing is lost or duplicated.

**Background writing.** The main thread runs the forwards and fills the shard buffer; a full shard is handed to
one background thread (:class:`_ShardWriter`, a single worker, so shards and manifest updates land in order) that
serialises it (safetensors bytes), hashes it (sha256), writes it atomically and then rewrites the manifest, while
the main thread runs the next batches. At most one shard is pending: handing over the next one first waits for it,
so memory stays at about two shards. An error on the writer is re-raised in the caller as :class:`ShardWriteError`
naming the file; the end of the run (and an interruption) waits for the last write before the manifest is marked
complete (or the exception propagates), so the manifest still lists only complete, checksummed shards.

**Narrow storage.** With a storage ``dtype`` narrower than a hook's activations (float16 / bfloat16 from float32)
the cast's error is measured on the stored rows (:meth:`~.collect.HookCollector.collect`) and kept per shard entry
as sums (max |x - cast(x)|, Σ(x - cast(x))², Σx²), so the manifest's ``cast_error`` (max abs and relative RMS error
per hook, :meth:`~.manifest.Manifest.cast_error`) covers the whole cache, resumed runs included.

**Several processes (torchrun).** Under an initialised ``torch.distributed`` process group (``interp cache`` joins
one under ``torchrun``) with ``W`` processes, token batch ``i`` of the stream is cached by rank ``i % W`` (each rank
reads the whole stream, which is cheap, and runs the model on its batches only), so the ranks' rows are disjoint,
together equal a one-process run's rows, and a relaunch reproduces the split. Files, so that no two processes ever
write the same one:

* rank 0 alone takes the folder's :class:`~interp.locks.FolderLock` (a second, independent job is refused; the
  ranks of this job are not), checks / creates ``manifest.json`` (the run's identity, ``world_size`` included) and
  tells the other ranks the outcome (an error is raised on every rank);
* rank ``r`` writes only ``shard_r{r:02d}_{i:05d}.safetensors`` (its ``i``-th block of ``shard_tokens`` of its own
  rows; ``row_start`` counts its rows) and its own ``manifest_r{r:02d}.json``, with the same kill-safety and resume
  rules as one process (a relaunch keeps every rank's complete shards and recomputes the rest);
* when every rank manifest is marked complete, rank 0 merges them into ``manifest.json`` (complete, entries sorted
  by index, then rank) and deletes them; the other ranks return the merged manifest once it is complete. The ranks
  wait for each other through these files (polled), not a collective with a timeout: after a relaunch, a rank whose
  shards were all kept may wait for hours. Under ``torchrun`` a rank that dies stops the others; the folder must be
  on a file system every rank sees.
:class:`~interp.activations.ActivationStore` reads the merged cache, and a partial one through the rank manifests
(:func:`~.manifest.load_cache_manifest`). Relaunch with the same number of processes (``world_size`` is part of the
run's identity).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp.hooks import HookedModel
from interp.hooks.loading import ExistingRunError
from interp.locks import FolderLock, FolderLockedError

from .collect import HookCollector, PosSlice, TokenStream, collector_for, row_meta
from .manifest import (
    MANIFEST_FILE, RANK_MANIFEST_PREFIX, SHARD_PREFIX, TMP_SUFFIX, Manifest, ManifestError, ShardEntry, atomic_write,
    rank_manifest_name, shard_name, shard_problem, weights_sha256,
)

DEFAULT_SHARD_TOKENS = 65536


class CacheMismatchError(ManifestError, ExistingRunError):
    """``out`` holds an activation cache of another run (other settings, or another token stream)."""


class ShardWriteError(OSError):
    """Writing a shard (or the manifest entry after it) failed on the background writer; the message names the
    file. The manifest still lists only the shards written before; rerunning the same call resumes."""


def model_name_of(model: Any) -> str:
    """``cfg.name`` (HookedSSM) or ``cfg.model_name`` (TransformerLens), else the class name."""
    cfg = getattr(model, "cfg", None)
    for attr in ("name", "model_name"):
        value = getattr(cfg, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(model).__name__


@dataclass(frozen=True)
class RankSlice:
    """Which part of the token stream this process caches: batches ``i`` with ``i % world_size == rank``."""

    rank: int = 0
    world_size: int = 1

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.world_size == self.rank

    @property
    def manifest_name(self) -> str:
        """The manifest this process writes: ``manifest.json`` alone, ``manifest_r{rank:02d}.json`` as a rank."""
        return MANIFEST_FILE if self.world_size == 1 else rank_manifest_name(self.rank)

    def shard_name(self, index: int) -> str:
        return shard_name(index, self.rank, self.world_size)

    def files(self, folder: Path) -> list[Path]:
        """The files of ``folder`` this process may write or delete (and their tmp files)."""
        if self.world_size == 1:
            return _our_files(folder)
        mine = (self.manifest_name, f"{SHARD_PREFIX}r{self.rank:02d}_")
        return [p for p in folder.iterdir() if p.name.startswith(mine) and p.is_file()]


def rank_slice(rank: int | None = None, world_size: int | None = None) -> RankSlice:
    """This process's :class:`RankSlice`: from ``torch.distributed`` when a process group is initialised (and no
    argument is given), else one process. ``rank=0, world_size=1`` caches alone even inside a process group; a
    ``world_size`` > 1 needs the process group it describes (rank 0 tells the others whether the folder is theirs)."""
    import torch.distributed as dist

    group = dist.is_available() and dist.is_initialized()
    if rank is None and world_size is None:
        return RankSlice(dist.get_rank(), dist.get_world_size()) if group else RankSlice()
    if rank is None or world_size is None:
        raise ValueError(f"give both rank= and world_size= (or neither), got rank={rank!r}, world_size={world_size!r}")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need integers 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if world_size > 1 and not (group and (dist.get_rank(), dist.get_world_size()) == (rank, world_size)):
        have = f"rank {dist.get_rank()} of {dist.get_world_size()}" if group else "no process group"
        raise ValueError(
            f"rank={rank}, world_size={world_size} needs the torch.distributed process group of those "
            f"{world_size} processes (this process has {have}): launch with `torchrun --nproc_per_node "
            f"{world_size} ...` and call torch.distributed.init_process_group() first, or pass neither argument")
    return RankSlice(rank, world_size)


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
    rank: int | None = None,
    world_size: int | None = None,
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
        shard_tokens: rows per shard (each shard is full but the last, per process).
        dtype: storage dtype, cast inside the hook (float16/bfloat16 halve the memory; the cast's error is
            recorded in the manifest, ``cast_error``); default: the model's dtype.
        drop_bos, drop_pad: drop rows whose token is the BOS / pad id (every occurrence); ids default to
            ``model.cfg`` then ``model.tokenizer``, or give ``bos_id`` / ``pad_id``.
        pos_slice: keep only these positions (slice, index or list), as ``run_with_cache``.
        max_tokens: stop after this many stored rows (the count after filtering; all processes together).
        max_batches: stop after this many token batches (all processes together).
        dataset: JSON-serialisable description of the data (e.g. ``{"name": "tokfsm", "seed": 0}``),
            stored in the manifest and compared on resume. The stream's sha256 is recorded anyway.
        model_name: name recorded in the manifest (default: from the model's config).
        overwrite: delete an existing cache in ``out`` (its manifests and shards only) and start over.
        verify: on resume, check every stored shard's sha256 (False: sizes only).
        progress: show a tqdm bar (tokens/s; rank 0 only).
        rank, world_size: this process's share (module docstring): default from an initialised
            ``torch.distributed`` process group (e.g. under ``torchrun``), else one process; ``rank=0,
            world_size=1`` caches alone inside a group.

    Returns:
        The finished :class:`~interp.activations.manifest.Manifest` (also ``out/manifest.json``; under several
        processes the merged one, on every rank).

    Raises:
        UnknownHookError: a hook name the model does not have (closest names suggested).
        FolderLockedError: another job writes ``out`` (:mod:`interp.locks`; its PID and host are named).
        CacheMismatchError: ``out`` holds a cache of another run (the differences are listed), or the token
            stream differs from the one the stored shards came from (a :class:`ManifestError`).
        ShardWriteError: writing a shard failed (the file is named).
        ValueError: empty stream, or no row left after the filters.
    """
    for name, value, low in (("shard_tokens", shard_tokens, 1), ("max_tokens", max_tokens, 1),
                             ("max_batches", max_batches, 1)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    part = rank_slice(rank, world_size)
    folder = Path(out)
    collector = collector_for(model, hook, dtype, drop_bos, drop_pad, bos_id, pad_id, pos_slice)  # checks first
    dtype, row_filter = collector.dtype, collector.row_filter
    requested = Manifest(
        model={"name": model_name or model_name_of(model), "class": type(model).__name__,
               "weights_sha256": weights_sha256(model)},
        hooks={n: {"d": None, "shape": None} for n in collector.hooks},
        dtype=str(dtype).removeprefix("torch."), stop_at_layer=collector.stop_at_layer, shard_tokens=shard_tokens,
        filters=row_filter.to_dict(), limits={"max_tokens": max_tokens, "max_batches": max_batches},
        dataset={"description": _json_value(dataset, "dataset")}, world_size=part.world_size,
    )
    if part.world_size > 1:
        return _cache_ranks(folder, requested, overwrite, verify, collector, batches, progress, part)

    with FolderLock(folder, job="interp cache"):  # one writer per folder, from the resume check to the end
        manifest = _prepare_folder(folder, requested, overwrite, verify, part)
        if manifest.complete:
            return manifest
        manifest.save(folder)
        return _run(manifest, folder, collector, batches, progress, part)


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
    """Files this module writes: the manifests, shards and their tmp files (nothing else is touched)."""
    return [p for p in folder.iterdir()
            if p.name.startswith((MANIFEST_FILE, RANK_MANIFEST_PREFIX, SHARD_PREFIX)) and p.is_file()]


def _prepare_folder(folder: Path, requested: Manifest, overwrite: bool, verify: bool, part: RankSlice) -> Manifest:
    """Create / clear / validate this process's files in ``folder`` (all of them alone, its own as a rank); return
    the manifest to continue from (complete if nothing is left to do)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = part.manifest_name
    if overwrite:
        for p in part.files(folder):
            p.unlink()
    if not (folder / name).is_file():
        for p in part.files(folder):  # shards written before the first manifest: orphans
            p.unlink()
        return requested

    existing = Manifest.load(folder, name)
    diffs = existing.differences(requested)
    if diffs:
        raise CacheMismatchError(f"{folder} holds an activation cache of a different run", restart="overwrite=True",
                                 details=diffs)
    listed = {e.file for e in existing.shards}
    for p in part.files(folder):
        if p.name != name and (p.name not in listed or p.name.endswith(TMP_SUFFIX)):
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
# several processes
# --------------------------------------------------------------------------------------------
def _prepare_main(folder: Path, requested: Manifest, overwrite: bool) -> bool:
    """Rank 0, holding the lock, before any other rank touches the folder: clear it (``overwrite``), check an
    existing ``manifest.json`` against the run, or write the run's (empty) one. True if the cache is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in _our_files(folder):
            p.unlink()
    if (folder / MANIFEST_FILE).is_file():
        existing = Manifest.load(folder)
        diffs = existing.differences(requested)
        if diffs:
            raise CacheMismatchError(f"{folder} holds an activation cache of a different run",
                                     restart="overwrite=True", details=diffs)
        if existing.complete:
            for p in folder.glob(f"{RANK_MANIFEST_PREFIX}*"):  # left by a kill between the merge and the clean-up
                p.unlink()
            return True
        return False
    for p in _our_files(folder):  # files written before the first manifest: orphans
        p.unlink()
    requested.save(folder)
    return False


def _cache_ranks(folder: Path, requested: Manifest, overwrite: bool, verify: bool, collector: HookCollector,
                 batches: Iterable[Tensor], progress: bool, part: RankSlice) -> Manifest:
    """One rank of a multi-process cache (module docstring: rank 0 locks and checks, every rank writes its own
    files, rank 0 merges the manifests when every rank has finished)."""
    import torch.distributed as dist

    lock = FolderLock(folder, job=f"interp cache ({part.world_size} processes)")
    try:
        outcome: list[Any] = [None]
        error: BaseException | None = None
        if part.rank == 0:
            try:
                lock.acquire()
                outcome[0] = ("complete" if _prepare_main(folder, requested, overwrite) else "go", "")
            except Exception as e:  # every rank must hear of it, or they would wait for ever
                error, outcome[0] = e, (type(e).__name__, str(e))
        dist.broadcast_object_list(outcome, src=0)
        kind, message = outcome[0]
        if error is not None:
            raise error
        if kind == "FolderLockedError":
            raise FolderLockedError(message, folder, None)
        if kind == "CacheMismatchError":
            raise CacheMismatchError(message, restart="overwrite=True")
        if kind not in ("go", "complete"):
            raise RuntimeError(f"rank 0 could not start the activation cache in {folder}: {kind}: {message}")
        if kind == "complete":
            return Manifest.load(folder)

        manifest = _prepare_folder(folder, requested, False, verify, part)
        if not manifest.complete:
            manifest.save(folder, part.manifest_name)
        dist.barrier()  # every rank manifest on disk is now this launch's (not a previous launch's "complete")
        if not manifest.complete:
            _run(manifest, folder, collector, batches, progress, part)  # saves it complete (this rank is done)
        # the ranks meet through the files, not a collective: after a relaunch a rank whose shards were all kept
        # may wait for hours, longer than a process group's timeout (a dead rank stops the job under torchrun)
        if part.rank == 0:
            _wait_until(folder, lambda: all(_done(folder, rank_manifest_name(r)) for r in range(part.world_size)))
            return _merge_ranks(folder, part.world_size)
        _wait_until(folder, lambda: _done(folder, MANIFEST_FILE))
        return Manifest.load(folder)
    finally:
        lock.release()  # a no-op where this process does not hold it


def _done(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` is a manifest marked complete (files are swapped in whole: no partial read)."""
    try:
        return (folder / name).is_file() and Manifest.load(folder, name).complete
    except ManifestError:
        return False


def _wait_until(folder: Path, ready: Any, poll_s: float = 0.2) -> None:
    """Poll ``ready()`` (the other ranks' progress in ``folder``) until it holds."""
    import time

    while not ready():
        time.sleep(poll_s)


def _merge_ranks(folder: Path, world_size: int) -> Manifest:
    """Rank 0, after every rank finished: ``manifest.json`` := the run's manifest with every rank's shards,
    complete; then the rank manifests are deleted (a kill in between leaves a complete manifest.json, whose next
    run deletes them)."""
    main = Manifest.load(folder)
    parts = [Manifest.load(folder, rank_manifest_name(r)) for r in range(world_size)]
    unfinished = [r for r, p in enumerate(parts) if not p.complete]
    if unfinished:
        raise RuntimeError(f"{folder}: rank(s) {unfinished} reached the end without finishing their shards")
    digests = {p.dataset.get("sha256") for p in parts}
    if len(digests) != 1:
        raise CacheMismatchError(f"the ranks writing {folder} read different token streams (sha256 {sorted(digests)}"
                                 "): every rank must read the same deterministic stream", restart="overwrite=True")
    main.shards = []
    for p in parts:
        for entry in p.shards:
            main.add(entry)
        if main.hooks[next(iter(main.hooks))]["d"] is None:
            main.hooks = p.hooks
    main.dataset = parts[0].dataset
    main.complete = True
    main.save(folder)
    for r in range(world_size):
        (folder / rank_manifest_name(r)).unlink(missing_ok=True)
    return main


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
class _ShardBuffer:
    """Rows of the shard being filled: per key a list of CPU chunks [n, ...], and per narrowed hook the rows' cast
    errors [n, 3] (:func:`~.collect.cast_error_rows`)."""

    def __init__(self, index: int):
        self.index, self.n_rows, self.chunks, self.errors = index, 0, {}, {}

    def add(self, rows: dict[str, Tensor], errors: dict[str, Tensor]) -> None:
        for k, v in rows.items():
            self.chunks.setdefault(k, []).append(v)
        for k, v in errors.items():
            self.errors.setdefault(k, []).append(v)
        self.n_rows += len(next(iter(rows.values())))

    def tensors(self) -> dict[str, Tensor]:
        return {k: torch.cat(v).contiguous() for k, v in self.chunks.items()}

    def cast_error(self) -> dict[str, list[float]] | None:
        """{hook: [max |x - cast(x)|, Σ(x - cast(x))², Σx²]} over the shard's rows, None if nothing was narrowed."""
        if not self.errors:
            return None
        out = {}
        for k, parts in self.errors.items():
            e = torch.cat(parts)  # [n_rows, 3]
            out[k] = [float(e[:, 0].max()) if len(e) else 0.0, float(e[:, 1].sum()), float(e[:, 2].sum())]
        return out


def _write_shard(folder: Path, manifest: Manifest, buf: _ShardBuffer, batch_end: int, stream_sha: str,
                 part: RankSlice) -> None:
    """Serialise, hash and atomically write one shard, then list it in the manifest (runs on the writer thread)."""
    from safetensors.torch import save

    metadata = {"format": "pt", "shard": str(buf.index), "hooks": ",".join(manifest.hooks)}
    if part.world_size > 1:
        metadata.update(rank=str(part.rank), world_size=str(part.world_size))
    data = save(buf.tensors(), metadata=metadata)
    entry = ShardEntry(
        index=buf.index, file=part.shard_name(buf.index), n_rows=buf.n_rows,
        row_start=buf.index * manifest.shard_tokens, n_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        batch_end=batch_end, stream_sha256=stream_sha, rank=part.rank, cast_error=buf.cast_error(),
    )
    atomic_write(folder / entry.file, data)
    manifest.add(entry)
    manifest.save(folder, part.manifest_name)


class _ShardWriter:
    """One background thread writing full shards (:func:`_write_shard`) in order, at most one pending."""

    def __init__(self, folder: Path, manifest: Manifest, part: RankSlice):
        self.folder, self.manifest, self.part = folder, manifest, part
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interp-cache-writer")
        self._pending: tuple[Future, str] | None = None

    def submit(self, buf: _ShardBuffer, batch_end: int, stream_sha: str) -> None:
        """Hand over a full shard; first wait for the previous one (memory stays bounded)."""
        self.wait()
        future = self._pool.submit(_write_shard, self.folder, self.manifest, buf, batch_end, stream_sha, self.part)
        self._pending = (future, self.part.shard_name(buf.index))

    def wait(self) -> None:
        """Wait for the pending shard; its error is raised here as :class:`ShardWriteError` naming the file."""
        if self._pending is None:
            return
        (future, file), self._pending = self._pending, None
        try:
            future.result()
        except Exception as e:
            raise ShardWriteError(f"writing the activation shard {self.folder / file} (or listing it in "
                                  f"{self.folder / self.part.manifest_name}) failed: {type(e).__name__}: {e}. The "
                                  "shards listed before are intact: rerun the same call to resume") from e

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _run(manifest: Manifest, folder: Path, collector: HookCollector, batches: Iterable[Tensor],
         progress: bool, part: RankSlice) -> Manifest:
    """Walk the stream; compute (this process's batches) and write every shard the manifest does not list yet."""
    from tqdm.auto import tqdm

    S = manifest.shard_tokens
    stream = TokenStream(batches, collector.row_filter, **manifest.limits)
    stored = {e.index for e in manifest.shards}
    checkpoints = {e.batch_end: e.stream_sha256 for e in manifest.shards}
    buf: _ShardBuffer | None = None
    n_mine = 0  # rows of this process's batches so far (all rows with one process)
    writer = _ShardWriter(folder, manifest, part)
    bar = tqdm(total=stream.max_tokens, unit="tok", unit_scale=True, disable=not progress or part.rank != 0,
               desc=f"caching {len(collector.hooks)} hook(s) -> {folder.name}")
    try:
        try:
            for tokens, keep, row_start, seq_start in stream:
                _check_checkpoint(checkpoints, stream, folder)
                bar.update(stream.n_rows - row_start)
                if not part.owns(stream.n_batches - 1):
                    continue
                lo, hi = n_mine, n_mine + stream.n_rows - row_start
                n_mine = hi
                missing = [j for j in range(lo // S, (hi - 1) // S + 1) if j not in stored] if hi > lo else []
                if not missing:
                    continue
                rows, errors = collector.collect(tokens, keep)
                rows = {k: v.cpu() for k, v in rows.items()}
                errors = {k: v.cpu() for k, v in errors.items()}
                rows.update(row_meta(tokens, keep, seq_start))
                if manifest.hooks[collector.hooks[0]]["d"] is None:
                    manifest.hooks = collector.hook_info()  # before the first shard is handed to the writer
                for j in missing:
                    a, b = max(lo, j * S), min(hi, (j + 1) * S)
                    if buf is None or buf.index != j:
                        buf = _ShardBuffer(j)
                    buf.add({k: v[a - lo:b - lo] for k, v in rows.items()},
                            {k: v[a - lo:b - lo] for k, v in errors.items()})
                    if buf.n_rows == S:
                        writer.submit(buf, stream.n_batches, stream.sha256.hexdigest())  # runs on while it writes
                        stored.add(j)
                        buf = None
            writer.wait()
        except BaseException as e:  # an interruption: let the pending shard land (it is complete) before unwinding
            try:
                writer.wait()
            except ShardWriteError as w:
                e.add_note(str(w))
            raise
        finally:
            bar.close()

        stream.check_nonempty()
        beyond = [e.file for e in manifest.shards if e.row_start + e.n_rows > n_mine]
        if beyond:
            raise CacheMismatchError(
                f"the token stream ended after {stream.n_rows} rows, but {folder} already stores rows beyond that "
                f"({beyond}): it is not the stream the cache was written from; resume with the same stream",
                restart="overwrite=True",
            )
        if buf is not None and buf.n_rows:  # the last, partial shard
            writer.submit(buf, stream.n_batches, stream.sha256.hexdigest())
            writer.wait()
    finally:
        writer.close()
    digest = stream.sha256.hexdigest()
    if manifest.dataset.get("sha256") not in (None, digest):
        raise CacheMismatchError(
            f"the token stream's sha256 differs from the one recorded in {folder / part.manifest_name}: it is not "
            "the stream the cache was written from; resume with the same stream", restart="overwrite=True",
        )
    manifest.dataset.update(sha256=digest, n_batches=stream.n_batches, n_sequences=stream.n_sequences)
    manifest.complete = True
    manifest.save(folder, part.manifest_name)
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
