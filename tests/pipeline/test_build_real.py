"""The build on the real corpora in ../shared/corpora (skipped when absent).

owt-sample holds the same 1,000 OpenWebText documents as parquet, .jsonl.zst and Skylion
``*_data.xz``, plus nanoGPT's own prepare.py output for them (``nanogpt-val-reference.bin``:
``encode_ordinary(text) + [EOT]`` per document, in parquet order).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tiktoken

from pipeline.format import ShardDataset
from pipeline.tokenizer import EOT_ID, SOT_ID
from pipeline.tools.build import ShardConfig, build_shards
from pipeline.tools.sources import HubSource, decode_chunk

GPT2 = tiktoken.get_encoding("gpt2")
FORMATS = {
    "parquet": "train-00000-of-00001.parquet",
    "jsonl.zst": "docs.jsonl.zst",
    "skylion": "openwebtext",
}


@pytest.fixture(scope="module")
def owt_texts(owt_sample: Path) -> list[str]:
    return pq.read_table(owt_sample / FORMATS["parquet"], columns=["text"]).column("text").to_pylist()


@pytest.fixture(scope="module")
def owt_ids(owt_texts: list[str]) -> list[list[int]]:
    return GPT2.encode_ordinary_batch(owt_texts, num_threads=2)


def docs_of(out: Path, split: str = "train") -> list[np.ndarray]:
    return [np.asarray(s.doc(i)) for s in ShardDataset(out).shards(split) for i in range(s.num_docs)]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_owt_sample_tokens_equal_tiktoken_and_nanogpt(owt_sample, owt_ids, fmt, tmp_path: Path) -> None:
    out = tmp_path / fmt
    m = build_shards(
        ShardConfig(
            source=str(owt_sample / FORMATS[fmt]), out=out, workers=2, val_fraction=0.0, shard_tokens=400_000
        ),
        progress=False,
    )
    docs = docs_of(out)
    assert m.counts["docs_written"] == len(docs) == len(owt_ids) == 1000
    assert len(ShardDataset(out).shards("train")) >= 3  # several shards, docs never split
    assert all(d[0] == SOT_ID and d[-1] == EOT_ID for d in docs)
    got = [d[1:-1].tolist() for d in docs]
    if fmt == "skylion":  # the tar order need not be the parquet order: compare per document
        assert Counter(map(tuple, got)) == Counter(map(tuple, owt_ids))
        return
    assert got == owt_ids
    # nanoGPT's prepare.py output: encode_ordinary + EOT per doc, concatenated in source order
    flat = np.concatenate(docs)
    ref = np.fromfile(owt_sample / "nanogpt-val-reference.bin", dtype=np.uint16)
    assert len(ref) == 1_203_184
    assert np.array_equal(flat[flat != SOT_ID], ref)


def test_owt_sample_default_settings_have_a_val_split(owt_sample, owt_ids, tmp_path: Path) -> None:
    m = build_shards(
        ShardConfig(source=str(owt_sample / FORMATS["jsonl.zst"]), out=tmp_path, workers=2), progress=False
    )
    assert m.settings["val_fraction"] == 0.0005
    assert m.counts["docs_val"] >= 1 and m.counts["docs_train"] + m.counts["docs_val"] == 1000
    got = Counter(tuple(d[1:-1].tolist()) for split in ("train", "val") for d in docs_of(tmp_path, split))
    assert got == Counter(map(tuple, owt_ids))


def test_hub_code_path_on_real_parquet(owt_sample, owt_texts, tmp_path: Path) -> None:
    """The hub reader is datasets.load_dataset; the same call on the local parquet reads every row."""
    src = HubSource(
        "parquet",
        data_files=str(owt_sample / FORMATS["parquet"]),
        streaming=True,
        cache_dir=str(tmp_path / "hf"),
    )
    texts = [t for c in src.chunks() for t in decode_chunk(c).texts]
    assert texts == owt_texts


@pytest.mark.slow
def test_reuters_any_workers_identical_and_token_count(corpora: Path, tmp_path: Path) -> None:
    src = corpora / "reuters21578.jsonl.zst"
    if not src.exists():
        pytest.skip(f"{src} is absent")
    outs = []
    for w in (1, 2):
        outs.append(tmp_path / f"w{w}")
        m = build_shards(
            ShardConfig(source=str(src), out=outs[-1], workers=w, shard_tokens=1_000_000), progress=False
        )
    files = sorted(p.name for p in outs[0].iterdir())
    for name in files:
        if name.endswith((".bin", ".json")):
            assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    import json

    import zstandard

    with open(src, "rb") as f:
        lines = zstandard.ZstdDecompressor().stream_reader(f).read().splitlines()
    texts = [t for t in (json.loads(x)["text"] for x in lines if x.strip()) if t.strip()]
    n = sum(map(len, GPT2.encode_ordinary_batch(texts, num_threads=2)))
    assert m.counts["tokens_train"] + m.counts["tokens_val"] == n + 2 * len(texts)
