"""``python -m pipeline build SOURCE --out DIR ...``: the command-line face of :mod:`pipeline.tools.build`.

Every :class:`~pipeline.tools.build.ShardConfig` field is one flag (same name, dashes for
underscores); ``--quiet`` only silences the progress bar and summary.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
from pathlib import Path

from pipeline.cliconfig import add_dataclass_arguments, dataclass_from_args
from pipeline.fsutil import TMP_MARKER
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
rerun with the same command. Rerunning on a finished folder checks every shard and rebuilds only
damaged or missing ones (a no-op when all are intact); other settings on an existing folder are
refused unless --overwrite, which replaces only a folder an earlier build wrote (built beside it, then
swapped in). A second Ctrl-C stops at once. One build at a time per --out: a second one is
refused (DIR/.lock). A record whose text is not a string (a number, a list, null) is an error
naming its file and line, unless --skip-bad-records. On a full disk, free space and rerun the same
command: it resumes. Exit status: 0 ok, 1 data or input problem, 2 usage, 130 interrupted.
See pipeline/FORMAT.md for the format."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(p, ShardConfig, positional=("source",))  # every field, its default and help
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar or summary table (warnings still print)"
    )


INTERRUPTING = (
    "interrupting: finishing the chunks in flight and dropping the open shard (Ctrl-C again to stop at once)"
)
STOPPED = (
    "interrupted again: stopped at once; finished shards are kept (the next build removes any partial "
    "file); rerun the same command to resume"
)


class _Interrupts:
    """SIGINT/SIGTERM: the first one raises KeyboardInterrupt (a clean stop that waits for the chunks
    in flight); any later one ends the process at once, so cleanup that blocks can never hang it.

    The hard stop kills this build's child processes (pool workers, source reader) first: they hold
    copies of the folder lock, which the kernel releases when the last holder dies. What is on disk
    stays resumable: shards, the state log and the manifest are only ever renamed into place whole.
    """

    def __init__(self, out: Path):
        self.out = out
        self.seen = False

    def __call__(self, signum, frame) -> None:
        if not self.seen:
            self.seen = True
            with contextlib.suppress(OSError):  # stdout may be a closed pipe
                os.write(1, (INTERRUPTING + "\n").encode())  # raw write: safe inside a signal handler
            raise KeyboardInterrupt
        for child in multiprocessing.active_children():
            child.kill()
        with contextlib.suppress(OSError):  # this process's half-written (pid-tagged) files; the next build
            for tmp in self.out.glob(f".*{TMP_MARKER}{os.getpid()}"):  # would remove them anyway
                tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.write(2, (STOPPED + "\n").encode())
        os._exit(130)


def run(args: argparse.Namespace) -> int:
    """The ``build`` subcommand's body; failures are turned into one line by ``run_command``."""
    from pipeline.tools.build import build_shards

    cfg = dataclass_from_args(ShardConfig, args)
    handler = _Interrupts(Path(cfg.out).resolve())
    # SIGTERM (e.g. a job scheduler) stops like Ctrl-C
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    build_shards(cfg, progress=not args.quiet)
    for sig, h in previous.items():  # after an interrupt the handler stays: a second signal ends at once
        signal.signal(sig, h)
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
