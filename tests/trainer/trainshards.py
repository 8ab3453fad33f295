"""Shard folders for the trainer tests, written with the format module (no dependency on the build).

``make_shards`` tokenizes generated documents (or given texts) with the real tokenizer, writes one
train and one val shard with :class:`pipeline.format.ShardWriter`, and a manifest: exactly the
layout ``python -m pipeline build`` produces, at test size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.format import ShardEntry, ShardWriter, shard_name
from pipeline.tokenizer import (
    VOCAB_SIZE,
    encode_document,
    get_tokenizer,
    tokenizer_fingerprint,
)
from tests.shards import entry_of, save_manifest
from tests.textgen import make_docs


def write_split(
    out: Path, split: str, docs: list[np.ndarray], vocab_size: int, fingerprint: str
) -> ShardEntry:
    path = out / shard_name(split, 0)
    with ShardWriter(path, vocab_size=vocab_size, tokenizer_fingerprint=fingerprint) as w:
        for d in docs:
            w.add_document(d)
    return entry_of(path, split)


def make_shards(
    out: Path,
    *,
    texts: list[str] | None = None,
    n_docs: int = 240,
    val_docs: int = 24,
    seed: int = 0,
    vocab_size: int = VOCAB_SIZE,
    fingerprint: str | None = None,
) -> Path:
    """A finished shard folder at ``out`` (created); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    texts = texts if texts is not None else make_docs(n_docs, seed=seed, min_words=40, max_words=300)
    enc = get_tokenizer()
    docs = [encode_document(t, enc) for t in texts]
    fp = fingerprint or tokenizer_fingerprint()
    entries = [
        write_split(out, "train", docs[val_docs:], vocab_size, fp),
        write_split(out, "val", docs[:val_docs], vocab_size, fp),
    ]
    save_manifest(
        out, entries, fingerprint=fp, vocab_size=vocab_size, source="tests.textgen", settings={"seed": seed}
    )
    return out
