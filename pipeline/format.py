"""The owtgpt shard format: constants, header, writer, reader and manifest, in one place.

Every other module goes through this one; nothing else knows byte offsets. One shard file is

    [ header: HEADER_SIZE bytes ][ payload: num_tokens x uint16 ][ pad to 8 ][ index: (num_docs+1) x uint64 ]

:func:`open_shard` checks magic, version, dtype, header CRC and the exact file size (cheap);
:meth:`Shard.verify_checksums` hashes the payload (costly). The index is inline, so a shard can never be
separated from it. Byte-level specification: pipeline/FORMAT.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.fsutil import atomic_write_text, fsync_dir, refuse_if_being_built, temp_path_for

MAGIC = b"OWTSHARD"
FORMAT_VERSION = 1
HEADER_SIZE = 4096  # payload offset; page aligned for mmap
TOKEN_DTYPE = np.dtype("<u2")
INDEX_DTYPE = np.dtype("<u8")
DTYPE_CODES = {1: TOKEN_DTYPE}  # header dtype code -> numpy dtype
TOKEN_DTYPE_CODE = 1
FINGERPRINT_BYTES = 64
SPLITS = ("train", "val")
MANIFEST_NAME = "manifest.json"
SHARD_SUFFIX = ".bin"

# magic, version, dtype code, vocab, header size, num_tokens, num_docs, index offset,
# payload sha256, index sha256, tokenizer fingerprint (NUL padded ascii). sha256, not a faster CRC: the
# checksums also name the data in the manifest and the dataset fingerprint, so they must not collide
_HEADER_STRUCT = struct.Struct(f"<8sIIII QQQ 32s32s{FINGERPRINT_BYTES}s")
_CRC_STRUCT = struct.Struct("<I")


# The fix every "this shard / manifest is damaged" message names: the build repairs in place
# (pipeline/FORMAT.md, "Build guarantees"); `verify` prints the exact command from the manifest.
REPAIR = (
    "rerun the `python -m pipeline build` command that built this folder: it rebuilds only the damaged shards"
)
REPAIR_MISSING = (
    "rerun the `python -m pipeline build` command that built this folder: it rebuilds missing shards"
)
REPAIR_MANIFEST = (
    "rerun the `python -m pipeline build` command that built this folder: it rewrites the manifest from "
    "build-state.jsonl"
)


class ShardFormatError(ValueError):
    """A shard or manifest is malformed; the message names the file and what to do."""


def shard_name(split: str, index: int) -> str:
    """Canonical file name of shard ``index`` of ``split``: ``train-00000.bin``."""
    return f"{split}-{index:05d}{SHARD_SUFFIX}"


def index_offset_for(num_tokens: int) -> int:
    """Byte offset of the document index: after the payload, rounded up to 8."""
    end = HEADER_SIZE + num_tokens * TOKEN_DTYPE.itemsize
    return (end + 7) // 8 * 8


def expected_file_size(num_tokens: int, num_docs: int) -> int:
    return index_offset_for(num_tokens) + (num_docs + 1) * INDEX_DTYPE.itemsize


@dataclass(frozen=True)
class ShardHeader:
    """The fixed-size header at the start of every shard file."""

    vocab_size: int
    num_tokens: int
    num_docs: int
    payload_sha256: str
    index_sha256: str
    tokenizer_fingerprint: str
    version: int = FORMAT_VERSION
    dtype_code: int = TOKEN_DTYPE_CODE

    @property
    def index_offset(self) -> int:
        return index_offset_for(self.num_tokens)

    @property
    def file_size(self) -> int:
        return expected_file_size(self.num_tokens, self.num_docs)

    def pack(self) -> bytes:
        fp = self.tokenizer_fingerprint.encode("ascii")
        if len(fp) > FINGERPRINT_BYTES:
            raise ValueError(f"tokenizer fingerprint longer than {FINGERPRINT_BYTES} bytes: {fp!r}")
        body = _HEADER_STRUCT.pack(
            MAGIC,
            self.version,
            self.dtype_code,
            self.vocab_size,
            HEADER_SIZE,
            self.num_tokens,
            self.num_docs,
            self.index_offset,
            bytes.fromhex(self.payload_sha256),
            bytes.fromhex(self.index_sha256),
            fp,
        )
        body += _CRC_STRUCT.pack(zlib.crc32(body))
        return body + b"\0" * (HEADER_SIZE - len(body))

    @classmethod
    def unpack(cls, buf: bytes, path: Path | str = "<buffer>") -> ShardHeader:
        """Parse and check a header; every failure names ``path`` and the offending value."""
        need = _HEADER_STRUCT.size + _CRC_STRUCT.size
        if len(buf) < need:
            raise ShardFormatError(
                f"{path}: file is {len(buf)} bytes, shorter than the {need}-byte shard header; "
                f"it is truncated or not an owtgpt shard; {REPAIR}"
            )
        fields = _HEADER_STRUCT.unpack_from(buf)
        magic, version, dtype_code, vocab, hsize, ntok, ndocs, idx_off, psha, isha, fp = fields
        if magic != MAGIC:
            raise ShardFormatError(
                f"{path}: bad magic {magic!r} (expected {MAGIC!r}); not an owtgpt shard or its "
                f"header is corrupt; {REPAIR}"
            )
        (crc,) = _CRC_STRUCT.unpack_from(buf, _HEADER_STRUCT.size)
        if crc != zlib.crc32(buf[: _HEADER_STRUCT.size]):
            raise ShardFormatError(f"{path}: header checksum mismatch: the header is corrupt; {REPAIR}")
        if version != FORMAT_VERSION:
            raise ShardFormatError(
                f"{path}: format version {version}, this owtgpt reads version {FORMAT_VERSION}. "
                "Rebuild the shards with this version."
            )
        if dtype_code not in DTYPE_CODES:
            raise ShardFormatError(f"{path}: unknown token dtype code {dtype_code}; {REPAIR}")
        if hsize != HEADER_SIZE or idx_off != index_offset_for(ntok):
            raise ShardFormatError(
                f"{path}: header size {hsize} / index offset {idx_off} disagree with "
                f"num_tokens={ntok}: the header is corrupt; {REPAIR}"
            )
        return cls(
            vocab_size=vocab,
            num_tokens=ntok,
            num_docs=ndocs,
            payload_sha256=psha.hex(),
            index_sha256=isha.hex(),
            tokenizer_fingerprint=fp.rstrip(b"\0").decode("ascii"),
            version=version,
            dtype_code=dtype_code,
        )


def read_header(path: str | os.PathLike[str]) -> ShardHeader:
    path = Path(path)
    with open(path, "rb") as f:
        buf = f.read(HEADER_SIZE)
    return ShardHeader.unpack(buf, path)


def check_file_size(path: Path, h: ShardHeader) -> None:
    """Raise unless the file is exactly as long as its header says."""
    size = path.stat().st_size
    if size != h.file_size:
        raise ShardFormatError(
            f"{path}: file is {size} bytes but its header (num_tokens={h.num_tokens}, "
            f"num_docs={h.num_docs}) requires {h.file_size}; the file is truncated or its "
            f"header is wrong; {REPAIR}"
        )


class Shard:
    """A shard opened read-only as memmaps. Opening checks the header and the file size.

    ``tokens``: (num_tokens,) uint16 memmap. ``doc_offsets``: (num_docs + 1,) uint64 memmap.
    Nothing is read into RAM beyond the header; pages fault in as they are touched.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.header = h = read_header(self.path)
        check_file_size(self.path, h)
        self.tokens = (
            np.memmap(self.path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_SIZE, shape=(h.num_tokens,))
            if h.num_tokens
            else np.empty(0, dtype=TOKEN_DTYPE)
        )
        self.doc_offsets = np.memmap(
            self.path, dtype=INDEX_DTYPE, mode="r", offset=h.index_offset, shape=(h.num_docs + 1,)
        )

    def __len__(self) -> int:
        return self.header.num_tokens

    @property
    def num_docs(self) -> int:
        return self.header.num_docs

    def advise(self, advice: int, start: int = 0, stop: int | None = None) -> None:
        """``madvise(advice)`` over tokens ``[start, stop)`` of the payload mapping (page-rounded outward).

        ``advice`` is an ``mmap.MADV_*`` constant. No-op for an empty shard or where the platform has
        no ``madvise``: advice changes performance, never results.
        """
        _advise(
            self.tokens, HEADER_SIZE, TOKEN_DTYPE.itemsize, advice, start, len(self) if stop is None else stop
        )

    def payload_map(self) -> tuple[mmap.mmap | None, int]:
        """(the payload's ``mmap``, byte offset of token 0 in it); ``(None, 0)`` for an empty shard.

        For callers that issue many ``madvise`` calls per second (the sampler's per-window hints).
        """
        mm = getattr(self.tokens, "_mmap", None)
        return mm, HEADER_SIZE % mmap.ALLOCATIONGRANULARITY

    def drop_pages(self, start: int = 0, stop: int | None = None) -> None:
        """Unmap tokens ``[start, stop)`` from this process (``MADV_DONTNEED``): its RSS falls.

        The data stays in the kernel's page cache, so touching the range again costs a minor fault, not
        a disk read. ``stats`` calls this after each chunk, so its RSS stays flat however big the data.
        """
        self.advise(getattr(mmap, "MADV_DONTNEED", -1), start, stop)

    def release(self) -> None:
        """Drop the pages of the whole payload and index from this process (see :meth:`drop_pages`)."""
        self.drop_pages()
        _advise(
            self.doc_offsets,
            self.header.index_offset,
            INDEX_DTYPE.itemsize,
            getattr(mmap, "MADV_DONTNEED", -1),
            0,
            self.num_docs + 1,
        )

    def doc(self, i: int) -> np.ndarray:
        """Tokens of document ``i`` (markers included), as a memmap view."""
        if not 0 <= i < self.num_docs:
            raise IndexError(f"{self.path}: document {i} out of range [0, {self.num_docs})")
        return self.tokens[int(self.doc_offsets[i]) : int(self.doc_offsets[i + 1])]

    def checked_doc_span(self, i: int, sot: int, eot: int) -> tuple[int, int]:
        """``(start, end)`` token offsets of document ``i``, after checking the index it comes from.

        The whole index (8 bytes per document) is checked against its checksum, from 0 to
        ``num_tokens``, increasing by at least the two markers, and the document must start with
        ``sot`` and end with ``eot``: a damaged index raises instead of pointing at the wrong text.
        """
        if not 0 <= i < self.num_docs:
            raise IndexError(f"{self.path}: document {i} out of range [0, {self.num_docs})")
        idx = np.array(self.doc_offsets)  # (num_docs + 1,) uint64
        why = None
        if hashlib.sha256(idx.tobytes()).hexdigest() != self.header.index_sha256:
            why = "its checksum does not match the header"
        elif idx[0] != 0 or idx[-1] != self.header.num_tokens:
            why = f"it spans {idx[0]:,}..{idx[-1]:,}, not 0..{self.header.num_tokens:,}"
        elif len(idx) > 1 and (np.diff(idx.astype(np.int64)) < 2).any():
            why = "its offsets do not increase by at least one document's two markers"
        lo, hi = int(idx[i]), int(idx[i + 1])
        if why is None and (self.tokens[lo] != sot or self.tokens[hi - 1] != eot):
            why = f"document {i} (tokens {lo:,}..{hi:,}) does not start and end with its markers"
        if why is not None:
            raise ShardFormatError(f"{self.path}: the document index is damaged ({why}); {REPAIR}")
        return lo, hi

    def verify_checksums(self, chunk_tokens: int = 1 << 24) -> list[str]:
        """Hash the payload and index against the header; returns problems (empty when fine)."""
        problems = []
        h = hashlib.sha256()
        for s in range(0, len(self.tokens), chunk_tokens):
            h.update(np.ascontiguousarray(self.tokens[s : s + chunk_tokens]).tobytes())
        if h.hexdigest() != self.header.payload_sha256:
            problems.append(f"{self.path}: payload checksum mismatch (token bytes are corrupt)")
        if hashlib.sha256(self.doc_offsets.tobytes()).hexdigest() != self.header.index_sha256:
            problems.append(f"{self.path}: document index checksum mismatch")
        return problems


