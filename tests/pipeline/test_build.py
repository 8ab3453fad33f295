"""The shard build on generated data: exact tokens against tiktoken, splits, shard sizing,
byte-identical output for any worker count, resume (including after SIGKILL), no-op reruns,
refusals, and bad input. The real-corpus versions are in test_build_real.py."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import zstandard

from pipeline.format import MANIFEST_NAME, ShardDataset, ShardHeader, open_shard
from pipeline.fsutil import LOCK_NAME
from pipeline.tokenizer import EOT_ID, SOT_ID
from pipeline.tools.build import STATE_NAME, BuildError, ShardConfig, build_shards, val_mask
from pipeline.tools.build_state import read_state
from pipeline.tools.build_workers import doc_keys
from pipeline.tools.sources import SourceError
from tests.textgen import make_docs

REPO = Path(__file__).resolve().parents[2]
GPT2 = tiktoken.get_encoding("gpt2")

SPECIAL = [
    "A page quoting <|endoftext|> literally, and <|startoftext|> and <|padding|> too.",
    "",
    "   \n\t  ",
    "after the empties",
]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    data = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if path.suffix == ".zst" else data)
    return path


def build(source: Path | str, out: Path, **kw) -> object:
    kw.setdefault("workers", 1)
    kw.setdefault("val_fraction", 0.0)
    return build_shards(ShardConfig(source=str(source), out=out, **kw), progress=False)


def split_docs(out: Path, split: str) -> list[np.ndarray]:
    return [np.asarray(s.doc(i)) for s in ShardDataset(out).shards(split) for i in range(s.num_docs)]


def folder_bytes(out: Path) -> dict[str, bytes]:
    """Every file's bytes except the build state and the writer lock (which holds the writer's pid)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name not in (STATE_NAME, LOCK_NAME)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    docs = make_docs(240, seed=11) + SPECIAL + make_docs(60, seed=12)
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl.zst", docs), docs


@pytest.fixture(scope="module")
def reference_build(corpus, tmp_path_factory) -> Path:
    """Many small shards and a val split: the build every comparison below is made against."""
    out = tmp_path_factory.mktemp("ref") / "shards"
    build(corpus[0], out, shard_tokens=3000, val_fraction=0.1, seed=5, workers=1, chunk_bytes=4096)
    return out


def test_every_doc_is_sot_tiktoken_eot_in_source_order(corpus, tmp_path: Path) -> None:
    path, docs = corpus
    m = build(path, tmp_path / "s", shard_tokens=10**9)
    kept = [d for d in docs if d.strip()]
    got = split_docs(tmp_path / "s", "train")
    assert len(got) == len(kept) and m.counts["docs_written"] == len(kept)
    for d, text in zip(got, kept, strict=True):
        assert d[0] == SOT_ID and d[-1] == EOT_ID
        assert d[1:-1].tolist() == GPT2.encode_ordinary(text)
    # nanoGPT's layout: the concatenation without SOT equals encode_ordinary + EOT per doc
    flat = np.concatenate(got)
    ref = np.concatenate([np.array([*GPT2.encode_ordinary(t), EOT_ID], dtype=np.uint16) for t in kept])
    assert np.array_equal(flat[flat != SOT_ID], ref)
    assert m.counts["source_bytes"] == sum(len(t.encode()) for t in kept)
    assert sum(e.source_bytes for e in m.shards) == m.counts["source_bytes"]


def test_literal_special_strings_are_ordinary_text(corpus, tmp_path: Path) -> None:
    build(corpus[0], tmp_path / "s")
    kept = [d for d in corpus[1] if d.strip()]
    inner = split_docs(tmp_path / "s", "train")[kept.index(SPECIAL[0])][1:-1]
    assert EOT_ID not in inner and SOT_ID not in inner and inner.max() < EOT_ID
    assert inner.tolist() == GPT2.encode_ordinary(SPECIAL[0])


