"""Checkpoint I/O: atomic write + keep-last-K, weights_only loading, fallback past broken files,
refusal across a different dataset/vocab/model, RNG round trip, model package compatibility."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import checkpoint_path, list_checkpoints, load_model
from model.config import GPTConfig
from model.gpt import GPT
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig


def _payload(step: int) -> dict:
    torch.manual_seed(step)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=1, n_head=2, n_embd=16, block_size=16))
    return {
        "format": ckpt.FORMAT,
        "model": model.state_dict(),
        "model_config": model.config.to_dict(),
        "optimizer": {"state": {}, "param_groups": []},
        "step": step,
        "rng": ckpt.capture_rng(),
        "train_config": TrainConfig().to_dict(),
        "dataset_fingerprint": "abc",
        "vocab_size": 50260,
        "scaler": {},
        "counters": {"bad_steps": 0},
    }


def test_save_prune_and_load_newest(tmp_path: Path):
    for step in (5, 10, 15, 20):
        path = ckpt.save_checkpoint(tmp_path, step, _payload(step), keep_last=2)
        assert path == checkpoint_path(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020.pt", "step-00000015.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left
    payload, path = ckpt.load_latest(tmp_path)
    assert payload["step"] == 20 and path.name == "step-00000020.pt"
    # the model package reads trainer checkpoints (python -m model sample --checkpoint RUN_DIR)
    model, meta = load_model(tmp_path)
    assert meta["step"] == 20
    assert torch.equal(model.lm_head.weight, _payload(20)["model"]["lm_head.weight"])


def test_truncated_newest_falls_back_with_warning(tmp_path: Path):
    ckpt.save_checkpoint(tmp_path, 10, _payload(10), keep_last=5)
    newest = ckpt.save_checkpoint(tmp_path, 20, _payload(20), keep_last=5)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # what a kill mid-write would leave without atomic rename
    with pytest.warns(
        ckpt.CheckpointWarning,
        match=r"step-00000020.pt could not be loaded.*falling back to step-00000010.pt",
    ):
        payload, path = ckpt.load_latest(tmp_path)
    assert payload["step"] == 10 and path.name == "step-00000010.pt"


def test_every_checkpoint_broken_is_an_error(tmp_path: Path):
    p = ckpt.save_checkpoint(tmp_path, 3, _payload(3), keep_last=5)
    p.write_bytes(b"not a zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ckpt.ResumeError, match="none of its 1 checkpoints loads"):
            ckpt.load_latest(tmp_path)
    assert ckpt.load_latest(tmp_path / "empty") is None


def test_model_only_checkpoint_is_not_resumable(tmp_path: Path):
    payload = _payload(1)
    path = checkpoint_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    torch.save({"model": payload["model"], "model_config": payload["model_config"]}, path)
    with pytest.raises(ckpt.ResumeError, match="model-only checkpoint"):
        ckpt.load_checkpoint(path)


def test_unsafe_pickle_is_refused(tmp_path: Path):
    path = checkpoint_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    torch.save({**_payload(1), "evil": Path("x")}, path)  # an arbitrary class: weights_only must refuse it
    with pytest.warns(ckpt.CheckpointWarning), pytest.raises(ckpt.ResumeError):
        ckpt.load_latest(tmp_path)


def test_compatibility_checks(tmp_path: Path):
    payload = _payload(1)
    kw = dict(model_config=payload["model_config"], dataset_fingerprint="abc", vocab_size=50260)
    assert ckpt.check_compatible(payload, tmp_path, force=False, **kw) == []
    with pytest.raises(ckpt.ResumeError, match=r"(?s)dataset fingerprint abc.*!= xyz.*--force"):
        ckpt.check_compatible(payload, tmp_path, force=False, **{**kw, "dataset_fingerprint": "xyz"})
    with pytest.raises(ckpt.ResumeError, match="shard vocab size 50260"):
        ckpt.check_compatible(payload, tmp_path, force=False, **{**kw, "vocab_size": 50257})
    other = {**payload["model_config"], "n_embd": 32}
    with pytest.raises(ckpt.ResumeError, match=r"n_embd 16 \(checkpoint\) != 32"):
        ckpt.check_compatible(payload, tmp_path, force=False, **{**kw, "model_config": other})
    seen = []
    problems = ckpt.check_compatible(
        payload, tmp_path, force=True, warn=seen.append, **{**kw, "dataset_fingerprint": "xyz"}
    )
    assert len(problems) == 1 and "--force" in seen[0]


def test_rng_round_trip_through_weights_only(tmp_path: Path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ckpt.capture_rng()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.save(state, tmp_path / "rng.pt")
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_stale_temp_files_are_cleaned(tmp_path: Path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / ".step-00000005.pt.tmp-123").write_bytes(b"partial")
    assert [p.name for p in ckpt.clean_temps(tmp_path)] == [".step-00000005.pt.tmp-123"]
    assert list_checkpoints(tmp_path) == []


def test_nonfinite_weights_are_never_written(tmp_path: Path):
    good = ckpt.save_checkpoint(tmp_path, 5, _payload(5), keep_last=5)
    before = good.read_bytes()
    bad = _payload(10)
    bad["model"]["transformer.h.0.mlp.c_fc.weight"][3, 1] = float("nan")
    with pytest.raises(
        ckpt.CheckpointWriteError,
        match=r"step 10: refusing to write .*step-00000010\.pt: tensor "
        r"transformer\.h\.0\.mlp\.c_fc\.weight holds NaN or inf",
    ):
        ckpt.save_checkpoint(tmp_path, 10, bad, keep_last=1)
    assert list_checkpoints(tmp_path) == [good] and good.read_bytes() == before  # nothing written or pruned
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resume_falls_back_past_a_nonfinite_checkpoint(tmp_path: Path):
    ckpt.save_checkpoint(tmp_path, 5, _payload(5), keep_last=5)
    newer = _payload(10)
    newer["model"]["lm_head.weight"][0, 0] = float("-inf")  # tied: wte holds it too
    path = checkpoint_path(tmp_path, 10)
    torch.save(newer, path)  # bypassing the checked writer, as an older version could have
    seen: list[str] = []
    payload, used = ckpt.load_latest(tmp_path, warn=seen.append)
    assert payload["step"] == 5 and used.name == "step-00000005.pt"
    assert len(seen) == 1 and "step-00000010.pt" in seen[0] and "holds NaN or inf" in seen[0]
    assert "falling back to step-00000005.pt" in seen[0]
