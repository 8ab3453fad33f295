"""``TokenSampler(sampling="permutation")`` and the keyed permutation under it (pipeline/permutation.py).

Windows are identified from their *contents* (the position-encoded shards of test_sampler.py), and the
expected epoch is listed from the generated token arrays, not from the sampler's index.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.format import HEADER_SIZE
from pipeline.permutation import BatchOrder, EpochOrder, split_domain
from pipeline.sampler import OutOfVocabError, SamplerError, TokenSampler
from pipeline.tokenizer import VOCAB_SIZE
from tests.pipeline.test_sampler import batch_digest, doc_lengths, locate_row, windows, write_dataset

REPO = Path(__file__).resolve().parents[2]
T = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    rng = np.random.default_rng(99)
    root = tmp_path_factory.mktemp("perm") / "shards"
    splits = {
        # 133 back-to-back windows of T + 1 (31 + 81 + 21 + 0): not a multiple of any batch used below
        "train": [doc_lengths(n, rng) for n in (1000, 2600, 700)] + [[6, 5]],
        "val": [doc_lengths(600, rng)],
    }
    return root, write_dataset(root, splits)


def expected_epoch(ref: list, doc_aligned: bool) -> set[tuple[int, int]]:
    """(shard, start) of every window of an epoch, from the generated arrays."""
    if doc_aligned:
        return {(j, int(o)) for j, (_, tok, st) in enumerate(ref) for o in st if o + T + 1 <= len(tok)}
    return {(j, k) for j, (_, tok, _) in enumerate(ref) for k in range(0, len(tok) - T, T)}


def global_batches(root: Path, ref: list, steps: int, *, batch_size: int, world: int, **kw) -> list:
    """Per step, per rank, the (shard, start) of each row, found from the window's tokens."""
    rows: list[list[list[tuple[int, int]]]] = [[] for _ in range(steps)]
    samplers = [
        TokenSampler(root, batch_size=batch_size, seq_len=T, rank=r, world_size=world, prefetch=0, **kw)
        for r in range(world)
    ]
    try:
        for s in samplers:
            for step in range(steps):
                x, y = s.get_batch(step)
                rows[step].append([locate_row(w, ref) for w in windows(x, y)])
    finally:
        for s in samplers:
            s.close()
    return rows


def walk_epochs(batches: list[list[list[tuple[int, int]]]], expected: set) -> int:
    """Check that consecutive global batches (all ranks' rows) consume ``expected`` once per epoch, so
    no two ranks get the same window in an epoch; returns the full epochs seen.

    Inside a batch that crosses an epoch end the rows are not in stream order (each rank sorts its rows),
    so there the check is by counting: every window still unseen in the old epoch must be in the batch,
    and the rest of the batch must be distinct windows that open the next epoch.
    """
    remaining, epochs = set(expected), 0
    for ranks in batches:
        rows = collections.Counter(w for rank in ranks for w in rank)
        assert set(rows) <= expected, set(rows) - expected
        if sum(rows.values()) <= len(remaining) and max(rows.values()) == 1 and set(rows) <= remaining:
            remaining -= set(rows)
        else:  # the epoch ends inside this batch
            for w in remaining:
                assert rows[w] >= 1, f"window {w} was never visited in epoch {epochs}"
                rows[w] -= 1
            rest = +rows
            assert max(rest.values(), default=1) == 1, f"a window repeats at the start of epoch {epochs + 1}"
            epochs += 1
            remaining = expected - set(rest)
        if not remaining:
            epochs += 1
            remaining = set(expected)
    return epochs


