"""Atomic file writing: a crash or a failed write never leaves a half-written file behind; and the
file locks that keep two processes from writing one folder at once."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np
import torch

from msrn.errors import MSRNError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): FileLock then takes no lock
    fcntl = None  # type: ignore[assignment]

_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")  # what _atomic_write names its temporary files


def _fsync_folder(folder: str) -> None:
    """Flush a folder's entry table so a completed rename survives a power loss (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike[str], writer: Callable[[BinaryIO], object]) -> None:
    """Run writer on a temp file beside path, fsync it and rename it over path; remove it on failure."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # O_EXCL with mode 0o666 lets the umask set the final permissions, like a plain open() would.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to path atomically (temp file in the same folder, fsync, os.replace)."""
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text to path atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    """Convert numpy scalars and arrays (which json cannot encode) into plain Python values."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write obj as indented JSON atomically; numpy scalars and arrays are accepted."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
    atomic_write_text(path, text + "\n")


def atomic_save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save obj to path atomically, so an interrupted save never corrupts a checkpoint."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[str]:
    """Delete the temporary files that killed atomic writes left in folder; return their names."""
    stale = [name for name in os.listdir(folder) if _TEMP_NAME.fullmatch(name)]
    for name in stale:
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass
    return stale


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Create folder and prove it is writable with a probe file, failing early with a clear MSRNError."""
    folder = os.fspath(folder)
    probe = os.path.join(folder, f".msrn-write-probe-{uuid.uuid4().hex}")
    try:
        os.makedirs(folder, exist_ok=True)
        try:
            with open(probe, "wb") as handle:
                handle.write(b"ok")
        finally:
            if os.path.exists(probe):
                os.remove(probe)
    except OSError as exc:
        raise MSRNError(f"output folder {folder} is not writable: {exc}") from exc


class FileLock:
    """An exclusive lock on the file at `path` (created if need be, never removed) that dies with its
    process, however it ends (SIGKILL included): the kernel drops it, so no stale lock is left.

    A POSIX record lock (fcntl.lockf), not flock: it belongs to the process, so the loader workers a
    run forks do not inherit it and cannot keep it alive after the run itself was killed. Within one
    process it does not exclude (a process never waits for itself). The holder writes its PID into
    the file for the message of a process that finds the lock taken (`holder()`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None

    def acquire(self, wait: bool) -> bool:
        """Take the lock, waiting for its holder when `wait`; False when it is taken and not `wait`."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError:
                os.close(fd)
                if wait:
                    raise
                return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        """The PID the lock's holder wrote into the file ("unknown" when it has not written it yet)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError:
            text = ""
        return text if text.isdigit() else "unknown"

    def release(self) -> None:
        """Give the lock up (closing the file drops it); a no-op when it is not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire(wait=True)
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


RUN_LOCK = ".msrn-run.lock"  # in a run folder: held by the one process that writes it


def lock_run_folder(folder: str | os.PathLike[str]) -> FileLock:
    """Hold the run folder's lock (until released, or this process ends); one line naming the folder and
    the process when another live process holds it: two runs writing one last.pt would spoil each other."""
    lock = FileLock(os.path.join(folder, RUN_LOCK))
    if not lock.acquire(wait=False):
        raise MSRNError(
            f"{os.fspath(folder)} is in use by another msrn run (process {lock.holder()}): wait for it to end "
            "or stop it, or give another --out"
        )
    return lock
