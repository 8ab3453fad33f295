"""Issue 20 on CUDA (skipped without a GPU): ``--micro-batch auto`` probes real steps and cleans up, the
memory plan is within 20% of ``max_memory_allocated``, a real out-of-memory under a capped memory
fraction is one line, and fp16 with the GradScaler resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.config import GPTConfig
from tests.trainer.conftest import fast
from trainer import autobatch
from trainer.config import train_config_from_argv
from trainer.memplan import GiB, make_plan
from trainer.train import train

pytestmark = pytest.mark.gpu


def _run(data: Path, out: Path, *flags: str):
    return train(train_config_from_argv(fast(data, out, *(x for f in flags for x in f.split()))))


@pytest.fixture
def capped():
    """Sets the process's memory fraction; always restores the whole card."""
    dev = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(dev).total_memory

    def cap(gib: float) -> None:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GiB / total), dev)

    yield cap
    torch.cuda.set_per_process_memory_fraction(1.0, dev)
    torch.cuda.empty_cache()


@pytest.mark.parametrize("compiled", [False, True])
def test_plan_is_within_20_percent_of_the_measured_peak(compiled: bool):
    """A real 2-step run (the probe's: forward, backward, AdamW) of a 4-layer gpt2-width model at T=1024."""
    mc = GPTConfig.from_preset("gpt2", n_layer=4)
    cfg = train_config_from_argv(["--micro-batch", "8", "--seq-len", "1024"])
    dev = torch.device("cuda", torch.cuda.current_device())
    probe, cleanup = autobatch.cuda_probe(cfg, mc, dev, torch.bfloat16, compiled)
    try:
        measured = probe(8, False)
        measured_ckpt = probe(8, True)
    finally:
        cleanup()
    plan = make_plan(mc, 1024, "bf16", compiled)
    assert plan.peak(8, False) == pytest.approx(measured, rel=0.20)
    assert plan.peak(8, True) == pytest.approx(measured_ckpt, rel=0.20)
    assert measured_ckpt < measured


def test_probe_leaves_no_memory_and_no_graphs():
    mc = GPTConfig.from_preset("tiny")
    cfg = train_config_from_argv(["--preset", "tiny", "--micro-batch", "4"])
    dev = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(dev)
    rng = torch.cuda.get_rng_state(dev), torch.get_rng_state()
    probe, cleanup = autobatch.cuda_probe(cfg, mc, dev, torch.bfloat16, True)
    assert probe(4, False) > 0 and probe(2, False) > 0
    cleanup()
    assert torch.cuda.memory_allocated(dev) == before
    assert torch.cuda.max_memory_allocated(dev) == before  # the peak statistics were reset
    assert torch.equal(torch.cuda.get_rng_state(dev), rng[0]) and torch.equal(torch.get_rng_state(), rng[1])


def test_auto_on_cuda_records_its_choice_and_trains(gen_shards: Path, tmp_path: Path, capsys):
    res = _run(gen_shards, tmp_path / "auto", "--device cuda --micro-batch auto --max-steps 4 --eval-every 2")
    info = json.loads((tmp_path / "auto" / "config.json").read_text())
    rec = info["micro_batch_auto"]
    assert info["config"]["micro_batch"] == rec["micro_batch"] == 4  # the whole per-rank batch of a tiny run
    assert rec["probes"] and rec["probe_seconds"] > 0 and "no accumulation" in rec["reason"]
    manual = _run(
        gen_shards, tmp_path / "manual", "--device cuda --micro-batch 4 --max-steps 4 --eval-every 2"
    )
    for s in (1, 2, 3, 4):  # CUDA's atomics make bits differ run to run; the math is the same
        assert res.losses[s] == pytest.approx(manual.losses[s], rel=1e-3)
    assert "--micro-batch auto: micro batch 4" in capsys.readouterr().out


def test_real_out_of_memory_is_one_line(gen_shards: Path, tmp_path: Path, capped):
    capped(0.25)  # 256 MiB: the LM loss's workspace alone at micro batch 64 x T 64 does not fit
    with pytest.raises(
        autobatch.OutOfMemory, match=r"out of memory during .*micro batch 64 x T 32.*--micro-batch"
    ):
        _run(
            gen_shards,
            tmp_path / "run",
            "--device cuda --no-compile --micro-batch 64 --total-batch-tokens 2048",
        )


def test_auto_under_a_capped_card_fits(gen_shards: Path, tmp_path: Path, capped):
    capped(0.75)
    res = _run(
        gen_shards, tmp_path / "run",
        "--device cuda --no-compile --micro-batch auto --total-batch-tokens 8192",
        "--max-steps 2 --eval-every 0",
    )  # fmt: skip
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert 8192 // 32 % info["config"]["micro_batch"] == 0 and res.final_step == 2  # keeps the total
    assert res.peak_mem_gib is not None and res.peak_mem_gib < 0.75 * (1 - autobatch.MARGIN) + 0.05


def test_fp16_grad_scaler_resumes_on_cuda(gen_shards: Path, tmp_path: Path):
    flags = "--device cuda --precision fp16 --no-compile --eval-every 0 --ckpt-every 2"
    whole = _run(gen_shards, tmp_path / "whole", f"{flags} --max-steps 4")
    _run(gen_shards, tmp_path / "part", f"{flags} --max-steps 2")
    resumed = _run(gen_shards, tmp_path / "part", f"{flags} --max-steps 4 --resume")
    for s in (3, 4):
        assert resumed.losses[s] == pytest.approx(whole.losses[s], rel=1e-3)
    state = torch.load(tmp_path / "part" / "checkpoints" / "step-00000004.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
