"""Decoding raw source chunks into document strings (runs in the build's worker processes).

:func:`decode_chunk` turns a :class:`RawChunk` (consecutive records cut by :mod:`pipeline.tools.sources`)
into one string per record. Invalid UTF-8 becomes U+FFFD and is flagged; a leading UTF-8 BOM in a jsonl
file is stripped. A record whose text is not a string is a *bad record*: never ``str()``-ed, it decodes
to ``""`` and is listed in :attr:`DecodedChunk.bad` with its line or row and type (README.md, "When
things go wrong").
"""

from __future__ import annotations

import io
import json
import lzma
import tarfile
from dataclasses import dataclass, field

from pipeline.errors import json_type_name

SKYLION_POS_SHIFT = 24  # Skylion positions: subset_index << 24 | member_index
UTF8_BOM = b"\xef\xbb\xbf"


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
    first_line: int = 1  # jsonl: line number (from 1) in its file; texts/blobs: row (from 0) in its file


@dataclass
class DecodedChunk:
    texts: list[str]
    invalid_utf8: list[bool] = field(default_factory=list)  # per text: replacement happened
    bad: list[tuple[int, str]] = field(default_factory=list)  # (index in chunk, "FILE: line N: ...")


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


def _bad(where: str, record: str, text_field: str, v: object) -> str:
    name = json_type_name(v)
    what = name if name == "null" else f"an {name}" if name[0] in "aeiou" else f"a {name}"
    return f"{where}: {record}: the {text_field!r} value is {what}, not a string"


def decode_chunk(chunk: RawChunk) -> DecodedChunk:
    """Decode a chunk to its records' strings (blank jsonl lines and bad records become ``""``).

    That is exactly ``chunk.count`` strings, except for ``xz_tar`` chunks (``count == -1``) whose
    size is only known once decompressed; their positions are ``start + i``.
    """
    bad: list[tuple[int, str]] = []
    if chunk.kind in ("texts", "blobs"):
        pairs = []
        for i, t in enumerate(chunk.payload):
            if isinstance(t, str):
                pairs.append(_clean_str(t))
            elif isinstance(t, bytes) and chunk.kind == "blobs":
                pairs.append(_decode_bytes(t))
            else:
                bad.append((i, _bad(chunk.where, f"row {chunk.first_line + i}", chunk.text_field, t)))
                pairs.append(("", False))
    elif chunk.kind == "xz_tar":
        assert isinstance(chunk.payload, bytes)  # the kind says so (RawChunk)
        pairs = [_decode_bytes(b) for b in _xz_tar_members(chunk.payload, chunk.where)]
    elif chunk.kind == "jsonl":
        assert isinstance(chunk.payload, bytes)
        block = chunk.payload
        if chunk.first_line == 1 and block.startswith(UTF8_BOM):
            block = block[len(UTF8_BOM) :]  # a BOM is an encoding mark, not document text
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        pairs = []
        for i, line in enumerate(lines):
            if not line or line.isspace():  # isspace stops at the first non-space: no copy
                pairs.append(("", False))
                continue
            s, bad_utf8 = _decode_bytes(line)
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
                bad.append((i, _bad(chunk.where, f"line {chunk.first_line + i}", chunk.text_field, text)))
                pairs.append(("", False))
                continue
            text, bad_surrogate = _clean_str(text)
            pairs.append((text, bad_utf8 or bad_surrogate))
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown chunk kind {chunk.kind!r}")
    if chunk.count >= 0 and len(pairs) != chunk.count:
        raise SourceError(f"{chunk.where}: chunk decoded to {len(pairs)} records, expected {chunk.count}")
    return DecodedChunk([p[0] for p in pairs], [p[1] for p in pairs], bad)


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
        raise SourceError(
            f"{where}: corrupt or truncated archive ({type(e).__name__}: {e}); re-download it"
        ) from e
    if len(out) >= 1 << SKYLION_POS_SHIFT:
        raise SourceError(
            f"{where}: {len(out)} documents in one subset file; at most {1 << SKYLION_POS_SHIFT}"
        )
    return out
