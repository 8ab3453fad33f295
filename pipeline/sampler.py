"""Random-offset training windows and fixed validation windows, straight from the shard memmaps.

:class:`TokenSampler` ``.get_batch(step)`` returns ``x, y``: ``(batch_size, seq_len)`` int64 tensors on
``device``, ``y`` = ``x`` shifted by one. Each row is ``seq_len + 1`` consecutive tokens of one train
shard at a uniformly random start (``doc_aligned``: at a ``<|startoftext|>``); no window crosses a shard.
``sampling="permutation"`` draws without replacement instead: an *epoch* is the windows at starts
``0, T, 2T, ...`` of every shard (back to back, ``(len - 1) // T`` per shard; ``doc_aligned``: every
document start with room for a window), and the global batches of consecutive steps walk one seeded
permutation of it (:class:`pipeline.permutation.EpochOrder`), so every window comes once per epoch, on
one rank, and each epoch has a fresh order.
A batch is a pure function of ``(seed, step, rank, world_size)``, so resuming needs only the step; the
global batch depends only on ``(seed, step, world_size * B)`` (elastic resume). Every batch's ids are
checked against ``vocab_size`` before they leave the host (:class:`OutOfVocabError`). ``batches(start)``
prepares batches ahead in a thread. :class:`ValWindows`: a fixed set of val windows, the same for every
run and world size. Design, speed and memory: README.md, "Design" (Sampler).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.device import resolve_device
from pipeline.format import ShardDataset
from pipeline.permutation import BatchOrder
from pipeline.sampler_index import OutOfVocabError, SamplerError, WindowIndex, checked_split, open_dataset

__all__ = ["SAMPLING_MODES", "OutOfVocabError", "SamplerError", "TokenSampler", "ValWindows"]

SAMPLING_MODES = ("random", "permutation")

# First SeedSequence word of the training stream; keeps it apart from any other use of the same seed.
_TRAIN_STREAM = 0x0767_7470  # "owtgpt" sampler, v1


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_rank(rank: int, world_size: int) -> tuple[int, int]:
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be < world_size ({world_size}), got {rank}")
    return rank, world_size


def _open_windows(
    data: str | Path | ShardDataset,
    split: str,
    seq_len: int,
    doc_aligned: bool,
    expected_vocab_size: int | None,
    expected_tokenizer_fingerprint: str | None,
    madvise: bool = False,
    stride: int = 1,
) -> tuple[ShardDataset, WindowIndex]:
    """Open ``data``, check ``split`` against the caller's vocab/tokenizer, index its window starts."""
    dataset = open_dataset(data)
    shards = checked_split(
        dataset,
        split,
        expected_vocab_size=expected_vocab_size,
        expected_tokenizer_fingerprint=expected_tokenizer_fingerprint,
    )
    index = WindowIndex(
        shards,
        window=seq_len + 1,
        doc_aligned=doc_aligned,
        where=dataset.directory,
        split=split,
        vocab_size=dataset.vocab_size,
        madvise=madvise,
        stride=stride,
    )
    return dataset, index


def _resolve_device(device: str | torch.device) -> torch.device:
    dev = resolve_device(device, flag="device")
    # pinned to an index: the prefetch thread makes it its current device (current devices are per thread)
    return (
        torch.device("cuda", torch.cuda.current_device()) if dev.type == "cuda" and dev.index is None else dev
    )


def _widen_cpu(buf: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) uint16 -> contiguous int64 x, y; numpy's cast-copy is the fastest CPU widening."""
    rows, window = buf.shape
    x = np.empty((rows, window - 1), dtype=np.int64)
    y = np.empty((rows, window - 1), dtype=np.int64)
    np.copyto(x, buf[:, :-1])
    np.copyto(y, buf[:, 1:])
    return torch.from_numpy(x), torch.from_numpy(y)


