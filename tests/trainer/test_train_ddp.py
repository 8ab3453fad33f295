"""DDP on CPU: ``torchrun --nproc_per_node=2`` (gloo) trains, the ranks read different windows, and the
gradients equal those of one process over the same global batch.

The reference is independent of the DDP code path: one process with twice the micro batch reads
the same global windows (the sampler's global batch of a step is the first ``world_size x B``
draws), so its step-1 gradient, which AdamW's first moment stores as ``(1 - beta1) x g``, must
match the all-reduced DDP gradient. The rank-0/rank-1 losses are also recomputed here by hand.
A rank that fails mid-run ends the whole job instead of leaving its peer blocked in an all-reduce.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path
from pipeline.sampler import TokenSampler
from tests.cli import child_env
from tests.conftest import REPO
from tests.trainer.conftest import fast, run_trainer
from trainer.config import train_config_from_argv
from trainer.observe import read_metrics
from trainer.train import build_train_model

# global batch 256 tokens = micro 2 x T 32 x 2 ranks x accumulation 2 (so no_sync is exercised)
COMMON = ("--max-steps", "2", "--ckpt-every", "1", "--eval-every", "2", "--total-batch-tokens", "256")


@pytest.fixture(scope="module")
def ddp_run(gen_shards: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "trainer",
        *fast(gen_shards, out, *COMMON),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_ddp_two_ranks_match_one_process(gen_shards: Path, ddp_run: Path, tmp_path: Path):
    single = tmp_path / "single"
    proc = run_trainer(fast(gen_shards, single, *COMMON, "--micro-batch", "4"))
    assert proc.returncode == 0, proc.stderr
    cfg_info = json.loads((ddp_run / "config.json").read_text())
    assert cfg_info["world_size"] == 2 and cfg_info["grad_accum_steps"] == 2
    d, _ = read_metrics(ddp_run / "metrics.jsonl")
    s, _ = read_metrics(single / "metrics.jsonl")
    for step in (1, 2):
        assert d[step]["loss"] == pytest.approx(s[step]["loss"], rel=1e-5)
    cd = torch.load(checkpoint_path(ddp_run, 1), weights_only=True)
    cs = torch.load(checkpoint_path(single, 1), weights_only=True)
    assert cd["world_size"] == 2
    for i, st in cd["optimizer"]["state"].items():  # exp_avg after one step = 0.1 x clipped gradient
        ref = cs["optimizer"]["state"][i]["exp_avg"]
        torch.testing.assert_close(st["exp_avg"], ref, rtol=1e-4, atol=1e-9)
    for k in cd["model"]:
        torch.testing.assert_close(cd["model"][k], cs["model"][k], rtol=1e-4, atol=1e-6)


def test_ddp_ranks_read_different_windows(gen_shards: Path, ddp_run: Path):
    cfg = train_config_from_argv(fast(gen_shards, ddp_run, *COMMON))
    model = build_train_model(cfg, cfg.model_config(), torch.device("cpu"))  # the run's initial weights
    losses, batches = [], []
    with torch.no_grad():
        for micro in range(2):  # optimizer step 0 reads sampler steps 0 and 1
            for rank in range(2):
                with TokenSampler(
                    gen_shards, batch_size=2, seq_len=32, seed=cfg.seed, rank=rank, world_size=2, prefetch=0
                ) as sampler:
                    x, y = sampler.get_batch(micro)
                batches.append(x)
                losses.append(float(model(x, y)[1]))
    assert not torch.equal(batches[0], batches[1]) and not torch.equal(batches[2], batches[3])
    d, _ = read_metrics(ddp_run / "metrics.jsonl")
    assert d[1]["loss"] == pytest.approx(sum(losses) / 4, rel=1e-5)  # step 1 averaged both ranks' data
    assert d[1]["loss"] != pytest.approx((losses[0] + losses[2]) / 2, rel=1e-5)  # not rank 0's alone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failing_rank_ends_the_whole_job(gen_shards: Path, tmp_path: Path):
    """Rank 1 raises at step 2 while rank 0 is in that step's gradient all-reduce: both must exit non-zero.

    The ranks are started by hand (not torchrun) so that rank 0 has to end on its own, not because a
    launcher killed it. The timeout is only a guard against the hang this test exists to catch
    (before the fix the failing rank waited in a barrier for the 30-minute collective timeout).
    """
    port = _free_port()
    args = fast(gen_shards, tmp_path / "run", "--max-steps", "6", "--eval-every", "0", "--ckpt-every", "0")
    procs = []
    for rank in range(2):
        env = child_env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "trainer" / "rank_fails.py"), *args],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    codes = [p.returncode for p in procs]
    assert codes[1] != 0 and "injected failure on rank 1 at step 2" in outs[1][1], outs[1][1][-2000:]
    assert codes[0] != 0, outs[0][1][-2000:]  # rank 0 did not finish the run alone
    train_recs, _ = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert max(train_recs) < 6


@pytest.mark.slow
def test_ddp_with_auto_micro_batch_and_activation_checkpointing(gen_shards: Path, tmp_path: Path):
    """torchrun x2 with --micro-batch auto (the ranks agree through an all-reduce; on CPU the preset's 4)
    and --activation-checkpointing under DDP: the same losses as one plain process reading the same global
    windows (micro batch 8, see the module docstring)."""
    out = tmp_path / "run"
    args = fast(gen_shards, out, *COMMON, "--activation-checkpointing")
    i = args.index("--micro-batch")
    args[i + 1] = "auto"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "trainer",
    ]
    proc = subprocess.run(cmd + args, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["micro_batch"] == 4 and info["grad_accum_steps"] == 1
    assert info["config"]["activation_checkpointing"] is True
    single = tmp_path / "single"
    proc = run_trainer(fast(gen_shards, single, *COMMON, "--micro-batch", "8"))
    assert proc.returncode == 0, proc.stderr
    a, _ = read_metrics(out / "metrics.jsonl")
    b, _ = read_metrics(single / "metrics.jsonl")
    for step in (1, 2):
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], rel=1e-5)
