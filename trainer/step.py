"""One optimizer step on one batch (:func:`train_step`), and the read-back of its figures (:class:`Readback`).

* Nothing in a step waits for the device: its outputs (:class:`StepOutput`) are device scalars, and the
  non-finite refusal is decided on the device. The flag is the fused AdamW's ``found_inf`` and
  :class:`~trainer.optim.GuardedMuon`'s, so a refused step leaves the weights, moments and step counts as
  they were; under fp16 an overflowing gradient is refused the same way and the GradScaler backs off.
* :class:`Readback` brings a step's figures to the host while the next step's forward/backward runs:
  the loop reads step s's inside step s+1 (``before_update``), before step s+1's update is launched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainer.dist import DistEnv, all_reduce_
from trainer.optim import Optimizers

# what the sampler yields per micro-step: (sampler step, x, y), each (micro_batch, T)
MicroBatches = Iterator[tuple[int, torch.Tensor, torch.Tensor]]


class StopRequest(Protocol):
    """Whether this process was asked to stop (SIGTERM/SIGINT): the loop's ``_StopFlag``."""

    requested: bool


@dataclass
class StepContext:
    """What every step uses, wired once by the loop (see :meth:`build`)."""

    model: nn.Module  # the training forward/backward: compiled, and DDP-wrapped when distributed
    optimizer: Optimizers
    scaler: torch.amp.GradScaler  # enabled only under fp16
    params: list[torch.Tensor]  # the trainable parameters: clipped, and checked for non-finite weights
    grad_accum: int
    clip: float  # max gradient norm; inf clips nothing (--grad-clip 0)
    autocast: Callable[[], contextlib.AbstractContextManager]
    env: DistEnv
    stop: StopRequest
    stop_flag: torch.Tensor  # 1 once this rank was signalled (a fill kernel: no host sync)
    found_inf: torch.Tensor  # 1 = every optimizer refuses this step's update (Optimizers.guard)

    @classmethod
    def build(
        cls, model: nn.Module, raw: nn.Module, optimizer: Optimizers, scaler: torch.amp.GradScaler, *,
        grad_accum: int, grad_clip: float, autocast: Callable[[], contextlib.AbstractContextManager],
        env: DistEnv, stop: StopRequest,
    ) -> StepContext:  # fmt: skip
        """``model`` trains (compiled, DDP); ``raw`` is the model whose parameters it updates."""
        params: list[torch.Tensor] = [p for p in raw.parameters() if p.requires_grad]
        found_inf = torch.zeros((), device=env.device)
        optimizer.guard(found_inf)
        return cls(
            model, optimizer, scaler, params, grad_accum, grad_clip if grad_clip > 0 else math.inf,
            autocast, env, stop, stop_flag=torch.zeros((), device=env.device), found_inf=found_inf,
        )  # fmt: skip


@dataclass
class StepOutput:
    """One step's figures, still on the device (nothing waited for them)."""

    loss: torch.Tensor  # mean train loss over the micro-batches and the ranks
    grad_norm: torch.Tensor  # before clipping
    bad: torch.Tensor  # counts as a non-finite step (under fp16 only a non-finite loss: overflow is routine)
    stop: torch.Tensor  # > 0: some rank was signalled
    weights_bad: torch.Tensor  # the update made a weight non-finite

    def packed(self) -> torch.Tensor:
        return torch.stack([self.loss, self.grad_norm, self.bad.float(), self.stop, self.weights_bad.float()])


def train_step(
    ctx: StepContext,
    batches: MicroBatches,
    *,
    lr: float,
    seed: int | None,
    inject_nan: bool,
    before_update: Callable[[], None],
) -> StepOutput:
    """Forward/backward ``ctx.grad_accum`` micro-batches of ``batches``, then the update at ``lr``.

    ``seed`` (under dropout) seeds the masks; ``inject_nan`` makes the loss NaN (``--debug-nan-at-step``).
    ``before_update`` runs once the backward passes are queued and before the update is launched: the
    loop reads back the previous step there, so a run that must stop stops with the weights it read.
    """
    ctx.optimizer.set_lr(lr)  # Muon's follows the same multiplier
    if seed is not None:  # dropout masks as a function of (seed, rank, step): a resume repeats them
        torch.manual_seed(seed)
    ddp = ctx.model if isinstance(ctx.model, DistributedDataParallel) else None
    loss_acc = torch.zeros((), device=ctx.env.device)
    for micro in range(ctx.grad_accum):
        _, x, y = next(batches)
        last = micro == ctx.grad_accum - 1
        # DDP all-reduces the gradients in the last micro-step's backward only
        sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
        with sync:
            with ctx.autocast():
                _, loss = ctx.model(x, y)
            loss = loss / ctx.grad_accum
            if inject_nan:
                loss = loss * math.nan
            ctx.scaler.scale(loss).backward()
        loss_acc += loss.detach()
    before_update()
    scaler = ctx.scaler
    if scaler.is_enabled():
        for opt in ctx.optimizer.all:
            scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(ctx.params, ctx.clip)  # pre-clip norm, a device scalar
    if ctx.stop.requested:
        ctx.stop_flag.fill_(1.0)
    # one collective per step: the summed loss and whether any rank was signalled
    shared = torch.stack([loss_acc.float(), ctx.stop_flag])
    all_reduce_(shared, ctx.env)
    loss_mean = shared[0] / ctx.env.world_size
    bad = ~torch.isfinite(loss_mean)
    refuse = bad | ~torch.isfinite(norm)  # any non-finite gradient, in any optimizer's parameters
    if not scaler.is_enabled():
        bad = refuse  # under fp16 an overflow is the GradScaler's routine: refused, not counted
    ctx.found_inf.copy_(refuse)
    ctx.optimizer.step()
    if scaler.is_enabled():
        scaler.update()  # backs the scale off after an overflow (unscale_ recorded it)
    # one fused pass: a weight the update made non-finite makes its tensor's norm non-finite
    weights_bad = ~torch.isfinite(torch.stack(torch._foreach_norm(ctx.params)).sum())
    # under DDP the gradients are views into its buckets: zeroed in place so the views survive
    ctx.optimizer.zero_grad(set_to_none=not ctx.env.distributed)
    return StepOutput(loss_mean, norm.float(), bad, shared[1], weights_bad)


@dataclass(frozen=True)
class StepFigures:
    """A completed step's figures on the host."""

    step: int
    lr: float
    loss: float
    grad_norm: float
    bad: bool
    stop: bool
    weights_bad: bool


class Readback:
    """One step's figures, device -> host, without stalling the device.

    ``put`` queues a copy into pinned host memory (non-blocking on CUDA) and records an event; ``take``
    waits for that event only, not for the work queued after it, so reading step s's loss while step
    s+1's forward/backward runs costs the device nothing. On CPU the copy is synchronous.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(5, dtype=torch.float32, pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None
        self.pending: tuple[int, float] | None = None  # (step, lr) whose figures wait in `host`

    def put(self, out: StepOutput, step: int, lr: float) -> None:
        self.host.copy_(out.packed(), non_blocking=self.cuda)
        if self.event is not None:
            self.event.record()
        self.pending = (step, lr)

    def take(self) -> StepFigures | None:
        """The pending step's figures (waiting for its copy only); None when none waits."""
        if self.pending is None:
            return None
        (step, lr), self.pending = self.pending, None
        if self.event is not None:
            self.event.synchronize()
        loss, norm, bad, stop, weights_bad = self.host.tolist()
        return StepFigures(step, lr, loss, norm, bad != 0, stop > 0, bool(weights_bad))
