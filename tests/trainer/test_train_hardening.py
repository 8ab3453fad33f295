"""Issue 11 on the trainer, through the real CLI in a subprocess: bad float flags refused at start-up,
one writer per run folder, no non-finite weights ever checkpointed or resumed from, a full disk or a
read-only ``checkpoints/`` during a save, a second Ctrl-C inside a save.

Each case asserts the exit status, exactly one stderr line naming the flag or file, no traceback,
and that what was on disk before is unchanged (or, for a save that failed, that the older
checkpoints are intact and a ``--resume`` continues from them exactly).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path, first_nonfinite, list_checkpoints
from tests.cli import error_lines, one_error, run_module, running, snapshot, wait_for_line
from tests.trainer.conftest import fast, finished_run, run_faulty, run_trainer
from tests.trainer.faults import NAN_TENSOR

ARGS = ("--max-steps", "10", "--ckpt-every", "5", "--eval-every", "0")


def model_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight(gen_shards: Path, tmp_path_factory) -> Path:
    """An uninterrupted 10-step run: what a failed-then-resumed run must reproduce bit for bit."""
    return finished_run(gen_shards, tmp_path_factory.mktemp("straight") / "run", *ARGS)


def assert_resume_matches(gen_shards: Path, out: Path, straight: Path, from_step: int) -> None:
    resumed = run_trainer(fast(gen_shards, out, *ARGS, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {from_step}" in resumed.stdout
    a, b = model_of(checkpoint_path(out, 10)), model_of(checkpoint_path(straight, 10))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file left


# ------------------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("flag", "value"), [("--lr", "inf"), ("--weight-decay", "nan"), ("--eps", "0"), ("--grad-clip", "nan")]
)
def test_bad_float_flags_are_refused_at_start(gen_shards: Path, tmp_path: Path, flag: str, value: str):
    before = snapshot(gen_shards, tmp_path)
    proc = run_trainer(fast(gen_shards, tmp_path / "run", flag, value))
    one_error(proc, 2, flag, value)
    assert snapshot(gen_shards, tmp_path) == before  # not even the run folder was created


def test_data_problem_exits_1_and_debug_adds_the_traceback(tmp_path: Path):
    proc = run_trainer(fast(tmp_path / "nowhere", tmp_path / "run"))
    one_error(proc, 1, str(tmp_path / "nowhere"))
    assert not (tmp_path / "run").exists()
    for extra, env in ((["--debug"], {}), ([], {"OWTGPT_DEBUG": "1"})):
        proc = run_trainer(fast(tmp_path / "nowhere", tmp_path / "run", "--lr", "inf", *extra), **env)
        assert proc.returncode == 2 and "Traceback" in proc.stderr and "--lr inf" in proc.stderr


def test_help_shows_no_fault_injection():
    proc = run_module("trainer", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--debug " in proc.stdout and "--lr" in proc.stdout
    assert "debug-nan-at-step" not in proc.stdout and "OWTGPT_TEST" not in proc.stdout


# ------------------------------------------------------------------------------ run folder lock


def test_second_run_or_resume_into_a_busy_folder_is_refused(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    run_args = fast(gen_shards, out, "--max-steps", "100000", "--ckpt-every", "0", "--eval-every", "0")
    with running("trainer", *run_args) as first:
        wait_for_line(first, "step 1/")  # the first run holds the lock once it reports a step
        for extra in ((), ("--resume",), ("--overwrite",)):
            second = run_trainer(fast(gen_shards, out, "--max-steps", "3", "--eval-every", "0", *extra))
            one_error(second, 1, f"another training run (pid {first.pid}) is writing {out}")
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err  # the first run finished intact: stopped, saved, exit 0
    (newest,) = list_checkpoints(out)
    assert first_nonfinite(model_of(newest)) is None
    # the kernel released the lock with the process: a resume now runs
    stopped = int(newest.stem.split("-")[1])
    again = run_trainer(
        fast(gen_shards, out, "--max-steps", str(stopped + 1), "--eval-every", "0", "--resume")
    )
    assert again.returncode == 0, again.stderr


# ------------------------------------------------------------------------ non-finite weights


def test_nan_weights_are_never_checkpointed(gen_shards: Path, straight: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_faulty(["nan-before-ckpt:10"], fast(gen_shards, out, *ARGS))
    one_error(proc, 1, "step 10", NAN_TENSOR, "checkpoints/step-00000010.pt")
    assert [p.name for p in list_checkpoints(out)] == ["step-00000005.pt"]
    assert_resume_matches(gen_shards, out, straight, 5)


def test_an_update_that_turns_weights_nan_is_never_checkpointed(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_faulty(
        ["nan-update:3"], fast(gen_shards, out, "--max-steps", "5", "--ckpt-every", "1", "--eval-every", "0")
    )
    assert proc.returncode in (0, 1), proc.stderr  # refused at the save, or rolled back in the step
    assert len(error_lines(proc)) == proc.returncode
    written = list_checkpoints(out)
    assert checkpoint_path(out, 2) in written
    for p in written:
        assert first_nonfinite(model_of(p)) is None, p


@pytest.mark.slow
def test_resume_skips_a_nonfinite_checkpoint_with_a_warning(gen_shards: Path, straight: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_trainer(fast(gen_shards, out, *ARGS, "--keep-last", "10"))
    assert proc.returncode == 0, proc.stderr
    bad = checkpoint_path(out, 10)
    payload = torch.load(bad, weights_only=True)
    payload["model"][NAN_TENSOR][0, 0] = float("inf")  # as an older owtgpt could have saved it
    torch.save(payload, bad)
    resumed = run_trainer(fast(gen_shards, out, *ARGS, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert f"{bad} could not be loaded" in resumed.stderr and NAN_TENSOR in resumed.stderr
    assert "resuming at step 5" in resumed.stdout
    a, b = model_of(checkpoint_path(out, 10)), model_of(checkpoint_path(straight, 10))
    assert all(torch.equal(a[k], b[k]) for k in b)


# ------------------------------------------------------------------------- faults during a save


def test_full_disk_during_a_save_then_resume(gen_shards: Path, straight: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_faulty(["enospc-ckpt:10"], fast(gen_shards, out, *ARGS))
    line = one_error(proc, 1, "checkpoints/step-00000010.pt", "no space left", "--resume")
    assert "unexpected pos" not in line
    assert line.count("rerun") == 1 and "same command" not in line  # one instruction (issue 18)
    assert [p.name for p in list_checkpoints(out)] == ["step-00000005.pt"]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # temp file removed
    assert_resume_matches(gen_shards, out, straight, 5)


@pytest.mark.slow
def test_readonly_checkpoint_folder_mid_run(gen_shards: Path, straight: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_faulty(["readonly-ckpt:10"], fast(gen_shards, out, *ARGS))
    try:
        one_error(proc, 1, "step-00000010.pt", "permission denied", "--resume")
        assert [p.name for p in list_checkpoints(out)] == ["step-00000005.pt"]
    finally:
        (out / "checkpoints").chmod(0o755)
    assert_resume_matches(gen_shards, out, straight, 5)


@pytest.mark.slow
def test_second_ctrl_c_during_a_save_is_quiet(gen_shards: Path, straight: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = run_faulty(["sigint-during-ckpt:10"], fast(gen_shards, out, *ARGS))
    one_error(proc, 130, "interrupted", "--resume")
    assert proc.stderr.count("\n") <= 2  # the SIGINT warning and the error line, nothing chained
    assert [p.name for p in list_checkpoints(out)] == ["step-00000005.pt"]  # old file kept, no partial one
    assert_resume_matches(gen_shards, out, straight, 5)


def test_summary_table_folds_long_checkpoint_paths(gen_shards: Path, tmp_path: Path):
    out = tmp_path / ("a-rather-long-folder-name-" * 4) / "run"
    proc = run_trainer(fast(gen_shards, out, "--max-steps", "1", "--eval-every", "0"))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[proc.stdout.index("training summary") :]
    assert "…" not in table
    flat = "".join(ch for ch in table if ch not in " \n│┃║|")
    assert str(checkpoint_path(out, 1)).replace(" ", "") in flat
