"""The CUDA path of the sampler: pinned staging ring, non_blocking copies on a side stream,
uint16 -> int64 widening on the device. Every batch must equal the CPU sampler's batch for the same
step (the CPU path is checked against generated shards in test_sampler.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.sampler import TokenSampler, ValWindows, _widen_on
from tests.pipeline.test_sampler import T, doc_lengths, write_dataset

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("sampler_gpu") / "shards"
    write_dataset(
        root, {"train": [doc_lengths(n, rng) for n in (6000, 9000)], "val": [doc_lengths(3000, rng)]}
    )
    return root


@pytest.mark.parametrize(
    ("prefetch", "doc_aligned", "sampling"),
    [(0, False, "random"), (1, True, "random"), (3, False, "random"), (2, True, "permutation")],
)
def test_cuda_batches_equal_cpu_batches(root, prefetch, doc_aligned, sampling):
    kw = dict(batch_size=16, seq_len=T, seed=9, doc_aligned=doc_aligned, sampling=sampling)
    with (
        TokenSampler(root, device="cpu", prefetch=0, **kw) as cpu,
        TokenSampler(root, device="cuda", prefetch=prefetch, **kw) as gpu,
    ):
        assert all(slot.tensor.is_pinned() for slot in gpu._ring)
        assert len(gpu._ring) == prefetch + 2
        for (step, x, y), _ in zip(gpu.batches(3), range(60), strict=False):
            assert x.is_cuda and y.is_cuda and x.dtype == torch.int64 and x.is_contiguous()
            # busy the consumer stream so the producer races ahead and reuses its pinned buffers
            torch.cuda._sleep(200_000)
            xc, yc = cpu.get_batch(step)
            assert torch.equal(x.cpu(), xc) and torch.equal(y.cpu(), yc)
        xg, yg = gpu.get_batch(7)
        xc, yc = cpu.get_batch(7)
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


def test_cuda_tensors_survive_consumer_side_use(root):
    """Batches kept alive across many later steps must not be overwritten (record_stream / ring)."""
    with (
        TokenSampler(root, device="cuda", batch_size=8, seq_len=T, prefetch=2) as gpu,
        TokenSampler(root, device="cpu", batch_size=8, seq_len=T, prefetch=0) as cpu,
    ):
        kept = [(step, x, y) for (step, x, y), _ in zip(gpu.batches(0), range(30), strict=False)]
        torch.cuda.synchronize()
        for step, x, y in kept:
            xc, yc = cpu.get_batch(step)
            assert torch.equal(x.cpu(), xc) and torch.equal(y.cpu(), yc)


def test_cuda_val_windows_equal_cpu(root):
    kw = dict(seq_len=T, num_windows=20, batch_size=6)
    for (xg, yg), (xc, yc) in zip(ValWindows(root, device="cuda", **kw), ValWindows(root, **kw), strict=True):
        assert xg.is_cuda and torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)


def test_device_widening_keeps_ids_above_int16():
    buf = np.arange(65536, dtype=np.uint16)[::-1].reshape(64, 1024).copy()
    x, y = _widen_on(torch.from_numpy(buf).cuda())
    ref = torch.from_numpy(buf.astype(np.int64))
    assert x.is_cuda and torch.equal(x.cpu(), ref[:, :-1]) and torch.equal(y.cpu(), ref[:, 1:])


def test_cuda_batches_freed_by_the_producer_while_the_consumer_stream_still_reads_them(root):
    """The prefetch thread drops the consumer's spent batches (so the free happens off the consumer's
    thread); the caching allocator must still not hand their memory to a later batch before the
    consumer stream's queued kernels have read it (record_stream is what guarantees that)."""
    import threading
    import weakref

    with (
        TokenSampler(root, device="cuda", batch_size=8, seq_len=T, prefetch=2) as gpu,
        TokenSampler(root, device="cpu", batch_size=8, seq_len=T, prefetch=0) as cpu,
    ):
        it = gpu.batches(0)
        sums, freed_in = [], {}
        for k in range(24):
            step, x, y = next(it)
            torch.cuda._sleep(500_000)  # the reads below run long after the producer dropped x, y
            sums.append((step, x.sum(), y.sum()))
            weakref.finalize(x, lambda k=k: freed_in.setdefault(k, threading.current_thread().name))
        del x, y
        torch.cuda.synchronize()
        for step, xs, ys in sums:
            xc, yc = cpu.get_batch(step)
            assert xs.item() == xc.sum().item() and ys.item() == yc.sum().item()
    assert all(freed_in.get(k) == "owtgpt-sampler-prefetch" for k in range(20)), freed_in
