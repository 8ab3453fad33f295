"""Read a local source in a child process, so the build's main process does no decompression or framing.

:class:`ReadAhead` forks one *reader* (before the worker pool exists) that iterates
``src.chunks(chunk_bytes)`` and yields, in source order, a :class:`SlotRef` per chunk: the chunk pickled
into a slot of a shared-memory ring, which workers :func:`resolve` and fill with their tokens
(:func:`stash_tokens` / :func:`fetch_tokens`), so neither text nor tokens cross a pipe (a chunk too big
for a slot travels as itself). Call :meth:`ReadAhead.release` once per item, in order; at most ``slots``
chunks exist at once. A reader's exception is re-raised in the main process as its
:class:`~pipeline.tools.sources.SourceError`. Hub and Skylion sources are read in-process (``datasets``
is not fork-safe; Skylion chunks are whole files the workers decompress). Why: ``bench/build_cpu.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.tools.sources import RawChunk, Source, SourceError

FORKED_FORMATS = ("jsonl", "parquet", "text")  # local sources whose reading is main-process work


# Shared-memory rings by id, filled in the main process before the workers are forked: each worker
# inherits the mapping and finds its ring here. Entries are removed by ReadAhead.close().
_RINGS: dict[int, tuple[mmap.mmap, int]] = {}
_RING_IDS = itertools.count()


class _Done:
    """Sent after the last chunk."""


@dataclass(frozen=True)
class SlotRef:
    """A chunk pickled into slot ``slot`` (``size`` bytes) of ring ``ring``: what travels to a worker."""

    ring: int
    slot: int
    size: int


def resolve(item: SlotRef | RawChunk) -> RawChunk:
    """The chunk an item from :class:`ReadAhead` stands for (call it in the worker)."""
    if not isinstance(item, SlotRef):
        return item
    ring, slot_bytes = _RINGS[item.ring]
    start = item.slot * slot_bytes
    return pickle.loads(ring[start : start + item.size])


@dataclass(frozen=True)
class TokensRef:
    """A worker's uint16 tokens, written back into the slot its chunk came in: what travels back."""

    ring: int
    slot: int
    count: int


def stash_tokens(item: SlotRef | RawChunk, tokens: np.ndarray) -> np.ndarray | TokensRef:
    """In the worker, once ``item``'s chunk was read: put ``tokens`` into its slot when they fit.

    The slot is not reused before the main process has consumed this result (it releases it
    only then), so the tokens cross to the main process with no pipe and no pickle.
    """
    if not isinstance(item, SlotRef):
        return tokens
    ring, slot_bytes = _RINGS[item.ring]
    if tokens.nbytes > slot_bytes:
        return tokens
    np.frombuffer(ring, dtype=np.uint16, count=len(tokens), offset=item.slot * slot_bytes)[:] = tokens
    return TokensRef(item.ring, item.slot, len(tokens))


def fetch_tokens(tokens: np.ndarray | TokensRef) -> np.ndarray:
    """In the main process: the tokens; for a :class:`TokensRef` a view of the slot, valid until release()."""
    if not isinstance(tokens, TokensRef):
        return tokens
    ring, slot_bytes = _RINGS[tokens.ring]
    return np.frombuffer(ring, dtype=np.uint16, count=tokens.count, offset=tokens.slot * slot_bytes)


def slot_bytes_for(chunk_bytes: int) -> int:
    """Slot size: a chunk's text plus room for a line longer than usual and pickle framing."""
    return chunk_bytes + chunk_bytes // 2 + (64 << 10)


