"""Time to loss: which recipe reaches a val loss in fewer tokens and less wall time (issue 19).

Every recipe trains the same GPT-2 on the same shards, batch and seeds through the real trainer
(``trainer.train.train(TrainConfig(...))``, in this process), and is evaluated on the same fixed
``ValWindows`` every ``--eval-every`` steps. Each eval point records step, tokens, train wall seconds
(the sum of the logged step times: evaluation and checkpointing left out) and val loss.

* ``--tune``: AdamW + cosine over ``--adamw-lrs`` and Muon over ``--muon-lrs`` (seed 0 each), then the
  best of each on every ``--seeds``; without it, the given (default: tuned) lrs on every seed.
* The target is the tuned AdamW's final val loss (mean over seeds). Tokens-to-target is where a recipe's
  seed-mean val curve first reaches it, interpolated linearly between eval points (so AdamW's own is its
  full budget); per-seed crossings are in the JSON.
  The wall ratio is the same for train seconds; ``wall/token`` compares the seconds per token.
* Ablations, each alone against the best Muon: ``--schedule wsd`` instead of cosine,
  ``--sampling permutation`` instead of random (skipped, with a note, where the sampler has no
  ``sampling`` keyword), and in ``--tune`` the Q/K/V split of ``c_attn``.
* The optimizer's share of the step: forward+backward and ``optimizer.step()`` timed separately on the
  same model and batch, interleaved, medians; the guard's cost is Muon's step with the refusal flag
  against torch's own ``torch.optim.Muon.step`` on the same gradients.

Writes ``OUT/results.json``, ``OUT/table.md`` and ``OUT/val_loss.png`` (matplotlib, the ``bench`` extra;
skipped with a note where it is absent). Shards: ``--data`` (built from ``--corpus`` if absent).

    python bench/time_to_loss.py                       # CPU proxy, tuned defaults, <= 15 min on 2 cores
    python bench/time_to_loss.py --tune                # the tuning grid (hours on 2 cores)
    python bench/time_to_loss.py --preset gpt2 --device cuda --data imdb-shards --steps 300
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pipeline.fsutil import atomic_write_text  # noqa: E402
from pipeline.sampler import TokenSampler  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.observe import read_metrics  # noqa: E402
from trainer.train import train  # noqa: E402

# model and batch of each preset; lrs are the grid's winners (BENCHMARKS.md), steps the default budget;
# muon_adamw_lr is the lr of Muon's AdamW groups (wte, wpe, LayerNorms, biases) as the Muon grid ran it
PRESETS: dict[str, dict[str, Any]] = {
    # the proxy scaled to fit 15 min on 2 shared cores: 4 layers but width 128 and T=64 (the
    # 50,304-row LM head is most of the cost), 120 steps of 1,024 tokens, two runs at a time
    "proxy": dict(
        model=dict(model="tiny", n_layer=4, n_head=4, n_embd=128, block_size=64),
        seq_len=64, micro_batch=16, total_batch_tokens=1024, steps=120, warmup=12, eval_every=12,
        eval_windows=128, adamw_lr=1.5e-3, muon_lr=6e-3, muon_adamw_lr=3e-3, adamw_lrs=(1.5e-3, 3e-3, 6e-3),
        muon_lrs=(3e-3, 6e-3, 1.2e-2),
    ),
    # the proxy as it was measured: 4 layers, width 256, T=128, B=16, 400 steps (hours on 2 cores)
    "proxy256": dict(
        model=dict(model="tiny", n_layer=4, n_head=4, n_embd=256, block_size=128),
        seq_len=128, micro_batch=16, total_batch_tokens=2048, steps=400, warmup=20, eval_every=25,
        eval_windows=512, adamw_lr=1.5e-3, muon_lr=3e-3, muon_adamw_lr=1.5e-3,
        adamw_lrs=(7.5e-4, 1.5e-3, 3e-3),
        muon_lrs=(1.5e-3, 3e-3, 6e-3),
    ),
    # GPT-2 124M on a GPU: about 2 min per recipe on an H100 (2^16 tokens per step); AdamW at 3x the
    # preset's 6e-4 (a short run), Muon at the CPU grid's best (see trainer/presets.py for why it transfers)
    "gpt2": dict(
        model=dict(model="gpt2"),
        seq_len=1024, micro_batch=16, total_batch_tokens=65_536, steps=300, warmup=30, eval_every=25,
        eval_windows=128, adamw_lr=1.8e-3, muon_lr=6e-3, muon_adamw_lr=1.8e-3,
        adamw_lrs=(6e-4, 1.8e-3, 3.6e-3),
        muon_lrs=(3e-3, 6e-3, 1.2e-2),
    ),
}  # fmt: skip


@dataclass
class Run:
    name: str
    recipe: dict[str, Any]
    seed: int
    points: list[dict[str, float]] = field(default_factory=list)  # step, tokens, wall_s, val_loss
    tokens_per_s: float | None = None

    @property
    def final(self) -> float:
        return self.points[-1]["val_loss"]


def has_sampling_kw() -> bool:
    return "sampling" in inspect.signature(TokenSampler).parameters


def ensure_shards(data: Path, corpus: Path) -> None:
    if (data / "manifest.json").exists():
        return
    if not corpus.exists():
        sys.exit(f"--data {data} does not exist and --corpus {corpus} is missing; pass one of them")
    cmd = [sys.executable, "-m", "pipeline", "build", str(corpus), "--out", str(data),
           "--val-fraction", "0.01", "--seed", "0"]  # fmt: skip
    print("building shards:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def run_recipe(args, p: dict[str, Any], name: str, recipe: dict[str, Any], seed: int) -> Run:
    out = args.out / "runs" / f"{name}-s{seed}"
    if args.device == "cpu" and args.jobs > 1:  # parallel runs split the cores instead of fighting over them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    cfg = TrainConfig(
        data=args.data, out=out, overwrite=True, device=args.device, seed=seed,
        seq_len=p["seq_len"], micro_batch=p["micro_batch"], total_batch_tokens=p["total_batch_tokens"],
        max_steps=args.steps, warmup_steps=p["warmup"], min_lr_ratio=0.1, grad_clip=1.0,
        eval_every=p["eval_every"], eval_windows=p["eval_windows"], sample_every=0, ckpt_every=0,
        keep_last=1, progress=False, tensorboard=False, log_every=10**9, **p["model"], **recipe,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = train(cfg)
    steps, _ = read_metrics(out / "metrics.jsonl")
    wall, run = 0.0, Run(name, recipe, seed, tokens_per_s=result.tokens_per_s)
    cum = {0: 0.0}
    for s in sorted(steps):
        wall += steps[s]["step_time_ms"] / 1000
        cum[s] = wall
    for s, v in sorted(result.val_losses.items()):
        run.points.append(
            {"step": s, "tokens": s * cfg.total_batch_tokens, "wall_s": cum.get(s, wall), "val_loss": v}
        )
    print(
        f"{name} seed {seed}: final val {run.final:.4f}, {run.points[-1]['wall_s']:.0f} s train "
        f"({time.perf_counter() - t0:.0f} s with evals)",
        flush=True,
    )
    return run


def crossing(run: Run, target: float, key: str) -> float | None:
    """``key`` (tokens or wall_s) at which the val curve first reaches ``target``, linearly interpolated."""
    pts = run.points
    if pts and pts[0]["val_loss"] <= target:
        return pts[0][key]
    for a, b in itertools.pairwise(pts):
        if b["val_loss"] <= target + 1e-12:  # the baseline's own mean curve ends exactly on it
            f = (a["val_loss"] - target) / (a["val_loss"] - b["val_loss"])
            return a[key] + f * (b[key] - a[key])
    return None


def time_optimizers(args, p: dict[str, Any], reps: int) -> dict[str, Any]:
    """Median fwd+bwd and optimizer-step seconds for AdamW and Muon (guarded, and torch's own Muon)."""
    from model.gpt import GPT
    from trainer.optim import make_optimizers

    cfg0 = TrainConfig(data=args.data, seq_len=p["seq_len"], micro_batch=p["micro_batch"],
                       total_batch_tokens=p["total_batch_tokens"], **p["model"])  # fmt: skip
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    torch.manual_seed(0)
    model = GPT(cfg0.model_config()).to(device)
    with TokenSampler(args.data, batch_size=p["micro_batch"], seq_len=p["seq_len"], seed=0, prefetch=0) as s:
        x, y = (t.to(device) for t in s.get_batch(0))
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    opts = {
        "adamw": make_optimizers(model, TrainConfig(optimizer="adamw"), device.type),
        "muon": make_optimizers(model, TrainConfig(optimizer="muon"), device.type),
    }
    found_inf = torch.zeros((), device=device)
    for o in opts.values():
        o.guard(found_inf)
    unguarded = torch.optim.Muon(
        [q for g in opts["muon"].muon.param_groups for q in g["params"]],
        lr=3e-3, weight_decay=0.1, momentum=0.95, adjust_lr_fn="match_rms_adamw",
    )  # fmt: skip
    steppers = {
        "adamw": opts["adamw"].step,
        "muon": opts["muon"].step,
        "muon_guarded_only": opts["muon"].muon.step,
        "muon_torch_only": unguarded.step,
    }
    times: dict[str, list[float]] = {k: [] for k in ["fwd_bwd", *steppers]}
    for r in range(reps + 1):  # interleaved, so that a load change on a shared machine hits all alike
        model.zero_grad(set_to_none=False)
        sync()
        t = time.perf_counter()
        with amp:
            loss = model(x, y)[1]
        loss.backward()
        sync()
        if r:
            times["fwd_bwd"].append(time.perf_counter() - t)
        for k, fn in steppers.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if r:
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {f"{k}_s": v for k, v in med.items()}
    for k in ("adamw", "muon"):
        out[f"{k}_share"] = med[k] / (
            med["fwd_bwd"] * (p["total_batch_tokens"] // (p["seq_len"] * p["micro_batch"])) + med[k]
        )
    out["guard_cost"] = med["muon_guarded_only"] / med["muon_torch_only"] - 1
    return out


def summarize(runs: list[Run], adamw_name: str) -> dict[str, Any]:
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.name, []).append(r)
    base = by[adamw_name]
    target = statistics.mean(r.final for r in base)
    base_tok = statistics.mean(r.points[-1]["tokens"] for r in base)
    base_wall = statistics.mean(r.points[-1]["wall_s"] for r in base)
    base_wpt = base_wall / base_tok
    rows = {}
    for name, rs in by.items():
        finals = [r.final for r in rs]
        mean = Run(name, rs[0].recipe, -1)  # the seed-mean curve (same eval steps in every seed)
        for i, q in enumerate(rs[0].points):
            mean.points.append({k: statistics.mean(r.points[i][k] for r in rs) for k in q})
        tok, wall = crossing(mean, target, "tokens"), crossing(mean, target, "wall_s")
        wpt = statistics.mean(r.points[-1]["wall_s"] / r.points[-1]["tokens"] for r in rs)
        rows[name] = {
            "recipe": rs[0].recipe,
            "seeds": [r.seed for r in rs],
            "final_mean": statistics.mean(finals),
            "final_spread": (max(finals) - min(finals)) / 2 if len(finals) > 1 else 0.0,
            "tokens_to_target": tok,
            "tokens_to_target_per_seed": [crossing(r, target, "tokens") for r in rs],
            "tokens_ratio": None if tok is None else tok / base_tok,
            "wall_ratio": None if wall is None else wall / base_wall,
            "wall_per_token_ratio": wpt / base_wpt,
        }
    return {"target": target, "baseline": adamw_name, "recipes": rows}


def table(summary: dict[str, Any], timing: dict[str, Any] | None) -> str:
    lines = [
        f"target = {summary['baseline']}'s final val loss {summary['target']:.4f} (mean of its seeds)",
        "",
        "| recipe | seeds | final val loss (mean ± half-range) | tokens to target (× AdamW) | "
        "wall to target (× AdamW) | wall/token (× AdamW) |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(x):
        return "not reached" if x is None else f"{x:.2f}×"

    for name, r in summary["recipes"].items():
        lines.append(
            f"| {name} | {len(r['seeds'])} | {r['final_mean']:.4f} ± {r['final_spread']:.4f} | "
            f"{fmt(r['tokens_ratio'])} | {fmt(r['wall_ratio'])} | {r['wall_per_token_ratio']:.2f}× |"
        )
    if timing:
        lines += [
            "",
            f"optimizer share of the step: AdamW {100 * timing['adamw_share']:.1f}%, Muon (+ AdamW for the "
            f"rest) {100 * timing['muon_share']:.1f}%; the refusal guard costs "
            f"{100 * timing['guard_cost']:+.1f}% of torch's own Muon step "
            f"(medians: fwd+bwd {1000 * timing['fwd_bwd_s']:.1f} ms, "
            f"AdamW {1000 * timing['adamw_s']:.1f} ms, "
            f"Muon {1000 * timing['muon_s']:.1f} ms)",
        ]
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path, target: float) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no plot"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors: dict[str, Any] = {}
    for r in runs:
        c = colors.setdefault(r.name, f"C{len(colors)}")
        ax.plot([q["tokens"] for q in r.points], [q["val_loss"] for q in r.points], color=c,
                label=r.name if r.seed == min(x.seed for x in runs if x.name == r.name) else None,
                alpha=0.8)  # fmt: skip
    ax.axhline(target, color="gray", ls="--", lw=0.8, label="target")
    ax.set_xlabel("tokens")
    ax.set_ylabel("val loss")
    lo = min(q["val_loss"] for r in runs for q in r.points)
    ax.set_ylim(lo - 0.1, lo + 2.0)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--preset", choices=list(PRESETS), default="proxy", help="model and batch (default: proxy)"
    )
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--data", type=Path, default=REPO / "bench-out" / "imdb", help="shard folder")
    corpus = REPO.parent / "shared" / "corpora" / "imdb-reviews.jsonl.zst"
    ap.add_argument("--corpus", type=Path, default=corpus,
                    help="built into --data (--val-fraction 0.01) when --data is absent")  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "time_to_loss", help="results folder")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the preset's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the compared recipes")
    ap.add_argument("--tune", action="store_true", help="run the lr grids first (seed 0) and use their best")
    ap.add_argument("--adamw-lrs", type=float, nargs="+", default=None, help="AdamW grid (--tune)")
    ap.add_argument("--muon-lrs", type=float, nargs="+", default=None, help="Muon grid (--tune)")
    ap.add_argument("--adamw-lr", type=float, default=None, help="AdamW lr without --tune")
    ap.add_argument("--muon-lr", type=float, default=None, help="Muon lr without --tune")
    ap.add_argument("--muon-adamw-lr", type=float, default=None,
                    help="lr of Muon's AdamW groups (default: the preset's, as in the grid)")  # fmt: skip
    ap.add_argument("--muon-split-qkv", action=argparse.BooleanOptionalAction, default=True,
                    help="Muon recipes orthogonalise Q, K, V separately (--tune measures both)")  # fmt: skip
    ap.add_argument("--no-ablations", action="store_true", help="skip the WSD and permutation ablations")
    ap.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="runs in parallel processes (wall ratios get noisier; timing is serial)",
    )
    ap.add_argument("--timing-reps", type=int, default=10, help="interleaved reps of the optimizer timing")
    ap.add_argument("--timing-only", action="store_true",
                    help="only redo the optimizer timing of OUT/results.json (idle machine)")  # fmt: skip
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    args.steps = args.steps or p["steps"]
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_shards(args.data, args.corpus)
    if args.timing_only:
        return retime(args, p)
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    runs: list[Run] = []
    notes: list[str] = []
    grid: dict[str, Any] = {}
    adamw_lr = args.adamw_lr or p["adamw_lr"]
    muon_lr = args.muon_lr or p["muon_lr"]
    split = args.muon_split_qkv
    # the lr of Muon's AdamW groups: fixed at the preset's while the grids tune AdamW's own lr and Muon's
    muon_adamw_lr = args.muon_adamw_lr or p["muon_adamw_lr"]
    first = args.seeds[0]
    pool = _Pool(args, p)
    if args.tune:  # both grids at once; Muon's AdamW groups keep muon_adamw_lr
        jobs = [
            (f"adamw lr {lr:g}", {"optimizer": "adamw", "lr": lr}, first)
            for lr in args.adamw_lrs or p["adamw_lrs"]
        ]
        jobs += [
            (f"muon lr {lr:g}", _muon(muon_adamw_lr, lr, split), first)
            for lr in args.muon_lrs or p["muon_lrs"]
        ]
        runs += pool.map(jobs)
        adamw_lr = min((r for r in runs if r.recipe["optimizer"] == "adamw"), key=lambda r: r.final).recipe[
            "lr"
        ]
        m = min((r for r in runs if r.recipe["optimizer"] == "muon"), key=lambda r: r.final)
        muon_lr = m.recipe["muon_lr"]
        grid = {"adamw_lr": adamw_lr, "muon_lr": muon_lr, "runs": [_dump(r) for r in runs]}
        print(f"grid: AdamW lr {adamw_lr:g}, Muon lr {muon_lr:g}", flush=True)
    recipes = {
        "adamw": {"optimizer": "adamw", "lr": adamw_lr},
        "muon": _muon(muon_adamw_lr, muon_lr, split),
    }
    jobs, compared_keys = [], []
    for name, recipe in recipes.items():
        for seed in args.seeds:
            done = [r for r in runs if r.recipe == recipe and r.seed == seed]
            compared_keys.append((name, recipe, seed))
            if not done:
                jobs.append((name, recipe, seed))
    if not args.no_ablations:
        jobs.append(("muon + wsd", {**recipes["muon"], "schedule": "wsd"}, first))
        if args.tune:  # the Q/K/V split, against the winner
            jobs.append(
                (f"muon split-qkv {not split}", {**recipes["muon"], "muon_split_qkv": not split}, first)
            )
        if has_sampling_kw():
            jobs.append(("muon + permutation", {**recipes["muon"], "sampling": "permutation"}, first))
        else:
            notes.append("permutation vs random: skipped, this TokenSampler has no `sampling` keyword yet")
    runs += pool.map(jobs)
    compared = []
    for name, recipe, seed in compared_keys:
        r = next(r for r in runs if r.recipe == recipe and r.seed == seed)
        r.name = name
        compared.append(r)
    compared += [r for r in runs if r.name.startswith("muon ") and r.name not in {x.name for x in compared}
                 and not r.name.startswith("muon lr")]  # fmt: skip
    timing = time_optimizers(args, p, args.timing_reps)
    summary = summarize(compared, "adamw")
    text = table(summary, timing) + "".join(f"\nnote: {n}" for n in notes)
    note = plot(compared, args.out / "val_loss.png", summary["target"])
    if note:
        text += f"\nnote: {note}"
    payload = {
        "preset": args.preset, "device": args.device, "steps": args.steps, "config": p,
        "command": " ".join(sys.argv), "torch": torch.__version__, "grid": grid, "summary": summary,
        "timing": timing, "notes": notes, "runs": [_dump(r) for r in compared],
    }  # fmt: skip
    write_results(args.out, payload, text)
    return 0


