"""Turn a ``--device`` value (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a ``torch.device``.

The one resolver for the sampler, ``model`` and ``trainer``; a bad value raises
:class:`pipeline.errors.ConfigError` (exit 2) naming the flag and the fix.
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError


def resolve_device(
    name: str | torch.device, flag: str = "--device", local_rank: int | None = None
) -> torch.device:
    """``auto`` is ``cuda`` when torch sees a GPU, else ``cpu``. A bare ``cuda`` gets index ``local_rank``
    when one is given (one GPU per torchrun process), else stays unindexed (the current device)."""
    if str(name) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag} {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag} {name!r}: only cpu and cuda are supported; use cpu, cuda, cuda:N or auto")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} {name}: torch sees no CUDA device here; use {flag} cpu")
    if device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    n = torch.cuda.device_count()
    if device.index is not None and device.index >= n:
        fix = (
            f"launch with torchrun --nproc_per_node={n} (or fewer)" if local_rank is not None else "pick one"
        )
        raise ConfigError(
            f"{flag} {name}: cuda:{device.index} but only {n} CUDA device(s) are visible; {fix}"
        )
    return device
