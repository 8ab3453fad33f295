"""``bench/gpu_check.sh --dry-run``: the prepared GPU check runs end to end on CPU, so CI keeps it working.

The dry run goes through every stage of the device run with tiny sizes; the figures mean nothing,
only that each stage's command, JSON and summary line still work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["facts", "gputests", "train", "train_mb64", "sampler", "generate", "ddp"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_gpu_check_dry_run_passes_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, (
        proc.stdout[-4000:] + proc.stderr[-2000:] + (out / "gpu_check.log").read_text()[-4000:]
    )
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == STAGES
    assert all(r["result"] == "ok" for r in rows), rows
    assert all(r["figure"] and r["figure"] != "?" for r in rows), rows
    # the table is the last thing printed: a header then one row per stage
    tail = proc.stdout.strip().splitlines()[-len(STAGES) - 2 :]
    assert tail[0].split("|")[0].strip() == "stage"
    assert [line.split("|")[0].strip() for line in tail[2:]] == STAGES
    train = json.loads((out / "train.json").read_text())
    assert (
        train["preset"] == "tiny"
        and train["compile"]["tokens_per_s"] > 0
        and train["eager"]["tokens_per_s"] > 0
    )
    gen = json.loads((out / "generate.json").read_text())
    assert gen["same_tokens"] is True


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_gpu_check_smallgpu_stage_dry_run(tmp_path: Path) -> None:
    """The opt-in small-card stage (issue 20): on CPU one uncapped tiny run where auto takes the preset's."""
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--stages", "smallgpu"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + (out / "gpu_check.log").read_text()[-3000:]
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["smallgpu"] and rows[0]["result"] == "ok"
    res = json.loads((out / "smallgpu.json").read_text())["results"]
    assert res[0]["micro_batch"] == 4 and "the preset's value" in res[0]["reason"]


def test_gpu_check_refuses_unknown_arguments() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--bogus" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
@pytest.mark.skipif(
    not (REPO.parent / "shared" / "anchors" / "nanoGPT" / "bench.py").is_file(),
    reason="needs ../shared anchors",
)
def test_gpu_check_dry_run_issue19_stages(tmp_path: Path) -> None:
    """The opt-in stages of issue 19: time to loss (AdamW vs Muon) and nanoGPT's bench.py beside owtgpt."""
    out = tmp_path / "out"
    env = {**os.environ, "PY": sys.executable, "OUT": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry-run", "--stages", "recipe nanogpt"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + (out / "gpu_check.log").read_text()[-4000:]
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["recipe", "nanogpt"]
    assert all(r["result"] == "ok" and r["figure"] != "?" for r in rows), rows
    recipe = json.loads((out / "recipe" / "results.json").read_text())
    assert set(recipe["summary"]["recipes"]) == {"adamw", "muon"} and recipe["timing"]["muon_s"] > 0
    assert "time per iteration" in (out / "nanogpt_bench.txt").read_text()