def _advise(arr: np.ndarray, file_offset: int, itemsize: int, advice: int, start: int, stop: int) -> None:
    """madvise elements ``[start, stop)`` of a memmap that maps the file from ``file_offset``."""
    mm = getattr(arr, "_mmap", None)
    if mm is None or advice < 0 or not hasattr(mm, "madvise") or stop <= start:
        return
    # np.memmap maps the file from file_offset rounded down to the allocation granularity
    base = file_offset - file_offset % mmap.ALLOCATIONGRANULARITY
    lo = file_offset - base + start * itemsize
    hi = file_offset - base + stop * itemsize
    lo -= lo % mmap.PAGESIZE  # madvise wants a page-aligned start; the kernel rounds the length up
    mm.madvise(advice, lo, min(hi, len(mm)) - lo)


def open_shard(path: str | os.PathLike[str]) -> Shard:
    return Shard(path)


class ShardWriter:
    """Streams documents into a new shard; it appears under its final name only on :meth:`finish`.

    Tokens go straight to a temp file in the target directory (bounded memory: only the
    document lengths are kept, 8 bytes per doc). Ids are range-checked before the uint16 cast,
    so an id >= ``vocab_size`` is an error, never a silent wrap.
    """

    def __init__(self, path: str | os.PathLike[str], *, vocab_size: int, tokenizer_fingerprint: str):
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self._tmp = temp_path_for(self.path)
        self._f = open(self._tmp, "wb")  # noqa: SIM115 - closed in finish/abort
        self._f.write(b"\0" * HEADER_SIZE)  # placeholder, rewritten by finish()
        self._sha = hashlib.sha256()
        self._lengths: list[np.ndarray] = []
        self.num_tokens = 0
        self.num_docs = 0

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat id array and their lengths (``sum == len(tokens)``)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != len(tokens):
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {len(tokens)} tokens were given")
        if len(tokens):
            # unsigned ids cannot be negative: one pass over them, not two (this is the build's main process)
            lo = 0 if np.issubdtype(tokens.dtype, np.unsignedinteger) else int(tokens.min())
            hi = int(tokens.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = hi if hi >= self.vocab_size else lo
                raise ValueError(
                    f"{self.path}: token id {bad} is outside the vocabulary [0, {self.vocab_size}); "
                    "refusing to write it (it would be stored wrapped or invalid)"
                )
        data = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).data  # no copy for contiguous uint16 input
        self._f.write(data)
        self._sha.update(data)
        self._lengths.append(lengths)
        self.num_tokens += len(tokens)
        self.num_docs += len(lengths)

    def add_document(self, tokens: np.ndarray) -> None:
        self.add_documents(np.asarray(tokens), np.array([len(tokens)]))

    def finish(self) -> ShardHeader:
        """Write index and header, fsync, rename into place. Returns the header written."""
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        index = np.zeros(self.num_docs + 1, dtype=INDEX_DTYPE)
        np.cumsum(lengths, out=index[1:])
        pad = index_offset_for(self.num_tokens) - (HEADER_SIZE + self.num_tokens * TOKEN_DTYPE.itemsize)
        self._f.write(b"\0" * pad)
        index_bytes = index.tobytes()
        self._f.write(index_bytes)
        header = ShardHeader(
            vocab_size=self.vocab_size,
            num_tokens=self.num_tokens,
            num_docs=self.num_docs,
            payload_sha256=self._sha.hexdigest(),
            index_sha256=hashlib.sha256(index_bytes).hexdigest(),
            tokenizer_fingerprint=self.tokenizer_fingerprint,
        )
        self._f.seek(0)
        self._f.write(header.pack())
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        return header

    def abort(self) -> None:
        """Drop the partial shard; the final name is never touched."""
        with contextlib.suppress(OSError):  # a full disk fails the close's flush again: still unlink
            self._f.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._f.closed:
            self.finish()