@pytest.mark.parametrize("doc_aligned", [False, True])
@pytest.mark.parametrize(("batch_size", "world"), [(5, 1), (4, 3), (7, 2)])
def test_every_window_once_per_epoch_on_disjoint_ranks(data, doc_aligned, batch_size, world, monkeypatch):
    root, ref = data
    monkeypatch.setattr(BatchOrder, "BLOCK_ROWS", 3 * batch_size)  # rows made 3 steps at a time: many blocks
    expected = expected_epoch(ref["train"], doc_aligned)
    per_step = batch_size * world
    steps = -(-3 * len(expected) // per_step) + 1  # a little over three epochs
    batches = global_batches(
        root,
        ref["train"],
        steps,
        batch_size=batch_size,
        world=world,
        sampling="permutation",
        doc_aligned=doc_aligned,
        seed=5,
    )
    assert walk_epochs(batches, expected) == 3
    with TokenSampler(root, batch_size=1, seq_len=T, sampling="permutation", doc_aligned=doc_aligned) as s:
        assert s.epoch_windows == len(expected)


def test_walk_epochs_catches_a_repeat_and_a_miss():
    """The checker itself fails on sampling with replacement and on an epoch that skips a window."""
    expected = {(0, k) for k in range(6)}
    good = [[[(0, 3), (0, 1)]], [[(0, 0), (0, 5)]], [[(0, 2), (0, 4)]]]
    assert walk_epochs(good, expected) == 1
    with pytest.raises(AssertionError):
        walk_epochs([[[(0, 3), (0, 1)]], [[(0, 3), (0, 5)]], [[(0, 2), (0, 4)]]], expected)
    with pytest.raises(AssertionError):
        walk_epochs(
            [[[(0, 3), (0, 1)]], [[(0, 0), (0, 5)]], [[(0, 2), (0, 0)]], [[(0, 1), (0, 4)]]], expected
        )


def test_random_sampling_repeats_within_an_epoch(data):
    """The default mode is unchanged: with replacement, so the same walk finds repeats."""
    root, ref = data
    expected = expected_epoch(ref["train"], doc_aligned=True)  # random mode draws every doc start
    batches = global_batches(root, ref["train"], 20, batch_size=8, world=1, doc_aligned=True)
    with pytest.raises(AssertionError):
        walk_epochs(batches, expected)


def test_global_batch_independent_of_world_size_and_rank_order(data):
    root, _ = data

    def starts(b, rank, world, step):
        with TokenSampler(
            root, batch_size=b, seq_len=T, rank=rank, world_size=world, prefetch=0, sampling="permutation"
        ) as s:
            shard_ids, offs = s.window_starts(step)
            return list(zip(shard_ids.tolist(), offs.tolist(), strict=True))

    for step in (0, 3, 16, 40):  # 16: crosses the first epoch end at 8 windows per step
        two = starts(4, 0, 2, step) + starts(4, 1, 2, step)
        assert sorted(two) == sorted(starts(8, 0, 1, step))
        assert not set(starts(4, 0, 2, step)) & set(starts(4, 1, 2, step))


def test_resume_from_any_step_equals_uninterrupted_run(data):
    root, _ = data
    kw = dict(batch_size=6, seq_len=T, seed=11, sampling="permutation")
    n = 60  # 360 windows: crosses two epoch ends (133 windows each)
    with TokenSampler(root, prefetch=2, **kw) as s:
        full = [(st, x.clone(), y.clone()) for (st, x, y), _ in zip(s.batches(0), range(n), strict=False)]
    assert [st for st, _, _ in full] == list(range(n))
    for start in (1, 22, 23, 45):
        with TokenSampler(root, prefetch=3, **kw) as s:  # a fresh sampler, as after a restart
            rest = [(st, x, y) for (st, x, y), _ in zip(s.batches(start), range(n - start), strict=False)]
            direct = s.get_batch(start + 5)
        for (sa, xa, ya), (sb, xb, yb) in zip(full[start:], rest, strict=True):
            assert sa == sb and torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(direct[0], full[start + 5][1]) and torch.equal(direct[1], full[start + 5][2])


def test_same_seed_same_order_in_a_new_process(data):
    root, _ = data
    kw = dict(batch_size=8, seq_len=T, seed=3, rank=1, world_size=3, sampling="permutation")
    steps = [0, 7, 123456]
    here = batch_digest(root, steps, **kw)
    assert here == batch_digest(root, steps, **kw)
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
        "from tests.pipeline.test_sampler import batch_digest\n"
        f"print(' '.join(batch_digest(Path(sys.argv[2]), {steps!r}, **{kw!r})))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(root)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert res.stdout.split() == here


def test_seeds_and_epochs_give_different_orders(data):
    root, _ = data

    def epoch_order(seed: int, epoch: int) -> list[tuple[int, int]]:
        # batch 1 of one window per step: the stream order itself
        with TokenSampler(root, batch_size=1, seq_len=T, seed=seed, sampling="permutation", prefetch=0) as s:
            n = s.epoch_windows
            return [tuple(int(v[0]) for v in s.window_starts(epoch * n + k)) for k in range(n)]

    e0, e1, other = epoch_order(0, 0), epoch_order(0, 1), epoch_order(1, 0)
    assert sorted(e0) == sorted(e1) == sorted(other)  # the same window set ...
    assert e0 != e1 and e0 != other  # ... in a fresh order
    assert e0 != sorted(e0)  # not corpus order
    # few fixed points between two independent orders (expected 1 for a uniform permutation)
    assert sum(a == b for a, b in zip(e0, e1, strict=True)) < 8
    assert sum(a == b for a, b in zip(e0, other, strict=True)) < 8


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 97, 1021, 2, 4, 64, 1024, 4096, 65536, 65537])
def test_keyed_permutation_is_a_bijection(n):
    a, b = split_domain(n)
    assert a * b >= n and a * b - n < a  # the cycle walk rarely has to step
    for seed, epoch in ((0, 0), (7, 3), (2**70 + 1, 12)):
        order = EpochOrder(n, seed)
        perm = order.permute(np.arange(n), epoch)
        assert perm.dtype == np.int64
        np.testing.assert_array_equal(np.sort(perm), np.arange(n))
        np.testing.assert_array_equal(order.index_of(perm, epoch), np.arange(n))
        # the stream: position p is index p % n of epoch p // n
        pos = np.arange(2 * n) + epoch * n
        np.testing.assert_array_equal(order.items(pos[:n]), perm)
        np.testing.assert_array_equal(np.sort(order.items(pos[n:])), np.arange(n))
    with pytest.raises(ValueError, match=rf"values must lie in \[0, {n}\)"):
        EpochOrder(n, 0).permute(np.array([n]), 0)  # not silently a duplicate of some item