def write_results(out: Path, payload: dict[str, Any], text: str) -> None:
    """OUT/results.json and OUT/table.md, each written atomically, then the table on stdout."""
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1, default=str))
    atomic_write_text(out / "table.md", text)
    print(text)


def retime(args, p: dict[str, Any]) -> int:
    """Rerun :func:`time_optimizers` alone and rewrite OUT/results.json and OUT/table.md with it."""
    path = args.out / "results.json"
    if not path.exists():
        sys.exit(f"error: --timing-only needs {path} from an earlier run; run without --timing-only first")
    payload = json.loads(path.read_text(encoding="utf-8"))
    payload["timing"] = timing = time_optimizers(args, p, args.timing_reps)
    payload["timing_command"] = " ".join(sys.argv)
    text = table(payload["summary"], timing) + "".join(f"\nnote: {n}" for n in payload["notes"])
    write_results(args.out, payload, text)
    return 0


class _Pool:
    """Runs recipes in ``--jobs`` processes (each a whole trainer run), in submission order."""

    def __init__(self, args, p):
        self.args, self.p = args, p

    def map(self, jobs: list[tuple[str, dict[str, Any], int]]) -> list[Run]:
        if self.args.jobs <= 1 or len(jobs) <= 1:
            return [run_recipe(self.args, self.p, *j) for j in jobs]
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(self.args.jobs, mp_context=mp.get_context("spawn")) as ex:
            futures = [ex.submit(run_recipe, self.args, self.p, *j) for j in jobs]
            return [f.result() for f in futures]


def _muon(adamw_lr: float, muon_lr: float, split: bool) -> dict[str, Any]:
    return {"optimizer": "muon", "lr": adamw_lr, "muon_lr": muon_lr, "muon_split_qkv": split}


def _dump(r: Run) -> dict[str, Any]:
    return {"name": r.name, "recipe": r.recipe, "seed": r.seed, "tokens_per_s": r.tokens_per_s,
            "points": r.points, "final": r.final if r.points else math.nan}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
