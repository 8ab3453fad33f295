"""Corpus readers: every format yields the same documents, in a deterministic order, and bad input
(corrupt archives, bad JSON, invalid UTF-8) is named or counted. All data is generated here."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.tools.sources import (
    HubSource,
    JsonlSource,
    ParquetSource,
    SkylionSource,
    SourceError,
    TextFolderSource,
    decode_chunk,
    open_source,
)
from tests.textgen import make_docs

DOCS = make_docs(60, seed=3, max_words=120)


def read_all(src, chunk_bytes: int = 1 << 20) -> tuple[list[str], list[bool]]:
    texts, bad, pos = [], [], 0
    for chunk in src.chunks(chunk_bytes):
        dec = decode_chunk(chunk)
        if chunk.count == -1:  # Skylion subset: sparse positions, increasing
            assert chunk.start >= pos
            pos = chunk.start + len(dec.texts)
        else:
            assert chunk.start == pos  # positions are contiguous whatever the chunking
            assert len(dec.texts) == chunk.count
            pos += chunk.count
        texts += dec.texts
        bad += dec.invalid_utf8
    return texts, bad


def jsonl_bytes(docs: list[str]) -> bytes:
    return "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def write_tar_xz(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w:xz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_formats_yield_docs_in_order(tmp_path: Path, suffix: str) -> None:
    raw = jsonl_bytes(DOCS)
    if suffix.endswith(".gz"):
        raw = gzip.compress(raw)
    elif suffix.endswith(".zst"):
        raw = zstandard.ZstdCompressor().compress(raw)
    path = tmp_path / f"docs{suffix}"
    path.write_bytes(raw)
    src = open_source(str(path))
    assert isinstance(src, JsonlSource)
    assert read_all(src)[0] == DOCS
    assert read_all(src, chunk_bytes=97)[0] == DOCS  # chunking never splits or reorders lines


def test_zst_with_several_frames(tmp_path: Path) -> None:
    c = zstandard.ZstdCompressor()
    path = tmp_path / "multi.jsonl.zst"
    path.write_bytes(c.compress(jsonl_bytes(DOCS[:20])) + c.compress(jsonl_bytes(DOCS[20:])))
    assert read_all(open_source(str(path)), chunk_bytes=200)[0] == DOCS


def test_jsonl_blank_lines_keep_positions_and_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": "b"}\n   \n{"text": "c"}')
    assert read_all(open_source(str(path)))[0] == ["a", "", "b", "", "c"]


def test_jsonl_invalid_utf8_is_replaced_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "bad \xff\xfe byte"}\n{"text": "lone \\ud800 surrogate"}\n')
    texts, bad = read_all(open_source(str(path)))
    assert texts[0] == "ok" and bad[0] is False
    assert texts[1] == "bad \ufffd\ufffd byte" and bad[1] is True
    assert "\ufffd" in texts[2] and bad[2] is True
    texts[2].encode("utf-8")  # no lone surrogate survives


def test_jsonl_bad_json_and_missing_field_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(SourceError, match=r"d\.jsonl: line 2 is not valid JSON"):
        read_all(open_source(str(path)))
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "a.jsonl").write_bytes(b'{"text": "1"}\n{"text": "2"}\n')
    (tmp_path / "more" / "b.jsonl").write_bytes(b'{"text": "3"}\n{"text": "4"}\n{oops}\n')
    with pytest.raises(SourceError, match=r"b\.jsonl: line 3 is not valid JSON"):  # line within its file
        read_all(open_source(str(tmp_path / "more")), chunk_bytes=1024)
    path.write_bytes(b'{"body": "x"}\n')
    with pytest.raises(SourceError, match="--text-field"):
        read_all(open_source(str(path)))
    assert read_all(open_source(str(path), text_field="body"))[0] == ["x"]


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_truncated_compressed_jsonl_names_the_file(tmp_path: Path, suffix: str) -> None:
    raw = jsonl_bytes(make_docs(400, seed=1))
    comp = zstandard.ZstdCompressor().compress(raw) if suffix.endswith("zst") else gzip.compress(raw)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(comp[: len(comp) * 2 // 3])
    with pytest.raises(SourceError, match=r"cut\.jsonl\.(zst|gz).*(truncated|corrupt)"):
        read_all(open_source(str(path)))


def test_corrupt_zst_names_the_file(tmp_path: Path) -> None:
    comp = bytearray(zstandard.ZstdCompressor().compress(jsonl_bytes(DOCS)))
    comp[len(comp) // 2] ^= 0xFF
    comp[len(comp) // 2 + 1] ^= 0xFF
    path = tmp_path / "flip.jsonl.zst"
    path.write_bytes(bytes(comp))
    with pytest.raises(SourceError, match=r"flip\.jsonl\.zst"):
        read_all(open_source(str(path)))


def test_parquet_file_and_folder_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    # written out of order on purpose: the folder is read sorted by name
    pq.write_table(pa.table({"text": DOCS[30:]}), tmp_path / "data" / "train-00001.parquet", row_group_size=7)
    pq.write_table(pa.table({"text": DOCS[:30]}), tmp_path / "data" / "train-00000.parquet", row_group_size=7)
    src = open_source(str(tmp_path / "data"))
    assert isinstance(src, ParquetSource) and src.total_docs == len(DOCS)
    assert read_all(src, chunk_bytes=300)[0] == DOCS
    one = open_source(str(tmp_path / "data" / "train-00000.parquet"))
    assert read_all(one)[0] == DOCS[:30]


def test_parquet_missing_column_and_truncated_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "a.parquet")
    with pytest.raises(SourceError, match="no column 'text'"):
        read_all(open_source(str(tmp_path / "a.parquet")))
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "b.parquet")
    data = (tmp_path / "b.parquet").read_bytes()
    (tmp_path / "b.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"b\.parquet: cannot read parquet"):
        read_all(open_source(str(tmp_path / "b.parquet")))


def test_text_folder_sorted_recursive_globs_hidden_and_excluded(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "out").mkdir()
    (root / "b.txt").write_text("bee")
    (root / "a.md").write_text("ay")
    (root / "sub" / "c.txt").write_text("sea")
    (root / "skip.py").write_text("not matched")
    (root / ".hidden" / "h.txt").write_text("hidden")
    (root / "out" / "o.txt").write_text("inside the output folder")
    (root / "bad.txt").write_bytes(b"caf\xe9")  # latin-1, not UTF-8
    src = open_source(str(root), text_glob="*.txt,*.md", exclude=[root / "out"])
    assert isinstance(src, TextFolderSource)
    texts, bad = read_all(src)
    assert texts == [
        "ay",
        "bee",
        "caf\ufffd",
        "sea",
    ]  # sorted by relative path: a.md, b.txt, bad.txt, sub/c.txt
    assert bad == [False, False, True, False]
    with pytest.raises(SourceError, match="no files match --text-glob"):
        open_source(str(root), text_glob="*.rst")


def test_explicit_text_glob_wins_over_stray_data_files_in_auto_mode(tmp_path: Path) -> None:
    # A repo-like folder: the user asks for its .md/.py files, and a run log (.jsonl) and a
    # parquet file lie below it. Auto-detection must not read those instead.
    root = tmp_path / "repo"
    (root / "run").mkdir(parents=True)
    (root / "README.md").write_text("readme")
    (root / "main.py").write_text("print(1)")
    (root / "run" / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    pq.write_table(pa.table({"text": ["from parquet"]}), root / "run" / "x.parquet")
    src = open_source(str(root), text_glob="*.md,*.py")
    assert isinstance(src, TextFolderSource)
    assert read_all(src)[0] == ["readme", "print(1)"]
    # with the default glob it is auto-detected by its data files, and two kinds of them are refused
    # (issue 11: reading the parquet alone silently dropped the jsonl), naming both and the flag
    with pytest.raises(
        SourceError,
        match=r"1 parquet file, 1 jsonl file\).*--source-format parquet or "
        r"--source-format jsonl",
    ):
        open_source(str(root))
    assert isinstance(open_source(str(root), source_format="parquet"), ParquetSource)


def _skylion_members(docs: list[str], prefix: str) -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{i:07d}-{prefix}.txt", d.encode()) for i, d in enumerate(docs)]


def test_skylion_subsets_and_tarball(tmp_path: Path) -> None:
    owt = tmp_path / "openwebtext"
    owt.mkdir()
    write_tar_xz(owt / "urlsf_subset00-2_data.xz", _skylion_members(DOCS[25:], "s2"))
    write_tar_xz(owt / "urlsf_subset00-1_data.xz", [*_skylion_members(DOCS[:25], "s1"), ("s1/readme", b"x")])
    src = open_source(str(owt))
    assert isinstance(src, SkylionSource)
    assert read_all(src, chunk_bytes=500)[0] == DOCS  # subset files sorted, members in archive order
    # the distributed tarball: openwebtext.tar.xz holding openwebtext/urlsf_subset*_data.xz
    outer = tmp_path / "dist"
    outer.mkdir()
    write_tar_xz(
        outer / "openwebtext.tar.xz",
        [(f"openwebtext/{p.name}", p.read_bytes()) for p in sorted(owt.iterdir())],
    )
    for arg in (outer, outer / "openwebtext.tar.xz"):
        src = open_source(str(arg))
        assert isinstance(src, SkylionSource) and src.tarball is not None
        assert read_all(src)[0] == DOCS


def test_truncated_xz_names_the_file(tmp_path: Path) -> None:
    owt = tmp_path / "owt"
    owt.mkdir()
    path = owt / "urlsf_subset00-1_data.xz"
    write_tar_xz(path, _skylion_members(make_docs(200, seed=5), "s"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"urlsf_subset00-1_data\.xz: corrupt or truncated"):
        read_all(open_source(str(owt)))


def test_hub_path_loads_local_parquet_through_datasets(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "train.parquet", row_group_size=10)
    ref = read_all(ParquetSource(tmp_path, [tmp_path / "train.parquet"]))[0]
    for streaming in (False, True):
        src = HubSource(
            "parquet",
            data_files=str(tmp_path / "train.parquet"),
            streaming=streaming,
            cache_dir=str(tmp_path / "hf-cache"),
        )
        assert read_all(src)[0] == ref == DOCS
    assert HubSource(
        "parquet", data_files=str(tmp_path / "train.parquet"), cache_dir=str(tmp_path / "hf-cache")
    ).total_docs == len(DOCS)
    missing = HubSource(
        "parquet", data_files=str(tmp_path / "nope-*.parquet"), cache_dir=str(tmp_path / "hf")
    )
    with pytest.raises(SourceError, match="could not be loaded"):
        read_all(missing)


def test_hub_script_dataset_falls_back_to_parquet_conversion(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load(name, config=None, *, revision=None, **kw):
        calls.append(revision)
        if revision is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found openwebtext.py")
        return datasets.Dataset.from_dict({"text": ["x", "y"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    src = open_source("Skylion007/openwebtext")
    assert isinstance(src, HubSource)
    assert read_all(src)[0] == ["x", "y"]
    assert calls == [None, "refs/convert/parquet"]


def test_open_source_errors() -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source("./does/not/exist.jsonl")
    with pytest.raises(SourceError, match="--source-format"):
        open_source("x", source_format="csv")
    assert isinstance(open_source("someone/some-dataset"), HubSource)  # not loaded until read


def test_sniff_format_recognises_files_written_by_their_own_libraries(tmp_path: Path) -> None:
    import lzma

    from pipeline.tools.source_files import sniff_format

    body = jsonl_bytes(DOCS[:3])
    pq.write_table(pa.table({"text": DOCS[:3]}), tmp_path / "a.parquet")
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        info = tarfile.TarInfo("x.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    files = {
        "b.jsonl.gz": (gzip.compress(body), "gzip-compressed data"),
        "c.jsonl.zst": (zstandard.ZstdCompressor().compress(body), "zstd-compressed data"),
        "d_data.xz": (lzma.compress(body), "xz-compressed data"),
        "e.jsonl": (b"\xef\xbb\xbf" + body, "JSON lines"),
        "f.txt": ("naïve café\n".encode() * 3, "plain text"),
        "g.bin": (bytes(range(256)) * 4, "binary data"),
        "h.jsonl": (b"", "an empty file"),
        "i.tar": (tar.getvalue(), "a tar archive"),
        "j.json": (b'[{"text": "x"}]', "JSON (one array, not JSON lines)"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    assert sniff_format(tmp_path / "a.parquet") == "parquet"
    for name, (_, kind) in files.items():
        assert sniff_format(tmp_path / name) == kind, name
