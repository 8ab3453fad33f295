"""Benchmark: where a build spends CPU, main process vs workers, before and after the reader process.

Runs :func:`pipeline.tools.build.build_shards` twice in this process on ``--source`` with ``--workers``,
side by side on the same corpus, and reads CPU time with ``resource.getrusage``: ``RUSAGE_SELF``
is the main process (all its threads), ``RUSAGE_CHILDREN`` the worker processes and the source
reader process (reaped when the build ends):

* ``before``: the source read in the main process (``pipeline.tools.readahead.FORKED_FORMATS`` emptied),
  as builds did before :mod:`pipeline.tools.readahead`;
* ``after``: the build as it is (local jsonl/parquet/text sources read in a child process).

A tiny build runs first, so the tokenizer load and other one-off start-up costs are not charged to
either side. The reader's own CPU is measured by iterating ``src.chunks()`` once in this process
(the same work it does), and subtracted from the children's total to give the workers' CPU.

Projection: one worker tokenizes ``1 / worker_cpu_per_token`` tokens per CPU-second and a serial
process handling every token can keep up with ``worker_cpu_per_token / its_cpu_per_token`` workers;
the build stops scaling at the smaller of the main process's and the reader's limits. README
("Choosing --workers") explains how to use the figure.

    .venv/bin/python bench/build_cpu.py --source ../shared/corpora/imdb-reviews.jsonl.zst
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.tools import readahead
from pipeline.tools.build import ShardConfig, build_shards
from pipeline.tools.sources import open_source

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO / ".." / "shared" / "corpora" / "imdb-reviews.jsonl.zst"
console = Console()


def cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def measure(source: str, out: Path, workers: int) -> dict:
    m0, c0, t0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    m = build_shards(ShardConfig(source=source, out=out, workers=workers, overwrite=True), progress=False)
    wall = time.perf_counter() - t0
    main_s, workers_s = cpu(resource.RUSAGE_SELF) - m0, cpu(resource.RUSAGE_CHILDREN) - c0
    tokens = sum(s.num_tokens for s in m.shards)
    return {
        "tokens": tokens, "wall_s": wall, "main_cpu_s": main_s, "workers_cpu_s": workers_s,
        "main_s_per_btok": main_s / tokens * 1e9, "workers_s_per_btok": workers_s / tokens * 1e9,
        "saturating_workers": workers_s / main_s if main_s else float("inf"),
    }  # fmt: skip


def reader_cpu(source: str, chunk_bytes: int) -> float:
    """CPU seconds of reading ``source`` as the reader process does (decompress, frame, no tokenizing)."""
    c0 = cpu(resource.RUSAGE_SELF)
    for _ in open_source(source).chunks(chunk_bytes):
        pass
    return cpu(resource.RUSAGE_SELF) - c0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--source", default=str(DEFAULT_SOURCE), help="corpus to build (any SOURCE the build takes)"
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="owtgpt-bench-build-cpu-"))
    forked = readahead.FORKED_FORMATS
    try:
        warm = tmp / "warm.jsonl"
        warm.write_text('{"text": "start-up: tokenizer load, pool, imports"}\n')
        build_shards(ShardConfig(source=str(warm), out=tmp / "warm", workers=args.workers), progress=False)
        readahead.FORKED_FORMATS = ()  # before: the source is read in the main process
        before = measure(args.source, tmp / "before", args.workers)
        readahead.FORKED_FORMATS = forked
        after = measure(args.source, tmp / "after", args.workers)
        same = all((tmp / "before" / f.name).read_bytes() == f.read_bytes() for f in (tmp / "after").iterdir()
                   if f.suffix in (".bin", ".json"))  # fmt: skip
        read_s = reader_cpu(args.source, ShardConfig(source=args.source, out=tmp).chunk_bytes)
    finally:
        readahead.FORKED_FORMATS = forked
        shutil.rmtree(tmp, ignore_errors=True)
    assert same, "the two builds wrote different bytes"
    ntok = after["tokens"]
    work_before = before["workers_cpu_s"]
    work_after = max(after["workers_cpu_s"] - read_s, 1e-9)  # children = workers + the reader
    rows = {
        "before": {
            "main": before["main_cpu_s"],
            "reader": 0.0,
            "workers": work_before,
            "wall": before["wall_s"],
        },
        "after": {
            "main": after["main_cpu_s"],
            "reader": read_s,
            "workers": work_after,
            "wall": after["wall_s"],
        },
    }
    t = Table(title=f"build CPU split: {Path(args.source).name}, {ntok:,} tokens, {args.workers} workers "
                    "(CPU s per 1B tokens)")  # fmt: skip
    for col in (
        "side",
        "main",
        "reader process",
        "workers (sum)",
        "wall s",
        "main saturates at",
        "reader at",
    ):
        t.add_column(col, justify="left" if col == "side" else "right")
    for side, r in rows.items():
        per = {k: r[k] / ntok * 1e9 for k in ("main", "reader", "workers")}
        r["main_saturates_at"] = r["workers"] / r["main"]
        r["reader_saturates_at"] = r["workers"] / r["reader"] if r["reader"] else None
        t.add_row(
            side,
            f"{per['main']:.1f}",
            f"{per['reader']:.1f}",
            f"{per['workers']:.0f}",
            f"{r['wall']:.1f}",
            f"{r['main_saturates_at']:.0f} workers",
            f"{r['reader_saturates_at']:.0f} workers" if r["reader_saturates_at"] else "-",
        )
    console.print(t)
    ratio = rows["after"]["main"] / rows["before"]["main"]
    console.print(
        f"main-process CPU after / before = {ratio:.2f} ({rows['after']['main'] / ntok * 1e9:.1f} vs "
        f"{rows['before']['main'] / ntok * 1e9:.1f} CPU-s per 1B tokens); output bytes identical"
    )
    if args.json:
        args.json.write_text(json.dumps({"source": args.source, "workers": args.workers, "tokens": ntok,
                                         "sides": rows, "ratio": ratio}, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
