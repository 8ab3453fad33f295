"""KV caches for :mod:`model.generate`, and the CUDA-graph decode step.

The model drives a cache with three calls per forward of T new tokens (:meth:`model.gpt.GPT.hidden_states`):
:meth:`KVCache.positions` (T,) once, :meth:`KVCache.attend` per layer, :meth:`KVCache.advance` (T) after the
last layer; ``pos`` is the number of cached positions as a host int. :class:`KVCache` is the dynamic cache
(decode shapes grow by one per token); :class:`StaticKVCache` makes a decode step fixed-shape so that
:class:`CUDAGraphStep` can capture it once and replay it per token. Greedy decoding matches the uncached
path token for token (tests/model/test_generation.py, tests/model/test_model_gpu.py).
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Per-layer keys and values of the tokens seen so far, preallocated to ``max_len`` positions and
    written in place (no ``torch.cat``, which would copy O(T) per token); a decode step attends to
    exactly the ``pos + 1`` keys written so far.

    Tensors are allocated lazily on the first write, with that write's batch size, dtype (bf16
    under autocast) and device.
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

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """Absolute positions (T,) int64 of the next T tokens."""
        return torch.arange(self.pos, self.pos + T, dtype=torch.long, device=device)

    def advance(self, n: int) -> None:
        self.pos += n

    def _buffers(self, layer: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, nh, T, hs = k.shape
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot append {T} at {self.pos}")
        ck, cv = self.k[layer], self.v[layer]
        if ck is None or cv is None or ck.shape[:2] != (B, nh) or ck.device != k.device:
            # zeros, not empty: StaticKVCache multiplies unwritten positions by an exact 0 weight
            ck = self.k[layer] = k.new_zeros(B, nh, self.max_len, hs)
            cv = self.v[layer] = k.new_zeros(B, nh, self.max_len, hs)
        return ck, cv

    def _attend_chunk(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        ck: torch.Tensor,
        cv: torch.Tensor,
    ) -> torch.Tensor:
        """Host-indexed write of T keys at ``pos`` and attention over the written prefix."""
        T = k.size(2)
        start, end = self.pos, self.pos + T
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

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v (B, nh, T, hs) at positions pos..pos+T-1 and return attention for q (B, nh, T, hs)."""
        ck, cv = self._buffers(layer, k)
        return self._attend_chunk(layer, q, k, v, ck, cv)


class StaticKVCache(KVCache):
    """A :class:`KVCache` whose decode step (T == 1) has static shapes and reads no host value.

    The step writes its key/value at the position held in a device tensor (``index_copy_``), attends
    over the whole ``max_len`` buffer with a mask hiding the unwritten positions, and advances the
    device position in place: the same kernels with the same arguments every token, as a CUDA graph
    needs. Prefills (T > 1) are eager, as in :class:`KVCache`. Buffers start zeroed: a masked position
    gets weight exactly 0, and 0 * (uninitialised NaN) would still be NaN. Masked attention over the
    buffer equals attention over the prefix mathematically; the sums may differ in the last bits.
    """

    def __init__(self, n_layer: int, max_len: int):
        super().__init__(n_layer, max_len)
        self.pos_t: torch.Tensor | None = None  # () int64 on the device: cached positions
        self._slots: torch.Tensor | None = None  # (max_len,) int64: 0 .. max_len-1
        self._mask: torch.Tensor | None = None  # (1, max_len) bool: positions a decode query sees

    def reset(self) -> None:
        super().reset()
        if self.pos_t is not None:
            self.pos_t.zero_()

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        if self.pos_t is None or self.pos_t.device != device:
            self.pos_t = torch.full((), self.pos, dtype=torch.long, device=device)
            self._slots = torch.arange(self.max_len, dtype=torch.long, device=device)
        if T != 1:
            return super().positions(T, device)
        if self.pos >= self.max_len:  # host check; a graph replay is guarded by its caller
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot append 1 at {self.pos}")
        assert self._slots is not None
        self._mask = (self._slots <= self.pos_t).view(1, self.max_len)  # once per step, not per layer
        return self.pos_t.view(1)

    def advance(self, n: int) -> None:
        super().advance(n)
        assert self.pos_t is not None  # positions() ran first
        self.pos_t.add_(n)  # in place: a captured step advances itself on every replay

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ck, cv = self._buffers(layer, k)
        if k.size(2) != 1:
            return self._attend_chunk(layer, q, k, v, ck, cv)
        assert self.pos_t is not None and self._mask is not None
        slot = self.pos_t.view(1)
        ck.index_copy_(2, slot, k.to(ck.dtype))  # (B, nh, 1, hs) into position pos_t
        cv.index_copy_(2, slot, v.to(cv.dtype))
        # (B, nh, 1, hs) against all max_len keys; the unwritten ones are masked out. (.to is a
        # no-op unless the caller switched autocast on or off mid-sequence)
        return F.scaled_dot_product_attention(q, ck.to(q.dtype), cv.to(q.dtype), attn_mask=self._mask)


