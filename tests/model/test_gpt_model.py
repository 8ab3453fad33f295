"""GPT module: config validation, GPT-2 parameter count, SDPA against an explicit reference, init, loss."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from model import GPT, PRESETS, GPTConfig
from model.gpt import CausalSelfAttention
from pipeline.tokenizer import VOCAB_SIZE


@pytest.fixture(scope="module")
def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny")).eval()


def reference_attention(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Explicit masked-softmax attention with the module's weights: no SDPA involved."""
    B, T, C = x.shape
    nh, hs = attn.n_head, C // attn.n_head
    qkv = x @ attn.c_attn.weight.T + attn.c_attn.bias
    q, k, v = (t.reshape(B, T, nh, hs).permute(0, 2, 1, 3) for t in qkv.split(C, dim=2))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    y = (weights @ v).permute(0, 2, 1, 3).reshape(B, T, C)
    return y @ attn.c_proj.weight.T + attn.c_proj.bias


def test_presets_and_padded_vocab():
    cfg = GPTConfig.from_preset("gpt2")
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 12, 768, 1024)
    assert cfg.vocab_size == VOCAB_SIZE == 50260
    assert cfg.padded_vocab_size == 50304 and cfg.padded_vocab_size % 64 == 0
    assert GPTConfig(pad_vocab_multiple=1).padded_vocab_size == VOCAB_SIZE
    assert set(PRESETS) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny"}
    assert GPTConfig.from_preset("tiny", dropout=0.1).dropout == 0.1
    cfg = GPTConfig.from_preset("gpt2-xl")
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(n_layer=0), "--n-layer"),
        (dict(n_embd=100, n_head=12), "--n-head"),
        (dict(dropout=1.0), "--dropout"),
        (dict(block_size=-4), "--block-size"),
        (dict(vocab_size=2.5), "vocab_size (GPTConfig field, model/config.py"),
        (dict(pad_vocab_multiple=0), "pad_vocab_multiple (GPTConfig field, model/config.py"),
        (dict(bias=1), "bias (GPTConfig field, model/config.py"),
        (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon (GPTConfig field, model/config.py"),
    ],
)
def test_config_errors_name_a_real_flag_or_the_field(kwargs, named):
    from trainer.config import build_parser

    with pytest.raises(ValueError) as e:
        GPTConfig(**kwargs)
    assert named in str(e.value)
    # every flag an error names is one that `python -m trainer` really has
    real = {o for a in build_parser()._actions for o in a.option_strings}
    assert set(re.findall(r"--[a-z][a-z0-9-]*", str(e.value))) <= real, str(e.value)


def test_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="gpt3"):
        GPTConfig.from_preset("gpt3")
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig.from_preset("gpt2", n_layers=3)
    with pytest.raises(ValueError, match="n_ctx"):
        GPTConfig.from_dict({**GPTConfig().to_dict(), "n_ctx": 1024})


def test_gpt2_param_count_matches_transformers():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        ours = GPT(GPTConfig.from_preset("gpt2", vocab_size=50257, pad_vocab_multiple=1))
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    hf_count = sum(p.numel() for p in hf.parameters())  # tied lm_head counted once
    assert ours.num_params(non_embedding=False) == hf_count
    assert round(hf_count / 1e6) == 124
    # nanoGPT's non-embedding count leaves out the position table only
    assert ours.num_params() == hf_count - 1024 * 768


def test_flops_per_token_is_llmc_formula():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2"))
    n = sum(p.numel() for p in model.parameters())
    assert model.flops_per_token() == 6 * n + 6 * 12 * 768 * 1024
    assert model.flops_per_token(256) - model.flops_per_token(128) == 6 * 12 * 768 * 128


def test_parameter_names_and_tied_head(tiny):
    names = set(tiny.state_dict())
    for n in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.3.ln_1.weight",
              "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
              "transformer.h.0.ln_2.bias", "transformer.h.0.mlp.c_fc.weight",
              "transformer.h.0.mlp.c_proj.weight", "transformer.ln_f.weight", "lm_head.weight"):  # fmt: skip
        assert n in names, n
    assert tiny.lm_head.weight is tiny.transformer.wte.weight


