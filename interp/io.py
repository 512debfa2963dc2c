"""Reading and writing the files the library keeps: one JSON reader and one safetensors reader whose errors name the
file and say what to do, and sha256 checksums of everything a folder holds, verified when it is read back.

Base layer: the standard library, torch and safetensors only (nothing from ``interp``)::

    doc = read_json(folder / "cfg.json", what="SAE config")       # CorruptFileError naming the file if damaged
    tensors = read_safetensors(folder / "sae_weights.safetensors", what="SAE weights")
    write_checksums(folder, ["cfg.json", "sae_weights.safetensors"])   # folder/checksums.json
    verify_checksums(folder, ["cfg.json", "sae_weights.safetensors"])  # IntegrityError naming a changed file

**The checksum record.** A JSON document (``checksums.json``, or a folder's own card / manifest / state file,
written with :func:`write_json`) holds, as its last key::

    "checksums": {"algorithm": "sha256", "files": {"<relative path>": "<hex digest>", ...}, "sha256_self": "<hex>"}

``sha256_self`` is the sha256 of the document's own bytes with that digest replaced by 64 zeros, so a change to any
byte of the record's document is found too (:func:`read_json` checks it on every read of a document that carries a
record). :func:`verify_checksums` checks the listed files (the record first, then each file; nothing is parsed
before its digest matches). A folder without any record (written by someone else, or before checksums existed)
loads with the check skipped and an :class:`UncheckedWarning` saying so.

Errors: :class:`FileError` (an ``OSError``) and its subclasses :class:`MissingFileError` (also a
``FileNotFoundError``), :class:`CorruptFileError` (also a ``ValueError``) and :class:`IntegrityError`; the
``interp`` command prints them on one line (``interp.cli.USER_ERRORS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "FileError", "MissingFileError", "CorruptFileError", "IntegrityError", "UncheckedWarning", "CHECKSUMS_FILE",
    "RECORD_KEY", "REPAIR", "read_bytes", "read_json", "read_safetensors", "safetensors_metadata", "sha256_file",
    "sha256_bytes", "json_bytes", "write_json", "write_checksums", "verify_checksums", "has_checksums", "checksum_record",
]

CHECKSUMS_FILE = "checksums.json"
RECORD_KEY = "checksums"
SELF_KEY = "sha256_self"
_ZERO = "0" * 64
_SELF_RE = re.compile(rb'"' + SELF_KEY.encode() + rb'": "([^"\\]*)"')
_RECORD_RE = re.compile(rb'"' + RECORD_KEY.encode() + rb'": \{')
REPAIR = ("Re-run the job that wrote it to repair it (with --overwrite / overwrite=True to start over), or restore "
          "the folder from a copy")


class FileError(OSError):
    """A file the library reads is missing, damaged or fails its checksum. ``path`` is the file."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)

    def __str__(self) -> str:
        return str(self.args[0])


class MissingFileError(FileError, FileNotFoundError):
    """The file does not exist."""


class CorruptFileError(FileError, ValueError):
    """The file exists but cannot be read: empty, not UTF-8, not JSON, not safetensors."""


class IntegrityError(CorruptFileError):
    """The file's sha256 differs from the one recorded when it was written (or the record itself is damaged)."""


