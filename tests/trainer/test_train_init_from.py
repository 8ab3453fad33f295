"""``--init-from``: fine-tuning from an owtgpt run or checkpoint, a Hugging Face folder and a hub id.

A tiny source model is trained once (generated corpus A). The checks: a fine-tune's step-0 val loss
is the source's own final val loss (same val windows), whatever form the weights travelled in; a
fine-tune lowers val loss on a corpus B the source never saw; the origin is recorded; --resume
continues the fine-tune, not the init; and the refusals name the flag.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from model.checkpoint import checkpoint_path, list_checkpoints, load_model
from model.hf import export_hf
from tests.trainer.conftest import fast, run_trainer
from tests.trainer.trainshards import make_shards
from trainer.config import ConfigError, train_config_from_argv
from trainer.init_from import InitFromError
from trainer.observe import read_metrics
from trainer.train import train

SOURCE_STEPS = 10
# every run here evaluates the same 4 val windows of 32 tokens, so val losses compare exactly
ONE_STEP = ("--max-steps", "1", "--eval-every", "1", "--warmup-steps", "0")


def run(data: Path, out: Path, *extra: str):
    return train(train_config_from_argv(fast(data, out, *extra)))


@pytest.fixture(scope="module")
def source(gen_shards: Path, tmp_path_factory) -> tuple[Path, float]:
    """A tiny model trained on corpus A: (run folder, its final val loss)."""
    out = tmp_path_factory.mktemp("source") / "run"
    res = run(gen_shards, out, "--max-steps", str(SOURCE_STEPS), "--eval-every", str(SOURCE_STEPS))
    return out, res.val_losses[SOURCE_STEPS]


@pytest.fixture(scope="module")
def hf_export(source, tmp_path_factory) -> Path:
    model, _ = load_model(source[0])
    return export_hf(model, tmp_path_factory.mktemp("export") / "hf")


def _record(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())["init_from"]


def test_init_from_hf_export_starts_at_the_source_val_loss(gen_shards, source, hf_export, tmp_path):
    src_dir, src_val = source
    res = run(gen_shards, tmp_path / "ft", "--init-from", str(hf_export), *ONE_STEP)
    assert res.val_losses[0] == pytest.approx(src_val, abs=1e-5)
    assert res.start_step == 0 and res.final_step == 1  # a fresh run: step 0, not the source's step
    record = _record(tmp_path / "ft")
    assert record["kind"] == "huggingface" and record["source"] == str(hf_export.resolve())
    ckpt = torch.load(checkpoint_path(tmp_path / "ft", 1), weights_only=True)
    assert ckpt["init_from"] == record and ckpt["step"] == 1
    # the export carries every weight, so the hash names the same weights as the source run's
    direct = run(gen_shards, tmp_path / "ft2", "--init-from", str(src_dir), *ONE_STEP)
    assert direct.val_losses[0] == src_val
    assert _record(tmp_path / "ft2")["weights_sha256"] == record["weights_sha256"]


def test_init_from_owtgpt_run_and_checkpoint_file(gen_shards, source, tmp_path):
    src_dir, src_val = source
    src_file = checkpoint_path(src_dir, SOURCE_STEPS)
    res = run(gen_shards, tmp_path / "ft", "--init-from", str(src_file), *ONE_STEP, "--warmup-steps", "4")
    assert res.val_losses[0] == src_val  # the identical weights: bit-equal loss
    record = _record(tmp_path / "ft")
    assert record["kind"] == "owtgpt" and record["checkpoint"] == str(src_file.resolve())
    assert record["source_step"] == SOURCE_STEPS and len(record["weights_sha256"]) == 64
    # only the weights: the schedule starts at step 0 (first warmup step: the tiny preset's 3e-3 / 4)
    # and the optimizer state is one step old
    train_losses, _ = read_metrics(tmp_path / "ft" / "metrics.jsonl")
    assert sorted(train_losses) == [1] and train_losses[1]["lr"] == pytest.approx(3e-3 / 4)
    ckpt = torch.load(checkpoint_path(tmp_path / "ft", 1), weights_only=True)
    assert set(ckpt["optimizer"]["state"]) and all(
        int(s["step"]) == 1 for s in ckpt["optimizer"]["state"].values()
    )


def _corpus_b(out: Path) -> Path:
    """Documents in words corpus A never uses (tests.textgen's list has none of these)."""
    words = ["orbit", "comet", "nebula", "quasar", "photon", "galaxy", "pulsar", "zenith", "apogee", "lunar"]
    rng = random.Random(7)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(60, 200))) + "." for _ in range(80)]
    return make_shards(out, texts=texts, val_docs=8)


def test_finetune_lowers_val_loss_on_a_corpus_the_source_never_saw(source, hf_export, tmp_path):
    data_b = _corpus_b(tmp_path / "shards-b")
    res = run(data_b, tmp_path / "ft", "--init-from", str(hf_export), "--max-steps", "8", "--eval-every", "8",
              "--lr", "3e-3", "--warmup-steps", "1")  # fmt: skip
    assert res.val_losses[8] < res.val_losses[0] - 0.5, res.val_losses


