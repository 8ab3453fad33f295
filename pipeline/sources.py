"""Corpus readers: turn a SOURCE argument into an ordered stream of raw document chunks.

Contract
--------
* :func:`open_source` resolves ``SOURCE`` (a path or a hub name) to a :class:`Source`. Supported:
  a Hugging Face hub dataset (through ``datasets.load_dataset``, optionally streaming), local
  parquet file(s) or a folder of them (a ``text`` column, read with pyarrow in record batches),
  ``.jsonl`` / ``.jsonl.zst`` / ``.jsonl.gz`` (one JSON object per line with a ``text`` field),
  a folder of text files (one document per file, ``--text-glob``), and the original Skylion
  OpenWebText layout (``urlsf_subset*_data.xz`` tars of ``.txt`` docs, or ``openwebtext.tar.xz``).
* Every source yields documents in a **deterministic order**: files sorted by relative path,
  parquet rows / jsonl lines / tar members in file order. Each document has a *position*: a
  counter over the source's records (for jsonl, the line number, blank lines included), so the
  position of a record never depends on how the stream is chunked or on the worker count.
* :meth:`Source.chunks` yields :class:`RawChunk` objects of about ``chunk_bytes`` of text. The
  reading process does only the unavoidable sequential work (decompression, cutting at line
  boundaries); decoding (UTF-8, JSON) happens in :func:`decode_chunk`, which the build runs in
  its worker processes so the main process stays light.
* Invalid UTF-8 is replaced with U+FFFD and counted per document. A corrupt or truncated
  compressed file raises :class:`SourceError` naming the file.

Trade-off: jsonl chunks travel to workers as raw bytes (one pickle of a ``bytes`` object, no
per-document objects in the main process); parquet and hub chunks travel as ``list[str]``
because arrow already materialises Python strings cheaply.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

SOURCE_FORMATS = ("auto", "hub", "parquet", "jsonl", "text", "skylion")
JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.gz", ".ndjson", ".ndjson.zst", ".ndjson.gz")
SKYLION_SUBSET_GLOB = "urlsf_subset*_data.xz"
SKYLION_TARBALL = "openwebtext.tar.xz"
SKYLION_POS_SHIFT = 24  # Skylion positions: subset_index << 24 | member_index
DEFAULT_CHUNK_BYTES = 1 << 21  # 2 MiB of text per worker task: big enough to amortise IPC


class SourceError(ValueError):
    """A source cannot be read: missing, unsupported, corrupt or truncated (the message names it)."""


@dataclass
class RawChunk:
    """A run of consecutive source records, not yet decoded.

    ``kind``: ``"jsonl"`` (``payload`` is bytes of whole lines), ``"blobs"`` (``list[bytes]``, one
    per document), ``"texts"`` (``list[str]``) or ``"xz_tar"`` (the bytes of one compressed Skylion
    subset file, decoded in the worker; ``count`` is -1 until then). ``start``: position of the first record;
    ``count``: number of records (positions ``start .. start+count-1``). ``input_bytes``: how far
    the source's (compressed) input has been read after this chunk, for progress and ETA.
    """

    kind: str
    payload: bytes | list
    start: int
    count: int
    input_bytes: int = 0
    where: str = ""  # file the chunk came from, for error messages
    text_field: str = "text"
    first_line: int = 1  # jsonl: line number (in its file) of the chunk's first line


@dataclass
class DecodedChunk:
    texts: list[str]
    invalid_utf8: list[bool] = field(default_factory=list)  # per text: replacement happened


# ----------------------------------------------------------------------------- decoding (workers)


DEFAULT_TEXT_GLOB = "*.txt"  # folder sources: which files are documents

def _decode_bytes(b: bytes) -> tuple[str, bool]:
    try:
        return b.decode("utf-8"), False
    except UnicodeDecodeError:
        return b.decode("utf-8", errors="replace"), True


def _clean_str(s: str) -> tuple[str, bool]:
    """Replace lone surrogates (possible from JSON ``\\ud800`` escapes or arrow) with U+FFFD."""
    if s.isascii():  # O(1) in CPython: the common case needs no scan
        return s, False
    try:
        s.encode("utf-8")
        return s, False
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), True


def decode_chunk(chunk: RawChunk) -> DecodedChunk:
    """Decode a chunk to its records' strings (blank jsonl lines become ``""``).

    That is exactly ``chunk.count`` strings, except for ``xz_tar`` chunks (``count == -1``) whose
    size is only known once decompressed; their positions are ``start + i``.
    """
    if chunk.kind == "texts":
        pairs = [_clean_str(t if t is not None else "") for t in chunk.payload]
    elif chunk.kind == "blobs":
        pairs = [_decode_bytes(b) for b in chunk.payload]
    elif chunk.kind == "xz_tar":
        pairs = [_decode_bytes(b) for b in _xz_tar_members(chunk.payload, chunk.where)]
    elif chunk.kind == "jsonl":
        block: bytes = chunk.payload
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        pairs = []
        for i, line in enumerate(lines):
            if not line or line.isspace():  # isspace stops at the first non-space: no copy
                pairs.append(("", False))
                continue
            s, bad = _decode_bytes(line)
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as e:
                raise SourceError(
                    f"{chunk.where}: line {chunk.first_line + i} is not valid JSON ({e}); each line of a "
                    f".jsonl source must be one JSON object with a {chunk.text_field!r} field"
                ) from e
            if not isinstance(obj, dict) or chunk.text_field not in obj:
                raise SourceError(
                    f"{chunk.where}: line {chunk.first_line + i} has no {chunk.text_field!r} field; "
                    "pass --text-field NAME to pick the field that holds the document text"
                )
            text = obj[chunk.text_field]
            if not isinstance(text, str):
                text = "" if text is None else str(text)
            text, bad2 = _clean_str(text)
            pairs.append((text, bad or bad2))
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown chunk kind {chunk.kind!r}")
    if chunk.count >= 0 and len(pairs) != chunk.count:
        raise SourceError(f"{chunk.where}: chunk decoded to {len(pairs)} records, expected {chunk.count}")
    return DecodedChunk([p[0] for p in pairs], [p[1] for p in pairs])


# ----------------------------------------------------------------------------- sources


class Source:
    """Base class: ``describe()`` for humans, ``identity()`` for resume checks, ``chunks()``."""

    format: str = ""

    def describe(self) -> str:
        raise NotImplementedError

    def identity(self) -> dict:
        """What the output bytes depend on: compared on resume / re-run to refuse a changed source."""
        raise NotImplementedError

    @property
    def total_bytes(self) -> int | None:
        """Total input bytes (compressed, as on disk) when known: the progress bar's ETA basis."""
        return None

    @property
    def total_docs(self) -> int | None:
        return None

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[RawChunk]:
        raise NotImplementedError


