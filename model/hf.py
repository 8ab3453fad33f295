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
import shutil
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import load_error_reason, unwrap_model
from model.config import GPTConfig
from model.gpt import GPT
from model.hf_tokenizer import write_tokenizer
from model.outdirs import check_export_out
from pipeline.fsutil import (
    EXPORT_MARKER,
    atomic_write_bytes,
    atomic_write_text,
    path_type,
    publish_dir,
    remove_stale_temp_dirs,
    temp_dir_for,
)
from pipeline.tokenizer import EOT_ID, PAD_ID, SOT_ID, UNK_ID, VOCAB_SIZE

OPENAI_VOCAB_SIZE = EOT_ID + 1  # 50257
PADDED_ROWS_FILE = "owtgpt_padded_rows.safetensors"
PADDED_ROWS_KEY = "transformer.wte.weight.padded_rows"
# safetensors header field of an export: the one size no tensor shape carries (import_hf checks it)
N_HEAD_METADATA = "owtgpt.n_head"
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


def _int_field(hf: dict[str, Any], name: str, source: str) -> int:
    if name not in hf:
        raise HFFormatError(f"{source}: missing GPT-2 config field {name!r}")
    value = hf[name]
    if value is None:
        raise HFFormatError(f"{source}: {name} is null; GPT-2 needs a positive integer there")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HFFormatError(f"{source}: {name} is {value!r}; GPT-2 needs a positive integer there")
    return value


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> tuple[GPTConfig, int]:
    """(our config, the checkpoint's own vocab size) from a GPT-2 ``config.json`` dict.

    Checks what the config alone can: integer sizes, ``n_embd % n_head == 0``, one context length
    (``n_ctx``, when present, equals ``n_positions``) and the architecture flags. (Special-token ids
    are not checked: transformers' own ``GPT2Config`` keeps ids 50256 for any vocabulary.)
    :func:`model_from_hf_state` then checks the sizes against the tensors.
    """
    if not isinstance(hf, dict):
        raise HFFormatError(f"{source}: not a GPT-2 config (a JSON object), found a JSON {type(hf).__name__}")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise HFFormatError(f"{source}: model_type is {model_type!r}; only GPT-2 ('gpt2') checkpoints import")
    n_layer, n_head, n_embd, n_positions, vocab = (
        _int_field(hf, name, source) for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
    )
    if n_embd % n_head:
        raise HFFormatError(
            f"{source}: n_head is {n_head}, but n_embd {n_embd} is not divisible by it; GPT-2 splits "
            "n_embd evenly across its heads"
        )
    n_ctx = hf.get("n_ctx")
    if n_ctx is not None and n_ctx != n_positions:
        raise HFFormatError(
            f"{source}: n_ctx is {n_ctx!r}, but n_positions is {n_positions}; GPT-2 has one context length"
        )
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise HFFormatError(f"{source}: layer_norm_epsilon is {eps!r}; GPT-2 needs a small positive number")
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
            layer_norm_epsilon=float(eps), bias=True, dropout=0.0,
        )  # fmt: skip
    except (TypeError, ValueError) as e:
        raise HFFormatError(f"{source}: {e}") from e
    return cfg, vocab


