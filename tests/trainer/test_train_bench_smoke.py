"""``bench/train_gpu.py`` is the GPU benchmark; CI has no GPU, so run its own logic on CPU.

The smoke run goes through the same code as the benchmark (synthetic shards, ``trainer.train``
with compile and the eager baseline, the table and the JSON); only the device and sizes differ.
Its speed figures mean nothing; what is checked is that both runs really trained the same steps on
the same data (the compiled and eager losses agree step by step), that every field the GPU check
reads is there, and that the figures are in a plausible range.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


@pytest.mark.slow
def test_gpu_benchmark_script_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "train_gpu.py"),
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--steps",
        str(STEPS),
        "--micro-batch",
        "2",
        "--seq-len",
        "32",
        "--precision",
        "fp32",
        "--train-tokens",
        "50000",
        "--total-batch-tokens",
        "128",
        "--sdpa-backend",
        "math",
        "--json",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {
        "compile",
        "eager",
        "ratio_compile_over_eager",
        "device",
        "torch",
        "date",
        "preset",
        "micro_batch",
        "seq_len",
        "precision",
    } <= set(res)
    assert res["device"].startswith("cpu") and res["preset"] == "tiny" and res["micro_batch"] == 2
    for run in ("compile", "eager"):
        r = res[run]
        assert {
            "tokens_per_s",
            "mfu",
            "peak_mem_gib",
            "step_ms",
            "steps",
            "tokens",
            "final_loss",
            "sdpa_backend",
        } <= set(r)
        assert (
            r["steps"] == STEPS
            and r["tokens"] == STEPS * 128
            and sorted(r["losses"], key=int) == [str(s) for s in range(1, STEPS + 1)]
        )
        assert r["sdpa_backend"] == "math"  # the kernel asked for is the one reported
        assert 0 < r["tokens_per_s"] < 1e8 and 0 < r["step_ms"] < 60_000  # a tiny model on a CPU
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # no peak and no CUDA memory on a CPU
        # random ids over a 50k vocabulary at init: near ln(50260) = 10.8, and finite
        assert all(math.isfinite(v) and 9.0 < v < 12.0 for v in r["losses"].values())
    # both runs trained the same steps on the same data from the same init: compile changes no number
    for s in res["compile"]["losses"]:
        assert res["compile"]["losses"][s] == pytest.approx(res["eager"]["losses"][s], rel=1e-4)
    assert 0.05 < res["ratio_compile_over_eager"] < 20
    assert "trainer (compile)" in proc.stdout and "compile / eager" in proc.stdout
