"""Atomic file writes: the one way anything in owtgpt reaches its final name on disk.

Contract: a reader either sees the old file or the complete new one, never a partial file.
Data is written to a temp file in the *same directory* (so the rename is atomic on POSIX),
flushed and fsync'd, renamed over the target, and then the directory itself is fsync'd so the
rename survives a power loss. A crash leaves at worst a ``.<name>.tmp-<pid>`` file behind,
which :func:`remove_stale_temps` cleans up on the next run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_MARKER = ".tmp-"


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
