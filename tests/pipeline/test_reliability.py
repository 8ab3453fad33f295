"""Issue 18 on the real ``python -m pipeline`` CLI: a second Ctrl-C, repairs, damaged indexes and
counts, misleading messages, and the split of the same documents in every container.

Each test runs the CLI in a subprocess and asserts the exit status, exactly one stderr error line,
no traceback and (where it matters) what is on disk afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.format import HEADER_SIZE, open_shard, read_header
from pipeline.fsutil import LOCK_NAME, folder_locked_by
from pipeline.tools.build_state import STATE_NAME
from tests.cli import running_script, wait_for_line
from tests.pipeline.cli_util import one_error_line, run_cli, snapshot, write_jsonl
from tests.textgen import make_docs


def folder_bytes(out: Path) -> dict[str, bytes]:
    """The build's output (shards and manifest): not its resume log, nor hidden entries (lock, stage)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(out.iterdir())
        if p.is_file() and p.name[0] != "." and p.name != STATE_NAME
    }


# ----------------------------------------------------------------------------- 1. a second Ctrl-C


BLOCKING_WRAPPER = '''
"""python -m pipeline whose worker blocks in its third chunk (until killed, at most 60 s)."""
import sys, time
import pipeline.tools.build_workers as bw
from pipeline.__main__ import main

original, calls = bw.encode_texts, [0]

def encode_texts(texts):
    calls[0] += 1
    if calls[0] == 3:
        print("worker blocked", flush=True)
        deadline = time.monotonic() + 60  # bounded: an old build that waits for it still ends
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return original(texts)

bw.encode_texts = encode_texts  # the forked worker looks the name up at call time
sys.exit(main(sys.argv[1:]))
'''


def test_second_ctrl_c_stops_at_once_and_the_rerun_resumes(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in make_docs(300, seed=41, max_words=300)])
    flags = ("--shard-tokens", "3000", "--val-fraction", "0.05", "--workers", "1", "--chunk-bytes", "8192")
    out, ref = tmp_path / "out", tmp_path / "ref"
    wrapper = tmp_path / "blocking.py"
    wrapper.write_text(BLOCKING_WRAPPER)
    with running_script(wrapper, "build", str(src), "--out", str(out), *flags, "--quiet") as proc:
        wait_for_line(proc, "worker blocked")
        proc.send_signal(signal.SIGINT)
        wait_for_line(proc, "interrupting")  # the first one is being handled: cleanup now waits on the worker
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)  # a hang detector, not a timing
    res = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    one_error_line(res, 130, "interrupted again", "rerun the same command")
    assert folder_locked_by(out) is None  # the workers died with it: the lock is free
    again = run_cli("build", src, "--out", out, *flags, "--quiet")
    assert again.returncode == 0, again.stderr
    assert run_cli("build", src, "--out", ref, *flags, "--quiet").returncode == 0
    assert folder_bytes(out) == folder_bytes(ref)


# ----------------------------------------------------------------------------- a small finished build

