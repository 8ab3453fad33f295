"""Benchmark: GPT-2 124M at T=1024 on emulated small cards (``bench/gpu_check.sh --stages smallgpu``).

Each run is its own process (a fresh allocator, a fresh ``torch._dynamo``) that caps its memory with
``torch.cuda.set_per_process_memory_fraction`` to emulate a card (8 GB, 4 GB), then runs the trainer
itself (:func:`trainer.train.train`) with ``--micro-batch auto`` on synthetic shards for a few steps. Side
by side with the uncapped run in the same invocation it reports, per card: the micro batch auto chose,
whether it turned activation checkpointing on, how long probing took, tokens/s and its ratio to the
uncapped run, the measured peak and the memory plan's error at the chosen micro batch.

``--plan`` prints, without a GPU, what the memory plan predicts auto picks on 8/12/16/24 GB cards (the
README's "Training on a small GPU" table, marked estimated). ``--device cpu`` is the gpu-check dry run:
one uncapped tiny run, where auto takes the preset's micro batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

GB = 10**9  # cards are sold in decimal gigabytes
CARDS_GB = (4, 8, 12, 16, 24)
# An assumed MFU for the estimated tokens/s: the H200's compiled run measured 49% at micro batch 32;
# consumer cards at small micro batches reach less. Estimates only: no such card was measured.
ASSUMED_MFU = 0.35


def plan_table(seq_len: int = 1024, total: int = 2**19) -> list[dict]:
    """What the plan predicts auto picks for gpt2 on each card size (compiled, bf16, AdamW)."""
    import torch

    from model.config import GPTConfig
    from model.gpt import GPT
    from trainer.autobatch import MARGIN
    from trainer.memplan import GiB, make_plan

    mc = GPTConfig.from_preset("gpt2")
    with torch.device("meta"):
        fpt = GPT(mc).flops_per_token(seq_len)
    plan = make_plan(mc, seq_len, "bf16", compiled=True)
    per_rank = total // seq_len
    cands = [b for b in range(1, per_rank + 1) if per_rank % b == 0]
    rows = []
    for gb in CARDS_GB:
        usable = gb * GB * 0.97  # what the driver reports as total is a few % below the label
        budget = int(usable * (1 - MARGIN))
        ckpt = False
        b = plan.largest_fitting(cands, budget, False)
        if b is None:
            ckpt, b = True, plan.largest_fitting(cands, budget, True)
        rows.append(
            {
                "card_gb": gb,
                "micro_batch": b,
                "activation_checkpointing": ckpt,
                "grad_accum": per_rank // b if b else None,
                "planned_peak_gib": round(plan.peak(b, ckpt) / GiB, 2) if b else None,
                # tokens/s per 10 dense bf16 TFLOP/s of the card, at ASSUMED_MFU; checkpointing redoes
                # the blocks' forward (about a third more compute)
                "tokens_per_s_per_10_tflops": round(ASSUMED_MFU * 10e12 / fpt / (1.33 if ckpt else 1.0)),
            }
        )
    return rows


def child(cap_gib: float | None, out_json: Path, trainer_args: list[str]) -> int:
    """One capped (or uncapped) trainer run in this process; its figures to ``out_json``."""
    import torch

    from trainer.autobatch import OutOfMemory
    from trainer.config import train_config_from_argv
    from trainer.memplan import GiB, make_plan
    from trainer.train import train

    cfg = train_config_from_argv(trainer_args)
    rec: dict = {"cap_gib": cap_gib}
    if cap_gib is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * GiB / total), 0)
    t0 = time.perf_counter()
    try:
        res = train(cfg)
    except OutOfMemory as e:
        rec["error"] = str(e)
        out_json.write_text(json.dumps(rec, indent=1))
        return 1
    info = json.loads((cfg.out / "config.json").read_text())
    auto = info.get("micro_batch_auto") or {}
    b, ckpt = info["config"]["micro_batch"], bool(info["config"]["activation_checkpointing"])
    plan = make_plan(cfg.model_config(), cfg.seq_len, info["precision"], info["compile"])
    rec.update(
        micro_batch=b,
        activation_checkpointing=ckpt,
        reason=auto.get("reason"),
        probe_seconds=auto.get("probe_seconds"),
        tokens_per_s=res.tokens_per_s,
        peak_gib=res.peak_mem_gib,
        planned_gib=plan.peak(b, ckpt) / GiB,
        seconds=time.perf_counter() - t0,
        final_loss=res.losses.get(res.final_step),
    )
    if res.peak_mem_gib:
        rec["plan_error"] = rec["planned_gib"] / res.peak_mem_gib - 1
    out_json.write_text(json.dumps(rec, indent=1))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plan", action="store_true", help="print the plan's picks for 8-24 GB cards and exit")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--caps", default="8,4", help="emulated card sizes in GiB, comma-separated")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--total-batch-tokens", type=int, default=2**17)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-json", type=Path, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.child_json:
        return child(
            args.child if args.child > 0 else None, args.child_json, rest[1:] if rest[:1] == ["--"] else rest
        )
    if args.plan:
        rows = plan_table()
        for r in rows:
            print(json.dumps(r))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to emulate (use --device cpu for the dry run, or --plan)")
        return 0
    from train_gpu import write_synthetic_shards

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.device == "cpu":
            data = write_synthetic_shards(tmp / "shards", 200_000, 20_000)
            common = ["--preset", "tiny", "--device", "cpu", "--seq-len", "64", "--total-batch-tokens", "512"]
            caps: list[float | None] = [None]
        else:
            data = write_synthetic_shards(tmp / "shards", 20_000_000, 1_000_000)
            common = [
                "--preset",
                "gpt2",
                "--device",
                "cuda",
                "--total-batch-tokens",
                str(args.total_batch_tokens),
            ]
            caps = [None, *(float(c) for c in args.caps.split(","))]
        common += ["--data", str(data), "--max-steps", str(args.steps), "--eval-every", "0",
                   "--sample-every", "0",
                   "--ckpt-every", "0", "--no-tensorboard", "--no-progress", "--log-every", "1",
                   "--micro-batch", "auto", "--warmup-steps", "2"]  # fmt: skip
        for cap in caps:
            out_json = tmp / f"cap-{cap}.json"
            run_dir = tmp / f"run-{cap}"
            cmd = [sys.executable, __file__, "--child", str(cap or 0), "--child-json", str(out_json), "--",
                   *common, "--out", str(run_dir)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
            rec = (
                json.loads(out_json.read_text())
                if out_json.exists()
                else {"cap_gib": cap, "error": proc.stderr[-500:]}
            )
            results.append(rec)
    base = results[0].get("tokens_per_s")
    for r in results:
        if base and r.get("tokens_per_s"):
            r["tokens_per_s_vs_uncapped"] = r["tokens_per_s"] / base
        label = "uncapped" if r["cap_gib"] is None else f"{r['cap_gib']:g} GiB"
        if "error" in r:
            print(f"{label}: {r['error']}")
            continue
        print(
            f"{label}: micro batch {r['micro_batch']}"
            f"{' + checkpointing' if r['activation_checkpointing'] else ''}, "
            f"probe {r['probe_seconds']} s, {r['tokens_per_s']:,.0f} tok/s "
            f"({r.get('tokens_per_s_vs_uncapped', 1):.2f}x uncapped), peak {r['peak_gib'] or 0:.2f} GiB, "
            f"plan {r['planned_gib']:.2f} GiB"
            + (f" ({100 * r['plan_error']:+.0f}%)" if r.get("plan_error") is not None else "")
        )
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "results": results}, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