class UncheckedWarning(UserWarning):
    """A folder was read without an integrity check: it holds no checksum record."""


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_bytes(path: str | os.PathLike[str], *, what: str = "file", allow_empty: bool = False) -> bytes:
    """The bytes of ``path``; :class:`MissingFileError` / :class:`CorruptFileError` (empty) naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise MissingFileError(f"{path}: the {what} is missing. {REPAIR}.", path) from e
    except IsADirectoryError as e:
        raise CorruptFileError(f"{path}: the {what} is a folder, not a file.", path) from e
    except OSError as e:
        raise FileError(f"{path}: the {what} cannot be read ({e.strerror or e}).", path) from e
    if not data and not allow_empty:
        raise CorruptFileError(f"{path}: the {what} is empty (a kill during a write?). {REPAIR}.", path)
    return data


def read_json(path: str | os.PathLike[str], *, what: str = "JSON file") -> Any:
    """The JSON document in ``path``. Errors name the file and say what to do: :class:`MissingFileError`,
    :class:`CorruptFileError` (empty, not UTF-8, not JSON) and, for a document carrying a checksum record
    (module docstring), :class:`IntegrityError` when any of its bytes changed since it was written."""
    path = Path(path)
    raw = read_bytes(path, what=what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{path}: the {what} is not UTF-8 text (byte {e.start}: damaged?). {REPAIR}.",
                               path) from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"{path}: the {what} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
                               f"{REPAIR}.", path) from e
    _check_self(path, raw, doc, what)
    return doc


def _check_self(path: Path, raw: bytes, doc: Any, what: str) -> None:
    """IntegrityError unless the document's own digest (if it carries a record) matches its bytes."""
    matches = list(_SELF_RE.finditer(raw))
    record = doc.get(RECORD_KEY) if isinstance(doc, dict) else None
    if record is None and not matches and path.name != CHECKSUMS_FILE:
        return
    stored = record.get(SELF_KEY) if isinstance(record, dict) else None
    if path.name == CHECKSUMS_FILE and record is None:  # a checksums.json is nothing but a record
        raise IntegrityError(f"{path}: the checksum record is damaged. {REPAIR}.", path)
    if not matches or not isinstance(stored, str) or not isinstance(record.get("files"), dict):
        raise IntegrityError(f"{path}: the checksum record of this {what} is damaged. {REPAIR}.", path)
    m = matches[-1]
    found = sha256_bytes(raw[:m.start(1)] + _ZERO.encode() + raw[m.end(1):])
    if found != stored:
        raise IntegrityError(f"{path}: the {what} changed since it was written (sha256 {found[:12]}…, its record "
                             f"says {stored[:12]}…). {REPAIR}.", path)


def read_safetensors(path: str | os.PathLike[str], *, what: str = "tensor file", device: str = "cpu") -> dict:
    """All tensors of a safetensors file (never a pickle); errors name the file (:class:`MissingFileError`,
    :class:`CorruptFileError` for a damaged header or data)."""
    from safetensors.torch import load as load_bytes

    path = Path(path)
    raw = read_bytes(path, what=what)
    try:
        tensors = load_bytes(raw)
    except Exception as e:  # noqa: BLE001 - SafetensorError, ValueError, RuntimeError: all mean a damaged file
        raise CorruptFileError(f"{path}: the {what} is not a readable safetensors file ({type(e).__name__}: "
                               f"{str(e)[:200]}). {REPAIR}.", path) from e
    return tensors if device == "cpu" else {k: v.to(device) for k, v in tensors.items()}


def safetensors_metadata(path: str | os.PathLike[str], *, what: str = "tensor file") -> tuple[dict[str, str], list[str]]:
    """(metadata, tensor names) of a safetensors file, reading its header only; errors name the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: the {what} is missing. {REPAIR}.", path)
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except Exception as e:  # noqa: BLE001
        raise CorruptFileError(f"{path}: the {what} is not a readable safetensors file ({type(e).__name__}: "
                               f"{str(e)[:200]}). {REPAIR}.", path) from e


# ----------------------------------------------------------------------------------------------------------------
# checksums


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksum_record(folder: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
    """{relative posix path: sha256} of ``files`` (paths relative to ``folder``, or absolute ones inside it)."""
    folder = Path(folder)
    out = {}
    for f in files:
        p = Path(f)
        p = p if p.is_absolute() else folder / p
        out[p.relative_to(folder).as_posix()] = sha256_file(p)
    return dict(sorted(out.items()))


def write_json(path: str | os.PathLike[str], doc: Mapping[str, Any], *, indent: int | None = 2,
               checksums: Iterable[str | os.PathLike[str]] | None = None) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically (a temporary file and a rename). With ``checksums`` (files
    relative to ``path``'s folder) the document carries a checksum record of them and of itself (module
    docstring); an existing record in ``doc`` is replaced."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(json_bytes(doc, indent=indent, folder=path.parent, checksums=checksums))
    os.replace(tmp, path)
    return path


def json_bytes(doc: Mapping[str, Any], *, indent: int | None = 2, folder: str | os.PathLike[str] | None = None,
               checksums: Iterable[str | os.PathLike[str]] | None = None) -> bytes:
    """``doc`` as UTF-8 JSON bytes (what :func:`write_json` writes), with a checksum record of ``checksums``
    (files relative to ``folder``) and of itself when ``checksums`` is given (``()``: the document's own only)."""
    doc = {k: v for k, v in doc.items() if k != RECORD_KEY}
    if checksums is not None:
        files = checksum_record(folder if folder is not None else ".", checksums)
        doc[RECORD_KEY] = {"algorithm": "sha256", "files": files, SELF_KEY: _ZERO}
    raw = (json.dumps(doc, indent=indent) + "\n").encode()
    if checksums is not None:
        m = list(_SELF_RE.finditer(raw))[-1]
        raw = raw[:m.start(1)] + sha256_bytes(raw).encode() + raw[m.end(1):]
    return raw


def write_checksums(folder: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]], *,
                    into: str = CHECKSUMS_FILE) -> Path:
    """Record the sha256 of ``files`` (relative to ``folder``) in ``folder/into``: ``checksums.json`` (created or
    replaced), or a JSON document the folder already holds (its card, manifest: the record is added to it)."""
    folder = Path(folder)
    target = folder / into
    doc = read_json(target, what="JSON file") if into != CHECKSUMS_FILE and target.exists() else {}
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{target}: expected a JSON object to hold the checksum record.", target)
    return write_json(target, doc, checksums=[f for f in files if Path(f).name != into or Path(f).is_absolute()])


