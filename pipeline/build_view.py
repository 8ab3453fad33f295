"""The face of ``python -m pipeline build``: its rich progress bar and closing summary table.

:class:`BuildProgress` shows docs/s, tokens/s, MB/s and an ETA while :func:`pipeline.build.build_shards`
runs, then one table of what was written, kept, dropped and skipped (see the README, "Building").
Warnings go to stderr as one plain line each, even with ``--quiet``, so they are never wrapped.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from pipeline.format import Manifest
from pipeline.sources import Source


class BuildProgress:
    """Rich progress bar (docs/s, tokens/s, MB/s, ETA) and the closing summary table."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None
        self._task = None
        self.docs = self.tokens = self.text_bytes = 0
        self._by = "bytes"

    def message(self, text: str) -> None:
        if self.enabled:
            Console(stderr=True).print(text)

    @staticmethod
    def warn(text: str) -> None:
        """One unwrapped line on stderr, shown even when the progress display is off."""
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def start(self, src: Source, resumed: dict[str, int]) -> None:
        if not self.enabled:
            return
        if any(resumed.values()):
            self.message(
                f"resuming: keeping {resumed['train']} train and {resumed['val']} val finished shards"
            )
        total = src.total_bytes
        if total is None and src.total_docs is not None:
            total, self._by = src.total_docs, "docs"
        self._progress = Progress(
            TextColumn("[bold]tokenizing"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            _RateColumn("docs", "docs/s", 1),
            _RateColumn("tokens", "tok/s", 1e6, "M"),
            _RateColumn("text_bytes", "MB/s", 1e6, ""),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task("build", total=total, docs=0, tokens=0, text_bytes=0)

    def advance(self, count: int, tokens: int, text_bytes: int, input_bytes: int) -> None:
        self.docs += count
        self.tokens += tokens
        self.text_bytes += text_bytes
        if self._progress is not None:
            done = input_bytes if self._by == "bytes" else self.docs
            self._progress.update(
                self._task, completed=done, docs=self.docs, tokens=self.tokens, text_bytes=self.text_bytes
            )

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def summary(self, out: Path, m: Manifest, seconds: float, resumed: dict[str, int]) -> None:
        if not self.enabled:
            return
        c = m.counts
        t = Table(title=f"built {out}", show_header=True)
        t.add_column("")
        t.add_column("train", justify="right")
        t.add_column("val", justify="right")
        t.add_column("total", justify="right")
        t.add_row("documents", f"{c['docs_train']:,}", f"{c['docs_val']:,}", f"{c['docs_written']:,}")
        t.add_row(
            "tokens",
            f"{c['tokens_train']:,}",
            f"{c['tokens_val']:,}",
            f"{c['tokens_train'] + c['tokens_val']:,}",
        )
        t.add_row(
            "shards", f"{c['shards_train']}", f"{c['shards_val']}", f"{c['shards_train'] + c['shards_val']}"
        )
        t.add_row("kept from a previous run", f"{resumed['train']}", f"{resumed['val']}", "")
        t.add_section()
        t.add_row("records read", "", "", f"{c['docs_read']:,}")
        t.add_row("dropped empty", "", "", f"{c['docs_dropped_empty']:,}")
        t.add_row("skipped bad records (--skip-bad-records)", "", "", f"{c.get('docs_skipped_bad', 0):,}")
        t.add_row("invalid UTF-8 (replaced)", "", "", f"{c['docs_invalid_utf8']:,}")
        t.add_row("source text", "", "", f"{c['source_bytes'] / 1e6:,.1f} MB")
        t.add_row("time", "", "", f"{seconds:,.1f} s")
        t.add_row(
            "tokenized this run",
            "",
            "",
            f"{self.tokens:,} ({self.tokens / max(seconds, 1e-9) / 1e6:.2f} Mtok/s)",
        )
        Console().print(t)
        Console().print(f"source {m.source}\ndataset fingerprint {m.dataset_fingerprint}")


class _RateColumn(ProgressColumn):
    """``task.fields[field] / elapsed`` as a rate, e.g. ``2.1M tok/s``."""

    def __init__(self, field_name: str, unit: str, scale: float, prefix: str = ""):
        super().__init__(table_column=Column(no_wrap=True))
        self.field_name, self.unit, self.scale, self.prefix = field_name, unit, scale, prefix

    def render(self, task) -> Text:
        el = task.elapsed or 0.0
        if not el:
            return Text(f"-- {self.unit}")
        v = task.fields.get(self.field_name, 0) / el / self.scale
        digits = 0 if self.scale == 1 else 1  # docs/s as an integer, M tok/s and MB/s with a decimal
        return Text(f"{v:,.{digits}f}{self.prefix} {self.unit}", style="cyan")
