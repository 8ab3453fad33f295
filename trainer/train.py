"""The training loop: AMP, torch.compile, fused AdamW, DDP, exact resume, non-finite steps, signals.

Contract
--------
* :func:`train` runs one job described by a :class:`~trainer.config.TrainConfig` in this process
  (one rank of a torchrun job, or a single process) and returns a :class:`TrainResult`.
* **Order of work.** Everything that can fail cheaply runs before the first forward pass, on the
  CPU: config validation, gradient-accumulation divisibility for this world size, ``T`` vs the
  model's context, the run folder policy, shard vocab and tokenizer vs the model (the sampler's
  :class:`~pipeline.sampler_index.SamplerError`), empty splits. Only then is the run folder
  modified (``--overwrite``), so bad data never costs an old run.
* **Data is a function of the step.** Micro-step ``m`` of optimizer step ``s`` reads sampler step
  ``s * grad_accum + m`` for this rank; lr is ``lr_at(s)``; with dropout the torch RNG is reseeded
  from ``(seed, rank, s)`` each step. So a resumed run sees exactly the data, lr and dropout masks
  of an uninterrupted one (bit-identical on CPU fp32), with nothing to replay.
* **Steps.** Loss is scaled by ``1/grad_accum``; DDP all-reduces gradients only on the last
  micro-step (``no_sync``), into bucket views that are zeroed in place, never freed; the global norm
  is clipped to ``--grad-clip`` and the pre-clip value logged. The loss never builds the (B, T, V)
  logits (:mod:`model.loss`); eval runs the same (compiled) model on fixed-shape batches.
* **Bad steps, without host syncs.** A non-finite loss or grad norm refuses the update *on the
  device* (the fused AdamW's ``found_inf``: weights, moments and step count untouched), and is
  counted and logged; after ``--max-bad-steps`` in a row :class:`NonFiniteError` names the step and
  the step whose weights remain. Step s's scalars are read back while step s+1's forward/backward
  runs and before its update is launched, so that statement is true when it is made; steps that
  evaluate, sample or checkpoint read their own first. An update that leaves a weight non-finite
  despite a finite loss and norm (an overflow; the config refuses the settings that cause one) stops
  the run at once and is never saved. Under fp16 an overflowing *gradient* is the GradScaler's
  business (it skips and lowers the scale); only a non-finite *loss* counts as bad there.
* **Stopping.** SIGTERM/SIGINT set a flag; it reaches the device through a preallocated scalar and
  the same all-reduce that averages the loss, so every rank learns of it at the same step; that step
  and the one in flight complete, a checkpoint is written, and :func:`train` returns normally
  (exit 0). A second SIGINT aborts at once. A rank that fails leaves the process group without
  waiting for the others (:func:`trainer.dist.teardown`), so the job ends instead of hanging.
* **Attention kernel.** ``--sdpa-backend`` (default ``auto``) is resolved once by
  :func:`model.sdpa.choose_sdpa_backend` and held for training and eval; the choice is logged and
  recorded in ``config.json``.
* ``--init-from`` (:mod:`trainer.init_from`) replaces the random init by existing weights, and
  the model shape by theirs; everything else about the run is fresh.
* Step numbers in logs, checkpoints and ``--debug-nan-at-step`` count *completed* optimizer steps
  (``step-00000010.pt`` holds the state after 10 updates).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.checkpoint import clean_state_dict
from model.gpt import GPT
from model.loss import IGNORE_INDEX
from model.sdpa import choose_sdpa_backend, sdpa_context
from pipeline.format import ShardDataset
from pipeline.sampler import TokenSampler, ValWindows
from pipeline.tokenizer import SOT_ID, decode, get_tokenizer, tokenizer_fingerprint
from trainer import checkpoint as ckpt
from trainer import init_from
from trainer.config import ConfigError, TrainConfig
from trainer.dist import DistEnv, all_reduce_, resolve_precision, setup, teardown
from trainer.observe import Observer, device_name, make_profiler, mfu, peak_tflops_for, perplexity
from trainer.optim import lr_at, make_optimizer, set_lr
from trainer.rundir import check_run_dir, prepare_run_dir, run_folder_lock, write_run_info


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


def build_model(cfg: TrainConfig, model_config, device: torch.device, source=None) -> GPT:
    """The freshly initialised model of a run: a pure function of ``--seed`` (same on every rank),
    or the weights of ``source`` (``--init-from``, :mod:`trainer.init_from`)."""
    torch.manual_seed(cfg.seed)
    if source is not None:
        return init_from.initial_model(model_config, source).to(device)
    return GPT(model_config).to(device)


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


def _evaluate(model: nn.Module, val: ValWindows, autocast, env: DistEnv) -> float:
    """Mean loss over the fixed val windows, reduced over ranks (each window weighted equally).

    Every batch has the training shape (micro_batch, T): a short last batch is padded with rows whose
    targets are all -1 (ignored), so a compiled ``model`` runs one eval graph and never recompiles.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=env.device)  # [sum of window losses, windows]
    with torch.no_grad():
        for x, y in val:
            n = x.size(0)
            if n < val.batch_size:
                pad = val.batch_size - n
                x = torch.cat([x, x.new_zeros(pad, x.size(1))])
                y = torch.cat([y, y.new_full((pad, y.size(1)), IGNORE_INDEX)])
            with autocast():
                _, loss = model(x, y)  # mean over the n real windows' tokens (all T of them count)
            total[0] += loss.double() * n
            total[1] += n
    all_reduce_(total, env)
    model.train(was_training)
    return float(total[0] / total[1])


