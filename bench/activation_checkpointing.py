"""Benchmark: what ``--activation-checkpointing`` saves in memory and costs in tokens/s, side by side.

One process, one model, the same batches: training steps (forward, backward, fused AdamW) alternate
between checkpointing off and on, round by round, so machine noise hits both sides alike.

* Memory. CUDA: ``torch.cuda.max_memory_allocated`` of a step (peak, everything included). CPU: the
  bytes the forward allocates and does not free (the profiler's memory events), which is what lives
  on into backward: the activations, the part checkpointing removes; plus the step's static part
  (weights, gradients, AdamW moments) to give a comparable peak.
* Speed: tokens/s over the timed rounds (after one warm-up step per side).

Reports each side and the ratios on / off.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from model.config import GPTConfig  # noqa: E402
from model.gpt import GPT  # noqa: E402


def main() -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--model", default="gpt2" if cuda else "tiny", help="model preset")
    p.add_argument("--n-layer", type=int, default=None if cuda else 6)
    p.add_argument("--n-embd", type=int, default=None if cuda else 384)
    p.add_argument("--n-head", type=int, default=None if cuda else 6)
    p.add_argument("--seq-len", type=int, default=1024 if cuda else 256)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=cuda)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    dev = torch.device(a.device)
    over = {k: v for k, v in (("n_layer", a.n_layer), ("n_embd", a.n_embd), ("n_head", a.n_head)) if v}
    mc = GPTConfig.from_preset(a.model, block_size=max(a.seq_len, 64), **over)
    torch.manual_seed(0)
    model = GPT(mc).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model) if a.compile else model
    amp = dev.type == "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, mc.vocab_size, (a.micro_batch, a.seq_len), device=dev, generator=g)
    static = sum(p.numel() for p in model.parameters()) * 4 * 4  # fp32 weights, grads, 2 moments

    def step(ckpt: bool, measure: bool = False) -> float | None:
        model.activation_checkpointing = ckpt
        kept = None
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        prof = (
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) if measure and not amp else None
        )
        if prof is not None:
            prof.__enter__()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            _, loss = fwd(x, x)
        if prof is not None:
            prof.__exit__(None, None, None)
            kept = sum(e.self_cpu_memory_usage for e in prof.key_averages())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            return torch.cuda.max_memory_allocated(dev)
        return kept + static if kept is not None else None

    sides = {False: {"seconds": 0.0, "mem": None}, True: {"seconds": 0.0, "mem": None}}
    for ckpt in (False, True):  # warm-up (and compile) each side, and measure its memory
        step(ckpt)
        sides[ckpt]["mem"] = step(ckpt, measure=True)
    for _ in range(a.rounds):
        for ckpt in (False, True):
            t0 = time.perf_counter()
            step(ckpt)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            sides[ckpt]["seconds"] += time.perf_counter() - t0
    tokens = a.rounds * a.micro_batch * a.seq_len
    out = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "model": {**mc.to_dict(), "preset": a.model},
        "seq_len": a.seq_len,
        "micro_batch": a.micro_batch,
        "compile": a.compile,
        "memory_kind": "max_memory_allocated" if dev.type == "cuda" else "static + bytes the forward keeps",
    }
    for ckpt, name in ((False, "off"), (True, "on")):
        out[name] = {
            "tokens_per_s": tokens / sides[ckpt]["seconds"],
            "memory_gib": sides[ckpt]["mem"] / 2**30,
        }
    out["memory_on_over_off"] = out["on"]["memory_gib"] / out["off"]["memory_gib"]
    out["tokens_per_s_on_over_off"] = out["on"]["tokens_per_s"] / out["off"]["tokens_per_s"]
    if dev.type != "cuda":
        act = lambda s: s["mem"] - static  # noqa: E731
        out["activations_on_over_off"] = act(sides[True]) / act(sides[False])
    for name in ("off", "on"):
        print(
            f"checkpointing {name:>3}: {out[name]['tokens_per_s']:>10,.0f} tok/s  "
            f"memory {out[name]['memory_gib']:.3f} GiB"
        )
    kept = out.get("activations_on_over_off")
    print(
        f"on / off: memory {out['memory_on_over_off']:.3f}x, tokens/s {out['tokens_per_s_on_over_off']:.3f}x"
        + (f", activations kept {kept:.3f}x" if kept is not None else "")
    )
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