def _check_shapes(cfg: GPTConfig, hf_vocab: int, state: dict[str, torch.Tensor], config: str) -> None:
    """Every size the tensors determine against ``config`` (the config.json that claims it).

    The error names the config field and both values. ``n_head`` is the one size no tensor
    carries (``c_attn`` is (3 * n_embd, n_embd) whatever the split): only its divisibility is checked
    here, and an owtgpt export's own record of it in :func:`import_hf`.
    """
    blocks = {
        int(k.split(".")[2]) for k in state if k.startswith("transformer.h.") and k.split(".")[2].isdigit()
    }
    n_found = max(blocks) + 1 if blocks else 0
    if n_found != cfg.n_layer:
        raise HFFormatError(
            f"{config}: n_layer is {cfg.n_layer}, but the weights hold {n_found} blocks "
            f"(transformer.h.0 to h.{n_found - 1}); set n_layer to {n_found}"
        )
    wte, wpe = state.get("transformer.wte.weight"), state.get("transformer.wpe.weight")
    if wte is not None and wte.dim() == 2 and wte.shape[1] != cfg.n_embd:
        raise HFFormatError(
            f"{config}: n_embd is {cfg.n_embd}, but wte is {tuple(wte.shape)}: the weights are "
            f"{wte.shape[1]} wide"
        )
    if wte is not None and wte.dim() == 2 and wte.shape[0] != hf_vocab:
        raise HFFormatError(f"{config}: vocab_size is {hf_vocab}, but wte has {wte.shape[0]} rows")
    if wpe is not None and wpe.dim() == 2 and wpe.shape[0] != cfg.block_size:
        raise HFFormatError(f"{config}: n_positions is {cfg.block_size}, but wpe has {wpe.shape[0]} rows")
    c = cfg.n_embd
    fc = state.get("transformer.h.0.mlp.c_fc.weight")
    if fc is not None and fc.dim() == 2 and fc.shape[1] == c and fc.shape[0] != 4 * c:
        raise HFFormatError(
            f"{config}: the MLP is {fc.shape[0]} wide (h.0.mlp.c_fc), this architecture needs "
            f"4 * n_embd = {4 * c} (n_inner null or {4 * c})"
        )
    want = {"transformer.wte.weight": (hf_vocab, c), "transformer.wpe.weight": (cfg.block_size, c),
            "transformer.ln_f.weight": (c,), "transformer.ln_f.bias": (c,)}  # fmt: skip
    per_layer = {"ln_1.weight": (c,), "ln_1.bias": (c,), "attn.c_attn.weight": (3 * c, c),
                 "attn.c_attn.bias": (3 * c,), "attn.c_proj.weight": (c, c), "attn.c_proj.bias": (c,),
                 "ln_2.weight": (c,), "ln_2.bias": (c,), "mlp.c_fc.weight": (4 * c, c),
                 "mlp.c_fc.bias": (4 * c,), "mlp.c_proj.weight": (c, 4 * c),
                 "mlp.c_proj.bias": (c,)}  # fmt: skip
    want.update({f"transformer.h.{i}.{k}": v for i in range(cfg.n_layer) for k, v in per_layer.items()})
    for key, shape in want.items():
        if key not in state:
            continue  # reported as missing by the caller
        got = tuple(state[key].shape)
        if got != shape:
            stored = f" (stored transposed as {got[::-1]})" if key.endswith(CONV1D_SUFFIXES) else ""
            raise HFFormatError(
                f"{config}: n_embd {c} makes {key} {shape}, but the weights hold {got}{stored}"
            )


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
    kind = path_type(folder)
    if kind not in ("folder", "missing"):
        raise HFFormatError(
            f"{folder}: is a {kind}, not a folder; pass the Hugging Face GPT-2 folder holding config.json "
            "and the weights"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise HFFormatError(f"{folder}: no config.json; expected a Hugging Face GPT-2 checkpoint folder")
    hf_config = _read_json(config_file)
    cfg, _ = config_from_hf(hf_config, str(config_file))  # refuse an unsupported config before the weights
    recorded = _exported_n_head(folder / "model.safetensors")
    if recorded is not None and recorded != cfg.n_head:
        raise HFFormatError(
            f"{config_file}: n_head is {cfg.n_head}, but owtgpt exported {folder / 'model.safetensors'} with "
            f"n_head {recorded}; set n_head back to {recorded}"
        )
    padded = None
    if (folder / PADDED_ROWS_FILE).is_file():
        padded = _load_safetensors(folder / PADDED_ROWS_FILE).get(PADDED_ROWS_KEY)
        if padded is None:
            raise HFFormatError(f"{folder / PADDED_ROWS_FILE}: has no {PADDED_ROWS_KEY!r} tensor")
    return model_from_hf_state(
        hf_config, _read_state(folder), str(folder), padded_rows=padded, config_name=str(config_file)
    )


def _exported_n_head(weights: Path) -> int | None:
    """The ``n_head`` an owtgpt export recorded in its safetensors header (None for other files)."""
    from safetensors import SafetensorError, safe_open

    if not weights.is_file():
        return None
    try:
        with safe_open(str(weights), framework="pt") as f:
            value = (f.metadata() or {}).get(N_HEAD_METADATA)
    except (SafetensorError, OSError):
        return None  # _read_state reports a damaged file, naming it
    return int(value) if value is not None and value.isdigit() else None


def model_from_hf_state(
    hf_config: dict[str, Any],
    raw: dict[str, torch.Tensor],
    source: str,
    padded_rows: torch.Tensor | None = None,
    config_name: str | None = None,
) -> GPT:
    """A ``GPT`` (eval mode) from a GPT-2 ``config.json`` dict and an HF state dict (``GPT2Model`` or
    ``GPT2LMHeadModel`` keys, with or without the ``transformer.`` prefix; the ``attn.bias`` mask
    buffers are dropped); ``source`` names the folder or hub id in errors. A 50257-row model gains
    ``<|startoftext|>``, ``<|padding|>`` and ``<|unknown|>`` rows (why: at the code); other sizes are
    copied as they are. Padded rows are zero, or ``padded_rows`` (from an owtgpt export).
    ``config_name`` (default ``"SOURCE config"``) names the config in errors about its fields."""
    config_name = config_name or f"{source} config"
    cfg, hf_vocab = config_from_hf(hf_config, config_name)

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
    _check_shapes(cfg, hf_vocab, state, config_name)
    expected = _hf_keys(cfg.n_layer)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise HFFormatError(
            f"{source}: weights do not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    wte = state["transformer.wte.weight"]
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


def export_hf(
    model: torch.nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer files for owtgpt's vocabulary) for
    ``GPT2LMHeadModel.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)``.

    ``out_dir`` must pass :func:`check_export_out` (``source``: the checkpoint it came from). The
    folder is written as a hidden sibling, marked with :data:`EXPORT_MARKER` (the names it holds),
    fsync'd and swapped in whole (:func:`pipeline.fsutil.publish_dir`): a reader of ``out_dir`` sees
    the previous export or the new one, and an interrupted export leaves no folder under its name.
    """
    base = unwrap_model(model)
    if not isinstance(base, GPT):
        raise TypeError(f"export_hf needs a GPT, got {type(base).__name__}")
    out = Path(out_dir)
    check_export_out(out, overwrite=overwrite, source=None if source is None else Path(source))
    final = out.resolve()  # a symlinked --out: its target is replaced, the link stays
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(final)
    tmp = temp_dir_for(final)
    tmp.mkdir()
    try:
        names = _write_export(base, tmp)
        marker = {"written_by": "owtgpt export-hf", "version": 1, "files": sorted(names),
                  "source": None if source is None else str(source)}  # fmt: skip
        atomic_write_text(tmp / EXPORT_MARKER, json.dumps(marker, indent=2) + "\n")
        check_export_out(out, overwrite=overwrite, source=None if source is None else Path(source))
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_export(base: GPT, out: Path) -> list[str]:
    """The export's files, written into the new folder ``out``; returns their names."""
    from safetensors.torch import save as safetensors_save

    cfg = base.config
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
    written = []
    if cfg.vocab_size == VOCAB_SIZE:  # owtgpt's vocabulary: the tokenizer files make the folder usable
        written += [p.name for p in write_tokenizer(out, cfg.block_size)]
    padded = sd["transformer.wte.weight"][cfg.vocab_size :].detach().to("cpu").contiguous().clone()
    # never sampled, but owtgpt's training softmax spans them: without them a re-imported model's loss
    # differs (1e-2 nats on a briefly trained tiny model) and a fine-tune would not start where it ended
    if len(padded):
        atomic_write_bytes(out / PADDED_ROWS_FILE, safetensors_save({PADDED_ROWS_KEY: padded}))
        written.append(PADDED_ROWS_FILE)
    # the safetensors header records n_head, the one size no tensor shape carries (import_hf checks it)
    metadata = {"format": "pt", N_HEAD_METADATA: str(cfg.n_head)}
    atomic_write_bytes(out / "model.safetensors", safetensors_save(tensors, metadata=metadata))
    atomic_write_text(out / "config.json", json.dumps(hf_config_dict(cfg), indent=2) + "\n")
    return [*written, "model.safetensors", "config.json"]
