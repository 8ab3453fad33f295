"""``--init-from SOURCE``: start a fresh training run from existing weights (fine-tuning).

* SOURCE is an owtgpt checkpoint or run folder, else a local Hugging Face GPT-2 folder, else a hub id
  (:func:`load_source`); only the weights are taken, in float32. Optimizer, step, schedule and data
  start fresh; the model shape is the source's (``--n-layer`` etc. only with its values; ``--dropout``
  applies).
* The origin goes into ``config.json`` and every checkpoint as ``init_from`` (kind, source,
  ``weights_sha256`` of the weights in owtgpt's layout, and the checkpoint/step or hub revision).
* ``--resume`` continues a fine-tune from its own checkpoints and never reloads the source (:func:`plan`).

README.md ("Fine-tuning") has the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import (
    CKPT_DIRNAME,
    CheckpointError,
    list_checkpoints,
    load_model,
    model_from_checkpoint,
)
from model.config import GPTConfig
from model.gpt import GPT
from pipeline.errors import ConfigError, flag
from trainer.config import TrainConfig

SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")


class InitFromError(ConfigError):
    """``--init-from`` names weights that cannot be used; the message names the source and the fix."""


@dataclass
class InitSource:
    """Weights to start from, with the record of where they came from."""

    model: GPT  # on the CPU, in the source's dtype
    record: dict[str, Any]

    @property
    def config(self) -> GPTConfig:
        return self.model.config


@dataclass
class InitPlan:
    """What ``train`` builds: the model config, the weights to load (None: random init or resume),
    and the ``init_from`` record to write into ``config.json`` and every checkpoint."""

    model_config: GPTConfig
    source: InitSource | None = None
    record: dict[str, Any] | None = None


def weights_sha256(model: GPT) -> str:
    """sha256 over the state dict in name order (name, dtype, shape, raw bytes), ``lm_head`` excepted."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name == "lm_head.weight":  # tied: the same tensor as transformer.wte.weight
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_owtgpt(path: Path, source: str) -> InitSource:
    from pipeline.tokenizer import tokenizer_fingerprint

    try:
        model, ckpt = load_model(path)
    except CheckpointError as e:
        raise InitFromError(f"--init-from {source}: {e}") from e
    fp = ckpt.get("tokenizer_fingerprint")
    if fp is not None and fp != tokenizer_fingerprint():
        raise InitFromError(
            f"--init-from {source}: its model was trained with tokenizer {fp}, the shards here use "
            f"{tokenizer_fingerprint()}; its token ids would mean other text"
        )
    record: dict[str, Any] = {
        "kind": "owtgpt",
        "source": str(path.resolve()),
        "checkpoint": str(Path(ckpt["checkpoint_path"]).resolve()),
    }
    if "step" in ckpt:
        record["source_step"] = int(ckpt["step"])
    return InitSource(model, record)


def _load_hf_folder(path: Path, source: str) -> InitSource:
    from model.hf import HFFormatError, import_hf

    try:
        model = import_hf(path)
    except HFFormatError as e:
        raise InitFromError(f"--init-from {source}: {e}") from e
    return InitSource(model, {"kind": "huggingface", "source": str(path.resolve())})


def _load_hub(hub_id: str) -> InitSource:
    from model.hf import HFFormatError, model_from_hf_state

    where = f"--init-from {hub_id}: no such local file or folder"
    try:
        import transformers
    except ImportError as e:
        raise InitFromError(
            f"{where}; loading it from the Hugging Face hub needs `transformers` (pip install transformers), "
            "or pass a local folder"
        ) from e
    try:
        hf = transformers.GPT2LMHeadModel.from_pretrained(hub_id)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InitFromError(
            f"{where}, and the Hugging Face hub could not provide it ({reason}). Check the path, or the hub "
            "id and the network; a model downloaded once is then read from the Hugging Face cache"
        ) from e
    try:
        model = model_from_hf_state(hf.config.to_dict(), hf.state_dict(), f"hub model {hub_id}")
    except HFFormatError as e:
        raise InitFromError(f"--init-from {hub_id}: {e}") from e
    record: dict[str, Any] = {"kind": "hub", "source": hub_id}
    revision = getattr(hf.config, "_commit_hash", None)
    if revision:
        record["revision"] = str(revision)
    return InitSource(model, record)


def load_source(source: str) -> InitSource:
    """Load ``--init-from SOURCE``, trying in order: an owtgpt checkpoint file or run folder (its newest
    loadable checkpoint, :func:`model.checkpoint.load_model`); a local HF GPT-2 folder (``config.json``
    + weights, :func:`model.hf.import_hf`); a hub id (``gpt2``, ``openai-community/gpt2``) through
    ``transformers.GPT2LMHeadModel.from_pretrained`` and the same mapping. Records its hash."""
    path = Path(source).expanduser()
    if path.is_file():
        init = _load_owtgpt(path, source)
    elif path.is_dir():
        if (path / CKPT_DIRNAME).is_dir():
            init = _load_owtgpt(path, source)
        elif (path / "config.json").is_file():
            init = _load_hf_folder(path, source)
        else:
            raise InitFromError(
                f"--init-from {source}: this folder is neither an owtgpt run (no {CKPT_DIRNAME}/) nor a "
                "Hugging Face GPT-2 folder (no config.json)"
            )
    elif source.startswith((".", "/", "~")) or source.endswith(".pt") or source.count("/") > 1:
        raise InitFromError(f"--init-from {source}: no such file or folder")
    else:
        init = _load_hub(source)
    init.record["weights_sha256"] = weights_sha256(init.model)
    return init


