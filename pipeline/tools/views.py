"""All of ``python -m pipeline``'s rich rendering: the build's progress bar and summary, the stats tables.

Pure presentation: figures come in computed (a :class:`~pipeline.format.Manifest`, a
:class:`~pipeline.tools.stats.DatasetStats`) and leave as rich renderables or console lines, so the
numbers stay testable through ``to_dict()`` and the JSON output. Warnings go to stderr as one plain line
each, even with ``--quiet``. What each command prints: README.md, "Building" and "Inspecting".
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from pipeline.format import SHARD_SUFFIX, SPLITS, Manifest, ShardDataset, ShardFormatError, read_header
from pipeline.tools.sources import Source
from pipeline.tools.stats import DatasetStats, SplitStats

# --- build: progress bar and summary table ---


class BuildProgress:
    """Rich progress bar (docs/s, tokens/s, MB/s, ETA) and the closing summary table."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None  # set with _progress
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
            assert self._task is not None
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


# --- stats: tables and the document-length histogram ---

BAR_WIDTH = 40  # terminal cells of the longest histogram bar
_EIGHTHS = " ▏▎▍▌▋▊▉"  # partial blocks: a bar resolves 1/8 of a cell


def fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def fmt_float(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def bar(value: int, peak: int, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of ``value / peak * width`` cells, resolved to eighths of a cell."""
    if peak <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / peak * width * 8))
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def piece_repr(b: bytes | None) -> str:
    """A token's bytes, visibly: ``repr`` of the text, or of the bytes when they are not UTF-8 alone."""
    if b is None:
        return "?"
    try:
        return repr(b.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(b)


def header_panel(st: DatasetStats) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    match = {
        True: "[green]matches this owtgpt[/]",
        False: "[red]DIFFERS from this owtgpt's tokenizer[/]",
        None: "[yellow]tokenizer unavailable, not compared[/]",
    }[st.tokenizer_matches]
    grid.add_row("directory", Text(st.directory))
    grid.add_row("source", Text(st.source))
    grid.add_row("vocab size", fmt_int(st.vocab_size))
    grid.add_row("tokenizer", Text.assemble(st.tokenizer_fingerprint, "  ", Text.from_markup(match)))
    grid.add_row("dataset", st.dataset_fingerprint)
    if st.build_counts:
        grid.add_row(
            "build counts",
            Text(
                ", ".join(
                    f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}"
                    for k, v in sorted(st.build_counts.items())
                )
            ),
        )
    return Panel(grid, title="shard folder", expand=False)


def summary_table(st: DatasetStats) -> Table:
    """One column per split, one row per figure."""
    t = Table(title="splits", show_lines=False)
    t.add_column("")
    for name in st.splits:
        t.add_column(name, justify="right")
    rows: list[tuple[str, list[str]]] = []
    sp = list(st.splits.values())

    def row(label: str, fn) -> None:
        rows.append((label, [fn(s) for s in sp]))

    row("shards", lambda s: fmt_int(s.num_shards))
    row("documents", lambda s: fmt_int(s.num_docs))
    row("tokens", lambda s: fmt_int(s.num_tokens))
    row("bytes on disk", lambda s: fmt_bytes(s.bytes_on_disk))
    row("source bytes", lambda s: fmt_bytes(s.source_bytes) if s.source_bytes else "not recorded")
    row("source bytes / text token", lambda s: fmt_float(s.bytes_per_token, 3))
    for key in ("mean", "median", "p90", "p99", "min", "max"):
        row(
            f"tokens/doc {key}",
            lambda s, key=key: (
                fmt_float(s.doc_len_summary()[key], 1)
                if key in ("mean", "median", "p90", "p99")
                else fmt_int(s.doc_len_summary()[key])
            ),
        )
    for name in next(iter(sp)).special_counts if sp else ():
        row(name, lambda s, name=name: fmt_int(s.special_counts[name]))
    row("SOT == EOT == docs", lambda s: "[green]yes[/]" if s.markers_consistent else "[red]NO[/]")
    row(
        "ids >= vocab",
        lambda s: fmt_int(s.out_of_vocab) if not s.out_of_vocab else f"[red]{s.out_of_vocab:,}[/]",
    )
    row("unique tokens", lambda s: f"{s.unique_tokens:,} ({s.unique_tokens / s.vocab_size:.1%} of vocab)")
    for label, cells in rows:
        t.add_row(label, *cells)
    return t


def histogram_table(s: SplitStats) -> Table:
    edges, counts = s.doc_len_histogram()
    t = Table(title=f"{s.name}: tokens per document (markers included)", show_edge=False)
    t.add_column("tokens", justify="right")
    t.add_column("docs", justify="right")
    t.add_column("", min_width=BAR_WIDTH, no_wrap=True)
    peak = max(counts) if counts else 0
    for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
        t.add_row(f"{lo:,}–{hi - 1:,}", fmt_int(c), Text(bar(c, peak), style="cyan"))
    return t


def top_table(s: SplitStats) -> Table:
    t = Table(title=f"{s.name}: top {s.top_k} tokens (specials excluded)")
    t.add_column("#", justify="right")
    t.add_column("id", justify="right")
    t.add_column("token")
    t.add_column("count", justify="right")
    t.add_column("share", justify="right")
    for rank, (i, c) in enumerate(s.top_tokens(), 1):
        t.add_row(
            str(rank),
            str(i),
            Text(piece_repr(s.top_pieces.get(i))),
            fmt_int(c),
            f"{c / s.num_tokens:.2%}" if s.num_tokens else "-",
        )
    return t


def shard_table(s: SplitStats) -> Table:
    t = Table(title=f"{s.name}: shards")
    t.add_column("file", no_wrap=True, min_width=max((len(sh.file) for sh in s.shards), default=4))
    for col in ("docs", "tokens", "on disk", "source", "bytes/tok", "tok/doc"):
        t.add_column(col, justify="right")
    for sh in s.shards:
        t.add_row(
            sh.file,
            fmt_int(sh.num_docs),
            fmt_int(sh.num_tokens),
            fmt_bytes(sh.bytes_on_disk),
            fmt_bytes(sh.source_bytes) if sh.source_bytes else "-",
            fmt_float(sh.bytes_per_token, 3),
            fmt_float(sh.mean_doc_len, 1),
        )
    return t


def render_stats(st: DatasetStats) -> RenderableType:
    parts: list[RenderableType] = [header_panel(st), summary_table(st)]
    for s in st.splits.values():
        if s.num_docs:
            parts += [histogram_table(s), top_table(s), shard_table(s)]
    return Group(*parts)


# --- stats and verify: progress bar and the verify summary ---


def command_progress(console: Console, *, bytes_mode: bool, disable: bool) -> Progress:
    """The stats/verify bar on stderr (so --json stays clean): tokens and Mtok/s, or bytes and MB/s."""
    cols = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    if bytes_mode:
        cols += [DownloadColumn(), TransferSpeedColumn()]
    else:
        cols += [
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
            TextColumn("{task.fields[rate]}"),
        ]
    cols += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*cols, console=console, transient=True, disable=disable)


def verify_table(d: Path, problems: list) -> Table:
    """Summary: one row per shard file (present or listed), with its figures and its verdict."""
    by_file: dict[str, list] = {}
    for p in problems:
        by_file.setdefault(Path(p.file).name, []).append(p)
    names = sorted(
        {p.name for p in d.glob(f"*{SHARD_SUFFIX}")} | {n for n in by_file if n.endswith(SHARD_SUFFIX)}
    )
    t = Table(title=f"verify {d}")
    for col in ("file", "docs", "tokens", "bytes", "verdict"):
        t.add_column(col, justify="left" if col in ("file", "verdict") else "right", no_wrap=col == "file")
    for name in names:
        path = d / name
        try:
            h = read_header(path)
            docs, toks = f"{h.num_docs:,}", f"{h.num_tokens:,}"
        except (OSError, ShardFormatError):
            docs = toks = "-"
        size = f"{path.stat().st_size:,}" if path.is_file() else "missing"
        found = by_file.get(name, [])
        n_err = sum(p.severity == "error" for p in found)
        verdict = (
            Text(f"{n_err} error(s)", style="red")
            if n_err
            else Text(f"{len(found)} warning(s)", style="yellow")
            if found
            else Text("ok", style="green")
        )
        t.add_row(name, docs, toks, size, verdict)
    return t


def verified_summary(d: Path) -> str:
    """The OK line's figures: per split, shards, docs and tokens (just the folder when unreadable)."""
    try:
        ds = ShardDataset(d)
    except (OSError, ShardFormatError):
        return str(d)
    parts = [
        f"{s}: {len(ds.manifest.split(s))} shards, {ds.num_docs(s):,} docs, {ds.num_tokens(s):,} tokens"
        for s in SPLITS
    ]
    return f"{d} ({'; '.join(parts)})"
