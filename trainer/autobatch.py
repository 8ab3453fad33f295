"""``--micro-batch auto``: the largest micro batch whose real training step fits this device, and the
one-line out-of-memory error.

* Candidates are the divisors of the per-rank batch (``--total-batch-tokens / (T x world size)``
  windows), so gradient accumulation keeps the total batch and the run's math is unchanged.
* On CUDA, :func:`cuda_probe` runs real training steps (the compiled forward when the run compiles,
  the backward and the optimizer step) on a throw-away model of the run's shape; :func:`search` starts
  at the largest candidate the memory plan (:mod:`trainer.memplan`) fits, steps down until a step fits
  within the budget (the card's memory less :data:`MARGIN`) and tries one size up. When even micro
  batch 1 does not fit it turns activation checkpointing on (unless ``--no-activation-checkpointing``).
  The probe leaves nothing behind: its model, optimizer, compiled graphs (``torch._dynamo.reset``, so
  the run compiles its own static-shape graph) and RNG draws are gone, and the peak statistics reset.
* On CPU there is nothing to probe: auto takes the preset's micro batch. A ``--resume`` takes the value
  its checkpoint recorded, so the continuation is exact.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import list_checkpoints
from pipeline.errors import UserError
from trainer.config import ConfigError, TrainConfig
from trainer.dist import DistEnv, all_reduce_
from trainer.memplan import GiB, MemoryPlan

MARGIN = 0.10  # of the card's memory, kept free: fragmentation, the eval graph, other processes' drift
MAX_PROBES = 4  # steps before trying a size up (each compiles its own graph): seconds, not minutes

# probe(micro_batch, checkpointing) -> the measured peak in bytes; raises torch.OutOfMemoryError
Probe = Callable[[int, bool], int]


class OutOfMemory(UserError):
    """The device ran out of memory; the message says what ran and which flags help."""


@dataclass
class AutoChoice:
    """What ``--micro-batch auto`` chose, recorded in config.json."""

    micro_batch: int
    checkpointing: bool
    reason: str
    seconds: float = 0.0
    probes: list[dict[str, Any]] = field(default_factory=list)  # each real step tried

    def to_dict(self) -> dict[str, Any]:
        return {
            "micro_batch": self.micro_batch,
            "activation_checkpointing": self.checkpointing,
            "reason": self.reason,
            "probe_seconds": round(self.seconds, 2),
            "probes": self.probes,
        }


def candidates(cfg: TrainConfig, world_size: int) -> list[int]:
    """Micro batches that divide the per-rank batch, ascending."""
    per_rank, rest = divmod(cfg.total_batch_tokens, cfg.seq_len * world_size)
    if rest or per_rank < 1:
        raise ConfigError(
            f"--total-batch-tokens {cfg.total_batch_tokens} is not a multiple of --seq-len {cfg.seq_len} "
            f"x world size {world_size}; pick a total that is a multiple of {cfg.seq_len * world_size}"
        )
    return [b for b in range(1, per_rank + 1) if per_rank % b == 0]


def recorded(out: Path) -> tuple[int, bool] | None:
    """(micro batch, activation checkpointing) of the run in ``out``: its newest readable checkpoint's
    config (memory-mapped: the weights are not read), else its config.json; None for a new run."""
    for path in reversed(list_checkpoints(out)):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            tc = payload["train_config"]
            return int(tc["micro_batch"]), bool(tc.get("activation_checkpointing"))
        except Exception:  # unreadable or older schema: the next one, then config.json
            continue
    try:
        tc = json.loads((out / "config.json").read_text())["config"]
        return int(tc["micro_batch"]), bool(tc.get("activation_checkpointing"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cpu_choice(cfg: TrainConfig, cands: list[int]) -> AutoChoice:
    """The preset's micro batch (the largest candidate not above it): a CPU has nothing to probe."""
    want = cfg.preset_micro_batch()
    b = max(c for c in cands if c <= want) if cands[0] <= want else cands[0]
    why = f"micro batch {b}: the preset's value (--micro-batch auto probes only on CUDA)"
    if b != want:
        why = (
            f"micro batch {b}: the preset's {want} does not divide the per-rank batch of {cands[-1]} windows"
        )
    return AutoChoice(b, bool(cfg.activation_checkpointing), why)


