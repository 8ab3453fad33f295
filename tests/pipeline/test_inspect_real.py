"""stats / verify / show on real OpenWebText documents (``../shared/corpora/owt-sample``; skipped
when absent; about 2 s, so part of the default suite): the figures equal an independent count made
here with tiktoken, and the stored tokens equal nanoGPT's own prepare.py output for the same documents."""

from __future__ import annotations

import io
import json
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import zstandard

from pipeline.__main__ import main
from pipeline.tools.verify import verify_dataset

SOT = 50257


def read_jsonl_zst(path: Path) -> list[str]:
    with open(path, "rb") as f:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        return [json.loads(line)["text"] for line in text if line.strip()]


@pytest.fixture(scope="module")
def owt(owt_sample: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    from pipeline.tools.build import ShardConfig, build_shards

    src = owt_sample / "docs.jsonl.zst"
    out = tmp_path_factory.mktemp("owt") / "shards"
    # several shards, so figures are summed across files and --doc crosses shard boundaries
    build_shards(
        ShardConfig(
            source=str(src), out=out, val_fraction=0.0, shard_tokens=300_000, workers=2, overwrite=True
        ),
        progress=False,
    )
    return out, read_jsonl_zst(src)


def test_owt_sample_figures_equal_tiktoken(owt, capsys):
    out, docs = owt
    enc = tiktoken.get_encoding("gpt2")
    kept = [d for d in docs if d]
    lengths = [len(x) + 2 for x in enc.encode_ordinary_batch(kept, num_threads=2)]
    assert main(["stats", str(out), "--json", "--no-progress", "--split", "train"]) == 0
    tr = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert tr["num_shards"] > 1
    assert tr["num_docs"] == len(kept)
    assert tr["num_tokens"] == sum(lengths)
    assert tr["doc_len"]["mean"] == pytest.approx(statistics.fmean(lengths), rel=1e-12)
    assert tr["doc_len"]["median"] == statistics.median(lengths)
    q = statistics.quantiles(lengths, n=100, method="inclusive")
    assert tr["doc_len"]["p90"] == pytest.approx(q[89], rel=1e-12)
    assert tr["doc_len"]["p99"] == pytest.approx(q[98], rel=1e-12)
    assert tr["doc_len"]["max"] == max(lengths) and tr["doc_len"]["min"] == min(lengths)
    assert tr["special_counts"]["<|startoftext|>"] == tr["special_counts"]["<|endoftext|>"] == len(kept)
    assert tr["source_bytes"] == sum(len(d.encode("utf-8")) for d in kept)


def test_owt_sample_matches_nanogpt_reference_and_verifies(owt, owt_sample):
    out, _ = owt
    assert verify_dataset(out) == []
    ref = np.fromfile(owt_sample / "nanogpt-val-reference.bin", dtype=np.uint16)
    from pipeline.format import ShardDataset

    stored = np.concatenate([np.asarray(s.tokens) for s in ShardDataset(out).shards("train")])
    # nanoGPT stores encode_ordinary(text) + EOT per doc; we add a leading SOT to each
    assert np.array_equal(stored[stored != SOT], ref)


def test_owt_sample_show_round_trip(owt, capsysbinary):
    out, docs = owt
    kept = [d for d in docs if d]
    for i in random.Random(1).sample(range(len(kept)), 8):
        assert main(["show", str(out), "--doc", str(i)]) == 0
        assert capsysbinary.readouterr().out == kept[i].encode("utf-8"), i
