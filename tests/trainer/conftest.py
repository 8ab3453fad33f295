"""Fixtures for the trainer tests: one generated shard folder per session, fast tiny-run flags, and a
helper that runs ``python -m trainer`` in a fresh process (for kills, signals and torchrun)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
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


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def run_trainer(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m trainer ARGS`` in a new process; returns the completed process (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=REPO,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_faulty(
    faults: list[str], args: list[str], cli: str = "trainer", timeout: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """``python -m trainer ARGS`` (or ``model``) with ``faults`` (``KIND:STEP``) monkeypatched in; see faults.py."""
    spec = [x for f in faults for x in ("--fault", f)]
    return subprocess.run(
        [sys.executable, "-m", "tests.trainer.faults", *spec, "--", cli, *args],
        cwd=REPO,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
