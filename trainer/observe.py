"""What a run shows and records: rich display, plain log lines, TensorBoard, metrics.jsonl, MFU, profiler.

* Only rank 0 observes; other ranks get an :class:`Observer` whose methods do nothing.
* A rich progress bar on a terminal (or ``--progress``), else a flushed plain line every ``--log-every``
  steps. TensorBoard gets ``train/loss``, ``train/ppl``, ``val/loss``, ``val/ppl``, :data:`STEP_SCALARS`
  (and ``val/<task>_<metric>``); on resume it purges events after the resumed step, so the curve stays
  one line.
* ``metrics.jsonl``: one JSON object per step and per eval, appended and flushed. A resume first drops
  (atomically) the records of the steps it will redo, those logged after the checkpoint it resumes
  from, as TensorBoard's ``purge_step`` drops their events: every step appears once.
* MFU = ``flops_per_token(T) x tokens/s per device / peak`` (``--peak-tflops`` or :data:`PEAK_TFLOPS`);
  not reported on CPU or an unknown GPU. README.md ("Training") has the rest.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.fsutil import atomic_write_text

# Dense bf16/fp16 tensor-core TFLOP/s per GPU (no sparsity), from the vendors' data sheets. A key
# matches the device name as a whole word (``GB200`` is not a ``B200``, ``A100`` not an ``A10``), and
# the first match wins, so the specific variants (PCIe, NVL) come before their family.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),  # SXM
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H800", 989.0),
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 6000 Ada", 364.0),
    ("RTX A6000", 155.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),
    ("T4", 65.0),
)


def peak_tflops_for_name(name: str) -> float | None:
    """The :data:`PEAK_TFLOPS` entry whose key occurs in ``name`` as a whole word, or None."""
    for key, tflops in PEAK_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name):
            return tflops
    return None


# a step record's fields that go to TensorBoard under their own names
STEP_SCALARS = ("lr", "grad_norm", "tokens_per_s", "mfu", "step_time_ms", "gpu_peak_mem_gib", "bad_steps")


def peak_tflops_for(device: torch.device, override: float | None = None) -> float | None:
    """Peak TFLOP/s of one ``device`` for MFU: the override, the table entry, or None."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    return peak_tflops_for_name(torch.cuda.get_device_name(device))


