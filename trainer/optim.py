"""AdamW with GPT-2 parameter groups, and the warmup + cosine learning-rate schedule.

* :func:`param_groups`: weight decay on every parameter with ``dim >= 2`` (Linear weights and the
  token/position embeddings; the LM head is tied to ``wte`` and appears once), none on biases and
  LayerNorm gains (decaying those only pulls them towards 0 for no regularisation benefit, as in
  nanoGPT/llm.c). Order inside each group is ``named_parameters`` order, so the optimizer's state
  indices are stable across processes (exact resume) and :func:`param_names` maps them back.
* :func:`make_optimizer`: ``torch.optim.AdamW`` with ``fused=True`` on CUDA and CPU (one kernel
  for all parameters instead of a multi-tensor loop). Fused is also what lets the loop refuse a bad
  update on the device: the kernel skips the update, moments and step count when the optimizer's
  ``found_inf`` scalar is 1, so no host sync is needed to decide. CPU uses the same path, so the
  CPU tests exercise it.
* :func:`lr_at`: a pure function of the step, so a resumed run sets exactly the lr an
  uninterrupted run would have: ``lr * (step + 1) / warmup`` for ``step < warmup``, then cosine
  from ``lr`` to ``lr * min_lr_ratio`` at ``max_steps``; the floor holds past ``max_steps``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.config import TrainConfig


def _split(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # named_parameters de-duplicates tied weights
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append((name, p))
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """``[{"params": 2-D weights, "weight_decay": wd}, {"params": the rest, "weight_decay": 0}]``."""
    decay, no_decay = _split(model)
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "weight_decay": 0.0},
    ]


def param_names(model: nn.Module) -> list[str]:
    """Parameter names in optimizer state-index order (index ``i`` of ``optimizer.state_dict()``)."""
    decay, no_decay = _split(model)
    return [n for n, _ in decay] + [n for n, _ in no_decay]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, fused (CUDA and CPU). The lr is set per step by the loop."""
    extra = {"fused": True} if device_type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=lr_at(0, cfg),
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **extra,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, cosine decay, floor."""
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps or cfg.max_steps <= cfg.warmup_steps:
        return floor
    progress = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)  # in [0, 1)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
