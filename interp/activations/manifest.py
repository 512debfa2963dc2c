"""The manifest of an activation cache: what was cached, from which model and data, and where.

A cache folder holds ``manifest.json`` and shards ``shard_00000.safetensors``, ``shard_00001...``.
Shard ``i`` holds the global rows ``[i * shard_tokens, i * shard_tokens + n_rows)`` (every shard is
full except the last one of a finished run), so a shard's content is fixed by its index alone: a
damaged or missing shard can be recomputed by itself.

Each shard is a safetensors file with one tensor per hook and three index tensors::

    "<hook name>"  [n_rows, d_hook]  activations, flattened after the position axis, in ``dtype``
    "tokens"       [n_rows] int64    token id at the row's position
    "seq_idx"      [n_rows] int64    index of the row's sequence in the token stream (0, 1, 2, ...)
    "pos"          [n_rows] int64    position of the row inside its sequence

``manifest.json`` (written atomically: tmp file + ``os.replace``, after every shard)::

    {"format": "interp.activations", "version": 1, "complete": false,
     "model": {"name": ..., "class": ..., "weights_sha256": ...},
     "hooks": {"blocks.1.hook_resid_post": {"d": 32, "shape": [32]}},
     "dtype": "float16", "stop_at_layer": 2, "shard_tokens": 65536,
     "filters": {"drop_bos": true, "bos_id": 10, "drop_pad": true, "pad_id": 10, "pos_slice": null},
     "limits": {"max_tokens": null, "max_batches": 100}, "world_size": 1,
     "dataset": {"description": ..., "sha256": ..., "n_batches": ..., "n_sequences": ...},
     "shards": [{"index": 0, "file": "shard_00000.safetensors", "n_rows": 65536, "row_start": 0,
                 "n_bytes": ..., "sha256": ..., "batch_end": 17, "stream_sha256": ..., "rank": 0,
                 "cast_error": {"blocks.1.hook_resid_post": [max_abs, sq_err, sq]}}, ...],
     "n_rows": ..., "cast_error": {"blocks.1.hook_resid_post": {"max_abs_error": ..., "rel_rms_error": ...,
                                                                "n_rows": ...}}}

``cast_error`` (per shard entry, and summed over the shards at the top level): when the storage dtype is narrower
than the hook's activations (float16 / bfloat16 from float32), per hook ``[max |x - cast(x)|, Σ (x - cast(x))², Σ
x²]`` over the shard's rows (float64), and at the top level ``{hook: {"max_abs_error", "rel_rms_error", "n_rows"}}``
with ``rel_rms_error = sqrt(Σ (x - cast(x))² / Σ x²)`` over every stored row (a resumed run keeps the entries of the
shards it kept, so the figures always cover the whole cache); ``None`` for a lossless dtype. Manifests written
before the field existed load with ``None``.

Under ``torchrun`` (``world_size`` > 1, :mod:`.writer`) rank ``r`` writes shards ``shard_r{r:02d}_{i:05d}.safetensors``
(its ``i``-th block of ``shard_tokens`` rows of its own row stream) and lists them in its own
``manifest_r{r:02d}.json``; rank 0 merges those into ``manifest.json`` at the end (entries sorted by index, then
rank, each with its ``rank``) and deletes them. :func:`load_cache_manifest` (what readers use) adds the shards of
the rank manifests present to an unfinished ``manifest.json``, so a partial multi-rank cache reads like a partial
single-process one.

``dataset.sha256`` (the fingerprint of the token stream: sha256 over every consumed batch's shape
and int64 token bytes) is filled in when the run completes; every shard also records the running
stream hash after the batch holding its last row (``stream_sha256`` at ``batch_end`` batches), so a
resumed run checks it is re-reading the same stream.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.io import RECORD_KEY, FileError, json_bytes, read_json

MANIFEST_FILE = "manifest.json"
FORMAT_NAME = "interp.activations"
FORMAT_VERSION = 1
SHARD_PREFIX = "shard_"
RANK_MANIFEST_PREFIX = "manifest_r"  # per-rank manifests of a multi-process run (merged into manifest.json)
SHARD_SUFFIX = ".safetensors"
TMP_SUFFIX = ".tmp"
META_KEYS = ("tokens", "seq_idx", "pos")  # index tensors stored in every shard beside the hooks
_HASH_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A cache folder has no readable manifest, or one that does not match the requested run."""


class CorruptShardError(OSError):
    """A shard file is missing, truncated or does not match its checksum."""


