"""``python -m pipeline``: build, inspect, verify and decode owtgpt shards.

Subcommands are registered by their own modules (``register(subparsers)``), so this file only
dispatches; each module stays importable without side effects.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module providing ``register(subparsers)``; the parser it adds sets ``func``.
SUBCOMMAND_MODULES = ("pipeline.build_cli", "pipeline.inspect_cli")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description=(
            "Tokenize a corpus once into checked, memory-mapped uint16 shards, then inspect them. "
            "Run `python -m pipeline COMMAND --help` for each command's flags."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
