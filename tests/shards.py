"""Hand-made shard folders for tests: a manifest entry per written shard and the manifest that lists them.

The tests write shards with :class:`pipeline.format.ShardWriter` directly (no dependency on the build);
these two helpers finish the folder the way ``python -m pipeline build`` does.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.format import Manifest, ShardEntry, read_header
from pipeline.tokenizer import SPECIAL_TOKENS, VOCAB_SIZE


def entry_of(path: Path, split: str) -> ShardEntry:
    """The manifest entry of the finished shard at ``path``, from its own header."""
    h = read_header(path)
    return ShardEntry(path.name, split, h.num_tokens, h.num_docs, h.payload_sha256)


def save_manifest(
    root: Path,
    entries: list[ShardEntry],
    *,
    fingerprint: str,
    vocab_size: int = VOCAB_SIZE,
    special_tokens: dict[str, int] | None = None,
    source: str = "generated",
    settings: dict | None = None,
) -> Manifest:
    """Write ``root/manifest.json`` listing ``entries``; returns the manifest."""
    m = Manifest(
        tokenizer_fingerprint=fingerprint,
        vocab_size=vocab_size,
        special_tokens=dict(SPECIAL_TOKENS if special_tokens is None else special_tokens),
        source=source,
        settings=settings or {},
        shards=entries,
    )
    m.save(root)
    return m
