"""``python -m pipeline stats | verify | show``: look into built shards.

All three refuse a folder a build still holds ("build in progress", exit 1): an unfinished folder is
never reported as corrupt. Progress bars go to stderr so ``--json`` and ``show``'s text stay clean on
stdout; ``show`` writes a document's bytes exactly, so ``show --doc 7 > doc.txt`` recovers the source.
``--doc I`` / ``--offset N`` count across all shards of ``--split`` in manifest order. Each command's
``--help`` lists its flags and ``--json`` keys; rendering lives in :mod:`pipeline.tools.views`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pipeline.errors import UsageError, UserError
from pipeline.format import SPLITS, ShardDataset, ShardFormatError, check_entry, open_shard
from pipeline.fsutil import refuse_if_being_built
from pipeline.tools.stats import DEFAULT_CHUNK_TOKENS as STATS_CHUNK
from pipeline.tools.verify import DEFAULT_CHUNK_TOKENS as VERIFY_CHUNK
from pipeline.tools.views import command_progress, piece_repr, verified_summary, verify_table

SPLIT_CHOICES = (*SPLITS, "all")
DIR_HELP = "shard folder written by `python -m pipeline build`"


# ----------------------------------------------------------------------------- show: lookups


@dataclass
class Span:
    """A token range ``[start, end)`` of one shard file."""

    file: str
    start: int
    end: int


def _split_entries(ds: ShardDataset, split: str):
    entries = ds.manifest.split(split)
    if not entries:
        raise ValueError(
            f"{ds.directory}: the {split!r} split has no shards (choose --split "
            f"{' or '.join(s for s in SPLITS if s != split)})"
        )
    return entries


def _open_checked(ds: ShardDataset, entry):
    shard = open_shard(ds.directory / entry.file)
    check_entry(shard, entry, ds.manifest)
    return shard


def doc_tokens(ds: ShardDataset, split: str, doc: int) -> tuple[np.ndarray, int, Span]:
    """Tokens (markers included) of document ``doc`` of ``split``, its global token offset, its span."""
    entries = _split_entries(ds, split)
    total = sum(e.num_docs for e in entries)
    if not 0 <= doc < total:
        raise ValueError(
            f"--doc {doc} is out of range: the {split} split of {ds.directory} has "
            f"{total:,} documents (0..{total - 1:,})"
        )
    base_doc = base_tok = 0
    for e in entries:
        if doc < base_doc + e.num_docs:
            shard = _open_checked(ds, e)
            sp = ds.manifest.special_tokens
            from pipeline.tokenizer import EOT_ID, SOT_ID

            sot, eot = int(sp.get("<|startoftext|>", SOT_ID)), int(sp.get("<|endoftext|>", EOT_ID))
            lo, hi = shard.checked_doc_span(doc - base_doc, sot, eot)  # a damaged index is an error
            return np.array(shard.tokens[lo:hi]), base_tok + lo, Span(e.file, lo, hi)
        base_doc += e.num_docs
        base_tok += e.num_tokens
    raise AssertionError("unreachable: doc was range-checked")


def token_window(ds: ShardDataset, split: str, offset: int, length: int) -> tuple[np.ndarray, list[Span]]:
    """``length`` tokens from global token ``offset`` of ``split`` (may span shards)."""
    entries = _split_entries(ds, split)
    total = sum(e.num_tokens for e in entries)
    if length <= 0:
        raise ValueError(f"--length must be positive, got {length}")
    if not 0 <= offset < total:
        raise ValueError(
            f"--offset {offset} is out of range: the {split} split of {ds.directory} has "
            f"{total:,} tokens (0..{total - 1:,})"
        )
    end = min(offset + length, total)
    parts, spans, base = [], [], 0
    for e in entries:
        lo, hi = max(offset, base), min(end, base + e.num_tokens)
        if lo < hi:
            shard = _open_checked(ds, e)
            parts.append(np.array(shard.tokens[lo - base : hi - base]))
            spans.append(Span(e.file, lo - base, hi - base))
        base += e.num_tokens
        if base >= end:
            break
    return np.concatenate(parts), spans


def strip_markers(ids: np.ndarray, sot: int, eot: int) -> np.ndarray:
    """Drop a leading ``<|startoftext|>`` and a trailing ``<|endoftext|>`` (only those)."""
    lo = 1 if len(ids) and ids[0] == sot else 0
    hi = len(ids) - 1 if len(ids) > lo and ids[-1] == eot else len(ids)
    return ids[lo:hi]


# ----------------------------------------------------------------------------- commands


def _friendly(fn):
    """The expected failures as one line (printed by ``run_command``): a folder still being built
    or without a manifest, a corrupt shard (exit 1), an out-of-range index or bad flag (exit 2)."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ShardFormatError as e:
            raise UserError(
                f"{e} (run `python -m pipeline verify {args.dir}` for a report of every problem)"
            ) from e
        except FileNotFoundError as e:
            if e.errno is None:  # ours: the message is complete (e.g. "no manifest; ... Build one with")
                raise UserError(str(e)) from e
            raise
        except ValueError as e:
            raise UsageError(str(e)) from e

    return run