def _task_evaluator(cfg: TrainConfig, env: DistEnv, model_config):
    """``--eval-tasks``: rows loaded (and checked) now, this rank's share of them; None without tasks."""
    names = cfg.eval_task_names()
    if not names:
        return None
    from model.evaluate import TaskEvaluator

    data = (
        cfg.eval_tasks_data
        if cfg.eval_tasks_data is not None
        else (cfg.data if names == ["shards"] else None)
    )
    return TaskEvaluator(
        names,
        data=data,
        limit=cfg.eval_tasks_limit,
        rank=env.rank,
        world_size=env.world_size,
        batch_size=cfg.micro_batch,
        vocab_size=model_config.vocab_size,
    )


def _evaluate_tasks(
    tasks, model: nn.Module, autocast, env: DistEnv, obs: Observer, result, step: int
) -> None:
    """Score the raw (uncompiled) model on ``--eval-tasks``; counts are summed over ranks."""
    out = tasks(model, autocast, all_reduce=lambda t: all_reduce_(t, env))
    figures = {task: r.to_json() for task, r in out.items()}
    result.task_metrics[step] = figures
    obs.eval_tasks(step, figures)


def _sample(model: GPT, cfg: TrainConfig, device: torch.device, autocast) -> str:
    """A text sample from the raw model with the KV cache; a private generator keeps the training RNG untouched."""
    enc = get_tokenizer()
    ids = [SOT_ID, *enc.encode_ordinary(cfg.sample_prompt)]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    with autocast(), sdpa_context("default"):  # cached attention with a mask: any kernel that takes one
        out = model.generate(idx, cfg.sample_tokens, temperature=1.0, top_k=50, generator=gen)
    model.train(was_training)
    return decode(out[0, 1:].tolist(), enc)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) the training job of ``cfg`` in this process; see the module docstring."""
    env = setup(cfg)
    try:
        with run_folder_lock(cfg.out, env.is_main):  # one writer per run folder (rank 0 holds it)
            result = _train(cfg, env)
    except BaseException:
        teardown(env, failed=True)  # never wait on ranks that may be blocked in a collective
        raise
    teardown(env)
    return result


def _train(cfg: TrainConfig, env: DistEnv) -> TrainResult:
    device = env.device
    # ---- cheap checks first, nothing written yet
    precision = resolve_precision(cfg, device)
    grad_accum = cfg.grad_accum_steps(env.world_size)
    if env.is_main:  # only rank 0 decides (and later changes) the run folder: no check-vs-mkdir race
        check_run_dir(cfg)
    init = init_from.plan(
        cfg
    )  # the shape: the preset's, the --init-from source's, or the resumed fine-tune's
    model_config = init.model_config
    dataset = ShardDataset(cfg.data)
    if cfg.eval_every > 0 and dataset.num_tokens("val") == 0:
        raise ConfigError(
            f"--data {cfg.data}: the val split is empty, so --eval-every {cfg.eval_every} has nothing to "
            "evaluate on; rebuild with --val-fraction > 0, or pass --eval-every 0 to train without evaluation"
        )
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
    tasks = _task_evaluator(cfg, env, model_config)
    try:
        return _run(cfg, env, precision, grad_accum, model_config, dataset, sampler, val, init, tasks)
    finally:
        sampler.close()


def _run(
    cfg, env, precision, grad_accum, model_config, dataset, sampler, val, init, tasks=None
) -> TrainResult:
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

    model = build_model(cfg, model_config, device, init.source)
    init.source = None  # the source's own copy of the weights is no longer needed
    optimizer = make_optimizer(model, cfg, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    # ---- the run folder (rank 0 changes it; the others wait so they read a settled folder)
    if env.is_main:
        prepare_run_dir(cfg)
        ckpt.clean_temps(cfg.out)
    if env.distributed:
        torch.distributed.barrier()
    warn_msgs: list[str] = []

    start_step, bad_total, resumed_from = 0, 0, None
    if cfg.resume:
        loaded = ckpt.load_latest(cfg.out, map_location="cpu", warn=warn_msgs.append)
        if loaded is None:
            warn_msgs.append(f"--resume: no checkpoint in {cfg.out}; starting a fresh run")
        else:
            payload, path = loaded
            ckpt.check_compatible(
                payload,
                path,
                model_config=model_config.to_dict(),
                dataset_fingerprint=dataset.dataset_fingerprint,
                vocab_size=dataset.vocab_size,
                force=cfg.force,
                warn=warn_msgs.append,
            )
            model.load_state_dict(clean_state_dict(payload["model"]))
            optimizer.load_state_dict(payload["optimizer"])
            if payload.get("scaler"):
                scaler.load_state_dict(payload["scaler"])
            ckpt.restore_rng(payload["rng"])
            start_step = int(payload["step"])
            bad_total = int(payload.get("counters", {}).get("bad_steps", 0))
            resumed_from = path
            _warn_config_drift(payload["train_config"], cfg, warn_msgs)
            if payload.get("world_size", env.world_size) != env.world_size:
                warn_msgs.append(
                    f"resuming a run checkpointed with world size {payload['world_size']} on {env.world_size} "
                    "ranks: the optimizer state carries over, but the data order differs from the original run's "
                    "(micro-step k of step s reads sampler step s x grad_accum + k per rank)"
                )
            del payload

    raw_model = model
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
    eval_model = compiled  # eval runs compiled too (its own graph, fixed shape), never through DDP
    sdpa = choose_sdpa_backend(
        cfg.sdpa_backend,
        device,
        amp_dtype or torch.float32,
        model_config.n_head,
        model_config.head_dim,
        cfg.seq_len,
        model_config.dropout,
    )

    flops_per_token = raw_model.flops_per_token(cfg.seq_len)
    peak = peak_tflops_for(device, cfg.peak_tflops)
    if env.is_main:
        write_run_info(
            cfg,
            {
                "model_config": model_config.to_dict(),
                "num_params": raw_model.num_params(non_embedding=False),
                "device": device_name(device),
                "world_size": env.world_size,
                "precision": precision,
                "compile": use_compile,
                "sdpa_backend": sdpa,
                "grad_accum_steps": grad_accum,
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
    fresh = f"fresh run from the weights of {init.record['source']}" if init.record else "fresh run"
    obs.info(
        f"{'resuming at step ' + str(start_step) + ' from ' + str(resumed_from) if resumed_from else fresh}"
        f" | {raw_model.num_params(non_embedding=False) / 1e6:.1f}M params | {device_name(device)} x "
        f"{env.world_size} | {precision}{' + compile' if use_compile else ''} | attention kernel {sdpa} | "
        f"grad accum {grad_accum} | "
        f"{cfg.total_batch_tokens:,} tokens/step | data {dataset.num_tokens('train'):,} train tokens"
    )

    result = TrainResult(
        run_dir=cfg.out, start_step=start_step, final_step=start_step, bad_steps=bad_total, sdpa_backend=sdpa
    )

    def save(step: int) -> None:
        if not env.is_main:
            return
        payload = {
            "format": ckpt.FORMAT,
            "model": raw_model.state_dict(),
            "model_config": model_config.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "step": step,
            "rng": ckpt.capture_rng(),
            "train_config": cfg.to_dict(),
            "dataset_fingerprint": dataset.dataset_fingerprint,
            "tokenizer_fingerprint": dataset.tokenizer_fingerprint,
            "vocab_size": dataset.vocab_size,
            "counters": {"bad_steps": result.bad_steps},
            "world_size": env.world_size,
            "init_from": init.record,
        }
        result.checkpoint = ckpt.save_checkpoint(cfg.out, step, payload, cfg.keep_last)

    try:
        with (
            sdpa_context(sdpa),
            _StopFlag(obs) as stop,
            make_profiler(cfg.profile, cfg.out, device, cfg.profile_wait, cfg.profile_active) as prof,
        ):
            if val is not None and start_step == 0:
                v = _evaluate(eval_model, val, autocast, env)
                result.val_losses[0] = v
                obs.eval(0, v)
            if tasks is not None and start_step == 0:
                _evaluate_tasks(tasks, raw_model, autocast, env, obs, result, 0)
            _loop(
                cfg,
                env,
                grad_accum,
                fwd_model,
                raw_model,
                eval_model,
                optimizer,
                scaler,
                sampler,
                val,
                autocast,
                stop,
                prof,
                obs,
                result,
                save,
                flops_per_token,
                peak,
                start_step,
                tasks,
            )
    finally:
        obs.close()
    return result


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


def _loop(
    cfg,
    env,
    grad_accum,
    fwd_model,
    raw_model,
    eval_model,
    optimizer,
    scaler,
    sampler,
    val,
    autocast,
    stop,
    prof,
    obs,
    result,
    save,
    flops_per_token,
    peak,
    start_step,
    tasks=None,
) -> None:
    """The steps. Nothing on the way to ``optimizer.step()`` waits for the device:

    * the signal flag goes to the device by a fill kernel into a preallocated scalar, summed over
      ranks in the same all-reduce as the loss;
    * a non-finite loss or gradient norm refuses the update *on the device*: the flag is the fused
      AdamW's ``found_inf``, so weights, moments and the step count stay as they were (under fp16 the
      GradScaler does the same for an overflowing gradient);
    * step s's loss, norm and flags are read back while step s+1's forward/backward runs, and before
      step s+1's update is launched, so a run that must stop (a bad streak, a signal) stops with the
      weights those flags describe. Steps that evaluate, sample or checkpoint read their own flags
      first (and identically on every rank), so nothing unread is ever saved.
    """
    device = env.device
    batches = sampler.batches(start_step * grad_accum)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    stop_flag = torch.zeros((), device=device)  # 1 once this rank was signalled
    found_inf = torch.zeros((), device=device)  # 1 = the fused AdamW refuses this step's update
    if not scaler.is_enabled():
        optimizer.found_inf = found_inf  # the GradScaler passes its own under fp16
    readback = _Readback(device, 5)  # [mean loss, grad norm, bad, stop, weights non-finite]
    consecutive_bad = 0
    timings: list[float] = []  # seconds per step, as this process sees the steps complete
    t_prev = time.perf_counter()
    nan = float("nan")
    step = start_step
    pending: tuple[int, float] | None = None  # (step, lr) whose scalars wait in `readback`

    def handle(done: int, lr: float) -> bool:
        """Read back and log step ``done``; raise on a bad streak; True when some rank asked to stop."""
        nonlocal consecutive_bad, t_prev
        loss_f, norm_f, bad, stop_v, weights_bad = readback.get()
        now = time.perf_counter()
        dt, t_prev = now - t_prev, now
        timings.append(dt)
        tps = cfg.total_batch_tokens / dt
        m = mfu(flops_per_token, tps / env.world_size, peak)
        ok = bad == 0
        if ok:
            consecutive_bad = 0
        else:
            result.bad_steps += 1
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
                "bad_steps": result.bad_steps,
                "skipped": not ok,
            },
        )
        if weights_bad:  # finite loss and grads, yet the update overflowed: nothing of it may be saved
            raise NonFiniteError(
                f"step {done}: the update made weights non-finite (loss {loss_f}, grad norm {norm_f}); "
                f"they are not saved, the newest checkpoint is {result.checkpoint or 'none'}. Resume from "
                "it with a lower --lr or a larger --eps."
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
                    f"{done - consecutive_bad}. Resume from the last checkpoint with a lower --lr, or "
                    "check the data (`python -m pipeline verify`)."
                )
        return stop_v > 0

    stop_now = False
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, cfg)
            set_lr(optimizer, lr)
            if cfg.dropout > 0:
                torch.manual_seed(_step_seed(cfg.seed, env.rank, step))
            inject_nan = cfg.debug_nan_at_step == step + 1
            loss_acc = torch.zeros((), device=device)
            for micro in range(grad_accum):
                _, x, y = next(batches)
                last = micro == grad_accum - 1
                sync = fwd_model.no_sync() if env.distributed and not last else contextlib.nullcontext()
                with sync:
                    with autocast():
                        _, loss = fwd_model(x, y)
                    loss = loss / grad_accum
                    if inject_nan:
                        loss = loss * nan
                    scaler.scale(loss).backward()
                loss_acc += loss.detach()
            if pending is not None:  # the previous step's scalars, read while this step's work runs
                stop_now = handle(*pending) or stop_now
                pending = None
            if scaler.is_enabled():
                scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip)  # pre-clip norm, a device scalar
            if stop.requested:
                stop_flag.fill_(1.0)
            # one collective per step: the summed loss and whether any rank was signalled
            shared = torch.stack([loss_acc.float(), stop_flag])
            all_reduce_(shared, env)
            loss_mean = shared[0] / env.world_size
            bad = ~torch.isfinite(loss_mean)
            if scaler.is_enabled():
                scaler.step(optimizer)  # refuses an overflowing gradient's update on the device
                scaler.update()
            else:
                bad = bad | ~torch.isfinite(norm)
                found_inf.copy_(bad)
                optimizer.step()
            # one fused pass: a weight the update made non-finite makes its tensor's norm non-finite
            weights_bad = ~torch.isfinite(torch.stack(torch._foreach_norm(params)).sum())
            optimizer.zero_grad(set_to_none=not env.distributed)
            step += 1
            readback.put(torch.stack([loss_mean, norm.float(), bad.float(), shared[1], weights_bad.float()]))
            pending = (step, lr)
            finished = step == cfg.max_steps
            # rank-independent conditions: every rank reads its flags at the same steps
            do_eval = val is not None and (step % cfg.eval_every == 0 or finished)
            do_sample = bool(cfg.sample_every) and step % cfg.sample_every == 0
            do_ckpt = bool(cfg.ckpt_every and step % cfg.ckpt_every == 0) or finished or stop_now
            tasks_every = cfg.eval_tasks_every or cfg.eval_every
            do_tasks = tasks is not None and ((tasks_every and step % tasks_every == 0) or finished)
            if do_eval or do_tasks or do_sample or do_ckpt:
                stop_now = handle(*pending) or stop_now
                pending = None
            if prof is not None:
                prof.step()
            if do_eval:
                v = _evaluate(eval_model, val, autocast, env)
                result.val_losses[step] = v
                obs.eval(step, v)
            if do_tasks:
                _evaluate_tasks(tasks, raw_model, autocast, env, obs, result, step)
            if do_sample and env.is_main:
                obs.sample(step, _sample(raw_model, cfg, device, autocast))
            if do_ckpt or stop_now:
                save(step)
            if do_eval or do_tasks or do_sample or do_ckpt or stop_now:
                t_prev = time.perf_counter()  # the next step's time leaves out eval, sampling and saving
            if stop_now:
                result.stopped_by_signal = True
                obs.info(f"stopped by signal after step {step}; checkpoint {result.checkpoint}")
                break
    finally:
        with contextlib.suppress(Exception):
            batches.close()
    _summarize(cfg, env, result, timings, flops_per_token, peak, obs)


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


def _warn_config_drift(old: dict[str, Any], cfg: TrainConfig, warn: list[str]) -> None:
    """Warn when a resume changes a setting that decides the data stream (the resume is then not exact)."""
    keys = (
        "seed",
        "seq_len",
        "total_batch_tokens",
        "micro_batch",
        "doc_aligned",
        "lr",
        "warmup_steps",
        "max_steps",
        "min_lr_ratio",
    )
    now = cfg.to_dict()
    changed = [f"{k} {old.get(k)} -> {now[k]}" for k in keys if k in old and old[k] != now[k]]
    if changed:
        warn.append(
            "resuming with changed settings (the continuation differs from the original run's): "
            + ", ".join(changed)
        )
