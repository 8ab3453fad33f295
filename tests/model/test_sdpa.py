"""The attention-kernel choice (model/sdpa.py): the preference per GPU generation, and on CPU that every
choice it can make leaves the model's output equal to plain SDPA's (the math path is never broken)."""

from __future__ import annotations

import pytest
import torch

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


@pytest.mark.parametrize("choice", CHOICES)
def test_chosen_context_gives_plain_sdpa_output(choice: str):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=2)).eval()
    cfg = model.config
    idx = torch.randint(0, VOCAB_SIZE, (2, 48), generator=torch.Generator().manual_seed(1))
    try:
        name = choose_sdpa_backend(choice, torch.device("cpu"), torch.float32, cfg.n_head, cfg.head_dim, 48)
    except ValueError:
        pytest.skip(f"{choice} cannot run on this CPU build of torch")  # e.g. cudnn, efficient
    with torch.no_grad():
        want, _ = model(idx)  # plain SDPA, torch's own choice
        with sdpa_context(name):
            got, _ = model(idx)
            with sdpa_context("default"):  # what generation uses inside a restricted region
                again, _ = model(idx)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, want, rtol=1e-5, atol=1e-5)
