"""The checkpoint schema shared by the trainer, ``python -m model`` and the HF importer.

* One ``torch.save`` dict with at least ``"model"`` (the GPT state dict; the tied matrix is stored once)
  and ``"model_config"`` (``GPTConfig.to_dict()``); the trainer adds its own keys through ``extra``.
  Loading is only ever ``torch.load(weights_only=True)``: a checkpoint can never execute code.
* Runs keep them as ``checkpoints/step-XXXXXXXX.pt`` (:func:`checkpoint_path`); :func:`load_model` on a
  run folder falls back past unloadable or non-finite files, newest first, warning about each.
* :func:`write_checkpoint` (the one writer) is atomic (:mod:`pipeline.fsutil`) and refuses non-finite
  weights; ``torch.compile`` / DDP prefixes (``_orig_mod.``, ``module.``) are stripped on both paths.
"""

from __future__ import annotations

import contextlib
import errno
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
from pipeline.fsutil import atomic_open, path_type

CKPT_DIRNAME = "checkpoints"
_CKPT_RE = re.compile(r"^step-(\d+)\.pt$")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint file or run directory that cannot be loaded; the message names the path."""


class NonFiniteWeightsError(CheckpointError):
    """A state dict holds NaN/inf values: it is never written, and never loaded for use."""


def first_nonfinite(state: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding a NaN/inf, else None.

    One fused ``_foreach_norm`` (the L2 norms ``clip_grad_norm_`` uses; a NaN/inf element always
    makes its tensor's norm non-finite) and one host sync over the whole state. A finite tensor
    whose norm overflows (values ~1e19 in fp32) is cleared by an exact ``isfinite`` on that tensor
    alone. Tied tensors are read once. (ord=2 is used rather than max |x|: on the CPU it is ~10x
    faster, bench/ckpt_finite.py.)
    """
    items, seen = [], set()
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.numel():
            key = (v.device, v.data_ptr(), v.dtype, tuple(v.shape), v.stride())
            if key not in seen:  # a tied tensor (lm_head = wte) is read once
                seen.add(key)
                items.append((k, v))
    if not items or items[0][1].device.type == "meta":
        return None
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, v) in enumerate(items):
        by_device.setdefault(v.device, []).append(i)
    suspects: list[int] = []
    for idx in by_device.values():
        norms = torch._foreach_norm([items[i][1] for i in idx], 2.0)
        ok = torch.stack([n.float() for n in norms]).isfinite()
        if not bool(ok.all()):
            suspects += [idx[j] for j in torch.nonzero(~ok).flatten().tolist()]
    for i in sorted(suspects):
        if not bool(torch.isfinite(items[i][1]).all()):
            return items[i][0]
    return None


