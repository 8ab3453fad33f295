"""``python -m pipeline``: build, inspect, verify and decode owtgpt shards.

Subcommands are registered by their own modules (``register(subparsers)``), so this file only
dispatches; each module stays importable without side effects and none imports this one back. Every
subcommand runs through :func:`pipeline.errors.run_command`: a problem the user can fix is one stderr
line and exit 1 (data or input) or 2 (usage), Ctrl-C is 130, and a traceback appears only with
``--debug`` (before or after the subcommand) or ``OWTGPT_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.tools import build_cli, inspect_cli

# modules providing ``register(subparsers)``; each parser they add sets ``func``.
SUBCOMMAND_MODULES = (build_cli, inspect_cli)
DEBUG_HELP = "print the full traceback of an error (also OWTGPT_DEBUG=1)"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description=(
            "Tokenize a corpus once into checked, memory-mapped uint16 shards, then inspect them. "
            "Run `python -m pipeline COMMAND --help` for each command's flags. Exit status: 0 ok, "
            "1 data or input problem, 2 usage, 130 interrupted."
        ),
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMAND_MODULES:
        module.register(sub)
    for p in sub.choices.values():  # SUPPRESS: an absent sub-flag keeps the top-level value
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import run_command
    from pipeline.format import ShardFormatError
    from pipeline.tokenizer import TokenizerUnavailableError
    from pipeline.tools.sources import SourceError

    args = make_parser().parse_args(argv)
    return run_command(
        lambda: args.func(args),
        debug=args.debug,
        prefix=f"{args.command}: error: ",
        user_errors=(SourceError, ShardFormatError, TokenizerUnavailableError),
        on_interrupt=getattr(args, "on_interrupt", "interrupted"),
    )


if __name__ == "__main__":
    sys.exit(main())
