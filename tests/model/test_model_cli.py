"""``python -m model``: sample streams what generate() produces, import/export round trip, info."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from model import GPT, GPTConfig
from model.checkpoint import checkpoint_path, load_model, save_model
from model.generate import generate
from model.tools.cli import TokenStreamDecoder, main
from pipeline.tokenizer import EOT_ID, SOT_ID, get_tokenizer

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=1, n_head=2, n_embd=32, block_size=64))
    run = tmp_path_factory.mktemp("run")
    save_model(checkpoint_path(run, 3), model, {"step": 3})
    return run


def test_stream_decoder_never_splits_characters():
    enc = get_tokenizer()
    text = "naïve café — 日本語のテキスト 🙂 done"
    ids = enc.encode_ordinary(text)
    assert any("\ufffd" in enc.decode([i]) for i in ids)  # some tokens really are partial characters
    decoder = TokenStreamDecoder(enc)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_sample_prints_prompt_and_greedy_continuation(run_dir, capsys):
    prompt = "def main():"
    assert main(["sample", "--checkpoint", str(run_dir), "--prompt", prompt, "--max-new-tokens", "20",
                 "--temperature", "0", "--device", "cpu"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    model, _ = load_model(run_dir)
    enc = get_tokenizer()
    idx = torch.tensor([[SOT_ID, *enc.encode_ordinary(prompt)]])
    new = generate(model, idx, 20, temperature=0)[0, idx.size(1) :].tolist()
    if EOT_ID in new:
        new = new[: new.index(EOT_ID)]
    assert out == prompt + enc.decode(new, errors="replace") + "\n"


def test_sample_seed_is_reproducible(run_dir, capsys):
    args = ["sample", "--checkpoint", str(run_dir), "--prompt", "x", "--max-new-tokens", "15", "--seed", "4",
            "--top-p", "0.9", "--num-samples", "2"]  # fmt: skip
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first
    assert first.count("-" * 40) == 1


def test_sample_errors_are_clear(run_dir, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"]) == 1
    assert "nope: does not exist" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(run_dir), "--top-p", "2"]) == 2
    assert "--top-p" in capsys.readouterr().err
    torch.manual_seed(0)
    other = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=100))
    save_model(tmp_path / "v100.pt", other)
    assert main(["sample", "--checkpoint", str(tmp_path / "v100.pt")]) == 1
    assert "vocab_size 100" in capsys.readouterr().err


def test_export_then_import_round_trip(run_dir, tmp_path, capsys):
    assert main(["export-hf", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert main(["export-hf", str(run_dir), "--out", str(tmp_path / "hf")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    original, _ = load_model(run_dir)
    back, ckpt = load_model(tmp_path / "imported")
    assert ckpt["checkpoint_path"].endswith("step-00000000.pt")
    assert ckpt["source"]["kind"] == "huggingface" and ckpt["tokenizer_fingerprint"].startswith(
        "owtgpt-gpt2:"
    )
    idx = torch.randint(0, 50260, (2, 16))
    with torch.no_grad():
        assert (back(idx)[0][..., :50260] - original(idx)[0][..., :50260]).abs().max().item() < 1e-5


def test_info_lists_presets_with_counts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny"):
        assert name in out
    with torch.device("meta"):
        n = GPT(GPTConfig.from_preset("gpt2")).num_params(non_embedding=False)
    assert f"{n / 1e6:,.1f}M" in out


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "model", "sample", "--help"], cwd=REPO,
                            capture_output=True, text=True, check=True)  # fmt: skip
    for flag in (
        "--checkpoint",
        "--prompt",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
    ):
        assert flag in result.stdout
