"""Issue 20 on CPU: ``--micro-batch auto`` (a fake card through the real search and probe code), a resume
that reuses the recorded micro batch, ``--activation-checkpointing`` in the trainer, out-of-memory as one
line with the last checkpoint intact, ``--dry-run`` and fp16 with the GradScaler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path
from tests.cli import run_module, snapshot
from tests.trainer.conftest import FAST, fast
from trainer import autobatch
from trainer import train as train_mod
from trainer.checkpoint import load_checkpoint
from trainer.config import train_config_from_argv
from trainer.memplan import GiB
from trainer.train import train


def _args(data: Path, out: Path, *extra: str, micro: str | None = "2") -> list[str]:
    args = fast(data, out, *extra)
    i = args.index("--micro-batch")
    if micro is None:
        del args[i : i + 2]
    else:
        args[i + 1] = micro
    return args


def _run(data: Path, out: Path, *extra: str, micro: str | None = "2"):
    return train(train_config_from_argv(_args(data, out, *extra, micro=micro)))


@pytest.fixture
def fake_card(monkeypatch):
    """A pretend 1 GiB card on the CPU: the real search and the real probe (real steps on a throw-away
    model on the CPU), where ``fits[0](micro_batch, checkpointing)`` False runs out of memory."""
    fits = [lambda b, ckpt: b <= 1]
    probed: list[tuple[int, bool]] = []
    real_probe = autobatch.cuda_probe

    def cuda_probe(cfg, model_config, device, amp_dtype, compiled):
        probe, cleanup = real_probe(cfg, model_config, device, amp_dtype, compiled)

        def fake(b: int, ckpt: bool) -> int:
            probed.append((b, ckpt))
            if not fits[0](b, ckpt):
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return probe(b, ckpt)  # a real forward, backward and optimizer step

        return fake, cleanup

    monkeypatch.setattr(autobatch, "can_probe", lambda device: True)
    monkeypatch.setattr(autobatch, "cuda_capacity", lambda device: GiB)
    monkeypatch.setattr(autobatch, "cuda_probe", cuda_probe)
    return fits, probed


def test_auto_keeps_the_total_batch_and_matches_a_manual_run(gen_shards: Path, tmp_path: Path, fake_card):
    _, probed = fake_card
    auto = _run(gen_shards, tmp_path / "auto", "--max-steps", "3", "--eval-every", "0", micro="auto")
    # per-rank batch 128 / 32 = 4 windows: the plan starts at 4, 4 and 2 run out of memory, 1 fits
    assert probed == [(4, False), (2, False), (1, False)]
    info = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert info["config"]["micro_batch"] == 1 and info["grad_accum_steps"] == 4
    assert info["config"]["total_batch_tokens"] == 128  # the total is kept through accumulation
    rec = info["micro_batch_auto"]
    assert rec["micro_batch"] == 1 and rec["activation_checkpointing"] is False
    assert rec["reason"].startswith("micro batch 1: 2 does not fit on this 1.0 GiB card")
    assert "probed 3 steps in" in rec["reason"]
    manual = _run(gen_shards, tmp_path / "manual", "--max-steps", "3", "--eval-every", "0", micro="1")
    assert auto.losses == manual.losses  # bit-identical: the probe changed no weights and no RNG
    a = torch.load(checkpoint_path(tmp_path / "auto", 3), weights_only=True)
    m = torch.load(checkpoint_path(tmp_path / "manual", 3), weights_only=True)
    assert all(torch.equal(a["model"][k], m["model"][k]) for k in m["model"])


def test_auto_turns_on_checkpointing_when_micro_batch_1_does_not_fit(gen_shards, tmp_path, fake_card):
    fits, probed = fake_card
    fits[0] = lambda b, ckpt: ckpt and b <= 2  # nothing without checkpointing, up to 2 with it
    res = _run(gen_shards, tmp_path / "run", "--max-steps", "1", "--eval-every", "0", micro="auto")
    assert probed == [(4, False), (2, False), (1, False), (4, True), (2, True)]
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["config"]["micro_batch"] == 2 and info["config"]["activation_checkpointing"] is True
    assert (
        "activation checkpointing turned on: micro batch 1 does not fit without it"
        in (info["micro_batch_auto"]["reason"])
    )
    assert res.final_step == 1


def test_no_micro_batch_fits_is_one_error(gen_shards: Path, tmp_path: Path, fake_card):
    fits, probed = fake_card
    fits[0] = lambda b, ckpt: False
    with pytest.raises(
        autobatch.OutOfMemory, match=r"no micro batch fits on this 1.0 GiB card.*--seq-len"
    ) as e:
        _run(gen_shards, tmp_path / "run", "--no-activation-checkpointing", micro="auto")
    assert probed == [(4, False), (2, False), (1, False)]  # --no-activation-checkpointing: never with it
    assert "try --activation-checkpointing, then a smaller --seq-len" in str(e.value)
    assert not (tmp_path / "run").exists()  # probing happens before the run folder is touched


def test_resume_uses_the_recorded_micro_batch(gen_shards: Path, tmp_path: Path, fake_card):
    fits, probed = fake_card
    out = tmp_path / "run"
    _run(gen_shards, out, "--max-steps", "2", "--eval-every", "0", "--ckpt-every", "2", micro="auto")
    assert json.loads((out / "config.json").read_text())["config"]["micro_batch"] == 1
    fits[0] = lambda b, ckpt: True  # a "bigger card" now: a fresh probe would pick 4
    probed.clear()
    resumed = _run(gen_shards, out, "--max-steps", "4", "--eval-every", "0", "--resume", micro="auto")
    assert probed == []  # no probing: the checkpoint's value
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["micro_batch"] == 1
    assert "the value the resumed run recorded" in info["micro_batch_auto"]["reason"]
    whole = _run(gen_shards, tmp_path / "whole", "--max-steps", "4", "--eval-every", "0", micro="1")
    assert {s: resumed.losses[s] for s in (3, 4)} == {s: whole.losses[s] for s in (3, 4)}


def test_auto_on_cpu_takes_the_presets_micro_batch(gen_shards: Path, tmp_path: Path, capsys):
    res = _run(gen_shards, tmp_path / "run", "--max-steps", "1", "--eval-every", "0", micro=None)
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["config"]["micro_batch"] == 4  # the tiny preset's
    assert info["micro_batch_auto"]["reason"].startswith("micro batch 4: the preset's value")
    assert "probes only on CUDA" in capsys.readouterr().out
    assert res.final_step == 1


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_activation_checkpointing_gives_bit_identical_losses(gen_shards: Path, tmp_path: Path, dropout):
    flags = ("--max-steps", "3", "--eval-every", "3", "--dropout", dropout)
    plain = _run(gen_shards, tmp_path / "plain", *flags)
    ckpt = _run(gen_shards, tmp_path / "ckpt", *flags, "--activation-checkpointing")
    assert plain.losses == ckpt.losses and plain.val_losses == ckpt.val_losses
    info = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert info["config"]["activation_checkpointing"] is True


# ------------------------------------------------------------------ out of memory


def _oom_at(monkeypatch, target, name: str, at_call: int) -> None:
    """Make ``target.name`` raise torch.OutOfMemoryError on its ``at_call``-th call."""
    real = getattr(target, name)
    calls = [0]

    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] == at_call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(target, name, wrapper)


def test_out_of_memory_in_a_step_is_one_line_and_keeps_the_checkpoint(gen_shards, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _oom_at(monkeypatch, torch.nn.utils, "clip_grad_norm_", 3)  # inside optimizer step 3
    with pytest.raises(autobatch.OutOfMemory) as err:
        _run(gen_shards, out, "--max-steps", "4", "--ckpt-every", "2", "--eval-every", "0")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("out of memory during training step 3 (micro batch 2 x T 32)")
    order = [
        msg.index(f) for f in ("--micro-batch", "--activation-checkpointing", "--seq-len", "smaller model")
    ]
    assert order == sorted(order)
    assert f"the last checkpoint {checkpoint_path(out, 2)} is intact" in msg
    assert load_checkpoint(checkpoint_path(out, 2))["step"] == 2  # loads, and is step 2's
    assert not checkpoint_path(out, 3).exists()


def test_out_of_memory_in_eval_names_the_eval(gen_shards: Path, tmp_path: Path, monkeypatch):
    _oom_at(monkeypatch, train_mod, "evaluate_loss", 2)  # the eval after step 2 (step 0's is the first)
    with pytest.raises(autobatch.OutOfMemory, match=r"during evaluation after step 2 .*no checkpoint"):
        _run(gen_shards, tmp_path / "run", "--max-steps", "4", "--eval-every", "2", "--ckpt-every", "0")


def test_out_of_memory_through_the_cli_exits_1_with_one_line(gen_shards, tmp_path, monkeypatch, capsys):
    from trainer.__main__ import main

    out = tmp_path / "run"
    _oom_at(monkeypatch, torch.nn.utils, "clip_grad_norm_", 2)
    code = main(_args(gen_shards, out, "--max-steps", "3", "--ckpt-every", "1", "--eval-every", "0"))
    err = capsys.readouterr().err
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: out of memory during training step 2")
    assert str(checkpoint_path(out, 1)) in lines[0]


# ------------------------------------------------------------------ --dry-run


def test_dry_run_prints_the_plan_and_writes_nothing(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    before = snapshot(tmp_path, gen_shards)
    proc = run_module("trainer", *_args(gen_shards, out, "--dry-run", micro=None), "--optimizer-free")
    assert proc.returncode == 2  # an unknown flag is still a usage error under --dry-run
    proc = run_module("trainer", *_args(gen_shards, out, "--dry-run", micro=None))
    assert proc.returncode == 0, proc.stderr
    for row in ("parameters", "gradients", "optimizer state (AdamW: 2 moments)", "activations per window",
                "activations at micro batch 4", "total at peak", "no checkpointing",
                "activation checkpointing"):  # fmt: skip
        assert row in proc.stdout, (row, proc.stdout)
    assert "nothing was written" in proc.stdout
    assert not out.exists() and snapshot(tmp_path, gen_shards) == before


def test_dry_run_in_process_returns_without_a_run(tmp_path: Path, capsys):
    cfg = train_config_from_argv(
        ["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r"), *FAST, "--dry-run"]
    )
    res = train(cfg)  # the data folder is not even opened
    assert res.final_step == 0 and not (tmp_path / "r").exists()
    assert "memory plan" in capsys.readouterr().out


# ------------------------------------------------------------------ fp16 + GradScaler


def test_fp16_grad_scaler_trains_and_resumes_exactly_on_cpu(gen_shards, tmp_path, monkeypatch):
    """CPU autocast runs fp16 in torch 2.13, so the GradScaler path (scale, unscale, the fused AdamW's
    found_inf, the scaler's state in the checkpoint) runs here; --precision fp16 itself stays CUDA-only
    (a CPU user gains nothing from it), so the test patches the precision choice."""
    monkeypatch.setattr(train_mod, "resolve_precision", lambda cfg, device: "fp16")
    flags = ("--eval-every", "0", "--ckpt-every", "2")
    whole = _run(gen_shards, tmp_path / "whole", "--max-steps", "4", *flags)
    part = tmp_path / "part"
    _run(gen_shards, part, "--max-steps", "2", *flags)
    resumed = _run(gen_shards, part, "--max-steps", "4", "--resume", *flags)
    assert {s: resumed.losses[s] for s in (3, 4)} == {s: whole.losses[s] for s in (3, 4)}
    assert all(torch.isfinite(torch.tensor(v)) for v in whole.losses.values())
    state = torch.load(checkpoint_path(part, 4), weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0
    ref = torch.load(checkpoint_path(tmp_path / "whole", 4), weights_only=True)
    assert all(torch.equal(ref["model"][k], state["model"][k]) for k in ref["model"])


def test_search_corrects_the_plan_with_what_it_measured():
    """A probe that measures a peak twice the plan's: auto does not compile a size the corrected plan
    rules out, and says why; a wrapped out-of-memory (as a compile reports it) counts as not fitting."""
    from model.config import GPTConfig
    from trainer.memplan import make_plan

    plan = make_plan(GPTConfig.from_preset("gpt2"), 1024, "bf16", compiled=True)
    budget = plan.peak(8, False)  # the plan alone would take 8
    tried = []

    def probe(b: int, ckpt: bool) -> int:
        tried.append(b)
        if b >= 8:
            try:
                raise torch.OutOfMemoryError("CUDA out of memory")
            except torch.OutOfMemoryError as e:
                raise RuntimeError("backend compiler failed") from e
        return plan.peak(b, ckpt) + plan.activations(b, ckpt)  # twice the plan's activations

    choice = autobatch.search([1, 2, 4, 8, 16], plan, budget, probe, False, "test card")
    assert tried == [8, 4] and choice.micro_batch == 4 and not choice.checkpointing
    assert choice.reason.startswith("micro batch 4: 8 does not fit on this test card")
    budget2 = probe(4, False)  # 4 fits exactly; 8 would need far more
    tried.clear()
    choice = autobatch.search([1, 2, 4, 8, 16], plan, budget2, probe, False, "test card")
    assert tried == [4] and "8 would need about" in choice.reason


def test_is_oom_sees_through_wrappers_and_not_past_other_errors():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as e:
            raise RuntimeError("compile failed") from e
    except RuntimeError as e:
        assert autobatch.is_oom(e)
    assert autobatch.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not autobatch.is_oom(ValueError("bad value"))
    assert not autobatch.is_oom(autobatch.OutOfMemory("out of memory during ..."))  # ours: already a line


def test_micro_batch_flag_and_toml_take_auto(tmp_path: Path, capsys):
    from trainer.config import ConfigError

    assert train_config_from_argv(["--micro-batch", "auto"]).micro_batch is None
    assert train_config_from_argv(["--micro-batch", "8"]).micro_batch == 8
    toml = tmp_path / "run.toml"
    toml.write_text('micro_batch = "auto"\n')
    assert train_config_from_argv(["--config", str(toml), "--micro-batch", "16"]).micro_batch == 16
    assert train_config_from_argv(["--config", str(toml)]).micro_batch is None
    with pytest.raises(SystemExit) as e:
        train_config_from_argv(["--micro-batch", "many"])
    assert e.value.code == 2 and "'many' is neither an integer nor auto" in capsys.readouterr().err
    with pytest.raises(
        ConfigError,
        match=r"--total-batch-tokens 100 is not divisible by --seq-len 64 .* no --micro-batch \(auto\)",
    ):
        train_config_from_argv(["--micro-batch", "auto", "--seq-len", "64", "--total-batch-tokens", "100"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own use of torch.jit
def test_activation_checkpointing_under_torch_compile(gen_shards: Path, tmp_path: Path):
    """torch.compile traces the non-reentrant checkpoint (one graph, the recompute in its backward): the
    same losses as the compiled run without it, to float rounding (inductor may fuse the two differently)."""
    torch._dynamo.reset()
    try:
        flags = ("--max-steps", "2", "--eval-every", "2", "--compile")
        plain = _run(gen_shards, tmp_path / "plain", *flags)
        ckpt = _run(gen_shards, tmp_path / "ckpt", *flags, "--activation-checkpointing")
    finally:
        torch._dynamo.reset()
    for step in (1, 2):
        assert ckpt.losses[step] == pytest.approx(plain.losses[step], rel=1e-5)
    assert ckpt.val_losses[2] == pytest.approx(plain.val_losses[2], rel=1e-5)
