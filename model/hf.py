"""Hugging Face GPT-2 interop: import a local ``gpt2`` checkpoint folder, export one ``transformers`` loads.

* :func:`import_hf` reads the hub's ``gpt2`` layout (``config.json`` + ``model.safetensors``, a sharded
  index, or ``pytorch_model.bin`` with ``weights_only=True``), transposes HF's ``Conv1D`` (in, out) weights
  to ``nn.Linear``'s (out, in), and refuses configs this architecture cannot represent exactly.
* A 50257-row OpenAI model gains our three extra rows (:func:`model_from_hf_state` says how and why).
* :func:`export_hf` writes ``config.json`` + ``model.safetensors`` with ``vocab_size`` 50260 (padded rows
  dropped, so HF never samples an id no tokenizer knows), the tokenizer files (:mod:`model.hf_tokenizer`)
  and the padded rows in ``owtgpt_padded_rows.safetensors``, so export + import is the identical model.

README.md ("Weights in and out") has the rest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_error_reason, unwrap_model
from model.config import GPTConfig
from model.gpt import GPT
from model.hf_tokenizer import TOKENIZER_FILES, write_tokenizer
from pipeline.fsutil import atomic_write_bytes, atomic_write_text
from pipeline.tokenizer import EOT_ID, PAD_ID, SOT_ID, UNK_ID, VOCAB_SIZE

OPENAI_VOCAB_SIZE = EOT_ID + 1  # 50257
PADDED_ROWS_FILE = "owtgpt_padded_rows.safetensors"
PADDED_ROWS_KEY = "transformer.wte.weight.padded_rows"
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old HF checkpoints
_LAYER_KEYS = (
    "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
    "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)  # fmt: skip


class HFFormatError(ValueError):
    """A Hugging Face folder or config this importer cannot map exactly; the message names the file."""


def _hf_keys(n_layer: int) -> list[str]:
    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    keys += [f"transformer.h.{i}.{k}" for i in range(n_layer) for k in _LAYER_KEYS]
    return [*keys, "transformer.ln_f.weight", "transformer.ln_f.bias"]


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> tuple[GPTConfig, int]:
    """(our config, the checkpoint's own vocab size) from a GPT-2 ``config.json`` dict."""
    if not isinstance(hf, dict):
        raise HFFormatError(f"{source}: not a GPT-2 config (a JSON object), found a JSON {type(hf).__name__}")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise HFFormatError(f"{source}: model_type is {model_type!r}; only GPT-2 ('gpt2') checkpoints import")
    try:
        n_layer, n_head, n_embd = int(hf["n_layer"]), int(hf["n_head"]), int(hf["n_embd"])
        n_positions, vocab = int(hf["n_positions"]), int(hf["vocab_size"])
    except KeyError as e:
        raise HFFormatError(f"{source}: missing GPT-2 config field {e}") from e
    except (TypeError, ValueError) as e:
        raise HFFormatError(f"{source}: a GPT-2 size field is not an integer ({e})") from e
    checks = {
        "activation_function": (hf.get("activation_function", "gelu_new"), ("gelu_new", "gelu_pytorch_tanh")),
        "n_inner": (hf.get("n_inner"), (None, 4 * n_embd)),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), (False,)),
        "add_cross_attention": (hf.get("add_cross_attention", False), (False,)),
        "tie_word_embeddings": (hf.get("tie_word_embeddings", True), (True,)),
    }
    for name, (value, allowed) in checks.items():
        if value not in allowed:
            raise HFFormatError(
                f"{source}: {name}={value!r} is not GPT-2's architecture (allowed: {allowed}); "
                "this model cannot be represented exactly"
            )
    ours = VOCAB_SIZE if vocab == OPENAI_VOCAB_SIZE else vocab
    try:
        cfg = GPTConfig(
            n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=n_positions, vocab_size=ours,
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)), bias=True, dropout=0.0,
        )  # fmt: skip
    except (TypeError, ValueError) as e:
        raise HFFormatError(f"{source}: {e}") from e
    return cfg, vocab


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFFormatError(f"{path}: not valid JSON ({e}); re-download it") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as e:
        raise HFFormatError(f"{path}: not a valid safetensors file ({e}); re-download it") from None


