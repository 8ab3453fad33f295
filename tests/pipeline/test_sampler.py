"""TokenSampler / ValWindows on small generated shards.

The shards hold *position-encoded* tokens: token ``i`` of the split-wide concatenation is ``i``
(all shards together stay below the vocabulary), except at document boundaries where the build's
``<|startoftext|>`` / ``<|endoftext|>`` markers are written. A window's non-marker values therefore
say exactly which shard and offset it came from, and every check below compares against the token
arrays the test generated itself, not against the sampler's own bookkeeping.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.format import ShardDataset, ShardWriter, shard_name
from pipeline.sampler import SamplerError, TokenSampler, ValWindows, _widen_cpu, _widen_on
from pipeline.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE
from tests.shards import entry_of, save_manifest

REPO = Path(__file__).resolve().parents[2]
FP = "test-tokenizer:0123456789abcdef"
T = 32


def write_dataset(root: Path, splits: dict[str, list[list[int]]], *, vocab_size: int = VOCAB_SIZE) -> dict:
    """Write shards whose documents have the given lengths; returns {split: [(base, tokens, doc_starts)]}."""
    root.mkdir(parents=True, exist_ok=True)
    entries, ref, base = [], {}, 0
    for split, shards in splits.items():
        ref[split] = []
        for i, doc_lens in enumerate(shards):
            n = int(sum(doc_lens))
            tokens = (base + np.arange(n)).astype(np.uint16)
            offs = np.concatenate(([0], np.cumsum(doc_lens))).astype(np.int64)
            tokens[offs[:-1]] = SOT_ID
            tokens[offs[1:] - 1] = EOT_ID
            name = shard_name(split, i)
            w = ShardWriter(root / name, vocab_size=vocab_size, tokenizer_fingerprint=FP)
            w.add_documents(tokens, np.array(doc_lens))
            w.finish()
            entries.append(entry_of(root / name, split))
            ref[split].append((base, tokens, offs[:-1]))
            base += n
    assert base < EOT_ID, "position encoding must stay below the special ids"
    save_manifest(root, entries, fingerprint=FP, vocab_size=vocab_size)
    return ref


def doc_lengths(total: int, rng: np.random.Generator, lo: int = 3, hi: int = 120) -> list[int]:
    lens = []
    while sum(lens) < total:
        lens.append(int(rng.integers(lo, hi)))
    return lens


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    rng = np.random.default_rng(1234)
    root = tmp_path_factory.mktemp("sampler") / "shards"
    splits = {
        # sizes differ 8x so proportionality is visible; the last shard is shorter than T + 1
        "train": [doc_lengths(n, rng) for n in (4000, 12000, 1500)] + [[6, 5]],
        "val": [doc_lengths(n, rng) for n in (2500, 1800)],
    }
    return root, write_dataset(root, splits)


def locate_row(w: np.ndarray, ref: list) -> tuple[int, int]:
    """(shard, start) of a window from its position-encoded values; asserts the window matches."""
    plain = np.flatnonzero((w != SOT_ID) & (w != EOT_ID))
    assert len(plain), "window holds only markers"
    value0 = int(w[plain[0]]) - int(plain[0])  # = base + start
    for j, (base, tokens, _) in enumerate(ref):
        if base <= value0 < base + len(tokens):
            start = value0 - base
            assert 0 <= start <= len(tokens) - len(w), f"window at {start} crosses the end of shard {j}"
            np.testing.assert_array_equal(w, tokens[start : start + len(w)])
            return j, start
    raise AssertionError(f"window {w[:8]}... matches no shard")


def windows(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """(B, T+1) windows back from x and y, after checking y is x shifted by one."""
    assert torch.equal(x[:, 1:], y[:, :-1])
    return torch.cat([x, y[:, -1:]], dim=1).numpy()


def test_shapes_dtype_and_shift(data):
    root, _ = data
    with TokenSampler(root, batch_size=5, seq_len=T, prefetch=0) as s:
        x, y = s.get_batch(0)
        assert x.shape == y.shape == (5, T)
        assert x.dtype == y.dtype == torch.int64
        assert x.is_contiguous() and y.is_contiguous()
        assert x.device.type == "cpu"
        windows(x, y)
        assert s.num_tokens == sum(len(t) for _, t, _ in data[1]["train"])


@pytest.mark.parametrize("doc_aligned", [False, True])
def test_windows_are_contiguous_slices_of_one_shard(data, doc_aligned):
    root, ref = data
    with TokenSampler(root, batch_size=16, seq_len=T, doc_aligned=doc_aligned, prefetch=0) as s:
        for step in range(40):
            x, y = s.get_batch(step)
            for w in windows(x, y):
                j, start = locate_row(w, ref["train"])
                assert j != 3, "the shard shorter than T+1 must never be sampled"
                if doc_aligned:
                    assert w[0] == SOT_ID
                    assert start in set(ref["train"][j][2].tolist())


def test_doc_aligned_covers_every_eligible_document(data):
    root, ref = data
    eligible = {
        (j, int(o))
        for j, (_, tok, starts) in enumerate(ref["train"])
        for o in starts
        if o + T + 1 <= len(tok)
    }
    seen = set()
    with TokenSampler(root, batch_size=64, seq_len=T, doc_aligned=True, prefetch=0) as s:
        for step in range(150):  # ~9600 draws over ~330 documents: each expected ~29 times
            shard_ids, starts = s.window_starts(step)
            seen |= set(zip(shard_ids.tolist(), starts.tolist(), strict=True))
    assert seen == eligible


def test_offsets_cover_shards_in_proportion_to_size(data):
    """Chi-square over shards (fixed seed, wide tolerance) and over offset bins inside the largest."""
    root, ref = data
    counts = np.zeros(len(ref["train"]))
    bins = np.zeros(10)
    big = 1
    n_big = len(ref["train"][big][1]) - T
    with TokenSampler(root, batch_size=64, seq_len=T, seed=7, prefetch=0) as s:
        for step in range(100):
            x, y = s.get_batch(step)
            for w in windows(x, y):
                j, start = locate_row(w, ref["train"])
                counts[j] += 1
                if j == big:
                    bins[start * 10 // n_big] += 1
    valid = np.array([max(len(t) - T, 0) for _, t, _ in ref["train"]], dtype=float)
    assert counts[3] == 0
    expected = counts.sum() * valid[:3] / valid.sum()
    chi2 = float(((counts[:3] - expected) ** 2 / expected).sum())
    assert chi2 < 20.0, (counts, expected, chi2)  # 2 dof: p ~ 5e-5 at 20
    exp_bin = bins.sum() / 10
    chi2_bins = float(((bins - exp_bin) ** 2 / exp_bin).sum())
    assert chi2_bins < 40.0, (bins, chi2_bins)  # 9 dof: p ~ 7e-6 at 40


def batch_digest(root: Path, steps: list[int], **kw) -> list[str]:
    out = []
    with TokenSampler(root, prefetch=0, **kw) as s:
        for step in steps:
            x, y = s.get_batch(step)
            out.append(hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest())
    return out


def test_same_inputs_same_batch_in_a_new_process(data):
    root, _ = data
    kw = dict(batch_size=8, seq_len=T, seed=3, rank=1, world_size=3)
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


def test_resume_equals_uninterrupted_run(data):
    root, _ = data
    kw = dict(batch_size=4, seq_len=T, seed=11)
    with TokenSampler(root, prefetch=2, **kw) as s:
        full = [(st, x.clone(), y.clone()) for (st, x, y), _ in zip(s.batches(0), range(20), strict=False)]
    with TokenSampler(root, prefetch=0, **kw) as s:
        first = [(st, x, y) for (st, x, y), _ in zip(s.batches(0), range(10), strict=False)]
    with TokenSampler(root, prefetch=3, **kw) as s:  # a fresh sampler, as after a restart
        rest = [(st, x, y) for (st, x, y), _ in zip(s.batches(10), range(10), strict=False)]
        direct = [s.get_batch(st) for st in range(20)]
    assert [st for st, _, _ in full] == list(range(20))
    for (sa, xa, ya), (sb, xb, yb), (xd, yd) in zip(full, first + rest, direct, strict=True):
        assert sa == sb
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, xd) and torch.equal(ya, yd)


def test_ranks_disjoint_and_global_batch_independent_of_split(data):
    root, _ref = data

    def rows(b, rank, world, step):
        with TokenSampler(root, batch_size=b, seq_len=T, rank=rank, world_size=world, prefetch=0) as s:
            return s.window_starts(step), s.get_batch(step)

    for step in range(5):
        (i0, s0), (x0, _) = rows(4, 0, 2, step)
        (i1, s1), (x1, _) = rows(4, 1, 2, step)
        assert not torch.equal(x0, x1)
        assert not torch.equal(x0, rows(4, 0, 1, step)[1][0])  # world_size matters
        assert not torch.equal(x0, rows(4, 0, 3, step)[1][0])
        (ia, sa), _ = rows(8, 0, 1, step)
        union = sorted(zip(np.concatenate([i0, i1]).tolist(), np.concatenate([s0, s1]).tolist(), strict=True))
        assert union == sorted(zip(ia.tolist(), sa.tolist(), strict=True))
    # a different seed or step gives a different batch
    with (
        TokenSampler(root, batch_size=8, seq_len=T, seed=1, prefetch=0) as s1,
        TokenSampler(root, batch_size=8, seq_len=T, seed=2, prefetch=0) as s2,
    ):
        assert not torch.equal(s1.get_batch(0)[0], s2.get_batch(0)[0])
        assert not torch.equal(s1.get_batch(0)[0], s1.get_batch(1)[0])


def test_prefetch_thread_errors_reach_the_consumer_and_close_stops_it(data, monkeypatch):
    root, _ = data
    s = TokenSampler(root, batch_size=2, seq_len=T, prefetch=2)
    real = s.index.gather
    calls = []

    def flaky(shard_ids, starts, out):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk went away")
        return real(shard_ids, starts, out)

    monkeypatch.setattr(s.index, "gather", flaky)
    it = s.batches(0)
    got = [next(it)[0] for _ in range(3)]
    assert got == [0, 1, 2]
    with pytest.raises(OSError, match="disk went away"):
        next(it)
    s.close()
    assert not [t for t in threading.enumerate() if t.name == "owtgpt-sampler-prefetch" and t.is_alive()]

    s = TokenSampler(root, batch_size=2, seq_len=T, prefetch=2)
    it = s.batches(5)
    assert next(it)[0] == 5
    s.close()  # while the thread is blocked on a full queue
    assert not [t for t in threading.enumerate() if t.name == "owtgpt-sampler-prefetch" and t.is_alive()]
    with pytest.raises(RuntimeError, match="closed"):
        next(it)
    with pytest.raises(RuntimeError, match="closed"):
        s.get_batch(0)


def test_val_windows_fixed_and_identical_across_world_sizes(data):
    root, ref = data
    n = 37

    def collect(world):
        out = []
        for rank in range(world):
            vw = ValWindows(root, seq_len=T, num_windows=n, batch_size=5, rank=rank, world_size=world)
            batches = list(vw)
            assert len(batches) == len(vw) and all(x.shape[0] <= 5 for x, _ in batches)
            out += [w for x, y in batches for w in windows(x, y)]
        return out

    base = collect(1)
    assert len(base) == n
    located = [locate_row(w, ref["val"]) for w in base]
    assert len(set(located)) == n
    # evenly spaced over a split that has room: no two windows overlap
    starts = sorted((j, s) for j, s in located)
    for (ja, sa), (jb, sb) in itertools.pairwise(starts):
        assert ja != jb or sb - sa >= T + 1
    key = lambda ws: sorted(w.tobytes() for w in ws)  # noqa: E731
    for world in (2, 3, 8):
        assert key(collect(world)) == key(base)
    assert key(collect(1)) == key(base)  # identical in every run


def test_val_windows_doc_aligned_and_too_many(data):
    root, ref = data
    vw = ValWindows(root, seq_len=T, num_windows=10, batch_size=4, doc_aligned=True)
    for x, y in vw:
        assert (x[:, 0] == SOT_ID).all()
        for w in windows(x, y):
            locate_row(w, ref["val"])
    total_starts = sum(len(t) - T for _, t, _ in ref["val"])
    with pytest.raises(SamplerError, match=f"num_windows={total_starts + 1}"):
        ValWindows(root, seq_len=T, num_windows=total_starts + 1, batch_size=4)


def test_start_up_checks(data, tmp_path):
    root, _ = data
    with pytest.raises(SamplerError, match=r"vocab_size=50260.*vocab_size=50304") as e:
        TokenSampler(root, batch_size=2, seq_len=T, expected_vocab_size=50304)
    assert str(root) in str(e.value)
    with pytest.raises(SamplerError, match="other-tokenizer") as e:
        TokenSampler(root, batch_size=2, seq_len=T, expected_tokenizer_fingerprint="other-tokenizer")
    assert FP in str(e.value) and str(root) in str(e.value)
    TokenSampler(
        root, batch_size=2, seq_len=T, expected_vocab_size=VOCAB_SIZE, expected_tokenizer_fingerprint=FP
    ).close()
    longest = 12000
    with pytest.raises(SamplerError, match=r"'train' split is too small.*seq_len\+1=20001"):
        TokenSampler(root, batch_size=2, seq_len=20000)
    with pytest.raises(SamplerError, match="'val' split is too small"):
        ValWindows(root, seq_len=longest, num_windows=1, batch_size=1)
    for bad in (dict(batch_size=0), dict(seed=-1), dict(rank=2, world_size=2), dict(prefetch=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TokenSampler(root, **{"batch_size": 2, "seq_len": T, **bad})
    with TokenSampler(root, batch_size=2, seq_len=T) as s, pytest.raises(ValueError, match="step"):
        s.get_batch(-1)


def test_empty_split_and_doc_aligned_without_room(tmp_path):
    rng = np.random.default_rng(0)
    no_val = tmp_path / "noval"
    write_dataset(no_val, {"train": [doc_lengths(500, rng)]})
    with pytest.raises(SamplerError, match=r"'val' split is empty.*--val-fraction"):
        ValWindows(no_val, seq_len=8, num_windows=2, batch_size=2)
    one_doc = tmp_path / "onedoc"  # two documents: only their two starts are doc-aligned windows
    write_dataset(one_doc, {"train": [[30, 200]]})
    with TokenSampler(one_doc, batch_size=2, seq_len=100, prefetch=0) as s:
        assert s.index.total == 230 - 101 + 1
    with pytest.raises(SamplerError, match="no document starts early enough"):
        TokenSampler(one_doc, batch_size=2, seq_len=230, doc_aligned=True)
    with pytest.raises(SamplerError, match=r"no shard holds.*train-00000.bin=230"):
        TokenSampler(one_doc, batch_size=2, seq_len=230)
    with TokenSampler(one_doc, batch_size=8, seq_len=100, doc_aligned=True, prefetch=0) as s:
        _, starts = s.window_starts(0)
        assert set(starts.tolist()) <= {0, 30}
    ds = ShardDataset(one_doc)  # a ShardDataset is accepted as well as a path
    with TokenSampler(ds, batch_size=1, seq_len=4, prefetch=0) as s:
        assert s.dataset is ds


@pytest.mark.parametrize("widen", [_widen_cpu, lambda b: _widen_on(torch.from_numpy(b))])
def test_widening_keeps_ids_above_int16(widen):
    """Ids >= 32768 (half the GPT-2 vocabulary) must not come back sign-flipped or wrapped."""
    buf = np.arange(65536, dtype=np.uint16)[::-1].reshape(64, 1024).copy()
    x, y = widen(buf)
    ref = buf.astype(np.int64)
    assert x.dtype == y.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
    np.testing.assert_array_equal(x.numpy(), ref[:, :-1])
    np.testing.assert_array_equal(y.numpy(), ref[:, 1:])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, ...]]]:
    """Shards from generated text through the real build; reference encodings from plain tiktoken."""
    import json

    import tiktoken

    from pipeline.tools.build import ShardConfig, build_shards
    from tests.textgen import make_docs

    docs = make_docs(160, seed=3)
    tmp = tmp_path_factory.mktemp("sampler_built")
    src = tmp / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    build_shards(
        ShardConfig(
            source=str(src), out=tmp / "shards", workers=1, shard_tokens=6000, val_fraction=0.1, seed=0
        ),
        progress=False,
    )
    enc = tiktoken.get_encoding("gpt2")
    return tmp / "shards", [(SOT_ID, *enc.encode_ordinary(d), EOT_ID) for d in docs]


@pytest.mark.parametrize("doc_aligned", [False, True])
def test_windows_of_built_shards_are_runs_of_real_documents(built, doc_aligned):
    """Split each window at <|startoftext|>: a suffix of a doc, whole docs, then a prefix of a doc."""
    root, encoded = built
    whole = set(encoded)
    with TokenSampler(root, batch_size=8, seq_len=64, doc_aligned=doc_aligned, prefetch=0) as s:
        assert len(s.index.shards) > 1
        for step in range(10):
            x, y = s.get_batch(step)
            for w in windows(x, y):
                cuts = [0, *np.flatnonzero(w == SOT_ID).tolist(), len(w)]
                if doc_aligned:
                    assert cuts[1] == 0
                parts = [tuple(w[a:b].tolist()) for a, b in itertools.pairwise(cuts) if b > a]
                first, *mid, last = parts if len(parts) > 1 else (parts[0], parts[0])
                if len(parts) > 1:
                    assert any(e[len(e) - len(first) :] == first for e in encoded), "bad leading piece"
                    assert all(m in whole for m in mid)
                    assert any(e[: len(last)] == last for e in encoded), "bad trailing piece"
                else:  # one window inside a single long document
                    assert any(first == e[i : i + len(first)] for e in encoded for i in range(len(e)))


def find_tokens(haystack: bytes, needle: np.ndarray) -> int:
    """Token index of the first occurrence of ``needle`` in uint16 ``haystack`` bytes, or -1."""
    raw, at = needle.astype("<u2").tobytes(), 0
    while (at := haystack.find(raw, at)) >= 0:
        if at % 2 == 0:
            return at // 2
        at += 1
    return -1


@pytest.mark.parametrize("doc_aligned", [False, True])
def test_owt_sample_windows_match_nanogpt_reference(owt_sample, tmp_path_factory, doc_aligned):
    """Real OpenWebText docs: every per-document piece of a window (split at <|startoftext|>) occurs in
    nanoGPT's own prepare.py output for the same docs; doc-aligned pieces start at a document start."""
    from pipeline.tools.build import ShardConfig, build_shards

    out = tmp_path_factory.getbasetemp() / "sampler_owt"
    if not (out / "manifest.json").exists():
        build_shards(
            ShardConfig(
                source=str(owt_sample / "docs.jsonl.zst"),
                out=out,
                val_fraction=0.0,
                shard_tokens=300_000,
                workers=2,
            ),
            progress=False,
        )
    ref = np.fromfile(owt_sample / "nanogpt-val-reference.bin", dtype=np.uint16)
    hay = ref.tobytes()
    with TokenSampler(out, batch_size=16, seq_len=256, doc_aligned=doc_aligned, seed=5, prefetch=2) as s:
        assert len(s.index.shards) > 1
        for (_, x, y), _ in zip(s.batches(0), range(4), strict=False):
            for w in windows(x, y):
                cuts = [*np.flatnonzero(w == SOT_ID).tolist(), len(w)]
                if doc_aligned:
                    assert cuts[0] == 0
                pieces = [(a + 1, b) for a, b in itertools.pairwise(cuts)]
                if cuts[0] > 0:
                    pieces.insert(0, (0, cuts[0]))
                for a, b in pieces:
                    if b - a < 2:
                        continue  # too short to place
                    at = find_tokens(hay, w[a:b])
                    assert at >= 0, f"piece {w[a:b][:10]}... is not in nanoGPT's token stream"
                    if a > 0:  # right after a <|startoftext|>: a document start in nanoGPT's stream
                        piece = w[a:b]
                        at_start = np.array_equal(ref[: len(piece)], piece)
                        assert at_start or find_tokens(hay, np.concatenate(([EOT_ID], piece))) >= 0


