"""Exclusive locks on the folders long jobs write: one writer per folder, readers told when it is being written.

    with FolderLock(out_dir, job="interp train-sae"):      # <out_dir>/.lock, removed on exit (also on an error)
        ...                                                # resume check, training, final files
    holder = lock_holder(folder)                           # for readers: who writes it now (or None)

Base layer: the standard library only (nothing from ``interp``), so every writer and reader can use it.

The lock is the file ``<folder>/.lock``, created atomically (``os.open`` with ``O_CREAT | O_EXCL``) and holding JSON
``{"pid", "host", "job", "started", "token"}``. While it exists, a second writer (another process, or another
thread of this one) gets :class:`FolderLockedError` at once, naming the folder, the holder's PID, host, job and start
time and what to do. Within one thread the lock is re-entrant (a job that calls another job on the same folder,
e.g. ``interp.codebook.zoo.train_recipe`` around ``train_codebooks``).

Stale locks: a lock whose holder was on this host and whose PID is no longer alive (killed, crashed) is taken over
with a :class:`StaleLockWarning` naming the dead PID. A lock written on another host is never taken over: this host
cannot tell whether that job still runs (a shared file system), so the error says how to remove it after checking.

Readers (``ActivationStore``, ``SparseAutoencoder.load``, ``load_codebook_model``, ``interp.load`` of a folder,
``TunedLens.load``) call :func:`warn_if_being_written`: reading a folder while a job writes it is allowed (an
activation cache is readable while it grows, every file is swapped in atomically) but the result is a snapshot, so
they emit a :class:`FolderBeingWrittenWarning` (a warning, not an error) naming the folder, the holder and its job.
``interp train-sae --store`` goes further and refuses an incomplete cache (:mod:`interp.activations.store`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LOCK_FILE", "FolderLock", "FolderLockedError", "LockHolder", "StaleLockWarning",
           "FolderBeingWrittenWarning", "lock_holder", "warn_if_being_written", "pid_alive"]

LOCK_FILE = ".lock"
_TAKEOVER = ".lock.takeover"  # held for the instant of taking over a stale lock (two takers never both win)
_TAKEOVER_STALE_S = 30.0
_READ_RETRIES = 20  # a lock file read just after its creation may be empty for a moment

_held: dict[str, list[Any]] = {}  # resolved folder -> [thread id, depth, token]: the locks this process holds
_held_guard = threading.Lock()


class FolderLockedError(RuntimeError):
    """Another job writes this folder (its ``.lock`` names a live holder, or one this host cannot check).

    ``folder``: the folder; ``holder``: the :class:`LockHolder` read from its lock file (None if unreadable).
    The ``interp`` command prints the message on one line and exits with status 2.
    """

    def __init__(self, message: str, folder: Path, holder: LockHolder | None):
        super().__init__(message)
        self.folder, self.holder = folder, holder


class StaleLockWarning(UserWarning):
    """A lock left by a dead process on this host was taken over."""


class FolderBeingWrittenWarning(UserWarning):
    """A folder is read while a job holds its lock: the files read are a snapshot of a folder that changes."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a folder's lock (the JSON of ``<folder>/.lock``). ``started``: ISO time (UTC) the lock was taken."""

    folder: Path
    pid: int
    host: str
    job: str
    started: str
    token: str = ""

    @property
    def this_host(self) -> bool:
        return self.host == socket.gethostname()

    @property
    def alive(self) -> bool | None:
        """Whether the holding process runs: True / False on this host, None (unknown) on another host."""
        return pid_alive(self.pid) if self.this_host else None

    @property
    def mine(self) -> bool:
        """Whether this process holds the lock (any of its threads)."""
        with _held_guard:
            held = _held.get(_key(self.folder))
        return held is not None and held[2] == self.token

    def describe(self) -> str:
        return f"PID {self.pid} on host {self.host} (job {self.job!r}, started {self.started})"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists and is not a zombie (a killed child not yet reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read(folder: Path) -> LockHolder | None | str:
    """The holder in ``folder/.lock``; None if there is no lock file; a string (the problem) if it is unreadable."""
    path = folder / LOCK_FILE
    problem = "empty"
    for _ in range(_READ_RETRIES):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"cannot be read ({e})"
        try:
            d = json.loads(text)
            return LockHolder(folder, int(d["pid"]), str(d["host"]), str(d.get("job", "?")),
                              str(d.get("started", "?")), str(d.get("token", "")))
        except (ValueError, KeyError, TypeError) as e:
            problem = f"is not a lock file ({type(e).__name__}: {e})" if text else "is empty"
        time.sleep(0.05)  # the writer may be between creating the file and writing it
    return problem


def lock_holder(folder: str | os.PathLike) -> LockHolder | None:
    """Who holds ``folder``'s lock now, or None: no lock file, or a stale one (its PID on this host is dead).

    A lock held by this process is returned too (``holder.mine``); an unreadable lock file gives None."""
    found = _read(Path(folder))
    if not isinstance(found, LockHolder) or found.alive is False:
        return None
    return found


def warn_if_being_written(folder: str | os.PathLike, what: str = "folder") -> LockHolder | None:
    """For readers: a :class:`FolderBeingWrittenWarning` if another process (or thread) holds ``folder``'s lock
    (``what`` names the folder's kind in the message, e.g. ``"activation cache"``). Returns the holder or None."""
    folder = Path(folder)
    holder = lock_holder(folder)
    if holder is None or (holder.mine and _held.get(_key(folder), [None])[0] == threading.get_ident()):
        return None
    warnings.warn(f"the {what} {folder} is being written by {holder.describe()}: what is read now is a snapshot "
                  "that the job may change or complete; read it again when the job has finished",
                  FolderBeingWrittenWarning, stacklevel=3)
    return holder


class FolderLock:
    """Exclusive lock on ``folder`` for a job writing it (module docstring); a context manager.

    Args:
        folder: the folder (created if missing, with its parents).
        job: what holds it, shown to the second writer and to readers (e.g. ``"interp cache"``).

    Raises (on entry) :class:`FolderLockedError` when another process or thread holds it, or when its lock file
    comes from another host or cannot be read. ``__exit__`` removes the lock file, also when the job raised.
    """

    def __init__(self, folder: str | os.PathLike, *, job: str):
        self.folder, self.job = Path(folder), str(job)
        self.path = self.folder / LOCK_FILE
        self.holder: LockHolder | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # --- acquiring -------------------------------------------------------------------------------------------
    def acquire(self) -> LockHolder:
        self.folder.mkdir(parents=True, exist_ok=True)
        key, me = _key(self.folder), threading.get_ident()
        with _held_guard:
            held = _held.get(key)
            if held is not None and held[0] == me and (self.folder / LOCK_FILE).is_file():
                held[1] += 1  # re-entered by the thread that holds it
                found = _read(self.folder)
                self.holder = found if isinstance(found, LockHolder) else None
                return self.holder  # type: ignore[return-value]
        for _ in range(3):  # the lock may vanish (released, taken over) between two looks: look again
            if self._create():
                return self.holder  # type: ignore[return-value]
            found = _read(self.folder)
            if found is None:
                continue
            if isinstance(found, str):
                raise FolderLockedError(
                    f"{self.folder} is locked by a lock file that {found} ({self.path}). If no job writes this "
                    f"folder, remove {self.path} and run again.", self.folder, None)
            if found.this_host and (found.alive is False or (found.pid == os.getpid() and not found.mine)):
                self._take_over(found)
                continue
            raise FolderLockedError(self._locked_message(found), self.folder, found)
        raise FolderLockedError(f"{self.folder}: could not take its lock ({self.path} keeps changing); another "
                                "job is starting on this folder", self.folder, None)

    def _locked_message(self, found: LockHolder) -> str:
        if found.mine:
            return (f"{self.folder} is being written by another thread of this process: {found.describe()}. "
                    "Wait for that job to finish, or choose another output folder.")
        if found.this_host:
            return (f"{self.folder} is being written by another job: {found.describe()}. Wait for it to finish "
                    f"(or stop it: kill {found.pid}), or choose another output folder.")
        return (f"{self.folder} is locked by a job on another host: {found.describe()}. This host cannot tell "
                f"whether it still runs. Check on {found.host} that PID {found.pid} no longer writes this folder, "
                f"then remove {self.path} and run again; or choose another output folder.")

    def _create(self) -> bool:
        """Create the lock file atomically; False if it exists."""
        token = uuid.uuid4().hex
        holder = LockHolder(self.folder, os.getpid(), socket.gethostname(), self.job, _now(), token)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps({"pid": holder.pid, "host": holder.host, "job": holder.job,
                                     "started": holder.started, "token": token}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        with _held_guard:
            _held[_key(self.folder)] = [threading.get_ident(), 1, token]
        self.holder = holder
        return True

    def _take_over(self, stale: LockHolder) -> None:
        """Remove a stale lock (dead PID on this host), once: under a short-lived ``.lock.takeover`` file, and only
        if ``.lock`` still holds the stale content (another taker may have replaced it already)."""
        guard = self.folder / _TAKEOVER
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > _TAKEOVER_STALE_S:
                    guard.unlink(missing_ok=True)  # a taker killed in the middle
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return
        os.close(fd)
        try:
            now = _read(self.folder)
            if isinstance(now, LockHolder) and now.token == stale.token and now.pid == stale.pid:
                self.path.unlink(missing_ok=True)
                warnings.warn(f"{self.folder}: taking over the lock of {stale.describe()}: that process is no "
                              "longer running (killed or crashed); its job can resume in this folder",
                              StaleLockWarning, stacklevel=4)
        finally:
            guard.unlink(missing_ok=True)

    # --- releasing -------------------------------------------------------------------------------------------
    def release(self) -> None:
        key = _key(self.folder)
        with _held_guard:
            held = _held.get(key)
            if held is None or held[0] != threading.get_ident():
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del _held[key]
            token = held[2]
        found = _read(self.folder)
        if isinstance(found, LockHolder) and found.token == token:
            self.path.unlink(missing_ok=True)
