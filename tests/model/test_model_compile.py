"""torch.compile: one graph on the training path (the chunked loss included), compiled forward+backward
equal eager, and no recompiles when training, evaluation and training again alternate (CPU)."""

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
    compiled = torch.compile(twin, fullgraph=True)  # a graph break is an error, not a silent split
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


@pytest.mark.slow
def test_train_eval_train_compiles_two_graphs_and_never_recompiles():
    """Train, then eval (no_grad, eval mode), then train again: one graph each for train and eval, and
    the second train phase (and repeated eval) hit the cache: ``error_on_recompile`` turns any
    recompile into an error there, and dynamo's own counters confirm."""
    from torch._dynamo.utils import counters

    torch.manual_seed(2)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=2, dropout=0.1))
    compiled = torch.compile(model, fullgraph=True)
    torch._dynamo.reset()
    counters.clear()
    try:

        def train_step(seed: int) -> None:
            model.train()
            _, loss = compiled(*batch(seed))
            loss.backward()

        def eval_step(seed: int) -> float:
            model.eval()
            with torch.no_grad():
                return compiled(*batch(seed))[1].item()

        train_step(0)
        train_step(1)
        eval_step(2)
        graphs_after_warmup = counters["stats"]["unique_graphs"]
        assert graphs_after_warmup == 2  # one for training, one for eval
        with torch._dynamo.config.patch(error_on_recompile=True):
            train_step(3)
            eval_step(4)
            train_step(5)
        assert counters["stats"]["unique_graphs"] == graphs_after_warmup
    finally:
        torch._dynamo.reset()
