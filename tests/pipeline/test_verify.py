"""``verify``: a clean build passes; each fault is reported with its shard named and exit 1.

Faults are injected into copies of one small build. Content faults (an id >= vocab, a marker
inside a document, a broken index) are written with every checksum recomputed, header and
manifest included, so only the content checks can catch them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.format import HEADER_SIZE, Manifest, open_shard, read_header
from pipeline.tools.stats import compute_stats
from pipeline.tools.verify import errors, verify_dataset
from tests.pipeline.test_stats import build_folder
from tests.textgen import make_docs

EOT, SOT, PAD = 50256, 50257, 50258


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    docs = make_docs(90, seed=5, max_words=150)
    return build_folder(
        docs, tmp_path_factory.mktemp("verify") / "shards", shard_tokens=6_000, val_fraction=0.2
    )


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(pristine, tmp_path / "shards"))


def train_files(d: Path) -> list[str]:
    return [e.file for e in Manifest.load(d).split("train")]


def run_verify(capsys, d: Path) -> tuple[int, str]:
    """Exit status, and the problem lines (stderr) followed by the report (stdout)."""
    rc = main(["verify", str(d), "--no-progress"])
    cap = capsys.readouterr()
    return rc, cap.err + cap.out


def rewrite(d: Path, name: str, *, tokens=None, index=None) -> None:
    """Replace a shard's payload and/or index, recomputing both checksums, the header and the
    manifest entry (so the file is internally and externally consistent)."""
    path = d / name
    sh = open_shard(path)
    toks = np.array(sh.tokens) if tokens is None else tokens(np.array(sh.tokens))
    idx = np.array(sh.doc_offsets) if index is None else index(np.array(sh.doc_offsets))
    h = dataclasses.replace(
        sh.header,
        payload_sha256=hashlib.sha256(toks.astype("<u2").tobytes()).hexdigest(),
        index_sha256=hashlib.sha256(idx.astype("<u8").tobytes()).hexdigest(),
    )
    del sh
    with open(path, "r+b") as f:
        f.write(h.pack())
        f.seek(HEADER_SIZE)
        f.write(toks.astype("<u2").tobytes())
        f.seek(h.index_offset)
        f.write(idx.astype("<u8").tobytes())
    m = Manifest.load(d)
    m.shards = [
        dataclasses.replace(e, payload_sha256=h.payload_sha256) if e.file == name else e for e in m.shards
    ]
    m.dataset_fingerprint = ""
    m.__post_init__()  # recompute the dataset fingerprint for the edited shard list
    m.save(d)


def test_clean_build_passes(pristine, capsys):
    assert verify_dataset(pristine) == []
    rc, out = run_verify(capsys, pristine)
    assert rc == 0 and "OK" in out


def test_flipped_payload_byte(data, capsys):
    name = train_files(data)[1]
    with open(data / name, "r+b") as f:
        f.seek(HEADER_SIZE + 101)
        b = f.read(1)
        f.seek(HEADER_SIZE + 101)
        f.write(bytes([b[0] ^ 0x01]))
    rc, out = run_verify(capsys, data)
    assert rc == 1
    assert f"{name}: payload checksum mismatch" in out


def test_truncated_file(data, capsys):
    name = train_files(data)[0]
    path = data / name
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 64)
    rc, out = run_verify(capsys, data)
    assert rc == 1
    assert name in out and "truncated" in out


def test_wrong_magic(data, capsys):
    name = train_files(data)[0]
    with open(data / name, "r+b") as f:
        f.write(b"NOTSHARD")
    rc, out = run_verify(capsys, data)
    assert rc == 1
    assert f"{name}: bad magic" in out


def test_out_of_vocab_id_with_checksums_recomputed(data, capsys):
    name = train_files(data)[1]

    def poke(t):
        t[10] = 60_000  # >= 50260, still a valid uint16
        return t

    rewrite(data, name, tokens=poke)
    problems = verify_dataset(data)
    # the checksums, header and manifest all agree: only the content check fires
    assert len(problems) == 1, problems
    assert problems[0].file.endswith(name)
    assert "60000" in problems[0].message and ">= vocab_size 50260" in problems[0].message
    rc, out = run_verify(capsys, data)
    assert rc == 1 and name in out
    # stats keeps going on such a shard and reports the stray id
    assert compute_stats(data, splits=("train",)).splits["train"].out_of_vocab == 1


def test_manifest_lists_missing_shard(data, capsys):
    name = train_files(data)[-1]
    (data / name).unlink()
    rc, out = run_verify(capsys, data)
    assert rc == 1
    assert f"{name}: listed in manifest.json" in out and "missing" in out


def test_marker_inside_document_and_missing_start(data):
    name = train_files(data)[0]
    sh = open_shard(data / name)
    starts = np.array(sh.doc_offsets[:-1], dtype=np.int64)
    del sh

    def poke(t):
        t[starts[2] + 3] = EOT  # an <|endoftext|> inside doc 2
        t[starts[4]] = 262  # doc 4 loses its <|startoftext|>
        t[starts[5] + 1] = PAD  # padding never comes out of the encoder
        return t

    rewrite(data, name, tokens=poke)
    msgs = [p.message for p in errors(verify_dataset(data))]
    assert any("<|endoftext|> ids inside documents" in m and "docs 2" in m for m in msgs), msgs
    assert any("do not start with <|startoftext|>" in m and "docs 4" in m for m in msgs), msgs
    assert any("<|padding|> x1" in m for m in msgs), msgs
    assert len(msgs) == 3


def test_inconsistent_index(data):
    name = train_files(data)[0]

    def swap(idx):
        idx[[3, 4]] = idx[[4, 3]]  # offsets no longer non-decreasing
        return idx

    rewrite(data, name, index=swap)
    msgs = [p for p in errors(verify_dataset(data))]
    assert msgs and all(p.file.endswith(name) for p in msgs)
    assert any("index decreases" in p.message for p in msgs)


def test_every_problem_is_reported_not_only_the_first(data, capsys):
    a, b = train_files(data)[:2]
    with open(data / a, "r+b") as f:
        f.write(b"XXXXXXXX")
    with open(data / b, "r+b") as f:
        f.truncate(HEADER_SIZE + 10)
    rc, out = run_verify(capsys, data)
    assert rc == 1
    assert f"{a}: bad magic" in out and f"{b}: file is" in out


def test_edited_manifest_and_warnings(data, capsys):
    first = train_files(data)[0]
    raw = json.loads((data / "manifest.json").read_text())
    raw["shards"][0]["num_docs"] += 1  # the header disagrees, and so does the fingerprint
    (data / "manifest.json").write_text(json.dumps(raw))
    shutil.copy(data / first, data / "train-00999.bin")  # unlisted: warning
    (data / ".train-00000.bin.tmp-123").write_bytes(b"partial")  # stale temp: warning
    problems = verify_dataset(data)
    errs = errors(problems)
    assert any("dataset_fingerprint" in p.message for p in errs)
    assert any("header num_docs=" in p.message and p.file.endswith(raw["shards"][0]["file"]) for p in errs)
    warns = [p for p in problems if p.severity == "warning"]
    assert {Path(p.file).name for p in warns} == {"train-00999.bin", ".train-00000.bin.tmp-123"}
    assert main(["verify", str(data), "--json", "--no-progress"]) == 1
    js = json.loads(capsys.readouterr().out)
    assert js["ok"] is False and js["errors"] == len(errs) and js["warnings"] == 2


def test_warnings_alone_exit_zero(data, capsys):
    shutil.copy(data / train_files(data)[0], data / "train-00999.bin")
    rc, out = run_verify(capsys, data)
    assert rc == 0 and "train-00999.bin" in out and "warning" in out


def test_no_manifest_still_checks_each_file(data):
    name = train_files(data)[0]
    (data / "manifest.json").unlink()
    with open(data / name, "r+b") as f:
        f.seek(HEADER_SIZE + 7)
        f.write(b"\xff")
    problems = errors(verify_dataset(data))
    assert any(p.file.endswith("manifest.json") and "missing" in p.message for p in problems)
    assert any(p.file.endswith(name) and "payload checksum" in p.message for p in problems)


def test_header_is_checked_before_size(data):
    # a zeroed header must not be parsed into nonsense sizes
    name = train_files(data)[0]
    with open(data / name, "r+b") as f:
        f.write(b"\0" * HEADER_SIZE)
    probs = errors(verify_dataset(data))
    assert [Path(p.file).name for p in probs] == [name]
    with pytest.raises(Exception, match="bad magic"):
        read_header(data / name)


def test_module_entry_point_exit_status(data):
    """`python -m pipeline verify` as users run it: exit 1 and the shard named on stdout."""
    import subprocess
    import sys

    name = train_files(data)[0]
    with open(data / name, "r+b") as f:
        f.write(b"NOTSHARD")
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "verify", str(data)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 1, r.stderr
    assert f"{name}: bad magic" in r.stderr  # errors go to stderr (issue 18), the report to stdout
    assert "bad magic" not in r.stdout and "FAILED: 1 error(s)" in r.stdout


def test_shard_listed_twice_is_named_once(data):
    raw = json.loads((data / "manifest.json").read_text())
    first, second = raw["shards"][0], raw["shards"][1]
    raw["shards"] += [dict(first), dict(first), dict(second)]  # first x3, second x2
    raw.pop("dataset_fingerprint")
    (data / "manifest.json").write_text(json.dumps(raw))
    dup = [p.message for p in errors(verify_dataset(data)) if "more than once" in p.message]
    assert dup == sorted([f"lists {first['file']} more than once", f"lists {second['file']} more than once"])
