"""Build at scale: the reader process (pipeline/tools/readahead.py) and the append-only resume log
(pipeline/tools/build_state.py) keep the output bytes, errors and resume behaviour of an in-process build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard

from pipeline.format import MANIFEST_NAME, Manifest
from pipeline.tools import readahead
from pipeline.tools.build import ShardConfig, build_shards
from pipeline.tools.build_state import LEGACY_STATE_NAME, STATE_NAME, read_state
from pipeline.tools.readahead import ReadAhead, SlotRef, resolve
from pipeline.tools.sources import SourceError, open_source
from tests.pipeline.test_build import folder_bytes, write_jsonl
from tests.textgen import make_docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(
        tmp_path_factory.mktemp("scale") / "docs.jsonl", make_docs(400, seed=31, max_words=300)
    )


def test_reader_process_yields_the_in_process_chunks(corpus):
    src = open_source(str(corpus))
    want = [(c.kind, c.payload, c.start, c.count, c.input_bytes, c.first_line) for c in src.chunks(1024)]
    got, refs = [], 0
    with ReadAhead(open_source(str(corpus)), 1024, slots=3) as ra:
        assert ra._proc is not None  # jsonl is read in a child process
        for item in ra:  # 3 slots: the reader must wait for releases, the order must hold
            refs += isinstance(item, SlotRef)
            c = resolve(item)
            got.append((c.kind, c.payload, c.start, c.count, c.input_bytes, c.first_line))
            ra.release()
    assert got == want and len(want) > 10 and refs == len(want)


def test_a_chunk_larger_than_a_slot_travels_through_the_pipe(tmp_path):
    docs = ["short", "x " * 100_000, "short again"]  # a 200 KB line: larger than a 1 KiB chunk's 67 KB slot
    src = write_jsonl(tmp_path / "long.jsonl", docs)
    want = [c.payload for c in open_source(str(src)).chunks(1024)]
    with ReadAhead(open_source(str(src)), 1024, slots=2) as ra:
        got, inline = [], 0
        for item in ra:
            inline += not isinstance(item, SlotRef)
            got.append(resolve(item).payload)  # before release(): then the slot may be rewritten
            ra.release()
    assert got == want and inline >= 1


def test_reader_errors_reach_the_build_with_their_message(corpus, tmp_path):
    data = zstandard.ZstdCompressor().compress(corpus.read_bytes())
    bad = tmp_path / "cut.jsonl.zst"
    bad.write_bytes(data[: len(data) * 2 // 3])  # truncated in the middle of the zstd frame
    with pytest.raises(SourceError) as direct:
        list(open_source(str(bad)).chunks(8192))
    with ReadAhead(open_source(str(bad)), 8192, slots=4) as ra, pytest.raises(SourceError) as forked:
        list(ra)
    assert str(forked.value) == str(direct.value) and str(bad) in str(forked.value)


def test_closing_early_stops_the_reader(corpus):
    ra = ReadAhead(open_source(str(corpus)), 4096, slots=4)
    next(iter(ra))
    proc = ra._proc
    ra.close()
    assert not proc.is_alive()


def test_reader_process_build_is_byte_identical_to_in_process(corpus, tmp_path, monkeypatch):
    kw = dict(shard_tokens=5000, val_fraction=0.05, workers=2, chunk_bytes=1024)
    build_shards(ShardConfig(source=str(corpus), out=tmp_path / "forked", **kw), progress=False)
    monkeypatch.setattr(readahead, "FORKED_FORMATS", ())
    build_shards(ShardConfig(source=str(corpus), out=tmp_path / "inproc", **kw), progress=False)
    assert folder_bytes(tmp_path / "forked") == folder_bytes(tmp_path / "inproc")


def test_state_log_has_one_line_per_shard_and_ignores_a_torn_tail(corpus, tmp_path):
    out = tmp_path / "s"
    cfg = ShardConfig(source=str(corpus), out=out, shard_tokens=5000, val_fraction=0.05, workers=1)
    m = build_shards(cfg, progress=False)
    lines = (out / STATE_NAME).read_text().splitlines()
    assert len(lines) == 1 + len(m.shards)
    head = json.loads(lines[0])
    assert head["settings"] == m.settings
    state = read_state(out)
    for split in ("train", "val"):
        assert [r["file"] for r in state["splits"][split]] == [e.file for e in m.split(split)]
    # a power cut in the middle of the last append: that record is dropped, the rest stands
    (out / STATE_NAME).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    torn = read_state(out)
    assert sum(len(v) for v in torn["splits"].values()) == len(m.shards) - 1


def test_resume_from_a_legacy_state_file_is_byte_identical(corpus, tmp_path):
    kw = dict(shard_tokens=5000, val_fraction=0.05, seed=3, workers=1)
    clean = tmp_path / "clean"
    build_shards(ShardConfig(source=str(corpus), out=clean, **kw), progress=False)
    out = tmp_path / "old"
    build_shards(ShardConfig(source=str(corpus), out=out, **kw), progress=False)
    state = read_state(out)
    keep = len(state["splits"]["train"]) // 2
    for rec in state["splits"]["train"][keep:]:
        (out / rec["file"]).unlink()
    state["splits"]["train"] = state["splits"]["train"][:keep]
    # an interrupted build of an older owtgpt: the whole state in build-state.json, no manifest
    (out / LEGACY_STATE_NAME).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    (out / STATE_NAME).unlink()
    (out / MANIFEST_NAME).unlink()
    build_shards(ShardConfig(source=str(corpus), out=out, **kw), progress=False)
    assert not (out / LEGACY_STATE_NAME).exists()  # replaced by the log at the first new shard
    assert folder_bytes(out) == folder_bytes(clean)
    assert len((out / STATE_NAME).read_text().splitlines()) == 1 + len(Manifest.load(out).shards)
