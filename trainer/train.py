"""The training loop: runs one :class:`~trainer.config.TrainConfig` job in this process (a torchrun rank,
or a single process) and returns a :class:`TrainResult`.

* Everything that can fail cheaply (config, accumulation divisibility, ``T`` vs the context, the run folder
  policy, shard vocab and tokenizer, empty splits) fails on the CPU before the run folder is touched.
* Data is a function of the step: micro-step ``m`` of step ``s`` reads sampler step ``s * grad_accum + m``;
  so :class:`trainer.state.RunState` is all a checkpoint needs for a bit-identical resume.
* :func:`_loop` is the loop: one :func:`trainer.step.train_step` per step, then logging, evaluation,
  samples and checkpoints on their cadence. Nothing waits for the device before an optimizer step.
  SIGTERM/SIGINT finish the step, checkpoint and return (exit 0); a second SIGINT aborts.

README.md ("Design", Trainer) has the rest. Steps count *completed* updates (``step-00000010.pt``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np
import torch
from torch import nn

from model.checkpoint import list_checkpoints
from model.config import GPTConfig
from model.sdpa import choose_sdpa_backend, sdpa_context
from pipeline.format import ShardDataset
from pipeline.sampler import TokenSampler, ValWindows
from pipeline.sampler_index import open_dataset
from pipeline.tokenizer import tokenizer_fingerprint
from trainer import autobatch, init_from
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, TrainConfig
from trainer.dist import DistEnv, resolve_precision, setup, teardown
from trainer.evals import evaluate_loss, evaluate_tasks, sample_text, task_evaluator
from trainer.observe import Observer, device_name, make_profiler, mfu, peak_tflops_for, perplexity
from trainer.optim import lr_at, make_optimizers
from trainer.rundir import check_run_dir, prepare_run_dir, run_folder_lock, write_run_info
from trainer.state import RunState, build_train_model
from trainer.step import Readback, StepContext, StepFigures, train_step

if TYPE_CHECKING:
    from torch.profiler import profile

    from model.tools.evaluate import TaskEvaluator


class NonFiniteError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient norm."""


@dataclass
class TrainResult:
    """What a finished (or signal-stopped) run did, as seen by this rank."""

    run_dir: Path
    start_step: int
    final_step: int
    losses: dict[int, float] = field(default_factory=dict)  # completed step -> mean train loss
    val_losses: dict[int, float] = field(default_factory=dict)
    task_metrics: dict[int, dict[str, dict[str, Any]]] = field(
        default_factory=dict
    )  # step -> --eval-tasks figures
    bad_steps: int = 0
    stopped_by_signal: bool = False
    checkpoint: Path | None = None
    tokens_per_s: float | None = None  # tokens over time of this process's steps after warm-up
    mfu: float | None = None
    peak_mem_gib: float | None = None
    sdpa_backend: str | None = None  # the attention kernel the run used (model.sdpa)


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


class _StopFlag:
    """SIGTERM/SIGINT -> ``requested``; restores the previous handlers on exit."""

    def __init__(self, obs: Observer):
        self.requested = False
        self.obs = obs
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now, without a checkpoint
        self.requested = True
        self.obs.warn(
            f"{signal.Signals(signum).name} received: finishing this step, then saving a checkpoint "
            "(Ctrl-C again aborts without saving)"
        )

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) the training job of ``cfg`` in this process; see the module docstring."""
    if cfg.dry_run:  # the memory plan only: no process group, no data, nothing written
        autobatch.dry_run(cfg)
        return TrainResult(run_dir=cfg.out, start_step=0, final_step=0)
    env = setup(cfg)
    try:
        with run_folder_lock(cfg.out, env.is_main):  # one writer per run folder (rank 0 holds it)
            result = _train(cfg, env)
    except BaseException:
        teardown(env, failed=True)  # never wait on ranks that may be blocked in a collective
        raise
    teardown(env)
    return result


@dataclass
class _Doing:
    """What runs now (the loop updates it) and with which resolved config: the out-of-memory line's."""

    what: str
    cfg: TrainConfig


