"""What a corpus file really is, from its leading bytes (magic numbers), for honest error messages.

:func:`sniff_format` names what a file appears to be (parquet, zstd/gzip/xz-compressed data, JSON
lines, plain text, ...). :func:`check_file_format` refuses a file whose bytes contradict the format
chosen by its suffix or ``--source-format``, naming what it appears to be and the flag that reads it;
:func:`looks_like` adds the same hint to a decompression error. Used by :mod:`pipeline.tools.sources`.
"""

from __future__ import annotations

from pathlib import Path

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
