"""Streaming statistics of a finished shard folder (``python -m pipeline stats``).

:func:`compute_stats` reads the shards one at a time in chunks of ``chunk_tokens`` (bounded memory,
whatever the corpus size) and returns a :class:`DatasetStats`. It trusts the headers; ``verify`` is the
command that hashes and validates content. :meth:`DatasetStats.to_dict` is the ``--json`` output; its keys
are stable:

``directory``, ``source``, ``format_version``, ``vocab_size``, ``tokenizer_fingerprint`` (from the
manifest), ``tokenizer_matches`` (it equals this owtgpt's tokenizer; ``null`` when the tokenizer
could not be loaded), ``dataset_fingerprint``, ``build_counts`` (the manifest's document
accounting: ``docs_read``, ``docs_written``, ``docs_dropped_empty``, ...), and ``splits.<name>``
for each requested split (``train``, ``val``) with:

* ``num_shards``, ``num_docs``, ``num_tokens`` (markers included), ``bytes_on_disk`` (shard files).
* ``source_bytes``: UTF-8 bytes of source text, as the build recorded them (0 when it did not), and
  ``bytes_per_token``: ``source_bytes`` / text tokens, where text tokens exclude the two markers of
  each document (the BPE's compression ratio); ``null`` when any shard lacks source bytes.
* ``doc_len``: tokens per document *including* its ``<|startoftext|>`` and ``<|endoftext|>``:
  ``{mean, median, p90, p99, min, max}``; percentiles use numpy's default (linear interpolation).
  All ``null`` for an empty split.
* ``doc_len_histogram``: ``{bin_edges, counts}`` over power-of-two bins ``[2^k, 2^(k+1))``.
* ``special_counts``: ``{"<|endoftext|>": n, "<|startoftext|>": n, "<|padding|>": n, "<|unknown|>": n}``
  over every token of the split, and ``markers_consistent``: SOT count == EOT count == documents.
* ``out_of_vocab``: how many ids are >= ``vocab_size`` (0 in any valid shard; ``verify`` names them).
* ``unique_tokens``: distinct ids that occur (specials included) and ``vocab_coverage`` =
  ``unique_tokens / vocab_size``.
* ``top_tokens``: the ``--top`` most frequent *ordinary* ids (special tokens are reported above,
  not here), as ``[{"id", "count", "text"}]``, by count descending then id ascending; ``text`` is
  the token's bytes decoded as UTF-8 with invalid bytes replaced by U+FFFD.
* ``shards``: ``[{"file", "num_docs", "num_tokens", "bytes_on_disk", "source_bytes",
  "bytes_per_token", "mean_doc_len"}]`` in manifest order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.format import SPLITS, ShardDataset
from pipeline.tokenizer import EOT_ID, SOT_ID, SPECIAL_TOKENS

# 256Ki tokens per chunk: bincount widens a chunk to intp (8 bytes/token), and a 2 MiB temporary
# stays in cache, which makes chunked counting ~2x faster than one bincount over a whole memmap
# (measured by bench/stats.py); the per-chunk cost (adding a vocab-sized array) is negligible.
DEFAULT_CHUNK_TOKENS = 1 << 18
DEFAULT_TOP_K = 20
MARKERS_PER_DOC = 2  # <|startoftext|> and <|endoftext|>


@dataclass
class ShardStats:
    """Per-shard figures (cheap: from the header, the manifest and the index)."""

    file: str
    num_docs: int
    num_tokens: int
    bytes_on_disk: int
    source_bytes: int

    @property
    def bytes_per_token(self) -> float | None:
        text_tokens = self.num_tokens - MARKERS_PER_DOC * self.num_docs
        return self.source_bytes / text_tokens if self.source_bytes and text_tokens > 0 else None

    @property
    def mean_doc_len(self) -> float | None:
        return self.num_tokens / self.num_docs if self.num_docs else None

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "num_docs": self.num_docs,
            "num_tokens": self.num_tokens,
            "bytes_on_disk": self.bytes_on_disk,
            "source_bytes": self.source_bytes,
            "bytes_per_token": self.bytes_per_token,
            "mean_doc_len": self.mean_doc_len,
        }


@dataclass
class SplitStats:
    """Everything ``stats`` reports about one split. ``token_counts`` has one slot per id."""

    name: str
    vocab_size: int
    shards: list[ShardStats]
    token_counts: np.ndarray  # (vocab_size,) int64: occurrences of each id
    doc_lengths: np.ndarray  # (num_docs,) int64: tokens per document, markers included
    out_of_vocab: int = 0  # ids >= vocab_size (never in a valid shard)
    top_k: int = DEFAULT_TOP_K
    top_pieces: dict[int, bytes] = field(default_factory=dict)  # id -> the token's bytes, for top tokens
    _doc_len: dict | None = field(default=None, repr=False, compare=False)

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def num_docs(self) -> int:
        return sum(s.num_docs for s in self.shards)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.shards)

    @property
    def bytes_on_disk(self) -> int:
        return sum(s.bytes_on_disk for s in self.shards)

    @property
    def source_bytes(self) -> int:
        return sum(s.source_bytes for s in self.shards)

    @property
    def bytes_per_token(self) -> float | None:
        if not self.shards or any(s.source_bytes == 0 for s in self.shards):
            return None
        text_tokens = self.num_tokens - MARKERS_PER_DOC * self.num_docs
        return self.source_bytes / text_tokens if text_tokens > 0 else None

    @property
    def special_counts(self) -> dict[str, int]:
        return {name: int(self.token_counts[i]) for name, i in SPECIAL_TOKENS.items() if i < self.vocab_size}

    @property
    def markers_consistent(self) -> bool:
        sc = self.token_counts
        return int(sc[SOT_ID]) == int(sc[EOT_ID]) == self.num_docs

    @property
    def unique_tokens(self) -> int:
        return int(np.count_nonzero(self.token_counts))

    def doc_len_summary(self) -> dict[str, float | int | None]:
        if self._doc_len is None:  # percentiles sort all lengths: compute once per split
            self._doc_len = self._summarise_lengths()
        return dict(self._doc_len)

    def _summarise_lengths(self) -> dict[str, float | int | None]:
        lens = self.doc_lengths
        if len(lens) == 0:
            return dict.fromkeys(("mean", "median", "p90", "p99", "min", "max"))
        p50, p90, p99 = np.percentile(lens, [50, 90, 99])
        return {
            "mean": float(lens.mean()),
            "median": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "min": int(lens.min()),
            "max": int(lens.max()),
        }

    def doc_len_histogram(self) -> tuple[list[int], list[int]]:
        """Power-of-two bins: ``edges[i] <= len < edges[i+1]``; empty lists for an empty split."""
        return length_histogram(self.doc_lengths)

    def top_tokens(self) -> list[tuple[int, int]]:
        """(id, count) of the ``top_k`` most frequent ordinary ids; count desc, then id asc."""
        return top_ordinary_tokens(self.token_counts, self.top_k)

    def to_dict(self) -> dict:
        edges, counts = self.doc_len_histogram()
        return {
            "num_shards": self.num_shards,
            "num_docs": self.num_docs,
            "num_tokens": self.num_tokens,
            "bytes_on_disk": self.bytes_on_disk,
            "source_bytes": self.source_bytes,
            "bytes_per_token": self.bytes_per_token,
            "doc_len": self.doc_len_summary(),
            "doc_len_histogram": {"bin_edges": edges, "counts": counts},
            "special_counts": self.special_counts,
            "markers_consistent": self.markers_consistent,
            "out_of_vocab": self.out_of_vocab,
            "unique_tokens": self.unique_tokens,
            "vocab_coverage": self.unique_tokens / self.vocab_size if self.vocab_size else 0.0,
            "top_tokens": [
                {"id": i, "count": c, "text": self.top_pieces.get(i, b"").decode("utf-8", errors="replace")}
                for i, c in self.top_tokens()
            ],
            "shards": [s.to_dict() for s in self.shards],
        }


@dataclass
class DatasetStats:
    """Stats of a shard folder: manifest-level facts plus one :class:`SplitStats` per split."""

    directory: str
    source: str
    format_version: int
    vocab_size: int
    tokenizer_fingerprint: str
    tokenizer_matches: bool | None
    dataset_fingerprint: str
    build_counts: dict
    splits: dict[str, SplitStats]

    def to_dict(self) -> dict:
        return {
            "directory": self.directory,
            "source": self.source,
            "format_version": self.format_version,
            "vocab_size": self.vocab_size,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
            "tokenizer_matches": self.tokenizer_matches,
            "dataset_fingerprint": self.dataset_fingerprint,
            "build_counts": dict(self.build_counts),
            "splits": {name: s.to_dict() for name, s in self.splits.items()},
        }


def length_histogram(lengths: np.ndarray) -> tuple[list[int], list[int]]:
    """Counts of ``lengths`` in power-of-two bins; returns (edges, counts), len(edges) == len(counts)+1."""
    if len(lengths) == 0:
        return [], []
    lo = int(np.floor(np.log2(max(int(lengths.min()), 1))))
    hi = int(np.floor(np.log2(max(int(lengths.max()), 1)))) + 1
    edges = [1 << k for k in range(lo, hi + 1)]
    # bin k holds 2^k <= len < 2^(k+1); lengths of 0 (impossible in a valid shard) land in bin lo
    bins = np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64) - lo
    counts = np.bincount(bins, minlength=hi - lo)
    return edges, [int(c) for c in counts]


def top_ordinary_tokens(counts: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` most frequent non-special ids with a non-zero count, count desc then id asc."""
    ordinary = counts[:EOT_ID] if len(counts) > EOT_ID else counts
    if k <= 0:
        return []
    # stable sort on -count keeps ids ascending among equal counts
    order = np.argsort(-ordinary, kind="stable")[:k]
    return [(int(i), int(ordinary[i])) for i in order if ordinary[i] > 0]


