"""Benchmark: the non-finite weights check on the checkpoint save path vs the save itself, one process.

``model.checkpoint.first_nonfinite`` (one fused ``_foreach_norm`` over the state dict and one host
sync) runs before every checkpoint write. This measures it side by side with
``torch.save`` of the same state dict into memory (the least a save costs: no disk) and with the
naive per-tensor ``torch.isfinite(t).all()`` loop (one sync per tensor), interleaved round by round
so they share the machine's load. The ratios are the figures to read.

    python bench/ckpt_finite.py                      # gpt2 (124M), CPU
    python bench/ckpt_finite.py --preset tiny --device cuda
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import GPT, GPTConfig
from model.checkpoint import first_nonfinite


def max_abs(state: dict[str, torch.Tensor]) -> bool:
    """The fused max |x| variant (exact without a confirmation pass, but not vectorized on the CPU)."""
    ts = [v for v in state.values() if v.is_floating_point()]
    return bool(torch.stack(torch._foreach_norm(ts, float("inf"))).isfinite().all())


def naive(state: dict[str, torch.Tensor]) -> str | None:
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset)).to(device)
    state = model.state_dict()
    n = sum(v.numel() for v in state.values())
    fused, loop, save, inf_norm = [], [], [], []
    assert first_nonfinite(state) is None and naive(state) is None
    for _ in range(args.rounds):
        fused.append(timed(lambda: first_nonfinite(state), device))
        loop.append(timed(lambda: naive(state), device))
        inf_norm.append(timed(lambda: max_abs(state), device))
        save.append(timed(lambda: torch.save(state, io.BytesIO()), device))
    f, lo, s = statistics.median(fused), statistics.median(loop), statistics.median(save)
    mx = statistics.median(inf_norm)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.preset} ({n / 1e6:.1f}M values in {len(state)} tensors) on {name}, median of {args.rounds}:"
    )
    print(f"  fused check   {1000 * f:9.2f} ms")
    print(f"  per-tensor    {1000 * lo:9.2f} ms   ({lo / f:.2f}x the fused check)")
    print(f"  fused max|x|  {1000 * mx:9.2f} ms   ({mx / f:.2f}x the fused check)")
    print(f"  torch.save    {1000 * s:9.2f} ms   (the fused check is {100 * f / s:.1f}% of a save to memory)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