FLAGS = ("--shard-tokens", "2000", "--val-fraction", "0.1", "--workers", "1", "--quiet")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source, finished folder), built once by the real CLI; tests break private copies."""
    root = tmp_path_factory.mktemp("r18")
    src = write_jsonl(root / "docs.jsonl", [{"text": d} for d in make_docs(120, seed=43, max_words=150)])
    res = run_cli("build", src, "--out", root / "shards", *FLAGS)
    assert res.returncode == 0, res.stderr
    return src, root / "shards"


@pytest.fixture
def copy(built: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    src, pristine = built
    return src, Path(shutil.copytree(pristine, tmp_path / "shards"))


def train_shards(d: Path) -> list[Path]:
    return sorted(d.glob("train-*.bin"))


def damage(path: Path, how: str) -> None:
    if how == "payload byte":
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + 11)
            b = f.read(1)
            f.seek(HEADER_SIZE + 11)
            f.write(bytes([b[0] ^ 0x40]))
    elif how == "header byte":
        with open(path, "r+b") as f:
            f.seek(30)  # inside num_tokens: the header CRC no longer matches
            f.write(b"\x7f")
    elif how == "truncated":
        os.truncate(path, path.stat().st_size - 100)
    elif how == "missing":
        path.unlink()


# ----------------------------------------------------------------------------- 3. repair on rerun


@pytest.mark.parametrize("how", ["payload byte", "header byte", "truncated", "missing"])
def test_rerun_rebuilds_only_the_damaged_shard(copy: tuple[Path, Path], built, how: str) -> None:
    src, d = copy
    shards = train_shards(d)
    assert len(shards) >= 4
    victim = shards[1]
    want = victim.read_bytes()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards if p != victim}
    damage(victim, how)
    res = run_cli("build", src, "--out", d, *FLAGS)
    assert res.returncode == 0, res.stderr
    assert victim.read_bytes() == want
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in train_shards(d) if p != victim}
    assert after == before  # the good shards were not rewritten
    assert folder_bytes(d) == folder_bytes(built[1])
    assert run_cli("verify", d, "--no-progress").returncode == 0


def test_verify_names_the_command_that_repairs(copy: tuple[Path, Path], built) -> None:
    _, d = copy
    victim = train_shards(d)[2]
    damage(victim, "header byte")
    before = snapshot(d)
    res = run_cli("verify", d, "--no-progress")
    line = one_error_line(res, 1, victim.name, "header checksum mismatch", "python -m pipeline build")
    assert "header checksum mismatch" not in res.stdout and "FAILED: 1 error(s)" in res.stdout
    assert snapshot(d) == before
    command = shlex.split(line.split("rerun `", 1)[1].split("`", 1)[0])  # the command verify names
    assert command[:4] == ["python", "-m", "pipeline", "build"]
    fixed = run_cli(*command[3:], "--quiet")
    assert fixed.returncode == 0, fixed.stderr
    assert folder_bytes(d) == folder_bytes(built[1])


# ----------------------------------------------------------------------------- 4. show --doc, damaged index


def _rewrite_index(path: Path, edit) -> None:
    """Change a shard's document index and recompute its checksum in the header (consistent file)."""
    sh = open_shard(path)
    idx = edit(np.array(sh.doc_offsets))
    h = dataclasses.replace(sh.header, index_sha256=hashlib.sha256(idx.tobytes()).hexdigest())
    data = bytearray(path.read_bytes())
    data[: len(h.pack())] = h.pack()
    data[h.index_offset :] = idx.tobytes()
    del sh
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("consistent", [False, True], ids=["raw-bytes", "checksum-recomputed"])
def test_show_doc_refuses_a_damaged_index(copy: tuple[Path, Path], consistent: bool) -> None:
    _, d = copy
    victim = train_shards(d)[0]
    h = read_header(victim)

    def shift(idx: np.ndarray) -> np.ndarray:
        idx[3] += 1  # doc 2 one token longer, doc 3 one shorter: both spans are wrong
        return idx

    if consistent:
        _rewrite_index(victim, shift)
    else:
        data = bytearray(victim.read_bytes())
        idx = shift(np.frombuffer(bytes(data[h.index_offset :]), dtype="<u8").copy())
        data[h.index_offset :] = idx.tobytes()
        victim.write_bytes(bytes(data))
    before = snapshot(d)
    res = run_cli("show", d, "--doc", "3")
    one_error_line(res, 1, victim.name, "document index is damaged", "python -m pipeline verify")
    assert res.stdout == ""
    assert snapshot(d) == before
    good = run_cli("show", d, "--doc", "3", "--split", "val")  # other shards still read fine
    assert good.returncode == 0, good.stderr


# ----------------------------------------------------------------------------- 5. edited counts


def test_edited_counts_fail_verify_and_stats_and_the_rerun_repairs(copy: tuple[Path, Path], built) -> None:
    src, d = copy
    raw = json.loads((d / "manifest.json").read_text())
    real = raw["counts"]["docs_train"]
    raw["counts"]["docs_train"] = 5  # dataset_fingerprint does not cover counts: only a recount catches it
    (d / "manifest.json").write_text(json.dumps(raw, indent=2))
    before = snapshot(d)
    res = run_cli("verify", d, "--no-progress")
    one_error_line(
        res, 1, "manifest.json", "counts.docs_train=5", f"hold {real:,}", "python -m pipeline build"
    )
    st = run_cli("stats", d, "--no-progress")
    one_error_line(st, 1, "counts.docs_train=5", "python -m pipeline build")
    assert snapshot(d) == before
    fixed = run_cli("build", src, "--out", d, *FLAGS)
    assert fixed.returncode == 0, fixed.stderr
    assert folder_bytes(d) == folder_bytes(built[1])
    assert run_cli("verify", d, "--no-progress").returncode == 0


