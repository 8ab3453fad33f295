"""Corpus readers: :func:`open_source` turns a SOURCE argument into a :class:`Source`, an ordered
stream of raw document chunks.

Sources: a Hugging Face hub dataset, local parquet, ``.jsonl[.zst|.gz]``, a folder of text files and
the Skylion OpenWebText layout. Every source yields documents in a deterministic order (files sorted by
relative path, records in file order), and each document's *position* counts the source's records, so
it never depends on chunking or the worker count. :meth:`Source.chunks` does only the sequential work
(decompression, cutting at line boundaries); decoding happens in the build's workers
(:mod:`pipeline.tools.source_decode`). What each format accepts: README.md, "Sources".
"""

from __future__ import annotations

import fnmatch
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from pipeline.tools.source_decode import (  # noqa: F401 - re-exported: the reading side's vocabulary
    SKYLION_POS_SHIFT,
    DecodedChunk,
    RawChunk,
    SourceError,
    decode_chunk,
)
from pipeline.tools.source_files import (
    CountingReader,
    check_file_format,
    decompressed_blocks,
    files_identity,
    looks_like,
    refuse_special_file,
    sniff_format,
    suggest_flag,
    walk_sorted,
)

SOURCE_FORMATS = ("auto", "hub", "parquet", "jsonl", "text", "skylion")
JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.gz", ".ndjson", ".ndjson.zst", ".ndjson.gz")
SKYLION_SUBSET_GLOB = "urlsf_subset*_data.xz"
SKYLION_TARBALL = "openwebtext.tar.xz"
PARQUET_READ_BUFFER = 1 << 20  # bytes pyarrow reads at a time from a parquet column chunk
DEFAULT_CHUNK_BYTES = 1 << 21  # 2 MiB of text per worker task: big enough to amortise IPC


DEFAULT_TEXT_GLOB = "*.txt"  # folder sources: which files are documents


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


class _FileSource(Source):
    """Records from a sorted list of files (``root`` is the file or folder given as SOURCE)."""

    format = ""  # the subclass's; "{format}:{root}" in describe()

    def __init__(self, root: Path, files: list[Path], text_field: str = "text"):
        self.root, self.files, self.text_field = root, files, text_field

    def describe(self) -> str:
        return f"{self.format}:{self.root}" + (f" ({len(self.files)} files)" if self.root.is_dir() else "")

    def identity(self) -> dict:
        return {
            "format": self.format,
            "path": str(self.root),
            "text_field": self.text_field,
            **files_identity(self.root, self.files),
        }

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


class JsonlSource(_FileSource):
    """One or more ``.jsonl[.zst|.gz]`` files, read in sorted order, lines in file order."""

    format = "jsonl"

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[RawChunk]:
        pos = 0
        done_bytes = 0
        for path in self.files:
            with open(path, "rb") as raw:
                counter = CountingReader(raw)
                carry = b""
                line_no = pos
                try:
                    for data in decompressed_blocks(path, counter, chunk_bytes):
                        block = carry + data
                        cut = block.rfind(b"\n") + 1
                        if cut == 0:  # a line longer than one block: keep reading
                            carry = block
                            continue
                        carry = block[cut:]
                        block = block[:cut]
                        n = block.count(b"\n")
                        yield RawChunk(
                            "jsonl",
                            block,
                            pos,
                            n,
                            done_bytes + counter.pos,
                            str(path),
                            self.text_field,
                            pos - line_no + 1,
                        )
                        pos += n
                except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
                    raise SourceError(
                        f"{path}: corrupt or truncated compressed data after line {pos - line_no} "
                        f"({type(e).__name__}: {e}){looks_like(path)}; re-download or re-create the file"
                    ) from e
                if carry:
                    yield RawChunk(
                        "jsonl",
                        carry,
                        pos,
                        1,
                        done_bytes + counter.pos,
                        str(path),
                        self.text_field,
                        pos - line_no + 1,
                    )
                    pos += 1
            done_bytes += path.stat().st_size