def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    single, index, bin_file = (
        folder / "model.safetensors",
        folder / "model.safetensors.index.json",
        folder / "pytorch_model.bin",
    )
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        weight_map = _read_json(index)
        if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
            raise HFFormatError(f"{index}: has no 'weight_map' object; re-download it")
        state: dict[str, torch.Tensor] = {}
        for name in sorted(set(map(str, weight_map["weight_map"].values()))):
            state.update(_load_safetensors(folder / name))
        return state
    if bin_file.is_file():
        try:
            return torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise HFFormatError(load_error_reason(bin_file, e)) from None
    raise HFFormatError(
        f"{folder}: no weights found; expected model.safetensors, model.safetensors.index.json "
        "or pytorch_model.bin next to config.json"
    )


def import_hf(folder: str | os.PathLike[str]) -> GPT:
    """A ``GPT`` (eval mode) holding the weights of a local HF GPT-2 folder (see the module docstring)."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise HFFormatError(f"{folder}: no config.json; expected a Hugging Face GPT-2 checkpoint folder")
    hf_config = _read_json(config_file)
    config_from_hf(hf_config, str(config_file))  # refuse an unsupported config before reading weights
    padded = None
    if (folder / PADDED_ROWS_FILE).is_file():
        padded = _load_safetensors(folder / PADDED_ROWS_FILE).get(PADDED_ROWS_KEY)
        if padded is None:
            raise HFFormatError(f"{folder / PADDED_ROWS_FILE}: has no {PADDED_ROWS_KEY!r} tensor")
    return model_from_hf_state(hf_config, _read_state(folder), str(folder), padded_rows=padded)


def model_from_hf_state(
    hf_config: dict[str, Any],
    raw: dict[str, torch.Tensor],
    source: str,
    padded_rows: torch.Tensor | None = None,
) -> GPT:
    """A ``GPT`` (eval mode) from a GPT-2 ``config.json`` dict and an HF state dict (``GPT2Model`` or
    ``GPT2LMHeadModel`` keys, with or without the ``transformer.`` prefix; the ``attn.bias`` mask
    buffers are dropped); ``source`` names the folder or hub id in errors. A 50257-row model gains
    ``<|startoftext|>``, ``<|padding|>`` and ``<|unknown|>`` rows (why: at the code); other sizes are
    copied as they are. Padded rows are zero, or ``padded_rows`` (from an owtgpt export)."""
    cfg, hf_vocab = config_from_hf(hf_config, f"{source} config")

    state: dict[str, torch.Tensor] = {}
    head = None
    for key, value in raw.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        if key == "lm_head.weight":
            head = value
            continue
        name = key if key.startswith("transformer.") else "transformer." + key
        state[name] = value.t() if name.endswith(CONV1D_SUFFIXES) else value
    expected = _hf_keys(cfg.n_layer)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise HFFormatError(
            f"{source}: weights do not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    wte = state["transformer.wte.weight"]
    if tuple(wte.shape) != (hf_vocab, cfg.n_embd):
        raise HFFormatError(
            f"{source}: wte has shape {tuple(wte.shape)}, config.json says ({hf_vocab}, {cfg.n_embd})"
        )
    if head is not None and not torch.equal(head, wte):
        raise HFFormatError(
            f"{source}: lm_head.weight differs from wte; GPT-2 ties them, untied heads cannot import"
        )

    dtype = wte.dtype
    rows = torch.zeros(cfg.padded_vocab_size, cfg.n_embd, dtype=dtype)  # padded rows stay zero
    rows[:hf_vocab] = wte
    if hf_vocab == OPENAI_VOCAB_SIZE:
        # SOT := EOT's row: GPT-2 was trained with EOT as the document *separator*, so "a document starts
        # here" is exactly the context EOT gave it, and it reads our [SOT] + text format as its own. Tied,
        # SOT also gets EOT's output logit: an un-finetuned import splits end-of-text mass between the two.
        rows[SOT_ID] = wte[EOT_ID]
        # PAD, UNK := the mean trained row: trained embeddings share a large common component, so a
        # random normal(0, 0.02) row would be off their distribution; tied, the mean row's logit is the
        # average logit (no spurious probability mass)
        mean = wte.float().mean(dim=0).to(dtype)
        rows[PAD_ID] = mean
        rows[UNK_ID] = mean
    if padded_rows is not None:
        want = (cfg.padded_vocab_size - hf_vocab, cfg.n_embd)
        if hf_vocab != cfg.vocab_size or tuple(padded_rows.shape) != want:
            raise HFFormatError(
                f"{source}: {PADDED_ROWS_FILE} holds {tuple(padded_rows.shape)} rows, this model's padding "
                f"needs {want}; it belongs to another export (delete it to import with zero padded rows)"
            )
        rows[hf_vocab:] = padded_rows
    state["transformer.wte.weight"] = rows
    state["lm_head.weight"] = rows
    state = {k: v.to(dtype).contiguous() for k, v in state.items()}

    with torch.device("meta"):
        model = GPT(cfg)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise HFFormatError(f"{source}: weights do not match config.json: {e}") from e
    model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
    return model.eval()


def hf_config_dict(cfg: GPTConfig) -> dict[str, Any]:
    """The ``config.json`` of an exported model (``GPT2Config`` field names)."""
    out: dict[str, Any] = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "tie_word_embeddings": True,
    }
    if cfg.vocab_size == VOCAB_SIZE:
        # bos = SOT: the training format starts every document with it
        out.update(bos_token_id=SOT_ID, eos_token_id=EOT_ID, pad_token_id=PAD_ID)
    return out


def export_hf(model: torch.nn.Module, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer files for owtgpt's vocabulary) for
    ``GPT2LMHeadModel.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)``."""
    from safetensors.torch import save as safetensors_save

    base = unwrap_model(model)
    if not isinstance(base, GPT):
        raise TypeError(f"export_hf needs a GPT, got {type(base).__name__}")
    cfg = base.config
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    targets = [out / "config.json", out / "model.safetensors"]
    if not overwrite and any(p.exists() for p in targets):
        raise FileExistsError(f"{out} already holds an exported model; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)

    sd = base.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for key in _hf_keys(cfg.n_layer):
        if key == "transformer.wte.weight":
            # the padded rows dropped; safetensors refuses shared tensors, so only wte is written and
            # transformers re-ties lm_head to it (tie_word_embeddings: true)
            value = sd[key][: cfg.vocab_size]
        elif key in sd:
            value = sd[key].t() if key.endswith(CONV1D_SUFFIXES) else sd[key]
        elif key.endswith(".bias") and not cfg.bias:
            weight = sd[key[: -len("bias")] + "weight"]
            value = torch.zeros(weight.shape[0], dtype=weight.dtype)  # bias-free == zero bias
        else:
            raise KeyError(f"model state has no {key}")
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    if cfg.vocab_size == VOCAB_SIZE:  # owtgpt's vocabulary: the tokenizer files make the folder usable
        write_tokenizer(out, cfg.block_size)
    else:  # another vocabulary has no tokenizer here; never leave one from an older export beside it
        for name in TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
    padded = sd["transformer.wte.weight"][cfg.vocab_size :].detach().to("cpu").contiguous().clone()
    # never sampled, but owtgpt's training softmax spans them: without them a re-imported model's loss
    # differs (1e-2 nats on a briefly trained tiny model) and a fine-tune would not start where it ended
    if len(padded):
        atomic_write_bytes(out / PADDED_ROWS_FILE, safetensors_save({PADDED_ROWS_KEY: padded}))
    else:
        (out / PADDED_ROWS_FILE).unlink(missing_ok=True)
    # tokenizer and weights first, config last: a folder with config.json is a complete export
    atomic_write_bytes(targets[1], safetensors_save(tensors, metadata={"format": "pt"}))
    atomic_write_text(targets[0], json.dumps(hf_config_dict(cfg), indent=2) + "\n")
    return out
