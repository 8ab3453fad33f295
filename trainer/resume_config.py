"""``--resume`` continues a run as it was recorded: which given settings may change it, and which may not.

``RUN/config.json`` (:func:`trainer.rundir.write_run_info`, at every start) records the resolved
:class:`~trainer.config.TrainConfig`. ``--resume`` starts from that record, so no flag of the original
command needs repeating (:func:`trainer.config.train_config_from_argv`). A setting given with it (flag or
``--config`` TOML) replaces the recorded one only when it is in :data:`MAY_CHANGE` (how long the run goes,
how often it evaluates, logs and saves, where and how fast it runs) or equals the record. Anything else
would make it another run (model shape, data order, seed, batch, learning rate, optimizer, and every
setting added later unless listed here): refused, naming the flag, the recorded value and the given one.
``--force`` lets the non-shape ones change (a lower ``--lr`` after a divergence); the shape, the preset
and ``--init-from`` never change, since the checkpoint's weights could not load.

This module imports nothing of the trainer's: :mod:`trainer.config` calls it with its own field values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, UserError, flag

RUN_RECORD = "config.json"

MAY_CHANGE = (
    "data",  # the folder may move: the checkpoint's dataset fingerprint must still match (checked on load)
    "max_steps",  # extend or shorten the run (the schedule follows the new length; the resume warns)
    "micro_batch",  # memory: the total batch stays (gradient accumulation); the resume warns
    "activation_checkpointing",  # memory: recomputing a block's activations gives the same numbers
    "dry_run",  # prints the memory plan and exits: it never touches the run
    "prefetch", "device", "precision", "compile", "sdpa_backend", "peak_tflops",
    "eval_every", "eval_windows", "eval_tasks", "eval_tasks_every", "eval_tasks_limit", "eval_tasks_data",
    "log_every", "progress", "tensorboard", "sample_every", "sample_prompt", "sample_tokens",
    "ckpt_every", "keep_last", "max_bad_steps", "profile", "profile_wait", "profile_active",
    "debug_nan_at_step",
)  # fmt: skip
NEVER_CHANGE = ("preset", "init_from", "model", "n_layer", "n_head", "n_embd", "block_size")
NOT_RECORDED = ("out", "resume", "overwrite", "force")  # this command's, not the run's


def read_run_record(out: Path) -> dict[str, Any] | None:
    """The recorded settings in ``out/config.json`` (None when there is no such file)."""
    path = Path(out) / RUN_RECORD
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(
            f"{path}: cannot be read as a training run's record ({e}); --resume takes the run's settings "
            "from it: restore it, or start over with --overwrite"
        ) from None
    if not (isinstance(doc, dict) and isinstance(doc.get("config"), dict)):
        raise UserError(
            f"--out {out}: its {RUN_RECORD} is not a training run's record (no 'config' object; a Hugging "
            "Face model's?); --resume continues a run folder written by `python -m trainer`"
        )
    return doc["config"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Path) or isinstance(b, Path):
        return a is not None and b is not None and Path(a) == Path(b)
    return a == b


def apply_overrides(
    recorded: dict[str, Any], given: dict[str, Any], *, force: bool, record: Path
) -> dict[str, Any]:
    """``recorded`` with the ``given`` settings applied; raise (exit 2) naming one that may not change."""
    values = dict(recorded)
    for name, value in given.items():
        if name in NOT_RECORDED:
            continue
        old = recorded.get(name)
        if _same(old, value):
            continue
        if name not in MAY_CHANGE and (name in NEVER_CHANGE or not force):
            anyway = "" if name in NEVER_CHANGE else ", or pass --force to change it anyway"
            shown = "none (the preset's)" if old is None else old
            raise ConfigError(
                f"{flag(name)} {value} differs from the run's recorded {shown} ({record}); --resume "
                f"continues the run as recorded: drop {flag(name)}, or start a new run in another "
                f"--out{anyway}"
            )
        values[name] = value
    return values
