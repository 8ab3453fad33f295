"""Never lose work, across real processes: exact resume after SIGKILL, SIGKILL in the middle of a
checkpoint write, SIGTERM mid-run (save, exit 0, resume continues).

The straight run and the interrupted runs use dropout 0.1, so the RNG handling is exercised too;
on CPU in fp32 the resumed losses and weights must be bit-identical, not merely close.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path, list_checkpoints
from tests.cli import one_error, running, snapshot, wait_for_line
from tests.trainer.conftest import fast, finished_run, run_faulty, run_trainer
from trainer.checkpoint import load_latest
from trainer.observe import read_metrics

ARGS = ("--max-steps", "20", "--ckpt-every", "5", "--dropout", "0.1", "--eval-every", "0", "--prefetch", "2")


@pytest.fixture(scope="module")
def straight(gen_shards: Path, tmp_path_factory) -> Path:
    return finished_run(gen_shards, tmp_path_factory.mktemp("straight") / "run", *ARGS)


@pytest.fixture(scope="module")
def short_run(gen_shards: Path, tmp_path_factory) -> Path:
    return finished_run(
        gen_shards, tmp_path_factory.mktemp("short") / "run", "--max-steps", "2", "--eval-every", "0"
    )


def _assert_same_run(a: Path, b: Path) -> None:
    la, _ = read_metrics(a / "metrics.jsonl")
    lb, _ = read_metrics(b / "metrics.jsonl")
    assert sorted(la) == sorted(lb) == list(range(1, 21))
    assert [la[s]["loss"] for s in la] == [lb[s]["loss"] for s in la]  # bit-identical floats
    ca = torch.load(checkpoint_path(a, 20), weights_only=True)
    cb = torch.load(checkpoint_path(b, 20), weights_only=True)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for i, st in ca["optimizer"]["state"].items():
        for name, t in st.items():
            assert torch.equal(t, cb["optimizer"]["state"][i][name]), (i, name)


def test_sigkill_after_checkpoint_then_resume_is_exact(gen_shards: Path, straight: Path, tmp_path: Path):
    out = tmp_path / "run"
    killed = run_faulty(["kill-after-ckpt:10"], fast(gen_shards, out, *ARGS))
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(out)] == ["step-00000010.pt", "step-00000005.pt"]
    resumed = run_trainer(fast(gen_shards, out, *ARGS, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 10" in resumed.stdout
    _assert_same_run(straight, out)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_previous(gen_shards: Path, straight: Path, tmp_path: Path):
    out = tmp_path / "run"
    killed = run_faulty(["kill-during-ckpt:10"], fast(gen_shards, out, *ARGS))
    assert killed.returncode == -signal.SIGKILL
    folder = out / "checkpoints"
    temps = [p for p in folder.iterdir() if p.name.startswith(".step-00000010.pt.tmp-")]
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the half-written file, never under its name
    assert [p.name for p in list_checkpoints(out)] == ["step-00000005.pt"]
    payload, _ = load_latest(out)
    assert payload["step"] == 5
    resumed = run_trainer(fast(gen_shards, out, *ARGS, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 5" in resumed.stdout
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # stale temp cleaned
    _assert_same_run(straight, out)


@pytest.mark.slow
def test_sigterm_mid_run_saves_exits_zero_and_resumes(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    run_args = fast(gen_shards, out, "--max-steps", "100000", "--ckpt-every", "0", "--eval-every", "0")
    with running("trainer", *run_args) as proc:
        wait_for_line(proc, "step 3/")
        proc.send_signal(signal.SIGTERM)
        out_rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err and "stopped by signal" in out_rest
    (newest,) = list_checkpoints(out)
    stopped_at = int(newest.stem.split("-")[1])
    assert stopped_at >= 3
    recs, _ = read_metrics(out / "metrics.jsonl")
    assert max(recs) == stopped_at
    resumed = run_trainer(
        fast(
            gen_shards,
            out,
            "--max-steps",
            str(stopped_at + 2),
            "--ckpt-every",
            "0",
            "--eval-every",
            "0",
            "--resume",
        )
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {stopped_at}" in resumed.stdout
    recs, _ = read_metrics(out / "metrics.jsonl")
    assert max(recs) == stopped_at + 2
    assert list_checkpoints(out)[0] == checkpoint_path(out, stopped_at + 2)


# ----------------------------------------------------------- issue 18: --resume takes the recorded run


def test_resume_alone_takes_the_recorded_settings(gen_shards: Path, straight: Path, tmp_path: Path):
    """`--out RUN --resume` and nothing else: every setting comes from RUN/config.json, and the run
    continues bit for bit (before: the defaults' gpt2 shape, refused as a different model)."""
    out = tmp_path / "run"
    killed = run_faulty(["kill-after-ckpt:10"], fast(gen_shards, out, *ARGS))
    assert killed.returncode == -signal.SIGKILL
    resumed = run_trainer(["--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 10" in resumed.stdout and "warning" not in resumed.stderr
    _assert_same_run(straight, out)


@pytest.mark.parametrize(
    ("flag", "value", "recorded"),
    [("--lr", "0.01", "0.003"), ("--n-layer", "3", "2")],
)
def test_resume_refuses_an_override_that_changes_the_run(
    gen_shards: Path, short_run: Path, flag: str, value: str, recorded: str
):
    out = short_run
    before = snapshot(out, gen_shards)
    proc = run_trainer(["--out", str(out), "--resume", "--max-steps", "4", flag, value])
    line = one_error(proc, 2, f"{flag} {value}", f"recorded {recorded}", str(out / "config.json"))
    assert ("--force" in line) == (flag == "--lr")  # a shape change could never load the weights
    assert snapshot(out, gen_shards) == before


def test_metrics_hold_each_step_once_after_a_resume(gen_shards: Path, tmp_path: Path):
    """Killed at step 13 with the newest checkpoint at 10: the resume redoes 11-13, and metrics.jsonl and
    TensorBoard keep one record of each step (before: 11-13 twice in metrics.jsonl)."""
    out = tmp_path / "run"
    args = fast(gen_shards, out, *ARGS, "--eval-every", "5", "--tensorboard")
    killed = run_faulty(["kill-at-step:13"], args)
    assert killed.returncode == -signal.SIGKILL
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 14, "lo')  # the torn line of a write the kill cut short
    # --max-steps and --log-every may change on resume (the rest comes from the record)
    resumed = run_trainer(["--out", str(out), "--resume", "--max-steps", "22", "--log-every", "2"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step 10" in resumed.stdout and "step 22/22" in resumed.stdout
    assert "step 21/22" not in resumed.stdout  # --log-every 2 took effect
    assert json.loads((out / "config.json").read_text())["config"]["max_steps"] == 22
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in lines if "loss" in r]
    val_steps = [r["step"] for r in lines if "val_loss" in r]
    assert train_steps == list(range(1, 23)) and val_steps == [0, 5, 10, 15, 20, 22]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out))
    ea.Reload()
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, 23))
