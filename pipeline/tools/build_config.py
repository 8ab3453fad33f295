"""``ShardConfig``: the settings of one build, validated; ``python -m pipeline build``'s flags come from it.

One field per flag (``shard_tokens`` <-> ``--shard-tokens``), its help text and argparse extras in the
field's metadata, so defaults and help live in one place; :mod:`pipeline.cliconfig` makes the flags.
Which settings change the output bytes: pipeline/FORMAT.md, "manifest.json".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cliconfig import cli_field
from pipeline.errors import ConfigError, UserError
from pipeline.tools.sources import DEFAULT_CHUNK_BYTES, DEFAULT_TEXT_GLOB, SOURCE_FORMATS


class BuildError(UserError):
    """The build cannot proceed (conflicting output, empty corpus, bad record, full disk); the message
    says what to do. Exit status 1 through :func:`pipeline.errors.run_command`."""


@dataclass
class ShardConfig:
    """Settings of one build; bad values raise :class:`ConfigError` naming the flag (exit 2).

    ``workers``, ``streaming``, ``chunk_bytes``, ``overwrite`` and ``skip_bad_records`` never change
    the output bytes (without ``skip_bad_records`` a bad record fails the build).
    """

    source: str = field(
        metadata=cli_field(
            "corpus: hub name, parquet, jsonl[.zst|.gz], Skylion layout or folder", metavar="SOURCE"
        )
    )
    out: Path = field(metadata=cli_field("output folder for the shards and manifest.json", required=True))
    workers: int = field(
        default_factory=lambda: os.cpu_count() or 1,
        metadata=cli_field(
            "tokenizer worker processes (default: all cores, %(default)s); output does not depend on it"
        ),
    )
    shard_tokens: int = field(
        default=100_000_000,  # x 2 bytes = 200 MB per shard
        metadata=cli_field(
            "tokens per shard, at most (a document never straddles shards) (default %(default)s = 200 MB)"
        ),
    )
    val_fraction: float = field(
        default=0.0005,
        metadata=cli_field(
            "fraction of documents that go to the val split (default %(default)s, as nanoGPT)"
        ),
    )
    seed: int = field(
        default=0, metadata=cli_field("picks which documents go to val, deterministically (default 0)")
    )
    streaming: bool = field(
        default=False,
        metadata=cli_field("hub sources: stream rows instead of downloading the dataset to the cache first"),
    )
    overwrite: bool = field(
        default=False,
        metadata=cli_field(
            "replace an earlier build in --out (only a folder a build wrote; the new one is built in "
            "DIR/.overwrite and swapped in at the end, so the old one stays whole until then)"
        ),
    )
    text_glob: str = field(
        default=DEFAULT_TEXT_GLOB,
        metadata=cli_field(
            "folder sources: comma-separated file name globs, e.g. '*.md,*.py' (default %(default)s); "
            "giving one makes an auto-detected folder a text folder, whatever else it holds"
        ),
    )
    text_field: str = field(
        default="text", metadata=cli_field("jsonl field / parquet or hub column with the text (default text)")
    )
    source_format: str = field(
        default="auto",
        metadata=cli_field(
            "how to read SOURCE (default auto: Skylion, then parquet, then jsonl, then text files)",
            choices=SOURCE_FORMATS,
        ),
    )
    hf_config: str | None = field(default=None, metadata=cli_field("hub sources: dataset configuration name"))
    hf_split: str = field(
        default="train", metadata=cli_field("hub sources: which split to read (default train)")
    )
    hf_revision: str | None = field(
        default=None,
        metadata=cli_field(
            "hub sources: git revision (e.g. refs/convert/parquet); default: main, falling back "
            "to refs/convert/parquet for script-based datasets"
        ),
    )
    chunk_bytes: int = field(
        default=DEFAULT_CHUNK_BYTES,
        metadata=cli_field("text bytes per worker task (default %(default)s); output does not depend on it"),
    )
    skip_bad_records: bool = field(
        default=False,
        metadata=cli_field(
            "skip records whose text is not a string (number, list, object, null) and count "
            "them, instead of stopping at the first one"
        ),
    )

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.source:
            raise ConfigError("SOURCE is empty: pass a hub dataset name, a file or a folder")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: must be an integer >= 1")
        if self.shard_tokens < 3:
            raise ConfigError(f"--shard-tokens {self.shard_tokens}: must be >= 3 (one tiny document)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        if not 0 <= self.seed < 2**63:  # the split hash works on uint64
            raise ConfigError(f"--seed {self.seed}: must be in [0, 2**63)")
        if not [g for g in self.text_glob.split(",") if g.strip()]:
            raise ConfigError(f"--text-glob {self.text_glob!r}: give at least one pattern, e.g. '*.txt'")
        if not self.text_field:
            raise ConfigError("--text-field is empty: name the column/field that holds the text")
        if self.source_format not in SOURCE_FORMATS:
            raise ConfigError(f"--source-format {self.source_format!r}: expected one of {SOURCE_FORMATS}")
        if self.chunk_bytes < 1024:
            raise ConfigError(f"--chunk-bytes {self.chunk_bytes}: must be >= 1024")
