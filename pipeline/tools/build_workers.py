"""What runs in the build's worker processes: split assignment and tokenization of one chunk.

:func:`encode_chunk` decodes a :class:`~pipeline.tools.sources.RawChunk` and returns each non-empty
document as ``[SOT] + encode_ordinary(text) + [EOT]`` in uint16. A document's split is a pure function
of ``(seed, its text)`` (:func:`doc_keys`, :func:`val_mask`), so it needs no tokenization, never
depends on the worker count, and is the same for the same documents in any container (jsonl, parquet,
Skylion xz). The rules and their guarantees: pipeline/FORMAT.md, "How a build assigns documents".
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

from pipeline import tokenizer as tk
from pipeline.tools.readahead import SlotRef, TokensRef, resolve, stash_tokens
from pipeline.tools.sources import RawChunk, decode_chunk

# --- split assignment: a pure function of (seed, source position) ---


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLD  # uint64 arithmetic wraps, which is what the hash wants
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def doc_keys(texts: list[str]) -> np.ndarray:
    """(n,) uint64: the first 8 bytes (little-endian) of blake2b over each text's UTF-8 bytes.

    The split is keyed by content, not by source position: the same document gets the same split
    whatever the container numbers it (jsonl counts blank lines, Skylion subsets are numbered
    sparsely), and an exact duplicate can never land in both train and val.
    """
    return np.fromiter(
        (
            int.from_bytes(
                hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
            )
            for t in texts
        ),
        dtype=np.uint64,
        count=len(texts),
    )


def val_mask(keys: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """Which document keys belong to val: ``u(seed, key) < val_fraction``, u uniform in [0, 1)."""
    if val_fraction <= 0:
        return np.zeros(len(keys), dtype=bool)
    key = np.asarray(keys, dtype=np.uint64)
    h = _splitmix64(_splitmix64(np.full(len(key), seed, dtype=np.uint64)) ^ key)
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return u < val_fraction


def split_is_val(positions: np.ndarray, keyed_val: np.ndarray, forced_val: int | None) -> np.ndarray:
    """The split rule: :func:`val_mask` of the documents' keys, plus the position of the first
    non-empty document (when known)."""
    m = keyed_val.copy()
    if forced_val is not None:
        m |= positions == forced_val
    return m


@dataclass(frozen=True)
class SkipPlan:
    """What a resumed build need not tokenize: docs of split s at positions < resume[s]."""

    seed: int
    val_fraction: float
    resume_train: int = 0
    resume_val: int = 0
    forced_val: int | None = None
    redo_train: tuple[tuple[int, int], ...] = ()  # [lo, hi) position ranges of damaged shards to rebuild
    redo_val: tuple[tuple[int, int], ...] = ()

    def needed(self, positions: np.ndarray, is_val: np.ndarray) -> np.ndarray:
        """Which docs to tokenize: past the split's resume point, or inside a damaged shard's range."""
        need = positions >= np.where(is_val, self.resume_val, self.resume_train)
        for val, ranges in ((False, self.redo_train), (True, self.redo_val)):
            for lo, hi in ranges:
                need |= (is_val == val) & (positions >= lo) & (positions < hi)
        return need


# --- worker processes: decode and tokenize one chunk ---


@dataclass
class EncodedChunk:
    """A worker's result for one :class:`RawChunk` (only non-empty docs are listed)."""

    start: int
    count: int
    input_bytes: int
    positions: np.ndarray  # (k,) int64 source positions of the non-empty docs
    keyed_val: np.ndarray  # (k,) bool: val by the docs' content keys (val_mask), before forced_val
    lengths: np.ndarray  # (k,) int64 tokens per doc incl. SOT/EOT; 0 when skipped (resume)
    src_bytes: np.ndarray  # (k,) int64 UTF-8 bytes of each doc's text
    tokens: np.ndarray | TokensRef  # (sum(lengths),) uint16, the docs back to back (or where they are)
    empty: int
    invalid_utf8: int
    bad: int = 0  # records whose text is not a string
    first_bad: str = ""  # the first one, described with its file and line/row


def worker_init(parent_pid: int) -> None:
    # Ctrl-C is the main process's to handle; workers just stop when it tears the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # After a SIGKILL of the main process nothing closes the task pipe (every worker holds its
    # write end), so workers would wait forever: exit as soon as the parent is gone.
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    tk.get_tokenizer()


def encode_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[SOT] + encode_ordinary(t) + [EOT]`` for each text: (flat uint16 tokens, int64 lengths).

    Uses ``encode_to_numpy`` (no Python int list) when the text holds no ``"<|"``, i.e. cannot
    contain a special-token string; otherwise ``encode_ordinary``, which never emits special ids.
    """
    enc = tk.get_tokenizer()
    ids = [
        np.asarray(enc.encode_ordinary(t), dtype=np.uint32)
        if "<|" in t
        else enc.encode_to_numpy(t, disallowed_special=())
        for t in texts
    ]
    lengths = np.fromiter((len(a) + 2 for a in ids), dtype=np.int64, count=len(ids))
    if not ids:
        return np.empty(0, dtype=np.uint16), lengths
    flat = np.concatenate(ids)  # (sum(lengths) - 2 * n,) uint32
    if len(flat) and int(flat.max()) > tk.MAX_STORABLE_ID:  # cannot happen with GPT-2; never wrap
        raise ValueError(f"token id {int(flat.max())} does not fit the uint16 shard payload")
    ends = np.cumsum(lengths)
    out = np.empty(int(ends[-1]), dtype=np.uint16)
    text = np.ones(len(out), dtype=bool)  # positions of text tokens; the rest are markers
    text[ends - lengths] = False
    text[ends - 1] = False
    out[ends - lengths] = tk.SOT_ID
    out[ends - 1] = tk.EOT_ID
    out[text] = flat
    return out, lengths


def encode_chunk(item: RawChunk | SlotRef, plan: SkipPlan) -> EncodedChunk:
    """Decode and tokenize one chunk (runs in a worker process)."""
    chunk = resolve(item)  # from the reader's shared-memory ring (pipeline/tools/readahead.py)
    dec = decode_chunk(chunk)
    count = len(dec.texts)  # == chunk.count, or the member count of an xz_tar chunk
    keep = [i for i, t in enumerate(dec.texts) if t and not t.isspace()]  # bad records decode to ""
    positions = np.arange(chunk.start, chunk.start + count, dtype=np.int64)[keep]
    texts = [dec.texts[i] for i in keep]
    keyed_val = val_mask(doc_keys(texts), plan.seed, plan.val_fraction)
    is_val = split_is_val(positions, keyed_val, plan.forced_val)
    need = plan.needed(positions, is_val)
    src_bytes = np.fromiter(
        (len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts)
    )
    todo = [t for t, n in zip(texts, need.tolist(), strict=True) if n]
    tokens, todo_lengths = encode_texts(todo)
    lengths = np.zeros(len(texts), dtype=np.int64)
    lengths[need] = todo_lengths
    return EncodedChunk(
        chunk.start,
        count,
        chunk.input_bytes,
        positions,
        keyed_val,
        lengths,
        src_bytes,
        stash_tokens(item, tokens),
        empty=count - len(keep) - len(dec.bad),
        invalid_utf8=sum(dec.invalid_utf8),
        bad=len(dec.bad),
        first_bad=dec.bad[0][1] if dec.bad else "",
    )
