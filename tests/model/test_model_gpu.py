"""CUDA checks (skipped without a GPU): bf16 autocast (fused SDPA kernels) against fp32 CPU, cached
decoding."""

from __future__ import annotations

import pytest
import torch

from model import GPT, GPTConfig
from model.generate import generate
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
        logits, _ = gpu(idx.cuda())
        no_logits, got = gpu(idx.cuda(), targets.cuda())
    assert logits.dtype == torch.bfloat16 and got.dtype == torch.float32 and no_logits is None
    assert abs(got.item() - want.item()) < 0.02


def test_chunked_loss_matches_full_logits_under_bf16_on_cuda():
    """The fused chunked loss against torch's cross-entropy over the full bf16 logits, loss and grads."""
    from model.loss import linear_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(4)
    n, c, v = 4096, 256, 50304
    h = torch.randn(n, c, device="cuda", generator=g, requires_grad=True)
    w = (0.02 * torch.randn(v, c, device="cuda", generator=g)).requires_grad_()
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    t[::5] = -1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = torch.nn.functional.cross_entropy((h @ w.t()).float(), t, ignore_index=-1)
    want.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, t, chunk_rows=1000)
    got.backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)
    # both sides round their matmuls to bf16; the chunked side sums its weight-gradient chunks in fp32
    scale_h, scale_w = gh.abs().max().item(), gw.abs().max().item()
    torch.testing.assert_close(h.grad, gh, rtol=2e-2, atol=1e-2 * scale_h)
    torch.testing.assert_close(w.grad, gw, rtol=2e-2, atol=1e-2 * scale_w)


def test_cached_greedy_equals_uncached_on_cuda(pair):
    _, gpu = pair
    idx = torch.randint(0, VOCAB_SIZE, (2, 9), generator=torch.Generator().manual_seed(3)).cuda()
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # a trainer test may have turned TF32 on
    try:
        a = generate(gpu, idx, 64, temperature=0, stop_at_eot=False, use_cache=True)
        b = generate(gpu, idx, 64, temperature=0, stop_at_eot=False, use_cache=False)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- CUDA-graph decoding


def _stream(model: GPT, idx: torch.Tensor, n: int, mode: str, use_cache: bool = True, **kw) -> torch.Tensor:
    from model.generate import generate_stream

    kw = {"temperature": 0, "stop_at_eot": False, **kw}
    new = list(generate_stream(model, idx, n, use_cache=use_cache, cache_mode=mode, **kw))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1)


@pytest.fixture()
def exact_fp32():
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # a trainer test may have turned TF32 on
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("prompt_len", [1, 9])
def test_cuda_graph_greedy_equals_uncached_and_static(pair, exact_fp32, prompt_len):
    _, gpu = pair
    g = torch.Generator().manual_seed(prompt_len)
    idx = torch.randint(0, VOCAB_SIZE, (2, prompt_len), generator=g).cuda()
    graph = _stream(gpu, idx, 64, "graph")
    assert torch.equal(graph, _stream(gpu, idx, 64, "auto", use_cache=False))
    assert torch.equal(graph, _stream(gpu, idx, 64, "static"))  # the same kernels, eager
    assert torch.equal(generate(gpu, idx, 64, temperature=0, stop_at_eot=False), graph)  # auto = graph


def test_cuda_graph_past_the_context_window(exact_fp32):
    """Window jumps re-prefill the same buffers eagerly; the captured step keeps working after them."""
    torch.manual_seed(1)
    short = GPT(GPTConfig.from_preset("tiny", n_layer=2, block_size=32)).cuda().eval()
    idx = torch.randint(0, VOCAB_SIZE, (1, 40), generator=torch.Generator().manual_seed(2)).cuda()
    assert torch.equal(_stream(short, idx, 70, "graph"), _stream(short, idx, 70, "auto", use_cache=False))


def test_cuda_graph_sampling_matches_eager_draw_for_draw(pair, exact_fp32):
    _, gpu = pair
    idx = torch.randint(0, VOCAB_SIZE, (2, 5), generator=torch.Generator().manual_seed(4)).cuda()
    kw = dict(temperature=0.9, top_k=40, top_p=0.9)
    runs = [_stream(gpu, idx, 40, mode, generator=torch.Generator("cuda").manual_seed(7), **kw)
            for mode in ("graph", "static", "graph")]  # fmt: skip
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def test_cuda_graph_under_bf16_autocast_equals_eager_static(pair):
    """Captured with autocast's weight cache off (it would free casts the graph reads): the replayed
    bf16 kernels must give the eager static step's tokens exactly."""
    _, gpu = pair
    idx = torch.randint(0, VOCAB_SIZE, (2, 9), generator=torch.Generator().manual_seed(5)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        graph = _stream(gpu, idx, 48, "graph")
        eager = _stream(gpu, idx, 48, "static")
    assert torch.equal(graph, eager)


def test_cuda_graph_capture_while_the_sampler_prefetches(pair, tmp_path):
    """The trainer samples text while the sampler's thread keeps copying batches to the GPU: the
    capture (thread_local error mode) must neither fail nor change the tokens."""
    import numpy as np

    from pipeline.sampler import TokenSampler
    from tests.pipeline.test_sampler import T, doc_lengths, write_dataset

    _, gpu = pair
    root = tmp_path / "shards"
    rng = np.random.default_rng(0)
    write_dataset(
        root, {"train": [doc_lengths(n, rng) for n in (6000, 9000)], "val": [doc_lengths(3000, rng)]}
    )
    idx = torch.randint(0, VOCAB_SIZE, (1, 7), generator=torch.Generator().manual_seed(6)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = _stream(gpu, idx, 32, "static")
    with TokenSampler(root, device="cuda", batch_size=8, seq_len=T, prefetch=4) as s:
        it = s.batches(0)
        for _ in range(3):
            next(it)  # the producer is now busy refilling the queue
            with torch.autocast("cuda", dtype=torch.bfloat16):
                got = _stream(gpu, idx, 32, "graph")
            assert torch.equal(got, want)
        it.close()


def test_sdpa_auto_choice_on_cuda_is_a_fused_kernel_that_matches_math():
    """``auto`` picks a fused kernel from the preference of this GPU generation (never the math
    fallback on a GPU torch has fused kernels for), and that kernel's output equals the math path's."""
    import torch.nn.functional as F

    from model.sdpa import choose_sdpa_backend, preferred_backends, sdpa_context

    dev = torch.device("cuda")
    name = choose_sdpa_backend("auto", dev, torch.bfloat16, 12, 64, 1024)
    assert name in preferred_backends(torch.cuda.get_device_capability(dev))
    g = torch.Generator(device="cuda").manual_seed(5)
    q, k, v = (
        torch.randn(2, 12, 1024, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)
    )
    with sdpa_context(name):
        got = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with sdpa_context("math"):
        want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
