"""Issue 18 on ``export-hf`` / ``import-hf``: they write only a new or empty folder (or file), or with
``--overwrite`` an earlier output of their own, recognised by its own record; everything else (a
training run, a run's checkpoints, a shard folder, the source's folder, a user's files, a FIFO) is
refused, naming what it is, and nothing on disk changes. An export is replaced whole and atomically.

The headline case of each class runs the real CLI in a subprocess; the variants of a class call the
same ``main`` in this process (faster: no interpreter and torch start per variant).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from model.checkpoint import checkpoint_path, load_model, save_model
from model.tools.cli import main
from pipeline.fsutil import EXPORT_MARKER
from tests.cli import one_error, run_module, snapshot


def model_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("model", *args)


def in_process(capsys, code: int, *args: str) -> str:
    """``main(args)`` in this process: its exit status, and its one stderr error line (returned)."""
    assert main(list(args)) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(lines) == (code != 0), err
    return lines[0] if lines else ""


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("tiny", n_layer=1, n_head=2, n_embd=32, block_size=64))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    """A training run, a shard folder, a user's folder, a source checkpoint and an earlier export."""
    from tests.trainer.trainshards import make_shards

    root = tmp_path_factory.mktemp("outs")
    run = root / "run"
    save_model(checkpoint_path(run, 5), tiny(), {"step": 5})
    (run / "config.json").write_text(json.dumps({"config": {"preset": "tiny"}, "git": {}}) + "\n")
    (run / "metrics.jsonl").write_text('{"step": 5}\n')
    shards = make_shards(root / "shards", n_docs=12, val_docs=2)
    user = root / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}\n')
    (user / "notes.txt").write_text("keep me\n")
    src = root / "src"
    src.mkdir()
    save_model(src / "model.pt", tiny(1))
    (src / "README.md").write_text("my model\n")
    fifo = root / "fifo"
    os.mkfifo(fifo)
    hf = root / "hf"
    assert main(["export-hf", str(src / "model.pt"), "--out", str(hf)]) == 0
    return {"root": root, "run": run, "shards": shards, "user": user, "src": src, "fifo": fifo, "hf": hf}


def files_of(tree: dict[str, Path]) -> dict[str, str]:
    return snapshot(*(p for k, p in tree.items() if k not in ("root", "fifo")))


# ------------------------------------------------------------------------------------- export-hf


def test_export_into_its_own_run_folder_is_refused_and_the_run_kept(tree):
    """The issue's case: ``export-hf RUN --out RUN --overwrite`` replaced the run's config.json."""
    before = files_of(tree)
    run = tree["run"]
    line = one_error(model_cli("export-hf", str(run), "--out", str(run), "--overwrite"), 1,
                     f"--out {run}", "a training run folder", "config.json")  # fmt: skip
    assert "exported model" not in line
    assert files_of(tree) == before


@pytest.mark.parametrize(
    "out, needles",
    [
        ("run/checkpoints", ["a training run's checkpoints folder", "step-00000005.pt"]),
        ("shards", ["a shard folder", "manifest.json"]),
        ("src", ["the folder of the source checkpoint", "model.pt"]),
        ("user", ["a folder of other files", "notes.txt"]),
        ("fifo", ["a FIFO, not a folder"]),
        ("src/model.pt", ["a file, not a folder"]),
    ],
)  # fmt: skip
def test_export_refuses_every_folder_that_is_not_its_own(tree, capsys, out, needles):
    before = files_of(tree)
    source = tree["run"] if out == "run/checkpoints" else tree["src"] / "model.pt"
    dest = tree["root"] / out
    line = in_process(capsys, 1, "export-hf", str(source), "--out", str(dest), "--overwrite")
    assert line.startswith(f"error: --out {dest} is ")
    for n in needles:
        assert n in line, (n, line)
    assert files_of(tree) == before and not list(tree["root"].glob(".*incomplete*"))


def test_export_overwrite_needs_the_flag_and_replaces_only_its_own_files(tree, tmp_path, capsys):
    hf = tmp_path / "hf"
    source = tree["src"] / "model.pt"
    assert in_process(capsys, 0, "export-hf", str(source), "--out", str(hf)) == ""
    marker = json.loads((hf / EXPORT_MARKER).read_text())
    assert set(marker["files"]) | {EXPORT_MARKER} == {p.name for p in hf.iterdir()}
    line = in_process(capsys, 1, "export-hf", str(source), "--out", str(hf))
    assert "already holds an owtgpt export" in line and "--overwrite" in line
    (hf / "README.md").write_text("a model card the user wrote\n")  # not the export's: never deleted
    before = snapshot(hf)
    one_error(model_cli("export-hf", str(source), "--out", str(hf), "--overwrite"), 1,
              "also holds files it did not write", "README.md")  # fmt: skip
    assert snapshot(hf) == before
    (hf / "README.md").unlink()
    assert in_process(capsys, 0, "export-hf", str(tree["run"]), "--out", str(hf), "--overwrite") == ""
    assert not list(tmp_path.glob(".*incomplete*"))  # no temp sibling left
    assert in_process(capsys, 0, "import-hf", str(hf), "--out", str(tmp_path / "back.pt")) == ""
    want, _ = load_model(tree["run"])  # the new export holds the run's model, not the old one
    got, _ = load_model(tmp_path / "back.pt")
    assert all(torch.equal(got.state_dict()[k], v) for k, v in want.state_dict().items())


