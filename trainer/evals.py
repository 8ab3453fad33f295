"""Work the training loop does between steps: val loss, ``--eval-tasks`` and text samples.

Each runs on every rank at the same steps (the loop decides), except sampling (rank 0 only).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from model.config import GPTConfig
from model.generate import generate
from model.gpt import GPT
from model.loss import IGNORE_INDEX
from model.sdpa import sdpa_context
from pipeline.errors import UserError
from pipeline.sampler import ValWindows
from pipeline.tokenizer import SOT_ID, decode, get_tokenizer
from trainer.config import TrainConfig
from trainer.dist import DistEnv, all_reduce_

if TYPE_CHECKING:
    from model.tools.evaluate import TaskEvaluator

_DATA_FLAG = re.compile(r"(?<![\w-])--data(?![\w-])")


def evaluate_loss(model: nn.Module, val: ValWindows, autocast, env: DistEnv) -> float:
    """Mean loss over the fixed val windows, reduced over ranks (each window weighted equally).

    Every batch has the training shape (micro_batch, T): a short last batch is padded with rows whose
    targets are all -1 (ignored), so a compiled ``model`` runs one eval graph and never recompiles.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=env.device)  # [sum of window losses, windows]
    with torch.no_grad():
        for x, y in val:
            n = x.size(0)
            if n < val.batch_size:
                pad = val.batch_size - n
                x = torch.cat([x, x.new_zeros(pad, x.size(1))])
                y = torch.cat([y, y.new_full((pad, y.size(1)), IGNORE_INDEX)])
            with autocast():
                _, loss = model(x, y)  # mean over the n real windows' tokens (all T of them count)
            total[0] += loss.double() * n
            total[1] += n
    all_reduce_(total, env)
    model.train(was_training)
    return float(total[0] / total[1])


def task_evaluator(cfg: TrainConfig, env: DistEnv, model_config: GPTConfig) -> TaskEvaluator | None:
    """``--eval-tasks``: rows loaded (and checked) now, this rank's share of them; None without tasks."""
    names = cfg.eval_task_names()
    if not names:
        return None
    from model.tools.evaluate import TaskEvaluator

    assert cfg.micro_batch is not None  # --micro-batch auto is resolved before the evaluator is built
    batch_size = cfg.micro_batch

    def load(tasks: list[str], data, data_flag: str) -> TaskEvaluator:
        try:
            return TaskEvaluator(
                tasks, data=data, limit=cfg.eval_tasks_limit, rank=env.rank, world_size=env.world_size,
                batch_size=batch_size, vocab_size=model_config.vocab_size,
            )  # fmt: skip
        except UserError as e:  # model/'s messages name `model eval`'s --data: name the trainer's flag
            raise type(e)(_DATA_FLAG.sub(data_flag, str(e))) from None

    # the shards task reads --data (the run's own shards) unless --eval-tasks-data names another folder;
    # every other task reads --eval-tasks-data, or the hub
    shards_data = cfg.eval_tasks_data if cfg.eval_tasks_data is not None else cfg.data
    shards_flag = "--eval-tasks-data" if cfg.eval_tasks_data is not None else "--data"
    evaluator = None
    docs = {}
    for group, data, data_flag in (
        ([n for n in names if n != "shards"], cfg.eval_tasks_data, "--eval-tasks-data"),
        ([n for n in names if n == "shards"], shards_data, shards_flag),
    ):
        if group:
            evaluator = load(group, data, data_flag)
            docs.update(evaluator.docs)
    assert evaluator is not None  # names is not empty, so one of the groups was loaded
    evaluator.docs = {n: docs[n] for n in names}  # in the order given
    return evaluator


def evaluate_tasks(tasks: TaskEvaluator, model: GPT, autocast, env: DistEnv) -> dict[str, dict[str, Any]]:
    """Score the raw (uncompiled) model on ``--eval-tasks``; counts are summed over ranks. Task -> figures."""

    def all_reduce(t: torch.Tensor) -> None:
        all_reduce_(t, env)

    out = tasks(model, autocast, all_reduce=all_reduce)
    return {task: r.to_json() for task, r in out.items()}


def sample_text(model: GPT, cfg: TrainConfig, device: torch.device, autocast) -> str:
    """A text sample from the raw model with the KV cache; its own generator leaves the training RNG be."""
    enc = get_tokenizer()
    ids = [SOT_ID, *enc.encode_ordinary(cfg.sample_prompt)]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    with autocast(), sdpa_context("default"):  # cached attention with a mask: any kernel that takes one
        out = generate(model, idx, cfg.sample_tokens, temperature=1.0, top_k=50, generator=gen)
    model.train(was_training)
    return decode(out[0, 1:].tolist(), enc)
