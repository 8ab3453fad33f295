"""Checkpoint schema: atomic save, weights_only load, newest-good fallback, wrapper prefixes."""

from __future__ import annotations

import warnings

import pytest
import torch

from model import GPT, GPTConfig
from model.checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    load_model,
    save_model,
)

SMALL = dict(n_layer=1, n_head=2, n_embd=32, block_size=16)


def small_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("tiny", **SMALL)).eval()


def same_weights(a: GPT, b: GPT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_path_and_listing(tmp_path):
    assert checkpoint_path(tmp_path, 123) == tmp_path / "checkpoints" / "step-00000123.pt"
    model = small_model(0)
    for step in (5, 100, 20):
        save_model(checkpoint_path(tmp_path, step), model)
    (tmp_path / "checkpoints" / ".step-00000200.pt.tmp-999").write_bytes(b"partial")  # a killed writer
    (tmp_path / "checkpoints" / "notes.txt").write_text("x")
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step-{s:08d}.pt" for s in (100, 20, 5)]
    assert list_checkpoints(tmp_path / "checkpoints") == list_checkpoints(tmp_path)
    assert list_checkpoints(tmp_path / "missing") == []


def test_round_trip_is_exact_and_weights_only(tmp_path):
    model = small_model(1)
    path = tmp_path / "m.pt"
    save_model(path, model, extra={"step": 7, "tokenizer_fingerprint": "fp"})
    raw = torch.load(path, weights_only=True)  # the only way anyone loads it
    assert raw["model_config"] == model.config.to_dict() and raw["step"] == 7
    assert raw["model"]["lm_head.weight"].data_ptr() == raw["model"]["transformer.wte.weight"].data_ptr()
    loaded, ckpt = load_model(path)
    assert same_weights(loaded, model) and loaded.config == model.config
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert ckpt["step"] == 7 and ckpt["checkpoint_path"] == str(path)
    idx = torch.randint(0, 1000, (1, 8))
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    with pytest.raises(ValueError, match="model_config"):
        save_model(path, model, extra={"model_config": {}})


def test_compiled_or_ddp_prefixes_are_stripped(tmp_path):
    model = small_model(2)
    state = {"_orig_mod.module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "model_config": model.config.to_dict()}, tmp_path / "p.pt")
    loaded, _ = load_model(tmp_path / "p.pt")
    assert same_weights(loaded, model)


def test_run_dir_falls_back_past_corrupt_checkpoints(tmp_path):
    good, newer = small_model(3), small_model(4)
    save_model(checkpoint_path(tmp_path, 10), good)
    save_model(checkpoint_path(tmp_path, 20), newer)
    blob = checkpoint_path(tmp_path, 20).read_bytes()
    checkpoint_path(tmp_path, 20).write_bytes(blob[: len(blob) // 2])  # truncated by a crash/copy
    torch.save({"weights": 1}, checkpoint_path(tmp_path, 30))  # loadable, but not a checkpoint
    with pytest.warns(RuntimeWarning) as record:
        loaded, ckpt = load_model(tmp_path)
    skipped = [str(w.message) for w in record]
    assert len(skipped) == 2 and "step-00000030.pt" in skipped[0] and "step-00000020.pt" in skipped[1]
    assert ckpt["checkpoint_path"].endswith("step-00000010.pt")
    assert same_weights(loaded, good)
    # a single file is loaded or refused, never silently replaced by another
    with pytest.raises(CheckpointError, match=r"step-00000020\.pt: not an owtgpt checkpoint, or truncated"):
        load_model(checkpoint_path(tmp_path, 20))


def test_unloadable_run_dir_and_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_model(tmp_path)
    checkpoint_path(tmp_path, 1).parent.mkdir()
    checkpoint_path(tmp_path, 1).write_bytes(b"not a zip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no loadable checkpoint"):
            load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": {}, "model_config": {}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(
        CheckpointError, match=r"evil\.pt: unsafe to load: it holds an object of type print"
    ) as e:
        load_model(tmp_path / "evil.pt")
    assert "weights_only=False" not in str(e.value)  # torch's advice is wrong for an untrusted file


def test_mismatched_weights_name_the_file(tmp_path):
    model = small_model(5)
    cfg = {**model.config.to_dict(), "n_embd": 64}
    torch.save({"model": model.state_dict(), "model_config": cfg}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: weights do not match"):
        load_model(tmp_path / "bad.pt")


def test_first_nonfinite_matches_a_per_tensor_check():
    from model.checkpoint import first_nonfinite

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        dtypes = (torch.float32, torch.bfloat16, torch.float16)
        state = {f"t{i}": torch.randn(3, 5, generator=g).to(dtypes[i % 3]) for i in range(6)}
        state["ids"] = torch.arange(4)  # integer tensors cannot be non-finite: ignored
        for _ in range(trial % 3):
            k = f"t{int(torch.randint(0, 6, (1,), generator=g))}"
            state[k].view(-1)[int(torch.randint(0, 15, (1,), generator=g))] = (float("nan"), float("inf"))[
                trial % 2
            ]
        expected = next(
            (k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None
        )
        assert first_nonfinite(state) == expected
    big = {"w": torch.full((4,), 3e38)}  # finite values near the fp32 limit must not overflow into "inf"
    assert first_nonfinite(big) is None


def test_load_model_keeps_only_the_weights_of_a_training_checkpoint(tmp_path):
    model = small_model(6)
    opt_state = {"state": {0: {"exp_avg": torch.ones(1000)}}, "param_groups": []}
    save_model(
        tmp_path / "t.pt", model, extra={"optimizer": opt_state, "step": 3, "rng": {"x": torch.zeros(2)}}
    )
    loaded, meta = load_model(tmp_path / "t.pt", map_location="cpu")
    assert "optimizer" not in meta and "model" not in meta and "rng" not in meta  # nothing for the device
    assert meta["step"] == 3 and meta["checkpoint_path"] == str(tmp_path / "t.pt")
    assert same_weights(loaded, model)
