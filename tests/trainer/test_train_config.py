"""TrainConfig: validation names the flag, presets < TOML < CLI, the parser covers every field."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from model.config import GPTConfig
from pipeline.errors import UserError
from trainer.config import PRESETS, ConfigError, TrainConfig, build_parser, train_config_from_argv
from trainer.dist import resolve_precision


def test_defaults_are_gpt2_nanogpt_batch():
    cfg = train_config_from_argv(["--data", "d", "--out", "o"])
    assert cfg.preset == "gpt2" and cfg.model == "gpt2"
    assert cfg.total_batch_tokens == 2**19 and cfg.seq_len == 1024
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.grad_clip) == (0.9, 0.95, 0.1, 1.0)
    assert cfg.min_lr_ratio == 0.1
    assert cfg.micro_batch is None and cfg.preset_micro_batch() == 32  # auto; 32 is auto's CPU value
    assert train_config_from_argv(["--micro-batch", "16"]).grad_accum_steps(1) == 2**19 // (16 * 1024)
    assert cfg.model_config() == GPTConfig.from_preset("gpt2")


# The trainer's flags as README.md and --help promise them, written out by hand: a field added without a flag,
# a flag renamed, or a fault-injection flag left visible all change this set.
DOCUMENTED_FLAGS = {
    "-h", "--help", "--config", "--debug",
    "--data", "--out", "--preset", "--resume", "--no-resume", "--overwrite", "--no-overwrite",
    "--force", "--no-force", "--init-from",
    "--model", "--n-layer", "--n-head", "--n-embd", "--block-size", "--dropout",
    "--seq-len", "--micro-batch", "--total-batch-tokens", "--max-steps", "--doc-aligned", "--no-doc-aligned",
    "--prefetch", "--seed",
    "--lr", "--min-lr-ratio", "--warmup-steps", "--weight-decay", "--beta1", "--beta2", "--eps",
    "--grad-clip",
    "--optimizer", "--muon-lr", "--muon-momentum", "--muon-split-qkv", "--no-muon-split-qkv",
    "--schedule", "--cooldown-frac", "--sampling",
    "--device", "--precision", "--compile", "--no-compile", "--sdpa-backend",
    "--eval-every", "--eval-windows", "--log-every", "--sample-every", "--sample-prompt", "--sample-tokens",
    "--eval-tasks", "--eval-tasks-every", "--eval-tasks-limit", "--eval-tasks-data", "--peak-tflops",
    "--progress", "--no-progress", "--tensorboard", "--no-tensorboard",
    "--ckpt-every", "--keep-last", "--max-bad-steps",
    "--profile", "--no-profile", "--profile-wait", "--profile-active",
    "--activation-checkpointing", "--no-activation-checkpointing", "--dry-run", "--no-dry-run",
}  # fmt: skip


def test_every_documented_flag_is_in_help_and_nothing_else():
    parser = build_parser()
    visible = {o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
    assert visible == DOCUMENTED_FLAGS, (
        f"missing from --help: {sorted(DOCUMENTED_FLAGS - visible)}; "
        f"undocumented: {sorted(visible - DOCUMENTED_FLAGS)}"
    )
    help_text = parser.format_help()
    assert "debug-nan" not in help_text  # the fault-injection flag is for tests only
    for a in parser._actions:
        if a.help != argparse.SUPPRESS:
            assert a.help and a.help.strip(), f"{a.option_strings} has no help text"
    for preset in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny", "finetune", "demo"):
        assert preset in help_text


def test_indivisible_total_batch_names_the_flags():
    with pytest.raises(ConfigError) as e:
        TrainConfig(total_batch_tokens=524_288, micro_batch=12, seq_len=1024)
    msg = str(e.value)
    for part in ("--total-batch-tokens 524288", "--micro-batch 12", "--seq-len 1024", "world size 1"):
        assert part in msg
    cfg = TrainConfig(total_batch_tokens=3 * 4 * 64, micro_batch=4, seq_len=64)
    assert cfg.grad_accum_steps(1) == 3
    with pytest.raises(ConfigError, match="world size 2"):
        cfg.grad_accum_steps(2)


@pytest.mark.parametrize(
    ("kwargs", "flag_name"),
    [
        ({"micro_batch": 0}, "--micro-batch"),
        ({"lr": 0.0}, "--lr"),
        ({"min_lr_ratio": 1.5}, "--min-lr-ratio"),
        ({"precision": "fp8"}, "--precision"),
        ({"device": "tpu"}, "--device"),
        ({"beta2": 1.0}, "--beta2"),
        ({"warmup_steps": -1}, "--warmup-steps"),
        ({"resume": True, "overwrite": True}, "--resume"),
        ({"block_size": 64, "seq_len": 128, "total_batch_tokens": 128 * 64}, "--seq-len"),
    ],
)
def test_invalid_values_name_their_flag(kwargs, flag_name):
    with pytest.raises(ConfigError, match=flag_name):
        TrainConfig(**kwargs)


def test_seq_len_beyond_model_context_is_caught_before_any_model():
    cfg = TrainConfig(model="tiny", seq_len=512, micro_batch=1, total_batch_tokens=512)
    with pytest.raises(ConfigError, match="--seq-len 512 exceeds the model's context of 256"):
        cfg.model_config()


def test_precision_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision(TrainConfig(), cpu) == "fp32"
    for p in ("fp16", "bf16"):
        with pytest.raises(ConfigError, match=f"--precision {p} needs CUDA"):
            resolve_precision(TrainConfig(precision=p), cpu)


def test_precedence_preset_then_toml_then_cli(tmp_path: Path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\nlr = 0.01\nmax-steps = 7\nseed = 5\nsample_prompt = "hi"\n')
    cfg = train_config_from_argv(["--config", str(toml), "--data", "d", "--seed", "9"])
    tiny = PRESETS["tiny"]
    assert cfg.preset == "tiny"
    assert cfg.micro_batch is None and cfg.preset_micro_batch() == tiny["micro_batch"]  # auto, preset's
    assert cfg.lr == 0.01 and cfg.max_steps == 7 and cfg.sample_prompt == "hi"  # TOML over the preset
    assert cfg.seed == 9  # CLI over TOML
    assert cfg.out == Path("runs/tiny")
    # the CLI preset wins over the TOML's, and the TOML still overrides that preset
    cfg2 = train_config_from_argv(["--config", str(toml), "--preset", "demo"])
    assert cfg2.preset == "demo" and cfg2.preset_micro_batch() == PRESETS["demo"]["micro_batch"]
    assert cfg2.lr == 0.01


def test_toml_errors_name_file_and_key(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("micro_bach = 4\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*'micro_bach'.*did you mean 'micro_batch'"):
        train_config_from_argv(["--config", str(bad)])
    bad.write_text('micro_batch = "four"\n')
    with pytest.raises(ConfigError, match="micro_batch = 'four' is not a int"):
        train_config_from_argv(["--config", str(bad)])
    bad.write_text("micro_batch = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        train_config_from_argv(["--config", str(bad)])
    with pytest.raises(ConfigError, match="file not found"):
        train_config_from_argv(["--config", str(tmp_path / "missing.toml")])


def test_cli_flags_parse_to_fields():
    cfg = train_config_from_argv(
        [
            "--preset",
            "tiny",
            "--no-compile",
            "--peak-tflops",
            "312",
            "--doc-aligned",
            "--debug-nan-at-step",
            "3",
            "--precision",
            "fp32",
        ]
    )
    assert cfg.compile is False and cfg.peak_tflops == 312.0 and cfg.doc_aligned is True
    assert cfg.debug_nan_at_step == 3 and cfg.precision == "fp32"
    # round trip through the plain dict stored in checkpoints
    again = TrainConfig(**{**cfg.to_dict(), "data": cfg.to_dict()["data"]})
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)


def test_cli_errors_name_the_flag_and_exit_by_kind(capsys, tmp_path: Path):
    from trainer.__main__ import main

    rc = main(
        ["--data", str(tmp_path), "--preset", "tiny", "--micro-batch", "3", "--out", str(tmp_path / "r")]
    )
    assert rc == 2
    assert "--total-batch-tokens 256 is not divisible by --micro-batch 3" in capsys.readouterr().err
    rc = main(["--data", str(tmp_path / "nowhere"), "--preset", "tiny", "--out", str(tmp_path / "r")])
    assert rc == 1  # a data problem, not a flag problem
    assert "no manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: unknown flag
        main(["--micro-bach", "3"])


@pytest.mark.parametrize(("flag", "value", "why"), [
    ("--lr", "inf", "finite"), ("--lr", "nan", "finite"), ("--lr", "0", "(0, inf)"),
    ("--weight-decay", "nan", "finite"), ("--weight-decay", "-0.1", "[0, inf)"),
    ("--eps", "0", "(0, inf)"), ("--eps", "inf", "finite"),
    ("--grad-clip", "nan", "finite"), ("--grad-clip", "inf", "finite"), ("--beta1", "1", "[0, 1)"),
    ("--beta2", "nan", "finite"), ("--min-lr-ratio", "1.5", "[0, 1]"), ("--dropout", "1", "[0, 1)"),
    ("--peak-tflops", "0", "(0, inf)"), ("--peak-tflops", "inf", "finite"),
])  # fmt: skip
def test_float_flags_must_be_finite_and_in_range(flag: str, value: str, why: str):
    with pytest.raises(ConfigError) as e:
        train_config_from_argv(["--preset", "tiny", flag, value])
    assert str(e.value).startswith(f"{flag} ") and why in str(e.value)


def test_float_flags_accept_their_edges():
    cfg = train_config_from_argv(
        [
            "--preset",
            "tiny",
            "--min-lr-ratio",
            "1",
            "--weight-decay",
            "0",
            "--grad-clip",
            "0",
            "--beta1",
            "0",
            "--dropout",
            "0",
        ]
    )
    assert cfg.min_lr_ratio == 1.0 and cfg.grad_clip == 0.0


# ------------------------------------------------ issue 18: --resume takes the run's recorded settings


def _recorded_run(tmp_path: Path, *args: str) -> Path:
    """A run folder whose config.json records the config of ``args`` (as trainer.rundir writes it)."""
    cfg = train_config_from_argv(["--data", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), *args])
    cfg.out.mkdir()
    (cfg.out / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "git": {}}))
    return cfg.out


def test_resume_restores_the_record_and_applies_what_may_change(tmp_path: Path):
    out = _recorded_run(tmp_path, "--preset", "tiny", "--n-layer", "2", "--lr", "0.002", "--seed", "5")
    cfg = train_config_from_argv(["--out", str(out), "--resume", "--max-steps", "99", "--eval-every", "3",
                            "--data", str(tmp_path / "moved"), "--seed", "5"])  # fmt: skip
    assert (cfg.preset, cfg.n_layer, cfg.lr, cfg.seed, cfg.resume) == ("tiny", 2, 0.002, 5, True)
    assert (cfg.max_steps, cfg.eval_every, cfg.data) == (99, 3, tmp_path / "moved")
    toml = tmp_path / "more.toml"
    toml.write_text("keep_last = 7\n")
    assert train_config_from_argv(["--out", str(out), "--resume", "--config", str(toml)]).keep_last == 7


def test_resume_refuses_what_changes_the_run_and_force_allows_only_non_shape(tmp_path: Path):
    out = _recorded_run(tmp_path, "--preset", "tiny")
    toml = tmp_path / "seed.toml"
    toml.write_text("seed = 9\n")
    for argv, needle in (
        (["--seed", "9"], "--seed 9 differs from the run's recorded 1337"),
        (["--config", str(toml)], "--seed 9 differs from the run's recorded 1337"),
        (["--total-batch-tokens", "512"], "--total-batch-tokens 512 differs from the run's recorded 256"),
        (["--preset", "demo"], "--preset demo differs from the run's recorded tiny"),
        (["--n-embd", "64", "--force"], r"--n-embd 64 differs from the run's recorded none \(the preset's\)"),
    ):
        with pytest.raises(ConfigError, match=needle):
            train_config_from_argv(["--out", str(out), "--resume", *argv])
    forced = train_config_from_argv(["--out", str(out), "--resume", "--seed", "9", "--force"])
    assert forced.seed == 9 and forced.force


def test_resume_without_a_record_is_a_fresh_resolve_and_a_foreign_record_is_refused(tmp_path: Path):
    cfg = train_config_from_argv(
        ["--out", str(tmp_path / "none"), "--resume", "--preset", "tiny", "--seed", "3"]
    )
    assert (cfg.preset, cfg.seed, cfg.resume) == ("tiny", 3, True)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"n_layer": 12, "model_type": "gpt2"}))
    with pytest.raises(UserError, match="is not a training run's record"):
        train_config_from_argv(["--out", str(hf), "--resume"])
