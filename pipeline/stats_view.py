"""Rich rendering for the inspection commands: ``stats`` tables and the document-length histogram.

Pure presentation: it takes a :class:`pipeline.stats.DatasetStats` and returns rich renderables,
so the figures themselves stay testable through ``to_dict()`` and the JSON output. Token pieces are
shown with ``repr`` so leading spaces, newlines and replacement characters are visible.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from pipeline.stats import DatasetStats, SplitStats

BAR_WIDTH = 40  # terminal cells of the longest histogram bar
_EIGHTHS = " ▏▎▍▌▋▊▉"  # partial blocks: a bar resolves 1/8 of a cell


def fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def fmt_float(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def fmt_bytes(n: int) -> str:
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