def has_checksums(folder: str | os.PathLike[str], record: str = CHECKSUMS_FILE) -> bool:
    """Whether ``folder/record`` exists and carries a checksum record (its bytes are not verified here): a
    ``checksums.json`` always does; another document when its bytes hold the record's key or its own digest's
    key (one flipped bit cannot remove both, so a damaged record is never mistaken for a missing one)."""
    p = Path(folder) / record
    if not p.is_file():
        return False
    if record == CHECKSUMS_FILE:
        return True
    raw = p.read_bytes()
    return _SELF_RE.search(raw) is not None or _RECORD_RE.search(raw) is not None


def verify_checksums(folder: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]] | None = None, *,
                     record: str | Iterable[str] = CHECKSUMS_FILE, what: str = "folder", remedy: str = REPAIR,
                     required: bool = False) -> bool:
    """Check the files of ``folder`` against the checksum record(s) in ``record`` (one name or several, e.g.
    ``("checksums.json", "model_card.json")``: every one that exists and carries a record is verified).

    Every file a record lists is verified; ``files`` (relative to ``folder``) are those the caller is about to
    read, each of which must be listed by a record (a record document itself is checked by its own digest).
    Returns True when verified, False when the folder carries no record (then
    an :class:`UncheckedWarning` says the check was skipped; with ``required=True`` an :class:`IntegrityError`).

    Raises :class:`IntegrityError` naming the first file whose sha256 differs (expected vs found prefix) or that
    no record lists, with ``remedy``; :class:`MissingFileError` for a listed file that is gone.
    """
    folder = Path(folder)
    names = [record] if isinstance(record, str) else list(record)
    listed: dict[str, tuple[str, Path]] = {}
    for name in names:
        if not has_checksums(folder, name):
            continue
        doc = read_json(folder / name, what="checksum record" if name == CHECKSUMS_FILE else "file")
        for rel, digest in doc[RECORD_KEY]["files"].items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:  # a record names files of its own folder only
                raise CorruptFileError(f"{folder / name}: its checksum record names {rel!r}, outside the folder: "
                                       f"the file is damaged or hostile. {remedy}.", folder / name)
            listed.setdefault(rel, (digest, folder / name))
    if not listed and not any(has_checksums(folder, n) for n in names):
        if required:
            raise IntegrityError(f"{folder}: no checksum record ({' / '.join(names)}): the {what} cannot be "
                                 f"verified. {remedy}.", folder)
        warnings.warn(f"{folder}: no checksums ({' / '.join(names)}), the {what} is read without an integrity "
                      "check", UncheckedWarning, stacklevel=2)
        return False
    for rel in [] if files is None else [Path(f).as_posix() for f in files]:
        if rel not in listed and rel not in names:  # a record document is verified by its own digest (above)
            raise IntegrityError(f"{folder / rel}: not covered by the folder's checksum record "
                                 f"({', '.join(names)}): it was added or renamed after the folder was written. "
                                 f"{remedy}.", folder / rel)
    for rel, (expected, source) in listed.items():
        path = folder / rel
        if not path.is_file():
            raise MissingFileError(f"{path}: listed in {source.name} but missing. {remedy}.", path)
        found = sha256_file(path)
        if found != expected:
            raise IntegrityError(f"{path}: checksum mismatch (sha256 {found[:12]}…, {source.name} records "
                                 f"{expected[:12]}…): the file is damaged or was changed after it was written. "
                                 f"{remedy}.", path)
    return True