def _widen_on(dev_u16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) uint16 on a device -> contiguous int64 x, y on that device."""
    rows, window = dev_u16.shape
    x = torch.empty((rows, window - 1), dtype=torch.int64, device=dev_u16.device)
    y = torch.empty((rows, window - 1), dtype=torch.int64, device=dev_u16.device)
    x.copy_(dev_u16[:, :-1])
    y.copy_(dev_u16[:, 1:])
    return x, y


@dataclass
class _Slot:
    """One host staging buffer: numpy view for the gather, tensor for the copy, event of its last copy."""

    host: np.ndarray
    tensor: torch.Tensor
    event: torch.cuda.Event | None = None


@dataclass
class _Batch:
    step: int
    x: torch.Tensor
    y: torch.Tensor
    ready: torch.cuda.Event | None  # CUDA: recorded on the copy stream after x and y were written


@dataclass
class _Failure:
    error: BaseException


_STOP = object()


class _Prefetcher:
    """A daemon thread producing consecutive steps, at most ``depth`` batches ahead of the consumer.

    Keeping the consumer's ``next()`` at tens of microseconds with a full queue takes two rules,
    because any GIL release by the consumer while the producer is awake lets the producer take the
    GIL, and since the producer's own GIL-free calls last microseconds it keeps re-taking it until
    its batch is made: the consumer then waits for a whole production (what a
    ``queue.Queue(maxsize=depth)`` did: 0.66 ms of 0.87 ms on an H200; ``bench/sampler.py
    --busy-consumer`` reproduces it on CPU).

    * The producer takes a credit from a semaphore before each batch; the consumer gives it back
      with :meth:`release` only after the hand-off (CUDA ``wait_event`` and ``record_stream``
      release the GIL), not inside :meth:`get`.
    * Freeing tensors releases the GIL too, and a loop ``for step, x, y in batches`` frees the
      previous batch right after ``next()`` returns, just after the producer was woken. So the
      producer keeps a reference to the last batches handed out and drops the older ones itself
      (:attr:`_handed`): the consumer's rebinding is then a mere decrement and the free happens in
      this thread.
    """

    def __init__(self, produce, start_step: int, depth: int, device: torch.device, hint=None):
        self._produce = produce
        self._hint = hint  # hint(step), after producing step: may start reading step + 1's pages
        self._device = device
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # unbounded: the credits bound it
        self._credits = threading.Semaphore(depth)
        self._stop = threading.Event()
        # (x, y) of the batches handed out, newest last; appended by the consumer, trimmed here
        self._handed: collections.deque[tuple[torch.Tensor, torch.Tensor]] = collections.deque()
        self._thread = threading.Thread(
            target=self._run, args=(start_step,), name="owtgpt-sampler-prefetch", daemon=True
        )
        self._thread.start()

    def _run(self, step: int) -> None:
        try:
            if self._device.type == "cuda":
                torch.cuda.set_device(self._device)  # the current device is per thread
            while True:
                self._credits.acquire()  # blocks while `depth` batches wait for the consumer
                if self._stop.is_set():
                    return
                # keep the two newest: the consumer is using the newest and may still hold the one
                # before (it rebinds its names only after next() returns); older ones are freed here
                while len(self._handed) > 2:
                    self._handed.popleft()
                item = self._produce(step)
                if self._hint is not None:  # the next batch's reads run while this one waits in the queue
                    self._hint(step)
                self._queue.put(item)
                step += 1
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._queue.put(_Failure(e))

    def get(self) -> _Batch:
        item = self._queue.get()
        if isinstance(item, _Failure):
            self.stop()
            raise item.error
        if item is _STOP:
            raise RuntimeError("the sampler's prefetch thread was stopped (the sampler was closed)")
        return item

    def release(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The consumer has handed ``x, y`` over: let the producer make one more (and free them later)."""
        self._handed.append((x, y))
        self._credits.release()

    def stop(self) -> None:
        self._stop.set()
        # One spare credit: a producer waiting for one wakes, one mid-batch finds it after its put;
        # either way it sees the flag and returns (puts never block: the queue is unbounded).
        self._credits.release()
        self._thread.join()
        self._handed.clear()
        self._drain()
        self._queue.put(_STOP)  # a get() after stop() raises instead of waiting forever

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass


