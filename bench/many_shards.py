"""Benchmark: build and verify time against the number of shards, today's code vs the quadratic paths.

The same corpus is built with ``--shard-tokens`` chosen to give about ``N`` shards for each ``N`` of
``--shards`` (same tokens, only the shard count changes), then verified; each build and verify
runs twice in this process, side by side:

* ``new``: the code as it is: the resume log appends one line per finished shard
  (:mod:`pipeline.tools.build_state`), and ``verify`` finds duplicate manifest entries with one hash
  table (``collections.Counter``);
* ``old``: the same code with the two paths this change made linear put back (kept here as the
  baseline): the whole resume state rewritten atomically after every shard
  (:class:`RewriteWholeState`, as ``build-state.json`` was), and the pairwise duplicate check
  ``{f for f in files if files.count(f) > 1}`` (:class:`PairwiseCounter`).

Linear means seconds per shard stays flat as N doubles. The output bytes of both builds are
compared (they must be identical).

    .venv/bin/python bench/many_shards.py --source ../shared/corpora/imdb-reviews.jsonl.zst
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import pipeline.tools.build as build_mod
import pipeline.tools.verify as verify_mod
from pipeline.format import SHARD_SUFFIX, Manifest
from pipeline.fsutil import atomic_write_text
from pipeline.tools.build import ShardConfig, build_shards
from pipeline.tools.verify import errors, verify_dataset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO / ".." / "shared" / "corpora" / "imdb-reviews.jsonl.zst"
console = Console()


class RewriteWholeState:
    """The baseline resume state: ``build-state.json`` rewritten whole (atomically) after every shard."""

    def __init__(self, out: Path, state: dict):
        self.out, self.state = out, state

    def append(self, split: str) -> None:
        atomic_write_text(
            self.out / "build-state.json", json.dumps(self.state, indent=1, sort_keys=True) + "\n"
        )

    def close(self) -> None:
        pass


class PairwiseCounter(dict):
    """The baseline duplicate check: ``files.count(f)`` for every listed file (n^2 comparisons)."""

    def __init__(self, names):
        files = list(names)
        super().__init__({f: files.count(f) for f in files})


def run(source: str, out: Path, shard_tokens: int, workers: int, old: bool) -> dict:
    saved = build_mod.StateLog, verify_mod.Counter
    if old:
        build_mod.StateLog, verify_mod.Counter = RewriteWholeState, PairwiseCounter
    try:
        t0 = time.perf_counter()
        m = build_shards(ShardConfig(source=source, out=out, shard_tokens=shard_tokens, workers=workers,
                                     val_fraction=0.0005, overwrite=True), progress=False)  # fmt: skip
        t1 = time.perf_counter()
        problems = errors(verify_dataset(out, check_tokenizer=False))
        t2 = time.perf_counter()
    finally:
        build_mod.StateLog, verify_mod.Counter = saved
    assert not problems, problems[:3]
    return {"shards": len(m.shards), "tokens": sum(s.num_tokens for s in m.shards), "build_s": t1 - t0,
            "verify_s": t2 - t1}  # fmt: skip


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob(f"*{SHARD_SUFFIX}"))} | {
        "manifest.json": (out / "manifest.json").read_bytes()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(DEFAULT_SOURCE), help="corpus to build")
    p.add_argument("--shards", default="1250,2500,5000", help="comma-separated shard counts to aim for")
    p.add_argument("--workers", type=int, default=2, help="build worker processes")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    targets = [int(x) for x in args.shards.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="owtgpt-bench-many-shards-"))
    results: list[dict] = []
    try:
        probe = build_shards(ShardConfig(source=args.source, out=tmp / "probe", workers=args.workers,
                                         val_fraction=0.0005), progress=False)  # fmt: skip
        total = sum(s.num_tokens for s in probe.shards)
        shutil.rmtree(tmp / "probe")
        for n in targets:
            shard_tokens = max(3, total // n)
            row = {"target": n, "shard_tokens": shard_tokens}
            for side in ("old", "new"):
                row[side] = run(args.source, tmp / side, shard_tokens, args.workers, old=side == "old")
            assert shard_bytes(tmp / "old") == shard_bytes(tmp / "new"), "old and new builds differ"
            assert (
                Manifest.load(tmp / "new").dataset_fingerprint
                == Manifest.load(tmp / "old").dataset_fingerprint
            )
            results.append(row)
            for side in ("old", "new"):
                shutil.rmtree(tmp / side)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t = Table(title=f"build + verify vs shard count: {Path(args.source).name}, {total:,} tokens, "
                    f"{args.workers} workers")  # fmt: skip
    for col in ("shards", "--shard-tokens", "build old s", "build new s", "old/new", "build new ms/shard",
                "verify old s", "verify new s", "old/new", "verify new ms/shard"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in results:
        o, n = r["old"], r["new"]
        t.add_row(f"{n['shards']:,}", f"{r['shard_tokens']:,}", f"{o['build_s']:.1f}", f"{n['build_s']:.1f}",
                  f"{o['build_s'] / n['build_s']:.2f}", f"{1e3 * n['build_s'] / n['shards']:.2f}",
                  f"{o['verify_s']:.2f}", f"{n['verify_s']:.2f}", f"{o['verify_s'] / n['verify_s']:.2f}",
                  f"{1e3 * n['verify_s'] / n['shards']:.2f}")  # fmt: skip
    console.print(t)
    if len(results) >= 2:
        a, b = results[0], results[-1]
        k = b["new"]["shards"] / a["new"]["shards"]
        for what in ("build_s", "verify_s"):
            console.print(
                f"{what[:-2]}: {k:.1f}x the shards took new {b['new'][what] / a['new'][what]:.2f}x, "
                f"old {b['old'][what] / a['old'][what]:.2f}x the time"
            )
    if args.json:
        args.json.write_text(
            json.dumps({"source": args.source, "tokens": total, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
