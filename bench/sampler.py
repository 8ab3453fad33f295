"""Benchmark: the owtgpt sampler against nanoGPT's get_batch loop, a numpy fancy-index gather and memcpy.

CPU mode (default, part of ``make bench``): in one process, on warm page cache, at B=32, T=1024,
over the same shards, interleaved rounds (machines are noisy; the median round is reported):

* ``sampler``            ``TokenSampler.get_batch(step)``: draw, one gather per shard touched, widen
                         to int64 ``x`` and ``y`` (synchronous: the full per-batch cost);
* ``sampler, no id check`` the same with the per-batch out-of-vocabulary check patched out: the
                         ratio is the cost of the check;
* ``sampler+prefetch``   the consumer's view of ``TokenSampler.batches()`` with its prefetch thread
                         (and its ``MADV_WILLNEED`` hints); ``, no madvise``: ``madvise=False``;
* ``sampler doc-aligned``the same with ``doc_aligned=True``;
* ``sampler permutation`` ``sampling="permutation"`` (each window once per epoch; ``, doc-aligned``
                         too): the ratio to ``sampler`` is the cost of sampling without replacement;
* ``loop (nanoGPT)``     baseline: re-open ``np.memmap`` each batch, ``torch.stack`` of per-row
                         ``torch.from_numpy(data[i:i+T].astype(np.int64))`` for x and for y;
* ``gather: ...``        gather only (uint16 (B, T+1), no RNG, no widening), four ways, same starts:
                         ``strided view`` (the sampler's: rows of ``sliding_window_view(mm, T+1)``),
                         ``fancy index`` ``mm[starts[:, None] + arange(T+1)]``, ``np.take`` of the
                         same index array, and a Python ``row-slice loop`` ``buf[i] = mm[s:s+T+1]``;
* ``memcpy``             ``np.copyto`` of the same number of bytes from one contiguous block (ceiling).

Tokens are counted as B*T model tokens per batch for every row, so the figures compare directly.
The headline is ``sampler / loop`` (target >= 8x). After the table: the draw alone
(``window_starts``: starts of one batch, no token read), random vs permutation side by side, on these
shards and on the window counts of OpenWebText (9B tokens: 8.8M windows at T=1024, 70M at T=128), and
the memory each draw allocates (tracemalloc peak) against a materialised permutation of the epoch.

Data: shards built with ``pipeline.tools.build.build_shards`` from
``../shared/corpora/imdb-reviews.jsonl.zst`` when both exist (``--source``), else ``--tokens`` random
uint16 tokens in ``--shards`` shards written with :class:`pipeline.format.ShardWriter`; everything
lives in a temp dir that is removed afterwards.

Busy-consumer mode (``--busy-consumer``, CPU): the consumer's view of ``TokenSampler.batches()`` when
the consumer is a training loop rather than an idle loop. Each step the consumer times ``_, x, y =
next(it)`` (the trainer's line), then holds the GIL the way an eager step's launches do (``--ops``
small torch ops in a Python loop, each dropping the GIL for an instant) and then waits with the GIL
released, as ``loss.item()`` waits for the GPU (``--device-wait-ms``). Prefetch 0 and 2 alternate
round by round in one process; the figure is the wait per ``next()`` and the ratio off / on. With a
full queue the prefetched wait should be tens of microseconds, a fraction of one synchronous batch.

CUDA mode (``--device cuda``): trains GPT-2 124M (``model.GPT``, bf16 autocast, fused AdamW) on the
sampler's batches and reports the host time each step waits for its batch, with the prefetch thread
on and off, as a share of step time (target < 1%). Each step ends with ``loss.item()`` (as a trainer
logging every step does), so any time spent producing a batch is a real GPU stall.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pipeline.format import HEADER_SIZE, Manifest, ShardDataset, ShardEntry, ShardWriter, shard_name
from pipeline.permutation import BatchOrder
from pipeline.sampler import _TRAIN_STREAM, TokenSampler
from pipeline.tokenizer import EOT_ID, SOT_ID, SPECIAL_TOKENS, VOCAB_SIZE

REPO = Path(__file__).resolve().parent.parent

DEFAULT_SOURCE = REPO / ".." / "shared" / "corpora" / "imdb-reviews.jsonl.zst"
console = Console()


# ----------------------------------------------------------------------------- data


def random_shards(out: Path, tokens: int, shards: int, seed: int = 0) -> None:
    """``tokens`` random ids in ``shards`` shards of documents of 50..2000 tokens with SOT/EOT markers."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    entries = []
    per = tokens // shards
    for i in range(shards):
        lens = rng.integers(50, 2000, size=per // 50 + 2)
        lens = lens[: np.searchsorted(np.cumsum(lens), per) + 1]
        lens[-1] -= int(lens.sum()) - per  # exact shard size
        lens = lens[lens > 0]
        toks = rng.integers(0, EOT_ID, size=per, dtype=np.uint16)
        offs = np.concatenate(([0], np.cumsum(lens)))
        toks[offs[:-1]] = SOT_ID
        toks[offs[1:] - 1] = EOT_ID
        w = ShardWriter(
            out / shard_name("train", i), vocab_size=VOCAB_SIZE, tokenizer_fingerprint="bench-random"
        )
        w.add_documents(toks, lens)
        h = w.finish()
        entries.append(ShardEntry(shard_name("train", i), "train", per, len(lens), h.payload_sha256))
    Manifest(
        tokenizer_fingerprint="bench-random",
        vocab_size=VOCAB_SIZE,
        special_tokens=dict(SPECIAL_TOKENS),
        source="random",
        settings={"tokens": tokens, "shards": shards, "seed": seed},
        shards=entries,
    ).save(out)


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    out = tmp / "shards"
    source = Path(args.source) if args.source else None
    if source is not None and source.exists():
        try:
            from pipeline.tools.build import ShardConfig, build_shards
        except ImportError:
            console.print("[yellow]pipeline.tools.build is not available; using random tokens[/]")
        else:
            cfg = ShardConfig(
                source=str(source), out=out, shard_tokens=args.shard_tokens, val_fraction=0.0005
            )
            build_shards(cfg, progress=True)
            return out, f"{source.name} via build_shards"
    random_shards(out, args.tokens, args.shards)
    return out, f"random uint16, {args.tokens:,} tokens"


def warm(ds: ShardDataset) -> None:
    """Fault every train page in, so all methods read from the page cache."""
    for s in ds.shards("train"):
        for lo in range(0, len(s), 1 << 24):
            int(s.tokens[lo : lo + (1 << 24)].max())


# ----------------------------------------------------------------------------- CPU methods


def make_methods(
    root: Path, b: int, t: int, n_batches: int
) -> tuple[dict[str, Callable[[int], object]], list[TokenSampler]]:
    ds = ShardDataset(root)
    shards = ds.shards("train")
    lengths = np.array([len(s) for s in shards])
    paths = [s.path for s in shards]
    rng = np.random.default_rng(0)
    # pre-drawn starts for the gather baselines: (shard, sorted starts) per batch, shard by size
    picks = rng.choice(len(shards), size=n_batches, p=lengths / lengths.sum())
    starts = [np.sort(rng.integers(0, lengths[j] - t, size=b)) for j in picks]
    arange = np.arange(t + 1)
    buf = np.empty((b, t + 1), dtype=np.uint16)
    block = np.ascontiguousarray(shards[0].tokens[: b * (t + 1)]).reshape(b, t + 1)
    sync = TokenSampler(ds, batch_size=b, seq_len=t, prefetch=0)
    docs = TokenSampler(ds, batch_size=b, seq_len=t, prefetch=0, doc_aligned=True)
    perm = TokenSampler(ds, batch_size=b, seq_len=t, prefetch=0, sampling="permutation")
    perm_docs = TokenSampler(
        ds, batch_size=b, seq_len=t, prefetch=0, sampling="permutation", doc_aligned=True
    )
    pre = TokenSampler(ds, batch_size=b, seq_len=t, prefetch=2)
    pre_iter = pre.batches(0)
    # the same sampler without the per-batch id check (instance attribute shadows the method)
    unchecked = TokenSampler(ds, batch_size=b, seq_len=t, prefetch=0)
    unchecked.index.check_ids = lambda *a: None
    # the prefetching sampler without the page policy (no MADV_RANDOM, no MADV_WILLNEED hints)
    pre_plain = TokenSampler(ds, batch_size=b, seq_len=t, prefetch=2, madvise=False)
    pre_plain_iter = pre_plain.batches(0)
    gen = torch.Generator().manual_seed(0)

    def loop(i: int) -> None:  # nanoGPT's get_batch, on one shard chosen by size
        j = int(picks[i % n_batches])
        data = np.memmap(paths[j], dtype=np.uint16, mode="r", offset=HEADER_SIZE, shape=(int(lengths[j]),))
        ix = torch.randint(len(data) - t, (b,), generator=gen)
        x = torch.stack([torch.from_numpy(data[k : k + t].astype(np.int64)) for k in ix])
        y = torch.stack([torch.from_numpy(data[k + 1 : k + 1 + t].astype(np.int64)) for k in ix])
        del x, y

    def fancy(i: int) -> None:
        j = int(picks[i % n_batches])
        buf[:] = shards[j].tokens[starts[i % n_batches][:, None] + arange]

    def take(i: int) -> None:
        j = int(picks[i % n_batches])
        np.take(shards[j].tokens, starts[i % n_batches][:, None] + arange, out=buf, mode="clip")

    views = [np.lib.stride_tricks.sliding_window_view(s.tokens, t + 1) for s in shards]

    def strided(i: int) -> None:  # the sampler's gather: rows of a zero-copy sliding-window view
        j = int(picks[i % n_batches])
        buf[:] = views[j][starts[i % n_batches]]

    def row_loop(i: int) -> None:
        j = int(picks[i % n_batches])
        tok = shards[j].tokens
        for r, k in enumerate(starts[i % n_batches].tolist()):
            buf[r] = tok[k : k + t + 1]

    return {
        "sampler": sync.get_batch,
        "sampler, no id check": unchecked.get_batch,
        "sampler+prefetch": lambda i: next(pre_iter),
        "sampler+prefetch, no madvise": lambda i: next(pre_plain_iter),
        "sampler doc-aligned": lambda i: docs.get_batch(i),
        "sampler permutation": perm.get_batch,
        "sampler permutation doc-aligned": perm_docs.get_batch,
        "loop (nanoGPT)": loop,
        "gather: strided view": strided,
        "gather: fancy index": fancy,
        "gather: np.take": take,
        "gather: row-slice loop": row_loop,
        "memcpy": lambda i: np.copyto(buf, block),
    }, [sync, docs, pre, unchecked, pre_plain, perm, perm_docs]


def time_id_check(root: Path, b: int, t: int, reps: int = 20_000) -> float:
    """Median microseconds of ``WindowIndex.check_ids`` on a real batch (the direct cost of the check)."""
    with TokenSampler(root, batch_size=b, seq_len=t, prefetch=0) as s:
        shard_ids, starts = s.window_starts(0)
        buf = np.empty((b, t + 1), dtype=np.uint16)
        s.index.gather(shard_ids, starts, buf)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps // 5):
                s.index.check_ids(buf, shard_ids, starts)
            runs.append((time.perf_counter() - t0) / (reps // 5) * 1e6)
    return statistics.median(runs)


OWT_TOKENS = 9_000_000_000  # OpenWebText in GPT-2 tokens, for the epoch sizes below


def _median_us(fn: Callable[[int], object], reps: int, rounds: int = 5) -> float:
    runs = []
    step = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(step)
            step += 1
        runs.append((time.perf_counter() - t0) / reps * 1e6)
    return statistics.median(runs)


def _peak_bytes(fn: Callable[[int], object]) -> int:
    """Peak bytes that numpy and Python allocate during one call (tracemalloc sees numpy's buffers), for
    a step far from the last one: the permutation then makes a new block of rows (its worst case)."""
    fn(0)
    tracemalloc.start()
    try:
        fn(1_000_003)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_draw(root: Path, b: int, t: int, world: int = 8, reps: int = 2000) -> dict:
    """The draw alone, random vs permutation, interleaved: on the shards, and at OpenWebText's epoch sizes."""
    rows: dict[str, dict[str, float]] = {}
    with (
        TokenSampler(root, batch_size=b, seq_len=t, prefetch=0) as rnd,
        TokenSampler(root, batch_size=b, seq_len=t, prefetch=0, sampling="permutation") as perm,
        TokenSampler(root, batch_size=b, seq_len=t, prefetch=0, doc_aligned=True) as rnd_doc,
        TokenSampler(
            root, batch_size=b, seq_len=t, prefetch=0, doc_aligned=True, sampling="permutation"
        ) as pd,
    ):
        pairs = {
            f"shards, T={t}": (rnd.window_starts, perm.window_starts, perm.epoch_windows),
            f"shards doc-aligned, T={t}": (rnd_doc.window_starts, pd.window_starts, pd.epoch_windows),
        }
        for tt in (1024, 128):  # the order alone at OpenWebText's sizes: B rows of rank 0 of `world`
            n = (OWT_TOKENS - 1) // tt
            order = BatchOrder(n, 0, batch_size=b, rank=0, world_size=world)

            def rand(step: int, n: int = n) -> np.ndarray:  # what the random sampler's _draw does
                rng = np.random.default_rng([_TRAIN_STREAM, 0, step])
                return np.sort(rng.integers(0, n, size=world * b, dtype=np.int64)[::world])

            def permuted(step: int, order: BatchOrder = order) -> np.ndarray:  # as the sampler's _draw
                return np.sort(order.items(step))

            pairs[f"OpenWebText order only, T={tt}, world={world}"] = (rand, permuted, n)
        for name, (f_rand, f_perm, n) in pairs.items():
            us_r, us_p = [], []
            for _ in range(3):  # interleaved, so both see the same machine load
                us_r.append(_median_us(f_rand, reps // 3, rounds=3))
                us_p.append(_median_us(f_perm, reps // 3, rounds=3))
            r, p = statistics.median(us_r), statistics.median(us_p)
            rows[name] = {
                "windows_per_epoch": int(n),
                "random_us": r,
                "permutation_us": p,
                "ratio": p / r,
                "random_peak_bytes": _peak_bytes(f_rand),
                "permutation_peak_bytes": _peak_bytes(f_perm),
                "materialised_bytes": 8 * int(n),
            }
    table = Table(title=f"draw of one batch of B={b} starts (no token read), random vs permutation; median")
    for col in ("case", "windows/epoch", "random us", "perm us", "perm/random", "peak KiB r/p", "array MiB"):
        table.add_column(col, justify="right" if col != "case" else "left")
    for name, r in rows.items():
        table.add_row(
            name,
            f"{r['windows_per_epoch']:,}",
            f"{r['random_us']:.1f}",
            f"{r['permutation_us']:.1f}",
            f"{r['ratio']:.2f}x",
            f"{r['random_peak_bytes'] / 1024:.1f} / {r['permutation_peak_bytes'] / 1024:.1f}",
            f"{r['materialised_bytes'] / 2**20:,.0f}",
        )
    console.print(table)
    console.print(
        "permutation state: 6 round keys per epoch (48 bytes) and the rows of one block of steps "
        f"({BatchOrder.BLOCK_ROWS} int64, 32 KiB); 'array MiB' is what an int64 permutation of the epoch "
        "would hold instead"
    )
    return rows


def bench_cpu(args: argparse.Namespace, root: Path, what: str) -> dict:
    b, t = args.batch_size, args.seq_len
    methods, samplers = make_methods(root, b, t, args.batches)
    rates: dict[str, list[float]] = {k: [] for k in methods}
    for f in methods.values():  # warm-up: first-touch of buffers, thread start
        for i in range(5):
            f(i)
    step = 10
    for _ in range(args.rounds):
        for name, f in methods.items():
            t0 = time.perf_counter()
            for _ in range(args.batches):
                f(step)
                step += 1
            rates[name].append(args.batches / (time.perf_counter() - t0))
    for s in samplers:
        s.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    table = Table(title=f"sampler, B={b} T={t}, warm cache, {what}; median of {args.rounds} rounds")
    for col in ("method", "batches/s", "Mtok/s", "vs loop"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for name, r in med.items():
        table.add_row(name, f"{r:,.0f}", f"{r * b * t / 1e6:,.0f}", f"{r / med['loop (nanoGPT)']:.1f}x")
    console.print(table)
    ratio = med["sampler"] / med["loop (nanoGPT)"]
    verdict = "[green]meets[/]" if ratio >= 8 else "[red]misses[/]"
    console.print(f"sampler / loop = {ratio:.1f}x ({verdict} the >= 8x target)")
    check = med["sampler, no id check"] / med["sampler"]
    check_us = time_id_check(root, b, t)
    console.print(
        f"id check cost: (no check) / (checked) batches/s = {check:.3f}x; the check alone "
        f"(one max over a ({b}, {t + 1}) uint16 buffer) takes {check_us:.1f} us = "
        f"{100 * check_us * 1e-6 * med['sampler']:.1f}% of a checked get_batch"
    )
    policy = med["sampler+prefetch, no madvise"] / med["sampler+prefetch"]
    console.print(f"page policy on warm cache: (no madvise) / (madvise) batches/s = {policy:.3f}x")
    perm = med["sampler permutation"] / med["sampler"]
    perm_doc = med["sampler permutation doc-aligned"] / med["sampler doc-aligned"]
    console.print(
        f"sampling without replacement: permutation / random get_batch batches/s = {perm:.3f}x "
        f"(doc-aligned {perm_doc:.3f}x)"
    )
    draw = bench_draw(root, b, t)
    return {
        "mode": "cpu",
        "batch_size": b,
        "seq_len": t,
        "data": what,
        "batches_per_s": med,
        "mtok_per_s": {k: r * b * t / 1e6 for k, r in med.items()},
        "sampler_over_loop": ratio,
        "id_check_cost": check,
        "id_check_us": check_us,
        "madvise_warm_cost": policy,
        "permutation_over_random": perm,
        "permutation_over_random_doc_aligned": perm_doc,
        "draw": draw,
    }


# ----------------------------------------------------------------------------- busy consumer (CPU)


def _busy_round(root: Path, args: argparse.Namespace, prefetch: int, acc: torch.Tensor) -> tuple[list, list]:
    """One round of ``args.steps`` consumer steps; returns (wait per next() s, whole step s)."""
    waits, steps = [], []
    with TokenSampler(root, batch_size=args.batch_size, seq_len=args.seq_len, prefetch=prefetch) as s:
        it = s.batches(0)
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            _, _x, _y = next(it)  # as the trainer does: rebinding frees the previous batch here
            t1 = time.perf_counter()
            for _ in range(args.ops):  # "launches": GIL held between ops, released inside each
                acc.add_(1.0)
            time.sleep(args.device_wait_ms / 1e3)  # "loss.item()": the GIL released while the GPU runs
            if i >= args.warmup:
                waits.append(t1 - t0)
                steps.append(time.perf_counter() - t0)
        it.close()
    return waits, steps


def bench_busy(args: argparse.Namespace, root: Path, what: str) -> dict:
    acc = torch.zeros(64)
    waits: dict[int, list[float]] = {0: [], 2: []}
    steps: dict[int, list[float]] = {0: [], 2: []}
    for _ in range(args.rounds):  # alternate, so both settings share the machine's load
        for prefetch in (0, 2):
            w, st = _busy_round(root, args, prefetch, acc)
            waits[prefetch] += w
            steps[prefetch] += st
    res = {
        f"prefetch={k}": {
            "wait_ms_mean": 1e3 * statistics.mean(waits[k]),
            "wait_ms_median": 1e3 * statistics.median(waits[k]),
            "wait_ms_p90": 1e3 * statistics.quantiles(waits[k], n=10)[-1],
            "step_ms_mean": 1e3 * statistics.mean(steps[k]),
        }
        for k in (0, 2)
    }
    off, on = res["prefetch=0"], res["prefetch=2"]
    table = Table(
        title=f"consumer wait per next(), busy consumer ({args.ops} small torch ops + "
        f"{args.device_wait_ms:g} ms GIL-free wait per step), B={args.batch_size} "
        f"T={args.seq_len}, {what}, {args.rounds} x {args.steps} steps each"
    )
    for col in ("prefetch", "wait ms mean", "median", "p90", "step ms"):
        table.add_column(col, justify="right")
    for k, r in res.items():
        table.add_row(
            k,
            f"{r['wait_ms_mean']:.3f}",
            f"{r['wait_ms_median']:.3f}",
            f"{r['wait_ms_p90']:.3f}",
            f"{r['step_ms_mean']:.2f}",
        )
    console.print(table)
    ratio = off["wait_ms_mean"] / on["wait_ms_mean"]
    console.print(
        f"wait without / with prefetch = {ratio:.1f}x (mean), "
        f"{off['wait_ms_median'] / on['wait_ms_median']:.1f}x (median)"
    )
    return {
        "mode": "busy-consumer",
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "data": what,
        "ops": args.ops,
        "device_wait_ms": args.device_wait_ms,
        "results": res,
        "wait_ratio": ratio,
    }


# ----------------------------------------------------------------------------- CUDA mode


def bench_cuda(args: argparse.Namespace, root: Path, what: str) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    from model.config import GPTConfig
    from model.gpt import GPT

    torch.backends.cuda.matmul.allow_tf32 = True
    dev = torch.device("cuda")
    model = GPT(GPTConfig.from_preset("gpt2", block_size=args.seq_len)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_fn = torch.compile(model) if args.compile else model
    results = {}
    for prefetch in (0, 2):
        with TokenSampler(
            root, batch_size=args.batch_size, seq_len=args.seq_len, device=dev, prefetch=prefetch
        ) as s:
            it = s.batches(0)
            waits, steps = [], []
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                _, x, y = next(it)
                t1 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    _, loss = step_fn(x, y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                loss.item()  # per-step sync, as when logging every step
                t2 = time.perf_counter()
                if i >= args.warmup:
                    waits.append(t1 - t0)
                    steps.append(t2 - t0)
        wait_ms, step_ms = 1e3 * statistics.mean(waits), 1e3 * statistics.mean(steps)
        results[f"prefetch={prefetch}"] = {
            "wait_ms": wait_ms,
            "step_ms": step_ms,
            "wait_pct": 100 * wait_ms / step_ms,
        }
    table = Table(
        title=f"data wait per step, GPT-2 124M, B={args.batch_size} T={args.seq_len}, "
        f"{torch.cuda.get_device_name()}, {what}"
    )
    for col in ("prefetch", "wait ms/step", "step ms", "wait % of step"):
        table.add_column(col, justify="right")
    for k, r in results.items():
        table.add_row(k, f"{r['wait_ms']:.3f}", f"{r['step_ms']:.1f}", f"{r['wait_pct']:.2f}%")
    console.print(table)
    return {
        "mode": "cuda",
        "device": torch.cuda.get_device_name(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "data": what,
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu: throughput against the baselines; cuda: data wait per GPT-2 124M step",
    )
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch (B)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per row (T)")
    p.add_argument(
        "--source",
        default=str(DEFAULT_SOURCE),
        help="corpus to build shards from with build_shards; '' or a missing path: random tokens",
    )
    p.add_argument(
        "--shard-tokens",
        type=int,
        default=8_000_000,
        help="shard size for --source builds (small, so batches span several shards)",
    )
    p.add_argument("--tokens", type=int, default=50_000_000, help="random-data size in tokens")
    p.add_argument("--shards", type=int, default=4, help="random-data shard count")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (CPU)")
    p.add_argument("--batches", type=int, default=100, help="batches per method per round (CPU)")
    p.add_argument("--steps", type=int, default=50, help="timed training steps per setting (CUDA)")
    p.add_argument("--warmup", type=int, default=10, help="untimed training steps per setting (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    p.add_argument(
        "--busy-consumer",
        action="store_true",
        help="CPU: time next() with a consumer that holds the GIL like an eager training step, "
        "prefetch 0 vs 2 (uses --steps, --warmup, --rounds, --ops, --device-wait-ms)",
    )
    p.add_argument(
        "--ops",
        type=int,
        default=2000,
        help="busy consumer: small torch ops per step, standing in for kernel launches",
    )
    p.add_argument(
        "--device-wait-ms",
        type=float,
        default=20.0,
        help="busy consumer: GIL-free wait per step, standing in for the GPU sync",
    )
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="owtgpt-bench-sampler-") as tmp:
        root, what = prepare(args, Path(tmp))
        warm(ShardDataset(root))
        if args.busy_consumer:
            result = bench_busy(args, root, what)
        else:
            result = bench_cuda(args, root, what) if args.device == "cuda" else bench_cpu(args, root, what)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