def _capture_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast as the caller has it, but without the weight-cast cache.

    The cache would keep bf16 copies of the weights made inside the capture; they are freed when
    the caller's autocast region exits while the graph still reads them (torch's CUDA graph notes).
    """
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
        return torch.autocast(device.type, dtype=dtype, cache_enabled=False)
    return contextlib.nullcontext()


class DecodeModel(Protocol):
    """What :class:`CUDAGraphStep` calls on its model: :class:`model.gpt.GPT` is one (named here by shape,
    since importing it would close an import cycle with model.gpt's type-only import of this module)."""

    lm_head: nn.Linear

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor: ...


class CUDAGraphStep:
    """One decode step of ``model`` on ``cache``, captured as a CUDA graph and replayed per token.

    Build it after the prefill (the cache's buffers must exist: the graph reads them by address).
    ``step(tokens)``: tokens (B,) int64 at position ``cache.pos`` -> logits (B, V_padded), a buffer
    that the next replay overwrites. The cache must not be re-allocated while the graph lives
    (same batch size, dtype and device; ``reset`` + re-prefill is fine). One replay is one launch
    instead of ~15 per layer: batch-1 eager decoding of a 124M model is launch-bound on a GPU
    (BENCHMARKS.md, "GPU check").
    """

    def __init__(self, model: DecodeModel, cache: StaticKVCache, batch: int, device: torch.device):
        self.model, self.cache = model, cache
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)  # static input (B, 1)
        pos, pos_t = cache.pos, None if cache.pos_t is None else cache.pos_t.clone()
        autocast = _capture_autocast(device)
        # warm-up on a side stream (torch's recipe): lazy inits, cuBLAS workspaces and SDPA kernel
        # choice happen here, not inside the capture. Each run writes a throw-away key/value at
        # position pos (the real step overwrites it) and advances the position, which we undo.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), autocast:
            for _ in range(2):
                self._forward()
                self._restore(pos, pos_t)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA work (the sampler's prefetch copies while the trainer
        # samples text) must not invalidate this capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), autocast:
            self.logits = self._forward()  # (B, V_padded), rewritten by every replay
        cache.pos = pos  # capture ran the Python (advancing the host count) but no kernel

    def _restore(self, pos: int, pos_t: torch.Tensor | None) -> None:
        self.cache.pos = pos
        assert self.cache.pos_t is not None
        if pos_t is None:
            self.cache.pos_t.fill_(pos)
        else:
            self.cache.pos_t.copy_(pos_t)

    def _forward(self) -> torch.Tensor:
        h = self.model.hidden_states(self.tokens, self.cache)  # (B, 1, C)
        return self.model.lm_head(h[:, -1])  # (B, V_padded)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache.pos >= self.cache.max_len:
            raise ValueError(
                f"KV cache holds {self.cache.max_len} positions; cannot append 1 at {self.cache.pos}"
            )
        self.tokens.copy_(tokens.reshape(-1, 1))
        self.graph.replay()  # writes k/v at pos_t, attends, advances pos_t on the device
        self.cache.pos += 1
        return self.logits
