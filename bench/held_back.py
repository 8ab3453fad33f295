"""The time-to-loss recipes again, on a corpus the grid never saw, through the trainer's CLI (issue 19).

``bench/time_to_loss.py`` tuned and compared the recipes on imdb, in process. This runs the same recipes
(the same preset's model, batch, steps, schedule and tuned learning rates) as ``python -m trainer``
subprocesses on other shards (default: Reuters-21578, ``--val-fraction 0.05``), reads each run's
``metrics.jsonl`` and reports the same table: final val loss (mean ± half-range over seeds) and
tokens / wall to the AdamW baseline's final val loss. The ranking the grid found should hold here.

    python bench/held_back.py                          # reuters from ../shared, 2 seeds (~15 min, 2 cores)
    python bench/held_back.py --data SHARDS --steps 8 --seeds 0 --no-ablations   # a quick check

Writes ``OUT/results.json`` and ``OUT/table.md`` (with the trainer commands that made them). A run whose
folder holds a finished run of the same command is read back rather than rerun (more ``--seeds`` later).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from time_to_loss import PRESETS, REPO, Run, _dump, _muon, summarize, table, write_results

from trainer.observe import read_metrics


def trainer_args(
    p: dict[str, Any], recipe: dict[str, Any], data: Path, out: Path, seed: int, steps: int
) -> list[str]:
    """The ``python -m trainer`` flags of one run: the preset's model and batch, then the recipe."""
    settings: dict[str, Any] = {
        "data": data, "out": out, "overwrite": True, "device": "cpu", "seed": seed, **p["model"],
        "seq_len": p["seq_len"], "micro_batch": p["micro_batch"],
        "total_batch_tokens": p["total_batch_tokens"], "max_steps": steps, "warmup_steps": p["warmup"],
        "min_lr_ratio": 0.1, "grad_clip": 1.0, "eval_every": p["eval_every"],
        "eval_windows": p["eval_windows"], "sample_every": 0, "ckpt_every": 0, "keep_last": 1,
        "progress": False, "tensorboard": False, "log_every": 10**9, **recipe,
    }  # fmt: skip
    flags = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            flags.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            flags += [flag, str(v)]
    return flags


def run_cli(args, p: dict[str, Any], name: str, recipe: dict[str, Any], seed: int) -> tuple[Run, str]:
    out = args.out / "runs" / f"{name.replace(' ', '')}-s{seed}"
    flags = trainer_args(p, recipe, args.data, out, seed, args.steps)
    threads = str(max(1, (os.cpu_count() or 1) // args.jobs))  # parallel runs split the cores
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    command = "python -m trainer " + " ".join(flags)
    done = out / "held_back_command.txt"  # a finished run of the very same command is read, not rerun
    if not (done.exists() and done.read_text(encoding="utf-8") == command):
        proc = subprocess.run([sys.executable, "-m", "trainer", *flags], cwd=REPO, env=env,
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            sys.exit(f"error: {name} seed {seed}: python -m trainer exited {proc.returncode}: "
                     f"{proc.stderr.strip().splitlines()[-1:]}")  # fmt: skip
        done.write_text(command, encoding="utf-8")
    steps, val = read_metrics(out / "metrics.jsonl")
    if args.steps not in val:  # stopped early (SIGTERM saves a checkpoint and exits 0): not a result
        done.unlink(missing_ok=True)
        sys.exit(f"error: {name} seed {seed}: {out} stopped before step {args.steps}; run this again")
    run, wall, cum = Run(name, recipe, seed), 0.0, {0: 0.0}
    for s in sorted(steps):
        wall += steps[s]["step_time_ms"] / 1000
        cum[s] = wall
    for s, v in sorted(val.items()):
        run.points.append(
            {"step": s, "tokens": s * p["total_batch_tokens"], "wall_s": cum.get(s, wall), "val_loss": v}
        )
    print(f"{name} seed {seed}: final val {run.final:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return run, command


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=["proxy", "proxy256"], default="proxy", help="time_to_loss preset")
    ap.add_argument("--data", type=Path, default=REPO / "bench-out" / "reuters", help="shard folder")
    corpus = REPO.parent / "shared" / "corpora" / "reuters21578.jsonl.zst"
    ap.add_argument("--corpus", type=Path, default=corpus,
                    help="built into --data (--val-fraction 0.05) when --data is absent")  # fmt: skip
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "held_back", help="results folder")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the preset's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of AdamW and Muon")
    ap.add_argument("--no-ablations", action="store_true", help="skip Muon + WSD and Muon + permutation")
    ap.add_argument("--jobs", type=int, default=2, help="trainer processes at a time")
    args = ap.parse_args(argv)
    p = PRESETS[args.preset]
    args.steps = args.steps or p["steps"]
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.data / "manifest.json").exists():
        if not args.corpus.exists():
            sys.exit(f"error: --data {args.data} does not exist and --corpus {args.corpus} is missing")
        cmd = [sys.executable, "-m", "pipeline", "build", str(args.corpus), "--out", str(args.data),
               "--val-fraction", "0.05", "--seed", "0"]  # fmt: skip
        print("building shards:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
    muon = _muon(p["muon_adamw_lr"], p["muon_lr"], True)
    jobs = [("adamw", {"optimizer": "adamw", "lr": p["adamw_lr"]}, s) for s in args.seeds]
    jobs += [("muon", muon, s) for s in args.seeds]
    if not args.no_ablations:
        jobs += [("muon + wsd", {**muon, "schedule": "wsd"}, args.seeds[0]),
                 ("muon + permutation", {**muon, "sampling": "permutation"}, args.seeds[0])]  # fmt: skip
    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        done = list(ex.map(lambda j: run_cli(args, p, *j), jobs))
    runs = [r for r, _ in done]
    summary = summarize(runs, "adamw")
    text = table(summary, None)
    payload = {"preset": args.preset, "data": str(args.data), "steps": args.steps,
               "command": " ".join(sys.argv), "summary": summary, "runs": [_dump(r) for r in runs],
               "trainer_commands": [c for _, c in done]}  # fmt: skip
    write_results(args.out, payload, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
