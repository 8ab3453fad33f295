"""The attention-kernel choice (model/sdpa.py): the preference per GPU generation, and on CPU that every
choice it can make gives the model's output of an independent attention: softmax(QK^T/sqrt(d) + causal
mask) V written out in float64 (so the math path, and torch's own "auto" choice, are never broken)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from model.sdpa import BACKENDS, CHOICES, choose_sdpa_backend, preferred_backends, sdpa_context
from pipeline.tokenizer import VOCAB_SIZE


def test_preference_puts_cudnn_first_on_hopper_and_flash_on_ampere():
    assert preferred_backends((9, 0))[:2] == ["cudnn", "flash"]  # H100 / H200
    assert preferred_backends((10, 0))[0] == "cudnn"  # Blackwell
    assert preferred_backends((8, 0))[0] == "flash" and preferred_backends((8, 9))[0] == "flash"  # A100, L40S
    assert preferred_backends((7, 5)) == ["efficient"]  # T4: no flash kernel
    for cap in ((7, 0), (8, 6), (9, 0)):
        assert set(preferred_backends(cap)) <= set(BACKENDS)


def test_cpu_choices_and_bad_names():
    cpu = torch.device("cpu")
    assert choose_sdpa_backend("auto", cpu, torch.float32, 4, 32, 64) == "default"
    assert choose_sdpa_backend("math", cpu, torch.float32, 4, 32, 64) == "math"
    with pytest.raises(ValueError, match="--sdpa-backend 'bogus'"):
        choose_sdpa_backend("bogus", cpu, torch.float32, 4, 32, 64)
    with pytest.raises(ValueError, match="--sdpa-backend cudnn: this kernel cannot run"):
        choose_sdpa_backend("cudnn", cpu, torch.float32, 4, 32, 64)  # a CUDA-only kernel


def explicit_causal_attention(q, k, v, dropout_p=0.0, is_causal=False):
    """softmax(Q K^T / sqrt(d) + causal mask) V, written out: no SDPA kernel involved."""
    assert is_causal and dropout_p == 0.0  # what the model's uncached eval forward asks for
    T, d = q.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)  # key after query: masked
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v  # (B, nh, T, hs)


def reference_logits(model: GPT, idx: torch.Tensor, monkeypatch) -> torch.Tensor:
    """The model's logits in float64 with the explicit attention in place of every SDPA call."""
    calls = []

    def explicit(*args, **kwargs):
        calls.append(1)
        return explicit_causal_attention(*args, **kwargs)

    ref = copy.deepcopy(model).double()
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(F, "scaled_dot_product_attention", explicit)
        logits, _ = ref(idx)
    assert len(calls) == model.config.n_layer  # the reference really went through the explicit path
    return logits


@pytest.mark.parametrize("choice", CHOICES)
def test_chosen_context_gives_the_explicit_attention_output(choice: str, monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=2)).eval()
    cfg = model.config
    idx = torch.randint(0, VOCAB_SIZE, (2, 48), generator=torch.Generator().manual_seed(1))
    try:
        name = choose_sdpa_backend(choice, torch.device("cpu"), torch.float32, cfg.n_head, cfg.head_dim, 48)
    except ValueError:
        pytest.skip(f"{choice} cannot run on this CPU build of torch")  # e.g. cudnn, efficient
    want = reference_logits(model, idx, monkeypatch).float()
    with torch.no_grad(), sdpa_context(name):
        got, _ = model(idx)
        with sdpa_context("default"):  # what generation uses inside a restricted region
            again, _ = model(idx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, want, rtol=1e-4, atol=1e-4)


def test_the_reference_catches_a_broken_attention(monkeypatch):
    """The check above can fail: an attention that sees the future differs from the reference."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=2)).eval()
    idx = torch.randint(0, VOCAB_SIZE, (2, 48), generator=torch.Generator().manual_seed(1))
    want = reference_logits(model, idx, monkeypatch).float()
    sdpa = F.scaled_dot_product_attention
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: sdpa(q, k, v))  # not causal
        broken, _ = model(idx)
    assert not torch.allclose(broken, want, rtol=1e-4, atol=1e-4)
