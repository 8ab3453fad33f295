"""The shard format: round trips, memmap layout, and every kind of damage gets a clear error."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from pipeline import format as fmt
from pipeline.format import (
    HEADER_SIZE,
    Manifest,
    ShardDataset,
    ShardEntry,
    ShardFormatError,
    ShardHeader,
    ShardWriter,
    open_shard,
    read_header,
    shard_name,
)
from pipeline.fsutil import atomic_open, atomic_write_text, remove_stale_temps
from pipeline.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE, encode_document, tokenizer_fingerprint
from tests.textgen import make_docs

FP = "test-fp:0123"


def write_shard(path: Path, docs: list[np.ndarray], fp: str = FP) -> ShardHeader:
    with ShardWriter(path, vocab_size=VOCAB_SIZE, tokenizer_fingerprint=fp) as w:
        for d in docs:
            w.add_document(d)
        return w.finish()


@pytest.fixture(scope="module")
def docs() -> list[np.ndarray]:
    return [encode_document(t) for t in make_docs(40, seed=9)]


@pytest.fixture()
def shard(tmp_path: Path, docs) -> Path:
    path = tmp_path / shard_name("train", 0)
    write_shard(path, docs)
    return path


def test_round_trip_and_layout(shard: Path, docs) -> None:
    s = open_shard(shard)
    assert s.num_docs == len(docs) and len(s) == sum(map(len, docs))
    for i, d in enumerate(docs):
        assert np.array_equal(s.doc(i), d)
    assert isinstance(s.tokens, np.memmap) and s.tokens.dtype == np.dtype("<u2")
    assert s.tokens.offset == HEADER_SIZE and HEADER_SIZE % 4096 == 0  # page-aligned payload
    assert s.doc_offsets.dtype == np.dtype("<u8") and s.doc_offsets.offset % 8 == 0
    raw = shard.read_bytes()  # the payload is exactly the tokens, back to back, little-endian
    assert raw[HEADER_SIZE : HEADER_SIZE + 2 * len(s)] == np.concatenate(docs).astype("<u2").tobytes()
    h = s.header
    assert (h.vocab_size, h.tokenizer_fingerprint, h.num_docs) == (VOCAB_SIZE, FP, len(docs))
    assert h.payload_sha256 == hashlib.sha256(raw[HEADER_SIZE : HEADER_SIZE + 2 * len(s)]).hexdigest()
    assert shard.stat().st_size == h.file_size
    assert s.verify_checksums() == []
    with pytest.raises(IndexError):
        s.doc(len(docs))


def test_header_pack_unpack_and_counts_are_uint64() -> None:
    h = ShardHeader(VOCAB_SIZE, 2**40 + 3, 2**33 + 1, "ab" * 32, "cd" * 32, tokenizer_fingerprint())
    assert ShardHeader.unpack(h.pack()) == h
    assert len(h.pack()) == HEADER_SIZE


def test_empty_shard_opens(tmp_path: Path) -> None:
    write_shard(tmp_path / "e.bin", [])
    s = open_shard(tmp_path / "e.bin")
    assert len(s) == 0 and s.num_docs == 0 and s.verify_checksums() == []


def test_wrong_magic(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[:8] = b"NOTSHARD"
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=rf"{shard.name}: bad magic .*rerun the `python -m pipeline"):
        open_shard(shard)


def test_truncated_payload_names_file_and_sizes(shard: Path) -> None:
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(
        ShardFormatError, match=rf"{shard.name}: file is {len(data) - 100} bytes but .* requires {len(data)}"
    ):
        open_shard(shard)
    shard.write_bytes(data[:100])  # not even a header
    with pytest.raises(ShardFormatError, match="shorter than the"):
        open_shard(shard)


def test_header_count_disagreeing_with_file_size(shard: Path) -> None:
    """A header whose (CRC-consistent) num_tokens was changed: the size check catches it."""
    data = bytearray(shard.read_bytes())
    h = read_header(shard)
    forged = ShardHeader(
        h.vocab_size, h.num_tokens + 8, h.num_docs, h.payload_sha256, h.index_sha256, h.tokenizer_fingerprint
    )
    data[:HEADER_SIZE] = forged.pack()
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match=r"header \(num_tokens=\d+, num_docs=\d+\) requires"):
        open_shard(shard)


def test_corrupt_header_field_fails_crc(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[24] ^= 0x01  # inside num_tokens, CRC not updated
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="header checksum mismatch"):
        open_shard(shard)


def test_wrong_version_is_refused(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    struct.pack_into("<I", data, 8, fmt.FORMAT_VERSION + 1)
    body_len = fmt._HEADER_STRUCT.size
    struct.pack_into("<I", data, body_len, zlib.crc32(bytes(data[:body_len])))
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="format version"):
        open_shard(shard)


def test_flipped_payload_byte_is_caught_by_verify(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[HEADER_SIZE + 11] ^= 0x40
    shard.write_bytes(bytes(data))
    s = open_shard(shard)  # cheap open does not hash
    problems = s.verify_checksums()
    assert len(problems) == 1 and "payload checksum mismatch" in problems[0] and shard.name in problems[0]


def test_flipped_index_byte_is_caught_by_verify(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    assert any("index checksum" in p for p in open_shard(shard).verify_checksums())


def test_writer_refuses_out_of_vocab_ids_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    for bad in (VOCAB_SIZE, 70_000, -1):
        with (
            pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"),
            ShardWriter(path, vocab_size=VOCAB_SIZE, tokenizer_fingerprint=FP) as w,
        ):
            w.add_document(np.array([SOT_ID, bad, EOT_ID], dtype=np.int64))
        assert list(tmp_path.iterdir()) == []  # no final file, no temp


def test_writer_lengths_must_match(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path / "x.bin", vocab_size=VOCAB_SIZE, tokenizer_fingerprint=FP)
    with pytest.raises(ValueError, match="lengths sum to 5 but 3 tokens"):
        w.add_documents(np.array([1, 2, 3]), np.array([5]))
    w.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_never_replaces_good_file_until_finish(shard: Path, docs) -> None:
    before = shard.read_bytes()
    w = ShardWriter(shard, vocab_size=VOCAB_SIZE, tokenizer_fingerprint=FP)
    w.add_document(docs[0])
    assert shard.read_bytes() == before  # writing goes to a temp file
    w.abort()
    assert shard.read_bytes() == before


def _manifest(tmp: Path, docs) -> Manifest:
    entries = []
    for i, part in enumerate((docs[:25], docs[25:])):
        name = shard_name("train" if i == 0 else "val", 0)
        h = write_shard(tmp / name, part, fp=tokenizer_fingerprint())
        entries.append(
            ShardEntry(name, "train" if i == 0 else "val", h.num_tokens, h.num_docs, h.payload_sha256)
        )
    return Manifest(
        tokenizer_fingerprint(), VOCAB_SIZE, {"<|endoftext|>": EOT_ID}, "test", {"seed": 0}, entries
    )


def test_manifest_round_trip_and_dataset(tmp_path: Path, docs) -> None:
    m = _manifest(tmp_path, docs)
    m.save(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == m and loaded.dataset_fingerprint == m.dataset_fingerprint != ""
    ds = ShardDataset(tmp_path)
    assert ds.num_tokens("train") + ds.num_tokens("val") == sum(map(len, docs))
    assert [len(s) for s in ds.shards("val")] == [sum(map(len, docs[25:]))]
    with pytest.raises(ValueError, match="unknown split"):
        m.split("test")


def test_manifest_edit_and_foreign_shard_are_detected(tmp_path: Path, docs) -> None:
    m = _manifest(tmp_path, docs)
    m.save(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["shards"][0]["num_tokens"] += 1
    atomic_write_text(tmp_path / "manifest.json", json.dumps(raw))
    with pytest.raises(ShardFormatError, match=r"dataset_fingerprint .* does not match"):
        Manifest.load(tmp_path)
    m.save(tmp_path)
    write_shard(tmp_path / "train-00000.bin", docs[:3], fp=tokenizer_fingerprint())  # swapped shard
    with pytest.raises(ShardFormatError, match="does not belong to this manifest"):
        ShardDataset(tmp_path).shards("train")
    (tmp_path / "val-00000.bin").unlink()
    with pytest.raises(ShardFormatError, match="missing"):
        ShardDataset(tmp_path).shards("val")


def test_missing_manifest_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m pipeline build"):
        ShardDataset(tmp_path)


def test_atomic_open_keeps_old_file_on_error_and_stale_temps_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write(b"new half")
        raise RuntimeError("crash")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    stale = tmp_path / ".shard.bin.tmp-999"
    stale.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale] and target.exists()


def test_todays_shard_opens_and_another_magic_is_refused(shard: Path, docs) -> None:
    # the reference is the spec, not the constant: FORMAT.md's header table names the magic at offset 0
    spec = (Path(fmt.__file__).parent / "FORMAT.md").read_text()
    (spec_magic,) = re.findall(r"^\| 0 \| 8 bytes \| magic \| `(\w{8})` \|$", spec, flags=re.M)
    raw = bytearray(shard.read_bytes())
    assert raw[:8] == spec_magic.encode("ascii")
    assert struct.unpack_from("<I", raw, 176)[0] == zlib.crc32(raw[:176])  # the CRC the spec describes
    assert np.array_equal(open_shard(shard).doc(0), docs[0])
    # another format's magic with a CRC that matches it: refused for the magic alone, with the fix
    raw[:8] = b"OWTSHRD2"
    struct.pack_into("<I", raw, 176, zlib.crc32(raw[:176]))
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardFormatError) as e:
        open_shard(shard)
    msg = str(e.value)
    assert msg.count("\n") == 0 and shard.name in msg and "bad magic b'OWTSHRD2'" in msg
    assert "python -m pipeline build" in msg
