"""Process-group setup for torchrun (DDP), and the device / precision choice of this process.

* Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment), we join
  the process group: NCCL on CUDA, gloo on CPU. Without those variables this is a single process
  and nothing distributed is touched, so ``python -m trainer`` needs no launcher.
* Multi-node is plain torchrun (``--nnodes``, ``--node-rank``, ``--rdzv-endpoint``); nothing here
  is node-specific beyond ``LOCAL_RANK`` choosing the GPU.
* :func:`resolve_precision` turns ``--precision`` into what this process uses, with a clear error
  where it cannot work (fp16 or bf16 on CPU); ``--device`` goes through
  :func:`pipeline.device.resolve_device` (``LOCAL_RANK`` picks the GPU).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pipeline.device import resolve_device
from trainer.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None else int(value)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for this device (autocast dtype for the first two)."""
    if device.type != "cuda":
        if cfg.precision in ("bf16", "fp16"):
            raise ConfigError(
                f"--precision {cfg.precision} needs CUDA; CPU training runs in fp32 "
                "(pass --precision fp32 or auto)"
            )
        return "fp32"
    # including_emulation=False: a V100 or T4 "supports" bf16 only by emulation, far slower than fp16
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if cfg.precision == "auto":
        return "bf16" if native_bf16 else "fp16"
    if cfg.precision == "bf16" and not native_bf16:
        raise ConfigError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bf16 support; "
            "use --precision fp16"
        )
    return cfg.precision


def setup(cfg: TrainConfig) -> DistEnv:
    """Join the torchrun process group when launched by torchrun; pick this rank's device."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(cfg.device, local_rank=local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device, timeout=datetime.timedelta(minutes=30))
        else:
            dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown(env: DistEnv, *, failed: bool = False) -> None:
    """Leave the process group: after a barrier on success, at once on failure.

    On success every rank has finished its last collective, so the barrier pairs and rank 0's final
    checkpoint is on disk before any rank exits. On failure (``failed=True``: this rank is unwinding
    from an exception: a full disk, an OOM, an error while sampling) the other ranks may be inside
    an all-reduce this rank will never join, so a barrier would never pair and the job would hang for
    the collective timeout (30 min). Instead the group is aborted (NCCL) or destroyed (gloo) without
    waiting: this process exits, torchrun sees a failed worker and stops the others, and a gloo peer
    blocked on this rank gets a closed connection and fails too.
    """
    if not (env.distributed and dist.is_initialized()):
        return
    if not failed:
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()
        return
    with contextlib.suppress(Exception):
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if env.device.type == "cuda" and abort is not None:
            abort()  # ncclCommAbort: returns without waiting for in-flight collectives of the peers
        else:
            dist.destroy_process_group()


def all_reduce_(
    t: torch.Tensor, env: DistEnv, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
) -> torch.Tensor:
    """In-place all-reduce across ranks (a no-op in a single process)."""
    if env.distributed:
        dist.all_reduce(t, op=op)
    return t