class _Probes:
    """The probed steps of one search, each measured once per (micro batch, checkpointing) and recorded
    for config.json; the plan corrected by what they measured."""

    def __init__(self, plan: MemoryPlan, budget: int, probe: Probe):
        self.plan, self.budget, self.probe = plan, budget, probe
        self.records: list[dict[str, Any]] = []
        self.verdict: dict[tuple[int, bool], bool] = {}
        self.measured: dict[tuple[int, bool], int] = {}

    def fits(self, b: int, ckpt: bool) -> bool:
        if (b, ckpt) not in self.verdict:
            try:
                peak = self.measured[b, ckpt] = self.probe(b, ckpt)
                ok = peak <= self.budget
            except Exception as e:
                if not is_oom(e):
                    raise
                peak, ok = None, False
            self.verdict[b, ckpt] = ok
            self.records.append(
                {
                    "micro_batch": b,
                    "activation_checkpointing": ckpt,
                    "peak_gib": None if peak is None else round(peak / GiB, 3),
                    "planned_gib": round(self.plan.peak(b, ckpt) / GiB, 3),
                    "fits": ok,
                }
            )
        return self.verdict[b, ckpt]

    def planned_need(self, fitted: int, nxt: int, ckpt: bool) -> float:
        """Bytes the plan gives ``nxt``, scaled by what the probe of ``fitted`` measured against its plan."""
        got = self.measured.get((fitted, ckpt))
        scale = got / self.plan.peak(fitted, ckpt) if got else 1.0
        return self.plan.peak(nxt, ckpt) * scale


def search(
    cands: list[int],
    plan: MemoryPlan,
    budget: int,
    probe: Probe,
    checkpointing: bool | None,
    card: str,
    *,
    max_probes: int = MAX_PROBES,
) -> AutoChoice:
    """The largest candidate whose probed step fits ``budget`` bytes (see the module docstring).

    ``checkpointing``: True or False fixes it; None tries without, then with when micro batch 1 fails.
    """
    t0 = time.perf_counter()
    probes = _Probes(plan, budget, probe)
    modes = [False, True] if checkpointing is None else [bool(checkpointing)]
    for ckpt in modes:
        start = plan.largest_fitting(cands, budget, ckpt) or cands[0]
        i = cands.index(start)
        while i >= 0 and not probes.fits(cands[i], ckpt):
            i -= 1
        if i < 0:
            continue  # not even micro batch 1 fits this way: with checkpointing next, if allowed
        planned_out = None  # (size, bytes) of the next size up when the corrected plan rules it out
        while i + 1 < len(cands) and len(probes.records) < max_probes:
            nxt = cands[i + 1]
            if (nxt, ckpt) not in probes.verdict:  # the plan, corrected by what the last fit measured
                need = probes.planned_need(cands[i], nxt, ckpt)
                if need > budget:
                    planned_out = (nxt, need)
                    break  # not worth a compile: it would not fit
            if not probes.fits(nxt, ckpt):
                break
            i += 1  # the plan was pessimistic: one size up fits too
        why = _why(cands, i, planned_out, budget, card)
        if ckpt and checkpointing is None:
            why += "; activation checkpointing turned on: micro batch 1 does not fit without it"
        n, seconds = len(probes.records), time.perf_counter() - t0
        why += f" (probed {n} step{'s' if n != 1 else ''} in {seconds:.1f} s)"
        return AutoChoice(cands[i], ckpt, why, seconds, probes.records)
    tried = ", ".join(
        f"{p['micro_batch']}{' +ckpt' if p['activation_checkpointing'] else ''}" for p in probes.records
    )
    raise OutOfMemory(
        f"--micro-batch auto: no micro batch fits on this {card} (tried {tried}; planned peak at micro "
        f"batch 1 {plan.peak(1, True) / GiB:.2f} GiB with checkpointing); "
        + fixes(after_micro_batch=True, checkpointing=modes[-1])
    )


def _why(cands: list[int], i: int, planned_out: tuple[int, float] | None, budget: int, card: str) -> str:
    """Why the search chose ``cands[i]``: the size up does not fit (measured, or by the corrected plan)."""
    b = cands[i]
    if i + 1 == len(cands):
        return f"micro batch {b}: the whole per-rank batch fits on this {card}, no accumulation"
    nxt = cands[i + 1]
    if planned_out is not None:
        return (
            f"micro batch {b}: {nxt} would need about {planned_out[1] / GiB:.1f} GiB (the plan, "
            f"scaled by what {b} measured) of the {budget / GiB:.1f} GiB budget on this {card}"
        )
    return f"micro batch {b}: {nxt} does not fit on this {card}"