def test_empty_docs_dropped_and_counted(corpus, tmp_path: Path) -> None:
    m = build(corpus[0], tmp_path / "s")
    assert m.counts["docs_dropped_empty"] == 2
    assert m.counts["docs_read"] == len(corpus[1]) == m.counts["docs_written"] + 2


def test_invalid_utf8_replaced_and_counted(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 au lait"}\n')
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_bytes(b"ok")
    (tmp_path / "txt" / "b.txt").write_bytes(b"\xff\xfebroken")
    for source, n in ((src, 2), (tmp_path / "txt", 2)):
        out = tmp_path / f"out-{source.name}"
        m = build(source, out)
        assert m.counts["docs_invalid_utf8"] == 1 and m.counts["docs_written"] == n
        texts = [GPT2.decode(d[1:-1].tolist()) for d in split_docs(out, "train")]
        assert texts[1] in ("caf\ufffd au lait", "\ufffd\ufffdbroken")


def test_shards_respect_shard_tokens_and_docs_never_straddle(reference_build: Path, corpus) -> None:
    m = ShardDataset(reference_build).manifest
    limit = m.settings["shard_tokens"]
    for split in ("train", "val"):
        shards = ShardDataset(reference_build).shards(split)
        assert len(shards) >= (3 if split == "train" else 1)
        for a, b in itertools.pairwise(shards):
            assert len(a) <= limit or a.num_docs == 1
            # closed only because the next document did not fit
            assert len(a) + len(b.doc(0)) > limit
        for s in shards:
            offs = np.asarray(s.doc_offsets)
            assert offs[0] == 0 and offs[-1] == len(s)
            toks = np.asarray(s.tokens)
            assert (toks[offs[:-1]] == SOT_ID).all() and (toks[offs[1:] - 1] == EOT_ID).all()
            assert not s.verify_checksums()


def test_val_split_is_deterministic_by_seed(reference_build: Path, corpus, tmp_path: Path) -> None:
    kept = [(i, d) for i, d in enumerate(corpus[1]) if d.strip()]
    train = [d[1:-1].tolist() for d in split_docs(reference_build, "train")]
    val = [d[1:-1].tolist() for d in split_docs(reference_build, "val")]
    want_val = val_mask(doc_keys([d for _, d in kept]), 5, 0.1)  # keyed by each document's text
    want_val[0] = True  # the first non-empty document always goes to val (never an empty val)
    assert val == [GPT2.encode_ordinary(d) for (_, d), v in zip(kept, want_val, strict=True) if v]
    assert train == [GPT2.encode_ordinary(d) for (_, d), v in zip(kept, want_val, strict=True) if not v]
    assert 0.03 < len(val) / len(kept) < 0.2
    other = tmp_path / "seed6"
    build(corpus[0], other, shard_tokens=3000, val_fraction=0.1, seed=6)
    assert [d.tolist() for d in split_docs(other, "val")] != [[SOT_ID, *v, EOT_ID] for v in val]


def test_val_mask_is_a_pure_function_of_seed_and_key() -> None:
    assert np.array_equal(doc_keys(["a", "b", "a"])[[0, 2]], doc_keys(["a", "a"]))  # text alone decides
    pos = np.arange(200_000)
    a = val_mask(pos, 7, 0.01)
    assert np.array_equal(a[1000:2000], val_mask(pos[1000:2000], 7, 0.01))
    assert abs(a.mean() - 0.01) < 0.002
    assert not np.array_equal(a, val_mask(pos, 8, 0.01))
    assert not val_mask(pos, 7, 0.0).any()


@pytest.mark.parametrize(("workers", "chunk_bytes"), [(2, 4096), (2, 1 << 20), (1, 1500)])
def test_output_bytes_identical_for_any_workers_and_chunking(
    reference_build: Path, corpus, tmp_path: Path, workers: int, chunk_bytes: int
) -> None:
    out = tmp_path / "s"
    build(
        corpus[0], out, shard_tokens=3000, val_fraction=0.1, seed=5, workers=workers, chunk_bytes=chunk_bytes
    )
    assert folder_bytes(out) == folder_bytes(reference_build)


def test_rerun_is_noop_and_other_settings_are_refused(corpus, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    build(corpus[0], out, shard_tokens=5000)

    def mtimes() -> dict[str, int]:  # the lock file is rewritten with each writer's pid: not data
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != LOCK_NAME}

    before = mtimes()
    build_shards(ShardConfig(source=str(corpus[0]), out=out, workers=1, shard_tokens=5000, val_fraction=0.0))
    assert "nothing to do" in capsys.readouterr().err
    assert mtimes() == before
    with pytest.raises(BuildError, match=r"different settings.*shard_tokens.*--overwrite"):
        build(corpus[0], out, shard_tokens=6000)
    m = build(corpus[0], out, shard_tokens=6000, overwrite=True)
    assert m.settings["shard_tokens"] == 6000
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".bin")) == [e.file for e in m.shards]


