"""The training loop in-process: it learns, skips non-finite steps, refuses bad input before the first
forward pass, protects run folders, and writes config.json, TensorBoard scalars/text and a profile."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from model.checkpoint import checkpoint_path
from pipeline.sampler_index import SamplerError
from tests.conftest import SHARED
from tests.trainer.conftest import fast
from tests.trainer.trainshards import make_shards
from trainer.checkpoint import ResumeError
from trainer.config import ConfigError, train_config_from_argv
from trainer.observe import read_metrics
from trainer.train import NonFiniteError, train


def run(data: Path, out: Path, *extra: str):
    return train(train_config_from_argv(fast(data, out, *extra)))


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_path(run_dir, step), weights_only=True)


@pytest.fixture(scope="module")
def learn_shards(tmp_path_factory) -> tuple[Path, str]:
    """Real OpenWebText documents when ../shared is present, generated text otherwise."""
    out = tmp_path_factory.mktemp("learn") / "shards"
    parquet = SHARED / "corpora" / "owt-sample" / "train-00000-of-00001.parquet"
    if parquet.is_file():
        import pyarrow.parquet as pq

        texts = pq.read_table(parquet, columns=["text"]).column("text").to_pylist()[:160]
        return make_shards(out, texts=texts, val_docs=16), "owt-sample"
    return make_shards(out), "generated"


def test_tiny_lowers_val_loss(learn_shards, tmp_path: Path):
    data, _what = learn_shards
    res = run(data, tmp_path / "run", "--max-steps", "16", "--eval-every", "8", "--lr", "1e-2")
    vals = res.val_losses
    assert sorted(vals) == [0, 8, 16]
    assert vals[0] > 10.0  # ~ln(50260) at init
    assert vals[16] < vals[0] - 1.0 and vals[8] < vals[0] - 1.0
    train_losses, val_logged = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert val_logged == vals and sorted(train_losses) == list(range(1, 17))


def test_nan_step_leaves_previous_weights(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    res = run(gen_shards, out, "--max-steps", "5", "--ckpt-every", "1", "--debug-nan-at-step", "4")
    assert res.bad_steps == 1
    s3, s4, s5 = (_weights(out, k) for k in (3, 4, 5))
    for k in s3["model"]:
        assert torch.equal(s3["model"][k], s4["model"][k]), k
    for i, st in s3["optimizer"]["state"].items():  # Adam moments untouched too
        assert torch.equal(st["exp_avg"], s4["optimizer"]["state"][i]["exp_avg"])
    assert not torch.equal(
        s4["model"]["lm_head.weight"], s5["model"]["lm_head.weight"]
    )  # step 5 trains again
    recs, _ = read_metrics(out / "metrics.jsonl")
    assert recs[4]["skipped"] and not recs[5]["skipped"]
    assert s5["counters"]["bad_steps"] == 1


def test_consecutive_bad_steps_stop_with_the_step(gen_shards: Path, tmp_path: Path):
    with pytest.raises(NonFiniteError, match=r"step 2: 1 consecutive steps.*--max-bad-steps 1"):
        run(
            gen_shards,
            tmp_path / "run",
            "--max-steps",
            "4",
            "--debug-nan-at-step",
            "2",
            "--max-bad-steps",
            "1",
        )


def test_vocab_mismatch_is_a_clear_error(tmp_path: Path):
    data = make_shards(tmp_path / "shards", n_docs=30, val_docs=5, vocab_size=50304)
    with pytest.raises(SamplerError, match=r"vocab_size=50304.*expects vocab_size=50260"):
        run(data, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written before the checks passed


def test_tokenizer_mismatch_is_a_clear_error(tmp_path: Path):
    data = make_shards(tmp_path / "shards", n_docs=30, val_docs=5, fingerprint="other-bpe:0123")
    with pytest.raises(SamplerError, match="other-bpe:0123"):
        run(data, tmp_path / "run")


def test_empty_val_split(tmp_path: Path):
    data = make_shards(tmp_path / "shards", n_docs=30, val_docs=0)
    with pytest.raises(ConfigError, match=r"val split is empty.*--eval-every 0"):
        run(data, tmp_path / "run")
    res = run(data, tmp_path / "run", "--eval-every", "0", "--max-steps", "1")
    assert res.final_step == 1 and res.val_losses == {}


def test_seq_len_beyond_context_before_any_work(gen_shards: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="--seq-len 64 exceeds the model's context"):
        run(
            gen_shards,
            tmp_path / "run",
            "--block-size",
            "32",
            "--seq-len",
            "64",
            "--total-batch-tokens",
            "128",
        )
    assert not (tmp_path / "run").exists()


def test_run_folder_policy(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"a folder of other files \(notes.txt\).*choose another --out"):
        run(gen_shards, out, "--max-steps", "2", "--ckpt-every", "1")  # a user's folder: not the trainer's
    (out / "notes.txt").unlink()
    run(gen_shards, out, "--max-steps", "2", "--ckpt-every", "1")
    (out / "notes.txt").write_text("mine")  # a user's file beside a run
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume.*--overwrite"):
        run(gen_shards, out, "--max-steps", "2")
    res = run(gen_shards, out, "--max-steps", "1", "--overwrite")
    assert res.start_step == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001.pt"]
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite deletes only the trainer's files
    # --resume of a finished run does nothing more; raising --max-steps continues it
    res = run(gen_shards, out, "--max-steps", "2", "--resume")
    assert (res.start_step, res.final_step) == (1, 2)


def test_resume_without_checkpoint_starts_fresh(gen_shards: Path, tmp_path: Path):
    res = run(gen_shards, tmp_path / "run", "--max-steps", "1", "--resume")
    assert (res.start_step, res.final_step) == (0, 1)


def test_resume_refuses_other_shards_unless_forced(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    run(gen_shards, out, "--max-steps", "1")
    other = make_shards(tmp_path / "other", n_docs=40, val_docs=5, seed=7)
    with pytest.raises(ResumeError, match="dataset fingerprint"):
        run(other, out, "--max-steps", "2", "--resume")
    with pytest.raises(ConfigError, match=r"--n-embd 64 differs from the run's recorded 32"):
        run(gen_shards, out, "--max-steps", "2", "--resume", "--n-embd", "64")
    res = run(other, out, "--max-steps", "2", "--resume", "--force")
    assert (res.start_step, res.final_step) == (1, 2)


def test_config_json_tensorboard_and_profile(gen_shards: Path, tmp_path: Path):
    out = tmp_path / "run"
    run(
        gen_shards,
        out,
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        "--tensorboard",
        "--sample-every",
        "2",
        "--sample-tokens",
        "8",
        "--profile",
        "--profile-wait",
        "1",
        "--profile-active",
        "1",
        "--peak-tflops",
        "1",
    )
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["max_steps"] == 4 and info["config"]["data"] == str(gen_shards)
    assert info["git"]["sha"] and set(info["versions"]) >= {"python", "torch", "numpy", "tiktoken"}
    assert info["device"].startswith("cpu") and info["world_size"] == 1 and info["precision"] == "fp32"
    assert info["grad_accum_steps"] == 2 and info["dataset_fingerprint"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    # the fixed set this test expects (not the trainer's own list, which it would only compare with itself)
    assert tags >= {"train/loss", "train/ppl", "val/loss", "val/ppl", "lr", "grad_norm", "tokens_per_s"}
    assert {"mfu", "step_time_ms"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    for split in ("train", "val"):  # perplexity is exp(loss), step by step
        loss = {e.step: e.value for e in acc.Scalars(f"{split}/loss")}
        ppl = {e.step: e.value for e in acc.Scalars(f"{split}/ppl")}
        assert ppl.keys() == loss.keys() and all(
            ppl[s] == pytest.approx(math.exp(loss[s]), rel=1e-5) for s in ppl
        )
    assert [e.step for e in acc.Scalars("val/loss")] == [0, 2, 4]
    assert 0 < acc.Scalars("mfu")[0].value < 1  # against --peak-tflops 1
    assert "sample/text_summary" in acc.Tags()["tensors"]
    traces = list((out / "profile").glob("*.pt.trace.json*"))
    assert traces, "the profiler wrote no TensorBoard trace"


def test_resume_falls_back_past_a_truncated_newest_checkpoint(gen_shards: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    run(gen_shards, out, "--max-steps", "4", "--ckpt-every", "2", "--eval-every", "0")
    newest = checkpoint_path(out, 4)
    newest.write_bytes(newest.read_bytes()[:1000])
    capsys.readouterr()
    res = run(gen_shards, out, "--max-steps", "4", "--ckpt-every", "2", "--eval-every", "0", "--resume")
    err = capsys.readouterr().err
    assert "step-00000004.pt could not be loaded" in err and "falling back to step-00000002.pt" in err
    assert (res.start_step, res.final_step) == (2, 4)
    assert torch.load(newest, weights_only=True)["step"] == 4  # rewritten whole


def test_a_bad_streak_stops_with_the_weights_it_names(gen_shards: Path, tmp_path: Path, monkeypatch):
    """Steps 3 and 4 get a NaN loss (the loss function is wrapped here, 2 micro-steps per step). Both
    updates are refused on the device, so the step-3 checkpoint holds step 2's weights, and the error
    at step 4 (read back before step 5's update is launched) names step 2 truthfully."""
    import model.gpt

    real = model.gpt.linear_cross_entropy
    calls = {"n": 0}

    def nan_on_steps_3_and_4(*args, **kwargs):
        step = calls["n"] // 2 + 1  # 2 micro-steps per optimizer step, no eval
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if step in (3, 4) else loss

    monkeypatch.setattr(model.gpt, "linear_cross_entropy", nan_on_steps_3_and_4)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"step 4: 2 consecutive.*the weights are those of step 2"):
        run(
            gen_shards,
            out,
            "--max-steps",
            "8",
            "--ckpt-every",
            "1",
            "--eval-every",
            "0",
            "--max-bad-steps",
            "2",
        )
    s2, s3 = _weights(out, 2), _weights(out, 3)
    for k in s2["model"]:
        assert torch.equal(s2["model"][k], s3["model"][k]), k
    assert s3["counters"]["bad_steps"] == 1
    assert not checkpoint_path(out, 4).exists()  # the failing step's read-back came before its save
    assert calls["n"] == 8  # steps 1-4 ran; step 5's forward never started