# --------------------------------------------------------------------------------------------
# hashing
# --------------------------------------------------------------------------------------------
def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype, bfloat16 included), C-contiguous, on the CPU."""
    t = t.detach().contiguous().cpu().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict in sorted key order: each key, dtype, shape and tensor bytes."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(f"{key}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def update_stream_hash(h: "hashlib._Hash", tokens: torch.Tensor) -> None:
    """Feed one token batch [batch, pos] (its shape and int64 bytes) to the stream hash."""
    h.update(f"{list(tokens.shape)}|".encode())
    h.update(tensor_bytes(tokens.to(torch.int64)))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def shard_name(index: int, rank: int = 0, world_size: int = 1) -> str:
    """``shard_00007.safetensors`` (one process), ``shard_r01_00007.safetensors`` (rank 1 of several)."""
    if world_size == 1:
        return f"{SHARD_PREFIX}{index:05d}{SHARD_SUFFIX}"
    return f"{SHARD_PREFIX}r{rank:02d}_{index:05d}{SHARD_SUFFIX}"


def rank_manifest_name(rank: int) -> str:
    """The manifest rank ``rank`` of a multi-process run keeps while it runs: ``manifest_r01.json``."""
    return f"{RANK_MANIFEST_PREFIX}{rank:02d}.json"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a restart after SIGKILL) sees the old file
    or the new one, never a part: write ``path.tmp``, fsync, ``os.replace``."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# the manifest
# --------------------------------------------------------------------------------------------
@dataclass
class ShardEntry:
    """One stored shard: global rows ``[row_start, row_start + n_rows)``."""

    index: int
    file: str
    n_rows: int
    row_start: int
    n_bytes: int
    sha256: str
    batch_end: int  # token batches consumed when its last row was produced
    stream_sha256: str  # stream hash after those batch_end batches
    rank: int = 0  # the process that wrote it (row_start counts that rank's rows; 0 for a one-process cache)
    cast_error: dict[str, list[float]] | None = None  # hook -> [max |x - cast(x)|, Σ(x - cast(x))², Σx²] or None


@dataclass
class Manifest:
    """Everything needed to trust, resume and read an activation cache (see the module docstring)."""

    model: dict[str, Any]
    hooks: dict[str, dict[str, Any]]  # name -> {"d": int, "shape": [trailing dims]}
    dtype: str
    stop_at_layer: int | None
    shard_tokens: int
    filters: dict[str, Any]
    limits: dict[str, Any]
    dataset: dict[str, Any]
    shards: list[ShardEntry] = field(default_factory=list)
    complete: bool = False
    world_size: int = 1  # processes that wrote it (torchrun); each keeps its batches i % world_size == rank
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    # --- derived ---------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Rows stored in the shards listed so far."""
        return sum(s.n_rows for s in self.shards)

    @property
    def hook_names(self) -> list[str]:
        return list(self.hooks)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def entry(self, index: int, rank: int = 0) -> ShardEntry | None:
        return next((s for s in self.shards if s.index == index and s.rank == rank), None)

    def add(self, entry: ShardEntry) -> None:
        """Add (or replace) a shard entry, keeping the list sorted by (index, rank)."""
        self.shards = sorted([s for s in self.shards if (s.index, s.rank) != (entry.index, entry.rank)] + [entry],
                             key=lambda s: (s.index, s.rank))

    def cast_error(self) -> dict[str, dict[str, Any]] | None:
        """The storage cast's error over every listed shard, per hook: ``{"max_abs_error": max |x - cast(x)|,
        "rel_rms_error": sqrt(Σ(x - cast(x))² / Σx²), "n_rows": rows measured}``; None when no shard records one
        (a lossless dtype, or a manifest older than the field). Hooks whose activations were not narrowed are
        absent."""
        sums: dict[str, list[float]] = {}
        for s in self.shards:
            for hook, (max_abs, sq_err, sq) in (s.cast_error or {}).items():
                acc = sums.setdefault(hook, [0.0, 0.0, 0.0, 0])
                acc[0], acc[1], acc[2], acc[3] = max(acc[0], max_abs), acc[1] + sq_err, acc[2] + sq, acc[3] + s.n_rows
        if not sums:
            return None
        return {h: {"max_abs_error": m, "rel_rms_error": math.sqrt(e / q) if q > 0 else (0.0 if e == 0 else None),
                    "n_rows": n} for h, (m, e, q, n) in sums.items()}

    # --- the run's identity ------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The fields two runs must share to write into the same folder."""
        return json.loads(json.dumps({
            "model": self.model, "hooks": list(self.hooks), "dtype": self.dtype, "shard_tokens": self.shard_tokens,
            "filters": self.filters, "limits": self.limits, "world_size": self.world_size,
            "dataset description": self.dataset.get("description"),
        }))

    def differences(self, other: "Manifest") -> list[str]:
        """Human-readable list of identity fields where ``self`` (on disk) and ``other`` (requested) differ."""
        mine, theirs = self.identity(), other.identity()
        out = []
        for key in mine:
            a, b = mine[key], theirs[key]
            if isinstance(a, dict) and isinstance(b, dict):
                for sub in sorted(set(a) | set(b)):
                    if a.get(sub) != b.get(sub):
                        out.append(f"{key}.{sub}: cache has {a.get(sub)!r}, this run has {b.get(sub)!r}")
            elif a != b:
                out.append(f"{key}: cache has {a!r}, this run has {b!r}")
        return out

    # --- io --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_rows"] = self.n_rows
        d["cast_error"] = self.cast_error()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d.pop("n_rows", None)
        d.pop("cast_error", None)  # derived from the shard entries
        d.pop(RECORD_KEY, None)
        d["shards"] = [ShardEntry(**s) for s in d.get("shards", [])]
        return cls(**d)

    def save(self, folder: str | os.PathLike, name: str = MANIFEST_FILE) -> None:
        """Write ``folder/manifest.json`` (or ``name``) atomically, with its own sha256 (:mod:`interp.io`; each
        shard's is in its entry), so a damaged manifest is refused by :meth:`load`."""
        atomic_write(Path(folder) / name, json_bytes(self.to_dict(), indent=1, checksums=()))

    @classmethod
    def load(cls, folder: str | os.PathLike, name: str = MANIFEST_FILE) -> "Manifest":
        path = Path(folder) / name
        if not path.is_file():
            raise ManifestError(
                f"{folder} has no {MANIFEST_FILE}: it is not an activation cache (write one with "
                "interp.activations.cache_activations(model, batches, hook=..., out=...))"
            )
        try:
            d = read_json(path, what="activation-cache manifest")  # names the file; checks the manifest's sha256
        except FileError as e:
            raise ManifestError(f"{e} (cache_activations with overwrite=True rebuilds the cache)") from e
        if not isinstance(d, dict):
            raise ManifestError(f"{path} holds no JSON object; rebuild it with cache_activations(..., overwrite=True)")
        if d.get("format") != FORMAT_NAME or d.get("version") != FORMAT_VERSION:
            raise ManifestError(
                f"{path} is not a version-{FORMAT_VERSION} {FORMAT_NAME} manifest (format={d.get('format')!r}, "
                f"version={d.get('version')!r}); rebuild it with cache_activations(..., overwrite=True)"
            )
        try:
            return cls.from_dict(d)
        except TypeError as e:
            raise ManifestError(f"{path} has unexpected fields ({e}); rebuild it with overwrite=True") from e


