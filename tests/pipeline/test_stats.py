"""``stats``: exact figures on shards built from generated documents, checked against tiktoken.

The reference side never touches owtgpt's code: it encodes the same strings with
``tiktoken.get_encoding("gpt2")`` and counts with ``collections.Counter`` and ``statistics``.
"""

from __future__ import annotations

import collections
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from pipeline.__main__ import main
from pipeline.tools.stats import compute_stats, length_histogram, top_ordinary_tokens
from tests.textgen import make_docs

GPT2_EOT = 50256
SOT = 50257  # owtgpt's <|startoftext|>: the id right after GPT-2's vocabulary


def write_jsonl(docs: list[str], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return path


def build_folder(docs: list[str], out: Path, *, shard_tokens: int, val_fraction: float = 0.0) -> Path:
    """Build shards from ``docs`` with the real ``python -m pipeline build`` code path."""
    from pipeline.tools.build import ShardConfig, build_shards

    src = write_jsonl(docs, out.parent / f"{out.name}-source.jsonl")
    cfg = ShardConfig(
        source=str(src),
        out=out,
        workers=1,
        shard_tokens=shard_tokens,
        val_fraction=val_fraction,
        seed=0,
        overwrite=True,
    )
    build_shards(cfg, progress=False)
    return out


def reference(docs: list[str], top_k: int) -> dict:
    """Figures of the stored documents computed with plain tiktoken and the standard library."""
    enc = tiktoken.get_encoding("gpt2")
    ids = [enc.encode_ordinary(d) for d in docs if d]
    lengths = [len(x) + 2 for x in ids]  # + <|startoftext|> and <|endoftext|>
    counter = collections.Counter(t for x in ids for t in x)
    top = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    text_tokens = sum(len(x) for x in ids)
    return {
        "num_docs": len(ids),
        "num_tokens": sum(lengths),
        "lengths": lengths,
        "doc_len": {
            "mean": statistics.fmean(lengths),
            "median": statistics.median(lengths),
            # "inclusive" is the linear interpolation between closest ranks (numpy's default)
            "p90": statistics.quantiles(lengths, n=100, method="inclusive")[89],
            "p99": statistics.quantiles(lengths, n=100, method="inclusive")[98],
            "min": min(lengths),
            "max": max(lengths),
        },
        "special_counts": {
            "<|endoftext|>": len(ids),
            "<|startoftext|>": len(ids),
            "<|padding|>": 0,
            "<|unknown|>": 0,
        },
        "unique_tokens": len(counter) + 2,  # the two markers
        "top_tokens": [
            {"id": i, "count": c, "text": enc.decode_single_token_bytes(i).decode("utf-8", errors="replace")}
            for i, c in top
        ],
        "source_bytes": sum(len(d.encode("utf-8")) for d in docs),
        "bytes_per_token": sum(len(d.encode("utf-8")) for d in docs) / text_tokens,
        "counter": counter,
    }


DOCS = make_docs(160, seed=3, max_words=250)
DOCS[7] = ""  # dropped by the build: not stored, not counted
DOCS[90] = ""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_folder(DOCS, tmp_path_factory.mktemp("stats") / "shards", shard_tokens=12_000)


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_figures_equal_tiktoken_reference(built, capsys):
    ref = reference(DOCS, top_k=15)
    out = run_json(capsys, "stats", str(built), "--split", "train", "--top", "15", "--no-progress")
    tr = out["splits"]["train"]
    assert set(out["splits"]) == {"train"}
    assert tr["num_docs"] == ref["num_docs"] == len(DOCS) - 2
    assert tr["num_tokens"] == ref["num_tokens"]
    for key in ("mean", "median", "p90", "p99"):
        assert tr["doc_len"][key] == pytest.approx(ref["doc_len"][key], rel=1e-12), key
    assert tr["doc_len"]["min"] == ref["doc_len"]["min"]
    assert tr["doc_len"]["max"] == ref["doc_len"]["max"]
    assert tr["special_counts"] == ref["special_counts"]
    assert tr["markers_consistent"] is True
    assert tr["out_of_vocab"] == 0
    assert tr["unique_tokens"] == ref["unique_tokens"]
    assert tr["vocab_coverage"] == pytest.approx(ref["unique_tokens"] / 50260)
    assert tr["top_tokens"] == ref["top_tokens"]
    assert tr["source_bytes"] == ref["source_bytes"]
    assert tr["bytes_per_token"] == pytest.approx(ref["bytes_per_token"], rel=1e-12)
    # histogram: power-of-two bins that together hold every document
    h = tr["doc_len_histogram"]
    assert sum(h["counts"]) == ref["num_docs"]
    for lo, hi, c in zip(h["bin_edges"][:-1], h["bin_edges"][1:], h["counts"], strict=True):
        assert c == sum(lo <= n < hi for n in ref["lengths"])


def test_per_shard_table_and_fingerprints(built, capsys):
    from pipeline.format import Manifest

    m = Manifest.load(built)
    out = run_json(capsys, "stats", str(built), "--no-progress")
    tr = out["splits"]["train"]
    assert tr["num_shards"] == len(m.split("train")) > 1  # shard_tokens forces several shards
    assert [s["file"] for s in tr["shards"]] == [e.file for e in m.split("train")]
    assert sum(s["num_tokens"] for s in tr["shards"]) == tr["num_tokens"]
    assert sum(s["num_docs"] for s in tr["shards"]) == tr["num_docs"]
    assert tr["bytes_on_disk"] == sum((built / s["file"]).stat().st_size for s in tr["shards"])
    assert out["splits"]["val"]["num_docs"] == 0 and out["splits"]["val"]["doc_len"]["mean"] is None
    assert out["dataset_fingerprint"] == m.dataset_fingerprint
    assert out["tokenizer_fingerprint"] == m.tokenizer_fingerprint
    assert out["tokenizer_matches"] is True
    assert out["vocab_size"] == 50260
    assert out["build_counts"]["docs_written"] == len(DOCS) - 2


def test_chunking_does_not_change_the_figures(built):
    # a chunk far smaller than a shard (and not a divisor of any shard size) streams many pieces
    small = compute_stats(built, chunk_tokens=997).to_dict()
    big = compute_stats(built).to_dict()
    assert small == big


def test_val_and_train_together_hold_every_document(tmp_path, capsys):
    docs = make_docs(120, seed=11, max_words=120)
    out = build_folder(docs, tmp_path / "shards", shard_tokens=1_000_000, val_fraction=0.25)
    ref = reference(docs, top_k=5)
    js = run_json(capsys, "stats", str(out), "--no-progress")
    tr, va = js["splits"]["train"], js["splits"]["val"]
    assert va["num_docs"] > 0 and tr["num_docs"] > 0
    assert tr["num_docs"] + va["num_docs"] == ref["num_docs"]
    assert tr["num_tokens"] + va["num_tokens"] == ref["num_tokens"]
    for name in ref["special_counts"]:
        assert tr["special_counts"][name] + va["special_counts"][name] == ref["special_counts"][name]
    st = compute_stats(out)
    both = np.sort(np.concatenate([st.splits["train"].doc_lengths, st.splits["val"].doc_lengths]))
    assert both.tolist() == sorted(ref["lengths"])
    counts = st.splits["train"].token_counts + st.splits["val"].token_counts
    assert {i: int(counts[i]) for i in np.flatnonzero(counts[:GPT2_EOT])} == dict(ref["counter"])


def test_rich_view_shows_the_figures(built, capsys):
    assert main(["stats", str(built), "--top", "3", "--no-progress"]) == 0
    text = capsys.readouterr().out
    ref = reference(DOCS, top_k=3)
    assert f"{ref['num_tokens']:,}" in text
    assert "train-00000.bin" in text
    assert "SOT == EOT == docs" in text and "tokens per document" in text
    assert repr(ref["top_tokens"][0]["text"]) in text or str(ref["top_tokens"][0]["id"]) in text


def test_top_tokens_order_and_histogram_bins():
    counts = np.zeros(50260, np.int64)
    counts[[5, 3, 9, 50256, 50257]] = [4, 4, 7, 100, 100]
    assert top_ordinary_tokens(counts, 10) == [(9, 7), (3, 4), (5, 4)]  # specials excluded, ties by id
    assert top_ordinary_tokens(counts, 2) == [(9, 7), (3, 4)]
    edges, c = length_histogram(np.array([2, 3, 4, 7, 8, 100]))
    assert edges == [2, 4, 8, 16, 32, 64, 128]
    assert c == [2, 2, 1, 0, 0, 1]


def test_bad_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["stats", str(tmp_path), "--no-progress"]) == 1  # input problem (README: exit codes)
    err = capsys.readouterr().err
    assert "manifest" in err and str(tmp_path) in err


