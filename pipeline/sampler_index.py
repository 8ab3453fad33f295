"""Where windows may start, and how to copy them out of the shard memmaps: the sampler's data layer.

A *window* is ``T + 1`` consecutive tokens of one shard, never crossing its end. :class:`WindowIndex`
numbers every allowed start of a split with one global integer in ``[0, total)``: in random mode shard
``i`` contributes ``len_i - T`` starts (so a uniform draw picks shards in proportion to their starts);
in doc-aligned mode, its documents whose ``<|startoftext|>`` leaves room for a window (a prefix of the
sorted ``doc_offsets``, found by one binary search); with ``stride=T`` (the permutation sampler's epoch),
only the starts ``0, T, 2T, ...`` of each shard, ``(len_i - 1) // T`` of them: back-to-back windows.
Only per-shard counts live in RAM, never a per-token or per-document array. :meth:`WindowIndex.gather`
copies a batch with one numpy call per shard touched. README.md, "Design" (Sampler).
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import UserError
from pipeline.format import SPLITS, Shard, ShardDataset


class SamplerError(UserError, ValueError):
    """The shards cannot feed the sampler as asked (mismatched vocabulary/tokenizer, split too small)."""


class OutOfVocabError(SamplerError):
    """A window holds an id >= vocab_size: the payload is corrupt although its header checks passed."""


def open_dataset(data: str | Path | ShardDataset) -> ShardDataset:
    """A :class:`ShardDataset` from a folder path (refused while a build holds it), or the dataset itself."""
    if isinstance(data, ShardDataset):
        return data
    return ShardDataset(data)


def checked_split(
    ds: ShardDataset,
    split: str,
    *,
    expected_vocab_size: int | None,
    expected_tokenizer_fingerprint: str | None,
) -> list[Shard]:
    """The opened shards of ``split`` after the start-up checks; raises :class:`SamplerError`."""
    where = ds.directory
    if split not in SPLITS:
        raise SamplerError(f"unknown split {split!r}; expected one of {SPLITS}")
    if expected_vocab_size is not None and ds.vocab_size != expected_vocab_size:
        raise SamplerError(
            f"{where}: the shards were built with vocab_size={ds.vocab_size}, but the caller expects "
            f"vocab_size={expected_vocab_size}. Token ids would index the wrong embedding rows. Rebuild "
            f"the shards with this owtgpt's tokenizer (`python -m pipeline build SOURCE --out DIR`) or "
            f"use a model whose vocab_size is {ds.vocab_size}."
        )
    if (
        expected_tokenizer_fingerprint is not None
        and ds.tokenizer_fingerprint != expected_tokenizer_fingerprint
    ):
        raise SamplerError(
            f"{where}: the shards were tokenized with {ds.tokenizer_fingerprint!r}, but the caller expects "
            f"{expected_tokenizer_fingerprint!r}. The same ids would mean different text. Rebuild the "
            "shards with the expected tokenizer (`python -m pipeline build SOURCE --out DIR --overwrite`)."
        )
    shards = ds.shards(split)
    if not shards or sum(len(s) for s in shards) == 0:
        hint = " (build with --val-fraction > 0)" if split == "val" else ""
        raise SamplerError(
            f"{where}: the '{split}' split is empty ({len(shards)} shards, 0 tokens); "
            f"nothing to sample{hint}."
        )
    return shards


def _eligible_docs(shard: Shard, window: int) -> int:
    """How many documents of ``shard`` start early enough for a full window.

    Offsets are non-decreasing, so these are documents ``0..k-1`` with ``offset <= len - window``;
    ``searchsorted`` on the memmap touches only O(log num_docs) pages.
    """
    last_start = len(shard) - window
    if last_start < 0 or shard.num_docs == 0:
        return 0
    return int(np.searchsorted(shard.doc_offsets[:-1], np.uint64(last_start), side="right"))


class WindowIndex:
    """Global numbering of the valid window starts of one split (see the module docstring)."""

    def __init__(
        self,
        shards: list[Shard],
        *,
        window: int,
        doc_aligned: bool,
        where: str | Path,
        split: str,
        vocab_size: int | None = None,
        madvise: bool = False,
        stride: int = 1,
    ):
        if window < 2:
            raise ValueError(f"window must be >= 2 tokens (seq_len >= 1), got {window}")
        if stride < 1 or (doc_aligned and stride != 1):
            raise ValueError(f"stride must be >= 1, and 1 when doc_aligned; got {stride}")
        self.shards = shards
        self.window = window
        self.doc_aligned = doc_aligned
        self.stride = stride
        self.vocab_size = vocab_size
        self.where = Path(where)
        self.lengths = np.array([len(s) for s in shards], dtype=np.int64)
        if doc_aligned:
            counts = np.array([_eligible_docs(s, window) for s in shards], dtype=np.int64)
        else:
            # starts 0, stride, 2 * stride, ... up to len - window
            counts = np.maximum((self.lengths - window) // stride + 1, 0)
        self.counts = counts
        self.ends = np.cumsum(counts)  # ends[i] = first global start past shard i
        self.total = int(self.ends[-1]) if len(counts) else 0
        if self.total == 0:
            sizes = ", ".join(f"{s.path.name}={len(s):,}" for s in shards[:8])
            more = f", ... ({len(shards)} shards)" if len(shards) > 8 else ""
            what = (
                "no document starts early enough in its shard to leave room for"
                if doc_aligned
                else "no shard holds"
            )
            raise SamplerError(
                f"{where}: the '{split}' split is too small: {what} one window of seq_len+1={window} "
                f"tokens (shard token counts: {sizes}{more}). Use a smaller seq_len, larger shards "
                "(--shard-tokens), or more data" + (" or --val-fraction" if split == "val" else "") + "."
            )
        # Zero-copy (len - window + 1, window) views; None for shards too short for a window.
        # zero-copy (n - T, T + 1) strided views: numpy copies each selected row as one block, ~6x faster
        # than a (B, T + 1) int64 fancy index (bench/sampler.py)
        self._views = [sliding_window_view(s.tokens, window) if len(s) >= window else None for s in shards]
        maps = [s.payload_map() for s in shards]
        self._maps = [m for m, _ in maps]
        self._base = np.array([off for _, off in maps], dtype=np.int64)  # byte offset of token 0 in each map
        if madvise:
            # Windows land anywhere, so the kernel's read-around on a page fault (up to the device's
            # read_ahead_kb, often 128 KiB+) is wasted I/O on a cold cache: fault in only the page
            # touched. willneed() then asks for exactly the windows of a batch, all at once.
            for sh in shards:
                sh.advise(mmap.MADV_RANDOM)

    def locate(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global starts (sorted, int64 in ``[0, total)``) -> (shard index, token offset in shard).

        For doc-aligned indexes the offset is read from the shard's persisted document index.
        """
        shard_ids = np.searchsorted(self.ends, g, side="right")
        local = g - (self.ends[shard_ids] - self.counts[shard_ids])
        if not self.doc_aligned:
            return shard_ids, local * self.stride if self.stride != 1 else local
        starts = np.empty_like(local)
        for j, lo, hi in self._groups(shard_ids):
            starts[lo:hi] = self.shards[j].doc_offsets[local[lo:hi]]
        return shard_ids, starts

    @staticmethod
    def _groups(shard_ids: np.ndarray) -> list[tuple[int, int, int]]:
        """(shard, lo, hi) runs of a shard-sorted id array (few numpy calls: this is per batch)."""
        n = len(shard_ids)
        if n == 0:
            return []
        bounds = [0, *(np.flatnonzero(shard_ids[1:] != shard_ids[:-1]) + 1).tolist(), n]
        ids = shard_ids[bounds[:-1]].tolist()
        return [(ids[k], bounds[k], bounds[k + 1]) for k in range(len(ids))]

    def willneed(self, shard_ids: np.ndarray, starts: np.ndarray) -> None:
        """Start reading the pages of these windows (``MADV_WILLNEED``, asynchronous); returns at once.

        On a cold cache this turns a batch's page faults, one disk round trip each, into one burst of
        parallel reads; on a warm cache it is ~1 us per window.
        """
        lo = self._base[shard_ids] + 2 * starts  # byte range of each window in its shard's map
        first = lo - lo % mmap.PAGESIZE  # madvise wants a page-aligned start
        size = lo + 2 * self.window - first
        maps = self._maps
        for j, a, n in zip(shard_ids.tolist(), first.tolist(), size.tolist(), strict=True):
            mm = maps[j]
            if mm is not None:
                mm.madvise(mmap.MADV_WILLNEED, a, n)

    def check_ids(self, buf: np.ndarray, shard_ids: np.ndarray, starts: np.ndarray) -> None:
        """Raise :class:`OutOfVocabError` if a gathered window holds an id >= ``vocab_size``.

        One ``max`` over the (B, T+1) uint16 host buffer (microseconds): a corrupt payload would
        otherwise reach the embedding as an out-of-range index and crash deep inside the model.
        """
        if self.vocab_size is None or len(buf) == 0 or int(buf.max()) < self.vocab_size:
            return
        row, col = divmod(int(np.argmax(buf.reshape(-1) >= self.vocab_size)), buf.shape[1])
        shard = self.shards[int(shard_ids[row])]
        raise OutOfVocabError(
            f"{shard.path}: token id {int(buf[row, col])} at token offset {int(starts[row]) + col:,} is >= "
            f"vocab_size {self.vocab_size}; the shard's payload is corrupt although its header checks "
            f"passed. Run `python -m pipeline verify {self.where}` to check every shard; it names the "
            "build command whose rerun rebuilds only the damaged shards."
        )

    def gather(self, shard_ids: np.ndarray, starts: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy windows into ``out`` (uint16, ``(len(starts), window)``); rows sorted by shard."""
        if out.shape != (len(starts), self.window) or out.dtype != np.uint16:
            raise ValueError(
                f"out must be uint16 of shape {(len(starts), self.window)}, got {out.dtype} {out.shape}"
            )
        for j, lo, hi in self._groups(shard_ids):
            view = self._views[j]
            assert view is not None  # locate() never maps a start into a shard without windows
            out[lo:hi] = view[starts[lo:hi]]
        return out