def test_never_copies_a_shard_into_memory(tmp_path):
    """Cold data: a 16 MB shard is used through its memmap; numpy allocations stay far below its size.

    tracemalloc sees numpy's heap buffers but not page-cache pages behind a memmap, so a full read
    (``np.array(shard.tokens)``, an index array per token or per document) would show up here.
    """
    import tracemalloc

    n, doc = 8_000_000, 4000
    big = tmp_path / "big"
    big.mkdir()
    w = ShardWriter(big / shard_name("train", 0), vocab_size=VOCAB_SIZE, tokenizer_fingerprint=FP)
    toks = np.zeros(n, dtype=np.uint16)
    toks[::doc] = SOT_ID
    w.add_documents(toks, np.full(n // doc, doc))
    w.finish()
    save_manifest(big, [entry_of(big / shard_name("train", 0), "train")], fingerprint=FP)
    del toks
    tracemalloc.start()
    try:
        for doc_aligned in (False, True):
            with TokenSampler(big, batch_size=8, seq_len=256, doc_aligned=doc_aligned, prefetch=0) as s:
                for step in range(20):
                    x, _ = s.get_batch(step)
                    if doc_aligned:
                        assert (x[:, 0] == SOT_ID).all()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * n // 8, f"peak numpy allocation {peak:,} bytes for a {2 * n:,}-byte shard"


@pytest.mark.parametrize("doc_aligned", [False, True])
def test_page_policy_never_changes_the_batches(data, doc_aligned):
    root, _ = data
    kw = dict(batch_size=6, seq_len=T, seed=3, doc_aligned=doc_aligned)
    with (
        TokenSampler(root, madvise=True, **kw) as on,
        TokenSampler(root, madvise=False, prefetch=0, **kw) as off,
    ):
        it = on.batches(0)  # the prefetch thread issues MADV_WILLNEED for each next batch
        for step in range(6):
            got_step, x, y = next(it)
            x0, y0 = off.get_batch(step)
            assert got_step == step and torch.equal(x, x0) and torch.equal(y, y0)
        it.close()


def test_out_of_vocab_id_names_shard_offset_and_id(data, tmp_path):
    """A payload id >= vocab_size (headers untouched, so opening passes) stops the batch before it is used."""
    import shutil

    from pipeline.errors import UserError
    from pipeline.format import HEADER_SIZE
    from pipeline.sampler import OutOfVocabError

    root = Path(shutil.copytree(data[0], tmp_path / "shards"))
    for name in ("train-00001.bin", "val-00000.bin"):
        mm = np.memmap(root / name, dtype="<u2", mode="r+", offset=HEADER_SIZE)
        pos = np.arange(0, mm.shape[0] - 16, 5)
        mm[pos] = (VOCAB_SIZE + pos % 7).astype(np.uint16)  # id encodes nothing a wrap could fake
        mm.flush()
        del mm

    def check(err: OutOfVocabError, name: str) -> None:
        msg = str(err)
        assert isinstance(err, UserError) and err.exit_code == 1
        m = re.fullmatch(
            r"(\S+): token id (\d+) at token offset ([\d,]+) is >= vocab_size (\d+); .*"
            r"`python -m pipeline verify (\S+)`.*",
            msg,
        )
        assert m is not None, msg
        assert m[1] == str(root / name) and int(m[4]) == VOCAB_SIZE and m[5] == str(root)
        off = int(m[3].replace(",", ""))
        raw = np.fromfile(root / name, dtype="<u2", count=1, offset=HEADER_SIZE + 2 * off)
        assert int(raw[0]) == int(m[2]) >= VOCAB_SIZE  # the named id is at the named offset

    with TokenSampler(root, batch_size=8, seq_len=T, prefetch=0) as s:
        with pytest.raises(OutOfVocabError) as e:
            for step in range(50):  # a batch lands in the 12k-token shard almost at once
                s.get_batch(step)
        check(e.value, "train-00001.bin")
    with TokenSampler(root, batch_size=8, seq_len=T, prefetch=2) as s:
        with pytest.raises(OutOfVocabError) as e:
            for _ in s.batches(0):  # raised in the prefetch thread, re-raised here
                pass
        check(e.value, "train-00001.bin")
    with pytest.raises(OutOfVocabError) as e:
        list(ValWindows(root, seq_len=T, num_windows=40, batch_size=8))
    check(e.value, "val-00000.bin")


def test_willneed_hints_only_while_unhinted_gathers_wait_for_the_disk():
    from pipeline.sampler import _ColdPages

    p = _ColdPages()
    rows, slow, fast = 32, 32 * _ColdPages.COLD_S_PER_ROW * 2, 32 * _ColdPages.COLD_S_PER_ROW / 2
    p.observe(fast, rows, hinted=False)
    assert not p.hint_next()  # warm: no hints at all
    p.observe(slow, rows, hinted=True)
    assert not p.hint_next()  # a hinted batch says nothing about the cache
    p.observe(slow, rows, hinted=False)
    assert [p.hint_next() for _ in range(_ColdPages.PROBE_EVERY + 1)] == [True] * _ColdPages.PROBE_EVERY + [
        False
    ]


def test_prefetch_producer_stays_asleep_during_the_handoff_and_frees_spent_batches(data, monkeypatch):
    """With prefetch=P the producer may start step k+P only after batch k was handed over (waking it
    earlier made next() wait for its GIL time), and it, not the consumer, frees the consumer's spent
    batches (freeing tensors releases the GIL right after next() in `for step, x, y in batches`)."""
    root, _ = data
    prefetch, n = 2, 12
    s = TokenSampler(root, batch_size=2, seq_len=T, prefetch=prefetch)
    started: list[int] = []
    real_produce, real_handoff = s._produce, s._handoff

    def produce(step):
        started.append(step)
        return real_produce(step)

    def handoff(batch):
        assert max(started) <= batch.step + prefetch - 1, (batch.step, started)
        return real_handoff(batch)

    monkeypatch.setattr(s, "_produce", produce)
    monkeypatch.setattr(s, "_handoff", handoff)
    freed_in: dict[int, str] = {}
    it = s.batches(0)
    x = y = None
    for k in range(n):
        step, x, y = next(it)  # rebinding drops the consumer's references to batch k-1
        assert step == k
        weakref.finalize(x, lambda k=k: freed_in.setdefault(k, threading.current_thread().name))
    s.close()
    # when batch m arrived the producer had already taken the credit of batch m-2, trimming its
    # references to m-4 and older, which the consumer had dropped: so those were freed over there
    for k in range(n - 4):
        assert freed_in.get(k) == "owtgpt-sampler-prefetch", (k, freed_in)
    assert max(started) <= n - 1 + prefetch
    del x, y