def _rss_file_kib() -> int | None:
    """This process's file-backed resident memory (``RssFile`` of /proc/self/status), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def random_folder(out: Path, *, shards: int, tokens_per_shard: int, seed: int = 0) -> np.ndarray:
    """Shards of random ordinary ids in documents of 1,000 tokens (markers included); returns the ids."""
    from pipeline.format import ShardWriter, shard_name
    from tests.shards import entry_of, save_manifest

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    entries, every = [], []
    for i in range(shards):
        toks = rng.integers(0, GPT2_EOT, size=tokens_per_shard, dtype=np.uint16)
        lens = np.full(tokens_per_shard // 1000, 1000)
        starts = np.arange(len(lens)) * 1000
        toks[starts], toks[starts + 999] = SOT, GPT2_EOT
        w = ShardWriter(out / shard_name("train", i), vocab_size=50260, tokenizer_fingerprint="test-random")
        w.add_documents(toks, lens)
        w.finish()
        entries.append(entry_of(out / shard_name("train", i), "train"))
        every.append(toks)
    special = {"<|endoftext|>": GPT2_EOT, "<|startoftext|>": SOT}
    save_manifest(
        out, entries, fingerprint="test-random", vocab_size=50260, special_tokens=special, source="random"
    )
    return np.concatenate(every)


def test_file_backed_rss_stays_flat_while_counting_the_whole_folder(tmp_path):
    """32 MiB of shards counted with at most ~1 chunk of them mapped into the process at a time."""
    if _rss_file_kib() is None:
        pytest.skip("needs /proc/self/status (Linux)")
    ids = random_folder(tmp_path / "shards", shards=4, tokens_per_shard=4_000_000)
    peak = []
    base = _rss_file_kib()
    st = compute_stats(
        tmp_path / "shards",
        splits=["train"],
        decode_top=False,
        progress=lambda n: peak.append(_rss_file_kib() - base),
    )
    tr = st.splits["train"]
    assert (tr.token_counts == np.bincount(ids, minlength=50260)).all()  # independent count of the ids
    assert tr.num_docs == 4 * 4_000
    data_kib = ids.nbytes // 1024  # 31,250 KiB
    chunk_kib = 2 * (1 << 18) // 1024  # one 256Ki-token chunk = 512 KiB
    assert len(peak) >= 60 and max(peak) < 8 * chunk_kib < data_kib // 7, max(peak)


def test_a_bad_last_shard_fails_before_any_shard_is_counted(tmp_path):
    from pipeline.format import ShardFormatError

    random_folder(tmp_path / "shards", shards=3, tokens_per_shard=10_000)
    with open(tmp_path / "shards" / "train-00002.bin", "ab") as f:
        f.write(b"\0" * 8)  # too long for its header
    counted = []
    with pytest.raises(ShardFormatError, match=r"train-00002\.bin: file is"):
        compute_stats(tmp_path / "shards", decode_top=False, progress=counted.append)
    assert counted == []