def mfu(flops_per_token: int, tokens_per_s_per_device: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1] (None without a peak)."""
    if not peak_tflops:
        return None
    return flops_per_token * tokens_per_s_per_device / (peak_tflops * 1e12)


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 80.0))  # exp(80) ~ 5e34: avoids overflow on a diverged loss


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _fmt(x: float | None, spec: str, none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


class Observer:
    """Rank 0's display, TensorBoard writer and metrics file (a no-op on other ranks)."""

    def __init__(
        self,
        out: Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        progress: bool | None,
        tensorboard: bool,
        log_every: int,
    ):
        self.enabled = enabled
        self.log_every = log_every
        self.console = Console(file=sys.stdout)
        self.err = Console(file=sys.stderr)
        self.writer = None
        self.metrics = None
        self.progress = None
        self._task = None
        self._ema_ms: float | None = None
        self._task_layout = False
        self._nsteps = 0
        if not enabled:
            return
        # the first step this process logs: after the resumed one, or the step-0 eval of a (re)started run
        first = start_step + 1 if start_step else 0
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events from `first` on (written before a crash, redone now) are dropped
            self.writer = SummaryWriter(log_dir=str(out), purge_step=first)
        truncate_metrics(out / "metrics.jsonl", first)
        self.metrics = open(out / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        live = self.console.is_terminal if progress is None else progress
        if live:
            self.progress = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn(
                    "loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} tok/s  "
                    "MFU {task.fields[mfu]}"
                ),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=4,
            )
            self._task = self.progress.add_task(
                "train", total=total_steps, completed=start_step, loss="-", lr="-", tps="-", mfu="-"
            )
            self.progress.start()

    # ------------------------------------------------------------------ messages

    def info(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg, highlight=False, soft_wrap=True)

    def warn(self, msg: str) -> None:
        """Warnings go to stderr on every rank that sees them (rank 0 only for shared events)."""
        if self.enabled:
            self.err.print(f"[bold yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)

    # ------------------------------------------------------------------ records

    def _record(self, obj: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(obj) + "\n")
            self.metrics.flush()

    def step(self, step: int, total: int, rec: dict[str, Any]) -> None:
        """Log optimizer step ``step`` (1-based count of completed steps)."""
        if not self.enabled:
            return
        self._record({"step": step, **rec})
        dt = rec.get("step_time_ms")
        if dt is not None:  # EMA of the step time for the ETA; the first step (compile) is not weighed in
            self._ema_ms = dt if self._ema_ms is None or self._nsteps < 2 else 0.9 * self._ema_ms + 0.1 * dt
            self._nsteps += 1
        if self.writer is not None:
            w = self.writer
            loss = rec["loss"]
            if math.isfinite(loss):
                w.add_scalar("train/loss", loss, step)
                w.add_scalar("train/ppl", perplexity(loss), step)
            for key in STEP_SCALARS:
                v = rec.get(key)
                if v is not None and math.isfinite(v):
                    w.add_scalar(key, v, step)
        tps, m = rec.get("tokens_per_s"), rec.get("mfu")
        if self.progress is not None:
            assert self._task is not None  # added with the progress bar
            self.progress.update(
                self._task,
                completed=step,
                loss=_fmt(rec["loss"], ".4f"),
                lr=_fmt(rec["lr"], ".2e"),
                tps=_fmt(tps, ",.0f"),
                mfu=_fmt(None if m is None else 100 * m, ".1f", "n/a") + ("%" if m else ""),
            )
        elif step % self.log_every == 0 or step == total:
            mfu_s = f" | mfu {100 * m:.1f}%" if m is not None else ""
            eta_s = f" | eta {_hms((total - step) * self._ema_ms / 1000)}" if self._ema_ms else ""
            flag = " | SKIPPED (non-finite)" if rec.get("skipped") else ""
            self.console.print(
                f"step {step}/{total} | loss {_fmt(rec['loss'], '.4f')} | lr {rec['lr']:.3e} | "
                f"norm {_fmt(rec.get('grad_norm'), '.3f')} | {_fmt(tps, ',.0f')} tok/s{mfu_s} | "
                f"{_fmt(rec.get('step_time_ms'), '.0f')} ms{eta_s}{flag}",
                highlight=False,
                soft_wrap=True,
            )

    def eval(self, step: int, val_loss: float) -> None:
        if not self.enabled:
            return
        self._record({"step": step, "val_loss": val_loss})
        if self.writer is not None:
            self.writer.add_scalar("val/loss", val_loss, step)
            self.writer.add_scalar("val/ppl", perplexity(val_loss), step)
        self.info(f"step {step} | val loss {val_loss:.4f} | val ppl {perplexity(val_loss):,.2f}")

    def eval_tasks(self, step: int, results: dict[str, dict[str, Any]]) -> None:
        """``--eval-tasks`` figures: ``{task: {"n": N, metric: value, ...}}`` (from TaskResult.to_json)."""
        if not self.enabled:
            return
        self._record({"step": step, "eval_tasks": results})
        if self.writer is not None:
            if not self._task_layout:  # one chart per task metric beside val/loss (Custom Scalars tab)
                charts = {"val loss": ["Multiline", ["val/loss"]]}
                for task, figures in results.items():
                    for metric in figures:
                        if metric not in ("n", "seconds") and not metric.endswith("_stderr"):
                            charts[f"{task} {metric}"] = ["Multiline", [f"val/{task}_{metric}"]]
                self.writer.add_custom_scalars({"eval": charts})
                self._task_layout = True
            for task, figures in results.items():
                for metric, value in figures.items():
                    if (
                        metric not in ("n", "seconds")
                        and not metric.endswith("_stderr")
                        and value is not None
                    ):
                        self.writer.add_scalar(
                            f"val/{task}_{metric}", value, step
                        )  # the val/ group: next to val/loss
        for task, figures in results.items():
            shown = " ".join(
                f"{k} {v:.4f}"
                for k, v in figures.items()
                if k not in ("n", "seconds") and not k.endswith("_stderr") and v is not None
            )
            self.info(f"step {step} | {task} {shown} (n={figures['n']}, {figures.get('seconds', 0):.1f}s)")

    def sample(self, step: int, text: str) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            # TensorBoard renders text as markdown: a code block keeps whitespace and markup literal
            self.writer.add_text("sample", "```\n" + text.replace("```", "'''") + "\n```", step)
        self.info(f"step {step} | sample: {text[:200]!r}")

    def summary(self, rows: list[tuple[str, str]], title: str = "training summary") -> None:
        if not self.enabled:
            return
        table = Table(title=title, show_header=False)
        table.add_column("what", style="bold")
        # long values (checkpoint paths) fold onto more lines, never cut with an ellipsis
        table.add_column("value", justify="right", overflow="fold", no_wrap=False)
        for k, v in rows:
            table.add_row(k, v)
        self.console.print(table)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None


def make_profiler(enabled: bool, out: Path, device: torch.device, wait: int, active: int):
    """A ``torch.profiler.profile`` writing a TensorBoard trace to ``out/profile`` (or a null context).

    Schedule: ``wait`` steps skipped (compile, allocator warm-up), one warm-up step, ``active``
    recorded steps, once. The loop calls ``.step()`` after every optimizer step.
    """
    if not enabled:
        return contextlib.nullcontext(None)
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(
        activities=activities,
        schedule=schedule(wait=wait, warmup=1, active=active, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(out / "profile")),
        record_shapes=True,
        profile_memory=True,
        with_stack=False,
    )


def truncate_metrics(path: Path, first: int) -> int:
    """Drop the records of step ``first`` and later from ``path`` (atomically); returns how many went.

    A line that does not parse (the torn last line of a killed run) goes too.
    """
    if not path.exists():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
                keep = int(rec["step"]) < first
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped


def read_metrics(path: str | os.PathLike[str]) -> tuple[dict[int, dict], dict[int, float]]:
    """``(train records by step, val loss by step)`` from a metrics.jsonl (last line per step wins)."""
    train: dict[int, dict] = {}
    val: dict[int, float] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            if "val_loss" in rec:
                val[rec["step"]] = rec["val_loss"]
            elif "eval_tasks" in rec:
                continue  # --eval-tasks records: read them with read_task_metrics
            else:
                train[rec["step"]] = rec
    return train, val


def read_task_metrics(path: str | os.PathLike[str]) -> dict[int, dict[str, dict[str, Any]]]:
    """``{step: {task: figures}}`` of a metrics.jsonl's ``--eval-tasks`` records (last line per step wins)."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if "eval_tasks" in rec:
                    out[rec["step"]] = rec["eval_tasks"]
    return out
