"""Training checkpoints on disk: atomic save, keep-last-K, resume with fallback, compatibility checks.

* ``RUN/checkpoints/step-XXXXXXXX.pt`` holds :meth:`trainer.state.RunState.state_dict`, a superset of the
  model package's schema (so ``python -m model sample --checkpoint RUN`` works on a run). Only tensors and
  plain containers: loading is always ``torch.load(weights_only=True)`` and can never run code.
* Writes are atomic (:func:`pipeline.fsutil.atomic_open`); after one, only the newest ``keep_last`` stay.
  A failed save raises :class:`CheckpointWriteError` naming the file and the fix; older ones stay.
* :func:`load_latest` tries newest first and skips, with a warning, one that does not load or holds
  non-finite weights (those are never written either); :func:`check_compatible` refuses another dataset,
  vocabulary or model shape unless ``--force``.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.checkpoint import (
    CKPT_DIRNAME,
    NonFiniteWeightsError,
    check_finite,
    checkpoint_path,
    list_checkpoints,
    newest_loadable,
    torch_load_weights,
    write_checkpoint,
)
from pipeline.errors import UserError, describe_oserror
from pipeline.fsutil import remove_stale_temps

FORMAT = "owtgpt-train-v1"
REQUIRED_KEYS = ("model", "model_config", "optimizer", "step", "train_config", "format")


class ResumeError(RuntimeError):
    """A run cannot be resumed as asked; the message says why and what to pass."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (unreadable) or a forced resume crossed a mismatch."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, no permission, non-finite weights); nothing was."""


# --------------------------------------------------------------------------- RNG state


def capture_rng() -> dict[str, Any]:
    """torch (CPU, every CUDA device), numpy and python RNG states as tensors / plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, state, gauss_next = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": [int(s) for s in state], "gauss_next": gauss_next},
    }


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    cuda = rng.get("torch_cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = rng["numpy"]
    np.random.set_state(
        (n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# --------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | os.PathLike[str], step: int, payload: dict[str, Any], keep_last: int
) -> Path:
    """Atomically write ``payload`` as the checkpoint of ``step``, then prune to ``keep_last``.

    Raises :class:`CheckpointWriteError` (nothing written, older checkpoints intact) when the
    weights hold a NaN/inf or the filesystem refuses the write.
    """
    path = checkpoint_path(run_dir, step)
    resume = "rerun with --resume to continue from the newest checkpoint"  # the one instruction
    try:
        write_checkpoint(path, payload)
    except NonFiniteWeightsError as e:
        raise CheckpointWriteError(
            f"step {step}: {e}; no checkpoint written, the older ones are kept. Resume from the newest with "
            "--resume --force --lr LOWER, or check the data (`python -m pipeline verify`)"
        ) from None
    except OSError as e:
        raise CheckpointWriteError(
            f"checkpoint of step {step} not written: {describe_oserror(e, then=resume)}"
        ) from None
    prune(run_dir, keep_last, keep=path)
    return path


def prune(run_dir: str | os.PathLike[str], keep_last: int, keep: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (never ``keep``); returns what went."""
    removed = []
    for p in list_checkpoints(run_dir)[keep_last:]:
        if keep is not None and p.resolve() == keep.resolve():
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def clean_temps(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files a killed writer left in the checkpoint folder."""
    return remove_stale_temps(Path(run_dir) / CKPT_DIRNAME)


# --------------------------------------------------------------------------- load


def _warn(msg: str) -> None:
    warnings.warn(msg, CheckpointWarning, stacklevel=3)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and schema-check one training checkpoint (``weights_only=True``)."""
    payload = torch_load_weights(Path(path), map_location)
    if not isinstance(payload, dict):
        raise ResumeError(f"{path}: not a training checkpoint (top level is {type(payload).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ResumeError(
            f"{path}: missing {missing}; it is a model-only checkpoint, not a training checkpoint "
            "(it can be sampled from, but not resumed)"
        )
    if payload["format"] != FORMAT:
        raise ResumeError(f"{path}: checkpoint format {payload['format']!r}, this trainer reads {FORMAT!r}")
    check_finite(payload["model"], f"{path}: cannot be resumed from")
    return payload


def load_latest(
    run_dir: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    warn: Callable[[str], None] = _warn,
) -> tuple[dict[str, Any], Path] | None:
    """The newest loadable checkpoint of ``run_dir`` and its path; None when there are none.

    Unloadable ones are reported through ``warn`` and skipped; when every one fails the error
    lists them all.
    """
    paths = list_checkpoints(run_dir)
    if not paths:
        return None
    return newest_loadable(
        paths,
        lambda p: load_checkpoint(p, map_location),
        catch=Exception,  # truncated zip, bad pickle, wrong schema: all mean "skip this one"
        warn=warn,
        fail=lambda tried: ResumeError(
            f"{run_dir}: none of its {len(paths)} checkpoints loads:\n  "
            + "\n  ".join(tried)
            + "\nStart a fresh run with --overwrite, or restore a checkpoint from a backup."
        ),
    )


def check_compatible(
    payload: dict[str, Any],
    path: Path,
    *,
    model_config: dict[str, Any],
    dataset_fingerprint: str,
    vocab_size: int,
    force: bool,
    warn: Callable[[str], None] = _warn,
) -> list[str]:
    """Refuse (ResumeError) to resume across a different dataset, vocab or model shape unless ``force``."""
    problems = []
    if payload.get("dataset_fingerprint") != dataset_fingerprint:
        problems.append(
            f"dataset fingerprint {payload.get('dataset_fingerprint')} (checkpoint) != {dataset_fingerprint} "
            "(--data): the shards changed"
        )
    if payload.get("vocab_size") != vocab_size:
        problems.append(f"shard vocab size {payload.get('vocab_size')} (checkpoint) != {vocab_size} (--data)")
    old = payload.get("model_config", {})
    diff = {k: (old.get(k), v) for k, v in model_config.items() if old.get(k) != v}
    if diff:
        problems.append(
            "model shape differs: "
            + ", ".join(f"{k} {a} (checkpoint) != {b} (now)" for k, (a, b) in diff.items())
        )
    if problems and not force:
        raise ResumeError(
            f"refusing to resume from {path}:\n  - "
            + "\n  - ".join(problems)
            + "\nResume with the data the run was trained on (--data), start a new run in another --out, "
            "or pass --force to resume anyway (a different model shape still cannot load the weights)."
        )
    for p in problems:
        warn(f"--force: resuming from {path} although {p}")
    return problems
