"""``TrainConfig``: every trainer knob in one typed, validated dataclass, and its TOML and CLI.

* One field per CLI flag (``micro_batch`` <-> ``--micro-batch``) with its help text in the field's
  metadata; ``python -m trainer --help`` is generated from the fields (:mod:`pipeline.cliconfig`).
* Precedence (:func:`resolve_config`): defaults < ``--preset`` (:mod:`trainer.presets`) < ``--config
  FILE.toml`` < explicit flags; argparse defaults are suppressed so "given on the command line" is exact.
  With ``--resume`` the run's recorded settings come first (:func:`resolve_resume_config`).
* Every error names the flag (:class:`ConfigError`, exit 2). Checks that need the world size or the model
  are :meth:`TrainConfig.grad_accum_steps` and :meth:`TrainConfig.model_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cliconfig import add_dataclass_arguments, base_type, cli_field
from pipeline.errors import ConfigError, UsageError, flag
from trainer.presets import PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")  # model.sdpa.CHOICES
# the recipe's choices, and Muon's defaults from bench/time_to_loss.py's grid (BENCHMARKS.md)
RECIPE_CHOICES = {
    "optimizer": ("adamw", "muon"), "schedule": ("cosine", "wsd"), "sampling": ("random", "permutation"),
}  # fmt: skip
# (momentum is torch's default, not tuned by the grid)
MUON_LR, MUON_MOMENTUM, MUON_SPLIT_QKV = 6e-3, 0.95, True


# float fields -> (lowest, highest or None, whether the lowest itself is allowed); see check_float
FLOAT_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "lr": (0.0, None, False), "min_lr_ratio": (0.0, 1.0, True), "weight_decay": (0.0, None, True),
    "beta1": (0.0, 1.0, True), "beta2": (0.0, 1.0, True), "eps": (0.0, None, False),
    "grad_clip": (0.0, None, True), "dropout": (0.0, 1.0, True), "peak_tflops": (0.0, None, False),
}  # fmt: skip


# integer fields -> their lowest allowed value, checked in this order
INT_MINIMA: dict[str, int] = {
    **dict.fromkeys(("micro_batch", "seq_len", "total_batch_tokens", "max_steps", "keep_last",
                     "max_bad_steps", "eval_windows", "log_every", "profile_active"), 1),
    **dict.fromkeys(("warmup_steps", "eval_every", "sample_every", "ckpt_every", "prefetch", "profile_wait",
                     "sample_tokens"), 0),
    **dict.fromkeys(("n_layer", "n_head", "n_embd", "block_size"), 1),
}  # fmt: skip


_h = cli_field  # short: every field below has one


@dataclass
class TrainConfig:
    """All settings of one training run. Defaults are the ``gpt2`` preset's, except the recipe fields
    (optimizer, schedule, sampling): their defaults are the classic AdamW recipe, which presets choose."""

    # --- run folder and data
    data: Path = field(
        default=Path("shards"),
        metadata=_h("shard folder written by `python -m pipeline build` (needs train and val splits)"),
    )
    out: Path = field(
        default=Path("runs/gpt2"),
        metadata=_h("run folder: config.json, checkpoints/, TensorBoard events, metrics.jsonl"),
    )
    preset: str = field(
        default="gpt2",
        metadata=_h(
            "training preset: gpt2 (Muon), gpt2-classic (AdamW, the GPT-2/nanoGPT recipe), gpt2-medium, "
            "gpt2-large, gpt2-xl, tiny, demo, finetune"
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_h(
            "continue from the newest loadable checkpoint in --out with the settings recorded in its "
            "config.json (starts fresh when there is none); flags given with it may change only the length, "
            "eval/log/checkpoint cadence, device and speed, not the run's model, data, batch or optimizer"
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_h("start a fresh run in a non-empty --out, deleting its checkpoints, events and logs"),
    )
    force: bool = field(
        default=False,
        metadata=_h(
            "resume even when the checkpoint's dataset fingerprint or vocab differ, or with a changed "
            "setting such as --lr (never the model shape)"
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=_h(
            "fine-tune: start from these weights instead of a random init: an owtgpt run folder or .pt "
            "checkpoint, a local Hugging Face GPT-2 folder, or a hub id (gpt2, gpt2-medium, ...; "
            "through transformers). The model shape comes from it; optimizer, step, schedule and "
            "data start fresh (default: none)"
        ),
    )
    # --- model (a model/ preset plus optional overrides)
    model: str = field(
        default="gpt2",
        metadata=_h(
            "model preset for GPTConfig.from_preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, tiny "
            "(not used with --init-from)"
        ),
    )
    n_layer: int | None = field(
        default=None, metadata=_h("override the model preset's number of transformer blocks")
    )
    n_head: int | None = field(default=None, metadata=_h("override the model preset's attention heads"))
    n_embd: int | None = field(default=None, metadata=_h("override the model preset's embedding width"))
    block_size: int | None = field(
        default=None, metadata=_h("override the model preset's context length (positions)")
    )
    dropout: float = field(default=0.0, metadata=_h("dropout probability (0 for pretraining)"))
    # --- batch and data order
    seq_len: int = field(default=1024, metadata=_h("tokens per training window T (<= the model's context)"))
    micro_batch: int | None = field(
        default=None,
        metadata=_h(
            "windows per forward pass on each rank, or auto (the default): on CUDA the largest that a "
            "real compiled training step fits in the card's memory, on CPU the preset's value; "
            "a resume reuses the recorded value. The total batch is unchanged (gradient accumulation)"
        ),
    )
    total_batch_tokens: int = field(
        default=524_288,
        metadata=_h(
            "tokens per optimizer step over all ranks; "
            "gradient accumulation = total / (micro_batch x T x world size)"
        ),
    )
    max_steps: int = field(
        default=19_073, metadata=_h("optimizer steps of the whole run (19,073 x 2^19 tokens = 10B tokens)")
    )
    doc_aligned: bool = field(
        default=False, metadata=_h("start every window at a document start instead of a random offset")
    )
    prefetch: int = field(
        default=2, metadata=_h("batches the sampler prepares ahead in a background thread (0 = synchronous)")
    )
    seed: int = field(
        default=1337,
        metadata=_h(
            "seed of the model init, the data order and dropout "
            "(the data is a pure function of it and the step)"
        ),
    )
    # --- optimizer and schedule
    lr: float = field(default=6e-4, metadata=_h("peak learning rate, reached after warmup"))
    min_lr_ratio: float = field(default=0.1, metadata=_h("cosine decay floor as a fraction of --lr"))
    warmup_steps: int = field(default=700, metadata=_h("linear warmup steps"))
    weight_decay: float = field(
        default=0.1, metadata=_h("AdamW weight decay, applied to 2-D weights only (not biases or LayerNorm)")
    )
    beta1: float = field(default=0.9, metadata=_h("AdamW beta1"))
    beta2: float = field(default=0.95, metadata=_h("AdamW beta2"))
    eps: float = field(default=1e-8, metadata=_h("AdamW epsilon"))
    grad_clip: float = field(
        default=1.0,
        metadata=_h("clip the global gradient norm to this (0 disables); the pre-clip norm is logged"),
    )
    # --- the recipe (issue 19): optimizer, schedule, data order; README.md "Training recipes"
    optimizer: str = field(
        default="adamw",
        metadata=_h(
            "adamw (every parameter) or muon (torch.optim.Muon on the blocks' 2-D weights at --muon-lr, "
            "AdamW at --lr for the embeddings, LayerNorms and biases)"
        ),
    )
    muon_lr: float = field(
        default=MUON_LR,
        metadata=_h("Muon's peak lr (RMS matched to AdamW's, so on --lr's scale); --optimizer muon only"),
    )
    muon_momentum: float = field(default=MUON_MOMENTUM, metadata=_h("Muon's Nesterov momentum"))
    muon_split_qkv: bool = field(
        default=MUON_SPLIT_QKV,
        metadata=_h("orthogonalise c_attn's Q, K and V blocks separately instead of the whole matrix"),
    )
    schedule: str = field(
        default="cosine",
        metadata=_h(
            "cosine (warmup, cosine to --min-lr-ratio x lr) or wsd (warmup, constant, linear to the same "
            "floor over the last --cooldown-frac of --max-steps: a run can be extended from a checkpoint "
            "before the cooldown)"
        ),
    )
    cooldown_frac: float = field(default=0.2, metadata=_h("fraction of --max-steps WSD spends decaying"))
    sampling: str = field(
        default="random",
        metadata=_h(
            "random (independent random windows) or permutation (every window start of the epoch once, "
            "in a seeded order)"
        ),
    )
    # --- device and speed
    device: str = field(default="auto", metadata=_h("auto (CUDA when available), cpu or cuda"))
    precision: str = field(
        default="auto",
        metadata=_h(
            "auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp16 (with GradScaler; CUDA only) or fp32"
        ),
    )
    compile: bool | None = field(
        default=None, metadata=_h("torch.compile the model (default: on for CUDA, off for CPU)")
    )
    sdpa_backend: str = field(
        default="auto",
        metadata=_h(
            "attention kernel: auto (CUDA: cuDNN on Hopper+, else flash, the first "
            "that runs; CPU: torch's choice), cudnn, flash, efficient or math"
        ),
    )
    # --- evaluation and logging
    eval_every: int = field(
        default=250,
        metadata=_h("evaluate on the fixed val windows every N steps and at the end (0 disables)"),
    )
    eval_windows: int = field(default=512, metadata=_h("number of fixed val windows of --seq-len tokens"))
    log_every: int = field(
        default=10, metadata=_h("print a log line every N steps when the rich display is off")
    )
    sample_every: int = field(
        default=1000, metadata=_h("log a generated text sample to TensorBoard every N steps (0 disables)")
    )
    sample_prompt: str = field(
        default="", metadata=_h("prompt of the text samples (empty: start from <|startoftext|>)")
    )
    sample_tokens: int = field(default=64, metadata=_h("tokens generated per text sample"))
    eval_tasks: str = field(
        default="",
        metadata=_h(
            "zero-shot tasks scored during training, comma-separated: hellaswag, lambada, wikitext2, "
            "wikitext103, shards (as `python -m model eval`; empty: none)"
        ),
    )
    eval_tasks_every: int = field(
        default=0,
        metadata=_h(
            "score --eval-tasks every N steps and at the end (0: with every --eval-every evaluation)"
        ),
    )
    eval_tasks_limit: int | None = field(
        default=None, metadata=_h("score only the first N rows of each --eval-tasks task (default: all)")
    )
    eval_tasks_data: Path | None = field(
        default=None,
        metadata=_h(
            "local .jsonl/.parquet in the hub schema of the single --eval-tasks task "
            "(default: the hub dataset; for shards: --data)"
        ),
    )
    peak_tflops: float | None = field(
        default=None, metadata=_h("peak TFLOP/s per device for MFU (default: looked up from the GPU name)")
    )
    progress: bool | None = field(
        default=None, metadata=_h("rich live display (default: on when stdout is a terminal)")
    )
    tensorboard: bool = field(
        default=True, metadata=_h("write TensorBoard scalars, text samples and profiles into --out")
    )
    # --- checkpoints and faults
    ckpt_every: int = field(
        default=1000, metadata=_h("write a checkpoint every N steps (also at the end and on SIGTERM/SIGINT)")
    )
    keep_last: int = field(default=3, metadata=_h("keep the newest K checkpoints, delete older ones"))
    max_bad_steps: int = field(
        default=5,
        metadata=_h(
            "stop with an error after this many consecutive steps with a non-finite loss or grad norm"
        ),
    )
    # --- profiling
    profile: bool = field(
        default=False,
        metadata=_h("run torch.profiler over a few steps and write a TensorBoard trace to --out/profile"),
    )
    profile_wait: int = field(default=5, metadata=_h("steps to skip before profiling (compile and warm-up)"))
    profile_active: int = field(
        default=3, metadata=_h("steps recorded by the profiler (after one warm-up step)")
    )
    # --- memory: small GPUs (README, "Training on a small GPU")
    activation_checkpointing: bool | None = field(
        default=None,
        metadata=_h(
            "recompute each block's activations in backward instead of keeping them (less memory, "
            "about a third more compute; same losses); default: off, unless --micro-batch auto finds "
            "that even micro batch 1 does not fit without it"
        ),
    )
    dry_run: bool = field(
        default=False,
        metadata=_h(
            "print the memory plan (parameters, gradients, optimizer state, activations per micro "
            "batch with and without checkpointing, total vs the device's memory) and exit, writing nothing"
        ),
    )
    # --- testing aid (hidden from --help: a fault injection, not a setting)
    debug_nan_at_step: int | None = field(
        default=None,
        metadata=_h("testing aid: make the loss of this step NaN, to exercise the non-finite-step path"),
    )

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.out = Path(self.out)
        for name, least in INT_MINIMA.items():
            v = getattr(self, name)
            if v is not None and v < least:  # None: a model-shape override that was not given
                raise ConfigError(f"{flag(name)} {v} must be >= {least}")
        for name, (lo, hi, lo_ok) in FLOAT_RANGES.items():
            check_float(name, getattr(self, name), lo, hi, lo_ok)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"--device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ConfigError(
                f"--sdpa-backend {self.sdpa_backend!r} is not one of {', '.join(SDPA_BACKENDS)}"
            )
        self._check_recipe()
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError(
                "--init-from is empty; pass a run folder, .pt checkpoint, Hugging Face folder or hub id"
            )
        if self.preset == "finetune" and self.init_from is None and not self.resume:
            raise ConfigError(
                "--preset finetune needs --init-from SOURCE, the weights to fine-tune "
                "(a run folder, .pt checkpoint, Hugging Face folder or hub id such as gpt2)"
            )
        self._check_eval_tasks()
        if self.block_size is not None and self.seq_len > self.block_size:
            raise ConfigError(
                f"--seq-len {self.seq_len} exceeds the model's context --block-size {self.block_size}; "
                "lower --seq-len or raise --block-size"
            )
        self.grad_accum_steps(1)  # divisibility by micro_batch x T, before the world size is known

    def preset_micro_batch(self) -> int:
        """The ``--preset``'s micro batch: what ``--micro-batch auto`` takes where it cannot probe (CPU)."""
        return int(PRESETS.get(self.preset, {}).get("micro_batch", 32))

    def _check_recipe(self) -> None:
        for name, choices in RECIPE_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{flag(name)} {getattr(self, name)!r} is not one of {', '.join(choices)}")
        check_float("muon_lr", self.muon_lr, 0.0, None, False)
        check_float("muon_momentum", self.muon_momentum, 0.0, 1.0, True)
        check_float("cooldown_frac", self.cooldown_frac, 0.0, 1.0, False)
        if self.optimizer == "muon":
            require_muon()

    def eval_task_names(self) -> list[str]:
        """The tasks of ``--eval-tasks`` in order (empty when none)."""
        from model.tools.eval_tasks import parse_tasks

        return parse_tasks(self.eval_tasks) if self.eval_tasks.strip() else []

    def _check_eval_tasks(self) -> None:
        try:
            names = self.eval_task_names()
        except UsageError as e:
            raise ConfigError(str(e).replace("--task", "--eval-tasks")) from e
        if self.eval_tasks_every < 0:
            raise ConfigError(f"--eval-tasks-every {self.eval_tasks_every} must be >= 0")
        if self.eval_tasks_limit is not None and self.eval_tasks_limit < 1:
            raise ConfigError(f"--eval-tasks-limit {self.eval_tasks_limit} must be >= 1")
        if self.eval_tasks_data is not None:
            self.eval_tasks_data = Path(self.eval_tasks_data)
            if len(names) != 1:
                raise ConfigError(
                    f"--eval-tasks-data {self.eval_tasks_data} is the file of one task, but --eval-tasks "
                    f"names {len(names)} ({self.eval_tasks!r}); give exactly one task with it"
                )
            if not self.eval_tasks_data.exists():
                raise ConfigError(
                    f"--eval-tasks-data {self.eval_tasks_data} does not exist; give a local "
                    ".jsonl/.parquet file (or a shard folder for shards)"
                )

    # ------------------------------------------------------------------ derived values

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step; raises naming the flags when the total does not divide.

        Under ``--micro-batch auto`` (None, not yet resolved) only micro batch 1 is checked: the
        resolved value always divides the per-rank batch (:mod:`trainer.autobatch`)."""
        per_step = (self.micro_batch or 1) * self.seq_len * world_size
        if self.total_batch_tokens % per_step and self.micro_batch is None:
            raise ConfigError(
                f"--total-batch-tokens {self.total_batch_tokens} is not divisible by --seq-len "
                f"{self.seq_len} × world size {world_size} = {per_step}, so no --micro-batch (auto) can "
                f"keep it; pick a total that is a multiple of {per_step} or change --seq-len"
            )
        if self.total_batch_tokens % per_step:
            raise ConfigError(
                f"--total-batch-tokens {self.total_batch_tokens} is not divisible by --micro-batch "
                f"{self.micro_batch} × --seq-len {self.seq_len} × world size {world_size} = {per_step}; "
                f"pick a total that is a multiple of {per_step} or change --micro-batch/--seq-len"
            )
        return self.total_batch_tokens // per_step

    def model_config(self, vocab_size: int | None = None):  # -> model.config.GPTConfig
        """The ``GPTConfig`` of this run: the ``--model`` preset plus the overrides."""
        from model.config import PRESETS as MODEL_PRESETS
        from model.config import GPTConfig

        if self.model not in MODEL_PRESETS:
            raise ConfigError(
                f"--model {self.model!r} is not a model preset; choose one of {', '.join(MODEL_PRESETS)}"
            )
        over = {
            k: getattr(self, k)
            for k in ("n_layer", "n_head", "n_embd", "block_size")
            if getattr(self, k) is not None
        }
        over["dropout"] = self.dropout
        if vocab_size is not None:
            over["vocab_size"] = vocab_size
        try:
            cfg = GPTConfig.from_preset(self.model, **over)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model settings (--model {self.model} with {over}) are invalid: {e}") from e
        if self.seq_len > cfg.block_size:
            raise ConfigError(
                f"--seq-len {self.seq_len} exceeds the model's context of {cfg.block_size} tokens "
                f"(--model {self.model}); lower --seq-len or raise --block-size"
            )
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-able values (paths as strings); what checkpoints and config.json store."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


def check_float(name: str, value: float | None, lo: float, hi: float | None, lo_ok: bool) -> None:
    """Raise naming the flag unless ``value`` is finite and in ``[lo, hi)`` / ``(lo, hi)`` (None: unset).

    ``hi`` is exclusive except for the fractions ``--min-lr-ratio`` (1 = no decay) and ``--cooldown-frac``
    (1 = decay all the way) whose upper end is meaningful. NaN fails every comparison, so it is caught by
    ``isfinite`` before any range test.
    """
    if value is None:
        return
    if not math.isfinite(value):
        raise ConfigError(f"{flag(name)} {value} must be a finite number")
    hi_ok = name in ("min_lr_ratio", "cooldown_frac")
    if (value < lo or (value == lo and not lo_ok)) or (
        hi is not None and (value > hi or (value == hi and not hi_ok))
    ):
        left = "[" if lo_ok else "("
        right = ("]" if hi_ok else ")") if hi is not None else ")"
        raise ConfigError(
            f"{flag(name)} {value} must be in {left}{lo:g}, {'inf' if hi is None else f'{hi:g}'}{right}"
        )


# --------------------------------------------------------------------------- presets

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HIDDEN = ("debug_nan_at_step",)  # accepted but not in --help: fault injection for tests
_HINTS = typing.get_type_hints(TrainConfig)


def coerce(name: str, value: Any, where: str) -> Any:
    """Check/convert ``value`` for field ``name``; ``where`` names its origin in errors."""
    typ, optional = base_type(_HINTS[name])
    if name == "micro_batch" and value == "auto":
        return None  # None is auto: resolved on the device by trainer.autobatch
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {name} cannot be empty")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is Path and isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise ConfigError(f"{where}: {name} = {value!r} is not a {typ.__name__}")


def _unknown(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown setting {key!r}{hint} (see `python -m trainer --help`)")


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings from a TOML file: top-level ``key = value`` with field names (``-`` or ``_``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"--config {path}: file not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from e
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise _unknown(key, f"--config {path}")
        out[name] = coerce(name, value, f"--config {path}")
    return out


def _presets_epilog() -> str:
    lines = ["presets (each sets these fields; later sources override them):"]
    for name, values in PRESETS.items():
        lines.append(f"  {name:<12} " + " ".join(f"{flag(k)}={v}" for k, v in values.items()))
    lines.append("")
    lines.append(
        "exit status: 0 done (or stopped by SIGTERM/SIGINT after saving), 1 data, resume or training "
        "failure, 2 bad flag, 130 interrupted. Errors are one line; --debug (or OWTGPT_DEBUG=1) adds "
        "the traceback."
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m trainer`` parser, one flag per field; defaults suppressed (see module doc)."""
    p = argparse.ArgumentParser(
        prog="python -m trainer",
        description=(
            "Pretrain GPT-2 on owtgpt shards: AMP, torch.compile, fused AdamW, DDP through torchrun, "
            "exact resume, TensorBoard and the profiler. Settings resolve as preset < --config TOML < flags. "
            "Multi-GPU: `torchrun --standalone --nproc_per_node=8 -m trainer ...`."
        ),
        argument_default=argparse.SUPPRESS,
        epilog=_presets_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of settings (keys are the flag names)")
    p.add_argument(
        "--debug", action="store_true", help="print the full traceback of an error (or OWTGPT_DEBUG=1)"
    )
    add_dataclass_arguments(p, TrainConfig, given_only=True, hidden=HIDDEN, extra=FLAG_EXTRAS)
    return p


MUON_SINCE = "2.9"  # torch.optim.Muon first shipped in torch 2.9


def require_muon() -> None:
    """One line naming the installed torch and the one needed when ``torch.optim.Muon`` is missing."""
    import torch  # only when Muon is asked for: reading a config stays light

    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(
            f"--optimizer muon needs torch.optim.Muon (torch >= {MUON_SINCE}); this is torch "
            f"{torch.__version__}: upgrade torch, or pass --optimizer adamw"
        )


def _micro_batch_arg(text: str) -> int | str:
    """``--micro-batch``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an integer nor auto") from None


# add_argument keywords beyond what a field's type gives (the choices are checked in __post_init__ too)
FLAG_EXTRAS: dict[str, dict[str, Any]] = {
    "preset": {"choices": list(PRESETS)},
    "precision": {"choices": PRECISIONS},
    "device": {"choices": DEVICES},
    "sdpa_backend": {"choices": SDPA_BACKENDS},
    "micro_batch": {"type": _micro_batch_arg, "metavar": "N|auto"},
    **{name: {"choices": list(choices)} for name, choices in RECIPE_CHOICES.items()},
}


def resolve_config(
    cli: dict[str, Any] | None = None, toml_path: str | os.PathLike[str] | None = None
) -> TrainConfig:
    """Defaults < preset < TOML < CLI. ``cli`` holds only the flags actually given."""
    cli = dict(cli or {})
    toml = load_toml(toml_path) if toml_path else {}
    preset = cli.get("preset", toml.get("preset", TrainConfig.preset))
    if preset not in PRESETS:
        raise ConfigError(f"--preset {preset!r} is not one of {', '.join(PRESETS)}")
    values: dict[str, Any] = {"preset": preset}
    values.update(PRESETS[preset])
    values.pop("micro_batch", None)  # the preset's micro batch is auto's CPU value, not a setting
    values.update(toml)
    for name, value in cli.items():
        if name not in FIELDS:
            raise _unknown(name, "command line")
        values[name] = coerce(name, value, flag(name))
    if "out" not in cli and "out" not in toml:
        values["out"] = Path("runs") / preset
    return TrainConfig(**values)


def resolve_resume_config(
    cli: dict[str, Any] | None = None, toml_path: str | os.PathLike[str] | None = None
) -> TrainConfig:
    """``--resume``: the run's recorded settings, with the given ones that may change applied
    (:mod:`trainer.resume_config`); without a record in ``--out``, as :func:`resolve_config`."""
    from trainer.resume_config import RUN_RECORD, apply_overrides, read_run_record

    cli = dict(cli or {})
    given = load_toml(toml_path) if toml_path else {}
    for name, value in cli.items():
        if name not in FIELDS:
            raise _unknown(name, "command line")
        given[name] = coerce(name, value, flag(name))
    out = Path(given.get("out", Path("runs") / given.get("preset", TrainConfig.preset)))
    recorded = read_run_record(out)
    if recorded is None:  # nothing recorded (a run killed before it started): a fresh run, which says so
        return resolve_config(cli, toml_path)
    preset = recorded.get("preset", TrainConfig.preset)
    values: dict[str, Any] = {"preset": preset, **PRESETS.get(preset, {})}  # for settings added since
    for name, value in recorded.items():
        if name in FIELDS:  # a setting since removed is dropped
            values[name] = coerce(name, value, f"{out / RUN_RECORD}")
    values = apply_overrides(values, given, force=bool(given.get("force")), record=out / RUN_RECORD)
    for name in ("resume", "overwrite", "force"):
        values[name] = bool(given.get(name, False))
    values["out"] = out
    return TrainConfig(**values)


def train_config_from_argv(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``argv`` (``sys.argv[1:]`` when None) into a resolved :class:`TrainConfig`."""
    ns = vars(build_parser().parse_args(argv))
    toml_path = ns.pop("config", None)
    ns.pop("debug", None)  # read by trainer.__main__ (how errors are shown), not a run setting
    if ns.get("resume"):
        return resolve_resume_config(ns, toml_path)
    return resolve_config(ns, toml_path)