def _train(cfg: TrainConfig, env: DistEnv) -> TrainResult:
    doing = _Doing("setting up", cfg)
    try:
        return _train_body(cfg, env, doing)
    except Exception as e:
        if not autobatch.is_oom(e):
            raise
        newest = list_checkpoints(cfg.out)
        msg = autobatch.oom_message(doing.what, env.device, doing.cfg, newest[-1] if newest else None)
    raise autobatch.OutOfMemory(msg)  # outside the handler: the OOM's frames (and tensors) are gone


class _SamplerChecks(TypedDict):
    """What the train sampler and the val windows both check the shards against, and their rank."""

    expected_vocab_size: int
    expected_tokenizer_fingerprint: str
    rank: int
    world_size: int
    device: torch.device


@dataclass
class _Inputs:
    """What :func:`_train_body` checked, resolved and opened before anything is built on the device."""

    cfg: TrainConfig  # --micro-batch auto resolved
    env: DistEnv
    precision: str
    grad_accum: int
    init: init_from.InitPlan
    dataset: ShardDataset
    sampler: TokenSampler
    val: ValWindows | None
    tasks: TaskEvaluator | None
    auto: autobatch.AutoChoice | None
    doing: _Doing


def _train_body(cfg: TrainConfig, env: DistEnv, doing: _Doing) -> TrainResult:
    device = env.device
    # ---- cheap checks first, nothing written yet
    precision = resolve_precision(cfg, device)
    cfg.grad_accum_steps(env.world_size)  # under auto: T x world size must divide the total
    if env.is_main:  # only rank 0 decides (and later changes) the run folder: no check-vs-mkdir race
        check_run_dir(cfg)
    # the shape: the preset's, the --init-from source's, or the resumed fine-tune's
    init = init_from.plan(cfg)
    model_config = init.model_config
    _refuse_long_cpu_run(cfg, device, model_config)
    dataset = open_dataset(cfg.data)  # refuses a folder that a build still holds
    if cfg.eval_every > 0 and dataset.num_tokens("val") == 0:
        raise ConfigError(
            f"--data {cfg.data}: the val split is empty, so --eval-every {cfg.eval_every} has nothing to "
            "evaluate on; rebuild with --val-fraction > 0, or pass --eval-every 0 to train without evaluation"
        )
    # ---- --micro-batch auto (probing on CUDA), after the cheap checks and before anything sized by it
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    doing.what = "--micro-batch auto's probing"
    auto = autobatch.choose(cfg, device, env.world_size, model_config, precision, use_compile)
    if auto is not None:
        auto = autobatch.agree(auto, env)
        cfg = dataclasses.replace(
            cfg, micro_batch=auto.micro_batch, activation_checkpointing=auto.checkpointing
        )
    doing.what, doing.cfg = "setting up", cfg
    assert cfg.micro_batch is not None  # given, or resolved by --micro-batch auto just above
    grad_accum = cfg.grad_accum_steps(env.world_size)
    checks = _SamplerChecks(
        expected_vocab_size=model_config.vocab_size,
        expected_tokenizer_fingerprint=tokenizer_fingerprint(),
        rank=env.rank,
        world_size=env.world_size,
        device=device,
    )
    sampler = TokenSampler(
        dataset, split="train", batch_size=cfg.micro_batch, seq_len=cfg.seq_len, seed=cfg.seed,
        doc_aligned=cfg.doc_aligned, prefetch=cfg.prefetch, sampling=cfg.sampling, **checks,
    )  # fmt: skip
    val = None
    if cfg.eval_every > 0:
        val = ValWindows(
            dataset, seq_len=cfg.seq_len, num_windows=cfg.eval_windows, batch_size=cfg.micro_batch, **checks
        )
    tasks = task_evaluator(cfg, env, model_config)
    try:
        return _run(_Inputs(cfg, env, precision, grad_accum, init, dataset, sampler, val, tasks, auto, doing))
    finally:
        sampler.close()


# FLOPs of a whole run above which `--device auto` landing on a CPU is refused: ~1e15 is hours on a
# many-core CPU (1e11-1e12 FLOP/s). GPT-2 124M's 10B tokens are ~7e18: months; tiny/demo are ~1e12.
CPU_AUTO_MAX_FLOPS = 1e15