class ReadAhead:
    """Iterate ``src.chunks(chunk_bytes)`` from a reader process (in-process where forking is unsafe)."""

    def __init__(self, src: Source, chunk_bytes: int, slots: int):
        self.src = src
        self.chunk_bytes = chunk_bytes
        self._proc = None
        self._recv = None
        self._free = None
        self._ring_id: int | None = None
        forked = src.format in FORKED_FORMATS and "fork" in mp.get_all_start_methods()
        if forked:
            ctx = mp.get_context("fork")
            slot_bytes = slot_bytes_for(chunk_bytes)
            self._ring_id = next(_RING_IDS)
            _RINGS[self._ring_id] = (mmap.mmap(-1, slots * slot_bytes), slot_bytes)  # MAP_SHARED: inherited
            self._free = ctx.Semaphore(slots)
            recv, send = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(
                target=_reader,
                args=(src, chunk_bytes, send, recv, os.getpid(), self._ring_id, slots, self._free),
                name="owtgpt-source-reader", daemon=True,
            )  # fmt: skip
            self._proc.start()
            send.close()  # the child holds the only write end: its exit is our EOF
            self._recv = recv

    def release(self) -> None:
        """The oldest unreleased item's chunk is no longer needed: its slot may be reused."""
        if self._free is not None:
            self._free.release()

    def __iter__(self) -> Iterator[RawChunk]:
        if self._proc is None:
            yield from self.src.chunks(self.chunk_bytes)
            return
        assert self._recv is not None  # set together with _proc
        while True:
            try:
                item = self._recv.recv()
            except EOFError:
                self._proc.join()
                raise SourceError(
                    f"{self.src.describe()}: the source reader process exited (code {self._proc.exitcode}) "
                    "before the end of the data; rerun the same command to resume"
                ) from None
            if isinstance(item, _Done):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        if self._proc is not None:
            assert self._recv is not None  # set together with _proc
            self._recv.close()
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join()
            self._proc = None
        if self._ring_id is not None:
            ring, _ = _RINGS.pop(self._ring_id)
            # a token view still referenced (by an exception's frame) keeps it mapped until it is freed
            with contextlib.suppress(BufferError):
                ring.close()
            self._ring_id = None

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_reader(src: Source) -> None:
    """Set up the reader process for ``src`` (it is a process of its own, so process-wide settings are ours).

    Parquet: pyarrow's jemalloc pool (else the system one) instead of its default mimalloc, which
    keeps freed pages: reading one 60 MB vs one 180 MB row group page by page, its footprint grew
    from 31 to 49 MB, jemalloc's stayed at 27-29 MB (``bench/parquet_memory.py``).
    """
    if src.format == "parquet":
        import pyarrow as pa

        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            pa.set_memory_pool(pa.system_memory_pool())


def _reader(
    src: Source, chunk_bytes: int, send, recv, parent_pid: int, ring_id: int, slots: int, free
) -> None:
    """The reader process: every chunk into the next free slot (or the pipe), then ``_Done``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    recv.close()  # only the parent reads; when it is gone, send() fails with EPIPE
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    ring, slot_bytes = _RINGS[ring_id]
    try:
        prepare_reader(src)
        for n, chunk in enumerate(src.chunks(chunk_bytes)):
            data = pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)
            free.acquire()  # slot n % slots: released by the parent once chunk n - slots was used
            if len(data) <= slot_bytes:
                k = n % slots
                ring[k * slot_bytes : k * slot_bytes + len(data)] = data
                send.send(SlotRef(ring_id, k, len(data)))
            else:  # a chunk larger than a slot (one very long line): through the pipe, same order
                send.send(chunk)
        send.send(_Done())
    except (BrokenPipeError, ConnectionResetError):
        os._exit(0)  # the parent closed the pipe: nobody wants the rest
    except BaseException as e:  # handed to the parent, which raises it with its message
        try:
            send.send(e)
        except Exception:  # unpicklable: keep the message
            send.send(SourceError(f"{src.describe()}: {type(e).__name__}: {e}"))
    finally:
        send.close()


def _exit_with_parent(parent_pid: int) -> None:
    # A SIGKILLed parent leaves a reader blocked in send() only if a worker still holds the read
    # end (workers are forked after us and inherit it); leave as soon as the parent is gone.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


__all__ = [
    "FORKED_FORMATS",
    "ReadAhead",
    "SlotRef",
    "TokensRef",
    "fetch_tokens",
    "prepare_reader",
    "resolve",
    "slot_bytes_for",
    "stash_tokens",
]
