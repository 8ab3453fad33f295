"""Hugging Face parity: transformers' GPT2LMHeadModel -> import -> same logits -> export -> same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from model.hf import PADDED_ROWS_FILE, HFFormatError, export_hf, import_hf
from pipeline.errors import UserError
from pipeline.tokenizer import EOT_ID, PAD_ID, SOT_ID, UNK_ID, VOCAB_SIZE

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def small_hf(vocab_size: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=64, vocab_size=vocab_size)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # HF zero-inits biases and LN shifts: randomise them so they are checked
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_bin(model, folder: Path) -> Path:
    """OpenAI's upload on the hub: config.json + pytorch_model.bin holding a GPT2Model state dict
    (no ``transformer.`` prefix, no ``lm_head``) with the old causal-mask buffers in it."""
    folder.mkdir(parents=True)
    model.config.to_json_file(str(folder / "config.json"))
    n = model.config.n_positions
    state = {
        k.removeprefix("transformer."): v for k, v in model.state_dict().items() if k != "lm_head.weight"
    }
    for i in range(model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def hf_openai(tmp_path_factory):
    """A random 50257-row GPT-2 (OpenAI's vocabulary) saved with safetensors."""
    model = small_hf(50257)
    folder = tmp_path_factory.mktemp("hf-openai")
    model.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return model, folder


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_import_matches_transformers_logits_real_vocab(hf_openai):
    hf, folder = hf_openai
    ours = import_hf(folder)
    assert ours.config.vocab_size == VOCAB_SIZE and ours.config.padded_vocab_size == 50304
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(idx).logits
        got, _ = ours(idx)
    assert max_diff(got[..., :50257], want) < TOL


def test_imported_extra_rows_are_initialised_as_documented(hf_openai):
    hf, folder = hf_openai
    ours = import_hf(folder)
    theirs = hf.transformer.wte.weight.detach()
    wte = ours.transformer.wte.weight.detach()
    assert torch.equal(wte[:50257], theirs)
    assert torch.equal(wte[SOT_ID], theirs[EOT_ID])
    assert torch.allclose(wte[PAD_ID], theirs.mean(0)) and torch.allclose(wte[UNK_ID], theirs.mean(0))
    assert float(wte[VOCAB_SIZE:].abs().sum()) == 0.0
    assert ours.lm_head.weight is ours.transformer.wte.weight


def test_import_pytorch_model_bin_and_export_round_trip(tmp_path):
    hf = small_hf(50257, seed=2)
    ours = import_hf(save_bin(hf, tmp_path / "bin"))
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_diff(ours(idx)[0][..., :50257], hf(idx).logits) < TOL

    export_hf(ours, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["vocab_size"] == VOCAB_SIZE
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        SOT_ID,
        EOT_ID,
        PAD_ID,
    )
    back, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export", output_loading_info=True)
    back.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()
    idx = torch.randint(
        0, VOCAB_SIZE, (2, 64), generator=torch.Generator().manual_seed(4)
    )  # incl. the new ids
    with torch.no_grad():
        got = back(idx).logits
        want, _ = ours(idx)
    assert got.shape[-1] == VOCAB_SIZE
    assert max_diff(got, want[..., :VOCAB_SIZE]) < TOL


def test_export_of_trained_style_model_and_reimport(tmp_path):
    """A model of ours (random, bias-free) exports, transformers agrees, and re-import is exact."""
    torch.manual_seed(5)
    ours = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, bias=False)).eval()
    export_hf(ours, tmp_path / "x")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "x").eval()
    idx = torch.randint(0, VOCAB_SIZE, (3, 32), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert max_diff(back(idx).logits, ours(idx)[0][..., :VOCAB_SIZE]) < TOL
    again = import_hf(tmp_path / "x")
    assert again.config.vocab_size == VOCAB_SIZE  # 50260 rows are kept as they are
    # every tensor survives exactly, the padded rows too (they travel in owtgpt_padded_rows.safetensors)
    want_state, got_state = ours.state_dict(), again.state_dict()
    for key, value in got_state.items():  # the bias-free source comes back with zero biases
        want = want_state[key] if key in want_state else torch.zeros_like(value)
        assert torch.equal(value, want), key
    # without that file (a folder transformers saved itself) the padded rows are zeros
    (tmp_path / "x" / PADDED_ROWS_FILE).unlink()
    plain = import_hf(tmp_path / "x")
    assert torch.equal(plain.transformer.wte.weight[:VOCAB_SIZE], ours.transformer.wte.weight[:VOCAB_SIZE])
    assert float(plain.transformer.wte.weight.detach()[VOCAB_SIZE:].abs().sum()) == 0.0
    with pytest.raises(UserError, match="--overwrite"):
        export_hf(ours, tmp_path / "x")
    export_hf(ours, tmp_path / "x", overwrite=True)


def test_other_vocab_sizes_import_as_they_are(tmp_path):
    hf = small_hf(1000, seed=7)
    hf.save_pretrained(tmp_path)
    ours = import_hf(tmp_path)
    assert ours.config.vocab_size == 1000 and ours.config.padded_vocab_size == 1024
    idx = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert max_diff(ours(idx)[0][..., :1000], hf(idx).logits) < TOL


def test_unsupported_configs_are_refused(tmp_path):
    hf = small_hf(1000, seed=9)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key, value in (("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True),
                       ("n_inner", 100), ("model_type", "llama")):  # fmt: skip
        (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(HFFormatError, match=key if key != "model_type" else "llama"):
            import_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(HFFormatError, match="no weights found"):
        import_hf(tmp_path)
    with pytest.raises(HFFormatError, match=r"no config\.json"):
        import_hf(tmp_path / "nowhere")


def test_sharded_safetensors_folder(tmp_path):
    from safetensors.torch import save_file

    hf = small_hf(1000, seed=10)
    hf.config.to_json_file(str(tmp_path / "config.json"))
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, tmp_path / name)
    weight_map = {k: name for name, part in shards.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ours = import_hf(tmp_path)
    idx = torch.randint(0, 1000, (1, 64), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert max_diff(ours(idx)[0][..., :1000], hf(idx).logits) < TOL


def test_padded_rows_of_another_export_are_refused(tmp_path):
    export_hf(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=1000)), tmp_path / "a")
    export_hf(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)), tmp_path / "b")
    (tmp_path / "b" / PADDED_ROWS_FILE).replace(tmp_path / "a" / PADDED_ROWS_FILE)  # 44 rows, 24 needed
    with pytest.raises(HFFormatError, match=PADDED_ROWS_FILE):
        import_hf(tmp_path / "a")