def test_init_is_gpt2s():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=8, n_embd=256))
    resid = 0.02 / math.sqrt(2 * 8)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.transformer.h[5].attn.c_proj.weight.std().item() == pytest.approx(resid, rel=0.03)
    assert model.transformer.h[7].mlp.c_proj.weight.std().item() == pytest.approx(resid, rel=0.03)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert all(float(b.detach().abs().max()) == 0 for n, b in model.named_parameters() if n.endswith(".bias")
               and ".ln_" not in n and "ln_f" not in n)  # fmt: skip
    assert torch.equal(model.transformer.ln_f.weight, torch.ones(256))


def test_sdpa_attention_equals_masked_softmax_reference(tiny):
    torch.manual_seed(1)
    attn = tiny.transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.bias.normal_(0, 0.5)  # non-zero biases so they are exercised too
        x = torch.randn(3, 50, tiny.config.n_embd)
        got = attn(x)
        want = reference_attention(attn, x)
        attn.c_attn.bias.zero_()
    assert (got - want).abs().max().item() < 1e-5


def test_forward_shapes_and_loss_at_init_is_log_vocab(tiny):
    torch.manual_seed(2)
    idx = torch.randint(0, VOCAB_SIZE, (4, 128))
    targets = torch.randint(0, VOCAB_SIZE, (4, 128))  # independent of idx: no signal to exploit
    logits, _ = tiny(idx)
    no_logits, loss = tiny(idx, targets)
    assert logits.shape == (4, 128, tiny.config.padded_vocab_size)
    assert no_logits is None  # the loss path never builds the logits
    assert loss.dtype == torch.float32
    torch.testing.assert_close(
        loss, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1)), rtol=1e-6, atol=0
    )
    # At init ln_f is the identity on a unit-variance vector h (|h|^2 = C) and every wte row is
    # N(0, 0.02^2 I), so each logit is N(0, sigma^2) with sigma^2 = 0.02^2 * C. For V such iid
    # logits E[logsumexp] = ln V + sigma^2/2 and the target logit averages 0: that is the loss.
    C, V = tiny.config.n_embd, tiny.config.padded_vocab_size
    expected = math.log(V) + 0.02**2 * C / 2
    assert loss.item() == pytest.approx(expected, abs=0.03)
    assert abs(loss.item() - math.log(VOCAB_SIZE)) < 0.1
    _, no_loss = tiny(idx)
    assert no_loss is None


def test_ignore_index_minus_one(tiny):
    idx = torch.randint(0, VOCAB_SIZE, (2, 16))
    targets = torch.randint(0, VOCAB_SIZE, (2, 16))
    logits, _ = tiny(idx)
    masked = targets.clone()
    masked[:, :8] = -1
    _, loss = tiny(idx, masked)
    want = F.cross_entropy(logits[:, 8:].reshape(-1, logits.size(-1)), targets[:, 8:].reshape(-1))
    assert torch.allclose(loss, want, atol=1e-6)


def test_too_long_input_is_a_clear_error(tiny):
    idx = torch.zeros(1, tiny.config.block_size + 1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"sequence length 257 exceeds .* block_size 256"):
        tiny(idx)
    with pytest.raises(ValueError, match="batch, time"):
        tiny(torch.zeros(5, dtype=torch.long))


def test_backward_reaches_every_parameter():
    torch.manual_seed(3)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=2, dropout=0.1))
    idx = torch.randint(0, VOCAB_SIZE, (2, 32))
    _, loss = model(idx, torch.randint(0, VOCAB_SIZE, (2, 32)))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # padded rows only ever get pushed down: their gradient is positive softmax mass
    padded_grad = model.lm_head.weight.grad[VOCAB_SIZE:]
    assert padded_grad.abs().sum() > 0
    model.train()
    a, _ = model(idx)
    b, _ = model(idx)
    assert not torch.equal(a, b)  # dropout active in train mode
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
