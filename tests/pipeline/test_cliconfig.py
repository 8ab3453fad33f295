"""The one dataclass -> argparse generator (pipeline/cliconfig.py): both styles on a small dataclass."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.cliconfig import add_dataclass_arguments, cli_field, dataclass_from_args


@dataclass
class Toy:
    source: str = field(metadata=cli_field("what to read", metavar="SOURCE"))
    out: Path = field(default=Path("o"), metadata=cli_field("where to write"))
    steps: int = field(default=3, metadata=cli_field("how many (default %(default)s)"))
    rate: float | None = field(default=None, metadata=cli_field("a rate"))
    fast: bool = field(default=False, metadata=cli_field("go fast"))
    mode: str = field(default="a", metadata=cli_field("which mode", choices=["a", "b"]))
    secret: int = field(default=0, metadata=cli_field("a test hook"))


def parser(**kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toy")
    add_dataclass_arguments(p, Toy, positional=("source",), **kw)
    return p


def test_defaults_style_fills_every_field_and_makes_the_dataclass():
    p = parser()
    cfg = dataclass_from_args(Toy, p.parse_args(["src", "--steps", "5", "--fast", "--out", "x"]))
    assert cfg == Toy(source="src", out=Path("x"), steps=5, fast=True)
    assert dataclass_from_args(Toy, p.parse_args(["src"])) == Toy(source="src")
    assert p.parse_args(["src", "--rate", "0.5"]).rate == 0.5
    help_text = p.format_help()
    assert "how many (default 3)" in help_text and "SOURCE" in help_text and "--no-fast" not in help_text
    with pytest.raises(SystemExit):
        p.parse_args(["src", "--mode", "c"])  # choices from the field's metadata


def test_given_only_style_keeps_absent_flags_absent():
    p = parser(given_only=True, hidden=("secret",), extra={"steps": {"metavar": "K"}})
    assert vars(p.parse_args(["src"])) == {"source": "src"}  # nothing given, nothing filled in
    got = vars(p.parse_args(["src", "--no-fast", "--steps", "2", "--out", "d", "--secret", "1"]))
    assert got == {"source": "src", "fast": False, "steps": 2, "out": Path("d"), "secret": 1}
    help_text = " ".join(p.format_help().split())
    assert "--fast, --no-fast go fast (default: False)" in help_text
    assert "--out DIR where to write (default: o)" in help_text
    assert "--rate X a rate (default: none)" in help_text
    assert "--mode {a,b} which mode (default: 'a')" in help_text
    assert "--steps K how many (default 3)" in help_text  # extra wins; %(default)s is the field's
    assert "secret" not in help_text
