"""owtgpt's GPT-2: ``GPTConfig`` (model/config.py), ``GPT`` (model/gpt.py), KV-cached sampling
(model/generate.py), checkpoints (model/checkpoint.py) and Hugging Face interop (model/hf.py).
``python -m model --help`` lists the commands (sample, import-hf, export-hf, info)."""

from model.config import PRESETS, GPTConfig
from model.gpt import GPT

__all__ = ["GPT", "PRESETS", "GPTConfig"]
