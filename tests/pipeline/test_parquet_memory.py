"""Parquet sources: the build's main process reads with bounded memory, whatever the file and row-group size.

The probe (``bench/parquet_memory.py``) iterates the source's chunks in a fresh process and reports
its peak anonymous memory above the imports; the same generated rows are written as one file with
one row group, one file with many row groups, and four files.
"""

from __future__ import annotations

import pytest

from bench.parquet_memory import make_rows, measure, peak_memory


def check_layouts(mb: int, tmp_path, bound: bool) -> None:
    res = measure(mb, rows_per_group=1000, tmp=tmp_path, sides=("after",))["after"]
    assert len({r["rows"] for r in res.values()}) == 1  # every layout yields every row
    peaks = {k: r["anon_peak_kib"] * 1024 for k, r in res.items()}
    assert max(peaks.values()) <= 1.5 * min(peaks.values()), peaks
    if bound:  # far below the data: pyarrow's defaults buffered a whole row group (> the file size)
        assert max(peaks.values()) < 0.5 * mb * 1_000_000, peaks


def test_parquet_reading_memory_does_not_follow_row_group_size(tmp_path):
    check_layouts(120, tmp_path, bound=False)


def test_parquet_reading_memory_does_not_follow_file_size(tmp_path):
    """One row group of 60 MB and one of 180 MB: the peak must not triple (it did: ~1.1x the file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    peaks = {}
    for mb in (60, 180):
        d = tmp_path / f"mb{mb}"
        d.mkdir()
        rows = make_rows(mb, seed=mb)
        pq.write_table(pa.table({"text": rows}), d / "data.parquet", row_group_size=len(rows))
        del rows
        peaks[mb] = peak_memory(d, "after")["anon_peak_kib"]
    assert peaks[180] <= 1.5 * peaks[60], peaks


@pytest.mark.slow
def test_parquet_reading_memory_is_flat_on_a_few_hundred_mb(tmp_path):
    check_layouts(300, tmp_path, bound=True)


def _rss_anon() -> int:
    from pathlib import Path

    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_hub_loading_keeps_arrow_cache_memory_mapped(tmp_path):
    """``datasets`` prepares an Arrow cache and maps it: reading every row adds no anonymous memory
    in proportion to the data (tested on local parquet through the same ``load_dataset`` call)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.parquet_memory import make_rows
    from pipeline.tools.sources import HubSource

    rows = make_rows(80)
    pq.write_table(pa.table({"text": rows}), tmp_path / "train.parquet", row_group_size=len(rows))
    del rows
    src = HubSource("parquet", data_files=str(tmp_path / "train.parquet"), cache_dir=str(tmp_path / "hf"))
    ds = src.load()
    assert isinstance(ds.data, datasets.table.MemoryMappedTable)
    assert ds.cache_files and all(f["filename"].startswith(str(tmp_path / "hf")) for f in ds.cache_files)
    before, peak, n = _rss_anon(), 0, 0
    for chunk in src.chunks():
        n += chunk.count
        peak = max(peak, _rss_anon() - before)
    assert n == len(ds) == 40_000
    assert peak < 0.25 * 80_000_000, peak  # the 80 MB of text stay in the mapped cache file