def load_cache_manifest(folder: str | os.PathLike) -> Manifest:
    """``manifest.json`` of a cache folder, with, while a multi-process run has not finished, the shards its ranks
    have listed so far in their own manifests (see the module docstring): what a reader of the folder sees."""
    manifest = Manifest.load(folder)
    if manifest.complete or manifest.world_size == 1:
        return manifest
    for rank in range(manifest.world_size):
        if not (Path(folder) / rank_manifest_name(rank)).is_file():
            continue
        try:
            part = Manifest.load(folder, rank_manifest_name(rank))
        except ManifestError:
            continue  # replaced between the look and the read: the next read sees it
        for entry in part.shards:
            manifest.add(entry)
        if manifest.hooks and next(iter(manifest.hooks.values())).get("d") is None:
            manifest.hooks = part.hooks if next(iter(part.hooks.values())).get("d") is not None else manifest.hooks
    return manifest


# --------------------------------------------------------------------------------------------
# shard files
# --------------------------------------------------------------------------------------------
def _repair_hint(folder: Path) -> str:
    return (
        f"Rerun cache_activations(...) with the same arguments and out='{folder}': it checks every shard, "
        "recomputes damaged or missing ones and keeps the rest (or pass overwrite=True to start over)"
    )


def shard_problem(folder: Path, entry: ShardEntry, checksum: bool = True) -> str | None:
    """Why the shard file of ``entry`` cannot be trusted (missing, truncated, checksum), or None if it can.
    With ``checksum=False`` only existence and size are checked."""
    path = folder / entry.file
    if not path.is_file():
        return "file missing"
    size = path.stat().st_size
    if size != entry.n_bytes:
        return f"{'truncated' if size < entry.n_bytes else 'wrong size'}: {size} bytes, manifest says {entry.n_bytes}"
    if checksum:
        digest = file_sha256(path)
        if digest != entry.sha256:
            return f"sha256 mismatch: file {digest[:12]}..., manifest {entry.sha256[:12]}..."
    return None


def read_shard(folder: str | os.PathLike, entry: ShardEntry, verify: bool = True) -> dict[str, torch.Tensor]:
    """Load one shard ({hook: [n_rows, d], "tokens"/"seq_idx"/"pos": [n_rows]}), checking its size and,
    with ``verify``, its sha256. Raises :class:`CorruptShardError` naming the file and the fix."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    folder = Path(folder)
    path = folder / entry.file
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptShardError(f"shard {path} cannot be read ({e}). {_repair_hint(folder)}") from e
    problem = None
    if len(data) != entry.n_bytes:
        problem = f"{'truncated' if len(data) < entry.n_bytes else 'wrong size'}: {len(data)} bytes, " \
                  f"manifest says {entry.n_bytes}"
    elif verify and hashlib.sha256(data).hexdigest() != entry.sha256:
        problem = "sha256 mismatch with the manifest"
    if problem is None:
        try:
            tensors = load_bytes(data)
        except SafetensorError as e:
            problem = f"not a valid safetensors file: {e}"
        else:
            if any(len(t) != entry.n_rows for t in tensors.values()):
                problem = f"row counts differ from the manifest's {entry.n_rows}"
            else:
                return tensors
    raise CorruptShardError(f"shard {path} is corrupt ({problem}). {_repair_hint(folder)}")