@_friendly
def cmd_stats(args: argparse.Namespace) -> int:
    from pipeline.tools.stats import compute_stats
    from pipeline.tools.views import render_stats

    err = Console(stderr=True)
    splits = SPLITS if args.split == "all" else (args.split,)
    ds = ShardDataset(args.dir)
    total = sum(ds.num_tokens(s) for s in splits)
    with command_progress(err, bytes_mode=False, disable=args.no_progress) as prog:
        task = prog.add_task("stats", total=total, rate="")

        def advance(n: int) -> None:
            prog.advance(task, n)
            speed = prog.tasks[0].speed
            prog.update(task, rate=f"{speed / 1e6:,.0f} Mtok/s" if speed else "")

        st = compute_stats(
            ds, splits=splits, top_k=args.top, chunk_tokens=args.chunk_tokens, progress=advance
        )
    if args.json:
        print(json.dumps(st.to_dict(), indent=2))
    else:
        Console().print(render_stats(st))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.tools.verify import errors, planned_bytes, verify_dataset, with_fix

    refuse_if_being_built(args.dir)  # verify reads shard files directly, not through ShardDataset
    err = Console(stderr=True)
    with command_progress(err, bytes_mode=True, disable=args.no_progress) as prog:
        task = prog.add_task("verify", total=planned_bytes(args.dir))
        problems = verify_dataset(
            args.dir, chunk_tokens=args.chunk_tokens, progress=lambda n: prog.advance(task, n)
        )
    problems = with_fix(problems, args.dir)  # each error names the exact command that repairs it
    n_err = len(errors(problems))
    n_warn = len(problems) - n_err
    if args.json:
        print(
            json.dumps(
                {
                    "ok": n_err == 0,
                    "errors": n_err,
                    "warnings": n_warn,
                    "problems": [p.to_dict() for p in problems],
                },
                indent=2,
            )
        )
        return 1 if n_err else 0
    for p in problems:  # stderr, one line per problem with the full path: greppable, never wrapped
        err.print(
            Text(f"verify: {p.severity}: {p}", style="red" if p.severity == "error" else "yellow"),
            soft_wrap=True,
        )
    out = Console()  # the report (table and verdict) stays on stdout
    out.print(verify_table(Path(args.dir), problems))
    ds_summary = verified_summary(Path(args.dir))
    if n_err:
        out.print(Text(f"FAILED: {n_err} error(s), {n_warn} warning(s) in {args.dir}", style="bold red"))
        return 1
    out.print(Text(f"OK: {ds_summary}" + (f", {n_warn} warning(s)" if n_warn else ""), style="bold green"))
    return 0


