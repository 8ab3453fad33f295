"""KV-cached generation: equal to uncached, cache attention equal to the full causal pass, samplers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from model.generate import (
    KVCache,
    context_start,
    generate,
    generate_stream,
    next_token_probs,
    resolve_cache_mode,
    sample_next,
    window_start,
)
from model.kvcache import StaticKVCache
from pipeline.tokenizer import EOT_ID, PAD_ID, VOCAB_SIZE


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny")).eval()


@pytest.fixture(scope="module")
def short() -> GPT:
    """A model with a 32-token context, so generation overflows the window quickly."""
    torch.manual_seed(1)
    return GPT(GPTConfig.from_preset("tiny", n_layer=2, block_size=32)).eval()


def greedy(model: GPT, idx: torch.Tensor, n: int, use_cache: bool) -> torch.Tensor:
    return generate(model, idx, n, temperature=0, stop_at_eot=False, use_cache=use_cache)


@pytest.mark.parametrize("prompt_len", [1, 17])
def test_cached_greedy_equals_uncached(tiny, prompt_len):
    torch.manual_seed(prompt_len)
    idx = torch.randint(0, VOCAB_SIZE, (2, prompt_len))
    cached = greedy(tiny, idx, 64, use_cache=True)
    uncached = greedy(tiny, idx, 64, use_cache=False)
    assert cached.shape == (2, prompt_len + 64)
    assert torch.equal(cached[:, :prompt_len], idx)
    assert torch.equal(cached, uncached)


def test_cached_equals_uncached_past_the_context_window(short):
    torch.manual_seed(2)
    idx = torch.randint(0, VOCAB_SIZE, (1, 40))  # prompt already longer than block_size 32
    cached = greedy(short, idx, 70, use_cache=True)
    assert torch.equal(cached, greedy(short, idx, 70, use_cache=False))
    assert cached.shape == (1, 110)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_long_prompt_conditions_on_its_last_block_size_tokens(short, use_cache):
    """The first new token sees the whole context (the prompt's last 32 ids), not a half-block-jump window."""
    torch.manual_seed(12)
    idx = torch.randint(0, VOCAB_SIZE, (2, 45))
    with torch.no_grad():
        logits, _ = short(idx[:, -32:])  # one plain forward pass: the reference
    want = logits[:, -1, :VOCAB_SIZE].argmax(-1)
    assert torch.equal(greedy(short, idx, 1, use_cache=use_cache)[:, -1], want)
    assert [window_start(n, 45, 32) for n in (45, 46, 61, 62)] == [13, 29, 29, 45]


def test_context_start_policy():
    assert [context_start(n, 8) for n in (1, 8, 9, 12, 13, 16, 17)] == [0, 0, 4, 4, 8, 8, 12]
    for n in range(1, 100):
        s = context_start(n, 8)
        assert n - s <= 8 and s % 4 == 0 and (s == 0 or n - (s - 4) > 8)


def test_kv_cache_attention_equals_full_causal_pass(tiny):
    """Prefill, a multi-token chunk (explicit offset mask) and single-token steps through the cache
    must give the same hidden states as one causal pass over the whole sequence."""
    torch.manual_seed(3)
    idx = torch.randint(0, VOCAB_SIZE, (2, 30))
    with torch.no_grad():
        full = tiny.hidden_states(idx)
        cache = KVCache(tiny.config.n_layer, 30)
        parts = [tiny.hidden_states(idx[:, :10], cache), tiny.hidden_states(idx[:, 10:25], cache)]
        parts += [tiny.hidden_states(idx[:, t : t + 1], cache) for t in range(25, 30)]
    assert cache.pos == 30
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="holds 30 positions"):
        tiny.hidden_states(idx[:, :1], cache)


def test_top_k_1_and_tiny_top_p_are_greedy(tiny):
    idx = torch.randint(0, VOCAB_SIZE, (2, 5), generator=torch.Generator().manual_seed(4))
    want = greedy(tiny, idx, 20, use_cache=True)
    g = torch.Generator().manual_seed(123)
    got_k = generate(tiny, idx, 20, temperature=1.5, top_k=1, stop_at_eot=False, generator=g)
    got_p = generate(tiny, idx, 20, temperature=1.5, top_p=1e-6, stop_at_eot=False, generator=g)
    assert torch.equal(got_k, want) and torch.equal(got_p, want)


