"""The memory plan (``trainer.memplan``) against what torch really holds: the parameter count against
the model's, the activation estimate against the bytes autograd saves (``saved_tensors_hooks``) on CPU in
fp32 and bf16 autocast, and the checkpointed estimate against the profiler's net forward allocation.
The CUDA peak (``max_memory_allocated``) check is the gpu-marked test in test_train_smallgpu_gpu.py."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from model.config import GPTConfig
from model.gpt import GPT
from trainer.memplan import make_plan, saved_tensor_bytes

SHAPES = [  # (n_layer, n_head, n_embd, T, B)
    (2, 4, 64, 128, 2),
    (4, 4, 128, 64, 4),
]


def _model(L: int, nh: int, C: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=L, n_head=nh, n_embd=C, block_size=128))


def _batch(cfg: GPTConfig, B: int, T: int) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model", ["tiny", "gpt2", "gpt2-medium"])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_is_the_models(model: str, bias: bool):
    cfg = GPTConfig.from_preset(model, bias=bias)
    with torch.device("meta"):  # no memory: only the count
        n = GPT(cfg).num_params(non_embedding=False)
    assert make_plan(cfg, 64).n_params == n


def test_optimizer_state_adamw_two_moments_muon_one():
    cfg = GPTConfig.from_preset("gpt2")
    adamw = make_plan(cfg, 1024, optimizer="adamw")
    muon = make_plan(cfg, 1024, optimizer="muon")
    assert adamw.optimizer == 2 * adamw.params
    C, L = cfg.n_embd, cfg.n_layer
    block_2d = L * 12 * C * C
    assert muon.optimizer == 4 * block_2d + 8 * (muon.n_params - block_2d)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_activation_estimate_matches_the_saved_tensors(shape, precision: str):
    L, nh, C, T, B = shape
    model = _model(L, nh, C)
    x = _batch(model.config, B, T)
    amp = precision == "bf16"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            _, loss = model(x, x)
        loss.backward()

    measured = saved_tensor_bytes(step, exclude=model.parameters())
    plan = make_plan(model.config, T, precision)
    planned = plan.activations(B, checkpointing=False) + plan.loss_saved
    if amp:  # autocast's low-precision copies of the blocks' matmul weights are saved tensors too
        planned += 2 * L * 12 * C * C
    assert measured == pytest.approx(planned, rel=0.02)


def test_checkpointed_estimate_matches_the_net_forward_allocation():
    L, nh, C, T, B = SHAPES[1]
    model = _model(L, nh, C)
    model.activation_checkpointing = True
    x = _batch(model.config, B, T)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _, loss = model(x, x)
    kept = sum(e.self_cpu_memory_usage for e in prof.key_averages())  # allocated, not freed, by the forward
    loss.backward()
    plan = make_plan(model.config, T)
    assert kept == pytest.approx(B * plan.act_per_window_ckpt + plan.loss_saved, rel=0.02)


def test_plan_grows_with_the_micro_batch_and_checkpointing_saves():
    plan = make_plan(GPTConfig.from_preset("gpt2"), 1024, "bf16", compiled=True)
    assert plan.peak(16, False) > plan.peak(8, False) > plan.peak(8, True)
    assert plan.largest_fitting([1, 2, 4, 8, 16, 32], plan.peak(8, False), False) == 8
    assert plan.largest_fitting([1, 2], plan.static // 2, True) is None