def _refuse_long_cpu_run(cfg: TrainConfig, device: torch.device, model_config: GPTConfig) -> None:
    """No GPU and no explicit ``--device cpu``: refuse a run far too big for a CPU, pointing at the demo."""
    if device.type != "cpu" or cfg.device == "cpu":
        return
    d, layers = model_config.n_embd, model_config.n_layer
    params = 12 * layers * d * d + (model_config.padded_vocab_size + model_config.block_size) * d
    flops = 6 * params * cfg.total_batch_tokens * cfg.max_steps
    if flops > CPU_AUTO_MAX_FLOPS:
        raise ConfigError(
            f"no CUDA GPU here, and --preset {cfg.preset} ({params / 1e6:,.0f}M parameters, "
            f"{cfg.max_steps:,} steps of {cfg.total_batch_tokens:,} tokens, ~{flops:.1e} FLOPs) would take "
            "weeks on a CPU; "
            "`make demo` or --preset tiny trains on a CPU in minutes, or pass --device cpu to run this anyway"
        )


@dataclass
class _Run:
    """What the loop works with, wired once by :func:`_build`."""

    state: RunState
    fwd_model: nn.Module  # compiled, and DDP-wrapped when distributed: the training forward/backward
    eval_model: nn.Module  # compiled too (its own fixed-shape graph), never through DDP
    val: ValWindows | None
    tasks: TaskEvaluator | None  # --eval-tasks
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum: int
    obs: Observer
    result: TrainResult
    flops_per_token: int
    peak: float | None  # the device's peak TFLOP/s for MFU; None when unknown
    doing: _Doing
    sdpa: str  # the attention kernel (model.sdpa)


def _run(inp: _Inputs) -> TrainResult:
    run = _build(inp)
    cfg, env = run.state.cfg, run.state.env
    try:
        with (
            sdpa_context(run.sdpa),
            _StopFlag(run.obs) as stop,
            make_profiler(cfg.profile, cfg.out, env.device, cfg.profile_wait, cfg.profile_active) as prof,
        ):
            first = run.state.step == 0
            _evaluate_at(run, 0, val=run.val if first else None, tasks=run.tasks if first else None)
            try:
                _loop(run, stop, prof)
            except RuntimeError:  # torch.distributed's errors (gloo, NCCL) are RuntimeErrors
                if env.distributed and stop.requested:
                    # a second Ctrl-C reaches every rank; the peer that aborted first closed this rank's
                    # collective under it: the same interruption, not another failure
                    raise KeyboardInterrupt from None
                raise
    finally:
        run.obs.close()
    return run.result


def _build(inp: _Inputs) -> _Run:
    """The model, optimizers and state (resumed under ``--resume``), compiled and DDP-wrapped; the run
    folder prepared, ``config.json`` written and the observer opened with the run's first line."""
    cfg, env, device = inp.cfg, inp.env, inp.env.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(inp.precision)

    def autocast() -> contextlib.AbstractContextManager:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    model_config = inp.init.model_config
    model = build_train_model(cfg, model_config, device, inp.init.source)
    model.activation_checkpointing = bool(cfg.activation_checkpointing)  # before compile traces it
    inp.init.source = None  # the source's own copy of the weights is no longer needed
    optimizer = make_optimizers(model, cfg, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=inp.precision == "fp16")
    state = RunState(
        cfg, env, inp.dataset, inp.sampler, model, optimizer, scaler, init_record=inp.init.record
    )

    # ---- the run folder (rank 0 changes it; the others wait so they read a settled folder)
    if env.is_main:
        prepare_run_dir(cfg)
        ckpt.clean_temps(cfg.out)
    if env.distributed:
        torch.distributed.barrier()
    warn_msgs: list[str] = []
    resumed_from = state.resume(warn_msgs.append) if cfg.resume else None  # before compile and DDP wrap
    # torch.compile of a Module returns an OptimizedModule (a Module); its stubs only say "a callable"
    compiled = cast(nn.Module, torch.compile(model)) if use_compile else model
    fwd_model = compiled
    if env.distributed:
        # gradient_as_bucket_view: grads live in the all-reduce buckets (no copy, less memory); the step
        # zeroes them in place (set_to_none=False) so the views survive from step to step
        fwd_model = nn.parallel.DistributedDataParallel(
            compiled,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )
    sdpa = choose_sdpa_backend(
        cfg.sdpa_backend, device, amp_dtype or torch.float32, model_config.n_head, model_config.head_dim,
        cfg.seq_len, model_config.dropout,
    )  # fmt: skip
    flops_per_token, peak = model.flops_per_token(cfg.seq_len), peak_tflops_for(device, cfg.peak_tflops)
    obs = _start_observer(
        inp, state, resumed_from, warn_msgs, compiled=use_compile, sdpa=sdpa, flops_per_token=flops_per_token,
        peak=peak,
    )  # fmt: skip
    result = TrainResult(cfg.out, state.step, state.step, bad_steps=state.bad_steps, sdpa_backend=sdpa)
    return _Run(
        state, fwd_model, compiled, inp.val, inp.tasks, autocast, inp.grad_accum, obs, result,
        flops_per_token, peak, inp.doing, sdpa,
    )  # fmt: skip


