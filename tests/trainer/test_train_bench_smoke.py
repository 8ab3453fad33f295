"""``bench/train_gpu.py`` is the GPU benchmark; CI has no GPU, so run its own logic on CPU.

The smoke run goes through the same code as the benchmark (synthetic shards, ``trainer.train``
with compile and the eager baseline, the table and the JSON); only the device and sizes differ.
Its figures mean nothing, only that the script works end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_benchmark_script_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "bench" / "train_gpu.py"), "--device", "cpu", "--preset", "tiny",
           "--steps", "4", "--micro-batch", "2", "--seq-len", "32", "--precision", "fp32",
           "--train-tokens", "50000", "--total-batch-tokens", "128", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for run in ("compile", "eager"):
        assert res[run]["tokens_per_s"] > 0
        # step time and tokens/s describe the same steps: 128 tokens per step
        assert res[run]["step_ms"] == pytest.approx(1000 * 128 / res[run]["tokens_per_s"])
    assert res["ratio_compile_over_eager"] == pytest.approx(
        res["compile"]["tokens_per_s"] / res["eager"]["tokens_per_s"])
    assert res["device"].startswith("cpu") and res["preset"] == "tiny"
