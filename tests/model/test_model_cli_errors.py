"""Issue 11 on ``python -m model``, through the real CLI in a subprocess: every bad input a user can
give is one stderr line naming the flag or file, with the documented exit status, no traceback,
and nothing already on disk changed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from model.checkpoint import checkpoint_path, first_nonfinite, save_model
from model.tools.cli import main
from tests.cli import one_error, run_module, snapshot
from tests.trainer.conftest import run_faulty

BAD = "transformer.h.0.mlp.c_proj.weight"


def model_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run_module("model", *args, **env)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("tiny", n_layer=1, n_head=2, n_embd=32, block_size=64))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-errors")
    good = root / "good.pt"
    save_model(good, tiny())
    nan = root / "nan.pt"
    ckpt = torch.load(good, weights_only=True)
    ckpt["model"][BAD][1, 2] = float("nan")  # written around the checked writer, as a diverged old run could
    torch.save(ckpt, nan)
    run = root / "run"
    save_model(checkpoint_path(run, 5), tiny(1))
    torch.save(ckpt, checkpoint_path(run, 10))
    hf = root / "hf"
    assert main(["export-hf", str(good), "--out", str(hf)]) == 0
    return {"root": root, "good": good, "nan": nan, "run": run, "hf": hf}


def test_bogus_device_is_a_usage_error(files):
    one_error(
        model_cli("sample", "--checkpoint", str(files["good"]), "--device", "bogus"), 2, "--device 'bogus'"
    )


@pytest.mark.parametrize("command", ["sample", "export-hf", "info"])
def test_nonfinite_checkpoint_is_refused_naming_the_tensor(files, tmp_path: Path, command: str):
    before = snapshot(files["root"])
    if command == "sample":
        args = ["sample", "--checkpoint", str(files["nan"]), "--device", "cpu", "--max-new-tokens", "3"]
    elif command == "export-hf":
        args = ["export-hf", str(files["nan"]), "--out", str(tmp_path / "out")]
    else:
        args = ["info", "--checkpoint", str(files["nan"])]
    proc = model_cli(*args)
    one_error(proc, 1, str(files["nan"]), BAD, "NaN or inf")
    assert "multinomial" not in proc.stderr and "probability tensor" not in proc.stderr
    assert snapshot(files["root"]) == before and not (tmp_path / "out").exists()


def test_run_folder_falls_back_to_the_newest_finite_checkpoint(files):
    proc = model_cli("sample", "--checkpoint", str(files["run"]), "--device", "cpu", "--max-new-tokens", "3",
                     "--prompt", "hi")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (warning,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning")]
    assert "step-00000010.pt could not be loaded" in warning and BAD in warning
    assert "falling back to step-00000005.pt" in warning
    assert "step-00000005.pt" in proc.stderr  # the sample table names the file actually used


def test_empty_and_unsafe_files_say_why(tmp_path: Path):
    empty = tmp_path / "empty.pt"
    empty.touch()
    one_error(model_cli("info", "--checkpoint", str(empty)), 1, str(empty), "empty (0 bytes)")

    class Evil:
        def __reduce__(self):
            return (print, ("never",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "model_config": {}, "x": Evil()}, evil)
    line = one_error(model_cli("sample", "--checkpoint", str(evil)), 1, str(evil), "unsafe to load")
    assert "weights_only=False" not in line and "never" not in line


def test_missing_checkpoint_names_the_path(tmp_path: Path):
    one_error(model_cli("sample", "--checkpoint", str(tmp_path / "nope.pt")), 1, "nope.pt", "does not exist")


def test_long_prompt_keeps_the_last_context_of_tokens(files):
    """README: a prompt longer than the context goes on with the last tokens that fit (all 64 of them)."""
    from pipeline.tokenizer import SOT_ID, get_tokenizer

    enc = get_tokenizer()
    prompt = " ".join(f"word{i} is {i * 7 % 13}." for i in range(20))
    ids = [SOT_ID, *enc.encode_ordinary(prompt)]
    n = len(ids)
    assert n > 64 + 32  # the old policy (half-block jumps) kept only n - 64 - ... of them
    proc = model_cli("sample", "--checkpoint", str(files["good"]), "--device", "cpu", "--prompt", prompt,
                     "--max-new-tokens", "1", "--temperature", "0", "--no-stop-at-eot")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (warning,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning")]
    assert f"--prompt is {n} tokens" in warning and f"first {n - 64} tokens are dropped" in warning
    assert "conditions on the last 64" in warning
    model = torch.load(files["good"], weights_only=True)
    from model.checkpoint import model_from_checkpoint

    gpt = model_from_checkpoint(model).eval()
    with torch.no_grad():  # an independent reference: one forward pass over the last 64 ids
        logits, _ = gpt(torch.tensor([ids[-64:]]))
    want = int(logits[0, -1, : gpt.config.vocab_size].argmax())
    assert proc.stdout == prompt + enc.decode([want], errors="replace") + "\n"


def test_import_hf_bad_files_name_the_file(files, tmp_path: Path):
    bad = tmp_path / "hf"
    bad.mkdir()
    (bad / "config.json").write_bytes((files["hf"] / "config.json").read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    before = snapshot(bad)
    one_error(model_cli("import-hf", str(bad), "--out", str(tmp_path / "o")), 1,
              str(bad / "model.safetensors"), "not a valid safetensors file")  # fmt: skip
    (bad / "config.json").write_text('{"n_layer": 1, "n_head": ')  # cut short
    before = snapshot(bad)
    one_error(model_cli("import-hf", str(bad), "--out", str(tmp_path / "o")), 1,
              str(bad / "config.json"), "not valid JSON")  # fmt: skip
    assert snapshot(bad) == before and not (tmp_path / "o").exists()


def test_import_hf_refuses_a_training_run_folder(files, tmp_path: Path):
    run = tmp_path / "run"
    save_model(checkpoint_path(run, 20), tiny())
    (run / "config.json").write_text("{}\n")
    before = snapshot(run)
    for extra in ((), ("--overwrite",)):
        one_error(model_cli("import-hf", str(files["hf"]), "--out", str(run), *extra), 1, f"--out {run}",
                  "is a training run folder")  # fmt: skip
    assert snapshot(run) == before


def test_import_hf_full_disk_leaves_nothing(files, tmp_path: Path):
    out = tmp_path / "imported"
    proc = run_faulty(["enospc-ckpt:0"], ["import-hf", str(files["hf"]), "--out", str(out)], cli="model")
    one_error(proc, 1, str(checkpoint_path(out, 0)), "no space left")
    assert not any(p.is_file() for p in out.rglob("*"))  # no checkpoint and no temp file
    assert main(["import-hf", str(files["hf"]), "--out", str(out)]) == 0  # the rerun works
    assert first_nonfinite(torch.load(checkpoint_path(out, 0), weights_only=True)["model"]) is None


def test_debug_shows_the_traceback(files):
    for args, env in ((["--debug"], {}), ([], {"OWTGPT_DEBUG": "1"})):
        proc = model_cli("info", "--checkpoint", str(files["nan"]), *args, **env)
        assert proc.returncode == 1 and "Traceback" in proc.stderr and BAD in proc.stderr


def test_tables_fold_long_paths_instead_of_cutting_them(tmp_path: Path):
    deep = tmp_path / ("a-long-folder-name-for-the-table-" * 6) / "model.pt"
    save_model(deep, tiny())
    proc = model_cli("info", "--checkpoint", str(deep))
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    first_cells = [ln.split("│")[1].strip() for ln in proc.stdout.splitlines() if ln.startswith("│")]
    assert "".join(first_cells) == str(deep)  # folded over several lines, every character kept


# ------------------------------------------------------------------- issue 18: import-hf's config.json


def _edited(src: Path, dest: Path, **fields) -> Path:
    """A copy of the HF folder ``src`` whose config.json has ``fields`` changed (None deletes one)."""
    dest.mkdir()
    for p in src.iterdir():
        (dest / p.name).symlink_to(p)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(fields)
    (dest / "config.json").unlink()
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_import_hf_wrong_n_head_is_refused_naming_file_field_and_value(files, tmp_path: Path):
    """n_head 4 still divides n_embd 32, so only the export's own record of n_head (2) can tell."""
    bad = _edited(files["hf"], tmp_path / "hf", n_head=4)
    out = tmp_path / "o"
    one_error(model_cli("import-hf", str(bad), "--out", str(out)), 1, str(bad / "config.json"),
              "n_head is 4", "n_head 2")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize(
    "fields, needles",
    [
        ({"n_head": 3}, ["n_head is 3", "n_embd 32 is not divisible"]),
        ({"n_head": None}, ["n_head is null"]),
        ({"n_head": 2.5}, ["n_head is 2.5", "positive integer"]),
        ({"n_layer": 2}, ["n_layer is 2", "hold 1 blocks"]),
        ({"n_embd": 64, "n_head": 2}, ["n_embd is 64", "32 wide"]),
        ({"vocab_size": 50300}, ["vocab_size is 50300", "wte has 50260 rows"]),
        ({"n_positions": 128}, ["n_positions is 128", "wpe has 64 rows"]),
        ({"n_ctx": 32}, ["n_ctx is 32", "n_positions is 64"]),
        ({"layer_norm_epsilon": "tiny"}, ["layer_norm_epsilon is 'tiny'"]),
    ],
)  # fmt: skip
def test_import_hf_checks_every_config_field(files, tmp_path: Path, capsys, fields, needles):
    bad = _edited(files["hf"], tmp_path / "hf", **fields)
    assert main(["import-hf", str(bad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert "Traceback" not in err and line.startswith(f"error: {bad / 'config.json'}: ")
    for n in needles:
        assert n in line, (n, line)
    assert not (tmp_path / "o").exists()
