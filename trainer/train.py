"""The training loop: runs one :class:`~trainer.config.TrainConfig` job in this process (a torchrun rank,
or a single process) and returns a :class:`TrainResult`.

* Everything that can fail cheaply (config, accumulation divisibility, ``T`` vs the context, the run folder
  policy, shard vocab and tokenizer, empty splits) fails on the CPU before the run folder is touched.
* Data is a function of the step: micro-step ``m`` of step ``s`` reads sampler step ``s * grad_accum + m``;
  so :class:`trainer.state.RunState` is all a checkpoint needs for a bit-identical resume.
* Nothing waits for the device before an optimizer step (see :func:`_loop`). SIGTERM/SIGINT finish the
  step, checkpoint and return (exit 0); a second SIGINT aborts.

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
from typing import Any

import numpy as np
import torch
from torch import nn

from model.checkpoint import list_checkpoints
from model.sdpa import choose_sdpa_backend, sdpa_context
from pipeline.sampler import TokenSampler, ValWindows
from pipeline.sampler_index import open_dataset
from pipeline.tokenizer import tokenizer_fingerprint
from trainer import autobatch, init_from
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, TrainConfig
from trainer.dist import DistEnv, all_reduce_, resolve_precision, setup, teardown
from trainer.evals import evaluate_loss, evaluate_tasks, sample_text, task_evaluator
from trainer.observe import Observer, device_name, make_profiler, mfu, peak_tflops_for, perplexity
from trainer.optim import lr_at, make_optimizers
from trainer.rundir import check_run_dir, prepare_run_dir, run_folder_lock, write_run_info
from trainer.state import RunState, build_train_model


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
        auto = _agree(auto, env)
        cfg = dataclasses.replace(
            cfg, micro_batch=auto.micro_batch, activation_checkpointing=auto.checkpointing
        )
    doing.what, doing.cfg = "setting up", cfg
    grad_accum = cfg.grad_accum_steps(env.world_size)
    tok_fp = tokenizer_fingerprint()
    sampler_kw = dict(
        expected_vocab_size=model_config.vocab_size,
        expected_tokenizer_fingerprint=tok_fp,
        rank=env.rank,
        world_size=env.world_size,
        device=device,
    )
    sampler = TokenSampler(
        dataset,
        split="train",
        batch_size=cfg.micro_batch,
        seq_len=cfg.seq_len,
        seed=cfg.seed,
        doc_aligned=cfg.doc_aligned,
        prefetch=cfg.prefetch,
        sampling=cfg.sampling,
        **sampler_kw,
    )
    val = None
    if cfg.eval_every > 0:
        val = ValWindows(
            dataset,
            seq_len=cfg.seq_len,
            num_windows=cfg.eval_windows,
            batch_size=cfg.micro_batch,
            **sampler_kw,
        )
    tasks = task_evaluator(cfg, env, model_config)
    try:
        return _run(
            cfg, env, precision, grad_accum, model_config, dataset, sampler, val, init, tasks, auto, doing
        )  # fmt: skip
    finally:
        sampler.close()


# FLOPs of a whole run above which `--device auto` landing on a CPU is refused: ~1e15 is hours on a
# many-core CPU (1e11-1e12 FLOP/s). GPT-2 124M's 10B tokens are ~7e18: months; tiny/demo are ~1e12.
CPU_AUTO_MAX_FLOPS = 1e15


def _refuse_long_cpu_run(cfg: TrainConfig, device: torch.device, model_config) -> None:
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
    """What the loop works with, wired once by :func:`_run`."""

    state: RunState
    fwd_model: nn.Module  # compiled, and DDP-wrapped when distributed: the training forward/backward
    eval_model: nn.Module  # compiled too (its own fixed-shape graph), never through DDP
    val: ValWindows | None
    tasks: Any  # model.tools.evaluate.TaskEvaluator, or None without --eval-tasks
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum: int
    obs: Observer
    result: TrainResult
    flops_per_token: int
    peak: float | None  # the device's peak TFLOP/s for MFU; None when unknown
    doing: _Doing


def _agree(auto: autobatch.AutoChoice, env: DistEnv) -> autobatch.AutoChoice:
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


def _run(
    cfg, env, precision, grad_accum, model_config, dataset, sampler, val, init, tasks=None, auto=None,
    doing: _Doing | None = None,
) -> TrainResult:  # fmt: skip
    device = env.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_compile = cfg.compile if cfg.compile is not None else device.type == "cuda"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    model = build_train_model(cfg, model_config, device, init.source)
    model.activation_checkpointing = bool(cfg.activation_checkpointing)  # before compile traces it
    init.source = None  # the source's own copy of the weights is no longer needed
    optimizer = make_optimizers(model, cfg, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state = RunState(cfg, env, dataset, sampler, model, optimizer, scaler, init_record=init.record)

    # ---- the run folder (rank 0 changes it; the others wait so they read a settled folder)
    if env.is_main:
        prepare_run_dir(cfg)
        ckpt.clean_temps(cfg.out)
    if env.distributed:
        torch.distributed.barrier()
    warn_msgs: list[str] = []
    resumed_from = state.resume(warn_msgs.append) if cfg.resume else None  # before compile and DDP wrap
    start_step = state.step

    compiled: nn.Module = torch.compile(model) if use_compile else model
    fwd_model = compiled
    if env.distributed:
        # gradient_as_bucket_view: grads live in the all-reduce buckets (no copy, less memory); the loop
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

    flops_per_token = model.flops_per_token(cfg.seq_len)
    peak = peak_tflops_for(device, cfg.peak_tflops)
    if env.is_main:
        write_run_info(
            cfg,
            {
                "model_config": model_config.to_dict(),
                "num_params": model.num_params(non_embedding=False),
                "device": device_name(device),
                "world_size": env.world_size,
                "precision": precision,
                "compile": use_compile,
                "sdpa_backend": sdpa,
                "grad_accum_steps": grad_accum,
                "micro_batch_auto": auto.to_dict() if auto is not None else None,
                "flops_per_token": flops_per_token,
                "peak_tflops": peak,
                "dataset_fingerprint": dataset.dataset_fingerprint,
                "tokenizer_fingerprint": dataset.tokenizer_fingerprint,
                "resumed_from": str(resumed_from) if resumed_from else None,
                "start_step": start_step,
                "init_from": init.record,
            },
        )
    obs = Observer(
        cfg.out,
        enabled=env.is_main,
        total_steps=cfg.max_steps,
        start_step=start_step,
        progress=cfg.progress,
        tensorboard=cfg.tensorboard,
        log_every=cfg.log_every,
    )
    for msg in warn_msgs:
        obs.warn(msg)
    if auto is not None:
        obs.info(f"--micro-batch auto: {auto.reason}")
    fresh = f"fresh run from the weights of {init.record['source']}" if init.record else "fresh run"
    obs.info(
        f"{'resuming at step ' + str(start_step) + ' from ' + str(resumed_from) if resumed_from else fresh}"
        f" | {model.num_params(non_embedding=False) / 1e6:.1f}M params | {device_name(device)} x "
        f"{env.world_size} | {precision}{' + compile' if use_compile else ''} | attention kernel {sdpa} | "
        f"micro batch {cfg.micro_batch} x grad accum {grad_accum}"
        f"{' + activation checkpointing' if cfg.activation_checkpointing else ''} | "
        f"{cfg.total_batch_tokens:,} tokens/step | data {dataset.num_tokens('train'):,} train tokens"
    )
    result = TrainResult(
        run_dir=cfg.out,
        start_step=start_step,
        final_step=start_step,
        bad_steps=state.bad_steps,
        sdpa_backend=sdpa,
    )
    run = _Run(
        state, fwd_model, compiled, val, tasks, autocast, grad_accum, obs, result, flops_per_token, peak,
        doing or _Doing("setting up", cfg),
    )  # fmt: skip
    try:
        with (
            sdpa_context(sdpa),
            _StopFlag(obs) as stop,
            make_profiler(cfg.profile, cfg.out, device, cfg.profile_wait, cfg.profile_active) as prof,
        ):
            first = start_step == 0
            _evaluate_at(run, 0, val=first and val is not None, tasks=first and tasks is not None)
            try:
                _loop(run, stop, prof)
            except RuntimeError:  # torch.distributed's errors (gloo, NCCL) are RuntimeErrors
                if env.distributed and stop.requested:
                    # a second Ctrl-C reaches every rank; the peer that aborted first closed this rank's
                    # collective under it: the same interruption, not another failure
                    raise KeyboardInterrupt from None
                raise
    finally:
        obs.close()
    return result


def _evaluate_at(run: _Run, step: int, val: bool, tasks: bool) -> None:
    """Val loss and ``--eval-tasks`` (on the raw model) after ``step``, recorded and logged."""
    env = run.state.env
    run.doing.what = f"evaluation after step {step}"
    if val:
        v = evaluate_loss(run.eval_model, run.val, run.autocast, env)
        run.result.val_losses[step] = v
        run.obs.eval(step, v)
    if tasks:
        evaluate_tasks(run.tasks, run.state.model, run.autocast, env, run.obs, run.result, step)


class _Readback:
    """One step's scalars, device -> host, without stalling the device.

    ``put`` queues a copy into pinned host memory (non-blocking on CUDA) and records an event; ``get``
    waits for that event only, not for the work queued after it, so reading step s's loss while step
    s+1's forward/backward runs costs the device nothing. On CPU the copy is synchronous.
    """

    def __init__(self, device: torch.device, n: int):
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(n, dtype=torch.float32, pin_memory=self.cuda)
        self.event = torch.cuda.Event() if self.cuda else None

    def put(self, t: torch.Tensor) -> None:
        self.host.copy_(t, non_blocking=self.cuda)
        if self.event is not None:
            self.event.record()

    def get(self) -> list[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def _loop(run: _Run, stop: _StopFlag, prof) -> None:
    """The steps. Nothing on the way to ``optimizer.step()`` waits for the device:

    * the signal flag goes to the device by a fill kernel into a preallocated scalar, summed over
      ranks in the same all-reduce as the loss;
    * a non-finite loss or gradient norm refuses the update *on the device*: the flag is the fused
      AdamW's ``found_inf`` and :class:`~trainer.optim.GuardedMuon`'s, so weights, moments and the step
      count stay as they were (under fp16 an overflowing gradient is refused the same way, and the
      GradScaler backs off its scale);
    * step s's loss, norm and flags are read back while step s+1's forward/backward runs, and before
      step s+1's update is launched, so a run that must stop (a bad streak, a signal) stops with the
      weights those flags describe. Steps that evaluate, sample or checkpoint read their own flags
      first (and identically on every rank), so nothing unread is ever saved.
    """
    state, result, obs = run.state, run.result, run.obs
    cfg, env, optimizer, scaler = state.cfg, state.env, state.optimizer, state.scaler
    device, grad_accum, autocast = env.device, run.grad_accum, run.autocast
    batches = state.sampler.batches(state.step * grad_accum)
    params = [p for p in state.model.parameters() if p.requires_grad]
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    stop_flag = torch.zeros((), device=device)  # 1 once this rank was signalled
    found_inf = torch.zeros((), device=device)  # 1 = every optimizer refuses this step's update
    optimizer.guard(found_inf)
    readback = _Readback(device, 5)  # [mean loss, grad norm, bad, stop, weights non-finite]
    consecutive_bad = 0
    timings: list[float] = []  # seconds per step, as this process sees the steps complete
    t_prev = time.perf_counter()
    nan = float("nan")
    step = state.step
    pending: tuple[int, float] | None = None  # (step, lr) whose scalars wait in `readback`

    def handle(done: int, lr: float) -> bool:
        """Read back and log step ``done``; raise on a bad streak; True when some rank asked to stop."""
        nonlocal consecutive_bad, t_prev
        loss_f, norm_f, bad, stop_v, weights_bad = readback.get()
        now = time.perf_counter()
        dt, t_prev = now - t_prev, now
        timings.append(dt)
        tps = cfg.total_batch_tokens / dt
        m = mfu(run.flops_per_token, tps / env.world_size, run.peak)
        ok = bad == 0
        if ok:
            consecutive_bad = 0
        else:
            state.bad_steps += 1
            consecutive_bad += 1
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        result.losses[done] = loss_f
        result.final_step = done
        obs.step(
            done,
            cfg.max_steps,
            {
                "loss": loss_f,
                "lr": lr,
                "grad_norm": norm_f,
                "tokens_per_s": tps,
                "mfu": m,
                "step_time_ms": 1000 * dt,
                "gpu_peak_mem_gib": peak_mem,
                "bad_steps": state.bad_steps,
                "skipped": not ok,
            },
        )
        if weights_bad:  # finite loss and grads, yet the update overflowed: nothing of it may be saved
            raise NonFiniteError(
                f"step {done}: the update made weights non-finite (loss {loss_f}, grad norm {norm_f}); "
                f"they are not saved, the newest checkpoint is {result.checkpoint or 'none'}. Resume from "
                "it with --resume --force and a lower --lr or a larger --eps."
            )
        if not ok:
            obs.warn(
                f"step {done}: non-finite {'loss' if not math.isfinite(loss_f) else 'gradient norm'} "
                f"(loss {loss_f}, grad norm {norm_f}); update skipped "
                f"({consecutive_bad} in a row, limit --max-bad-steps {cfg.max_bad_steps})"
            )
            if consecutive_bad >= cfg.max_bad_steps:
                raise NonFiniteError(
                    f"step {done}: {consecutive_bad} consecutive steps with a non-finite loss or gradient "
                    f"norm (--max-bad-steps {cfg.max_bad_steps}); the weights are those of step "
                    f"{done - consecutive_bad}. Resume from the last checkpoint with --resume --force --lr "
                    "LOWER, or check the data (`python -m pipeline verify`)."
                )
        return stop_v > 0

    stop_now = False
    try:
        while step < cfg.max_steps:
            run.doing.what = f"training step {step + 1}"
            lr = lr_at(step, cfg)
            optimizer.set_lr(lr)  # Muon's follows the same multiplier
            if cfg.dropout > 0:  # dropout masks as a function of (seed, rank, step): a resume repeats them
                torch.manual_seed(_step_seed(cfg.seed, env.rank, step))
            inject_nan = cfg.debug_nan_at_step == step + 1
            loss_acc = torch.zeros((), device=device)
            for micro in range(grad_accum):
                _, x, y = next(batches)
                last = micro == grad_accum - 1
                sync = run.fwd_model.no_sync() if env.distributed and not last else contextlib.nullcontext()
                with sync:
                    with autocast():
                        _, loss = run.fwd_model(x, y)
                    loss = loss / grad_accum
                    if inject_nan:
                        loss = loss * nan
                    scaler.scale(loss).backward()
                loss_acc += loss.detach()
            if pending is not None:  # the previous step's scalars, read while this step's work runs
                stop_now = handle(*pending) or stop_now
                pending = None
            if scaler.is_enabled():
                for opt in optimizer.all:
                    scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(params, clip)  # pre-clip norm, a device scalar
            if stop.requested:
                stop_flag.fill_(1.0)
            # one collective per step: the summed loss and whether any rank was signalled
            shared = torch.stack([loss_acc.float(), stop_flag])
            all_reduce_(shared, env)
            loss_mean = shared[0] / env.world_size
            bad = ~torch.isfinite(loss_mean)
            refuse = bad | ~torch.isfinite(norm)  # any non-finite gradient, in any optimizer's parameters
            if not scaler.is_enabled():
                bad = refuse  # under fp16 an overflow is the GradScaler's routine: refused, not counted
            found_inf.copy_(refuse)
            optimizer.step()
            if scaler.is_enabled():
                scaler.update()  # backs the scale off after an overflow (unscale_ recorded it)
            # one fused pass: a weight the update made non-finite makes its tensor's norm non-finite
            weights_bad = ~torch.isfinite(torch.stack(torch._foreach_norm(params)).sum())
            optimizer.zero_grad(set_to_none=not env.distributed)
            state.step += 1
            step = state.step
            readback.put(torch.stack([loss_mean, norm.float(), bad.float(), shared[1], weights_bad.float()]))
            pending = (step, lr)
            finished = step == cfg.max_steps
            # rank-independent conditions: every rank reads its flags at the same steps
            do_eval = run.val is not None and (step % cfg.eval_every == 0 or finished)
            do_sample = bool(cfg.sample_every) and step % cfg.sample_every == 0
            do_ckpt = bool(cfg.ckpt_every and step % cfg.ckpt_every == 0) or finished or stop_now
            tasks_every = cfg.eval_tasks_every or cfg.eval_every
            do_tasks = run.tasks is not None and ((tasks_every and step % tasks_every == 0) or finished)
            if do_eval or do_tasks or do_sample or do_ckpt:
                stop_now = handle(*pending) or stop_now
                pending = None
            if prof is not None:
                prof.step()
            _evaluate_at(run, step, do_eval, do_tasks)
            if do_sample and env.is_main:
                run.doing.what = f"text sampling after step {step}"
                obs.sample(step, sample_text(state.model, cfg, device, autocast))
            if do_ckpt or stop_now:
                run.doing.what = f"saving the checkpoint of step {step}"
                result.checkpoint = state.save()
            if do_eval or do_tasks or do_sample or do_ckpt or stop_now:
                t_prev = time.perf_counter()  # the next step's time leaves out eval, sampling and saving
            if stop_now:
                result.stopped_by_signal = True
                obs.info(f"stopped by signal after step {step}; checkpoint {result.checkpoint}")
                break
    finally:
        with contextlib.suppress(Exception):
            batches.close()
    result.bad_steps = state.bad_steps
    _summarize(cfg, env, result, timings, run.flops_per_token, run.peak, obs)


def _summarize(
    cfg, env, result: TrainResult, timings: list[float], flops_per_token, peak, obs: Observer
) -> None:
    warm = min(3, len(timings) // 2)  # the first steps pay for compile and allocator warm-up
    steady = timings[warm:] or timings
    if steady:  # total tokens over total time (not a mean of per-step rates, which over-weighs fast steps)
        result.tokens_per_s = len(steady) * cfg.total_batch_tokens / sum(steady)
        result.mfu = mfu(flops_per_token, result.tokens_per_s / env.world_size, peak)
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
    obs.summary(rows)