def test_unknown_shards_in_out_are_refused(corpus, tmp_path: Path) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "train-00000.bin").write_bytes(b"someone else's file")
    with pytest.raises(BuildError, match="origin is unknown"):
        build(corpus[0], out)
    assert (out / "train-00000.bin").read_bytes() == b"someone else's file"


def test_resume_keeps_finished_shards_and_matches_clean_build(
    reference_build: Path, corpus, tmp_path: Path
) -> None:
    """An interrupted build as a kill leaves it: state + some shards, no manifest, a stale temp."""
    out = tmp_path / "s"
    build(corpus[0], out, shard_tokens=3000, val_fraction=0.1, seed=5)
    state = read_state(out)
    train = state["splits"]["train"]
    keep = len(train) // 2
    (out / MANIFEST_NAME).unlink()
    for rec in train[keep:]:
        (out / rec["file"]).unlink()
    (out / ".train-00099.bin.tmp-12345").write_bytes(b"partial")
    kept_mtimes = {r["file"]: (out / r["file"]).stat().st_mtime_ns for r in train[:keep]}
    build(corpus[0], out, shard_tokens=3000, val_fraction=0.1, seed=5, workers=2)
    assert folder_bytes(out) == folder_bytes(reference_build)
    assert {f: (out / f).stat().st_mtime_ns for f in kept_mtimes} == kept_mtimes  # not redone


def test_unfinished_build_with_other_settings_is_refused(corpus, tmp_path: Path) -> None:
    out = tmp_path / "s"
    build(corpus[0], out, shard_tokens=3000)
    (out / MANIFEST_NAME).unlink()  # as if killed
    with pytest.raises(BuildError, match=r"unfinished build with different settings.*seed.*--overwrite"):
        build(corpus[0], out, shard_tokens=3000, seed=1)
    build(corpus[0], out, shard_tokens=3000, seed=1, overwrite=True)
    assert ShardDataset(out).manifest.settings["seed"] == 1


def test_damaged_shard_in_finished_build_is_rebuilt(reference_build: Path, corpus, tmp_path: Path) -> None:
    out = tmp_path / "s"
    build(corpus[0], out, shard_tokens=3000, val_fraction=0.1, seed=5)
    victim = out / "train-00002.bin"
    victim.write_bytes(victim.read_bytes()[:-10])  # truncated
    build(corpus[0], out, shard_tokens=3000, val_fraction=0.1, seed=5)
    assert folder_bytes(out) == folder_bytes(reference_build)


