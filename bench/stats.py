"""Benchmark: ``stats`` and ``verify`` against bare numpy/hashlib passes over the same shards.

What it measures (all in one process, runs interleaved, median of ``--repeats``; page cache warm):

* ``stats``: :func:`pipeline.tools.stats.compute_stats` over every split, plus building the JSON dict
  and rendering the rich tables to a string (everything the command does except printing),
  against the **baseline** ``np.bincount(shard.tokens, minlength=vocab)`` summed over every
  shard's memmap (the issue's "bare bincount"). Target: ratio <= 3. A second row counts in the
  same cache-sized chunks ``stats`` uses, so ``stats / chunked`` is the cost of everything
  ``stats`` does beyond counting (mostly the fixed cost of laying out the rich tables).
* ``verify``: :func:`pipeline.tools.verify.verify_dataset` against a bare ``hashlib.sha256`` of every
  shard's payload (the least work that can check the checksums). Reported, no target.

Data: the shards of ``../shared/corpora/imdb-reviews.jsonl.zst`` (~30M tokens), built once with
``build_shards`` into ``--cache`` (reused when its manifest is there), or any folder via ``--shards``.

    .venv/bin/python bench/stats.py                 # imdb, built on first use
    .venv/bin/python bench/stats.py --shards shards  # any finished shard folder
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from pipeline.format import MANIFEST_NAME, SPLITS, ShardDataset
from pipeline.tools.stats import DEFAULT_CHUNK_TOKENS, compute_stats
from pipeline.tools.verify import verify_dataset
from pipeline.tools.views import render_stats

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str((REPO / ".." / "shared" / "tiktoken-cache").resolve()))

DEFAULT_SOURCE = REPO / ".." / "shared" / "corpora" / "imdb-reviews.jsonl.zst"
TARGET_RATIO = 3.0


def ensure_shards(args: argparse.Namespace, console: Console) -> Path:
    if args.shards is not None:
        return args.shards
    out = args.cache
    if (out / MANIFEST_NAME).is_file():
        return out
    source = args.source.resolve()
    if not source.is_file():
        raise SystemExit(f"{source} is absent; pass --shards DIR or --source FILE")
    from pipeline.tools.build import ShardConfig, build_shards

    console.print(f"building shards of {source} into {out} (once; reused afterwards)")
    build_shards(ShardConfig(source=str(source), out=out, overwrite=True, val_fraction=0.0005))
    return out


def bare_bincount(ds: ShardDataset) -> np.ndarray:
    """The issue's baseline: one ``np.bincount`` per shard memmap."""
    total = np.zeros(ds.vocab_size, dtype=np.int64)
    for split in SPLITS:
        for sh in ds.shards(split):
            total += np.bincount(sh.tokens, minlength=ds.vocab_size)[: ds.vocab_size]
    return total


def chunked_bincount(ds: ShardDataset) -> np.ndarray:
    """A stricter baseline: bincount in the same cache-sized chunks ``stats`` uses, nothing else."""
    total = np.zeros(ds.vocab_size, dtype=np.int64)
    for split in SPLITS:
        for sh in ds.shards(split):
            for s in range(0, len(sh.tokens), DEFAULT_CHUNK_TOKENS):
                total += np.bincount(sh.tokens[s : s + DEFAULT_CHUNK_TOKENS], minlength=ds.vocab_size)
    return total


def full_stats(d: Path) -> dict:
    st = compute_stats(d)
    out = st.to_dict()
    Console(file=io.StringIO(), width=120).print(render_stats(st))
    return out


def bare_sha256(ds: ShardDataset) -> list[str]:
    out = []
    for split in SPLITS:
        for sh in ds.shards(split):
            out.append(hashlib.sha256(sh.tokens).hexdigest())
    return out


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    r = fn()
    return time.perf_counter() - t0, r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, default=None, help="an existing shard folder to measure")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="corpus to build when no --shards")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "owtgpt-bench" / "imdb-shards",
        help="where the built shards are kept between runs",
    )
    p.add_argument("--repeats", type=int, default=5, help="interleaved runs of each side (median reported)")
    args = p.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 110)
    d = ensure_shards(args, console)
    ds = ShardDataset(d)
    ntok = sum(ds.num_tokens(s) for s in SPLITS)
    nbytes = sum((d / e.file).stat().st_size for e in ds.manifest.shards)

    # warm-up: page cache, tokenizer load and fingerprint (cached per process), and a cross-check
    # that both sides counted the same tokens, so the timing compares equal work.
    counts = bare_bincount(ds)
    js = full_stats(d)
    assert sum(js["splits"][s]["num_tokens"] for s in SPLITS) == int(counts.sum()) == ntok
    for s in SPLITS:
        assert js["splits"][s]["special_counts"]["<|endoftext|>"] == js["splits"][s]["num_docs"]
    assert verify_dataset(d) == [], "the benchmark shards do not verify"

    assert (chunked_bincount(ds) == counts).all()

    rows = {"bincount": [], "chunked": [], "stats": [], "sha256": [], "verify": []}
    for _ in range(args.repeats):
        rows["bincount"].append(timed(lambda: bare_bincount(ds))[0])
        rows["chunked"].append(timed(lambda: chunked_bincount(ds))[0])
        rows["stats"].append(timed(lambda: full_stats(d))[0])
        rows["sha256"].append(timed(lambda: bare_sha256(ds))[0])
        rows["verify"].append(timed(lambda: verify_dataset(d))[0])
    med = {k: statistics.median(v) for k, v in rows.items()}
    stats_ratio = med["stats"] / med["bincount"]
    verify_ratio = med["verify"] / med["sha256"]

    t = Table(
        title=f"stats / verify on {d} ({ntok:,} tokens, {nbytes / 2**20:,.0f} MiB, "
        f"{len(ds.manifest.shards)} shards; median of {args.repeats})"
    )
    for col in ("what", "seconds", "Mtok/s", "ratio vs baseline"):
        t.add_column(col, justify="left" if col == "what" else "right")
    t.add_row(
        "baseline: np.bincount over the memmaps",
        f"{med['bincount']:.3f}",
        f"{ntok / med['bincount'] / 1e6:,.0f}",
        "1.00",
    )
    t.add_row(
        f"np.bincount in {DEFAULT_CHUNK_TOKENS:,}-token chunks",
        f"{med['chunked']:.3f}",
        f"{ntok / med['chunked'] / 1e6:,.0f}",
        f"{med['chunked'] / med['bincount']:.2f}",
    )
    t.add_row(
        "stats (compute + json + rich tables)",
        f"{med['stats']:.3f}",
        f"{ntok / med['stats'] / 1e6:,.0f}",
        f"{stats_ratio:.2f}",
    )
    t.add_row(
        "baseline: hashlib.sha256 of the payloads",
        f"{med['sha256']:.3f}",
        f"{ntok / med['sha256'] / 1e6:,.0f}",
        "1.00",
    )
    t.add_row(
        "verify (hash + ids + index + boundaries)",
        f"{med['verify']:.3f}",
        f"{ntok / med['verify'] / 1e6:,.0f}",
        f"{verify_ratio:.2f}",
    )
    console.print(t)
    ok = stats_ratio <= TARGET_RATIO
    console.print(
        f"stats / bincount = {stats_ratio:.2f}x (target <= {TARGET_RATIO:.0f}x): "
        + ("[green]PASS[/]" if ok else "[red]FAIL[/]")
    )
    console.print(
        f"stats / chunked bincount = {med['stats'] / med['chunked']:.2f}x (same chunking: the "
        "cost of everything stats adds)"
    )
    console.print(f"verify / sha256 = {verify_ratio:.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