def _start_observer(
    inp: _Inputs, state: RunState, resumed_from: Path | None, warn_msgs: list[str], *, compiled: bool,
    sdpa: str, flops_per_token: int, peak: float | None,
) -> Observer:  # fmt: skip
    """Write ``config.json`` (rank 0), open the observer and log the setup warnings and the first line."""
    cfg, env, device, model = inp.cfg, inp.env, inp.env.device, state.model
    start_step, num_params = state.step, model.num_params(non_embedding=False)
    if env.is_main:
        write_run_info(
            cfg,
            {
                "model_config": inp.init.model_config.to_dict(),
                "num_params": num_params,
                "device": device_name(device),
                "world_size": env.world_size,
                "precision": inp.precision,
                "compile": compiled,
                "sdpa_backend": sdpa,
                "grad_accum_steps": inp.grad_accum,
                "micro_batch_auto": inp.auto.to_dict() if inp.auto is not None else None,
                "flops_per_token": flops_per_token,
                "peak_tflops": peak,
                "dataset_fingerprint": inp.dataset.dataset_fingerprint,
                "tokenizer_fingerprint": inp.dataset.tokenizer_fingerprint,
                "resumed_from": str(resumed_from) if resumed_from else None,
                "start_step": start_step,
                "init_from": inp.init.record,
            },
        )
    obs = Observer(
        cfg.out, enabled=env.is_main, total_steps=cfg.max_steps, start_step=start_step,
        progress=cfg.progress, tensorboard=cfg.tensorboard, log_every=cfg.log_every,
    )  # fmt: skip
    for msg in warn_msgs:
        obs.warn(msg)
    if inp.auto is not None:
        obs.info(f"--micro-batch auto: {inp.auto.reason}")
    rec = inp.init.record
    fresh = f"fresh run from the weights of {rec['source']}" if rec else "fresh run"
    obs.info(
        f"{'resuming at step ' + str(start_step) + ' from ' + str(resumed_from) if resumed_from else fresh}"
        f" | {num_params / 1e6:.1f}M params | {device_name(device)} x "
        f"{env.world_size} | {inp.precision}{' + compile' if compiled else ''} | attention kernel {sdpa} | "
        f"micro batch {cfg.micro_batch} x grad accum {inp.grad_accum}"
        f"{' + activation checkpointing' if cfg.activation_checkpointing else ''} | "
        f"{cfg.total_batch_tokens:,} tokens/step | data {inp.dataset.num_tokens('train'):,} train tokens"
    )
    return obs


def _evaluate_at(run: _Run, step: int, *, val: ValWindows | None, tasks: TaskEvaluator | None) -> None:
    """Val loss on ``val`` and ``--eval-tasks`` (on the raw model) after ``step``, recorded and logged."""
    env = run.state.env
    run.doing.what = f"evaluation after step {step}"
    if val is not None:
        v = evaluate_loss(run.eval_model, val, run.autocast, env)
        run.result.val_losses[step] = v
        run.obs.eval(step, v)
    if tasks is not None:
        figures = evaluate_tasks(tasks, run.state.model, run.autocast, env)
        run.result.task_metrics[step] = figures
        run.obs.eval_tasks(step, figures)


@dataclass
class _LoopState:
    """What the loop carries from step to step (the step and bad-step counters are RunState's)."""

    readback: Readback  # the newest step's figures on their way to the host
    consecutive_bad: int = 0
    stop: bool = False  # some rank was signalled: checkpoint after this step and return
    timings: list[float] = field(default_factory=list)  # seconds per step, as this process sees them
    t_prev: float = field(default_factory=time.perf_counter)  # when the previous step's figures arrived