# ----------------------------------------------------------------------------- 6. messages


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_special_file_source_is_named(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        source = tmp_path / "docs.jsonl"
        os.mkfifo(source)
        what = "named pipe (FIFO)"
    else:
        source = Path(kind)
        if not source.exists():
            pytest.skip("no /dev/zero here")
        what = "character device"
    res = run_cli("build", source, "--out", tmp_path / "out", "--quiet")
    line = one_error_line(res, 1, str(source), what, ".jsonl", "hub dataset name")
    assert "folder of them" in line and "glob" not in line  # not mistaken for a folder
    assert not (tmp_path / "out").exists()  # nothing written (a snapshot would block reading the FIFO)


def test_fifo_inside_a_source_folder_is_named(tmp_path: Path) -> None:
    src = tmp_path / "texts"
    src.mkdir()
    (src / "a.txt").write_text("one document\n")
    os.mkfifo(src / "b.txt")
    res = run_cli("build", src, "--out", tmp_path / "out", "--quiet")
    one_error_line(res, 1, str(src / "b.txt"), "named pipe (FIFO)", "move it out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 7. one split, any container


def _write_layouts(root: Path, docs: list[str]) -> dict[str, Path]:
    """The same documents as jsonl (with a blank line), parquet, and Skylion xz subsets."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [json.dumps({"text": d}) for d in docs]
    lines.insert(7, "")  # a blank jsonl line has a position too: positions differ, the split must not
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"text": docs}), root / "docs.parquet", row_group_size=16)
    sky = root / "openwebtext"
    sky.mkdir()
    half = len(docs) // 2
    for k, part in enumerate((docs[:half], docs[half:])):
        with tarfile.open(sky / f"urlsf_subset00-{k + 1}_data.xz", "w:xz") as tf:
            for i, text in enumerate(part):
                data = text.encode()
                info = tarfile.TarInfo(f"{k * half + i:07d}.txt")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return {"jsonl": root / "docs.jsonl", "parquet": root / "docs.parquet", "skylion": sky}


def _shards(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.bin"))}


def _same_split_in_every_layout(sources: dict[str, Path], root: Path, *flags: str) -> dict[str, bytes]:
    built = {}
    for name, src in sources.items():
        res = run_cli("build", src, "--out", root / f"out-{name}", *flags, "--quiet")
        assert res.returncode == 0, res.stderr
        built[name] = _shards(root / f"out-{name}")
    assert built["jsonl"] == built["parquet"] == built["skylion"]  # same docs -> same splits, same bytes
    return built["jsonl"]


def test_same_documents_split_alike_in_jsonl_parquet_and_skylion(tmp_path: Path) -> None:
    docs = make_docs(80, seed=47, max_words=60)
    shards = _same_split_in_every_layout(
        _write_layouts(tmp_path, docs), tmp_path, "--val-fraction", "0.3", "--workers", "1"
    )
    assert any(n.startswith("val-") for n in shards) and any(n.startswith("train-") for n in shards)


@pytest.mark.slow
def test_owt_sample_splits_alike_in_its_three_layouts(owt_sample: Path, tmp_path: Path) -> None:
    sources = {
        "jsonl": owt_sample / "docs.jsonl.zst",
        "parquet": owt_sample / "train-00000-of-00001.parquet",
        "skylion": owt_sample / "openwebtext",
    }
    shards = _same_split_in_every_layout(sources, tmp_path, "--val-fraction", "0.05", "--workers", "2")
    assert any(n.startswith("val-") for n in shards)


# ----------------------------------------------------------------------------- 2. build --overwrite


@pytest.mark.parametrize(
    ("names", "what"),
    [
        (("metrics.jsonl", "config.json", "checkpoints/"), "training run folder"),
        (("config.json", "model.safetensors"), "Hugging Face model folder"),
        (("notes.txt", "train-00000.bin"), "2 entries that no build wrote"),
    ],
    ids=["run", "model", "user-files"],
)
def test_overwrite_refuses_a_folder_no_build_wrote(built, tmp_path: Path, names, what: str) -> None:
    src, _ = built
    out = tmp_path / "target"
    out.mkdir()
    for n in names:
        (out / n).mkdir() if n.endswith("/") else (out / n).write_text(f"the user's {n}\n")
    before = snapshot(out)
    res = run_cli("build", src, "--out", out, *FLAGS, "--overwrite")
    one_error_line(res, 1, str(out), what, "--overwrite replaces only a folder that an earlier build wrote")
    assert snapshot(out) == before
    assert not (out / LOCK_NAME).exists()  # refused before anything was written into it


def test_interrupted_overwrite_keeps_the_old_build_and_resumes(
    copy: tuple[Path, Path], tmp_path: Path
) -> None:
    src, d = copy
    old = folder_bytes(d)
    other = ("--shard-tokens", "3000", "--val-fraction", "0.1", "--workers", "1", "--chunk-bytes", "4096")
    wrapper = tmp_path / "blocking.py"
    wrapper.write_text(BLOCKING_WRAPPER)
    with running_script(
        wrapper, "build", str(src), "--out", str(d), *other, "--overwrite", "--quiet"
    ) as proc:
        wait_for_line(proc, "worker blocked")
        assert folder_bytes(d) == old  # the new build is staged beside the old one
        proc.send_signal(signal.SIGINT)
        wait_for_line(proc, "interrupting")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert folder_bytes(d) == old  # an interrupted --overwrite lost nothing
    assert run_cli("verify", d, "--no-progress").returncode == 0
    again = run_cli("build", src, "--out", d, *other, "--overwrite", "--quiet")
    assert again.returncode == 0, again.stderr
    fresh = tmp_path / "fresh"
    assert run_cli("build", src, "--out", fresh, *other, "--quiet").returncode == 0
    assert folder_bytes(d) == folder_bytes(fresh)
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in fresh.iterdir())  # no stage left
