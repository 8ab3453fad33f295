"""The settings of each ``python -m model`` command, one dataclass per command, validated.

One field per flag (``max_new_tokens`` <-> ``--max-new-tokens``), its help text and argparse extras in the
field's metadata; :mod:`pipeline.cliconfig` makes the flags (the same generator as ``build``'s and the
trainer's). A bad value raises :class:`~pipeline.errors.ConfigError` naming the flag (exit 2) before any
checkpoint is read. What needs the filesystem (``--json PATH``) is checked by the command itself.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from model.generate import _check_sampling_args
from model.tools.eval_tasks import parse_tasks
from pipeline.cliconfig import cli_field
from pipeline.errors import ConfigError

DTYPE_NAMES = ("float32", "bfloat16", "float16")  # the autocast dtypes of --dtype (besides auto)
CHECKPOINT_HELP = "a .pt checkpoint, or a run dir (its newest loadable checkpoint)"
DEVICE = cli_field("cpu, cuda, cuda:N or auto (cuda when available)")
DTYPE = cli_field(
    "autocast dtype (auto: bfloat16 on CUDA if supported, else float32)", choices=["auto", *DTYPE_NAMES]
)


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


@dataclass
class SampleConfig:
    """``python -m model sample``: where the weights are, what to continue, how to sample."""

    checkpoint: str = field(metadata=cli_field(CHECKPOINT_HELP, required=True))
    prompt: str = field(
        default="", metadata=cli_field("text to continue; encoded as [<|startoftext|>] + BPE(prompt)")
    )
    max_new_tokens: int = field(
        default=200, metadata=cli_field("tokens to generate at most (default 200)", type=_nonneg_int)
    )
    temperature: float = field(
        default=0.8, metadata=cli_field("softmax temperature; 0 = greedy (default 0.8)")
    )
    top_k: int | None = field(
        default=200, metadata=cli_field("sample only from the k likeliest ids (default 200; 0 = off)")
    )
    top_p: float | None = field(
        default=None, metadata=cli_field("nucleus sampling: smallest set with mass >= p (default off)")
    )
    seed: int | None = field(
        default=None, metadata=cli_field("RNG seed for reproducible samples (default: random)")
    )
    num_samples: int = field(default=1, metadata=cli_field("independent samples to draw (default 1)"))
    device: str = field(default="auto", metadata=DEVICE)
    dtype: str = field(default="auto", metadata=DTYPE)
    no_stop_at_eot: bool = field(default=False, metadata=cli_field("keep going past <|endoftext|>"))
    no_cache: bool = field(
        default=False, metadata=cli_field("recompute the whole context every token (slow; a check)")
    )

    def __post_init__(self) -> None:
        if self.top_k == 0:
            self.top_k = None  # --top-k 0 is "off"
        if self.num_samples < 1:
            raise ConfigError(f"--num-samples {self.num_samples} must be >= 1")
        try:
            _check_sampling_args(self.max_new_tokens, self.temperature, self.top_k, self.top_p)
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclass
class EvalConfig:
    """``python -m model eval``: the checkpoint, the tasks and where their rows come from."""

    checkpoint: str = field(metadata=cli_field(CHECKPOINT_HELP, required=True))
    task: list[str] = field(
        metadata=cli_field(
            "hellaswag, lambada, wikitext2, wikitext103 or shards; repeat the flag or give a comma list",
            action="append",
            required=True,
            metavar="TASK[,TASK...]",
        )
    )
    data: str | None = field(
        default=None,
        metadata=cli_field(
            "local .jsonl/.parquet in the task's hub schema, or the shard folder of --task shards "
            "(one task only); default: the hub dataset"
        ),
    )
    limit: int | None = field(default=None, metadata=cli_field("score only the first N rows of each task"))
    batch_size: int = field(default=32, metadata=cli_field("sequences per forward pass (default 32)"))
    device: str = field(default="auto", metadata=DEVICE)
    dtype: str = field(default="auto", metadata=DTYPE)
    json: str | None = field(
        default=None,
        metadata=cli_field(
            "also write the figures as JSON to PATH (stdout without PATH; the table then goes to stderr); "
            "an existing PATH is replaced only if eval wrote it",
            nargs="?",
            const="-",
            metavar="PATH",
        ),
    )

    def __post_init__(self) -> None:
        tasks = self.tasks()
        if self.data is not None and len(tasks) > 1:
            raise ConfigError(f"--data {self.data} is one task's file, but {len(tasks)} tasks were given; "
                              "run one task per --data, or drop --data to read the hub datasets")  # fmt: skip
        if "shards" in tasks and self.data is None:
            raise ConfigError(
                "--task shards needs --data DIR, a shard folder written by `python -m pipeline build`"
            )
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be >= 1")

    def tasks(self) -> list[str]:
        """The task names of ``--task``, in order, each once (an unknown one is a UsageError)."""
        return parse_tasks(self.task)


@dataclass
class ImportHFConfig:
    """``python -m model import-hf DIR --out OUT``."""

    dir: str = field(metadata=cli_field("folder holding config.json and the weights"))
    out: str = field(
        metadata=cli_field(
            "a .pt file, or a run dir (written as checkpoints/step-00000000.pt)", required=True
        )
    )
    overwrite: bool = field(
        default=False, metadata=cli_field("replace an earlier import at --out (nothing else is replaced)")
    )


@dataclass
class ExportHFConfig:
    """``python -m model export-hf CHECKPOINT --out OUT``."""

    checkpoint: str = field(metadata=cli_field(CHECKPOINT_HELP))
    out: str = field(
        metadata=cli_field(
            "a new or empty output folder (never a run, shard or source folder)", required=True
        )
    )
    overwrite: bool = field(
        default=False,
        metadata=cli_field(
            "replace an earlier export-hf folder at --out, whole and atomically (nothing else is replaced)"
        ),
    )


@dataclass
class InfoConfig:
    """``python -m model info [--checkpoint CKPT]``."""

    checkpoint: str | None = field(
        default=None, metadata=cli_field("describe this checkpoint instead of the presets")
    )
