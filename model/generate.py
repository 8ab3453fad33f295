"""Autoregressive generation for :class:`model.gpt.GPT`: :func:`generate`, :func:`generate_stream`, samplers.

* The prompt is prefilled once (one causal pass that fills the cache); each step then runs the newest
  token alone against the cache. ``use_cache=False`` re-runs the whole window every step (the baseline of
  ``bench/generate.py``); under greedy decoding both give the same tokens.
* ``cache_mode`` (:mod:`model.kvcache`): ``dynamic`` (eager), ``static`` (fixed-shape steps), ``graph``
  (static, captured as a CUDA graph); ``auto`` is ``graph`` on CUDA, where batch-1 decoding is
  launch-bound, and ``dynamic`` elsewhere.
* Ids >= ``vocab_size`` (the padded rows) are never produced; ``temperature=0`` is greedy; then top-k,
  then top-p. A prompt longer than ``block_size`` conditions on its last ``block_size`` tokens; past
  that the window jumps by half a block (:func:`window_start`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from model.kvcache import CUDAGraphStep, KVCache, StaticKVCache
from pipeline.tokenizer import EOT_ID, PAD_ID

if TYPE_CHECKING:
    from model.gpt import GPT


CacheMode = Literal["auto", "dynamic", "static", "graph"]
CACHE_MODES = ("auto", "dynamic", "static", "graph")


def resolve_cache_mode(cache_mode: str, use_cache: bool, device: torch.device) -> str:
    """``"none"`` without the cache, else the concrete mode ``cache_mode`` means on ``device``."""
    if cache_mode not in CACHE_MODES:
        raise ValueError(f"cache_mode must be one of {', '.join(CACHE_MODES)}, got {cache_mode!r}")
    if not use_cache:
        return "none"
    if cache_mode == "auto":
        return "graph" if device.type == "cuda" else "dynamic"
    if cache_mode == "graph" and device.type != "cuda":
        raise ValueError(f"cache_mode='graph' needs a CUDA device, got {device}; use 'static' or 'dynamic'")
    return cache_mode


def context_start(length: int, block_size: int) -> int:
    """First position of the window the model conditions on for a sequence of ``length`` tokens.

    0 while the sequence fits; afterwards the smallest multiple of ``block_size // 2`` that leaves
    at most ``block_size`` tokens. Positions are learned, so the model never sees more than
    ``block_size``; sliding by one token would shift every cached key's position (a full re-run per
    token), while jumping by half a block costs one re-prefill per block/2 tokens, conditioning on
    between block/2 and block tokens after the first overflow.
    """
    if length <= block_size:
        return 0
    stride = max(1, block_size // 2)
    return math.ceil((length - block_size) / stride) * stride


def window_start(length: int, prompt_len: int, block_size: int) -> int:
    """First position the model conditions on, ``length`` tokens into a sequence with a ``prompt_len``
    prompt: the last ``block_size`` prompt tokens (as many as fit, so none is dropped needlessly), and
    from there the :func:`context_start` jumps of half a block as the output grows."""
    crop = max(0, prompt_len - block_size)
    return crop + context_start(length - crop, block_size)


def _check_sampling_args(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens (--max-new-tokens) must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not (temperature >= 0.0 and math.isfinite(temperature)):
        raise ValueError(
            f"temperature (--temperature) must be a finite number >= 0 (0 = greedy), got {temperature!r}"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k (--top-k) must be an integer >= 1 or unset, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p (--top-p) must be in (0, 1] or unset, got {top_p!r}")


def mask_padded(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """fp32 copy of logits (B, V_padded) with the padded columns >= vocab_size set to -inf."""
    logits = logits.float().clone()
    logits[:, vocab_size:] = float("-inf")
    return logits


def next_token_probs(
    logits: torch.Tensor,
    vocab_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Sampling distribution (B, V_padded) fp32 from last-position logits (B, V_padded); temperature > 0."""
    if temperature <= 0:
        raise ValueError("next_token_probs needs temperature > 0 (temperature 0 is greedy: use argmax)")
    logits = mask_padded(logits, vocab_size) / temperature
    if top_k is not None and top_k < vocab_size:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1), the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly likelier ids
        # drop an id once the likelier ones already reach p; the top id always survives
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_next(
    logits: torch.Tensor,
    vocab_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next ids (B,) int64 from logits (B, V_padded): greedy at temperature 0, else sampled."""
    if temperature == 0:
        return mask_padded(logits, vocab_size).argmax(dim=-1)
    probs = next_token_probs(logits, vocab_size, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **sampling: Any) -> torch.Tensor:
    """Append up to ``max_new_tokens`` sampled tokens to ``idx`` (B, T); returns (B, T + n).

    ``sampling`` are :func:`generate_stream`'s keywords; with ``stop_at_eot`` (the default) the output
    ends once every row has emitted ``<|endoftext|>``, so n may be < ``max_new_tokens``.
    """
    new = list(generate_stream(model, idx, max_new_tokens, **sampling))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx


def generate_stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_at_eot: bool = True,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    cache_mode: CacheMode = "auto",
) -> Iterator[torch.Tensor]:
    """Yield the new token ids (B,) one step at a time (see the module docstring).

    With ``stop_at_eot``, a row that has produced ``<|endoftext|>`` yields ``<|padding|>`` from then
    on, and the stream ends once every row has finished. The model runs in eval mode (no dropout)
    while the stream is consumed and gets its previous mode back afterwards.
    """
    _check_sampling_args(max_new_tokens, temperature, top_k, top_p)
    if idx.dim() != 2 or idx.size(1) < 1 or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"idx must be a (batch, time>=1) integer tensor of token ids, got {tuple(idx.shape)} {idx.dtype}"
        )
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= model.config.vocab_size:
        raise ValueError(
            f"prompt ids must be in [0, {model.config.vocab_size}) (the model's vocab_size), got [{lo}, {hi}]"
        )
    mode = resolve_cache_mode(cache_mode, use_cache, idx.device)
    # validation above runs at call time; the steps below run as the caller iterates
    return _stream(model, idx, max_new_tokens, temperature, top_k, top_p, stop_at_eot, mode, generator)


def _stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop_at_eot: bool,
    mode: str,
    generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:
    cfg = model.config
    B, T0 = idx.shape
    # the whole sequence so far, preallocated: window re-prefills read from it
    seq = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=idx.device)
    seq[:, :T0] = idx
    length = T0
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    max_len = min(cfg.block_size, T0 + max_new_tokens)
    cache = (
        None if mode == "none" else (KVCache if mode == "dynamic" else StaticKVCache)(cfg.n_layer, max_len)
    )
    graph: CUDAGraphStep | None = None  # captured at the first decode step, kept across re-prefills
    cached_from = -1  # window start the cache currently holds; -1: empty
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            # no_grad per step, not around the loop: a context held across `yield` would leak into
            # (and could be undone by) the consumer's code between steps
            with torch.no_grad():
                start = window_start(length, T0, cfg.block_size)
                if cache is None:
                    h = model.hidden_states(seq[:, start:length])  # (B, W, C), whole window
                elif start != cached_from:
                    cache.reset()  # prefill (first step, or after the window jumped)
                    h = model.hidden_states(seq[:, start:length], cache)
                    cached_from = start
                elif mode == "graph":
                    if graph is None:
                        assert isinstance(cache, StaticKVCache)
                        graph = CUDAGraphStep(model, cache, B, idx.device)
                    # (B, V_padded), a static buffer; sampling stays outside the graph, so the samplers,
                    # their generator and the window policy are the same in every mode
                    logits = graph.step(seq[:, length - 1])
                    h = None
                else:
                    h = model.hidden_states(seq[:, length - 1 : length], cache)  # (B, 1, C)
                if h is not None:
                    logits = model.lm_head(h[:, -1])  # (B, V_padded): only the last position is needed
                nxt = sample_next(logits, cfg.vocab_size, temperature, top_k, top_p, generator)
                if stop_at_eot:
                    nxt = torch.where(finished, torch.full_like(nxt, PAD_ID), nxt)
                    finished |= nxt == EOT_ID
                seq[:, length] = nxt
            length += 1
            yield nxt
            if stop_at_eot and bool(finished.all()):
                return
    finally:
        model.train(was_training)
