"""Benchmark: the shard build's tokens/s against raw tiktoken, side by side in one process.

What is compared (same corpus, same worker count W, same machine, same run):

* ``pipeline``: ``build_shards`` end to end, from the compressed file to finished shards on disk
  (decompression, JSON, UTF-8 checks, BPE, SOT/EOT framing, sha256, fsync'd writes).
* ``raw``: tiktoken's own parallel path, ``encode_ordinary_batch(texts, num_threads=W)``, on
  texts already decoded into memory (its load time is not counted). This is the issue's baseline.
* ``raw-threads``: W threads running ``encode_to_numpy`` over 512-document slices (the
  thread-based design the build could have used: no pickling, but the GIL is shared).
* ``raw-proc``: W forked processes each running ``encode_ordinary`` over a slice of the in-memory
  texts, the stronger "2 worker processes" reference in ``../shared/README.md``.

Tokens/s counts text tokens only (no SOT/EOT), so all three count the same tokens. Each is run
``--repeats`` times interleaved and the best is kept (machines are noisy). Peak RSS is read with
``resource.getrusage``: the main process during the first pipeline run (before the raw baselines
load the corpus into memory), and the largest worker process.

Usage: ``python bench/tokenize_throughput.py [--source FILE] [--workers 2] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_SOURCE = REPO / ".." / "shared" / "corpora" / "imdb-reviews.jsonl.zst"
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str((REPO / ".." / "shared" / "tiktoken-cache").resolve()))


def run_pipeline(source: Path, workers: int, tmp: Path) -> tuple[float, int, int]:
    from pipeline.tools.build import ShardConfig, build_shards

    out = tmp / f"shards-{time.monotonic_ns()}"
    cfg = ShardConfig(source=str(source), out=out, workers=workers, overwrite=True)
    t = time.perf_counter()
    m = build_shards(cfg, progress=False)
    dt = time.perf_counter() - t
    ntok = m.counts["tokens_train"] + m.counts["tokens_val"] - 2 * m.counts["docs_written"]
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    return dt, ntok, m.counts["docs_written"]


def load_texts(source: Path) -> list[str]:
    """The corpus's documents in memory, read the same way the build reads them."""
    from pipeline.tools.build import ShardConfig  # noqa: F401  (same import cost as the pipeline)
    from pipeline.tools.sources import decode_chunk, open_source

    texts = []
    for chunk in open_source(str(source)).chunks():
        texts.extend(t for t in decode_chunk(chunk).texts if t and not t.isspace())
    return texts


def run_raw(texts: list[str], workers: int) -> tuple[float, int]:
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    t = time.perf_counter()
    out = enc.encode_ordinary_batch(texts, num_threads=workers)
    dt = time.perf_counter() - t
    return dt, sum(map(len, out))


def run_raw_threads(texts: list[str], workers: int) -> tuple[float, int]:
    from concurrent.futures import ThreadPoolExecutor

    import tiktoken

    enc = tiktoken.get_encoding("gpt2")

    def work(i: int) -> int:  # texts here never hold "<|", checked by the token-count comparison
        return sum(len(enc.encode_to_numpy(t, disallowed_special=())) for t in texts[i : i + 512])

    with ThreadPoolExecutor(workers) as ex:
        t = time.perf_counter()
        n = sum(ex.map(work, range(0, len(texts), 512)))
        dt = time.perf_counter() - t
    return dt, n


_TEXTS: list[str] = []


def _proc_slice(bounds: tuple[int, int]) -> int:
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    return sum(len(enc.encode_ordinary(t)) for t in _TEXTS[bounds[0] : bounds[1]])