def _files_identity(root: Path, files: list[Path]) -> dict:
    """A cheap identity of a set of files: relative names, sizes and mtimes (hashed)."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "files_sha256": h.hexdigest()[:32]}


class _CountingReader(io.RawIOBase):
    """Wraps a binary file and counts bytes read (compressed input position for progress)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._f.readinto(b)
        self.pos += n or 0
        return n

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.pos += len(data)
        return data


def _walk_sorted(root: Path, patterns: list[str], exclude: list[Path]) -> list[Path]:
    """Files under ``root`` whose name matches any pattern, sorted by relative path.

    Hidden directories and files (``.git``, ``.venv``, temp files) are skipped, and so is any
    directory in ``exclude`` (the build's own output folder when it lies inside the source).
    """
    excluded = {p.resolve() for p in exclude}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if not n.startswith(".") and (d / n).resolve() not in excluded]
        for name in filenames:
            if not name.startswith(".") and any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
                out.append(d / name)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


class JsonlSource(Source):
    """One or more ``.jsonl[.zst|.gz]`` files, read in sorted order, lines in file order."""

    format = "jsonl"

    def __init__(self, root: Path, files: list[Path], text_field: str = "text"):
        self.root, self.files, self.text_field = root, files, text_field

    def describe(self) -> str:
        return f"jsonl:{self.root}" + (f" ({len(self.files)} files)" if self.root.is_dir() else "")

    def identity(self) -> dict:
        return {"format": self.format, "path": str(self.root), "text_field": self.text_field,
                **_files_identity(self.root, self.files)}

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[RawChunk]:
        pos = 0
        done_bytes = 0
        for path in self.files:
            with open(path, "rb") as raw:
                counter = _CountingReader(raw)
                carry = b""
                line_no = pos
                try:
                    for data in _decompressed_blocks(path, counter, chunk_bytes):
                        block = carry + data
                        cut = block.rfind(b"\n") + 1
                        if cut == 0:  # a line longer than one block: keep reading
                            carry = block
                            continue
                        carry = block[cut:]
                        block = block[:cut]
                        n = block.count(b"\n")
                        yield RawChunk("jsonl", block, pos, n, done_bytes + counter.pos, str(path),
                                       self.text_field, pos - line_no + 1)
                        pos += n
                except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
                    raise SourceError(
                        f"{path}: corrupt or truncated compressed data after line {pos - line_no} "
                        f"({type(e).__name__}: {e}); re-download or re-create the file"
                    ) from e
                if carry:
                    yield RawChunk("jsonl", carry, pos, 1, done_bytes + counter.pos, str(path), self.text_field,
                                   pos - line_no + 1)
                    pos += 1
            done_bytes += path.stat().st_size