class _ColdPages:
    """Whether ``MADV_WILLNEED`` hints for the next batch are worth their syscalls (~1 us per window).

    They pay only while gathers wait for the disk. A gather of ``rows`` windows slower than
    ``COLD_S_PER_ROW`` each (a page-cache hit copies a 2 KiB window in well under a microsecond; one
    disk read takes tens of microseconds or more) that ran *without* hints turns hints on for the next
    ``PROBE_EVERY`` batches; then one batch goes unhinted again to see whether the data is still cold.
    So a warm cache pays nothing and a cold one loses one unhinted batch in ``PROBE_EVERY + 1``.
    Only speed depends on this, never a batch.
    """

    COLD_S_PER_ROW = 10e-6
    PROBE_EVERY = 256

    def __init__(self) -> None:
        self.left = 0  # batches still to hint before the next unhinted probe

    def observe(self, seconds: float, rows: int, hinted: bool) -> None:
        if not hinted and seconds > self.COLD_S_PER_ROW * rows:
            self.left = self.PROBE_EVERY

    def hint_next(self) -> bool:
        if self.left > 0:
            self.left -= 1
            return True
        return False


class TokenSampler:
    """Deterministic random windows of the ``split`` of a shard folder (see the module docstring).

    ``num_tokens``: tokens in the split.
    ``madvise``: the cold-cache page policy (``MADV_RANDOM`` + ``MADV_WILLNEED`` of the next batch);
    it changes speed only, never the batches. ``sampling``: ``"random"`` (with replacement, any start)
    or ``"permutation"`` (each window of the epoch once; ``epoch_windows`` of them, else ``None``).
    """

    def __init__(
        self,
        data: str | Path | ShardDataset,
        *,
        split: str = "train",
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        doc_aligned: bool = False,
        device: str | torch.device = "cpu",
        prefetch: int = 2,
        expected_vocab_size: int | None = None,
        expected_tokenizer_fingerprint: str | None = None,
        madvise: bool = True,
        sampling: str = "random",
    ):
        if sampling not in SAMPLING_MODES:
            raise SamplerError(
                f"sampling={sampling!r} is not a sampling mode; use 'random' (windows at uniformly random "
                "starts, with replacement) or 'permutation' (each window once per epoch)"
            )
        self.sampling = sampling
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.seed = _check_int("seed", seed, 0)
        self.rank, self.world_size = _check_rank(rank, world_size)
        self.prefetch = _check_int("prefetch", prefetch, 0)
        self.doc_aligned = bool(doc_aligned)
        self.split = split
        self.device = _resolve_device(device)
        self.madvise = bool(madvise)
        self.dataset, self.index = _open_windows(
            data,
            split,
            self.seq_len,
            self.doc_aligned,
            expected_vocab_size,
            expected_tokenizer_fingerprint,
            self.madvise,
            # permutation: back-to-back windows (each token is an input once and a target once per epoch)
            stride=self.seq_len if sampling == "permutation" and not self.doc_aligned else 1,
        )
        self._order: BatchOrder | None = None
        if sampling == "permutation":
            b, r, w = self.batch_size, self.rank, self.world_size
            self._order = BatchOrder(self.index.total, self.seed, batch_size=b, rank=r, world_size=w)
        self.epoch_windows: int | None = self.index.total if self._order is not None else None
        self.num_tokens = int(self.index.lengths.sum())
        self._lock = threading.Lock()  # get_batch and the prefetch thread share the staging ring
        self._prefetchers: set[_Prefetcher] = set()
        self._closed = False
        self._cuda = self.device.type == "cuda"
        shape = (self.batch_size, self.seq_len + 1)
        # CUDA: pinned uint16 staging buffers (2 bytes per token over PCIe, widened on the device), one per
        # batch in flight; a slot is rewritten only after its copy's event completed
        nslots = self.prefetch + 2 if self._cuda else 1
        self._ring: list[_Slot] = []
        for _ in range(nslots):
            t = torch.empty(shape, dtype=torch.uint16, pin_memory=self._cuda)
            self._ring.append(_Slot(host=t.numpy(), tensor=t))
        self._next_slot = 0
        self._hinted: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None  # last prefetch_pages draw
        self._hinted_step = -1
        self._cold = _ColdPages()
        self._copy_stream = torch.cuda.Stream(self.device) if self._cuda else None

    # ------------------------------------------------------------------ the pure function of the step

    def window_starts(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, token offset within that shard) of every row of ``step``'s batch, in row order.

        Cheap (no token is read; doc-aligned reads the document index): use it to find which text a
        step trained on.
        """
        step = _check_int("step", step, 0)
        return self._draw(step)

    def _draw(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if self._order is not None:
            # the global batch of step s is positions s*world*B .. (s+1)*world*B - 1 of the epoch stream;
            # rank r takes r, r + world, ... (as the random draws): ranks disjoint, elastic at equal world*B
            return self.index.locate(np.sort(self._order.items(step)))
        # a fresh SeedSequence per step: no state but the step (streams fixed per numpy version)
        rng = np.random.default_rng([_TRAIN_STREAM, self.seed, step])
        world = self.world_size
        # one stream of world * B draws (the global batch); rank r takes draws r, r + world, ...:
        # ranks never share a draw, and the global batch survives a change of world size at equal world * B
        draws = rng.integers(0, self.index.total, size=world * self.batch_size, dtype=np.int64)
        # sorted by corpus position: gather() wants rows grouped by shard, and cold pages read in order;
        # row order inside a batch does not change the loss
        draws = np.sort(draws[self.rank :: world])
        return self.index.locate(draws)

    def _starts(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``window_starts(step)``, reusing the draw of the last ``prefetch_pages`` (seeding a Generator
        costs ~40 us: the prefetch thread would otherwise draw every step twice)."""
        hinted = self._hinted  # one attribute read: atomic, whichever thread wrote it
        if hinted is not None and hinted[0] == step:
            return hinted[1]
        return self._draw(step)

    def _hint_after(self, step: int) -> None:
        """Called by the prefetch thread after producing ``step``: hint ``step + 1`` if data is cold."""
        if self._cold.hint_next():
            self.prefetch_pages(step + 1)

    def _produce(self, step: int) -> _Batch:
        shard_ids, starts = self._starts(step)
        with self._lock:
            if self._closed:  # checked under the lock: close() empties the ring under it
                raise RuntimeError("the TokenSampler is closed")
            slot = self._ring[self._next_slot]
            self._next_slot = (self._next_slot + 1) % len(self._ring)
            if slot.event is not None:
                slot.event.synchronize()  # its previous H2D copy must finish before we overwrite it
            t0 = time.perf_counter()
            self.index.gather(shard_ids, starts, slot.host)
            self._cold.observe(time.perf_counter() - t0, len(starts), hinted=self._hinted_step == step)
            self.index.check_ids(slot.host, shard_ids, starts)  # before any id reaches the device
            if not self._cuda:
                x, y = _widen_cpu(slot.host)
                if self.device.type != "cpu":  # other accelerators may lack uint16 kernels: plain copy
                    x, y = x.to(self.device), y.to(self.device)
                return _Batch(step, x, y, None)
            assert self._copy_stream is not None
            with torch.cuda.stream(self._copy_stream):
                dev_u16 = slot.tensor.to(self.device, non_blocking=True)
                x, y = _widen_on(dev_u16)
                slot.event = torch.cuda.Event()
                slot.event.record(self._copy_stream)
            return _Batch(step, x, y, slot.event)

    def prefetch_pages(self, step: int) -> None:
        """Ask the kernel to start reading the windows of ``step`` (``MADV_WILLNEED``); returns at once."""
        drawn = self._draw(step)
        self._hinted = (step, drawn)
        self._hinted_step = step
        self.index.willneed(*drawn)

    def _handoff(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Make the consumer's current stream wait for the batch and own its memory."""
        if batch.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(batch.ready)
            batch.x.record_stream(stream)
            batch.y.record_stream(stream)
        return batch.x, batch.y

    def get_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, y`` for ``step``: (batch_size, seq_len) int64 on ``device``; same step, same batch."""
        return self._handoff(self._produce(_check_int("step", step, 0)))

    def batches(self, start_step: int = 0) -> Generator[tuple[int, torch.Tensor, torch.Tensor], None, None]:
        """Yield ``(step, x, y)`` for ``start_step, start_step + 1, ...`` (equal to ``get_batch(step)``).

        With ``prefetch > 0`` a background thread prepares up to ``prefetch`` batches ahead; ``close()``
        the generator to stop it.
        """
        step = _check_int("start_step", start_step, 0)
        if self._closed:
            raise RuntimeError("the TokenSampler is closed")
        return self._iterate(step)

    def _iterate(self, step: int) -> Generator[tuple[int, torch.Tensor, torch.Tensor], None, None]:
        if self.prefetch == 0:
            while True:
                x, y = self.get_batch(step)
                yield step, x, y
                step += 1
        hint = self._hint_after if self.madvise else None
        pf = _Prefetcher(self._produce, step, self.prefetch, self.device, hint)
        self._prefetchers.add(pf)
        try:
            while True:
                # no local names for the batch: a reference kept in this frame across the yield
                # would be dropped inside the next next(), and freeing tensors releases the GIL
                yield self._take(pf)
        finally:
            pf.stop()
            self._prefetchers.discard(pf)

    def _take(self, pf: _Prefetcher) -> tuple[int, torch.Tensor, torch.Tensor]:
        batch = pf.get()
        x, y = self._handoff(batch)
        pf.release(x, y)  # only now wake the producer (see _Prefetcher)
        return batch.step, x, y

    def close(self) -> None:
        """Stop prefetch threads and release the staging buffers; idempotent."""
        self._closed = True
        for pf in list(self._prefetchers):
            pf.stop()
        self._prefetchers.clear()
        with self._lock:
            for slot in self._ring:
                if slot.event is not None:
                    slot.event.synchronize()
            self._ring = []

    def __enter__(self) -> TokenSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = f"{self.sampling}, doc-aligned" if self.doc_aligned else self.sampling
        if self._order is not None:
            mode += f", {self.index.total:,} windows per epoch"
        return (
            f"TokenSampler({self.dataset.directory}, split={self.split!r}, B={self.batch_size}, "
            f"T={self.seq_len}, seed={self.seed}, rank={self.rank}/{self.world_size}, {mode}, "
            f"{self.num_tokens:,} tokens, {self.index.total:,} starts, device={self.device})"
        )


class ValWindows:
    """A fixed set of ``num_windows`` windows evenly spaced over the val split's starts (disjoint when the
    split has room), the same in every run and for every world size; rank ``r`` takes windows
    ``r, r + world_size, ...``.

    Iterating yields ``(x, y)`` int64 batches of at most ``batch_size`` rows of this rank's windows.
    The number of batches can differ by one between ranks when ``num_windows`` is not a multiple of
    ``world_size * batch_size``: reduce the summed loss and the window count once after the loop,
    not per batch.
    """

    def __init__(
        self,
        data: str | Path | ShardDataset,
        *,
        seq_len: int,
        num_windows: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        expected_vocab_size: int | None = None,
        expected_tokenizer_fingerprint: str | None = None,
        split: str = "val",
        doc_aligned: bool = False,
    ):
        self.seq_len = _check_int("seq_len", seq_len, 1)
        self.num_windows = _check_int("num_windows", num_windows, 1)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.rank, self.world_size = _check_rank(rank, world_size)
        self.device = _resolve_device(device)
        self.dataset, self.index = _open_windows(
            data, split, self.seq_len, bool(doc_aligned), expected_vocab_size, expected_tokenizer_fingerprint
        )
        total = self.index.total
        if self.num_windows > total:
            raise SamplerError(
                f"{self.dataset.directory}: num_windows={self.num_windows} but the '{split}' split has only "
                f"{total:,} distinct window starts for seq_len={self.seq_len} "
                f"({int(self.index.lengths.sum()):,} tokens); "
                "ask for fewer eval windows or build a larger val split (--val-fraction)."
            )
        # Evenly spaced over the global start numbering: fixed by the data and num_windows alone.
        # Python ints: num_windows * total can exceed int64 for huge splits.
        g = np.array([k * total // self.num_windows for k in range(self.num_windows)], dtype=np.int64)
        self.shard_ids, self.starts = self.index.locate(g)  # all windows, in window order
        self._mine = np.arange(self.rank, self.num_windows, self.world_size)

    def __len__(self) -> int:
        return -(-len(self._mine) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for lo in range(0, len(self._mine), self.batch_size):
            rows = self._mine[lo : lo + self.batch_size]
            buf = np.empty((len(rows), self.seq_len + 1), dtype=np.uint16)
            # rows are increasing window numbers, hence sorted by shard, as gather() requires
            self.index.gather(self.shard_ids[rows], self.starts[rows], buf)
            self.index.check_ids(buf, self.shard_ids[rows], self.starts[rows])
            if self.device.type == "cuda":  # eval is not on the hot path: a synchronous uint16 copy
                yield _widen_on(torch.from_numpy(buf).to(self.device))
            else:
                x, y = _widen_cpu(buf)
                yield x.to(self.device), y.to(self.device)