def check_finite(state: dict[str, Any], what: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming ``what`` and the first non-finite tensor."""
    name = first_nonfinite(state)
    if name is not None:
        raise NonFiniteWeightsError(f"{what}: tensor {name} holds NaN or inf values (the weights diverged)")


def _cause(e: BaseException) -> BaseException | None:
    """A KeyboardInterrupt or OSError in ``e``'s chain (torch's zip writer wraps them in RuntimeError)."""
    seen: set[int] = set()
    c: BaseException | None = e
    while c is not None and id(c) not in seen:
        if isinstance(c, (KeyboardInterrupt, OSError)):
            return c
        seen.add(id(c))
        c = c.__cause__ or c.__context__
    return None


def write_checkpoint(path: str | os.PathLike[str], obj: dict[str, Any]) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, only when ``obj["model"]`` is all finite.

    On failure the previous file at ``path`` is untouched and the temp file is gone; the error
    raised is the cause: :class:`NonFiniteWeightsError`, the ``OSError`` (with ``path`` as its
    filename, so :func:`pipeline.errors.describe_oserror` names it) or ``KeyboardInterrupt``.
    """
    path = Path(path)
    check_finite(obj.get("model", {}), f"refusing to write {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as f:
            torch.save(obj, f)
    except BaseException as e:
        cause = _cause(e)
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None  # a second Ctrl-C: no chained torch traceback
        if isinstance(cause, OSError):
            if cause.filename is None:
                cause.filename = str(path)
            raise cause from None
        raise
    return path


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
        if isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner
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
    write_checkpoint(path, ckpt)


def model_from_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> GPT:
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


_UNSAFE_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_error_reason(path: Path, e: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in owtgpt's words.

    torch's own message advises retrying with ``weights_only=False``: wrong for an untrusted file
    (that would run its code), so it is never relayed.
    """
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            return f"{path}: the file is empty (0 bytes): a copy or download that never finished"
    text = str(e)
    unsafe = _UNSAFE_RE.search(text)
    if unsafe or "weights_only" in text.replace(" ", "_").lower() or "Weights only load failed" in text:
        what = (
            f"an object of type {unsafe.group(1)}"
            if unsafe
            else "objects other than tensors and plain values"
        )
        return (
            f"{path}: unsafe to load: it holds {what}, and owtgpt loads only tensors and plain "
            "containers (a pickle can run code); it is not an owtgpt checkpoint"
        )
    first = text.splitlines()[0].split(". ")[0][:160] if text.strip() else "no detail"
    return f"{path}: not an owtgpt checkpoint, or truncated/corrupt (torch.load: {type(e).__name__}: {first})"


def torch_load_weights(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``; a failure is a :class:`CheckpointError` (see its reason)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # truncated zip, wrong format, non-weights-only pickle, empty file, ...
        raise CheckpointError(load_error_reason(path, e)) from None


def _load_file(path: Path, map_location: Any) -> tuple[GPT, dict[str, Any]]:
    ckpt = torch_load_weights(path, "cpu" if str(map_location) != "meta" else "meta")
    model = model_from_checkpoint(ckpt, str(path))
    check_finite(model.state_dict(), f"{path}: not usable")
    # keep only the weights (now in ``model``) and the metadata: the optimizer state of a training
    # checkpoint is twice the model's size and no use to sampling or export
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "muon", "scaler", "rng")}
    del ckpt
    if str(map_location) not in ("cpu", "meta"):
        model = model.to(map_location)
    return model, {**meta, "checkpoint_path": str(path)}


def _warn_runtime(msg: str) -> None:
    warnings.warn(msg, RuntimeWarning, stacklevel=4)


def load_model(
    path_or_run_dir: str | os.PathLike[str],
    map_location: Any = "cpu",
    warn: Callable[[str], None] = _warn_runtime,
) -> tuple[GPT, dict[str, Any]]:
    """Load ``(model, checkpoint dict)`` from a ``.pt`` file or a run directory's newest good checkpoint.

    The file is always read on the CPU and the model moved to ``map_location`` afterwards, so a
    training checkpoint's optimizer state never reaches the device. The returned dict is the
    checkpoint's metadata (no weights, no optimizer state) plus ``"checkpoint_path"`` (the file
    actually loaded). Non-finite weights are refused naming the tensor. On a run directory,
    checkpoints that fail to load are skipped through ``warn``; if none loads,
    :class:`CheckpointError` lists every failure.
    """
    path = Path(path_or_run_dir)
    kind = path_type(path)
    if kind == "file":
        return _load_file(path, map_location)
    if kind in ("missing", "broken symlink"):
        raise FileNotFoundError(errno.ENOENT, "does not exist (give a .pt file or a run folder)", str(path))
    if kind != "folder":  # reading a FIFO or /dev/zero would block or never end
        raise CheckpointError(f"{path}: is a {kind}, not a checkpoint; give a .pt file or a run folder")
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
        warn=warn,
        fail=lambda tried: CheckpointError(
            f"{path}: no loadable checkpoint; tried:\n  " + "\n  ".join(tried)
        ),
    )
    return model, ckpt
