"""``python -m pipeline build SOURCE --out DIR ...``: the command-line face of :mod:`pipeline.tools.build`.

Every :class:`~pipeline.tools.build.ShardConfig` field is one flag (same name, dashes for
underscores); ``--quiet`` only silences the progress bar and summary.
"""

from __future__ import annotations

import argparse
import signal

from pipeline.cliconfig import add_dataclass_arguments, dataclass_from_args
from pipeline.tools.build_config import ShardConfig

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
    add_dataclass_arguments(p, ShardConfig, positional=("source",))  # every field, its default and help
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar or summary table (warnings still print)"
    )


def run(args: argparse.Namespace) -> int:
    """The ``build`` subcommand's body; failures are turned into one line by ``run_command``."""
    from pipeline.tools.build import build_shards

    def on_term(signum, frame):  # SIGTERM (e.g. a job scheduler) cleans up like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        build_shards(dataclass_from_args(ShardConfig, args), progress=not args.quiet)
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