def test_truncated_source_fails_naming_file_and_writes_no_manifest(tmp_path: Path) -> None:
    data = "".join(json.dumps({"text": d}) + "\n" for d in make_docs(300, seed=2)).encode()
    comp = zstandard.ZstdCompressor().compress(data)
    src = tmp_path / "cut.jsonl.zst"
    src.write_bytes(comp[: len(comp) // 2])
    out = tmp_path / "s"
    with pytest.raises(SourceError, match=r"cut\.jsonl\.zst"):
        build(src, out, shard_tokens=2000)
    if not out.exists():  # nothing was finished: the folder this build created is removed again
        return
    assert not (out / MANIFEST_NAME).exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert list(out.glob("*.bin")), "a folder holding no finished shard should have been removed"
    for p in out.glob("*.bin"):  # whatever was finished before the error is a complete shard
        assert not open_shard(p).verify_checksums()


def test_build_refuses_a_vocabulary_beyond_uint16(corpus, tmp_path: Path, monkeypatch) -> None:
    from pipeline import tokenizer

    monkeypatch.setattr(tokenizer, "VOCAB_SIZE", 65_537)
    with pytest.raises(ValueError, match=r"id 65536 exceeds 65535.*refusing"):
        build(corpus[0], tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(BuildError, match="no non-empty documents"):
        build(src, tmp_path / "s")


def test_config_validation_names_the_flag(tmp_path: Path) -> None:
    for kw, flag in (
        ({"workers": 0}, "--workers"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"shard_tokens": 0}, "--shard-tokens"),
        ({"seed": -1}, "--seed"),
        ({"text_glob": " , "}, "--text-glob"),
        ({"source_format": "csv"}, "--source-format"),
    ):
        with pytest.raises(ValueError, match=flag):
            ShardConfig(source="x", out=tmp_path, **kw)


def test_cli_help_documents_every_field() -> None:
    from dataclasses import fields

    res = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    for f in fields(ShardConfig):
        flag = f.name.upper() if f.name == "source" else "--" + f.name.replace("_", "-")
        assert flag in res.stdout, flag


def _kill_when_first_shard_done(cmd: list[str], out: Path, sig: int = signal.SIGKILL) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # build-state.jsonl is written when the build starts; each finished shard appends one line to it
    while not ((out / STATE_NAME).exists() and (out / STATE_NAME).read_bytes().count(b"\n") >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard finished in 120 s"
        time.sleep(0.002)  # polling interval, not synchronisation: the file's presence is the signal
    proc.send_signal(sig)
    proc.wait()
    proc.stderr.close()
    return proc.returncode


def test_sigkill_mid_build_then_rerun_is_byte_identical(tmp_path: Path) -> None:
    docs = make_docs(900, seed=21, max_words=500)
    src = write_jsonl(tmp_path / "big.jsonl.zst", docs)
    args = [
        str(src),
        "--shard-tokens",
        "4000",
        "--val-fraction",
        "0.02",
        "--workers",
        "2",
        "--chunk-bytes",
        "16384",
        "--quiet",
    ]
    out = tmp_path / "killed"
    rc = _kill_when_first_shard_done(
        [sys.executable, "-m", "pipeline", "build", *args, "--out", str(out)], out
    )
    assert rc == -signal.SIGKILL
    assert not (out / MANIFEST_NAME).exists(), "the build finished before it could be killed"
    kept = read_state(out)["splits"]["train"]
    assert kept
    res = subprocess.run(
        [sys.executable, "-m", "pipeline", "build", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    clean = tmp_path / "clean"
    build_shards(
        ShardConfig(source=str(src), out=clean, shard_tokens=4000, val_fraction=0.02, workers=1),
        progress=False,
    )
    assert folder_bytes(out) == folder_bytes(clean)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    h = ShardHeader.unpack((out / kept[0]["file"]).read_bytes()[:4096])
    assert h.payload_sha256 == kept[0]["payload_sha256"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_cleanly(tmp_path: Path, sig: int) -> None:
    src = write_jsonl(tmp_path / "big.jsonl", make_docs(900, seed=21, max_words=500))
    out = tmp_path / "s"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "build",
        str(src),
        "--out",
        str(out),
        "--shard-tokens",
        "4000",
        "--workers",
        "1",
        "--chunk-bytes",
        "16384",
        "--quiet",
    ]
    assert _kill_when_first_shard_done(cmd, out, sig) == 130
    assert not (out / MANIFEST_NAME).exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]  # the open shard was dropped, not left
    assert read_state(out)["splits"]["train"]
