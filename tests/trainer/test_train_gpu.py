"""The CUDA path (skipped without a GPU): bf16 autocast + compile + fused AdamW trains and records peak
memory; fp16 goes through the GradScaler; bad input still fails on the CPU side with a clear error.
Plus ``torch.compile`` on CPU (slow), which exercises the compiled-model plumbing anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path
from tests.trainer.conftest import fast
from tests.trainer.trainshards import make_shards
from trainer.config import ConfigError, train_config_from_argv
from trainer.train import train


def _run(data: Path, out: Path, *flags: str):
    """``train`` on the fast tiny config plus ``flags`` (each string may hold several, space-separated)."""
    return train(train_config_from_argv(fast(data, out, *(x for f in flags for x in f.split()))))


@pytest.mark.gpu
def test_cuda_bf16_compile_trains(gen_shards: Path, tmp_path: Path):
    res = _run(gen_shards, tmp_path / "run", "--device cuda --max-steps 6 --eval-every 3 --peak-tflops 100")
    assert res.val_losses[6] < res.val_losses[0]
    assert res.peak_mem_gib and res.peak_mem_gib > 0 and res.mfu is not None
    state = torch.load(checkpoint_path(tmp_path / "run", 6), weights_only=True)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])  # the uncompiled model's
    import json

    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["precision"] in ("bf16", "fp16") and info["compile"] is True
    assert info["sdpa_backend"] in ("cudnn", "flash", "efficient")  # a fused kernel, chosen and recorded
    assert res.sdpa_backend == info["sdpa_backend"]


@pytest.mark.gpu
def test_cuda_nan_step_is_refused_on_the_device(gen_shards: Path, tmp_path: Path):
    """The fused AdamW's found_inf skip on CUDA: step 3's NaN loss leaves weights, moments and the
    step count of step 2 (read back a step later, yet nothing of step 3 landed)."""
    out = tmp_path / "run"
    res = _run(
        gen_shards,
        out,
        "--device cuda --no-compile --max-steps 4 --ckpt-every 1 --eval-every 0 --debug-nan-at-step 3",
    )
    assert res.bad_steps == 1 and res.final_step == 4
    s2, s3, s4 = (torch.load(checkpoint_path(out, k), weights_only=True) for k in (2, 3, 4))
    for k in s2["model"]:
        assert torch.equal(s2["model"][k], s3["model"][k]), k
    for i, st in s2["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], s3["optimizer"]["state"][i]["exp_avg"])
        assert float(st["step"]) == float(s3["optimizer"]["state"][i]["step"]) == 2.0
    assert not torch.equal(s3["model"]["lm_head.weight"], s4["model"]["lm_head.weight"])


@pytest.mark.gpu
def test_cuda_fp16_uses_grad_scaler(gen_shards: Path, tmp_path: Path):
    res = _run(
        gen_shards,
        tmp_path / "run",
        "--device cuda --precision fp16 --no-compile --max-steps 4 --eval-every 0",
    )
    assert res.final_step == 4
    state = torch.load(checkpoint_path(tmp_path / "run", 4), weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0


@pytest.mark.gpu
def test_cuda_checks_happen_before_any_kernel(tmp_path: Path, gen_shards: Path):
    bad = make_shards(tmp_path / "bad", n_docs=20, val_docs=4, vocab_size=50304)
    with pytest.raises(ValueError, match="vocab_size=50304"):
        _run(bad, tmp_path / "run", "--device", "cuda")
    with pytest.raises(ConfigError, match="--seq-len 64 exceeds"):
        _run(
            gen_shards,
            tmp_path / "run2",
            "--device cuda --block-size 32 --seq-len 64 --total-batch-tokens 256",
        )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own use of torch.jit
def test_compile_on_cpu_matches_eager(gen_shards: Path, tmp_path: Path):
    eager = _run(gen_shards, tmp_path / "eager", "--max-steps", "2", "--eval-every", "0")
    compiled = _run(gen_shards, tmp_path / "compiled", "--max-steps", "2", "--eval-every", "0", "--compile")
    for step in (1, 2):
        assert compiled.losses[step] == pytest.approx(eager.losses[step], rel=1e-4)
    state = torch.load(checkpoint_path(tmp_path / "compiled", 2), weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in state["model"])


def test_rich_progress_display_runs(gen_shards: Path, tmp_path: Path, capsys):
    res = _run(gen_shards, tmp_path / "run", "--max-steps", "2", "--eval-every", "0", "--progress")
    assert res.final_step == 2
    out = capsys.readouterr().out
    assert "training summary" in out and "tok/s" in out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own use of torch.jit
def test_compiled_run_with_evals_compiles_two_graphs_and_never_recompiles(gen_shards: Path, tmp_path: Path):
    """A compiled CPU run that evaluates at step 0, 2 and 4 (5 windows in batches of 2, so the last
    batch is padded) and trains in between: exactly one graph for eval and one for training, so
    neither the padded batch nor the switches between train and eval ever recompiled."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    try:
        res = _run(gen_shards, tmp_path / "run", "--compile --max-steps 4 --eval-every 2 --eval-windows 5")
        assert sorted(res.val_losses) == [0, 2, 4]
        assert counters["stats"]["unique_graphs"] == 2
    finally:
        torch._dynamo.reset()
