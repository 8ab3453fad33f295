"""Benchmark: the sampler on a cold page cache, with and without its madvise policy (issue 13 section 3).

In one process, over the same shard folder, each setting runs ``--batches`` batches of
``TokenSampler.batches()`` (prefetch thread on, as the trainer uses it) starting from a cold cache:

* before every run each shard file's pages are dropped with ``os.posix_fadvise(POSIX_FADV_DONTNEED)``
  (no process maps them then: the previous sampler is closed and collected), and ``fincore`` (or
  ``mincore`` through ctypes when ``fincore`` is absent) confirms that at most ``--max-resident`` of
  the data is still resident; the run is refused otherwise;
* ``read_bytes`` of ``/proc/self/io`` before and after gives the bytes the process made the disk
  read, divided by the windows drawn (B per batch);
* settings: ``no policy`` (``madvise=False``: the kernel's default read-around on every fault),
  ``MADV_RANDOM`` (no ``MADV_WILLNEED`` hints: the sampler's ``prefetch_pages`` patched out),
  ``MADV_RANDOM + WILLNEED`` (the default), and the doc-aligned sampler with and without the policy.
  Settings are interleaved over ``--rounds`` rounds; the median round is reported.

The headline is batches/s of the default policy over ``no policy`` (a ratio, same run, same disk).

Data: ``--tokens`` random ids in ``--shards`` shards (``bench/sampler.py``'s generator), written once
to ``--dir`` and reused while its manifest is there (``--keep``); ``--data DIR`` uses any folder.

    .venv/bin/python bench/sampler_cold.py --tokens 1000000000 --shards 10 --keep
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.format import MANIFEST_NAME, Manifest
from pipeline.sampler import TokenSampler

console = Console()


def io_read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def drop_cache(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_bytes(files: list[Path]) -> int:
    """Bytes of ``files`` in the page cache: ``fincore``, else ``mincore`` via ctypes."""
    if shutil.which("fincore"):
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sum(int(x) for x in out.split())
    libc = ctypes.CDLL(None, use_errno=True)
    total = 0
    for f in files:
        size = f.stat().st_size
        with open(f, "rb") as fh, mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as mm:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            buf = (ctypes.c_char * size).from_buffer(mm)
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            total += sum(v & 1 for v in vec) * mmap.PAGESIZE
            del buf
    return total


def ensure_data(args: argparse.Namespace) -> Path:
    if args.data is not None:
        return args.data
    out = args.dir
    if (out / MANIFEST_NAME).is_file():
        m = Manifest.load(out)
        if sum(s.num_tokens for s in m.shards) == args.tokens and len(m.shards) == args.shards:
            return out
        shutil.rmtree(out)
    elif out.exists():
        shutil.rmtree(out)
    from sampler import random_shards  # bench/sampler.py: a sibling script (bench/ is sys.path[0])

    console.print(f"writing {args.tokens:,} random tokens in {args.shards} shards to {out}")
    random_shards(out, args.tokens, args.shards)
    return out


SETTINGS = {
    "no policy": dict(madvise=False),
    "MADV_RANDOM": dict(madvise=True, hint=False),
    "MADV_RANDOM + WILLNEED": dict(madvise=True),
    "doc-aligned, no policy": dict(madvise=False, doc_aligned=True),
    "doc-aligned, RANDOM + WILLNEED": dict(madvise=True, doc_aligned=True),
}


def run_cold(root: Path, files: list[Path], args: argparse.Namespace, seed: int, kw: dict) -> dict:
    kw = dict(kw)
    hint = kw.pop("hint", True)
    gc.collect()  # no sampler of a previous run may still map the files
    drop_cache(files)
    res = resident_bytes(files)
    total = sum(f.stat().st_size for f in files)
    if res > args.max_resident * total:
        raise SystemExit(f"could not drop the page cache: {res:,} of {total:,} bytes still resident")
    s = TokenSampler(root, batch_size=args.batch_size, seq_len=args.seq_len, seed=seed, prefetch=2, **kw)
    if not hint:
        s.prefetch_pages = lambda step: None  # instance attribute: batches() picks it up
    r0 = io_read_bytes()
    t0 = time.perf_counter()
    it = s.batches(0)
    for _ in range(args.batches):
        next(it)
    dt = time.perf_counter() - t0
    it.close()
    s.close()
    read = io_read_bytes() - r0
    del s, it
    windows = args.batches * args.batch_size
    return {
        "batches_per_s": args.batches / dt,
        "read_bytes": read,
        "bytes_per_window": read / windows,
        "resident_before": res,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=None, help="an existing shard folder (train split is sampled)"
    )
    p.add_argument("--dir", type=Path, default=Path("/tmp/owtgpt-bench-cold"), help="where random shards go")
    p.add_argument("--tokens", type=int, default=1_000_000_000, help="random-data size in tokens")
    p.add_argument("--shards", type=int, default=10, help="random-data shard count")
    p.add_argument("--keep", action="store_true", help="keep the random shards for the next run")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch (B)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per row (T)")
    p.add_argument("--batches", type=int, default=100, help="batches per cold run")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    p.add_argument(
        "--max-resident", type=float, default=0.01, help="refuse a run if more of the data is cached"
    )
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    root = ensure_data(args)
    m = Manifest.load(root)
    files = [root / e.file for e in m.split("train")]
    ntok = sum(e.num_tokens for e in m.split("train"))
    rows: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    try:
        for rnd in range(args.rounds):
            for name, kw in SETTINGS.items():
                # a different seed each round: no run can profit from pages an earlier run read
                rows[name].append(run_cold(root, files, args, seed=1000 * rnd + len(rows[name]), kw=kw))
    finally:
        if args.data is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    med = {
        k: {f: statistics.median(r[f] for r in v) for f in ("batches_per_s", "bytes_per_window")}
        for k, v in rows.items()
    }
    t = Table(
        title=f"sampler on a cold page cache: {ntok:,} tokens in {len(files)} shards, B={args.batch_size} "
        f"T={args.seq_len}, {args.batches} batches per run, prefetch=2; median of {args.rounds}"
    )
    for col in ("setting", "batches/s", "vs no policy", "KiB read / window"):
        t.add_column(col, justify="left" if col == "setting" else "right")
    for name, r in med.items():
        base = med["doc-aligned, no policy" if name.startswith("doc") else "no policy"]["batches_per_s"]
        t.add_row(
            name,
            f"{r['batches_per_s']:,.1f}",
            f"{r['batches_per_s'] / base:.2f}x",
            f"{r['bytes_per_window'] / 1024:,.1f}",
        )
    console.print(t)
    ratio = med["MADV_RANDOM + WILLNEED"]["batches_per_s"] / med["no policy"]["batches_per_s"]
    console.print(
        f"policy / no policy = {ratio:.2f}x batches/s; bytes read per window "
        f"{med['no policy']['bytes_per_window'] / 1024:,.1f} KiB -> "
        f"{med['MADV_RANDOM + WILLNEED']['bytes_per_window'] / 1024:,.1f} KiB "
        f"(a window is {2 * (args.seq_len + 1) / 1024:.1f} KiB)"
    )
    if args.json:
        args.json.write_text(json.dumps({"settings": med, "rounds": rows, "ratio": ratio}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
