"""Autoregressive sampling for :class:`model.gpt.GPT`: a preallocated KV cache and the samplers.

Contract
--------
* :func:`generate_stream` prefills the prompt once (one causal SDPA pass that also fills the cache),
  then decodes one token at a time: each step runs the model on the single newest token, whose query
  attends to every cached key with no mask (a lone query at the end of the sequence may see all of
  it, so ``is_causal=False`` is exact when T_q == 1). With ``use_cache=False`` every step re-runs the
  whole window instead; both paths apply the same window policy, so under greedy decoding they
  produce the same tokens (the tests check this), and the uncached path is the honest baseline of
  ``bench/generate.py``.
* The cache is one preallocated ``(B, nh, max_len, hs)`` key and value tensor per layer, written in
  place, so a step costs no ``torch.cat`` reallocation (which would be O(T) copies per token).
* **Context window policy.** Positions are learned, so the model never sees more than
  ``block_size`` tokens. When the sequence outgrows it, the window start jumps forward by
  ``block_size // 2`` (:func:`context_start`) and the cache is rebuilt by one prefill of the
  remaining tokens. Sliding by one token per step would change every cached key (each token's
  position would shift), i.e. a full re-run per token; jumping by half a block keeps decoding O(1)
  model passes per token at the price of conditioning on between block/2 and block tokens after
  the first overflow. Generation within one block is unaffected.
* Sampling: ids >= ``vocab_size`` (the embedding's padded rows) are masked to -inf before anything
  else, so they are never produced; ``temperature=0`` is greedy; then top-k, then top-p (nucleus:
  the smallest set of most likely ids whose mass reaches p), renormalised.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pipeline.tokenizer import EOT_ID, PAD_ID

if TYPE_CHECKING:
    from model.gpt import GPT


class KVCache:
    """Per-layer keys and values of the tokens seen so far, preallocated to ``max_len`` positions.

    ``pos`` is the number of cached positions. The model calls :meth:`attend` once per layer for a
    chunk of T new tokens and :meth:`advance` (T) after the last layer. Tensors are allocated lazily
    on the first write, with that write's batch size, dtype (bf16 under autocast) and device.
    """

    def __init__(self, n_layer: int, max_len: int):
        if max_len < 1:
            raise ValueError(f"KVCache max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.pos = 0
        self.k: list[torch.Tensor | None] = [None] * n_layer  # each (B, nh, max_len, hs)
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def reset(self) -> None:
        """Forget the cached positions (the buffers are kept and overwritten)."""
        self.pos = 0

    def advance(self, n: int) -> None:
        self.pos += n

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v (B, nh, T, hs) at positions pos..pos+T-1 and return attention for q (B, nh, T, hs)."""
        B, nh, T, hs = k.shape
        start, end = self.pos, self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot append {T} at {start}")
        ck, cv = self.k[layer], self.v[layer]
        if ck is None or cv is None or ck.shape[0] != B or ck.shape[1] != nh or ck.device != k.device:
            ck = self.k[layer] = k.new_empty(B, nh, self.max_len, hs)
            cv = self.v[layer] = v.new_empty(B, nh, self.max_len, hs)
        ck[:, :, start:end] = k
        cv[:, :, start:end] = v
        if start == 0:
            # prefill: only the fresh keys exist, so this is exactly the training-path causal kernel
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        keys, values = ck[:, :, :end].to(q.dtype), cv[:, :, :end].to(q.dtype)  # (B, nh, end, hs)
        if T == 1:
            # one query at the newest position may attend to every cached key: no mask
            return F.scaled_dot_product_attention(q, keys, values)
        # chunk appended to a non-empty cache: query i (absolute start+i) sees keys 0..start+i.
        # (is_causal=True would align the triangle top-left, which is wrong when T_q != T_k.)
        mask = torch.ones(T, end, dtype=torch.bool, device=q.device).tril(diagonal=start)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)


def context_start(length: int, block_size: int) -> int:
    """First position of the window the model conditions on for a sequence of ``length`` tokens.

    0 while the sequence fits; afterwards the smallest multiple of ``block_size // 2`` that leaves
    at most ``block_size`` tokens (see the module docstring for why it jumps rather than slides).
    """
    if length <= block_size:
        return 0
    stride = max(1, block_size // 2)
    return math.ceil((length - block_size) / stride) * stride


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
) -> Iterator[torch.Tensor]:
    """Yield the new token ids (B,) one step at a time; see the module docstring.

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
    # validation above runs at call time; the steps below run as the caller iterates
    return _stream(model, idx, max_new_tokens, temperature, top_k, top_p, stop_at_eot, use_cache, generator)


def _stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    stop_at_eot: bool,
    use_cache: bool,
    generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:
    cfg = model.config
    B, T0 = idx.shape
    # the whole sequence so far, preallocated: window re-prefills read from it
    seq = torch.empty(B, T0 + max_new_tokens, dtype=torch.long, device=idx.device)
    seq[:, :T0] = idx
    length = T0
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    cache = KVCache(cfg.n_layer, min(cfg.block_size, T0 + max_new_tokens)) if use_cache else None
    cached_from = -1  # window start the cache currently holds; -1: empty
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            # no_grad per step, not around the loop: a context held across `yield` would leak into
            # (and could be undone by) the consumer's code between steps
            with torch.no_grad():
                start = context_start(length, cfg.block_size)
                if cache is None:
                    h = model.hidden_states(seq[:, start:length])  # (B, W, C), whole window
                elif start != cached_from:
                    cache.reset()  # prefill (first step, or after the window jumped)
                    h = model.hidden_states(seq[:, start:length], cache)
                    cached_from = start
                else:
                    h = model.hidden_states(seq[:, length - 1 : length], cache)  # (B, 1, C)
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
