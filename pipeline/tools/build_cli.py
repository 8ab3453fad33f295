"""``python -m pipeline build SOURCE --out DIR ...``: the command-line face of :mod:`pipeline.tools.build`.

Every :class:`~pipeline.tools.build.ShardConfig` field is one flag (same name, dashes for
underscores); ``--quiet`` only silences the progress bar and summary.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from pipeline.tools.sources import DEFAULT_CHUNK_BYTES, DEFAULT_TEXT_GLOB, SOURCE_FORMATS

DESCRIPTION = """\
Tokenize a corpus once into checked, memory-mapped uint16 shards (GPT-2 BPE via tiktoken; each
document stored as <|startoftext|> tokens <|endoftext|>), split into train and val.

SOURCE is one of:
  a hub dataset name          Skylion007/openwebtext  (through `datasets`; --streaming to not cache it all)
  parquet file or folder      a `text` column (--text-field), read in record batches
  .jsonl / .jsonl.zst / .gz   one JSON object per line with a `text` field
  Skylion OpenWebText         a folder of urlsf_subset*_data.xz, or openwebtext.tar.xz
  a folder of text files      one document per file, chosen by --text-glob (hidden folders skipped)

The output is byte-identical for any --workers, and a killed build resumes where it stopped when
rerun with the same command. Rerunning on a finished folder is a no-op; other settings on an
existing folder are refused unless --overwrite. One build at a time per --out: a second one is
refused (DIR/.lock). A record whose text is not a string (a number, a list, null) is an error
naming its file and line, unless --skip-bad-records. On a full disk, free space and rerun the same
command: it resumes. Exit status: 0 ok, 1 data or input problem, 2 usage, 130 interrupted.
See pipeline/FORMAT.md for the format."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="corpus: hub name, parquet, jsonl[.zst|.gz], Skylion layout or folder",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for the shards and manifest.json")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="tokenizer worker processes (default: all cores, %(default)s); output does not depend on it",
    )
    p.add_argument(
        "--shard-tokens",
        type=int,
        default=100_000_000,
        help="tokens per shard, at most (a document never straddles shards) (default %(default)s = 200 MB)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0005,
        help="fraction of documents that go to the val split (default %(default)s, as nanoGPT)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="picks which documents go to val, deterministically (default 0)"
    )
    p.add_argument(
        "--streaming",
        action="store_true",
        help="hub sources: stream rows instead of downloading the dataset to the cache first",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing build in --out (only its shards, manifest and state are removed)",
    )
    p.add_argument(
        "--text-glob",
        default=DEFAULT_TEXT_GLOB,
        help="folder sources: comma-separated file name globs, e.g. '*.md,*.py' (default %(default)s); "
        "giving one makes an auto-detected folder a text folder, whatever else it holds",
    )
    p.add_argument(
        "--text-field",
        default="text",
        help="jsonl field / parquet or hub column with the text (default text)",
    )
    p.add_argument(
        "--source-format",
        default="auto",
        choices=SOURCE_FORMATS,
        help="how to read SOURCE (default auto: Skylion, then parquet, then jsonl, then text files)",
    )
    p.add_argument("--hf-config", default=None, help="hub sources: dataset configuration name")
    p.add_argument("--hf-split", default="train", help="hub sources: which split to read (default train)")
    p.add_argument(
        "--hf-revision",
        default=None,
        help="hub sources: git revision (e.g. refs/convert/parquet); default: main, falling back "
        "to refs/convert/parquet for script-based datasets",
    )
    p.add_argument(
        "--chunk-bytes",
        type=int,
        default=DEFAULT_CHUNK_BYTES,
        help="text bytes per worker task (default %(default)s); output does not depend on it",
    )
    p.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip records whose text is not a string (number, list, object, null) and count "
        "them, instead of stopping at the first one",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar or summary table (warnings still print)"
    )


def config_from_args(args: argparse.Namespace):
    from pipeline.tools.build import ShardConfig

    return ShardConfig(
        source=args.source,
        out=args.out,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
        val_fraction=args.val_fraction,
        seed=args.seed,
        streaming=args.streaming,
        overwrite=args.overwrite,
        text_glob=args.text_glob,
        text_field=args.text_field,
        source_format=args.source_format,
        hf_config=args.hf_config,
        hf_split=args.hf_split,
        hf_revision=args.hf_revision,
        chunk_bytes=args.chunk_bytes,
        skip_bad_records=args.skip_bad_records,
    )


def run(args: argparse.Namespace) -> int:
    """The ``build`` subcommand's body; failures are turned into one line by ``run_command``."""
    from pipeline.tools.build import build_shards

    def on_term(signum, frame):  # SIGTERM (e.g. a job scheduler) cleans up like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        build_shards(config_from_args(args), progress=not args.quiet)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "build",
        help="tokenize a corpus into shards",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(
        func=run, on_interrupt="interrupted: finished shards are kept; rerun the same command to resume"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.tools.build_cli ARGS`` is ``python -m pipeline build ARGS`` (used by tests)."""
    from pipeline.__main__ import main as pipeline_main

    return pipeline_main(["build", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
