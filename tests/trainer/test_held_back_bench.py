"""``bench/held_back.py`` reruns the time-to-loss recipes through ``python -m trainer``; run it tiny.

The benchmark's figures need minutes; this checks its plumbing on generated shards: every recipe
reaches the trainer's CLI with its own flags, each run's ``metrics.jsonl`` is read back into eval
points at the right steps and tokens, and the table and JSON come out.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.trainshards import make_shards

REPO = Path(__file__).resolve().parents[2]
STEPS = 2


@pytest.mark.slow
def test_held_back_bench_runs_each_recipe_through_the_trainer_cli(tmp_path: Path) -> None:
    data = make_shards(tmp_path / "shards", n_docs=200, val_docs=40)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "bench" / "held_back.py"), "--data", str(data), "--out", str(out),
           "--steps", str(STEPS), "--seeds", "0", "--jobs", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    by_name = {r["name"]: r for r in res["runs"]}
    assert set(by_name) == {"adamw", "muon", "muon + wsd", "muon + permutation"}
    for r in by_name.values():
        assert [q["step"] for q in r["points"]] == [0, STEPS]  # step 0 and the final eval
        assert r["points"][-1]["tokens"] == STEPS * 1024
        assert all(math.isfinite(q["val_loss"]) for q in r["points"])
        assert r["points"][-1]["wall_s"] > 0
    cmds = res["trainer_commands"]
    assert len(cmds) == 4 and all(c.startswith("python -m trainer ") for c in cmds)
    assert "--optimizer adamw --lr 0.0015" in cmds[0]
    assert "--optimizer muon --lr 0.003 --muon-lr 0.006 --muon-split-qkv" in cmds[1]
    assert cmds[2].endswith("--schedule wsd") and cmds[3].endswith("--sampling permutation")
    # the same eval windows and init for every recipe: step 0's val loss is the same in all runs
    assert len({r["points"][0]["val_loss"] for r in by_name.values()}) == 1
    assert "adamw" in (out / "table.md").read_text()
