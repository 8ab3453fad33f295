"""The LM loss without the full logits: a chunked, fused LM-head matmul + cross-entropy.

:func:`linear_cross_entropy` ``(h (N, C), weight (V, C), targets (N,))`` returns what
``F.cross_entropy((h @ weight.T).float(), targets, ignore_index=-1)`` returns (all ignored -> nan, as
there), while only one chunk of ``chunk_rows`` rows' logits ever exists. Why: at micro batch 32, T=1024
and 50,304 columns the plain path holds bf16 logits (3.3 GB), their fp32 copy and fp32 log-softmax
(6.6 GB each) and an fp32 gradient of the same size, which, not the transformer, limits the micro batch
(``bench/loss_memory.py``). It is one ``torch.compile`` graph (static shapes, a fixed Python loop).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -1  # target id that contributes neither loss nor gradient (nanoGPT's convention)
DEFAULT_CHUNK_ROWS = 2048  # tokens per chunk: 2048 x 50304 fp32 = 0.4 GB per chunk temporary


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype a ``Linear`` on ``h`` would compute in here: the autocast dtype where autocast is on."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return h.dtype


def _chunk_stats(hc: torch.Tensor, w: torch.Tensor, tc: torch.Tensor):
    """One chunk: fp32 logits (n, V), their log-sum-exp (n,), the target mask (n,) and safe targets (n,)."""
    logits = (hc @ w.t()).float()  # (n, V) in fp32: the only full-width tensor, one chunk of it
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    valid = tc != IGNORE_INDEX  # (n,)
    safe = torch.where(valid, tc, torch.zeros_like(tc))  # (n,): ignored rows gather column 0, masked below
    return logits, lse, valid, safe


def _loss_only(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=h.device)  # fp64 sum: chunking adds no rounding
    for hc, tc in zip(h.split(chunk_rows), targets.split(chunk_rows), strict=True):
        logits, lse, valid, safe = _chunk_stats(hc, w, tc)
        picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1)  # (n,) logit of the target
        total = total + torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
    return (total / (targets != IGNORE_INDEX).sum()).float()


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Loss forward; gradients of ``h`` and ``weight`` computed in the same pass and held for backward.

    Per chunk: softmax minus one-hot, two matmuls; the (N, C) and (V, C) gradients wait until backward
    scales them by the incoming gradient, so nothing is recomputed (the plain path's FLOPs) and no
    logits live across backward. Under autocast the matmuls run in the autocast dtype, as a ``Linear``
    would, while log-sum-exp, softmax and loss are fp32 per chunk; the weight gradient sums in fp32.
    """

    @staticmethod
    def forward(
        ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk_rows: int
    ) -> torch.Tensor:
        count = (targets != IGNORE_INDEX).sum()
        inv = 1.0 / count.float()  # d(mean)/d(row loss); a tensor, so no host sync
        total = torch.zeros((), dtype=torch.float64, device=h.device)  # fp64 sum: chunking adds no rounding
        grad_h = torch.empty_like(h)  # (N, C)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)  # (V, C), fp32 accumulator
        lo = 0
        for hc, tc in zip(h.split(chunk_rows), targets.split(chunk_rows), strict=True):
            n = hc.size(0)
            logits, lse, valid, safe = _chunk_stats(hc, w, tc)
            picked = logits.gather(1, safe.unsqueeze(1)).squeeze(1)
            total = total + torch.where(valid, lse - picked, torch.zeros_like(lse)).sum()
            # d loss / d logits = (softmax - onehot(target)) / count on valid rows, 0 on ignored ones;
            # in place on the chunk's logits, so a chunk costs one (n, V) fp32 buffer
            g = logits.sub_(lse.unsqueeze(1)).exp_()  # (n, V) softmax
            g.scatter_add_(1, safe.unsqueeze(1), torch.full_like(lse, -1.0).unsqueeze(1))
            g.mul_((valid.float() * inv).unsqueeze(1))
            g = g.to(hc.dtype)
            grad_h[lo : lo + n] = g @ w  # (n, C)
            grad_w += (g.t() @ hc).float()  # (V, C)
            lo += n
        ctx.save_for_backward(grad_h, grad_w.to(w.dtype))
        return (total / count).float()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out.to(grad_h.dtype), grad_w * grad_out.to(grad_w.dtype), None, None


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> torch.Tensor:
    """Mean fp32 cross-entropy of ``h @ weight.T`` (h (N, C), weight (V, C)) against targets (N,)."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive number of rows, got {chunk_rows}")
    dt = _compute_dtype(h)
    hc, wc = h.to(dt), weight.to(dt)  # one cast each (a no-op in fp32); the casts' backward restores fp32
    if torch.is_grad_enabled() and (hc.requires_grad or wc.requires_grad):
        with torch.autocast(h.device.type, enabled=False):  # already in dt: no per-chunk re-casting
            return _FusedLinearCrossEntropy.apply(hc, wc, targets, chunk_rows)
    with torch.autocast(h.device.type, enabled=False):
        return _loss_only(hc, wc, targets, chunk_rows)
