"""torch.compile: one graph on the training path; compiled forward+backward equal eager (CPU)."""

from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig
from pipeline.tokenizer import VOCAB_SIZE


def batch(seed: int, T: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB_SIZE, (2, T), generator=g), torch.randint(
        0, VOCAB_SIZE, (2, T), generator=g
    )


def test_training_path_has_no_graph_breaks():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=2, dropout=0.1)).train()
    torch._dynamo.reset()
    try:
        explanation = torch._dynamo.explain(model)(*batch(0))
    finally:
        torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_forward_backward_matches_eager():
    torch.manual_seed(1)
    eager = GPT(GPTConfig.from_preset("tiny")).train()
    twin = GPT(GPTConfig.from_preset("tiny")).train()
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin)
    torch._dynamo.reset()
    try:
        for step in range(2):  # the second call reuses the compiled graph
            idx, targets = batch(step)
            _, want = eager(idx, targets)
            _, got = compiled(idx, targets)
            want.backward()
            got.backward()
            assert abs(got.item() - want.item()) < 1e-4
        for (name, a), b in zip(eager.named_parameters(), twin.parameters(), strict=True):
            assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5), name
    finally:
        torch._dynamo.reset()
