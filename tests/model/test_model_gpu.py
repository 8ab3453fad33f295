"""CUDA checks (skipped without a GPU): bf16 autocast (fused SDPA kernels) against fp32 CPU, cached decoding."""

from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig
from pipeline.tokenizer import VOCAB_SIZE

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def pair() -> tuple[GPT, GPT]:
    torch.manual_seed(0)
    cpu = GPT(GPTConfig.from_preset("tiny")).eval()
    gpu = GPT(GPTConfig.from_preset("tiny")).eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu.cuda()


def test_bf16_autocast_loss_matches_fp32_cpu(pair):
    cpu, gpu = pair
    g = torch.Generator().manual_seed(1)
    idx, targets = (torch.randint(0, VOCAB_SIZE, (4, 256), generator=g) for _ in range(2))
    _, want = cpu(idx, targets)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, got = gpu(idx.cuda(), targets.cuda())
    assert logits.dtype == torch.bfloat16 and got.dtype == torch.float32
    assert abs(got.item() - want.item()) < 0.02


def test_cached_greedy_equals_uncached_on_cuda(pair):
    _, gpu = pair
    idx = torch.randint(0, VOCAB_SIZE, (2, 9), generator=torch.Generator().manual_seed(3)).cuda()
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # a trainer test may have turned TF32 on
    try:
        a = gpu.generate(idx, 64, temperature=0, stop_at_eot=False, use_cache=True)
        b = gpu.generate(idx, 64, temperature=0, stop_at_eot=False, use_cache=False)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(a, b)
