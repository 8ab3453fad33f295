"""The one dataclass -> argparse generator: every config's flags come from its fields.

* One flag per field, named by :func:`pipeline.errors.flag` (``shard_tokens`` <-> ``--shard-tokens``);
  the field's metadata (:func:`cli_field`) holds its help text and any extra ``add_argument`` keywords.
  The type comes from the annotation (``X | None`` is ``X``): ``bool`` is a switch, ``int`` / ``float`` /
  ``Path`` convert, ``str`` stays text.
* Two styles, one per way a config is made:

  - ``given_only=False`` (``python -m pipeline build``): argparse fills in each field's default, so the
    namespace is a whole config; switches are ``store_true``; help may say ``%(default)s``.
  - ``given_only=True`` (``python -m trainer``): an absent flag is absent from the namespace
    (``argparse.SUPPRESS``), so layered settings (preset < TOML < flags, and ``--resume``'s record) can
    tell "given" from "default". Switches get a ``--no-`` form (a flag must be able to turn a preset's
    ``True`` off), each value a metavar of its type, and the help states the field's default itself
    (``%(default)s`` is filled in from the field) unless it already mentions one.

Used by :mod:`pipeline.tools.build_config` (ShardConfig), :mod:`trainer.config` (TrainConfig) and
:mod:`model.tools.cli_config` (SampleConfig, EvalConfig).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import flag

METAVARS = {int: "N", float: "X", str: "TEXT", Path: "DIR"}  # given_only style


def cli_field(help: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """A field's metadata: its flag's help (``%(default)s`` allowed) and extra ``add_argument`` keywords."""
    return {"help": help, "argparse": argparse_kwargs}


def base_type(hint: Any) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of a field annotation such as ``int | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def field_default(f: dataclasses.Field) -> Any:
    """The field's default (a ``default_factory`` is called: e.g. this machine's core count), or MISSING."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    given_only: bool = False,
    positional: tuple[str, ...] = (),
    hidden: tuple[str, ...] = (),
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """One argument per field of dataclass ``cls``, in field order (see the module doc for the styles).

    ``positional``: fields given without a flag (``SOURCE``). ``hidden``: accepted but not in ``--help``.
    ``extra``: ``add_argument`` keywords by field that depend on values outside the dataclass's own
    module (choices from a registry, a custom ``type``); they win over the generated ones.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ, _ = base_type(hints[f.name])
        kwargs: dict[str, Any] = dict(f.metadata.get("argparse", {}))
        kwargs.update((extra or {}).get(f.name, {}))
        help_text = f.metadata["help"]
        if f.name in positional:
            parser.add_argument(f.name, help=help_text, **kwargs)
            continue
        default = field_default(f)
        if given_only:
            shown = default if default is not None else "auto" if typ is bool else "none"
            help_text = help_text.replace("%(default)s", str(shown))  # argparse has no default to show
            if "default" not in help_text and default is not dataclasses.MISSING:
                help_text += f" (default: {shown!r})" if typ is str else f" (default: {shown})"
            kwargs["default"] = argparse.SUPPRESS
            if typ is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif "choices" not in kwargs and typ in METAVARS:  # with choices argparse shows {a,b,c}
                kwargs.setdefault("type", typ)
                kwargs.setdefault("metavar", METAVARS[typ])
        else:
            if default is not dataclasses.MISSING:
                kwargs["default"] = default
            if typ is bool:
                kwargs["action"] = "store_true"
            elif typ in (int, float, Path):
                kwargs.setdefault("type", typ)
        kwargs["help"] = argparse.SUPPRESS if f.name in hidden else help_text
        parser.add_argument(flag(f.name), **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` made from the parsed arguments of its fields (other attributes of ``args`` ignored)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
