"""Hugging Face hub corpora: :class:`HubSource`, a :class:`~pipeline.sources.Source` over ``datasets``.

Contract: rows come in the dataset's own order, 512 rows per :class:`RawChunk` of
``list[str]``, each row's position its row index, so positions never depend on chunking. The
dataset is loaded once, lazily, on first use; ``datasets`` itself is imported only then, so local
builds never pay for it. ``--streaming`` iterates without downloading the whole dataset into the
cache first (no total, so no ETA); otherwise ``datasets`` caches it as arrow and we read from there.

It is tested on local parquet through the very same ``datasets.load_dataset`` call (the builder
name ``"parquet"`` plus ``data_files``), since the hub is not reachable from CI.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.sources import DEFAULT_CHUNK_BYTES, RawChunk, Source, SourceError


class HubSource(Source):
    """A Hugging Face hub dataset through ``datasets.load_dataset`` (datasets >= 4: no scripts).

    Hub repos that still carry a loading script (``Skylion007/openwebtext`` did; nanoGPT #633)
    cannot be loaded by datasets >= 4; for those we fall back to the hub's automatic parquet
    conversion (``revision="refs/convert/parquet"``), which holds the same rows in the same order.
    ``--streaming`` iterates without downloading the whole dataset to the local cache first.
    """

    format = "hub"
    PARQUET_REVISION = "refs/convert/parquet"

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