def test_sampling_is_reproducible_with_a_generator(tiny):
    idx = torch.zeros(1, 1, dtype=torch.long)
    runs = [generate(tiny, idx, 30, temperature=1.0, stop_at_eot=False,
                          generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]  # fmt: skip
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def _rigged(model: GPT, rows: slice | int) -> GPT:
    """A copy whose logits are dominated by ``rows``: ln_f outputs a constant b and wte[rows] = 100*b."""
    torch.manual_seed(5)
    rigged = GPT(model.config).eval()
    rigged.load_state_dict(model.state_dict())
    with torch.no_grad():
        b = torch.randn(model.config.n_embd)
        rigged.transformer.ln_f.weight.zero_()
        rigged.transformer.ln_f.bias.copy_(b)
        rigged.transformer.wte.weight[rows] = 100 * b
    return rigged


def test_padded_ids_are_never_produced(tiny):
    rigged = _rigged(tiny, slice(VOCAB_SIZE, None))  # every padded row is the best logit by far
    idx = torch.zeros(4, 1, dtype=torch.long)
    for kwargs in (dict(temperature=0), dict(temperature=1.0), dict(temperature=5.0, top_k=50, top_p=0.5)):
        out = generate(
            rigged, idx, 10, stop_at_eot=False, generator=torch.Generator().manual_seed(0), **kwargs
        )
        assert int(out.max()) < VOCAB_SIZE, kwargs


def test_stop_at_eot(tiny):
    rigged = _rigged(tiny, EOT_ID)
    idx = torch.zeros(2, 3, dtype=torch.long)
    out = generate(rigged, idx, 10, temperature=0)
    assert out.tolist() == [[0, 0, 0, EOT_ID]] * 2
    assert generate(rigged, idx, 10, temperature=0, stop_at_eot=False).shape == (2, 13)


def test_finished_rows_are_padded():
    """Row 0 ends at once, row 1 never: row 0 then yields <|padding|> until row 1 is done.

    The blocks' outputs are zeroed, so h = ln_f(wte[last token]) and the logits are wte @ h:
    token A (embedding u) predicts EOT (row 100u), token B (row 100v, v orthogonal to u) predicts B.
    """
    model = GPT(GPTConfig.from_preset("tiny", n_layer=1)).eval()
    A, B = 11, 22
    u, v = torch.zeros(model.config.n_embd), torch.zeros(model.config.n_embd)
    u[0], u[1], v[2], v[3] = 1.0, -1.0, 1.0, -1.0  # zero-mean, orthogonal: LayerNorm keeps them
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight[A] = u
        model.transformer.wte.weight[EOT_ID] = 100 * u
        model.transformer.wte.weight[B] = 100 * v
    out = generate(model, torch.tensor([[A], [B]]), 5, temperature=0)
    assert out.tolist() == [[A, EOT_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID], [B] * 6]


def test_next_token_probs_against_explicit_formulas():
    torch.manual_seed(7)
    V, V_padded = 10, 16
    logits = torch.randn(3, V_padded)
    probs = next_token_probs(logits, V, temperature=0.7)
    assert torch.allclose(probs[:, :V], F.softmax(logits[:, :V] / 0.7, dim=-1))
    assert float(probs[:, V:].sum()) == 0.0
    # top-k: the k likeliest real ids keep their relative odds
    probs = next_token_probs(logits, V, temperature=1.0, top_k=3)
    for row, lg in zip(probs, logits[:, :V], strict=True):
        keep = lg.topk(3).indices
        assert set(row.nonzero().flatten().tolist()) == set(keep.tolist())
        assert torch.allclose(row[keep], F.softmax(lg[keep], dim=-1))
    # top-p: smallest prefix (by probability) whose mass reaches p
    full = F.softmax(logits[:, :V], dim=-1)
    probs = next_token_probs(logits, V, temperature=1.0, top_p=0.6)
    for row, p in zip(probs, full, strict=True):
        order = p.argsort(descending=True)
        n = int((p[order].cumsum(0) < 0.6).sum()) + 1
        assert set(row.nonzero().flatten().tolist()) == set(order[:n].tolist())
        assert torch.allclose(row[order[:n]], p[order[:n]] / p[order[:n]].sum())
    assert torch.equal(sample_next(logits, V, temperature=0), logits[:, :V].argmax(-1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
    ],
)
def test_bad_sampling_arguments(tiny, kwargs, match):
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(tiny, torch.zeros(1, 1, dtype=torch.long), **args)


def test_generate_restores_training_mode(tiny):
    tiny.train()
    try:
        generate(tiny, torch.zeros(1, 1, dtype=torch.long), 2)
        assert tiny.training
    finally:
        tiny.eval()
    assert generate(tiny, torch.zeros(1, 2, dtype=torch.long), 0).shape == (1, 2)


def test_bad_prompts_fail_at_call_time(tiny):
    with pytest.raises(ValueError, match=r"\[0, 50260\)"):
        generate_stream(tiny, torch.tensor([[5, VOCAB_SIZE]]), 3)  # no iteration needed
    with pytest.raises(ValueError, match="batch, time"):
        generate(tiny, torch.zeros(3, dtype=torch.long), 3)


# ---------------------------------------------------------------------------- static cache (CUDA-graph ready)


def stream(model: GPT, idx: torch.Tensor, n: int, mode: str, **kw) -> torch.Tensor:
    kw = {"temperature": 0, "stop_at_eot": False, **kw}
    return torch.cat([idx, torch.stack(list(generate_stream(model, idx, n, cache_mode=mode, **kw)), 1)], 1)


@pytest.mark.parametrize("prompt_len", [1, 17])
def test_static_cache_greedy_equals_uncached(tiny, prompt_len):
    torch.manual_seed(prompt_len)
    idx = torch.randint(0, VOCAB_SIZE, (2, prompt_len))
    assert torch.equal(stream(tiny, idx, 64, "static"), greedy(tiny, idx, 64, use_cache=False))


def test_static_cache_past_the_context_window(short):
    torch.manual_seed(2)
    idx = torch.randint(0, VOCAB_SIZE, (1, 40))  # re-prefills every 16 tokens into the same buffers
    assert torch.equal(stream(short, idx, 70, "static"), greedy(short, idx, 70, use_cache=False))


def test_static_decode_step_reads_its_position_from_the_device(tiny):
    """What a CUDA graph replays: the decode step's kernels must not depend on host values. Freeze
    the host count (a replay runs no Python) and the step must still land each token at the right
    position, i.e. match one causal pass over the whole sequence."""
    torch.manual_seed(8)
    idx = torch.randint(0, VOCAB_SIZE, (2, 20))
    with torch.no_grad():
        full = tiny.hidden_states(idx)
        cache = StaticKVCache(tiny.config.n_layer, 24)
        parts = [tiny.hidden_states(idx[:, :12], cache)]
        frozen = cache.pos
        for t in range(12, 20):
            parts.append(tiny.hidden_states(idx[:, t : t + 1], cache))
            cache.pos = frozen  # as after a replay: only the device position moved
    assert int(cache.pos_t) == 20
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-5
    # the unwritten tail of the buffer is masked out: filling it with huge values changes nothing
    with torch.no_grad():
        cache.pos = 20
        want = tiny.hidden_states(idx[:, -1:], cache)
        for buf in (*cache.k, *cache.v):
            buf[:, :, 21:] = 1e4
        cache.pos = 20
        cache.pos_t.fill_(20)
        assert torch.equal(tiny.hidden_states(idx[:, -1:], cache), want)


def test_static_cache_sampling_matches_the_dynamic_cache(tiny):
    """Sampling happens outside the cache: same generator seed, same draws, in every mode."""
    idx = torch.randint(0, VOCAB_SIZE, (2, 5), generator=torch.Generator().manual_seed(9))
    kw = dict(temperature=0.9, top_k=40, top_p=0.9)
    runs = [stream(tiny, idx, 30, mode, generator=torch.Generator().manual_seed(3), **kw)
            for mode in ("dynamic", "static")]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(stream(tiny, idx, 20, "static", top_k=1, temperature=1.5), greedy(tiny, idx, 20, True))


def test_cache_mode_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_cache_mode("auto", True, cpu) == "dynamic"
    assert resolve_cache_mode("auto", True, cuda) == "graph"
    assert resolve_cache_mode("static", False, cuda) == "none"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_cache_mode("graph", True, cpu)
    with pytest.raises(ValueError, match="cache_mode must be one of"):
        resolve_cache_mode("fast", True, cpu)


def test_graph_mode_bookkeeping_with_an_emulated_cuda_graph(short, monkeypatch):
    """CUDAGraphStep's host-side logic on CPU: torch.cuda's graph API is replaced by an emulation
    with CUDA-graph semantics (capture runs the Python but leaves no effect on the data; a replay
    re-runs the captured kernels without any Python, so the host position stays put). Warm-up undo,
    capture, per-token replay and the re-prefills after window jumps must give the uncached tokens."""
    import contextlib

    from model import generate as gen
    from model.kvcache import CUDAGraphStep

    caches: list[StaticKVCache] = []
    steps: list[CUDAGraphStep] = []

    class Graph:
        def replay(self):
            step = steps[-1]
            pos = step.cache.pos
            step.logits.copy_(step._forward())  # the kernels, with the host count frozen
            step.cache.pos = pos

    @contextlib.contextmanager
    def capture(graph, capture_error_mode):
        assert capture_error_mode == "thread_local"
        cache = caches[-1]
        saved = [t.clone() for t in (cache.pos_t, *cache.k, *cache.v)]
        yield
        for t, old in zip((cache.pos_t, *cache.k, *cache.v), saved, strict=True):
            t.copy_(old)  # capturing launches nothing

    class Stream:
        def __init__(self, *a):
            pass

        def wait_stream(self, other):
            pass

    class Recorded(StaticKVCache):
        def __init__(self, *a):
            super().__init__(*a)
            caches.append(self)

    class RecordedStep(CUDAGraphStep):
        def __init__(self, *a):
            steps.append(self)
            super().__init__(*a)

    monkeypatch.setattr(gen, "StaticKVCache", Recorded)
    monkeypatch.setattr(gen, "CUDAGraphStep", RecordedStep)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    torch.manual_seed(2)
    idx = torch.randint(0, VOCAB_SIZE, (2, 20))  # block 32: the window jumps at 33, 49, ...
    with torch.no_grad():
        out = list(gen._stream(short, idx, 60, 0, None, None, False, "graph", None))
    assert len(steps) == 1 and len(caches) == 1  # one capture, kept across the re-prefills
    assert torch.equal(torch.cat([idx, torch.stack(out, 1)], 1), greedy(short, idx, 60, use_cache=False))