def _check_shape(cfg: TrainConfig, have: GPTConfig, origin: str) -> None:
    for name in SHAPE_FIELDS:
        given = getattr(cfg, name)
        if given is not None and given != getattr(have, name):
            raise ConfigError(
                f"{flag(name)} {given} conflicts with {origin}, whose model has {name} "
                f"{getattr(have, name)}; the model shape comes from there: drop {flag(name)}"
            )
    if cfg.seq_len > have.block_size:
        raise ConfigError(
            f"--seq-len {cfg.seq_len} exceeds the context of {origin} ({have.block_size} tokens); "
            f"pass --seq-len {have.block_size} or less"
        )


def _newest_run_state(out: Path) -> tuple[Path, dict[str, Any]] | None:
    """(path, {"model_config", "init_from"}) of the newest checkpoint in ``out`` that opens; mmap'd,
    so nothing but these two small entries is read."""
    for path in list_checkpoints(out):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # the resume itself reports (and skips) unreadable checkpoints
            continue
        if isinstance(payload, dict) and "model_config" in payload:
            return path, {"model_config": payload["model_config"], "init_from": payload.get("init_from")}
    return None


def _started_from(out: Path, init_from: str) -> bool:
    """Whether the run in ``out`` is the fine-tune of ``init_from`` (a resume restating its recorded
    source, as ``--resume`` does from config.json, continues it)."""
    state = _newest_run_state(out)
    record = state[1]["init_from"] if state is not None else None
    if not isinstance(record, dict):
        return False
    return record.get("source") in (init_from, str(Path(init_from).expanduser().resolve()))


def plan(cfg: TrainConfig) -> InitPlan:
    """The model config and initial weights of this run. ``--init-from`` with ``--resume`` is refused
    when ``--out`` holds checkpoints of another run (it starts the fine-tune in a folder without any);
    ``--preset finetune --resume`` with neither is refused, since it would fine-tune a random init."""
    checkpoints = list_checkpoints(cfg.out) if cfg.resume else []
    if cfg.init_from is not None and checkpoints and not _started_from(cfg.out, cfg.init_from):
        raise ConfigError(
            f"--init-from {cfg.init_from} with --resume: --out {cfg.out} already holds checkpoints "
            f"({checkpoints[0].name}), and --resume continues that run from them. Drop --init-from to "
            "continue it, or start the fine-tune in another --out (or with --overwrite instead of --resume)"
        )
    if checkpoints:
        state = _newest_run_state(cfg.out)
        if state is not None and state[1]["init_from"] is not None:  # a fine-tune: its shape is its own
            path, info = state
            try:
                have = GPTConfig.from_dict(dict(info["model_config"]))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{path}: invalid model_config: {e}") from e
            _check_shape(cfg, have, f"the fine-tuning run in --out {cfg.out}")
            return InitPlan(dataclasses.replace(have, dropout=cfg.dropout), record=info["init_from"])
    if cfg.init_from is None:
        if cfg.preset == "finetune" and not checkpoints:  # --resume of a fine-tune that never started
            raise ConfigError(
                f"--preset finetune --resume: --out {cfg.out} has no checkpoints to continue; pass "
                "--init-from SOURCE to start the fine-tune"
            )
        return InitPlan(cfg.model_config())
    src, out = Path(cfg.init_from).expanduser().resolve(), cfg.out.resolve()
    if cfg.overwrite and (src == out or out in src.parents):
        raise ConfigError(
            f"--init-from {cfg.init_from} is inside --out {cfg.out}, whose checkpoints --overwrite deletes; "
            "fine-tune into another --out"
        )
    source = load_source(cfg.init_from)
    _check_shape(cfg, source.config, f"--init-from {cfg.init_from}")
    model_config = dataclasses.replace(source.config, dropout=cfg.dropout)
    return InitPlan(model_config, source=source, record=source.record)


def initial_model(model_config: GPTConfig, source: InitSource) -> GPT:
    """A float32 ``GPT`` of ``model_config`` holding a copy of the source's weights (on the CPU).

    A copy: the source's tensors may be those of a live ``transformers`` model (hub path), which
    training must not change in place."""
    state = {
        k: v.to(torch.float32 if v.is_floating_point() else v.dtype, copy=True)
        for k, v in source.model.state_dict().items()
    }
    return model_from_checkpoint(
        {"model": state, "model_config": model_config.to_dict()}, f"--init-from {source.record['source']}"
    )
