"""What a checkpoint holds: :class:`RunState`, with its save/load pair side by side.

Exact resume needs no loader state: the sampler's batch k is a pure function of ``(seed, k)``, so the
model, optimizer, GradScaler, RNG and the step counter are the whole run. The checkpoint file format
and its compatibility checks are :mod:`trainer.checkpoint`'s; README.md ("Resuming") has the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import clean_state_dict
from model.gpt import GPT
from pipeline.format import ShardDataset
from pipeline.sampler import TokenSampler
from trainer import checkpoint as ckpt
from trainer import init_from
from trainer.config import TrainConfig
from trainer.dist import DistEnv
from trainer.optim import Optimizers

# settings that decide the data stream: changing one on resume makes the continuation differ
DATA_STREAM_KEYS = (
    "seed", "seq_len", "total_batch_tokens", "micro_batch", "doc_aligned",
    "lr", "warmup_steps", "max_steps", "min_lr_ratio",
    "muon_lr", "muon_momentum", "muon_split_qkv", "schedule", "cooldown_frac", "sampling",
)  # fmt: skip


def build_train_model(cfg: TrainConfig, model_config, device: torch.device, source=None) -> GPT:
    """The freshly initialised model of a run: a pure function of ``--seed`` (same on every rank),
    or the weights of ``source`` (``--init-from``, :mod:`trainer.init_from`)."""
    torch.manual_seed(cfg.seed)
    if source is not None:
        return init_from.initial_model(model_config, source).to(device)
    return GPT(model_config).to(device)


@dataclass
class RunState:
    """The model (raw: neither compiled nor DDP-wrapped), its optimizer and scaler, the sampler, and
    the counters; ``step`` counts *completed* optimizer steps (``step-00000010.pt`` is after 10)."""

    cfg: TrainConfig
    env: DistEnv
    dataset: ShardDataset
    sampler: TokenSampler
    model: GPT
    optimizer: Optimizers  # AdamW, or AdamW + Muon (--optimizer)
    scaler: torch.amp.GradScaler
    init_record: dict[str, Any] | None = None  # --init-from's source, recorded in every checkpoint
    step: int = 0
    bad_steps: int = 0  # non-finite steps skipped over the whole run, resumes included

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload (:mod:`trainer.checkpoint` writes it atomically)."""
        ds = self.dataset
        return {
            "format": ckpt.FORMAT,
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            **self.optimizer.state_dict(),  # "optimizer" (AdamW) and, under --optimizer muon, "muon"
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "step": self.step,
            "rng": ckpt.capture_rng(),
            "train_config": self.cfg.to_dict(),
            "dataset_fingerprint": ds.dataset_fingerprint,
            "tokenizer_fingerprint": ds.tokenizer_fingerprint,
            "vocab_size": ds.vocab_size,
            "counters": {"bad_steps": self.bad_steps},
            "world_size": self.env.world_size,
            "init_from": self.init_record,
        }

    def load_state_dict(self, payload: dict[str, Any], path: Path, warn: Callable[[str], None]) -> None:
        """Restore what :meth:`state_dict` saved, after refusing a checkpoint of another model or data."""
        ds = self.dataset
        ckpt.check_compatible(
            payload, path, model_config=self.model.config.to_dict(), vocab_size=ds.vocab_size,
            dataset_fingerprint=ds.dataset_fingerprint, force=self.cfg.force, warn=warn,
        )  # fmt: skip
        self.optimizer.load_state_dict(payload, path)  # first: refuses another --optimizer's checkpoint
        self.model.load_state_dict(clean_state_dict(payload["model"]))
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        ckpt.restore_rng(payload["rng"])
        self.step = int(payload["step"])
        self.bad_steps = int(payload.get("counters", {}).get("bad_steps", 0))
        _warn_changes(payload, self.cfg, self.env.world_size, warn)

    def save(self) -> Path | None:
        """Checkpoint ``step`` (rank 0 writes; the other ranks hold the same state). None off rank 0."""
        if not self.env.is_main:
            return None
        return ckpt.save_checkpoint(self.cfg.out, self.step, self.state_dict(), self.cfg.keep_last)

    def resume(self, warn: Callable[[str], None]) -> Path | None:
        """Load the newest loadable checkpoint of the run folder; the path, or None when there is none."""
        loaded = ckpt.load_latest(self.cfg.out, map_location="cpu", warn=warn)
        if loaded is None:
            warn(f"--resume: no checkpoint in {self.cfg.out}; starting a fresh run")
            return None
        payload, path = loaded
        self.load_state_dict(payload, path, warn)
        return path


def _warn_changes(
    payload: dict[str, Any], cfg: TrainConfig, world_size: int, warn: Callable[[str], None]
) -> None:
    """Warn when a resume changes what decides the data stream (the resume is then not exact)."""
    old, now = payload["train_config"], cfg.to_dict()
    changed = [f"{k} {old.get(k)} -> {now[k]}" for k in DATA_STREAM_KEYS if k in old and old[k] != now[k]]
    if changed:
        warn(
            "resuming with changed settings (the continuation differs from the original run's): "
            + ", ".join(changed)
        )
    if payload.get("world_size", world_size) != world_size:
        warn(
            f"resuming a run checkpointed with world size {payload['world_size']} on {world_size} ranks: the "
            "optimizer state carries over, but the data order differs from the original run's "
            "(micro-step k of step s reads sampler step s x grad_accum + k per rank)"
        )
