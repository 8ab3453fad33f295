"""Benchmark: uncached vs KV-cached generation (dynamic, static, CUDA graph), side by side in one process.

Every path decodes the same prompt greedily with the same model (``gpt2`` preset, random init; the
weights do not change the cost), for the same number of new tokens, with ``stop_at_eot`` off so
all do exactly the same work:

* ``uncached``  (baseline) what nanoGPT's ``generate`` does: re-run the whole context each step and
  project only the last position to logits;
* ``cached``    the dynamic KV cache (``cache_mode="dynamic"``): one token per step, attending to
  exactly the cached prefix (shapes grow every token);
* ``static``    the static KV cache run eagerly (``cache_mode="static"``): fixed-shape steps over the
  whole buffer with a mask; the kernels the graph captures;
* ``graph``     (CUDA only) the static step captured once as a CUDA graph and replayed per token
  (``cache_mode="graph"``, the default on CUDA). Its capture happens in its first decode step and
  is included in its end-to-end figure.

The paths advance in lockstep (one step of each in turn) so they share the machine's load; the
ratios are the figures to read, absolute numbers move with the load. ``tok/s`` counts all new
tokens over all steps (prefill and capture included); ``decode tok/s`` leaves out the first two
steps (prefill, and the graph's capture). Every path must produce the same tokens (greedy), which
the script checks.

    python bench/generate.py                 # gpt2, 256 new tokens, CPU
    python bench/generate.py --device cuda   # adds the CUDA-graph path
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
from model.generate import generate_stream
from pipeline.tokenizer import SOT_ID, get_tokenizer

# path name -> (use_cache, cache_mode)
PATHS = {
    "uncached": (False, "auto"),
    "cached": (True, "dynamic"),
    "static": (True, "static"),
    "graph": (True, "graph"),
}


def interleaved(
    model: GPT, idx: torch.Tensor, n: int, paths: list[str]
) -> dict[str, tuple[list[int], list[float]]]:
    """Step every path's stream in turn, timing each step; path -> (tokens of row 0, seconds per step).

    Alternating token by token means all paths see the same machine load over the same minutes,
    so a noisy neighbour slows all of them rather than biasing a ratio. ``int(...)`` waits for the
    token, so a step's time includes its device work.
    """
    streams = {
        p: generate_stream(model, idx, n, temperature=0, stop_at_eot=False, use_cache=PATHS[p][0],
                           cache_mode=PATHS[p][1])
        for p in paths
    }  # fmt: skip
    out: dict[str, tuple[list[int], list[float]]] = {p: ([], []) for p in paths}
    for _ in range(n):
        for p, st in streams.items():
            t0 = time.perf_counter()
            tok = int(next(st)[0])
            out[p][1].append(time.perf_counter() - t0)
            out[p][0].append(tok)
    return out


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
    paths = ["uncached", "cached", "static"] + (["graph"] if device.type == "cuda" else [])
    interleaved(model, idx, 4, paths)  # warm-up: allocator, kernels, lazy init
    with console.status(f"generating {args.new_tokens} tokens, {', '.join(paths)} steps interleaved ..."):
        runs = interleaved(model, idx, args.new_tokens, paths)
    n = args.new_tokens
    secs = {p: sum(runs[p][1]) for p in paths}
    tok_s = {p: n / secs[p] for p in paths}
    decode_tok_s = {p: (n - 2) / sum(runs[p][1][2:]) for p in paths} if n > 2 else {}
    same_as = {p: runs[p][0] == runs["uncached"][0] for p in paths}
    same = all(same_as.values())

    table = Table(title=f"generation, {args.preset}, {n} new tokens (greedy, batch 1), {device}")
    for col in ("path", "seconds", "tokens/s", "vs uncached", "decode tokens/s", "decode vs cached", "same"):
        table.add_column(col, justify="right")
    labels = {"uncached": "uncached (baseline)", "cached": "KV cache (dynamic)",
              "static": "static KV cache, eager", "graph": "static KV cache + CUDA graph"}  # fmt: skip
    for p in paths:
        dec = f"{decode_tok_s[p]:.1f}" if decode_tok_s else "-"
        vs = f"{decode_tok_s[p] / decode_tok_s['cached']:.2f}x" if decode_tok_s else "-"
        table.add_row(labels[p], f"{secs[p]:.2f}", f"{tok_s[p]:.1f}", f"{secs['uncached'] / secs[p]:.2f}x",
                      dec, vs, "[green]yes" if same_as[p] else "[red]NO")  # fmt: skip
    console.print(table)
    console.print(f"identical tokens on every path: {'[green]yes' if same else '[red]NO'}")
    if args.json:
        figures = {
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "torch": torch.__version__, "preset": args.preset, "new_tokens": n, "paths": paths,
            # the keys of the first version (cached = the dynamic cache), kept for bench/gpu_check.sh
            "uncached_s": secs["uncached"], "cached_s": secs["cached"],
            "uncached_tok_s": tok_s["uncached"], "cached_tok_s": tok_s["cached"],
            "ratio": secs["uncached"] / secs["cached"], "same_tokens": same,
        }  # fmt: skip
        for p in paths:
            if p in ("static", "graph"):
                figures[f"{p}_s"] = secs[p]
                figures[f"{p}_tok_s"] = tok_s[p]
                figures[f"{p}_ratio"] = secs["uncached"] / secs[p]  # vs uncached, end to end
                figures[f"{p}_over_cached"] = secs["cached"] / secs[p]
            figures[f"{p}_same_tokens"] = same_as[p]
            if decode_tok_s:
                figures[f"{p}_decode_tok_s"] = decode_tok_s[p]
        if "graph" in paths:
            figures["graph_capture_step_s"] = runs["graph"][1][1]  # first decode step: warm-up + capture
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