def test_an_export_that_fails_midway_leaves_the_previous_one_whole(tree, tmp_path, capsys, monkeypatch):
    import model.hf as hf_mod

    hf = tmp_path / "hf"
    assert main(["export-hf", str(tree["src"] / "model.pt"), "--out", str(hf)]) == 0
    before = snapshot(hf)
    real = hf_mod.atomic_write_bytes

    def disk_full_at_the_weights(path, data):
        if Path(path).name == "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(hf_mod, "atomic_write_bytes", disk_full_at_the_weights)
    capsys.readouterr()
    line = in_process(capsys, 1, "export-hf", str(tree["run"]), "--out", str(hf), "--overwrite")
    assert "no space left" in line
    assert snapshot(hf) == before  # the old export, every byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # and no half-written sibling


# ------------------------------------------------------------------------------------- import-hf


def test_import_into_a_run_or_its_source_is_refused(tree, capsys):
    before = files_of(tree)
    run, hf = tree["run"], tree["hf"]
    one_error(model_cli("import-hf", str(hf), "--out", str(run), "--overwrite"), 1, f"--out {run}",
              "a training run folder")  # fmt: skip
    line = in_process(capsys, 1, "import-hf", str(hf), "--out", str(hf), "--overwrite")
    assert "the source folder" in line and "export-hf folder" in line
    line = in_process(capsys, 1, "import-hf", str(hf), "--out", str(tree["shards"]), "--overwrite")
    assert "a shard folder" in line
    line = in_process(capsys, 1, "import-hf", str(hf), "--out", str(tree["user"]), "--overwrite")
    assert "a folder of other files" in line
    line = in_process(capsys, 1, "import-hf", str(hf), "--out", str(run / "checkpoints" / "step-00000009.pt"))
    assert "inside" in line and "checkpoints folder" in line
    assert files_of(tree) == before


def test_import_overwrite_replaces_only_an_earlier_import(tree, tmp_path, capsys):
    hf = tree["hf"]
    theirs = tree["src"] / "model.pt"  # a checkpoint import-hf did not write
    before = files_of(tree)
    one_error(model_cli("import-hf", str(hf), "--out", str(theirs), "--overwrite"), 1, f"--out {theirs}",
              "import-hf did not write")  # fmt: skip
    assert files_of(tree) == before
    for out in (tmp_path / "imp", tmp_path / "imp.pt"):
        assert in_process(capsys, 0, "import-hf", str(hf), "--out", str(out)) == ""
        line = in_process(capsys, 1, "import-hf", str(hf), "--out", str(out))
        assert "holds an earlier import" in line and "--overwrite" in line
        assert in_process(capsys, 0, "import-hf", str(hf), "--out", str(out), "--overwrite") == ""


def test_fifo_as_source_or_destination_says_fifo(tree, tmp_path, capsys):
    fifo = tree["fifo"]
    one_error(model_cli("import-hf", str(fifo), "--out", str(tmp_path / "o")), 1, str(fifo),
              "is a FIFO, not a folder")  # fmt: skip
    line = in_process(capsys, 1, "import-hf", str(tree["hf"]), "--out", str(fifo))
    assert "a FIFO, not a folder" in line
    assert (
        in_process(capsys, 0, "import-hf", str(tree["hf"]), "--out", str(tmp_path / "x.pt"), "--overwrite")
        == ""
    )
    os.mkfifo(tmp_path / "f.pt")
    line = in_process(capsys, 1, "import-hf", str(tree["hf"]), "--out", str(tmp_path / "f.pt"), "--overwrite")
    assert "a FIFO, not a checkpoint file" in line
    for cmd in (["export-hf", str(fifo), "--out", str(tmp_path / "e")], ["sample", "--checkpoint", str(fifo)],
                ["info", "--checkpoint", "/dev/zero"]):  # fmt: skip
        line = in_process(capsys, 1, *cmd)
        assert "not a checkpoint; give a .pt file or a run folder" in line, line
    assert not list(tmp_path.glob("o*")) and not (tmp_path / "e").exists()
