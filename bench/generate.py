"""Benchmark: KV-cached vs uncached generation, side by side in one process.

Both runs decode the same prompt greedily with the same model (``gpt2`` preset, random init; the
weights do not change the cost), for the same number of new tokens, with ``stop_at_eot`` off so
both do exactly the same work. The uncached baseline is what nanoGPT's ``generate`` does: re-run the
whole context each step and project only the last position to logits. The two runs advance in
lockstep (one uncached step, one cached step, ...) so they share the machine's load; the ratio of
their tokens/s is the figure to read, absolute numbers move with the load. The runs must also
produce identical tokens (greedy), which the script checks.

    python bench/generate.py                 # gpt2, 256 new tokens, CPU
    python bench/generate.py --preset tiny --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from model import GPT, PRESETS, GPTConfig
from pipeline.tokenizer import SOT_ID, get_tokenizer


def interleaved(model: GPT, idx: torch.Tensor, n: int) -> tuple[list[int], list[int], float, float]:
    """Step the uncached and the cached stream alternately, timing each step of each.

    Alternating token by token means both paths see the same machine load over the same minutes,
    so a noisy neighbour slows both rather than biasing the ratio.
    """
    uncached = model.generate_stream(idx, n, temperature=0, stop_at_eot=False, use_cache=False)
    cached = model.generate_stream(idx, n, temperature=0, stop_at_eot=False, use_cache=True)
    toks_u, toks_c, t_u, t_c = [], [], 0.0, 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        toks_u.append(int(next(uncached)[0]))
        t1 = time.perf_counter()
        toks_c.append(int(next(cached)[0]))
        t2 = time.perf_counter()
        t_u, t_c = t_u + (t1 - t0), t_c + (t2 - t1)
    return toks_u, toks_c, t_u, t_c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2", choices=list(PRESETS), help="model size (default gpt2, 124M)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens to generate per run (default 256)")
    p.add_argument("--prompt", default="The meaning of life is", help="prompt text (encoded as [SOT] + BPE)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init")
    p.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (default 0: torch's default)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    console = Console(width=None if sys.stdout.isatty() else 120)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig.from_preset(args.preset)).to(device).eval()
    ids = [SOT_ID, *get_tokenizer().encode_ordinary(args.prompt)]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    console.print(
        f"[bold]generate[/]: {args.preset} ({model.num_params(non_embedding=False) / 1e6:.1f}M params), "
        f"prompt {len(ids)} tokens, {args.new_tokens} new tokens, {device}, "
        f"{torch.get_num_threads()} threads"
    )
    interleaved(model, idx, 4)  # warm-up: allocator, kernels, lazy init
    with console.status(f"generating {args.new_tokens} tokens, uncached and cached steps interleaved ..."):
        toks_u, toks_c, t_uncached, t_cached = interleaved(model, idx, args.new_tokens)
    same = toks_u == toks_c

    table = Table(title=f"generation, {args.preset}, {args.new_tokens} new tokens (greedy, batch 1)")
    for col in ("path", "seconds", "tokens/s", "ratio"):
        table.add_column(col, justify="right")
    table.add_row("uncached (baseline)", f"{t_uncached:.2f}", f"{args.new_tokens / t_uncached:.1f}", "1.00x")
    table.add_row(
        "KV cache", f"{t_cached:.2f}", f"{args.new_tokens / t_cached:.1f}", f"{t_uncached / t_cached:.2f}x"
    )
    console.print(table)
    console.print(f"identical tokens: {'[green]yes' if same else '[red]NO'}")
    if args.json:
        figures = {
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "torch": torch.__version__, "preset": args.preset, "new_tokens": args.new_tokens,
            "uncached_s": t_uncached, "cached_s": t_cached,
            "uncached_tok_s": args.new_tokens / t_uncached, "cached_tok_s": args.new_tokens / t_cached,
            "ratio": t_uncached / t_cached, "same_tokens": same,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