@_friendly
def cmd_show(args: argparse.Namespace) -> int:
    from pipeline.tokenizer import EOT_ID, SOT_ID, get_tokenizer

    if args.offset is not None and args.length is None:
        raise ValueError("--offset needs --length (how many tokens to decode)")
    if args.length is not None and args.offset is None:
        raise ValueError("--length goes with --offset; use --doc I for a whole document")
    ds = ShardDataset(args.dir)
    sp = ds.manifest.special_tokens
    sot, eot = int(sp.get("<|startoftext|>", SOT_ID)), int(sp.get("<|endoftext|>", EOT_ID))
    if args.doc is not None:
        ids, offset, span = doc_tokens(ds, args.split, args.doc)
        spans = [span]
        text_ids = ids if args.keep_markers else strip_markers(ids, sot, eot)
    else:
        ids, spans = token_window(ds, args.split, args.offset, args.length)
        offset, text_ids = args.offset, ids
    enc = get_tokenizer()
    vocab = ds.vocab_size
    # out-of-vocabulary ids (a corrupt shard) decode as U+FFFD instead of crashing the viewer
    piece = [enc.decode_single_token_bytes(int(i)) if int(i) < vocab else b"\xef\xbf\xbd" for i in ids]
    text_bytes = b"".join(
        enc.decode_single_token_bytes(int(i)) if int(i) < vocab else b"\xef\xbf\xbd" for i in text_ids
    )
    if args.json:
        obj = {
            "split": args.split,
            "doc": args.doc,  # global index in the split; null for a token window
            "offset": offset,  # global token offset of the first id
            "num_tokens": len(ids),
            "spans": [vars(s) for s in spans],  # [{file, start, end}]: the shard token ranges read
            "ids": [int(i) for i in ids],
            "text": text_bytes.decode("utf-8", errors="replace"),  # markers as in the text view
        }
        if args.tokens:
            obj["pieces"] = [p.decode("utf-8", errors="replace") for p in piece]
        print(json.dumps(obj, indent=2))
        return 0
    where = ", ".join(f"{s.file}[{s.start:,}:{s.end:,}]" for s in spans)
    what = f"doc {args.doc:,}" if args.doc is not None else f"tokens {offset:,}..{offset + len(ids):,}"
    err = Console(stderr=True)
    err.print(Text(f"{args.split} {what}: {len(ids):,} tokens from {where}", style="dim"))
    if args.tokens:
        t = Table(title=f"{args.split} {what}")
        t.add_column("offset", justify="right")
        t.add_column("id", justify="right")
        t.add_column("piece")
        for k, (i, p) in enumerate(zip(ids, piece, strict=True)):
            t.add_row(f"{offset + k:,}", str(int(i)), Text(piece_repr(p)))
        Console().print(t)
        return 0
    sys.stdout.flush()
    sys.stdout.buffer.write(text_bytes)
    if sys.stdout.isatty() and not text_bytes.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")  # keep the shell prompt off the text; pipes get exact bytes
    sys.stdout.buffer.flush()
    return 0


# ----------------------------------------------------------------------------- argparse


