"""AdamW groups (decay on 2-D weights only, tied weight once) and the warmup + cosine schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from model.config import GPTConfig
from model.gpt import GPT
from trainer.config import TrainConfig
from trainer.optim import cooldown_start, lr_at, make_optimizer, param_groups, param_names


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", n_layer=2, n_head=2, n_embd=32))


def test_decay_only_on_matrices(model: GPT):
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = param_names(model)
    named = dict(model.named_parameters())
    assert len(names) == len(set(names)) == len(named)  # every parameter once (wte/lm_head tied)
    for name in names[: len(decay["params"])]:
        assert named[name].dim() == 2
    for name in names[len(decay["params"]) :]:
        assert named[name].dim() == 1
        assert name.endswith(".bias") or ".ln_" in name or name.startswith("transformer.ln_f")
    assert "transformer.wte.weight" in names[: len(decay["params"])]
    assert model.lm_head.weight is model.transformer.wte.weight
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == sum(p.numel() for p in model.parameters())


def test_optimizer_is_adamw_with_config(model: GPT):
    cfg = TrainConfig(beta1=0.8, beta2=0.9, eps=1e-6)
    opt = make_optimizer(model, cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6
    assert opt.defaults.get("fused")  # fused on CPU too: the loop's device-side skip needs found_inf


def test_fused_adamw_found_inf_refuses_the_whole_update(model: GPT):
    """The loop's device-side skip: with ``found_inf`` = 1 weights, moments and the step count stay put;
    with 0 the update equals a plain (unfused, for-loop) AdamW's."""
    torch.manual_seed(1)
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    ref = GPT(model.config)
    ref.load_state_dict(model.state_dict())
    opt, ref_opt = (
        make_optimizer(model, cfg, "cpu"),
        torch.optim.AdamW(
            param_groups(ref, cfg.weight_decay),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            foreach=False,
        ),
    )
    found_inf = torch.zeros(())
    opt.found_inf = found_inf
    idx = torch.randint(0, 50000, (2, 16))
    for m in (model, ref):
        m(idx, idx)[1].backward()
    for o in (opt, ref_opt):
        for g in o.param_groups:
            g["lr"] = cfg.lr
    opt.step()
    ref_opt.step()
    for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    found_inf.fill_(1.0)
    opt.step()  # same gradients again, but refused
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    for p, m in zip(model.parameters(), moments, strict=True):
        assert torch.equal(opt.state[p]["exp_avg"], m) and opt.state[p]["step"].item() == 1
    opt.zero_grad()


def test_schedule_warmup_cosine_floor():
    cfg = TrainConfig(lr=6e-4, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    # linear warmup reaching the peak at the last warmup step
    assert [lr_at(s, cfg) for s in range(3)] == pytest.approx([6e-5, 1.2e-4, 1.8e-4])
    assert lr_at(9, cfg) == pytest.approx(6e-4)
    assert lr_at(10, cfg) == pytest.approx(6e-4)  # cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx((6e-4 + 6e-5) / 2)  # half way: mean of peak and floor
    assert lr_at(35, cfg) == pytest.approx(6e-5 + 0.5 * (1 + math.cos(math.pi / 4)) * 5.4e-4)
    assert lr_at(110, cfg) == pytest.approx(6e-5) and lr_at(10_000, cfg) == pytest.approx(6e-5)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))  # monotone decay


def test_no_warmup():
    cfg = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=100)
    assert lr_at(0, cfg) == pytest.approx(1e-3)


def test_wsd_lr_is_a_pure_function_of_the_step():
    """Warmup, constant, then linear to the floor over the last --cooldown-frac; extending --max-steps
    leaves every step before the old cooldown unchanged (what a run extended from such a checkpoint needs)."""
    import dataclasses

    cfg = TrainConfig(
        lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, max_steps=110, schedule="wsd", cooldown_frac=0.2
    )
    assert cooldown_start(cfg) == 88
    assert [lr_at(s, cfg) for s in range(3)] == pytest.approx([1e-4, 2e-4, 3e-4])
    assert all(lr_at(s, cfg) == 1e-3 for s in range(9, 89))  # the peak, held until the cooldown
    assert lr_at(99, cfg) == pytest.approx(1e-3 - 11 / 22 * 9e-4)  # half way down the line
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(10_000, cfg) == pytest.approx(1e-4)
    steps = list(range(88, 111))
    drops = [lr_at(a, cfg) - lr_at(b, cfg) for a, b in itertools.pairwise(steps)]
    assert drops == pytest.approx([9e-4 / 22] * 22)  # linear
    forward = [lr_at(s, cfg) for s in range(120)]
    assert [lr_at(s, cfg) for s in reversed(range(120))][::-1] == forward  # no hidden state
    longer = dataclasses.replace(cfg, max_steps=220)
    assert [lr_at(s, longer) for s in range(88)] == forward[:88]
    assert cooldown_start(longer) == 176 and lr_at(150, longer) == 1e-3
    assert lr_at(50, dataclasses.replace(cfg, schedule="cosine")) < 1e-3  # cosine decays from the warmup on