# ----------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest records it."""

    file: str
    split: str
    num_tokens: int
    num_docs: int
    payload_sha256: str
    source_bytes: int = 0  # UTF-8 bytes of the source text in this shard (for bytes/token)


@dataclass
class Manifest:
    """``manifest.json``: what a finished build produced, and from what.

    ``settings`` holds the build settings that determine the bytes (source, val_fraction, seed,
    shard_tokens); ``counts`` the build's document accounting (dropped empties, invalid UTF-8).
    ``dataset_fingerprint`` names the exact token content; the trainer stores it in checkpoints.
    """

    tokenizer_fingerprint: str
    vocab_size: int
    special_tokens: dict[str, int]
    source: str
    settings: dict
    shards: list[ShardEntry]
    counts: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    dataset_fingerprint: str = ""

    def __post_init__(self) -> None:
        self.shards = [s if isinstance(s, ShardEntry) else ShardEntry(**s) for s in self.shards]
        if not self.dataset_fingerprint:
            self.dataset_fingerprint = compute_dataset_fingerprint(
                self.tokenizer_fingerprint, self.vocab_size, self.shards
            )

    def count_mismatches(self) -> list[str]:
        """How ``counts`` disagrees with the shard list (empty: agrees); one phrase per count.

        Every count that the shards determine is recomputed from them, and the records read must add
        up to written + dropped + skipped: an edited count cannot pass as a fact about the data.
        """
        derived = {"docs_written": sum(s.num_docs for s in self.shards),
                   "source_bytes": sum(s.source_bytes for s in self.shards)}  # fmt: skip
        for sp in SPLITS:
            ss = [s for s in self.shards if s.split == sp]
            derived[f"docs_{sp}"] = sum(s.num_docs for s in ss)
            derived[f"tokens_{sp}"] = sum(s.num_tokens for s in ss)
            derived[f"shards_{sp}"] = len(ss)
        c = self.counts
        if not isinstance(c, dict):
            return [f"counts is {type(c).__name__}, not an object"]
        out = [f"counts.{k}={c[k]!r} is not a count" for k in sorted(c) if type(c[k]) is not int or c[k] < 0]
        if out:
            return out
        out = [f"counts.{k}={c[k]:,} but the shards it lists hold {v:,}" for k, v in derived.items()
               if k in c and c[k] != v]  # fmt: skip
        parts = ("docs_read", "docs_written", "docs_dropped_empty", "docs_skipped_bad")
        if all(k in c for k in parts) and c["docs_read"] != sum(c[k] for k in parts[1:]):
            out.append(
                f"counts.docs_read={c['docs_read']:,} but written + dropped + skipped = "
                f"{sum(c[k] for k in parts[1:]):,}"
            )
        return out

    def split(self, name: str) -> list[ShardEntry]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return [s for s in self.shards if s.split == name]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory) / MANIFEST_NAME
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no manifest; {directory} is not a finished shard folder. "
                "Build one with `python -m pipeline build SOURCE --out DIR` (or `make shards`)."
            )
        try:
            raw = json.loads(path.read_text())
            if raw.get("format_version") != FORMAT_VERSION:
                raise ShardFormatError(
                    f"{path}: format version {raw.get('format_version')}, expected {FORMAT_VERSION}"
                )
            stored = raw.pop("dataset_fingerprint", "")
            m = cls(**raw)
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ShardFormatError(f"{path}: malformed manifest ({e}); {REPAIR_MANIFEST}") from e
        if stored and stored != m.dataset_fingerprint:
            raise ShardFormatError(
                f"{path}: dataset_fingerprint {stored} does not match the shard list "
                f"({m.dataset_fingerprint}); the manifest was edited or is corrupt: {REPAIR_MANIFEST}"
            )
        bad_counts = m.count_mismatches()
        if bad_counts:
            raise ShardFormatError(
                f"{path}: {'; '.join(bad_counts)}; the manifest was edited or is corrupt: {REPAIR_MANIFEST}"
            )
        return m