@dataclass(frozen=True)
class _Due:
    """What runs after a step. Rank-independent, so every rank reads its flags at the same steps."""

    eval: bool
    tasks: bool
    sample: bool
    ckpt: bool

    @classmethod
    def after(cls, run: _Run, step: int, stop: bool) -> _Due:
        cfg = run.state.cfg
        finished = step == cfg.max_steps
        tasks_every = cfg.eval_tasks_every or cfg.eval_every
        return cls(
            eval=run.val is not None and (step % cfg.eval_every == 0 or finished),
            tasks=run.tasks is not None and (bool(tasks_every and step % tasks_every == 0) or finished),
            sample=bool(cfg.sample_every) and step % cfg.sample_every == 0,
            ckpt=bool(cfg.ckpt_every and step % cfg.ckpt_every == 0) or finished or stop,
        )

    @property
    def any(self) -> bool:
        return self.eval or self.tasks or self.sample or self.ckpt


def _loop(run: _Run, stop: _StopFlag, prof: profile | None) -> None:
    """The steps: fetch, step, then log / evaluate / sample / checkpoint on cadence; stop when done,
    signalled (after a checkpoint) or on a non-finite streak (:class:`NonFiniteError`).

    Step s's figures are read back while step s+1 runs, before its update is launched
    (:func:`_report`, :mod:`trainer.step`). Steps that evaluate, sample or checkpoint read their own
    figures first, identically on every rank, so nothing unread is ever saved.
    """
    state, result, obs = run.state, run.result, run.obs
    cfg, env = state.cfg, state.env
    batches = state.sampler.batches(state.step * run.grad_accum)
    ctx = StepContext.build(
        run.fwd_model, state.model, state.optimizer, state.scaler, grad_accum=run.grad_accum,
        grad_clip=cfg.grad_clip, autocast=run.autocast, env=env, stop=stop,
    )  # fmt: skip
    loop = _LoopState(Readback(env.device))
    try:
        while state.step < cfg.max_steps:
            run.doing.what = f"training step {state.step + 1}"
            lr = lr_at(state.step, cfg)
            out = train_step(
                ctx, batches, lr=lr,
                seed=_step_seed(cfg.seed, env.rank, state.step) if cfg.dropout > 0 else None,
                inject_nan=cfg.debug_nan_at_step == state.step + 1,
                before_update=lambda: _report(run, loop),  # the previous step's figures, read meanwhile
            )  # fmt: skip
            state.step += 1
            step = state.step
            loop.readback.put(out, step, lr)
            due = _Due.after(run, step, loop.stop)
            if due.any:
                _report(run, loop)  # this step's own figures, before anything of it is saved
            if prof is not None:
                prof.step()
            _evaluate_at(run, step, val=run.val if due.eval else None, tasks=run.tasks if due.tasks else None)
            if due.sample and env.is_main:
                run.doing.what = f"text sampling after step {step}"
                obs.sample(step, sample_text(state.model, cfg, env.device, run.autocast))
            if due.ckpt or loop.stop:
                run.doing.what = f"saving the checkpoint of step {step}"
                result.checkpoint = state.save()
            if due.any or loop.stop:
                loop.t_prev = time.perf_counter()  # the next step's time leaves out eval, sampling and saving
            if loop.stop:
                result.stopped_by_signal = True
                obs.info(f"stopped by signal after step {step}; checkpoint {result.checkpoint}")
                break
    finally:
        with contextlib.suppress(Exception):
            batches.close()
    result.bad_steps = state.bad_steps
    _summarize(run, loop.timings)


