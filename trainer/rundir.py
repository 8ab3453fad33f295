"""The run folder: refuse to clobber, ``--overwrite`` cleanly, and record what produced the run.

* ``--out`` is a new or empty folder, or one this trainer wrote (:func:`foreign_kind`: its
  ``config.json`` run record, ``checkpoints/``, ``metrics.jsonl`` or events are the marker). A shard
  folder, an exported model or any other non-empty folder is refused, naming what it is, even with
  ``--overwrite``. A run folder is only touched with ``--resume`` (continue it) or ``--overwrite``
  (start over), which deletes only the trainer's own artifacts, never anything else in the folder.
* One writer per run folder: :func:`run_folder_lock` holds ``pipeline.fsutil.folder_lock`` on
  ``--out`` for the whole run (rank 0 only under torchrun), so a second run or a ``--resume`` into
  the same folder is refused at once, naming the holder's pid. The kernel drops the lock of a killed
  run, so a stale lock never blocks a resume.
* :func:`write_run_info` writes ``config.json`` atomically at start: the resolved config, the
  model config, git SHA (``"unknown"`` outside a checkout), library versions, device, world
  size, precision and the dataset/tokenizer fingerprints.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CKPT_DIRNAME
from pipeline.fsutil import IN_USE, LOCK_NAME, TRAINING_RUN, atomic_write_text, folder_kind, folder_lock
from trainer.config import ConfigError, TrainConfig
from trainer.resume_config import RUN_RECORD

CONFIG_NAME = RUN_RECORD
METRICS_NAME = "metrics.jsonl"
PROFILE_DIRNAME = "profile"
_EVENTS_GLOB = "events.out.tfevents.*"


def run_artifacts(out: Path) -> list[Path]:
    """The trainer's own files and folders present in ``out``."""
    if not out.is_dir():
        return []
    found = [
        out / n for n in (CONFIG_NAME, METRICS_NAME, CKPT_DIRNAME, PROFILE_DIRNAME) if (out / n).exists()
    ]
    return found + sorted(out.glob(_EVENTS_GLOB))


def foreign_kind(out: Path) -> str | None:
    """What ``out`` is when it is neither missing, empty, nor a folder this trainer wrote; else None."""
    kind = folder_kind(out)  # each writer's own markers, one rule for every command that writes a folder
    if kind is None or kind.kind in (TRAINING_RUN, IN_USE):  # a held lock: run_folder_lock names its holder
        return None
    return str(kind)


def check_out_kind(out: Path) -> None:
    """Refuse an ``--out`` that is not the trainer's (a shard folder, a model, a user's files), naming it."""
    kind = foreign_kind(out)
    if kind is not None:
        raise ConfigError(
            f"--out {out} is {kind}, not a training run folder; the trainer writes only into a new or "
            "empty folder or its own run folder: choose another --out"
        )


@contextlib.contextmanager
def run_folder_lock(out: Path, is_main: bool = True) -> Iterator[None]:
    """Hold ``out``'s writer lock for the ``with`` body (on rank 0; other ranks get a no-op).

    Creates ``out`` when needed (the lock lives in it) and removes it again when the run failed
    before writing anything, so a refused start leaves no empty folder behind.
    """
    if not is_main:
        yield
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; pass a folder path")
    check_out_kind(out)  # before taking the lock: in a shard folder that lock is the build's
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "training run"):
        try:
            yield
        finally:
            if created and {p.name for p in out.iterdir()} <= {LOCK_NAME}:
                with contextlib.suppress(OSError):  # still under the lock: nobody else is in the folder
                    (out / LOCK_NAME).unlink()
                    out.rmdir()


def check_run_dir(cfg: TrainConfig) -> None:
    """Raise unless ``--out`` is new/empty of runs, or ``--resume``/``--overwrite`` says what to do."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConfigError(f"--out {cfg.out} exists and is not a folder")
    check_out_kind(cfg.out)
    existing = run_artifacts(cfg.out)
    if existing and not (cfg.resume or cfg.overwrite):
        names = ", ".join(p.name for p in existing[:5])
        raise ConfigError(
            f"--out {cfg.out} already holds a run ({names}); pass --resume to continue it, "
            "--overwrite to delete it and start over, or choose another --out"
        )


def prepare_run_dir(cfg: TrainConfig) -> list[Path]:
    """Create ``--out``; with ``--overwrite`` delete the previous run's artifacts (returned)."""
    check_run_dir(cfg)
    removed = []
    if cfg.overwrite:
        for p in run_artifacts(cfg.out):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    (cfg.out / CKPT_DIRNAME).mkdir(parents=True, exist_ok=True)
    return removed


def git_info(repo: Path | None = None) -> dict[str, Any]:
    """``{"sha": ..., "dirty": ...}`` of the checkout holding this package (``"unknown"`` otherwise)."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"sha": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": "unknown", "dirty": None}


def versions() -> dict[str, str]:
    import numpy
    import tiktoken

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "tiktoken": getattr(tiktoken, "__version__", "unknown"),
    }
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def write_run_info(cfg: TrainConfig, extra: dict[str, Any]) -> Path:
    """Write ``config.json`` (atomically) and return its path."""
    info = {
        "config": cfg.to_dict(),
        "git": git_info(),
        "versions": versions(),
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        **extra,
    }
    path = cfg.out / CONFIG_NAME
    atomic_write_text(path, json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    return path