def _small_openai_gpt2(seed: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_init_from_hub_id_goes_through_transformers(gen_shards, tmp_path, monkeypatch):
    """The hub is unreachable here: the transformers loader is replaced by one returning a small
    model; the same model saved as a local folder must give the same start."""
    transformers = pytest.importorskip("transformers")
    hf = _small_openai_gpt2(seed=3)
    hf.config._commit_hash = "0123abcd"
    asked = []

    def from_pretrained(name, *args, **kwargs):
        asked.append(name)
        return hf

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", from_pretrained)
    res = run(gen_shards, tmp_path / "hub", "--init-from", "gpt2-medium", *ONE_STEP)
    assert asked == ["gpt2-medium"]
    record = _record(tmp_path / "hub")
    assert record["kind"] == "hub" and record["source"] == "gpt2-medium" and record["revision"] == "0123abcd"
    hf.save_pretrained(tmp_path / "folder")
    local = run(gen_shards, tmp_path / "local", "--init-from", str(tmp_path / "folder"), *ONE_STEP)
    assert res.val_losses[0] == local.val_losses[0]
    assert record["weights_sha256"] == _record(tmp_path / "local")["weights_sha256"]
    assert 9.0 < res.val_losses[0] < 12.0  # a random model: about ln(50260) = 10.8


def test_unreachable_hub_id_is_a_clear_error(gen_shards, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")

    def offline(name, *args, **kwargs):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load the files of {name}.")

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", offline)
    with pytest.raises(
        InitFromError, match=r"--init-from gpt2: no such local file or folder, and the Hugging Face hub"
    ):
        run(gen_shards, tmp_path / "ft", "--init-from", "gpt2", *ONE_STEP)
    assert not list_checkpoints(tmp_path / "ft")


def test_resume_of_a_finetune_resumes_the_run_not_the_init(gen_shards, hf_export, tmp_path):
    args = ("--max-steps", "4", "--ckpt-every", "2", "--eval-every", "0")
    straight = run(gen_shards, tmp_path / "a", "--init-from", str(hf_export), *args)
    run(gen_shards, tmp_path / "b", "--init-from", str(hf_export), *args)
    checkpoint_path(tmp_path / "b", 4).unlink()  # as if it had stopped after step 2
    # no --init-from and no shape flags: the tiny preset's own shape (4 x 128) is not the source's
    flags = ["--data", str(gen_shards), "--out", str(tmp_path / "b"), "--preset", "tiny", "--seq-len", "32",
             "--micro-batch", "2", "--total-batch-tokens", "128", "--no-tensorboard",
             *args, "--resume"]  # fmt: skip
    resumed = train(train_config_from_argv(flags))
    assert resumed.start_step == 2
    assert [resumed.losses[s] for s in (3, 4)] == [straight.losses[s] for s in (3, 4)]
    assert torch.load(checkpoint_path(tmp_path / "b", 4), weights_only=True)["init_from"] == _record(
        tmp_path / "a"
    )
    assert _record(tmp_path / "b") == _record(tmp_path / "a")


def test_refusals_name_the_flag(gen_shards, source, hf_export, tmp_path):
    src_dir, _ = source
    out = tmp_path / "ft"
    run(gen_shards, out, "--init-from", str(src_dir), "--max-steps", "1", "--eval-every", "0")
    # --resume takes the recorded source; another one is refused (restating the same one continues)
    with pytest.raises(
        ConfigError, match=r"--init-from .* differs from the run's recorded .*drop --init-from"
    ):
        run(gen_shards, out, "--init-from", str(hf_export), "--resume", "--max-steps", "2")
    again = run(
        gen_shards, out, "--init-from", str(src_dir), "--resume", "--max-steps", "2", "--eval-every", "0"
    )
    assert (again.start_step, again.final_step) == (1, 2)
    # --resume --init-from into a folder without checkpoints starts the fine-tune
    fresh = run(gen_shards, tmp_path / "new", "--init-from", str(src_dir), "--resume", *ONE_STEP)
    assert fresh.start_step == 0 and _record(tmp_path / "new")["kind"] == "owtgpt"
    cases = [
        (["--n-layer", "3"], r"--n-layer 3 conflicts with --init-from .*n_layer 2.*drop --n-layer"),
        (["--block-size", "128"], r"--block-size 128 conflicts"),
        (
            ["--seq-len", "128", "--total-batch-tokens", "512"],
            r"--seq-len 128 exceeds the context of --init-from",
        ),
    ]
    small = make_shards(tmp_path / "shards", n_docs=40, val_docs=4)
    export_hf(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)), tmp_path / "ctx64")
    for extra, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            run(small, tmp_path / "x", "--init-from", str(tmp_path / "ctx64"), *extra, *ONE_STEP)
    with pytest.raises(InitFromError, match="no such file or folder"):
        run(small, tmp_path / "x", "--init-from", str(tmp_path / "missing.pt"), *ONE_STEP)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitFromError, match="neither an owtgpt run"):
        run(small, tmp_path / "x", "--init-from", str(tmp_path / "empty"), *ONE_STEP)
    with pytest.raises(ConfigError, match="--preset finetune needs --init-from"):
        train_config_from_argv(["--preset", "finetune", "--data", str(small)])
    with pytest.raises(ConfigError, match=r"--preset finetune --resume: --out .* has no checkpoints"):
        train(
            train_config_from_argv(
                ["--preset", "finetune", "--data", str(small), "--out", str(tmp_path / "x"), "--resume"]
            )
        )
    assert not (tmp_path / "x").exists() or not list_checkpoints(tmp_path / "x")


def test_cli_refusals_are_one_line_usage_errors(gen_shards, source, tmp_path):
    src_dir, _ = source
    missing = tmp_path / "missing.pt"
    proc = run_trainer(fast(gen_shards, tmp_path / "ft", "--init-from", str(missing)))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: --init-from {missing}: no such file or folder"
    # fine-tuning a run into its own folder with --overwrite would delete the source first
    proc = run_trainer(fast(gen_shards, src_dir, "--init-from", str(src_dir), "--overwrite"))
    assert proc.returncode == 2 and "whose checkpoints --overwrite deletes" in proc.stderr
    assert checkpoint_path(src_dir, SOURCE_STEPS).is_file()