def is_oom(e: BaseException) -> bool:
    """An out-of-memory, also when it surfaces wrapped (a compile's autotuning, a backend error)."""
    cur: BaseException | None = e
    for _ in range(8):  # the cause chain, a few links deep
        if cur is None:
            return False
        if isinstance(cur, torch.OutOfMemoryError):
            return True
        if isinstance(cur, RuntimeError) and "out of memory" in str(cur)[:2000].lower():
            return True  # e.g. "CUDA error: out of memory" from a kernel launch, not the allocator
        cur = cur.__cause__ or cur.__context__
    return False


def fixes(after_micro_batch: bool = False, checkpointing: bool = False) -> str:
    """The flags that help, in the order they help (leaving out what is already done)."""
    steps = [] if after_micro_batch else ["a smaller --micro-batch (or auto)"]
    steps += [] if checkpointing else ["--activation-checkpointing"]
    steps += ["a smaller --seq-len", "a smaller model (--model, --n-layer)"]
    return "try " + ", then ".join(steps)


def card_label(device: torch.device, capacity: int) -> str:
    """``11.6 GiB card`` (with the name where there is one)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"{capacity / GiB:.1f} GiB card ({name})"


def cuda_capacity(device: torch.device) -> int:
    """Bytes this process may allocate: the card's total, or the cap of
    ``torch.cuda.set_per_process_memory_fraction``, less what other processes hold."""
    free, total = torch.cuda.mem_get_info(device)
    cap = int(total * torch.cuda.get_per_process_memory_fraction(device))
    return min(cap, free + torch.cuda.memory_reserved(device))


def can_probe(device: torch.device) -> bool:
    """Whether auto can measure on ``device`` (CUDA's allocator statistics); elsewhere: the preset's."""
    return device.type == "cuda"


def choose(
    cfg: TrainConfig,
    device: torch.device,
    world_size: int,
    model_config,
    precision: str,
    compiled: bool,
) -> AutoChoice | None:
    """``--micro-batch auto``'s choice for this rank (None when ``--micro-batch`` was given)."""
    from trainer.memplan import make_plan

    if cfg.micro_batch is not None:
        return None
    cands = candidates(cfg, world_size)
    rec = recorded(cfg.out) if cfg.resume else None
    if rec is not None and rec[0] in cands:
        ckpt = rec[1] if cfg.activation_checkpointing is None else cfg.activation_checkpointing
        return AutoChoice(rec[0], ckpt, f"micro batch {rec[0]}: the value the resumed run recorded")
    if not can_probe(device):
        return cpu_choice(cfg, cands)
    plan = make_plan(model_config, cfg.seq_len, precision, compiled, getattr(cfg, "optimizer", "adamw"))
    capacity = cuda_capacity(device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    probe, cleanup = cuda_probe(cfg, model_config, device, amp_dtype, compiled)
    try:
        return search(
            cands, plan, int(capacity * (1 - MARGIN)), probe, cfg.activation_checkpointing,
            card_label(device, capacity),
        )  # fmt: skip
    finally:
        cleanup()


def agree(auto: AutoChoice, env: DistEnv) -> AutoChoice:
    """Every rank takes the smallest micro batch any rank chose, with checkpointing if any rank needs it."""
    if not env.distributed:
        return auto
    t = torch.tensor([auto.micro_batch, -int(auto.checkpointing)], device=env.device)
    all_reduce_(t, env, op=torch.distributed.ReduceOp.MIN)
    b, ckpt = int(t[0]), bool(-int(t[1]))
    if (b, ckpt) != (auto.micro_batch, auto.checkpointing):
        auto.reason += f"; micro batch {b}{' with checkpointing' if ckpt else ''} agreed with the other ranks"
        auto.micro_batch, auto.checkpointing = b, ckpt
    return auto


def cuda_probe(
    cfg: TrainConfig, model_config, device: torch.device, amp_dtype: torch.dtype | None, compiled: bool
) -> tuple[Probe, Callable[[], None]]:
    """A probe running real training steps on a throw-away model on ``device``, and its cleanup.

    The peak is CUDA's ``max_memory_allocated``; elsewhere (the CPU tests) the steps run and it is 0."""
    from model.gpt import GPT
    from trainer.optim import make_optimizer

    cuda = device.type == "cuda"
    # the probe's init and token draws leave the run's RNG streams as they were
    rng = torch.random.fork_rng(devices=[device] if cuda else [])
    rng.__enter__()
    model = GPT(model_config).to(device)
    optimizer = make_optimizer(model, cfg, device.type)
    fwd = torch.compile(model, dynamic=False) if compiled else model  # static shapes, as the run's graph
    gen = torch.Generator(device=device).manual_seed(0)

    def probe(b: int, ckpt: bool) -> int:
        model.activation_checkpointing = ckpt
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            x = torch.randint(0, model_config.vocab_size, (b, cfg.seq_len), device=device, generator=gen)
            for _ in range(2):  # the second step runs with the optimizer state the first one created
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    _, loss = fwd(x, x)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not cuda:
                return 0
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device)
        finally:
            optimizer.zero_grad(set_to_none=True)

    def cleanup() -> None:
        nonlocal model, optimizer, fwd
        del model, optimizer, fwd
        if compiled:
            torch._dynamo.reset()  # drop the probe's graphs and its "batch size varies" dynamic marks
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        rng.__exit__(None, None, None)

    return probe, cleanup


def oom_message(what: str, device: torch.device, cfg: TrainConfig, checkpoint: Path | None) -> str:
    """The one line of an out-of-memory error: what ran, the device's memory and peak, the fixes."""
    mem = ""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        peak = torch.cuda.max_memory_allocated(device)
        name = torch.cuda.get_device_name(device)
        mem = f" on {name} ({total / GiB:.1f} GiB, peak {peak / GiB:.2f} GiB allocated)"
    ckpt = (
        f"the last checkpoint {checkpoint} is intact (--resume continues from it)"
        if checkpoint
        else "no checkpoint was written by this run yet"
    )
    flags = f"micro batch {cfg.micro_batch} x T {cfg.seq_len}"
    if cfg.activation_checkpointing:
        flags += ", activation checkpointing on"
    help_ = fixes(after_micro_batch=cfg.micro_batch == 1, checkpointing=bool(cfg.activation_checkpointing))
    return f"out of memory during {what} ({flags}){mem}: {help_}; {ckpt}"


def dry_run(cfg: TrainConfig) -> MemoryPlan:
    """``--dry-run``: print the memory plan of ``cfg`` on its device and return it; writes nothing."""
    import os

    from rich.console import Console
    from rich.table import Table

    from pipeline.device import resolve_device
    from trainer import init_from
    from trainer.dist import resolve_precision
    from trainer.memplan import make_plan, plan_rows

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg, device)
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    model_config = init_from.plan(cfg).model_config if cfg.init_from else cfg.model_config()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    optimizer = getattr(cfg, "optimizer", "adamw")
    plan = make_plan(model_config, cfg.seq_len, precision, compiled, optimizer)
    cands = candidates(cfg, world_size)
    capacity = cuda_capacity(device) if device.type == "cuda" else None
    ckpt = bool(cfg.activation_checkpointing)
    if cfg.micro_batch is not None:
        b, how = cfg.micro_batch, "--micro-batch"
    elif capacity is None:
        b, how = cpu_choice(cfg, cands).micro_batch, "auto on CPU: the preset's"
    else:
        budget = int(capacity * (1 - MARGIN))
        fit = plan.largest_fitting(cands, budget, ckpt)
        how = "auto, planned (a real run probes)"
        if fit is None and cfg.activation_checkpointing is None:
            ckpt, fit = True, plan.largest_fitting(cands, budget, True)
            how += "; needs activation checkpointing"
        b = fit or 1
    label = card_label(device, capacity) if capacity else "CPU"
    table = Table(
        title=f"memory plan: {cfg.model} at T={cfg.seq_len}, {precision}{', compiled' if compiled else ''}, "
        f"{optimizer}, micro batch {b} ({how}), "
        f"grad accum {cfg.total_batch_tokens // (b * cfg.seq_len * world_size)}",
        title_justify="left",
    )
    table.add_column("item")
    table.add_column("no checkpointing", justify="right")
    table.add_column("activation checkpointing", justify="right")
    for row in plan_rows(plan, b, capacity, label.split(" (")[0]):
        table.add_row(*row)
    console = Console(soft_wrap=True, width=110)
    console.print(table)
    console.print(f"device: {label}{'' if capacity else ' (no device memory limit; host RAM)'}")
    if ckpt:
        console.print("activation checkpointing: on")
    console.print("dry run: nothing was written")
    return plan
