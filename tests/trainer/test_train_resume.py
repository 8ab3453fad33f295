"""Never lose work, across real processes: exact resume after SIGKILL, SIGKILL in the middle of a
checkpoint write, SIGTERM mid-run (save, exit 0, resume continues).

The straight run and the interrupted runs use dropout 0.1, so the RNG handling is exercised too;
on CPU in fp32 the resumed losses and weights must be bit-identical, not merely close.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path, list_checkpoints
from tests.cli import running, wait_for_line
from tests.trainer.conftest import fast, finished_run, run_faulty, run_trainer
from trainer.checkpoint import load_latest
from trainer.observe import read_metrics

ARGS = ("--max-steps", "20", "--ckpt-every", "5", "--dropout", "0.1", "--eval-every", "0", "--prefetch", "2")


@pytest.fixture(scope="module")
def straight(gen_shards: Path, tmp_path_factory) -> Path:
    return finished_run(gen_shards, tmp_path_factory.mktemp("straight") / "run", *ARGS)


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
