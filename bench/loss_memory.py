"""Benchmark: peak memory of the LM loss, full logits (the old path) vs the chunked fused loss.

Both paths run in this process, side by side, on the same inputs: hidden states ``h`` (B*T, C) fp32
and the tied LM-head weight (V, C), forward and backward of the mean cross-entropy:

* ``full logits`` (baseline, GPT.forward before the change): ``logits = h @ W.T`` (B, T, V), then
  ``F.cross_entropy(logits.float(), targets, ignore_index=-1)`` and ``backward()``;
* ``chunked``: :func:`model.loss.linear_cross_entropy` (chunks of ``--chunk-rows`` tokens).

Peak memory is the kernel's own high-water mark of this process's resident set (``VmHWM``), reset
before each path by writing 5 to ``/proc/self/clear_refs`` and taken relative to the resident set at
that moment, so each path's figure is its own. Large tensors are mmap'd by glibc and returned on
free, so the resident set tracks the live tensors. Linux only. The script also checks that both paths
give the same loss and gradients, and reports the ratio of peaks and of times.

Default shape: B=8, T=1024, GPT-2's padded vocabulary V=50304 and n_embd C=768 (the 124M model).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from model.loss import DEFAULT_CHUNK_ROWS, linear_cross_entropy  # noqa: E402


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def measure(fn) -> tuple[float, float]:
    """(peak resident-set growth in GiB, seconds) of one call of ``fn``."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return (_status_kib("VmHWM") - base) / 2**20, dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8, help="B (default 8)")
    p.add_argument("--seq-len", type=int, default=1024, help="T (default 1024)")
    p.add_argument("--vocab", type=int, default=50304, help="V, padded vocabulary (default 50304)")
    p.add_argument("--n-embd", type=int, default=768, help="C (default 768, gpt2 124M)")
    p.add_argument(
        "--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="tokens per chunk of the new path"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    n = args.batch * args.seq_len
    h = torch.randn(n, args.n_embd, requires_grad=True)
    w = (0.02 * torch.randn(args.vocab, args.n_embd)).requires_grad_()
    t = torch.randint(0, args.vocab, (n,))
    losses: dict[str, float] = {}

    def full() -> None:
        logits = (h @ w.t()).view(args.batch, args.seq_len, args.vocab)  # (B, T, V)
        loss = F.cross_entropy(logits.float().view(-1, args.vocab), t, ignore_index=-1)
        loss.backward()
        losses["full"] = loss.item()

    def chunked() -> None:
        loss = linear_cross_entropy(h, w, t, chunk_rows=args.chunk_rows)
        loss.backward()
        losses["chunked"] = loss.item()

    res, out = {}, {}
    for name, fn in (("chunked", chunked), ("full", full)):
        h.grad = w.grad = None
        fn()  # warm-up (allocator, kernels) so the measured call is steady
        h.grad = w.grad = None
        peak, dt = measure(fn)  # includes the gradients h.grad and w.grad themselves
        res[name] = {"peak_gib": peak, "seconds": dt}
        out[name] = {"loss": losses[name], "gh": h.grad.clone(), "gw": w.grad.clone()}
    a, b = out["full"], out["chunked"]
    diffs = {
        "loss_abs_diff": abs(a["loss"] - b["loss"]),
        "grad_h_max_abs_diff": (a["gh"] - b["gh"]).abs().max().item(),
        "grad_w_max_abs_diff": (a["gw"] - b["gw"]).abs().max().item(),
    }
    ratio = res["full"]["peak_gib"] / res["chunked"]["peak_gib"]
    logits_gib = n * args.vocab * 4 / 2**30
    print(
        f"LM loss forward+backward, B={args.batch} T={args.seq_len} V={args.vocab} C={args.n_embd}, "
        f"fp32, CPU (one fp32 logits tensor = {logits_gib:.2f} GiB; chunk = {args.chunk_rows} tokens)"
    )
    print(f"{'path':<24}{'peak (GiB)':>12}{'seconds':>10}")
    print(f"{'full logits (baseline)':<24}{res['full']['peak_gib']:>12.2f}{res['full']['seconds']:>10.2f}")
    print(f"{'chunked fused':<24}{res['chunked']['peak_gib']:>12.2f}{res['chunked']['seconds']:>10.2f}")
    print(
        f"peak memory full / chunked: {ratio:.1f}x; time full / chunked: "
        f"{res['full']['seconds'] / res['chunked']['seconds']:.2f}x"
    )
    print(
        f"same results: loss diff {diffs['loss_abs_diff']:.2e}, "
        f"max grad diff h {diffs['grad_h_max_abs_diff']:.2e}, W {diffs['grad_w_max_abs_diff']:.2e}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({**vars(args), "json": None, **res, **diffs, "peak_ratio": ratio}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