def _decompressed_blocks(path: Path, raw: BinaryIO, block_bytes: int) -> Iterator[bytes]:
    """Decompressed contents of ``path`` in blocks (plain, .gz or .zst by suffix).

    zstandard's stream reader returns EOF quietly at a truncated frame, so .zst is decoded with
    a ``decompressobj`` per frame and a frame still open at end of file is an error.
    """
    name = path.name.lower()
    if name.endswith(".zst"):
        import zstandard

        dctx = zstandard.ZstdDecompressor()
        dobj, in_frame = dctx.decompressobj(), False
        try:
            while comp := raw.read(block_bytes // 4):
                while comp:
                    out = dobj.decompress(comp)
                    in_frame = True
                    if out:
                        yield out
                    if dobj.eof:  # frame finished; the rest starts the next frame
                        comp, dobj, in_frame = dobj.unused_data, dctx.decompressobj(), False
                    else:
                        comp = b""
        except zstandard.ZstdError as e:
            raise OSError(f"zstd: {e}") from e
        if in_frame:
            raise EOFError("the last zstd frame is incomplete (file truncated)")
        return
    stream: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb") if name.endswith(".gz") else raw
    while data := stream.read(block_bytes):
        yield data


class ParquetSource(Source):
    """Parquet file(s) with a string column, read with pyarrow in record batches (bounded memory)."""

    format = "parquet"

    def __init__(self, root: Path, files: list[Path], text_field: str = "text"):
        self.root, self.files, self.text_field = root, files, text_field

    def describe(self) -> str:
        return f"parquet:{self.root}" + (f" ({len(self.files)} files)" if self.root.is_dir() else "")

    def identity(self) -> dict:
        return {"format": self.format, "path": str(self.root), "text_field": self.text_field,
                **_files_identity(self.root, self.files)}

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    @property
    def total_docs(self) -> int | None:
        try:
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files)
        except Exception:
            return None

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[RawChunk]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pos = 0
        done = 0
        for path in self.files:
            try:
                pf = pq.ParquetFile(path)
                if self.text_field not in pf.schema_arrow.names:
                    raise SourceError(
                        f"{path}: no column {self.text_field!r} (columns: {pf.schema_arrow.names}); "
                        "pass --text-field NAME"
                    )
                nrows = max(pf.metadata.num_rows, 1)
                size = path.stat().st_size
                seen = 0
                # ~chunk_bytes of text per batch, estimated from the file's uncompressed size
                per_row = max(1, sum(pf.metadata.row_group(i).total_byte_size
                                     for i in range(pf.num_row_groups)) // nrows)
                batch_rows = max(16, chunk_bytes // per_row)
                for batch in pf.iter_batches(batch_size=batch_rows, columns=[self.text_field]):
                    col = batch.column(0)
                    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                        payload, kind = col.to_pylist(), "blobs"
                    else:
                        payload, kind = col.to_pylist(), "texts"
                    seen += len(payload)
                    yield RawChunk(kind, payload, pos, len(payload), done + size * seen // nrows, str(path))
                    pos += len(payload)
                done += size
            except SourceError:
                raise
            except (OSError, pa.ArrowException) as e:
                raise SourceError(
                    f"{path}: cannot read parquet ({type(e).__name__}: {e}); the file is corrupt or "
                    "truncated. Re-download it."
                ) from e


class TextFolderSource(Source):
    """A folder of text files, one document per file, sorted by relative path (recursive)."""

    format = "text"

    def __init__(self, root: Path, patterns: list[str], exclude: list[Path]):
        self.root, self.patterns = root, patterns
        self.files = _walk_sorted(root, patterns, exclude)

    def describe(self) -> str:
        return f"text:{self.root} ({','.join(self.patterns)}, {len(self.files)} files)"

    def identity(self) -> dict:
        return {"format": self.format, "path": str(self.root), "text_glob": ",".join(self.patterns),
                **_files_identity(self.root, self.files)}

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    @property
    def total_docs(self) -> int:
        return len(self.files)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[RawChunk]:
        pos, done, blobs, size = 0, 0, [], 0
        for path in self.files:
            data = path.read_bytes()
            blobs.append(data)
            size += len(data)
            done += len(data)
            if size >= chunk_bytes:
                yield RawChunk("blobs", blobs, pos, len(blobs), done, str(path))
                pos += len(blobs)
                blobs, size = [], 0
        if blobs:
            yield RawChunk("blobs", blobs, pos, len(blobs), done, str(self.root))


class SkylionSource(Source):
    """Original OpenWebText: ``urlsf_subset*_data.xz`` (xz tars of .txt), or ``openwebtext.tar.xz``.

    Subset files are read in sorted name order; the .txt members of each tar in archive order
    (tar order is fixed by the file, so it is deterministic). Non-.txt members are ignored.
    """

    format = "skylion"

    def __init__(self, root: Path, subsets: list[Path], tarball: Path | None):
        self.root, self.subsets, self.tarball = root, subsets, tarball

    def describe(self) -> str:
        if self.tarball:
            return f"skylion:{self.tarball}"
        return f"skylion:{self.root} ({len(self.subsets)} subset files)"

    def identity(self) -> dict:
        files = [self.tarball] if self.tarball else self.subsets
        root = self.root if not self.tarball else self.tarball
        return {"format": self.format, "path": str(root), **_files_identity(root, files)}

    @property
    def total_bytes(self) -> int:
        return self.tarball.stat().st_size if self.tarball else sum(p.stat().st_size for p in self.subsets)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[RawChunk]:
        """One chunk per subset file, still xz-compressed: workers decompress in parallel.

        xz decoding costs about as much CPU as BPE, so it must not sit in the main process. The
        member count of a subset is only known after decoding, so positions are sparse:
        ``subset_index * 2**24 + member_index`` (a subset holds a few hundred documents).
        """
        if not self.tarball:
            done = 0
            for i, path in enumerate(self.subsets):
                data = path.read_bytes()
                done += len(data)
                yield RawChunk("xz_tar", data, i << SKYLION_POS_SHIFT, -1, done, str(path))
            return
        where = str(self.tarball)
        with open(self.tarball, "rb") as raw:
            counter = _CountingReader(raw)
            try:
                with tarfile.open(fileobj=counter, mode="r|xz") as outer:
                    i = 0
                    for m in outer:
                        if not (m.isfile() and fnmatch.fnmatchcase(Path(m.name).name, SKYLION_SUBSET_GLOB)):
                            continue
                        where = f"{self.tarball}:{m.name}"
                        f = outer.extractfile(m)
                        assert f is not None
                        data = f.read()
                        yield RawChunk("xz_tar", data, i << SKYLION_POS_SHIFT, -1, counter.pos, where)
                        i += 1
            except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as e:
                raise SourceError(
                    f"{where}: corrupt or truncated archive ({type(e).__name__}: {e}); re-download it"
                ) from e


def _xz_tar_members(data: bytes, where: str) -> list[bytes]:
    """The ``.txt`` members of an xz-compressed tar, in archive order."""
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".txt"):
                    f = tf.extractfile(m)
                    assert f is not None
                    out.append(f.read())
    except (tarfile.TarError, lzma.LZMAError, EOFError, OSError) as e:
        raise SourceError(f"{where}: corrupt or truncated archive ({type(e).__name__}: {e}); re-download it") from e
    if len(out) >= 1 << SKYLION_POS_SHIFT:
        raise SourceError(f"{where}: {len(out)} documents in one subset file; at most {1 << SKYLION_POS_SHIFT}")
    return out


# ----------------------------------------------------------------------------- resolution


def _split_globs(text_glob: str) -> list[str]:
    pats = [p.strip() for p in text_glob.split(",") if p.strip()]
    if not pats:
        raise SourceError(f"--text-glob {text_glob!r} has no pattern; e.g. --text-glob '*.txt,*.md'")
    return pats


def _is_jsonl(path: Path) -> bool:
    return path.name.lower().endswith(JSONL_SUFFIXES)


def open_source(
    source: str,
    *,
    source_format: str = "auto",
    text_glob: str = DEFAULT_TEXT_GLOB,
    text_field: str = "text",
    hf_config: str | None = None,
    hf_split: str = "train",
    hf_revision: str | None = None,
    streaming: bool = False,
    exclude: list[Path] | None = None,
) -> Source:
    """Resolve ``source`` to a :class:`Source`.

    For a folder with ``source_format="auto"``: a ``text_glob`` other than the default means a
    text folder (the user named the files to read, so stray ``.jsonl`` or ``.parquet`` files
    below it must not change the format); otherwise Skylion subset files (or
    ``openwebtext.tar.xz``) win, then ``*.parquet`` files, then ``*.jsonl*`` files, else it is a
    text folder of ``*.txt``. A string that is not an existing path is a hub dataset name.
    """
    if source_format not in SOURCE_FORMATS:
        raise SourceError(f"--source-format {source_format!r}: expected one of {SOURCE_FORMATS}")
    exclude = exclude or []
    path = Path(source).expanduser()
    if source_format == "hub" or (source_format == "auto" and not path.exists()):
        looks_local = source.startswith((".", "/", "~")) or path.suffix.lower() in (
            ".parquet", ".jsonl", ".zst", ".gz", ".xz", ".txt", ".json")
        if source_format == "auto" and looks_local:
            raise SourceError(f"{source}: no such file or folder (it is not a hub dataset name either)")
        from pipeline.sources_hub import HubSource  # lazy: keeps `datasets` out of local builds

        return HubSource(source, config=hf_config, split=hf_split, revision=hf_revision,
                         streaming=streaming, text_field=text_field)
    path = path.resolve()
    if not path.exists():
        raise SourceError(f"{source}: no such file or folder")
    fmt = source_format
    if path.is_file():
        name = path.name.lower()
        if fmt == "auto":
            if name.endswith(".parquet"):
                fmt = "parquet"
            elif _is_jsonl(path):
                fmt = "jsonl"
            elif name.endswith((".tar.xz", "_data.xz")):
                fmt = "skylion"
            elif any(fnmatch.fnmatchcase(path.name, p) for p in _split_globs(text_glob)):
                fmt = "text"
            else:
                raise SourceError(
                    f"{path}: unsupported file type; expected .parquet, .jsonl[.zst|.gz], a Skylion "
                    "*_data.xz / openwebtext.tar.xz, or a folder"
                )
        if fmt == "parquet":
            return ParquetSource(path, [path], text_field)
        if fmt == "jsonl":
            return JsonlSource(path, [path], text_field)
        if fmt == "skylion":
            if name.endswith(".tar.xz"):
                return SkylionSource(path, [], path)
            return SkylionSource(path.parent, [path], None)
        return TextFolderSource(path.parent, [path.name], exclude)
    # a folder
    if fmt == "auto" and text_glob != DEFAULT_TEXT_GLOB:
        fmt = "text"
    subsets = sorted(path.glob(SKYLION_SUBSET_GLOB))
    tarball = path / SKYLION_TARBALL
    if fmt in ("auto", "skylion"):
        if subsets:
            return SkylionSource(path, subsets, None)
        if tarball.is_file():
            return SkylionSource(path, [], tarball)
        if fmt == "skylion":
            raise SourceError(f"{path}: no {SKYLION_SUBSET_GLOB} files and no {SKYLION_TARBALL}")
    if fmt in ("auto", "parquet"):
        files = _walk_sorted(path, ["*.parquet"], exclude)
        if files:
            return ParquetSource(path, files, text_field)
        if fmt == "parquet":
            raise SourceError(f"{path}: no *.parquet files")
    if fmt in ("auto", "jsonl"):
        files = _walk_sorted(path, [f"*{s}" for s in JSONL_SUFFIXES], exclude)
        if files:
            return JsonlSource(path, files, text_field)
        if fmt == "jsonl":
            raise SourceError(f"{path}: no .jsonl[.zst|.gz] files")
    src = TextFolderSource(path, _split_globs(text_glob), exclude)
    if not src.files:
        raise SourceError(
            f"{path}: no files match --text-glob {text_glob!r} (hidden folders are skipped); "
            "pass e.g. --text-glob '*.txt,*.md'"
        )
    return src
