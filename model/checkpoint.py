"""The checkpoint schema shared by the trainer, ``python -m model`` and the HF importer.

Contract
--------
* A checkpoint is one ``torch.save`` dict with at least ``"model"`` (the ``GPT`` state dict, GPT-2
  parameter names, ``lm_head.weight`` and ``transformer.wte.weight`` sharing storage so the tied
  matrix is stored once) and ``"model_config"`` (``GPTConfig.to_dict()``, a plain dict). The
  trainer adds its own keys (step, optimizer, sampler state, ...) through ``extra``; every value
  must be loadable with ``torch.load(weights_only=True)`` (tensors, dicts, lists, str/int/float/bool),
  because that is the only way this module loads: a checkpoint can never execute code.
* A run directory keeps them as ``checkpoints/step-XXXXXXXX.pt`` (:func:`checkpoint_path`).
  :func:`save_model` writes atomically (temp file + fsync + rename via :mod:`pipeline.fsutil`), so a
  crash never leaves a truncated file under a final name. :func:`load_model` on a run directory
  still falls back past unloadable files (a disk that lost data, a file copied half-way), newest
  first, with a warning naming each one it skipped.
* State dicts of ``torch.compile``'d or DDP-wrapped models (``_orig_mod.``/``module.`` prefixes)
  are accepted: the prefixes are stripped, and :func:`save_model` unwraps before saving.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from model.config import GPTConfig
from model.gpt import GPT
from pipeline.fsutil import atomic_open

CKPT_DIRNAME = "checkpoints"
_CKPT_RE = re.compile(r"^step-(\d+)\.pt$")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint file or run directory that cannot be loaded; the message names the path."""


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """``run_dir/checkpoints/step-00000123.pt`` for step 123."""
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return Path(run_dir) / CKPT_DIRNAME / f"step-{step:08d}.pt"


def _ckpt_dir(run_dir: Path) -> Path:
    # accept the run dir itself or its checkpoints/ folder
    sub = run_dir / CKPT_DIRNAME
    return sub if sub.is_dir() else run_dir


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """``step-*.pt`` files of a run directory (or of its ``checkpoints/`` folder), newest step first."""
    folder = _ckpt_dir(Path(run_dir))
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found, key=lambda sp: sp[0], reverse=True)]


def newest_loadable(
    paths: list[Path],
    load: Callable[[Path], T],
    *,
    catch: type[BaseException] | tuple[type[BaseException], ...],
    warn: Callable[[str], None],
    fail: Callable[[list[str]], BaseException],
) -> tuple[T, Path]:
    """``(load(path), path)`` for the first of ``paths`` (newest first) that loads.

    Each one that raises ``catch`` is reported through ``warn``, naming the checkpoint it falls
    back to; when none loads, ``fail(failures)`` is raised with one line per file.
    """
    failures = []
    for i, path in enumerate(paths):
        try:
            return load(path), path
        except catch as e:
            failures.append(f"{path}: {type(e).__name__}: {e}")
            nxt = f"falling back to {paths[i + 1].name}" if i + 1 < len(paths) else "no older checkpoint left"
            warn(f"checkpoint {path} could not be loaded ({type(e).__name__}: {str(e)[:200]}); {nxt}")
    raise fail(failures)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` (``_orig_mod``) and DDP (``module``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip compile/DDP prefixes; restore ``lm_head.weight`` from the tied ``wte`` when absent."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix) :], True
        out[k] = v
    if "lm_head.weight" not in out and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def save_model(path: str | os.PathLike[str], model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Write ``{"model", "model_config", **extra}`` to ``path`` atomically (parent dirs created)."""
    base = unwrap_model(model)
    if not isinstance(base, GPT):
        raise TypeError(
            f"save_model needs a GPT (optionally compiled/DDP-wrapped), got {type(base).__name__}"
        )
    extra = dict(extra or {})
    clash = {"model", "model_config"} & set(extra)
    if clash:
        raise ValueError(f"extra must not override the checkpoint keys {sorted(clash)}")
    ckpt = {"model": base.state_dict(), "model_config": base.config.to_dict(), **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        torch.save(ckpt, f)


def build_model(ckpt: dict[str, Any], source: str = "checkpoint") -> GPT:
    """A ``GPT`` from a loaded checkpoint dict (strict: every parameter must be present and fit)."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{source}: not an owtgpt checkpoint (needs 'model' and 'model_config' keys, found {keys})"
        )
    try:
        config = GPTConfig.from_dict(dict(ckpt["model_config"]))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: invalid model_config: {e}") from e
    with torch.device("meta"):
        model = GPT(config)  # no memory and no init work: load_state_dict(assign=True) fills it
    state = clean_state_dict(ckpt["model"])
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not match its model_config: {e}") from e
    head, wte = model.lm_head.weight, model.transformer.wte.weight
    if head.data_ptr() != wte.data_ptr() and not torch.equal(head, wte):
        raise CheckpointError(
            f"{source}: lm_head.weight differs from transformer.wte.weight (GPT-2 ties them)"
        )
    model.lm_head.weight = wte  # assign=True made two Parameters; tie them again
    return model


def _load_file(path: Path, map_location: Any) -> tuple[GPT, dict[str, Any]]:
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated zip, wrong format, non-weights-only pickle, ...
        raise CheckpointError(f"{path}: cannot be loaded with torch.load(weights_only=True): {e}") from e
    model = build_model(ckpt, str(path))
    return model, {**ckpt, "checkpoint_path": str(path)}


def load_model(
    path_or_run_dir: str | os.PathLike[str], map_location: Any = "cpu"
) -> tuple[GPT, dict[str, Any]]:
    """Load ``(model, checkpoint dict)`` from a ``.pt`` file or a run directory's newest good checkpoint.

    The returned dict is the checkpoint plus ``"checkpoint_path"`` (the file actually loaded). On a
    run directory, checkpoints that fail to load are skipped with a ``warnings.warn``; if none
    loads, :class:`CheckpointError` lists every failure.
    """
    path = Path(path_or_run_dir)
    if path.is_file():
        return _load_file(path, map_location)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (give a .pt file or a run directory)")
    candidates = list_checkpoints(path)
    if not candidates:
        raise CheckpointError(
            f"{path}: no checkpoints (expected {CKPT_DIRNAME}/step-XXXXXXXX.pt files); "
            "train first, or pass a .pt file"
        )
    (model, ckpt), _ = newest_loadable(
        candidates,
        lambda p: _load_file(p, map_location),
        catch=CheckpointError,
        warn=lambda msg: warnings.warn(msg, RuntimeWarning, stacklevel=4),
        fail=lambda tried: CheckpointError(f"{path}: no loadable checkpoint; tried:\n  " + "\n  ".join(tried)),
    )
    return model, ckpt