def run_raw_proc(texts: list[str], workers: int) -> tuple[float, int]:
    global _TEXTS
    _TEXTS = texts
    import tiktoken

    tiktoken.get_encoding("gpt2")  # loaded before fork, as the pipeline does
    ctx = mp.get_context("fork")
    step = (len(texts) + workers - 1) // workers
    bounds = [(i, min(i + step, len(texts))) for i in range(0, len(texts), step)]
    with ctx.Pool(workers) as pool:
        pool.map(int, range(workers))  # workers started before timing
        t = time.perf_counter()
        n = sum(pool.map(_proc_slice, bounds, chunksize=1))
        dt = time.perf_counter() - t
    return dt, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help="corpus (default: imdb-reviews.jsonl.zst)"
    )
    ap.add_argument("--workers", type=int, default=2, help="worker count for all three (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; best kept (default 2)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    source = args.source.resolve()
    if not source.exists():
        print(
            f"{source}: not found (the benchmark corpus lives in ../shared/corpora); pass --source FILE",
            file=sys.stderr,
        )
        return 2

    from rich.console import Console
    from rich.table import Table

    best = {k: float("inf") for k in ("pipeline", "raw", "raw-threads", "raw-proc")}
    ntoks: dict[str, int] = {}
    texts: list[str] | None = None
    rss_main = rss_worker = 0
    with tempfile.TemporaryDirectory(prefix="owtgpt-bench-", dir=os.environ.get("TMPDIR")) as tmp:
        for r in range(args.repeats):
            dt, n, ndocs = run_pipeline(source, args.workers, Path(tmp))
            best["pipeline"], ntoks["pipeline"] = min(best["pipeline"], dt), n
            if r == 0:
                rss_main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                rss_worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                texts = load_texts(source)
            assert texts is not None
            dt, n = run_raw(texts, args.workers)
            best["raw"], ntoks["raw"] = min(best["raw"], dt), n
            dt, n = run_raw_threads(texts, args.workers)
            best["raw-threads"], ntoks["raw-threads"] = min(best["raw-threads"], dt), n
            dt, n = run_raw_proc(texts, args.workers)
            best["raw-proc"], ntoks["raw-proc"] = min(best["raw-proc"], dt), n
    if len(set(ntoks.values())) != 1:
        print(f"token counts differ between runs: {ntoks}", file=sys.stderr)
        return 1
    ntok = ntoks["pipeline"]
    rate = {k: ntok / v for k, v in best.items()}
    res = {
        "source": str(source),
        "workers": args.workers,
        "docs": ndocs,
        "tokens": ntok,
        "pipeline_tok_s": rate["pipeline"],
        "raw_tok_s": rate["raw"],
        "raw_threads_tok_s": rate["raw-threads"],
        "raw_proc_tok_s": rate["raw-proc"],
        "ratio_vs_raw": rate["pipeline"] / rate["raw"],
        "ratio_vs_raw_proc": rate["pipeline"] / rate["raw-proc"],
        "peak_rss_main_mb": rss_main / 1024,
        "peak_rss_worker_mb": rss_worker / 1024,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    t = Table(
        title=f"tokenize {source.name}: {ntok:,} tokens, {ndocs:,} docs, {args.workers} workers, "
        f"best of {args.repeats}"
    )
    t.add_column("path")
    t.add_column("seconds", justify="right")
    t.add_column("Mtok/s", justify="right")
    t.add_column("pipeline / this", justify="right")
    t.add_row(
        "pipeline (build_shards, file -> shards)",
        f"{best['pipeline']:.2f}",
        f"{rate['pipeline'] / 1e6:.2f}",
        "1.00",
    )
    t.add_row(
        f"raw encode_ordinary_batch(num_threads={args.workers})",
        f"{best['raw']:.2f}",
        f"{rate['raw'] / 1e6:.2f}",
        f"{res['ratio_vs_raw']:.2f}",
    )
    t.add_row(
        f"raw encode_to_numpy in {args.workers} threads",
        f"{best['raw-threads']:.2f}",
        f"{rate['raw-threads'] / 1e6:.2f}",
        f"{rate['pipeline'] / rate['raw-threads']:.2f}",
    )
    t.add_row(
        f"raw encode_ordinary in {args.workers} processes",
        f"{best['raw-proc']:.2f}",
        f"{rate['raw-proc'] / 1e6:.2f}",
        f"{res['ratio_vs_raw_proc']:.2f}",
    )
    Console().print(t)
    Console().print(
        f"peak RSS: main process {res['peak_rss_main_mb']:.0f} MB, largest worker "
        f"{res['peak_rss_worker_mb']:.0f} MB (during the pipeline run)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
