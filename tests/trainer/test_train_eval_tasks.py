"""``--eval-tasks``: the trainer scores zero-shot tasks on the raw model, and its figures are the ones
``python -m model eval`` prints for the same checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.checkpoint import checkpoint_path
from model.tools.cli import main as model_main
from tests.trainer.conftest import fast
from trainer.config import ConfigError, train_config_from_argv
from trainer.observe import read_metrics, read_task_metrics
from trainer.train import train

HELLA = Path(__file__).resolve().parents[1] / "model" / "fixtures" / "eval" / "hellaswag.jsonl"


def cli_eval(capsys, ckpt: Path, *args: str) -> dict:
    capsys.readouterr()  # drop the training log
    assert model_main(["eval", "--checkpoint", str(ckpt), "--device", "cpu", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)["tasks"]


def test_in_training_hellaswag_equals_model_eval(gen_shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    res = train(train_config_from_argv(fast(gen_shards, out, "--max-steps", "2", "--eval-every", "1",
                                      "--eval-tasks", "hellaswag", "--eval-tasks-data", str(HELLA),
                                      "--tensorboard")))  # fmt: skip
    assert sorted(res.task_metrics) == [0, 1, 2]
    logged = read_task_metrics(out / "metrics.jsonl")
    assert sorted(logged) == [0, 1, 2]
    train_recs, vals = read_metrics(out / "metrics.jsonl")
    assert sorted(train_recs) == [1, 2] and sorted(vals) == [0, 1, 2]  # task records kept apart
    # micro batch 2 in training: the same batches from the CLI give the very same sums
    ours = cli_eval(capsys, checkpoint_path(out, 2), "--task", "hellaswag", "--data", str(HELLA),
                    "--batch-size", "2")["hellaswag"]  # fmt: skip
    mid = logged[2]["hellaswag"]
    assert mid["n"] == ours["n"] == 3
    assert mid["acc"] == ours["acc"] and mid["acc_norm"] == ours["acc_norm"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert "val/hellaswag_acc_norm" in tags and "val/loss" in tags
    assert [e.step for e in ea.Scalars("val/hellaswag_acc")] == [0, 1, 2]


def test_in_training_shards_task_equals_model_eval(gen_shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    train(train_config_from_argv(fast(gen_shards, out, "--max-steps", "1", "--eval-every", "0",
                                "--eval-tasks", "shards", "--eval-tasks-limit", "5")))  # fmt: skip
    logged = read_task_metrics(out / "metrics.jsonl")
    assert sorted(logged) == [0, 1]  # --eval-every 0: at the start and at the end
    ours = cli_eval(capsys, checkpoint_path(out, 1), "--task", "shards", "--data", str(gen_shards),
                    "--limit", "5", "--batch-size", "2")["shards"]  # fmt: skip
    got = logged[1]["shards"]
    assert got["n"] == ours["n"] == 5
    for metric in ("loss", "perplexity", "bits_per_byte"):
        assert got[metric] == pytest.approx(ours[metric], rel=1e-9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--eval-tasks", "hellaswag,nope"], "--eval-tasks 'nope' is not a task"),
        (["--eval-tasks", "hellaswag,lambada", "--eval-tasks-data", str(HELLA)], "the file of one task"),
        (["--eval-tasks", "hellaswag", "--eval-tasks-data", "/nonexistent.jsonl"], "does not exist"),
        (["--eval-tasks", "hellaswag", "--eval-tasks-limit", "0"], "--eval-tasks-limit 0 must be >= 1"),
        (["--eval-tasks", "hellaswag", "--eval-tasks-every", "-1"], "--eval-tasks-every -1 must be >= 0"),
    ],
)
def test_eval_tasks_flags_are_validated(gen_shards: Path, tmp_path: Path, extra, message):
    with pytest.raises(ConfigError, match=message):
        train_config_from_argv(fast(gen_shards, tmp_path / "run", *extra))