@pytest.mark.parametrize(("batch_size", "world", "block_rows"), [(3, 1, 10), (4, 3, 4096), (1, 2, 7)])
def test_batch_rows_are_the_stream_dealt_to_ranks_in_any_access_order(
    batch_size, world, block_rows, monkeypatch
):
    """Rows made a block of steps at a time equal the stream positions computed one by one."""
    monkeypatch.setattr(BatchOrder, "BLOCK_ROWS", block_rows)
    n, seed = 37, 4
    order = EpochOrder(n, seed)
    steps = [*np.random.default_rng(1).permutation(60).tolist(), 10**6, 0, 59, 10**6]  # jumps, repeats
    for rank in range(world):
        rows = BatchOrder(n, seed, batch_size=batch_size, rank=rank, world_size=world)
        for step in steps:
            positions = [step * world * batch_size + rank + world * j for j in range(batch_size)]
            want = [int(order.items(np.array([p]))[0]) for p in positions]
            assert rows.items(step).tolist() == want


@pytest.mark.parametrize("n", [8_800_000, 70_000_001, 9_000_000_000])
def test_permutation_at_openwebtext_scale_without_materialising(n):
    """~9B tokens: 8.8M windows at T=1024, 70M at T=128, and one per token. Checked by the inverse."""
    order = EpochOrder(n, 1234)
    rng = np.random.default_rng(0)
    i = np.concatenate([rng.integers(0, n, size=20_000), [0, n - 1]])
    for epoch in (0, 1, 10**6):
        items = order.permute(i, epoch)
        assert items.min() >= 0 and items.max() < n
        np.testing.assert_array_equal(order.index_of(items, epoch), i)
    assert len(np.unique(order.permute(i, 0))) == len(np.unique(i))
    assert not np.array_equal(order.permute(i, 0), order.permute(i, 1))


def test_permutation_spreads_items_uniformly():
    """Where item 0 lands, over 400 epochs of n=1000 (chi-square, 9 dof, fixed seed): no bias to its slot."""
    order = EpochOrder(1000, 3)
    slots = np.array([int(order.index_of(np.array([0]), e)[0]) for e in range(400)])
    bins = np.bincount(slots * 10 // 1000, minlength=10)
    chi2 = float(((bins - 40) ** 2 / 40).sum())
    assert chi2 < 30.0, bins  # p ~ 4e-4 at 30
    # neighbours do not stay neighbours
    perm = order.permute(np.arange(1000), 0)
    assert np.mean(np.abs(np.diff(perm)) == 1) < 0.02


@pytest.mark.parametrize("bad", ["perm", "Random", "", None, 1])
def test_bad_sampling_value_refused_in_one_line(data, bad):
    root, _ = data
    with pytest.raises(SamplerError) as e:
        TokenSampler(root, batch_size=2, seq_len=T, sampling=bad)
    msg = str(e.value)
    assert "\n" not in msg and repr(bad) in msg and "'random'" in msg and "'permutation'" in msg


def test_prefetch_page_policy_and_start_up_checks_apply(data):
    root, _ = data
    kw = dict(batch_size=6, seq_len=T, seed=3, sampling="permutation")
    for doc_aligned in (False, True):
        with (
            TokenSampler(root, madvise=True, prefetch=2, doc_aligned=doc_aligned, **kw) as on,
            TokenSampler(root, madvise=False, prefetch=0, doc_aligned=doc_aligned, **kw) as off,
        ):
            it = on.batches(0)
            for step in range(30):
                got, x, y = next(it)
                x0, y0 = off.get_batch(step)
                assert got == step and torch.equal(x, x0) and torch.equal(y, y0)
            it.close()
    with pytest.raises(SamplerError, match="vocab_size=50260, but the caller expects vocab_size=50304"):
        TokenSampler(root, expected_vocab_size=50304, **kw)


def test_out_of_vocab_ids_stop_permutation_batches(data, tmp_path):
    root = Path(shutil.copytree(data[0], tmp_path / "shards"))
    mm = np.memmap(root / "train-00001.bin", dtype="<u2", mode="r+", offset=HEADER_SIZE)
    mm[100::97] = VOCAB_SIZE + 3  # an epoch visits every window of this shard, so it meets one
    mm.flush()
    del mm
    name = re.escape(str(root / "train-00001.bin"))
    for prefetch in (0, 2):
        with (
            TokenSampler(root, batch_size=8, seq_len=T, prefetch=prefetch, sampling="permutation") as s,
            pytest.raises(OutOfVocabError) as e,
        ):
            for _ in zip(s.batches(0), range(40), strict=False):  # one epoch is 17 steps
                pass
        assert re.match(rf"{name}: token id {VOCAB_SIZE + 3} at token offset ", str(e.value))
