"""Ctrl-C and SIGTERM under torchrun (issue 18), through ``make train`` and ``python -m trainer.launch`` with
two gloo ranks on the CPU: every rank finishes the step, rank 0 saves, everything exits cleanly (no torchrun
traceback, no make error), and ``make train RESUME=1`` continues bit for bit.

A terminal's Ctrl-C is SIGINT to the whole foreground process group: the tests start make (or the launcher)
in a session of its own and signal that group, as the terminal would. They synchronise on printed lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path, list_checkpoints
from tests.cli import child_env, one_error, wait_for_line
from tests.conftest import REPO
from tests.trainer.conftest import FAST
from trainer.observe import read_metrics

PY = sys.executable
# constant lr after warmup (--min-lr-ratio 1): the run's length does not change the schedule, so a run
# stopped at N and resumed to N+2 is comparable with a straight run to N+2
TRAIN = [
    *FAST,
    "--total-batch-tokens",
    "256",
    "--eval-every",
    "0",
    "--ckpt-every",
    "0",
    "--min-lr-ratio",
    "1",
]


def make_train(data: Path, run: Path, *train_args: str) -> list[str]:
    venv = Path(PY).parent.parent
    return ["make", "-s", f"VENV={venv}", f"PY={PY}", f"DATA={data}", f"RUN={run}", "NGPU=2", "PRESET=tiny",
            "TRAIN_ARGS=" + " ".join(train_args), "train"]  # fmt: skip


def launcher(data: Path, run: Path, *extra: str) -> list[str]:
    return [PY, "-m", "trainer.launch", "--standalone", "--nproc_per_node=2", "-m", "trainer",
            "--data", str(data), "--out", str(run), *TRAIN, *extra]  # fmt: skip


def start(cmd: list[str]) -> subprocess.Popen:
    """``cmd`` in a session (and process group) of its own, as a shell starts a foreground job."""
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip


def wait_for_err(proc: subprocess.Popen, needle: str) -> str:
    for line in proc.stderr:
        if needle in line:
            return line
    raise AssertionError(f"exited (status {proc.wait()}) before printing {needle!r} on stderr")


def stopped_step(run: Path) -> int:
    (newest,) = list_checkpoints(run)
    return int(newest.stem.split("-")[1])


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.fixture(scope="module")
def ctrl_c_run(gen_shards: Path, tmp_path_factory) -> Iterator[tuple[Path, subprocess.Popen, str, str]]:
    """``make train`` over 2 ranks, Ctrl-C after step 3 (SIGINT to make's process group)."""
    run = tmp_path_factory.mktemp("ctrl-c") / "run"
    proc = start(make_train(gen_shards, run, *TRAIN, "--max-steps", "100000"))
    try:
        wait_for_line(proc, "step 3/")
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        out, err = finish(proc)
    yield run, proc, out, err


def test_ctrl_c_on_make_train_saves_on_every_rank_and_exits_cleanly(ctrl_c_run):
    run, proc, out, err = ctrl_c_run
    assert "Traceback" not in err and "SignalException" not in err, err
    assert "make: ***" not in err, err  # the launcher exited 0: make reports nothing
    # make itself got the SIGINT too and, as GNU make does, re-raises it on itself after its recipe ended
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "warning: SIGINT received: finishing this step, then saving a checkpoint (Ctrl-C again aborts "
        "without saving)"
    ]
    step = stopped_step(run)
    assert step >= 3 and f"stopped by signal after step {step}; checkpoint" in out
    recs, _ = read_metrics(run / "metrics.jsonl")
    assert max(recs) == step


def test_make_train_resume_continues_the_interrupted_run(ctrl_c_run):
    run, _, _, _ = ctrl_c_run
    step = stopped_step(run)
    # RESUME=1 with neither DATA nor PRESET: both come from the run's record, as does every TRAIN flag
    venv = Path(PY).parent.parent
    cmd = ["make", "-s", f"VENV={venv}", f"PY={PY}", f"RUN={run}", "NGPU=2", "RESUME=1",
           f"TRAIN_ARGS=--max-steps {step + 2}", "train"]  # fmt: skip
    resumed = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert f"resuming at step {step}" in resumed.stdout
    assert list_checkpoints(run)[0] == checkpoint_path(run, step + 2)
    recs, _ = read_metrics(run / "metrics.jsonl")
    assert sorted(recs) == list(range(1, step + 3))


@pytest.mark.slow
def test_resumed_run_is_bit_identical_to_a_straight_one(ctrl_c_run, gen_shards: Path, tmp_path: Path):
    run, _, _, _ = ctrl_c_run
    final = list_checkpoints(run)[0]
    step = int(final.stem.split("-")[1])
    straight = tmp_path / "straight"
    proc = subprocess.run(launcher(gen_shards, straight, "--max-steps", str(step)), cwd=REPO,
                          env=child_env(), capture_output=True, text=True, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    a = torch.load(final, weights_only=True)
    b = torch.load(checkpoint_path(straight, step), weights_only=True)
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    la, _ = read_metrics(run / "metrics.jsonl")
    lb, _ = read_metrics(straight / "metrics.jsonl")
    assert [la[s]["loss"] for s in sorted(lb)] == [lb[s]["loss"] for s in sorted(lb)]


@pytest.mark.slow
def test_sigterm_to_the_launcher_alone_reaches_every_rank(gen_shards: Path, tmp_path: Path):
    """A scheduler (or `kill PID`) signals the launcher alone: it passes it on; exit 0 after saving."""
    run = tmp_path / "run"
    proc = start(launcher(gen_shards, run, "--max-steps", "100000"))
    try:
        wait_for_line(proc, "step 2/")
        proc.send_signal(signal.SIGTERM)
    finally:
        out, err = finish(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "SIGTERM received" in err
    assert f"stopped by signal after step {stopped_step(run)}" in out


@pytest.mark.slow
def test_second_ctrl_c_under_the_launcher_aborts_with_one_line(gen_shards: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = start(launcher(gen_shards, run, "--max-steps", "100000", "--ckpt-every", "2"))
    try:
        wait_for_line(proc, "step 2/")
        os.killpg(proc.pid, signal.SIGINT)
        wait_for_err(proc, "SIGINT received")
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        out, err = finish(proc)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    one_error(done, 130, "interrupted", "--resume")  # rank 0's line; rank 1 and the launcher say nothing more