def compute_dataset_fingerprint(tokenizer_fp: str, vocab_size: int, shards: Iterable[ShardEntry]) -> str:
    """sha256 over the tokenizer and every shard's (file, split, counts, payload checksum)."""
    h = hashlib.sha256(f"v{FORMAT_VERSION};{tokenizer_fp};{vocab_size};".encode())
    for s in sorted(shards, key=lambda s: (s.split, s.file)):
        h.update(f"{s.file}:{s.split}:{s.num_tokens}:{s.num_docs}:{s.payload_sha256};".encode())
    return h.hexdigest()[:32]


class ShardDataset:
    """A finished shard folder: the manifest plus lazily opened :class:`Shard` memmaps.

    Opening a split checks every shard's header against its manifest entry (counts, checksum
    name, tokenizer, vocab), which is cheap; full hashing is ``verify``'s job.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        refuse_if_being_built(self.directory)  # every reader (stats, show, trainer, eval) goes through here
        self.manifest = Manifest.load(self.directory)
        self._open: dict[str, list[Shard]] = {}

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def tokenizer_fingerprint(self) -> str:
        return self.manifest.tokenizer_fingerprint

    @property
    def dataset_fingerprint(self) -> str:
        return self.manifest.dataset_fingerprint

    def shards(self, split: str) -> list[Shard]:
        """Every shard of ``split``, opened and checked; they stay mapped while the dataset lives."""
        if split not in self._open:
            self._open[split] = [self._open_entry(e) for e in self.manifest.split(split)]
        return self._open[split]

    def iter_shards(self, split: str) -> Iterator[tuple[ShardEntry, Shard]]:
        """``(entry, shard)`` of ``split`` one at a time, each released once the caller moves on.

        Every header is checked first (cheap: one 4 KiB read per shard), so a bad shard fails before
        any work; then only the current shard is mapped, and its pages are dropped from this process
        (:meth:`Shard.release`) before the next one opens: memory stays flat for any number of shards.
        The caller must not keep views of a shard past its turn.
        """
        entries = self.manifest.split(split)
        for entry in entries:
            self._check_entry_header(entry)
        for entry in entries:
            shard = self._open_entry(entry)
            try:
                yield entry, shard
            finally:
                shard.release()

    def _check_entry_header(self, entry: ShardEntry) -> None:
        path = self._existing(entry)
        h = read_header(path)
        check_file_size(path, h)
        problems = entry_mismatches(h, entry, self.manifest)
        if problems:
            raise _entry_error(path, problems)

    def _existing(self, entry: ShardEntry) -> Path:
        path = self.directory / entry.file
        if not path.is_file():
            raise ShardFormatError(
                f"{path}: listed in {self.directory / MANIFEST_NAME} but missing. {REPAIR_MISSING}"
            )
        return path

    def _open_entry(self, entry: ShardEntry) -> Shard:
        shard = Shard(self._existing(entry))
        check_entry(shard, entry, self.manifest)
        return shard

    def num_tokens(self, split: str) -> int:
        return sum(s.num_tokens for s in self.manifest.split(split))

    def num_docs(self, split: str) -> int:
        return sum(s.num_docs for s in self.manifest.split(split))


def entry_mismatches(header: ShardHeader, entry: ShardEntry, manifest: Manifest) -> list[str]:
    """How a shard's header disagrees with its manifest entry, one phrase per field (empty: agrees)."""
    return [
        f"header {what}={got} but {MANIFEST_NAME} says {want}"
        for what, got, want in (
            ("num_tokens", header.num_tokens, entry.num_tokens),
            ("num_docs", header.num_docs, entry.num_docs),
            ("payload_sha256", header.payload_sha256, entry.payload_sha256),
            ("vocab_size", header.vocab_size, manifest.vocab_size),
            ("tokenizer_fingerprint", header.tokenizer_fingerprint, manifest.tokenizer_fingerprint),
        )
        if got != want
    ]


def check_entry(shard: Shard, entry: ShardEntry, manifest: Manifest) -> None:
    """Raise if a shard's header disagrees with its manifest entry."""
    problems = entry_mismatches(shard.header, entry, manifest)
    if problems:
        raise _entry_error(shard.path, problems)


def _entry_error(path: Path, problems: list[str]) -> ShardFormatError:
    return ShardFormatError(
        f"{path}: {'; '.join(problems)}; the shard does not belong to this manifest. {REPAIR}"
    )
