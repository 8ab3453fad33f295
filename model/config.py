"""``GPTConfig``: the one typed configuration of the model, and the GPT-2 presets.

* Fields are plain ints/floats/bools so a config round-trips through JSON and through
  ``torch.load(weights_only=True)`` as a dict (:meth:`GPTConfig.to_dict` / :meth:`GPTConfig.from_dict`).
* ``vocab_size`` is the *real* vocabulary (50260 = GPT-2's 50257 + ``<|startoftext|>``,
  ``<|padding|>``, ``<|unknown|>``). The embedding matrix has :attr:`GPTConfig.padded_vocab_size`
  rows, rounded up to ``pad_vocab_multiple`` (50304 for 64) because matmuls whose inner/outer
  dimension is a multiple of 64 hit the fast tensor-core tiles; the extra rows are never sampled.
* Every field is validated in ``__post_init__``; errors name the flag that sets the field where one
  does (``python -m trainer --n-layer`` for ``n_layer``: :data:`TRAINER_FLAGS`), else the field and this
  file (``vocab_size`` comes from the data or a checkpoint, ``bias`` from a Hugging Face config.json).

Presets are OpenAI's four GPT-2 sizes plus ``tiny`` (4 layers, 4 heads, 128 wide, 256 context),
which trains and samples in seconds on a CPU and is what the tests and the CPU demo use.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pipeline.errors import flag
from pipeline.tokenizer import VOCAB_SIZE

# name -> field overrides of GPTConfig's defaults (which are gpt2's). Parameter counts are for the
# padded 50304-row embedding; with OpenAI's 50257 rows they are HF's 124M/355M/774M/1558M.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),  # ~7M, 6.4M of it embeddings
}


# the fields that `python -m trainer` sets by a flag of the same name; the others have no flag
TRAINER_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")


def _named(field: str) -> str:
    """How an error names a field: by the flag that sets it, or as a field of this file."""
    if field in TRAINER_FLAGS:
        return f"{field} (python -m trainer {flag(field)})"
    return f"{field} (GPTConfig field, model/config.py; no flag sets it)"


@dataclass
class GPTConfig:
    """Hyper-parameters of a GPT-2 model (defaults: the 124M ``gpt2``)."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024  # context length in tokens (learned position embeddings)
    vocab_size: int = VOCAB_SIZE  # real ids; pipeline.tokenizer.VOCAB_SIZE
    pad_vocab_multiple: int = 64  # embedding rows rounded up to a multiple of this (1 = no padding)
    dropout: float = 0.0  # embedding, attention and residual dropout (0 for pretraining, as nanoGPT)
    bias: bool = True  # biases in Linear and LayerNorm (GPT-2 has them)
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "pad_vocab_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{_named(name)} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"{_named('n_embd')} = {self.n_embd} is not divisible by {_named('n_head')} = "
                f"{self.n_head}; pick sizes with n_embd % n_head == 0"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{_named('dropout')} must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"{_named('bias')} must be true or false, got {self.bias!r}")
        eps = self.layer_norm_epsilon
        if not isinstance(eps, (int, float)) or not (0.0 < eps < 1.0) or math.isnan(eps):
            raise ValueError(f"{_named('layer_norm_epsilon')} must be in (0, 1), got {eps!r}")
        self.dropout = float(self.dropout)
        self.layer_norm_epsilon = float(eps)

    @property
    def padded_vocab_size(self) -> int:
        """Embedding/LM-head rows: ``vocab_size`` rounded up to ``pad_vocab_multiple`` (50260 -> 50304)."""
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A preset (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``tiny``) with overrides."""
        if name not in PRESETS:
            raise ValueError(
                f"unknown model preset {name!r} (python -m trainer --model); "
                f"choose one of {', '.join(PRESETS)}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON- and ``weights_only``-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from a different program)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"model config has unknown field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**d)
