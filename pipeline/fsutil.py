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

What is at a path: :func:`folder_kind` names a shard folder, a training run, an export, a Hugging Face
model or a user's files by each writer's own marker files, so that no command writes into (or with
``--overwrite`` deletes) a folder that is not its own. A whole folder is replaced atomically by writing
it as a :func:`temp_dir_for` sibling and swapping it in with :func:`publish_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------ what is at a path
#
# Every owtgpt writer marks its folder with files of its own. A command about to write a folder asks
# folder_kind() what is there first, so that none writes into (or with --overwrite deletes) another's
# folder or a user's files. The names are the writers' own (pipeline/format.py MANIFEST_NAME,
# pipeline/tools/build_state.py, trainer/rundir.py, model/checkpoint.py CKPT_DIRNAME, model/hf.py);
# they are spelled out here because pipeline/ imports neither model/ nor trainer/, and
# tests/test_folder_kind.py holds them equal to those modules' constants.

SHARD_MARKERS = ("manifest.json", "build-state.jsonl", "build-state.json")
SHARD_GLOBS = ("train-*.bin", "val-*.bin")
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "profile")
RUN_GLOBS = ("events.out.tfevents.*",)
RUN_CONFIG = "config.json"  # a training run's when it is a JSON object with a "config" key
CHECKPOINT_GLOB = "step-*.pt"
EXPORT_MARKER = "owtgpt_export.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TMP_DIR_MARKER = ".incomplete-"  # not TMP_MARKER: remove_stale_temps unlinks files, never folders

SHARD_FOLDER = "a shard folder"
TRAINING_RUN = "a training run folder"
RUN_CHECKPOINTS = "a training run's checkpoints folder"
MODEL_EXPORT = "an owtgpt export-hf folder"
HF_MODEL = "a Hugging Face model folder"
IN_USE = "a folder another owtgpt command is writing"
OTHER_FILES = "a folder of other files"


def path_type(path: str | os.PathLike[str]) -> str:
    """``"missing"``, ``"folder"``, ``"file"``, ``"FIFO"``, ``"character device"``, ``"block device"``,
    ``"socket"`` or ``"broken symlink"``: what ``path`` is, following symlinks."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symlink" if os.path.islink(path) else "missing"
    except NotADirectoryError:
        return "missing"  # a parent is a file: nothing can be at this path
    for test, name in (
        (stat.S_ISDIR, "folder"),
        (stat.S_ISREG, "file"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


@dataclass(frozen=True)
class FolderKind:
    """What :func:`folder_kind` found: ``kind`` (one of the constants above, or ``"a FIFO"``, ``"a
    file"``, ... for a path that is not a folder) and the ``markers`` (names in it) that say so."""

    kind: str
    markers: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.markers:
            return self.kind
        shown = ", ".join(self.markers[:4]) + (", ..." if len(self.markers) > 4 else "")
        return f"{self.kind} ({shown})"


def _is_run_config(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size > 1 << 24:
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("config"), dict)


def folder_kind(path: str | os.PathLike[str]) -> FolderKind | None:
    """What owtgpt (or a user) keeps at ``path``, judged by each writer's own marker files.

    None for a missing path or an empty folder (a free lock file left by a killed writer counts as
    empty). Otherwise the first that holds of: not a folder at all (``"a FIFO"``, ``"a file"``, ...),
    :data:`IN_USE` (its writer lock is held), :data:`SHARD_FOLDER`, :data:`TRAINING_RUN`,
    :data:`RUN_CHECKPOINTS` (``step-*.pt`` files), :data:`MODEL_EXPORT`, :data:`HF_MODEL`, else
    :data:`OTHER_FILES`. Only names are read (and a ``config.json`` small enough to be a run's).
    """
    path = Path(path)
    kind = path_type(path)
    if kind == "missing":
        return None
    if kind != "folder":
        return FolderKind(f"a {kind}, not a folder")
    names = sorted(p.name for p in path.iterdir())
    holder = folder_locked_by(path) if LOCK_NAME in names else None
    if holder == os.getpid():
        holder = None  # a writer asking about its own folder is not refused
    if not names or (names == [LOCK_NAME] and holder is None):
        return None
    if holder is not None:
        return FolderKind(IN_USE, (f"{LOCK_NAME} held by pid {holder}",))
    shard = [n for n in SHARD_MARKERS if n in names]
    shard += [n for g in SHARD_GLOBS for n in names if fnmatch.fnmatchcase(n, g)]
    if shard:
        return FolderKind(SHARD_FOLDER, tuple(shard))
    run = [n + "/" if (path / n).is_dir() else n for n in RUN_MARKERS if n in names]
    run += [n for g in RUN_GLOBS for n in names if fnmatch.fnmatchcase(n, g)]
    if RUN_CONFIG in names and _is_run_config(path / RUN_CONFIG):
        run.insert(0, RUN_CONFIG)
    if run:
        return FolderKind(TRAINING_RUN, tuple(run))
    steps = [n for n in names if fnmatch.fnmatchcase(n, CHECKPOINT_GLOB)]
    if steps:
        return FolderKind(RUN_CHECKPOINTS, tuple(steps))
    if EXPORT_MARKER in names:
        return FolderKind(MODEL_EXPORT, (EXPORT_MARKER,))
    weights = [n for n in HF_WEIGHTS if n in names]
    if RUN_CONFIG in names and weights:
        return FolderKind(HF_MODEL, (RUN_CONFIG, *weights))
    shown = [n for n in names if not n.startswith(".")] + [n for n in names if n.startswith(".")]
    return FolderKind(OTHER_FILES, tuple(shown))


# ------------------------------------------------------------------------- whole-folder replacement


def temp_dir_for(path: Path) -> Path:
    """The hidden, pid-tagged sibling a folder is written into before :func:`publish_dir` moves it."""
    return path.with_name(f".{path.name}{TMP_DIR_MARKER}{os.getpid()}")


def remove_stale_temp_dirs(path: Path) -> list[Path]:
    """Delete the :func:`temp_dir_for` siblings of ``path`` left by writers that are no longer alive."""
    removed = []
    prefix = f".{path.name}{TMP_DIR_MARKER}"
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            pid = p.name[len(prefix) :].removeprefix("old-")
            if p.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (bottom up), so a rename of ``root`` is durable."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the C library or the filesystem lacks it; any other failure raises ``OSError``."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` (a :func:`temp_dir_for` sibling) to ``final``, replacing it.

    ``tmp`` is fsync'd first. A reader of ``final`` sees the old folder or the new one, never a mix:
    a missing or empty ``final`` is replaced by one rename; a non-empty one is swapped with ``tmp``
    in one atomic exchange and then deleted. Where the filesystem cannot exchange, the old folder is
    first renamed aside, so ``final`` is missing for a moment but never half-written.
    """
    fsync_tree(tmp)
    try:
        os.rename(tmp, final)  # atomic; replaces an empty folder
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        if _exchange(tmp, final):
            old = tmp  # the exchange left the old folder under the temp name
        else:
            old = final.with_name(f".{final.name}{TMP_DIR_MARKER}old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old)
    fsync_dir(final.parent)