def _positive(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _nonneg(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _paras(*paragraphs: str) -> str:
    """Help text as wrapped paragraphs (the raw formatter keeps the blank lines between them)."""
    return "\n\n".join(textwrap.fill(p, width=90) for p in paragraphs)


def _add_chunk_flags(p: argparse.ArgumentParser, default: int, what: str) -> None:
    """``--chunk-tokens`` and ``--no-progress``, shared by the streaming commands (stats, verify)."""
    p.add_argument(
        "--chunk-tokens", type=_positive, default=default, metavar="N", help=f"{what} (default: {default})"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_command(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand over one shard folder: its parser (raw-formatted help) with the ``dir`` positional."""
    p = subparsers.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    p.add_argument("dir", type=Path, help=DIR_HELP)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``stats``, ``verify`` and ``show`` to ``python -m pipeline``."""
    p = _add_command(
        subparsers,
        "stats",
        help="statistics of a shard folder: docs, tokens, lengths, specials, vocab coverage, top tokens",
        description=_paras(
            "Stream over the shards (bounded memory) and report, per split: shard count, documents, "
            "tokens, bytes on disk; tokens per document (mean, median, p90, p99, max, histogram; the "
            "<|startoftext|> and <|endoftext|> markers count); special-token counts and the check "
            "SOT == EOT == documents; unique ids and the top-K tokens decoded; source bytes per "
            "text token; the tokenizer and dataset fingerprints; a per-shard table.",
            "--json prints one object; its keys are documented in pipeline/tools/stats.py and the README "
            "(splits.<name>.num_docs, num_tokens, num_shards, doc_len.{mean,median,p90,p99,min,max}, "
            "special_counts, unique_tokens, top_tokens, ...).",
        ),
        epilog="example: python -m pipeline stats shards --split train --top 30",
    )
    p.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        default="all",
        help="which split to report (default: all = train and val, each separately)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    p.add_argument(
        "--top",
        type=_nonneg,
        default=20,
        metavar="K",
        help="how many of the most frequent ordinary tokens to list (default: 20)",
    )
    _add_chunk_flags(p, STATS_CHUNK, "tokens counted per chunk; memory is about 10 bytes x N")
    p.set_defaults(func=cmd_stats)

    p = _add_command(
        subparsers,
        "verify",
        help="full validation of a shard folder; exit 1 on any error, naming each file",
        description=_paras(
            "Check everything and report every problem (not only the first), each naming its file: "
            "the manifest (format version, dataset fingerprint, document counts), each listed shard's "
            "presence, header (magic, version, CRC), file size against the header, header against "
            "the manifest, payload and index sha256, every id < vocab size, the document index "
            "(starts at 0, never decreases, ends at num_tokens), every document starting with "
            "<|startoftext|> and ending with <|endoftext|> with no special id inside. Unlisted shard "
            "files and stale temp files are warnings.",
            "Exit status: 0 when no error was found (warnings "
            "allowed), 1 otherwise. A progress bar over the bytes goes to stderr.",
        ),
        epilog="example: python -m pipeline verify shards && echo ok",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"ok", "errors", "warnings", "problems": [{file, severity, message}]}',
    )
    _add_chunk_flags(p, VERIFY_CHUNK, "tokens hashed and checked per chunk")
    p.set_defaults(func=cmd_verify)

    p = _add_command(
        subparsers,
        "show",
        help="decode one document, or a token window, back to text (--tokens: ids side by side)",
        description=_paras(
            "Decode document I (--doc I) or the L tokens from token offset N (--offset N --length L) "
            "of one split. Documents and offsets count across all shards of the split in manifest "
            "order; the build keeps source order, so --doc I is the I-th stored (non-empty) source "
            "document of the split.",
            "Text view: the document's text is written to stdout byte for byte; its <|startoftext|> "
            "and <|endoftext|> markers are stripped (--keep-markers shows them). A token window is "
            "shown as is, markers included, so document boundaries are visible. Where it came from "
            "goes to stderr.",
            "--tokens: a table of offset, id and the decoded piece of every token "
            "(markers included). --json: split, doc, offset, num_tokens, spans, ids, text (and "
            "pieces with --tokens).",
        ),
        epilog=(
            "examples:\n  python -m pipeline show shards --doc 0\n"
            "  python -m pipeline show shards --split val --offset 1000 --length 50 --tokens"
        ),
    )
    p.add_argument("--split", choices=SPLITS, default="train", help="split to read (default: train)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--doc", type=_nonneg, metavar="I", help="document index within the split (from 0)")
    which.add_argument("--offset", type=_nonneg, metavar="N", help="first token of a window (with --length)")
    p.add_argument("--length", type=_positive, metavar="L", help="window length in tokens (with --offset)")
    p.add_argument("--tokens", action="store_true", help="show ids side by side with their decoded pieces")
    p.add_argument(
        "--keep-markers",
        action="store_true",
        help="with --doc: keep <|startoftext|>/<|endoftext|> in the text view",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (see description)")
    p.set_defaults(func=cmd_show)
