"""Issue 18 through the real CLI: the trainer writes only into its own folders, a CPU-only machine is not
sent on a months-long run, and the messages name the flag that fixes them.

Each case asserts the exit status, exactly one stderr error line, no traceback, and an unchanged disk.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import GPTConfig
from tests.cli import child_env, one_error, snapshot
from tests.conftest import REPO
from tests.trainer.conftest import fast, run_trainer
from trainer.config import train_config_from_argv
from trainer.dist import DistEnv
from trainer.evals import task_evaluator


def _hf_folder(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def _user_folder(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("mine\n")
    return path


@pytest.mark.parametrize(
    ("make", "kind", "extra"),
    [
        (None, "is a shard folder (manifest.json", ()),  # --out = --data (before: "build in progress")
        (_hf_folder, "is a Hugging Face model folder (config.json, model.safetensors)", ("--overwrite",)),
        (_user_folder, "is a folder of other files (notes.txt)", ("--overwrite",)),
    ],
)
def test_out_must_be_new_empty_or_a_run_folder(gen_shards: Path, tmp_path: Path, make, kind: str, extra):
    out = gen_shards if make is None else make(tmp_path / "out")
    before = snapshot(gen_shards, tmp_path)
    proc = run_trainer(fast(gen_shards, out, "--max-steps", "1", *extra))
    one_error(proc, 2, f"--out {out} {kind}", "choose another --out")
    assert snapshot(gen_shards, tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for CPU-only machines")
def test_make_train_on_a_cpu_machine_refuses_the_124m_run(gen_shards: Path, tmp_path: Path):
    """`make train` with no GPU: one line pointing at `make demo` / --preset tiny / --device cpu, at once
    (before: the 124M run started, weeks of work on 2 cores)."""
    run = tmp_path / "run"
    venv = Path(sys.executable).parent.parent
    proc = subprocess.run(
        ["make", "-s", f"VENV={venv}", f"PY={sys.executable}", f"DATA={gen_shards}", f"RUN={run}", "train"],
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    one_error(proc, 2, "no CUDA GPU", "--preset gpt2", "make demo", "--preset tiny", "--device cpu")
    assert "failed (exitcode" not in proc.stderr  # the rank's line is the message, no torchrun report
    assert not run.exists()


def test_offline_eval_tasks_error_names_eval_tasks_data(gen_shards: Path, tmp_path: Path):
    before = snapshot(gen_shards)
    empty_cache = str(tmp_path / "hf")
    proc = run_trainer(
        fast(gen_shards, tmp_path / "run", "--max-steps", "1", "--eval-tasks", "lambada"),
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=empty_cache, HF_DATASETS_CACHE=empty_cache,
    )  # fmt: skip
    line = one_error(proc, 1, "task lambada", "--eval-tasks-data LOCAL_FILE")
    assert not re.search(r"(?<![\w-])--data(?![\w-])", line), line
    assert snapshot(gen_shards) == before and not (tmp_path / "run").exists()


def test_eval_tasks_file_errors_name_the_trainers_flags(gen_shards: Path, tmp_path: Path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    tiny = GPTConfig.from_preset("tiny")
    cfg = train_config_from_argv(
        fast(gen_shards, tmp_path / "r", "--eval-tasks", "hellaswag", "--eval-tasks-data", str(bad))
    )
    with pytest.raises(Exception, match=rf"^--eval-tasks-data {re.escape(str(bad))}: line 1 is not JSON"):
        task_evaluator(cfg, DistEnv(), tiny)
    # the shards task reads the run's own --data also beside a hub task (before: no data, an error)
    import model.tools.eval_tasks as et

    rows = [
        json.loads(x) for x in (REPO / "tests/model/fixtures/eval/hellaswag.jsonl").read_text().splitlines()
    ]
    hub_rows = [(f"row {i}", r) for i, r in enumerate(rows)]
    monkeypatch.setattr(et, "_read_hub", lambda spec: hub_rows)  # the hub, offline
    cfg = train_config_from_argv(
        fast(gen_shards, tmp_path / "r", "--eval-tasks", "shards,hellaswag", "--eval-tasks-limit", "2")
    )
    docs = task_evaluator(cfg, DistEnv(), tiny).docs
    assert list(docs) == ["shards", "hellaswag"] and len(docs["shards"]) == 2
