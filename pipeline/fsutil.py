"""Atomic file writes: the one way anything in owtgpt reaches its final name on disk.

Contract: a reader either sees the old file or the complete new one, never a partial file.
Data is written to a temp file in the *same directory* (so the rename is atomic on POSIX),
flushed and fsync'd, renamed over the target, and then the directory itself is fsync'd so the
rename survives a power loss. A crash leaves at worst a ``.<name>.tmp-<pid>`` file behind,
which :func:`remove_stale_temps` cleans up on the next run.

One writer per folder: :func:`folder_lock` holds an OS lock (``flock`` on ``DIR/.lock``) for as long
as a build or a training run writes into ``DIR``; a second writer is refused at once, and readers can
ask :func:`folder_locked_by` whether a writer is still at work. The kernel drops the lock when its
holder dies, however it dies, so a stale lock never blocks a rerun (README, "When things go wrong").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import UserError

TMP_MARKER = ".tmp-"
LOCK_NAME = ".lock"  # hidden, never removed (unlinking a lock file races with the next writer)
_RETRY_S = 0.25  # a lock held only for a moment (another writer's probe, a child just exiting)
_DEAD_HOLDER_S = 5.0  # forked children of a killed writer hold its lock until they notice (< 1 s)


def temp_path_for(path: Path) -> Path:
    """The temp name used while ``path`` is being written (hidden, pid-tagged)."""
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    """fsync a directory so that a rename inside it is durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; it appears under its final name only on clean exit.

    On any exception the temp file is removed and the previous ``path`` (if any) is untouched.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    f = open(tmp, "wb")  # noqa: SIM115 - closed below on every path
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk fails the close's flush again: still unlink
            f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files left by killed writers in ``directory``; returns what was removed."""
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") and TMP_MARKER in p.name:
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


class FolderLockedError(UserError):
    """Another live process holds ``directory``'s lock; ``pid`` is that process (0 when unknown)."""

    def __init__(self, directory: Path, purpose: str, pid: int):
        self.directory, self.purpose, self.pid = directory, purpose, pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(
            f"another {purpose} ({who}) is writing {directory}; wait for it to finish (or stop it), "
            "then rerun, or choose another folder"
        )


def _try_lock(fd: int, op: int) -> bool:
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _holder_pid(fd: int) -> int:
    """The pid the holder wrote into the lock file (0 while it has not written it yet)."""
    try:
        return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or 0)
    except ValueError:
        return 0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def folder_lock(directory: Path, purpose: str) -> Iterator[None]:
    """Hold the exclusive writer lock of the existing folder ``directory`` for the ``with`` body.

    Raises :class:`FolderLockedError` (naming the holder's pid) when another process holds it.
    ``purpose`` names what writes, e.g. ``"build"``: "another build (pid N) is writing DIR".
    A lock still held by the orphaned children of a dead writer is waited for (a few seconds).
    The lock is inherited by forked children and released when the last of them exits.
    """
    directory = Path(directory)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t0 = time.monotonic()
        while not _try_lock(fd, fcntl.LOCK_EX):
            waited = time.monotonic() - t0
            pid = _holder_pid(fd)
            if waited >= _DEAD_HOLDER_S or (waited >= _RETRY_S and _alive(pid)):
                raise FolderLockedError(directory, purpose, pid)
            time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock (once forked children have closed their copies too)


def folder_locked_by(directory: str | os.PathLike[str]) -> int | None:
    """Non-blocking probe: the pid holding ``directory``'s writer lock, or None when nobody holds it.

    The pid is 0 in the rare case the holder has not written it yet, so test with ``is not None``.

    Opens the lock file read-only and never creates it, so it works on read-only folders.
    """
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return None  # no lock file (never written by a locking writer) or unreadable: not held
    try:
        if _try_lock(fd, fcntl.LOCK_SH):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        deadline = time.monotonic() + _RETRY_S
        while not (pid := _holder_pid(fd)) and time.monotonic() < deadline:
            time.sleep(0.01)  # the holder writes its pid right after locking
        return pid
    finally:
        os.close(fd)


def refuse_if_being_built(directory: str | os.PathLike[str]) -> None:
    """A folder a build still holds is unfinished, not corrupt: readers say so and stop (exit 1)."""
    pid = folder_locked_by(directory)
    if pid is not None:
        raise UserError(f"{directory}: build in progress (pid {pid}); wait for it to finish, then rerun")
