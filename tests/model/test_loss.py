"""The chunked LM-head + cross-entropy (model/loss.py) against ``F.cross_entropy`` on the full logits.

The reference is torch's own ``F.cross_entropy(h @ W.T, targets, ignore_index=-1)`` with plain
autograd, on full fp32 logits; the chunked path must give the same loss and the same gradients of
both inputs, for every chunk size (one row, uneven tails, one chunk), with ignored targets, and in
``no_grad``. At the model level, GPT's loss and every parameter's gradient are compared with the
reference computed from GPT's own logits, and no saved-for-backward tensor is logits-sized.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from model.loss import linear_cross_entropy
from pipeline.tokenizer import VOCAB_SIZE


def _inputs(n: int = 300, c: int = 24, v: int = 211, seed: int = 0, ignore_every: int = 7):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=g, requires_grad=True)
    w = (0.5 * torch.randn(v, c, generator=g)).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        t[::ignore_every] = -1
    return h, w, t


def _reference(h, w, t):
    hr, wr = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = F.cross_entropy(hr @ wr.t(), t, ignore_index=-1)
    loss.backward()
    return loss.detach(), hr.grad, wr.grad


@pytest.mark.parametrize("chunk_rows", [1, 64, 100, 299, 300, 4096])
def test_loss_and_gradients_equal_full_cross_entropy(chunk_rows: int):
    h, w, t = _inputs()
    want, want_gh, want_gw = _reference(h, w, t)
    got = linear_cross_entropy(h, w, t, chunk_rows=chunk_rows)
    (2.5 * got).backward()  # a non-unit upstream gradient is applied to both inputs
    torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(h.grad, 2.5 * want_gh, rtol=0, atol=1e-6)
    torch.testing.assert_close(w.grad, 2.5 * want_gw, rtol=0, atol=1e-6)


def test_no_grad_path_and_all_ignored_match_the_reference():
    h, w, t = _inputs(seed=1)
    want, _, _ = _reference(h, w, t)
    with torch.no_grad():
        got = linear_cross_entropy(h, w, t, chunk_rows=50)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    none = torch.full_like(t, -1)  # every target ignored: 0/0, nan, as F.cross_entropy gives
    assert torch.isnan(F.cross_entropy(h @ w.t(), none, ignore_index=-1))
    assert torch.isnan(linear_cross_entropy(h, w, none, chunk_rows=50))
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(h, w, t, chunk_rows=0)


def test_bf16_autocast_loss_is_fp32_and_close_to_the_plain_path():
    h, w, t = _inputs(seed=2, ignore_every=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = h @ w.t()  # bf16, as the plain Linear path computes them
        want = F.cross_entropy(logits.float(), t)
        got = linear_cross_entropy(h, w, t, chunk_rows=64)
    assert logits.dtype == torch.bfloat16 and got.dtype == torch.float32
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-3, atol=0)
    got.backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


def test_gpt_loss_and_every_gradient_equal_the_full_logits_path():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=2))
    twin = GPT(GPTConfig.from_preset("tiny", n_layer=2))
    twin.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, VOCAB_SIZE, (4, 64), generator=g)
    targets = torch.randint(0, VOCAB_SIZE, (4, 64), generator=g)
    targets[0, :10] = -1
    logits, _ = twin(idx)  # the reference: full fp32 logits and torch's own cross-entropy
    want = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
    want.backward()

    saved: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        no_logits, got = model(idx, targets)
    got.backward()
    assert no_logits is None
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-6, atol=0)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6, msg=name)
    n_rows, vocab = idx.numel(), model.config.padded_vocab_size
    # no logits-sized tensor is kept for backward
    assert saved and max(s.numel() for s in saved) < n_rows * vocab
