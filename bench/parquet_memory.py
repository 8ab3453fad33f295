"""Benchmark: main-process memory while a build reads parquet, by file layout (issue 13 section 2).

The same generated rows (random ASCII text, incompressible, ``--mb`` MB in all) are written as:

* one file, one row group (the worst case for a reader that buffers whole row groups);
* one file, row groups of ``--rows-per-group`` rows;
* four files, one row group each (the issue's comparison: the same tokens split into 4 files).

For each layout a fresh child process iterates :meth:`pipeline.tools.sources.Source.chunks` over it,
set up as the build's reader process is (:func:`pipeline.tools.readahead.prepare_reader`; before
:mod:`pipeline.tools.readahead` this reading ran in the build's main process; tokenizing happens in
the workers and is left out), and reports its peak anonymous memory (``RssAnon`` sampled at every
chunk) and peak RSS (``VmHWM``), minus the same figures right after the imports. The headline is the
largest peak over the smallest (each the median of 3 processes), as a ratio (target: within 1.5x,
i.e. independent of file and row-group size).
``before`` runs the same reader with pyarrow's defaults (``pre_buffer=True``, whole column chunks read
at once, the default memory pool), as it was before this change; ``after`` the reader as it is.

    .venv/bin/python bench/parquet_memory.py --mb 300
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
from pathlib import Path

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

from pipeline.tools.readahead import prepare_reader
from pipeline.tools.sources import open_source
import pyarrow, pyarrow.parquet as pq  # imported before the baseline is taken

src = open_source(sys.argv[1])
# "before": the reader as it was: pyarrow's defaults (pre_buffer=True, unbuffered column reads)
if sys.argv[2] == "before":
    _ParquetFile = pq.ParquetFile
    pq.ParquetFile = lambda path, **kw: _ParquetFile(path)
else:
    prepare_reader(src)  # as the build's reader process does
base_anon, base_hwm = status("RssAnon"), status("VmHWM")
peak, rows = base_anon, 0
for chunk in src.chunks():
    rows += chunk.count
    peak = max(peak, status("RssAnon"))
print(json.dumps({"rows": rows, "anon_peak_kib": peak - base_anon, "hwm_kib": status("VmHWM") - base_hwm}))
"""


def make_rows(mb: int, row_bytes: int = 2000, seed: int = 0) -> list[str]:
    """``mb`` MB of random lowercase words (incompressible enough that parquet stays ~that size)."""
    rng = np.random.default_rng(seed)
    n = mb * 1_000_000 // row_bytes
    letters = rng.integers(97, 123, size=(n, row_bytes), dtype=np.uint8)
    letters[:, 7::8] = 32  # spaces: words of 7 letters
    return [r.tobytes().decode("ascii") for r in letters]


def write_layouts(root: Path, rows: list[str], rows_per_group: int) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": rows})
    out = {}
    one = root / "one-group"
    one.mkdir()
    pq.write_table(table, one / "data.parquet", row_group_size=len(rows))
    out["1 file, 1 row group"] = one
    many = root / "many-groups"
    many.mkdir()
    pq.write_table(table, many / "data.parquet", row_group_size=rows_per_group)
    out[f"1 file, row groups of {rows_per_group} rows"] = many
    four = root / "four-files"
    four.mkdir()
    q = -(-len(rows) // 4)
    for i in range(4):
        part = table.slice(i * q, q)
        pq.write_table(part, four / f"part-{i}.parquet", row_group_size=max(1, part.num_rows))
    out["4 files, 1 row group each"] = four
    return out


def peak_memory(source: Path, side: str, repeats: int = 3) -> dict:
    """Median over ``repeats`` fresh processes (the allocator's footprint varies by a few MB run to run)."""
    runs = [_peak_memory_once(source, side) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) if k != "rows" else runs[0][k] for k in runs[0]}


def _peak_memory_once(source: Path, side: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), side],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(
    mb: int, rows_per_group: int = 1000, tmp: Path | None = None, sides: tuple[str, ...] = ("before", "after")
) -> dict[str, dict]:
    root = Path(tempfile.mkdtemp(prefix="owtgpt-bench-parquet-", dir=tmp))
    try:
        layouts = write_layouts(root, make_rows(mb), rows_per_group)
        sizes = {k: sum(p.stat().st_size for p in v.glob("*.parquet")) for k, v in layouts.items()}
        return {
            side: {k: {**peak_memory(v, side), "file_bytes": sizes[k]} for k, v in layouts.items()}
            for side in sides
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=300, help="MB of text in the generated parquet data")
    p.add_argument("--rows-per-group", type=int, default=1000, help="row-group size of the many-groups file")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    res = measure(args.mb, args.rows_per_group)
    rows = {r["rows"] for side in res.values() for r in side.values()}
    assert len(rows) == 1, f"the layouts yielded different row counts: {rows}"
    t = Table(title=f"parquet source reading: peak memory above the imports, {args.mb} MB of text")
    for col in (
        "layout",
        "parquet MB",
        "before: peak anon MiB",
        "after: peak anon MiB",
        "after: peak RSS MiB",
    ):
        t.add_column(col, justify="left" if col == "layout" else "right")
    for k, r in res["after"].items():
        b = res["before"][k]
        t.add_row(k, f"{r['file_bytes'] / 1e6:,.0f}", f"{b['anon_peak_kib'] / 1024:,.1f}",
                  f"{r['anon_peak_kib'] / 1024:,.1f}", f"{r['hwm_kib'] / 1024:,.1f}")  # fmt: skip
    Console().print(t)
    ratios = {}
    for side in ("before", "after"):
        peaks = [r["anon_peak_kib"] for r in res[side].values()]
        ratios[side] = max(peaks) / max(min(peaks), 1)
        Console().print(
            f"{side}: largest / smallest peak anonymous memory = {ratios[side]:.2f}x (target <= 1.5x)"
        )
    one = "1 file, 1 row group"
    Console().print(
        f"one big row group, after / before = "
        f"{res['after'][one]['anon_peak_kib'] / res['before'][one]['anon_peak_kib']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps({"mb": args.mb, "layouts": res, "ratios": ratios}, indent=2) + "\n")
    return 0 if ratios["after"] <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