def compute_stats(
    data: str | os.PathLike[str] | ShardDataset,
    *,
    splits: Sequence[str] = SPLITS,
    top_k: int = DEFAULT_TOP_K,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: Callable[[int], None] | None = None,
    decode_top: bool = True,
) -> DatasetStats:
    """Stream over the shards of ``splits`` and return their statistics.

    ``progress(n)`` is called after every chunk with the number of tokens just counted.
    ``decode_top`` fills each top token's ``text`` (needs the tokenizer files; when they are not
    available the text is left empty and ``tokenizer_matches`` is ``None``).
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    ds = data if isinstance(data, ShardDataset) else ShardDataset(data)
    m = ds.manifest
    vocab = m.vocab_size
    result: dict[str, SplitStats] = {}
    for split in splits:
        counts = np.zeros(vocab, dtype=np.int64)
        out_of_vocab = 0
        lengths = []
        per_shard = []
        # one shard mapped at a time (headers of all checked first), and each chunk's pages dropped
        # from this process once counted: RSS stays at about one chunk, whatever the data size
        for entry, shard in ds.iter_shards(split):
            toks = shard.tokens
            for s in range(0, len(toks), chunk_tokens):
                # one bincount per chunk gives counts, specials, unique ids and top tokens: one read
                c = np.bincount(toks[s : s + chunk_tokens], minlength=vocab)
                shard.drop_pages(s, s + chunk_tokens)
                if len(c) > vocab:  # only a corrupt shard gets here; report, do not crash
                    out_of_vocab += int(c[vocab:].sum())
                    c = c[:vocab]
                counts += c
                if progress is not None:
                    progress(min(chunk_tokens, len(toks) - s))
            lengths.append(np.diff(shard.doc_offsets.astype(np.int64)))  # from the index, no token scan
            per_shard.append(
                ShardStats(
                    file=entry.file,
                    num_docs=shard.num_docs,
                    num_tokens=shard.header.num_tokens,
                    bytes_on_disk=shard.path.stat().st_size,
                    source_bytes=entry.source_bytes,
                )
            )
        result[split] = SplitStats(
            name=split,
            vocab_size=vocab,
            shards=per_shard,
            token_counts=counts,
            doc_lengths=np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
            out_of_vocab=out_of_vocab,
            top_k=top_k,
        )
    matches = None
    if decode_top:
        matches = _decode_top(result, m.tokenizer_fingerprint)
    return DatasetStats(
        directory=str(Path(ds.directory)),
        source=m.source,
        format_version=m.format_version,
        vocab_size=vocab,
        tokenizer_fingerprint=m.tokenizer_fingerprint,
        tokenizer_matches=matches,
        dataset_fingerprint=m.dataset_fingerprint,
        build_counts=dict(m.counts),
        splits=result,
    )


def _decode_top(result: dict[str, SplitStats], manifest_fp: str) -> bool | None:
    """Fill ``top_pieces``; returns whether the shards' tokenizer is this owtgpt's (None: unknown)."""
    from pipeline.tokenizer import TokenizerUnavailableError, get_tokenizer, tokenizer_fingerprint

    try:
        enc = get_tokenizer()
        fp = tokenizer_fingerprint()
    except TokenizerUnavailableError:
        return None
    for st in result.values():
        st.top_pieces = {i: enc.decode_single_token_bytes(i) for i, _ in st.top_tokens()}
    return fp == manifest_fp


__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "DEFAULT_TOP_K",
    "DatasetStats",
    "ShardStats",
    "SplitStats",
    "compute_stats",
    "length_histogram",
    "top_ordinary_tokens",
]
