"""``GPT.activation_checkpointing``: recomputing each block in backward gives the same bits as keeping
its activations (fp32, CPU), dropout included (the checkpoint replays the saved RNG state), and keeps
only the block inputs through the forward (measured with the profiler's memory events)."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from model.config import GPTConfig
from model.generate import generate
from model.gpt import GPT

CFG = GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=64)


def _grads(ckpt: bool, dropout: float, mask_seed: int = 7) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**CFG.to_dict(), "dropout": dropout}))
    model.activation_checkpointing = ckpt
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, CFG.vocab_size, (2, 48), generator=g)
    y = torch.randint(0, CFG.vocab_size, (2, 48), generator=g)
    torch.manual_seed(mask_seed)  # the dropout masks' stream
    _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_gives_the_same_bits(dropout: float):
    loss0, g0 = _grads(False, dropout)
    loss1, g1 = _grads(True, dropout)
    assert torch.equal(loss0, loss1)
    for name in g0:
        assert torch.equal(g0[name], g1[name]), name
    if dropout:  # the comparison can fail: other dropout masks give other gradients
        _, g2 = _grads(True, dropout, mask_seed=8)
        assert not torch.equal(g1["transformer.wte.weight"], g2["transformer.wte.weight"])


def test_checkpointing_is_off_for_eval_and_generation():
    model = GPT(CFG).eval()
    model.activation_checkpointing = True
    x = torch.randint(0, CFG.vocab_size, (1, 8))
    ref = GPT(CFG).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():  # no grad: nothing to recompute, the plain path runs
        assert torch.equal(model(x)[0], ref(x)[0])
    out = generate(model, x, 4, temperature=0.0)  # the KV-cache path ignores checkpointing
    assert out.shape == (1, 12)


def _forward_net_bytes(model: GPT, x: torch.Tensor) -> int:
    """Bytes allocated and not freed by one training forward (what lives on into backward)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _, loss = model(x, x)
    net = sum(e.self_cpu_memory_usage for e in prof.key_averages())
    loss.backward()
    return net


def test_checkpointing_keeps_only_block_inputs():
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128)
    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (4, 128))
    full = _forward_net_bytes(model, x)
    model.activation_checkpointing = True
    kept = _forward_net_bytes(model, x)
    B, T, C, L = 4, 128, 128, 4
    # the difference is each block's 16 fp32 (B, T, C) tensors less its input, plus the attention stats
    expected = L * (B * T * (16 * C * 4 + 4 * 4) - B * T * C * 4)
    assert full - kept == pytest.approx(expected, rel=0.02)
