"""Fixtures for the trainer tests: one generated shard folder per session, fast tiny-run flags, and a
helper that runs ``python -m trainer`` in a fresh process (for kills, signals and torchrun)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli import run_module
from tests.trainer.trainshards import make_shards

# A very small model and batch: grad accumulation 2, so accumulation is exercised everywhere.
FAST = [
    "--preset",
    "tiny",
    "--n-layer",
    "2",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--seq-len",
    "32",
    "--micro-batch",
    "2",
    "--total-batch-tokens",
    "128",
    "--eval-windows",
    "4",
    "--no-tensorboard",
    "--keep-last",
    "10",
]


def fast(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), *FAST, *extra]


@pytest.fixture(scope="session")
def gen_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shards(tmp_path_factory.mktemp("trainer-shards") / "shards")


def run_trainer(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m trainer ARGS`` in a new process; returns the completed process (output captured)."""
    return run_module("trainer", *args, timeout=timeout, **env)


def finished_run(data: Path, out: Path, *extra: str) -> Path:
    """A finished ``python -m trainer`` run into ``out`` on the fast config (asserts exit 0)."""
    proc = run_trainer(fast(data, out, *extra))
    assert proc.returncode == 0, proc.stderr
    return out


def run_faulty(
    faults: list[str], args: list[str], cli: str = "trainer", timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """``python -m trainer ARGS`` (or ``model``) with ``faults`` (``KIND:STEP``, see faults.py) patched in."""
    spec = [x for f in faults for x in ("--fault", f)]
    return run_module("tests.trainer.faults", *spec, "--", cli, *args, timeout=timeout, **env)
