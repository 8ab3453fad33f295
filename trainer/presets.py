"""``--preset`` values: a name -> the TrainConfig fields it sets (below ``--config`` and the CLI flags).

Why each value (judgement calls, so written down):

* ``gpt2``: the 124M model on 2^19 = 524,288 tokens per step, lr 6e-4 (GPT-3 paper, table 2.1,
  "Small"), min lr 0.1 x max, **700 warmup steps and 19,073 steps = 10B tokens** (llm.c's GPT-2
  reproduction schedule: about one epoch of OpenWebText's ~9B tokens, and it matches GPT-2 124M's
  HellaSwag). nanoGPT's 600,000-step / 300B-token schedule is a ``--max-steps 600000
  --warmup-steps 2000`` away. Micro batch 32 x 1024 is the value
  ``--micro-batch auto`` takes on CPU; on a GPU auto probes what fits (gradient accumulation keeps the total).
  **The recipe is Muon + WSD** (``--optimizer muon --muon-lr 6e-3 --schedule wsd``, Q/K/V orthogonalised
  separately, AdamW at 6e-4 for the embeddings, LayerNorms and biases): on the CPU proxy of
  ``bench/time_to_loss.py`` it reached tuned AdamW's final val loss in 0.37x the tokens at 1.05x the
  wall time per token (2 seeds; 0.47x on held-back Reuters), and WSD ended lower than cosine
  (BENCHMARKS.md, "Time to loss"). 6e-3 is the proxy grid's best; with ``match_rms_adamw`` it gives
  updates of RMS 0.2 x 6e-3 = 1.2e-3, about
  what modded-nanogpt's Muon (lr 0.05, Keller's scaling) gives a 768-wide 124M model. Not yet
  measured at 124M: ``make gpu-check`` has the stage (``--stages "facts recipe"``).
* ``gpt2-classic``: the GPT-2 paper / nanoGPT recipe, unchanged: ``gpt2`` with AdamW on everything,
  warmup + cosine and random windows (``make train PRESET=gpt2-classic``).
* ``gpt2-medium`` / ``-large`` / ``-xl``: still the classic AdamW recipe (Muon is measured on the small
  model only); lr 3e-4 / 2.5e-4 / 2e-4 as the GPT-3 table for the
  nearest sizes (350M, 760M, 1.3B), smaller micro batches, same token budget and schedule.
* ``tiny``: a seconds-long CPU run for tests (tiny model, T=64, 4 x 64 tokens per step).
* ``demo``: a 2-core CPU demo (``make demo``) that trains for about two minutes on ~100K tokens
  of repository text and visibly lowers val loss.
* ``finetune`` (needs ``--init-from``): lr 3e-5 (a twentieth of gpt2's pretraining peak, nanoGPT's
  fine-tuning value for gpt2-xl) after 20 warmup steps, 2^16 tokens per step, 300 steps (~20M
  tokens, a few epochs of a small domain corpus), eval every 25 steps and a checkpoint every 100.
  Micro batch 8 x 1024 leaves room for gpt2-xl's optimizer state on an 80 GB card. Add
  ``--dropout 0.1`` for corpora small enough to overfit.
"""

from __future__ import annotations

from typing import Any

_GPT2_TOKENS = {"total_batch_tokens": 524_288, "max_steps": 19_073, "warmup_steps": 700, "seq_len": 1024}
# Micro batches are sized for a 40-80 GB card under bf16 autocast. The LM head dominates at small
# widths: B x T x 50304 logits cost about 20 bytes each through the fp32 loss and its backward
# (~33 GB at B=64, T=1024), so the 124M and 350M models use half of what their activations allow.

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": {
        "model": "gpt2",
        "lr": 6e-4,
        "micro_batch": 32,
        **_GPT2_TOKENS,
        "optimizer": "muon",
        "muon_lr": 6e-3,
        "schedule": "wsd",
    },
    "gpt2-classic": {
        "model": "gpt2",
        "lr": 6e-4,
        "micro_batch": 32,
        **_GPT2_TOKENS,
        "optimizer": "adamw",
        "schedule": "cosine",
        "sampling": "random",
    },
    "gpt2-medium": {"model": "gpt2-medium", "lr": 3e-4, "micro_batch": 16, **_GPT2_TOKENS},
    "gpt2-large": {"model": "gpt2-large", "lr": 2.5e-4, "micro_batch": 16, **_GPT2_TOKENS},
    "gpt2-xl": {"model": "gpt2-xl", "lr": 2e-4, "micro_batch": 8, **_GPT2_TOKENS},
    "tiny": {
        "model": "tiny",
        "seq_len": 64,
        "micro_batch": 4,
        "total_batch_tokens": 256,
        "max_steps": 30,
        "warmup_steps": 3,
        "lr": 3e-3,
        "eval_every": 10,
        "eval_windows": 8,
        "sample_every": 0,
        "ckpt_every": 10,
        "log_every": 1,
        "prefetch": 0,
        "profile_wait": 1,
        "profile_active": 2,
    },
    "finetune": {
        "lr": 3e-5,
        "min_lr_ratio": 0.1,
        "warmup_steps": 20,
        "max_steps": 300,
        "total_batch_tokens": 65_536,
        "micro_batch": 8,
        "seq_len": 1024,
        "eval_every": 25,
        "eval_windows": 128,
        "ckpt_every": 100,
        "sample_every": 100,
    },
    "demo": {
        "model": "tiny",
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 64,
        "block_size": 64,
        "seq_len": 64,
        "micro_batch": 16,
        "total_batch_tokens": 1024,
        "max_steps": 120,
        "warmup_steps": 10,
        "lr": 3e-3,
        "eval_every": 20,
        "eval_windows": 64,
        "sample_every": 60,
        "sample_tokens": 48,
        "sample_prompt": "def ",
        "ckpt_every": 40,
        "log_every": 10,
    },
}
