"""Benchmark: peak memory of ``stats`` before and after mapping one shard at a time (issue 13 section 3).

Each side runs in a fresh child process over the same shard folder, and reports its peak resident
set (``VmHWM`` of ``/proc/self/status``, what ``top`` and cgroup limits see: anonymous plus
file-backed pages) and its peak file-backed RSS (``RssFile``, sampled after every chunk):

* ``before``: the loop ``compute_stats`` ran until this change, kept here as the baseline: every
  shard of the split opened through ``ShardDataset.shards`` (all mapped for the whole pass), counted
  in the same 256Ki-token chunks, nothing released;
* ``after``: :func:`pipeline.tools.stats.compute_stats` itself (one shard mapped at a time, each counted
  chunk's pages dropped with ``MADV_DONTNEED``).

Both count the same tokens (checked). The page cache is warm for both (a first pass reads the data),
so time is CPU-bound and comparable. The headline is peak RSS after / before, as a ratio.

Data: ``--tokens`` random ids in ``--shards`` shards (``bench/sampler.py``'s generator) in ``--dir``,
reused while its manifest matches (``--keep``), or any folder with ``--data``.

    .venv/bin/python bench/stats_rss.py --tokens 1000000000 --shards 10 --keep
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
console = Console()


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def before(d: Path, peak: list[int]) -> int:
    """The pre-change ``compute_stats`` loop: all shards mapped, nothing released; returns the token count."""
    from pipeline.format import SPLITS, ShardDataset
    from pipeline.tools.stats import DEFAULT_CHUNK_TOKENS

    ds = ShardDataset(d)
    total = 0
    for split in SPLITS:
        counts = np.zeros(ds.vocab_size, dtype=np.int64)
        for shard in ds.shards(split):
            toks = shard.tokens
            for s in range(0, len(toks), DEFAULT_CHUNK_TOKENS):
                counts += np.bincount(toks[s : s + DEFAULT_CHUNK_TOKENS], minlength=ds.vocab_size)[
                    : ds.vocab_size
                ]
                peak[0] = max(peak[0], status_kib("RssFile"))
            _ = np.diff(shard.doc_offsets.astype(np.int64))
        total += int(counts.sum())
    return total


def after(d: Path, peak: list[int]) -> int:
    from pipeline.tools.stats import compute_stats

    def sample(_: int) -> None:
        peak[0] = max(peak[0], status_kib("RssFile"))

    st = compute_stats(d, decode_top=False, progress=sample)
    return sum(int(s.token_counts.sum()) for s in st.splits.values())


def child(which: str, d: Path) -> None:
    peak = [0]
    t0 = time.perf_counter()
    n = (before if which == "before" else after)(d, peak)
    print(
        json.dumps(
            {
                "tokens": n,
                "seconds": time.perf_counter() - t0,
                "vm_hwm_kib": status_kib("VmHWM"),
                "rss_file_peak_kib": peak[0],
            }
        )
    )


def run_child(which: str, d: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", which, "--data", str(d)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="an existing shard folder")
    p.add_argument("--dir", type=Path, default=Path("/tmp/owtgpt-bench-cold"), help="where random shards go")
    p.add_argument("--tokens", type=int, default=1_000_000_000, help="random-data size in tokens")
    p.add_argument("--shards", type=int, default=10, help="random-data shard count")
    p.add_argument("--keep", action="store_true", help="keep the random shards for the next run")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--child", choices=("before", "after"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.data)
        return 0
    import shutil

    from sampler_cold import ensure_data  # a sibling script (bench/ is sys.path[0])

    from pipeline.format import Manifest

    d = ensure_data(args)
    try:
        m = Manifest.load(d)
        ntok = sum(s.num_tokens for s in m.shards)
        nbytes = sum((d / s.file).stat().st_size for s in m.shards)
        run_child("after", d)  # warm the page cache: both sides then read from memory
        res = {"before": run_child("before", d), "after": run_child("after", d)}
    finally:
        if args.data is None and not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    assert res["before"]["tokens"] == res["after"]["tokens"] == ntok
    t = Table(
        title=f"stats peak memory: {ntok:,} tokens, {nbytes / 2**20:,.0f} MiB in {len(m.shards)} shards"
    )
    for col in ("side", "peak RSS (VmHWM) MiB", "peak file-backed RSS MiB", "seconds"):
        t.add_column(col, justify="left" if col == "side" else "right")
    for k, r in res.items():
        t.add_row(
            k,
            f"{r['vm_hwm_kib'] / 1024:,.0f}",
            f"{r['rss_file_peak_kib'] / 1024:,.0f}",
            f"{r['seconds']:.1f}",
        )
    console.print(t)
    ratio = res["after"]["vm_hwm_kib"] / res["before"]["vm_hwm_kib"]
    console.print(
        f"peak RSS after / before = {ratio:.3f}; file-backed "
        f"{res['after']['rss_file_peak_kib'] / res['before']['rss_file_peak_kib']:.3f}; "
        f"time after / before = {res['after']['seconds'] / res['before']['seconds']:.2f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"tokens": ntok, "bytes": nbytes, **res, "ratio": ratio}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