def test_an_update_that_makes_weights_non_finite_is_never_saved(
    gen_shards: Path, tmp_path: Path, monkeypatch
):
    """An infinite learning rate from step 2 on (patched in here: the config refuses --lr inf) gives a
    finite loss and gradient norm but non-finite weights: the run stops at step 2 and saves nothing of it."""
    import trainer.train

    real = trainer.train.lr_at
    monkeypatch.setattr(trainer.train, "lr_at", lambda step, cfg: math.inf if step >= 1 else real(step, cfg))
    out = tmp_path / "run"
    with pytest.raises(
        NonFiniteError, match=r"step 2: the update made weights non-finite.*step-00000001\.pt"
    ):
        run(gen_shards, out, "--max-steps", "4", "--ckpt-every", "1", "--eval-every", "0")
    assert not checkpoint_path(out, 2).exists()
    s1 = _weights(out, 1)
    assert all(torch.isfinite(t).all() for t in s1["model"].values())


def test_eval_pads_the_last_batch_and_weighs_every_window_once(gen_shards: Path):
    """5 windows in batches of 2: the last batch is padded to 2 rows of ignored targets; the result is
    the plain mean of the 5 windows' losses computed here with torch's cross-entropy on full logits."""
    import torch.nn.functional as F

    from pipeline.sampler import ValWindows
    from trainer.dist import DistEnv
    from trainer.evals import evaluate_loss

    torch.manual_seed(0)
    from model.gpt import GPT, GPTConfig

    model = GPT(GPTConfig.from_preset("tiny", n_layer=2, n_head=2, n_embd=32))
    val = ValWindows(gen_shards, seq_len=32, num_windows=5, batch_size=2)
    seen: list[tuple[int, ...]] = []
    real_forward = model.forward

    def spy(x, y=None):
        seen.append(tuple(x.shape))
        return real_forward(x, y)

    model.forward = spy
    got = evaluate_loss(model, val, contextlib.nullcontext, DistEnv())
    assert seen == [(2, 32)] * 3  # fixed shape: the 5th window's batch was padded
    model.forward = real_forward
    losses = []
    with torch.no_grad():
        for x, y in val:
            logits, _ = model(x)
            losses += [F.cross_entropy(logits[i], y[i]).item() for i in range(x.size(0))]
    assert len(losses) == 5
    assert got == pytest.approx(sum(losses) / 5, rel=1e-6)