def _report(run: _Run, loop: _LoopState) -> None:
    """Read back and log the pending step (if any); raise on a non-finite streak or non-finite weights;
    note in ``loop.stop`` whether some rank asked to stop."""
    s = loop.readback.take()
    if s is None:
        return
    state, cfg, env, result = run.state, run.state.cfg, run.state.env, run.result
    now = time.perf_counter()
    dt, loop.t_prev = now - loop.t_prev, now
    loop.timings.append(dt)
    tps = cfg.total_batch_tokens / dt
    if s.bad:
        state.bad_steps += 1
        loop.consecutive_bad += 1
    else:
        loop.consecutive_bad = 0
    peak_mem = torch.cuda.max_memory_allocated(env.device) / 2**30 if env.device.type == "cuda" else None
    result.losses[s.step] = s.loss
    result.final_step = s.step
    run.obs.step(
        s.step,
        cfg.max_steps,
        {
            "loss": s.loss,
            "lr": s.lr,
            "grad_norm": s.grad_norm,
            "tokens_per_s": tps,
            "mfu": mfu(run.flops_per_token, tps / env.world_size, run.peak),
            "step_time_ms": 1000 * dt,
            "gpu_peak_mem_gib": peak_mem,
            "bad_steps": state.bad_steps,
            "skipped": s.bad,
        },
    )
    _refuse_non_finite(run, loop, s)
    loop.stop = s.stop or loop.stop


def _refuse_non_finite(run: _Run, loop: _LoopState, s: StepFigures) -> None:
    """Raise :class:`NonFiniteError` for weights an update made non-finite, or a streak of bad steps."""
    cfg = run.state.cfg
    if s.weights_bad:  # finite loss and grads, yet the update overflowed: nothing of it may be saved
        raise NonFiniteError(
            f"step {s.step}: the update made weights non-finite (loss {s.loss}, grad norm {s.grad_norm}); "
            f"they are not saved, the newest checkpoint is {run.result.checkpoint or 'none'}. Resume from "
            "it with --resume --force and a lower --lr or a larger --eps."
        )
    if not s.bad:
        return
    bad = loop.consecutive_bad
    run.obs.warn(
        f"step {s.step}: non-finite {'loss' if not math.isfinite(s.loss) else 'gradient norm'} "
        f"(loss {s.loss}, grad norm {s.grad_norm}); update skipped "
        f"({bad} in a row, limit --max-bad-steps {cfg.max_bad_steps})"
    )
    if bad >= cfg.max_bad_steps:
        raise NonFiniteError(
            f"step {s.step}: {bad} consecutive steps with a non-finite loss or gradient "
            f"norm (--max-bad-steps {cfg.max_bad_steps}); the weights are those of step "
            f"{s.step - bad}. Resume from the last checkpoint with --resume --force --lr "
            "LOWER, or check the data (`python -m pipeline verify`)."
        )


def _summarize(run: _Run, timings: list[float]) -> None:
    cfg, env, result = run.state.cfg, run.state.env, run.result
    warm = min(3, len(timings) // 2)  # the first steps pay for compile and allocator warm-up
    steady = timings[warm:] or timings
    if steady:  # total tokens over total time (not a mean of per-step rates, which over-weighs fast steps)
        result.tokens_per_s = len(steady) * cfg.total_batch_tokens / sum(steady)
        result.mfu = mfu(run.flops_per_token, result.tokens_per_s / env.world_size, run.peak)
    if env.device.type == "cuda":
        result.peak_mem_gib = torch.cuda.max_memory_allocated(env.device) / 2**30
    last_loss = result.losses.get(result.final_step)
    vals = result.val_losses
    val_row = "-"
    if vals:
        first, last = vals[min(vals)], vals[max(vals)]
        val_row = (
            f"{first:.4f} (step {min(vals)}) -> {last:.4f} (step {max(vals)}, ppl {perplexity(last):,.1f})"
        )
    rows = [
        ("steps", f"{result.start_step} -> {result.final_step} of {cfg.max_steps}"),
        ("tokens this process", f"{(result.final_step - result.start_step) * cfg.total_batch_tokens:,}"),
        ("final train loss", f"{last_loss:.4f}" if last_loss is not None else "-"),
        ("val loss", val_row),
        ("tokens/s", f"{result.tokens_per_s:,.0f}" if result.tokens_per_s else "-"),
        ("MFU", f"{100 * result.mfu:.1f}%" if result.mfu is not None else "n/a (no peak; --peak-tflops)"),
        ("peak GPU memory", f"{result.peak_mem_gib:.2f} GiB" if result.peak_mem_gib is not None else "-"),
        ("non-finite steps skipped", str(result.bad_steps)),
        ("stopped by signal", "yes" if result.stopped_by_signal else "no"),
        ("checkpoint", str(result.checkpoint) if result.checkpoint else "-"),
    ]
    run.obs.summary(rows)