class ParquetSource(_FileSource):
    """Parquet file(s) with a string column, read with pyarrow in record batches (bounded memory)."""

    format = "parquet"

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
                # pre_buffer=False + buffer_size: read a column chunk page by page instead of the whole
                # row group at once, so memory does not grow with row-group or file size
                # (bench/parquet_memory.py: 336 -> 68 MiB on one 300 MB row group)
                pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_READ_BUFFER)
                if self.text_field not in pf.schema_arrow.names:
                    raise SourceError(
                        f"{path}: no column {self.text_field!r} (columns: {pf.schema_arrow.names}); "
                        "pass --text-field NAME"
                    )
                nrows = max(pf.metadata.num_rows, 1)
                size = path.stat().st_size
                seen = 0
                # ~chunk_bytes of text per batch, estimated from the file's uncompressed size
                per_row = max(
                    1,
                    sum(pf.metadata.row_group(i).total_byte_size for i in range(pf.num_row_groups)) // nrows,
                )
                batch_rows = max(16, chunk_bytes // per_row)
                for batch in pf.iter_batches(batch_size=batch_rows, columns=[self.text_field]):
                    col = batch.column(0)
                    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
                        payload, kind = col.to_pylist(), "blobs"
                    else:
                        payload, kind = col.to_pylist(), "texts"
                    yield RawChunk(
                        kind,
                        payload,
                        pos,
                        len(payload),
                        done + size * (seen + len(payload)) // nrows,
                        str(path),
                        self.text_field,
                        first_line=seen,
                    )
                    seen += len(payload)
                    pos += len(payload)
                done += size
            except SourceError:
                raise
            except (OSError, pa.ArrowException) as e:
                kind = sniff_format(path)
                if kind != "parquet":
                    raise SourceError(
                        f"{path}: not a parquet file: it looks like {kind}{suggest_flag(kind)}"
                    ) from e
                raise SourceError(
                    f"{path}: cannot read parquet ({type(e).__name__}: {e}); the file is corrupt or "
                    "truncated. Re-download it."
                ) from e


class TextFolderSource(Source):
    """A folder of text files, one document per file, sorted by relative path (recursive)."""

    format = "text"

    def __init__(self, root: Path, patterns: list[str], exclude: list[Path]):
        self.root, self.patterns = root, patterns
        self.files = walk_sorted(root, patterns, exclude)

    def describe(self) -> str:
        return f"text:{self.root} ({','.join(self.patterns)}, {len(self.files)} files)"

    def identity(self) -> dict:
        return {
            "format": self.format,
            "path": str(self.root),
            "text_glob": ",".join(self.patterns),
            **files_identity(self.root, self.files),
        }

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
        return {"format": self.format, "path": str(root), **files_identity(root, files)}

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
            counter = CountingReader(raw)
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


# ----------------------------------------------------------------------------- resolution


class HubSource(Source):
    """A Hugging Face hub dataset through ``datasets.load_dataset`` (imported on first use, so local
    builds never pay for it). Rows come in the dataset's order, 512 per chunk, position = row index.
    ``--streaming`` iterates without downloading the whole dataset first (no total, so no ETA). Tested
    on local parquet through the same ``load_dataset`` call, since CI cannot reach the hub.
    """

    format = "hub"
    PARQUET_REVISION = "refs/convert/parquet"  # same rows, same order, loadable without a script

    def __init__(
        self,
        name: str,
        *,
        config: str | None = None,
        split: str = "train",
        revision: str | None = None,
        streaming: bool = False,
        text_field: str = "text",
        data_files: str | list[str] | None = None,
        cache_dir: str | None = None,
    ):
        self.name, self.config, self.split, self.revision = name, config, split, revision
        self.streaming, self.text_field, self.data_files = streaming, text_field, data_files
        self.cache_dir = cache_dir  # None: datasets' default (HF_DATASETS_CACHE)
        self._ds = None

    def describe(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in (("config", self.config), ("revision", self.revision)) if v)
        return f"hub:{self.name} (split={self.split}{extra})"

    def identity(self) -> dict:
        return {
            "format": self.format,
            "name": self.name,
            "config": self.config,
            "split": self.split,
            "revision": self.revision,
            "text_field": self.text_field,
            "data_files": self.data_files,
        }

    def load(self):
        """The ``datasets`` Dataset / IterableDataset (loaded once)."""
        if self._ds is None:
            import datasets

            kwargs = dict(split=self.split, streaming=self.streaming)
            if self.data_files is not None:
                kwargs["data_files"] = self.data_files
            if self.cache_dir is not None:
                kwargs["cache_dir"] = self.cache_dir
            revision = self.revision
            for attempt in range(2):
                try:
                    self._ds = datasets.load_dataset(self.name, self.config, revision=revision, **kwargs)
                    break
                except RuntimeError as e:
                    # datasets >= 4 refuses repos that still ship a loading script (nanoGPT #633);
                    # the hub's automatic parquet conversion of the same repo loads without it.
                    if "scripts are no longer supported" in str(e) and revision is None and attempt == 0:
                        revision = self.PARQUET_REVISION
                        continue
                    raise SourceError(f"hub dataset {self.name!r} (revision {revision}): {e}") from e
                except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
                    raise SourceError(
                        f"hub dataset {self.name!r} (revision {revision}) could not be loaded "
                        f"({type(e).__name__}: {e}). Check the name and your network access, or pass "
                        "a local path (parquet, jsonl, Skylion folder) instead."
                    ) from e
        return self._ds

    @property
    def total_docs(self) -> int | None:
        if self.streaming:
            return None
        return len(self.load())

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[RawChunk]:
        ds = self.load()
        names = ds.column_names
        if names is not None and self.text_field not in names:
            raise SourceError(
                f"hub dataset {self.name!r} has no column {self.text_field!r} (columns: "
                f"{names}); pass --text-field NAME"
            )
        pos = 0
        for batch in ds.select_columns([self.text_field]).iter(batch_size=512):
            texts = batch[self.text_field]
            yield RawChunk(
                "texts", texts, pos, len(texts), 0, self.describe(), self.text_field, first_line=pos
            )
            pos += len(texts)


def _split_globs(text_glob: str) -> list[str]:
    pats = [p.strip() for p in text_glob.split(",") if p.strip()]
    if not pats:
        raise SourceError(f"--text-glob {text_glob!r} has no pattern; e.g. --text-glob '*.txt,*.md'")
    return pats


def _is_jsonl(path: Path) -> bool:
    return path.name.lower().endswith(JSONL_SUFFIXES)


def _refuse_mixed_folder(path: Path, found: dict[str, tuple[str, int]]) -> None:
    """An auto-detected folder must hold one kind of corpus file: never pick one and drop the rest.

    ``found``: ``--source-format`` value -> (what its files are called, how many there are).
    """
    kinds = {fmt: (noun, n) for fmt, (noun, n) in found.items() if n}
    if len(kinds) > 1:
        listing = ", ".join(f"{n} {noun}" + ("s" if n != 1 else "") for noun, n in kinds.values())
        choices = " or ".join(f"--source-format {fmt}" for fmt in kinds)
        raise SourceError(
            f"{path}: holds more than one kind of corpus file ({listing}); pass {choices} "
            "to read only that kind"
        )


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
    below it must not change the format); otherwise the folder must hold one kind of corpus file:
    Skylion subset files (or ``openwebtext.tar.xz``), ``*.parquet``, ``*.jsonl*`` or ``*.txt``. A
    folder holding several kinds is refused, listing them (``--source-format`` picks one; the other
    kinds are then ignored). A single file whose leading bytes contradict the format (its suffix,
    or ``--source-format``) is refused, naming what it appears to be. A string that is not an
    existing path is a hub dataset name.
    """
    if source_format not in SOURCE_FORMATS:
        raise SourceError(f"--source-format {source_format!r}: expected one of {SOURCE_FORMATS}")
    exclude = exclude or []
    path = Path(source).expanduser()
    if source_format == "hub" or (source_format == "auto" and not path.exists()):
        looks_local = source.startswith((".", "/", "~")) or path.suffix.lower() in (
            ".parquet",
            ".jsonl",
            ".zst",
            ".gz",
            ".xz",
            ".txt",
            ".json",
        )
        if source_format == "auto" and looks_local:
            raise SourceError(f"{source}: no such file or folder (it is not a hub dataset name either)")
        return HubSource(
            source,
            config=hf_config,
            split=hf_split,
            revision=hf_revision,
            streaming=streaming,
            text_field=text_field,
        )
    path = path.resolve()
    if not path.exists():
        raise SourceError(f"{source}: no such file or folder")
    refuse_special_file(path)  # before anything treats "not a file" as "a folder"
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
        check_file_format(path, fmt)
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
    if fmt == "auto":
        _refuse_mixed_folder(
            path,
            {
                "skylion": ("Skylion file", len(subsets) + tarball.is_file()),
                "parquet": ("parquet file", len(walk_sorted(path, ["*.parquet"], exclude))),
                "jsonl": ("jsonl file", len(walk_sorted(path, [f"*{s}" for s in JSONL_SUFFIXES], exclude))),
                "text": (f"{DEFAULT_TEXT_GLOB} file", len(walk_sorted(path, [DEFAULT_TEXT_GLOB], exclude))),
            },
        )
    if fmt in ("auto", "skylion"):
        if subsets:
            return SkylionSource(path, subsets, None)
        if tarball.is_file():
            return SkylionSource(path, [], tarball)
        if fmt == "skylion":
            raise SourceError(f"{path}: no {SKYLION_SUBSET_GLOB} files and no {SKYLION_TARBALL}")
    if fmt in ("auto", "parquet"):
        files = walk_sorted(path, ["*.parquet"], exclude)
        if files:
            return ParquetSource(path, files, text_field)
        if fmt == "parquet":
            raise SourceError(f"{path}: no *.parquet files")
    if fmt in ("auto", "jsonl"):
        files = walk_sorted(path, [f"*{s}" for s in JSONL_SUFFIXES], exclude)
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
