"""Local corpus files: sorted walks, a cheap identity, decompression, and what a file really is.

:func:`walk_sorted` lists a folder's documents in relative-path order (hidden entries skipped);
:func:`files_identity` fingerprints them by name, size and mtime; :func:`decompressed_blocks` reads
plain, ``.gz`` and ``.zst`` files (a truncated zstd frame is an error). :func:`sniff_format` names what
a file's leading bytes say it is, so :func:`check_file_format` and :func:`looks_like` can give honest
errors. Used by :mod:`pipeline.tools.sources`.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from pipeline.fsutil import path_type
from pipeline.tools.source_decode import UTF8_BOM, SourceError

# leading bytes -> what the file is (checked in order)
_MAGIC = (
    (b"PAR1", "parquet"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"BZh", "bzip2-compressed data"),
    (b"PK\x03\x04", "a zip archive"),
)
# what a sniffed kind should be read as
_FORMAT_OF_KIND = {"parquet": "parquet", "JSON lines": "jsonl", "plain text": "text"}


def sniff_format(path: Path) -> str:
    """What ``path``'s first bytes say it is: ``parquet``, ``JSON lines``, ``plain text``, ``gzip-
    compressed data``, ... (a phrase for messages; ``unreadable`` when it cannot be opened)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "unreadable"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if not head:
        return "an empty file"
    if head[257:262] == b"ustar":
        return "a tar archive"
    first = head.removeprefix(UTF8_BOM).lstrip()[:1]
    if first == b"{":
        return "JSON lines"
    if first == b"[":
        return "JSON (one array, not JSON lines)"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the 4096-byte boundary
            return "binary data"
    return "plain text"


def suggest_flag(kind: str) -> str:
    fmt = _FORMAT_OF_KIND.get(kind)
    if fmt:
        return f"; pass --source-format {fmt}"
    suffix = {"zstd-compressed data": ".jsonl.zst", "gzip-compressed data": ".jsonl.gz"}.get(kind)
    if suffix:
        return f"; if it holds compressed JSON lines, name it *{suffix} and pass --source-format jsonl"
    if kind == "xz-compressed data":
        return "; if it is a Skylion subset file, pass --source-format skylion"
    return "; check the file"


def looks_like(path: Path) -> str:
    """`` (it looks like X)`` when the bytes of ``path`` contradict its suffix, else ``""``."""
    name, kind = path.name.lower(), sniff_format(path)
    expected = (
        "zstd-compressed data"
        if name.endswith(".zst")
        else "gzip-compressed data"
        if name.endswith(".gz")
        else "xz-compressed data"
        if name.endswith(".xz")
        else None
    )
    return f" (it looks like {kind}, not {expected})" if expected and kind != expected else ""


def check_file_format(path: Path, fmt: str) -> None:
    """Refuse a single file whose bytes say it is not ``fmt``, naming what it appears to be."""
    kind = sniff_format(path)
    if kind in ("unreadable", "an empty file"):
        return  # reading it reports the real problem (permission, or no documents)
    if fmt == "parquet":
        ok = kind == "parquet"
    elif fmt == "jsonl":
        hint = looks_like(path)
        if hint:
            raise SourceError(f"{path}: cannot read it as jsonl{hint}{suggest_flag(kind)}")
        ok = kind in ("JSON lines", "plain text", "zstd-compressed data", "gzip-compressed data")
    elif fmt == "skylion":
        ok = kind == "xz-compressed data"
    else:  # text: any bytes are a document
        ok = True
    if not ok:
        raise SourceError(
            f"{path}: not {'a ' + fmt if fmt != 'skylion' else 'an xz'} file: it looks like "
            f"{kind}{suggest_flag(kind)}"
        )


def files_identity(root: Path, files: list[Path]) -> dict:
    """A cheap identity of a set of files: relative names, sizes and mtimes (hashed)."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "files_sha256": h.hexdigest()[:32],
    }


class ByteReader(Protocol):
    """What :func:`decompressed_blocks` reads from: an ``open(..., "rb")`` file, a :class:`CountingReader`."""

    def read(self, n: int = -1, /) -> bytes: ...

    def seek(self, n: int, /) -> object: ...  # gzip.GzipFile's fileobj type asks for it (unused here)


class CountingReader(io.RawIOBase):
    """Wraps a binary file and counts bytes read (compressed input position for progress)."""

    def __init__(self, f: io.BufferedIOBase):
        self._f = f
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: WriteableBuffer) -> int:
        n = self._f.readinto(b)
        self.pos += n or 0
        return n

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.pos += len(data)
        return data


ACCEPTED_SOURCES = (
    "a .parquet or .jsonl[.zst|.gz] file, a Skylion *_data.xz / openwebtext.tar.xz, a text file, a "
    "folder of them, or a hub dataset name"
)


def special_file_kind(path: Path) -> str | None:
    """What a path that exists but is neither a regular file nor a folder is ("a named pipe (FIFO)",
    "a character device", ...), following symlinks; None for a file, a folder or nothing at all."""
    kind = path_type(path)  # the one classifier of what a path is (pipeline/fsutil.py)
    if kind in ("file", "folder", "missing", "broken symlink"):
        return None
    return "a named pipe (FIFO)" if kind == "FIFO" else f"a {kind}"


def refuse_special_file(path: Path, inside: Path | None = None) -> None:
    """Raise :class:`SourceError` for a FIFO, device or socket: reading one never ends or is not a
    corpus (``/dev/zero``), and it must not be mistaken for a folder."""
    kind = special_file_kind(path)
    if kind is not None and inside is not None:
        raise SourceError(
            f"{path}: is {kind} in the source folder {inside}, not a regular file; move it out of the "
            "folder (reading it would block or never end)"
        )
    if kind is not None:
        raise SourceError(
            f"{path}: is {kind}, not a file or folder; SOURCE must be {ACCEPTED_SOURCES} "
            "(save a stream to a file first)"
        )


def walk_sorted(root: Path, patterns: list[str], exclude: list[Path]) -> list[Path]:
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
                refuse_special_file(d / name, root)  # a FIFO named *.txt would block the build forever
                out.append(d / name)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def decompressed_blocks(path: Path, raw: ByteReader, block_bytes: int) -> Iterator[bytes]:
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
    stream: ByteReader = gzip.GzipFile(fileobj=raw, mode="rb") if name.endswith(".gz") else raw
    while data := stream.read(block_bytes):
        yield data
