"""``python -m model``: sample, eval, import-hf / export-hf, info (``python -m model COMMAND --help``).

* ``sample`` streams the continuation of ``[<|startoftext|>] + encode_ordinary(prompt)`` (the training
  format's document start) to stdout as it is produced, never splitting a UTF-8 character; timing on stderr.
* ``eval`` scores as lm-evaluation-harness 0.4 does (:mod:`model.tools.evaluate`); ``import-hf`` /
  ``export-hf`` are :mod:`model.hf`; ``info`` counts parameters and FLOPs/token on the meta device
  (no memory).
* Failures go through :func:`pipeline.errors.run_command` (one line; exit 1 data, 2 usage, 130 Ctrl-C).

README.md ("Weights in and out", "Evaluating a model") has the rest.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from model.checkpoint import (
    CheckpointError,
    load_model,
    save_model,
)
from model.config import PRESETS, GPTConfig
from model.generate import generate_stream, window_start
from model.gpt import GPT
from model.tools.cli_config import (
    DTYPE_NAMES,
    EvalConfig,
    ExportHFConfig,
    ImportHFConfig,
    InfoConfig,
    SampleConfig,
)
from pipeline.cliconfig import add_dataclass_arguments, dataclass_from_args
from pipeline.device import resolve_device
from pipeline.errors import UserError, run_command
from pipeline.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # --dtype -> the autocast dtype


def _console(stderr: bool = False) -> Console:
    # piped output (logs, tests) gets a fixed width wide enough that no table cell is cut
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


def _err() -> Console:
    return _console(stderr=True)


def _warn(msg: str) -> None:
    print("warning: " + " ".join(msg.split()), file=sys.stderr, flush=True)


def _table(title: str, columns: tuple[str, ...], justify: str = "left") -> Table:
    """A summary table whose cells fold (never cut) long values such as checkpoint paths."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify=justify, overflow="fold", no_wrap=False)  # type: ignore[arg-type]
    return table


def _autocast(device: torch.device, dtype_name: str) -> contextlib.AbstractContextManager:
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype_name])


# ---------------------------------------------------------------------------------------- sample


class TokenStreamDecoder:
    """Token ids -> text, one id at a time, never splitting a UTF-8 character.

    BPE tokens are byte sequences, and a multi-byte character is often split across two tokens;
    decoding each token on its own would print replacement glyphs. The bytes go through an
    incremental UTF-8 decoder that holds back an incomplete character until its last byte arrives.
    """

    def __init__(self, enc):
        self.enc = enc
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.enc.decode_single_token_bytes(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def cmd_sample(args: argparse.Namespace) -> int:
    from pipeline.tokenizer import get_tokenizer, tokenizer_fingerprint

    opts = dataclass_from_args(SampleConfig, args)  # validated: a bad flag fails before any load
    device = resolve_device(opts.device)
    # read on the CPU (weights only, no optimizer state), then the model alone moves to the device
    model, ckpt = load_model(opts.checkpoint, map_location=device, warn=_warn)
    if model.config.vocab_size != VOCAB_SIZE:
        raise UserError(
            f"{ckpt['checkpoint_path']} has vocab_size {model.config.vocab_size}, but the owtgpt "
            f"tokenizer has {VOCAB_SIZE} ids; this checkpoint was not trained on owtgpt shards"
        )
    enc = get_tokenizer()
    fp = ckpt.get("tokenizer_fingerprint")
    if fp is not None and fp != tokenizer_fingerprint():
        raise UserError(
            f"{ckpt['checkpoint_path']} was trained with tokenizer {fp}, this tokenizer is "
            f"{tokenizer_fingerprint()}; its ids would decode to the wrong text"
        )
    model.eval()
    prompt_ids = [SOT_ID, *enc.encode_ordinary(opts.prompt)]
    # not refused: generation conditions on the last tokens that fit, as it does once the output
    # outgrows the context; a one-line warning says how many were dropped
    dropped = window_start(len(prompt_ids), len(prompt_ids), model.config.block_size)
    if dropped:
        _warn(
            f"--prompt is {len(prompt_ids)} tokens (with <|startoftext|>), longer than the model's "
            f"context of {model.config.block_size}: its first {dropped} tokens are dropped and generation "
            f"conditions on the last {len(prompt_ids) - dropped}"
        )
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    generator = None
    if opts.seed is not None:
        generator = torch.Generator(device=device).manual_seed(opts.seed)
    out = sys.stdout
    stats = []
    for i in range(opts.num_samples):
        if i:
            out.write("\n" + "-" * 40 + "\n")
        out.write(opts.prompt)
        out.flush()
        decoder = TokenStreamDecoder(enc)
        n, t0 = 0, time.perf_counter()
        with _autocast(device, opts.dtype):
            stream = generate_stream(
                model, idx, opts.max_new_tokens, temperature=opts.temperature, top_k=opts.top_k,
                top_p=opts.top_p, stop_at_eot=not opts.no_stop_at_eot, use_cache=not opts.no_cache,
                generator=generator,
            )  # fmt: skip
            for tok in stream:
                n += 1
                tid = int(tok[0])
                if tid == EOT_ID and not opts.no_stop_at_eot:
                    break
                out.write(decoder.push(tid))
                out.flush()
        out.write(decoder.flush() + "\n")
        out.flush()
        stats.append((n, time.perf_counter() - t0))
    table = _table("sample", ("checkpoint", "device", "prompt tokens", "new tokens", "tokens/s"))
    for n, dt in stats:
        table.add_row(
            ckpt["checkpoint_path"], str(device), str(len(prompt_ids)), str(n), f"{n / max(dt, 1e-9):.1f}"
        )
    _err().print(table)
    return 0


# ------------------------------------------------------------------------------- import / export


def cmd_import_hf(args: argparse.Namespace) -> int:
    from model.hf import import_hf
    from model.outdirs import import_target

    opts = dataclass_from_args(ImportHFConfig, args)
    out = Path(opts.out)
    target = import_target(out, Path(opts.dir), opts.overwrite)
    t0 = time.perf_counter()
    model = import_hf(opts.dir)
    source_vocab = json.loads((Path(opts.dir) / "config.json").read_text())["vocab_size"]
    extra: dict[str, Any] = {"source": {"kind": "huggingface", "path": str(Path(opts.dir).resolve())}}
    cfg = model.config
    if cfg.vocab_size == VOCAB_SIZE:
        with contextlib.suppress(Exception):  # the fingerprint needs the BPE files; optional here
            from pipeline.tokenizer import tokenizer_fingerprint

            extra["tokenizer_fingerprint"] = tokenizer_fingerprint()
    import_target(out, Path(opts.dir), opts.overwrite)  # again: the folder may have changed meanwhile
    created = [p for p in (out, target.parent) if not p.exists() and p.suffix != ".pt"]
    try:
        save_model(target, model, extra)  # atomic: the old file or the new one, never a partial one
    except BaseException:
        for p in reversed(created):  # a failed import leaves no empty folder behind
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    table = _table(
        "import-hf", ("from", "to", "layers", "heads", "width", "context", "vocab", "params", "seconds")
    )
    vocab = f"{source_vocab} -> {cfg.vocab_size}" if source_vocab != cfg.vocab_size else str(cfg.vocab_size)
    table.add_row(
        str(opts.dir), str(target), str(cfg.n_layer), str(cfg.n_head), str(cfg.n_embd), str(cfg.block_size),
        vocab, f"{model.num_params(non_embedding=False):,}", f"{time.perf_counter() - t0:.1f}",
    )  # fmt: skip
    _err().print(table)
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from model.hf import export_hf
    from model.outdirs import check_export_out
    from pipeline.tokenizer import TokenizerUnavailableError, tokenizer_fingerprint

    opts = dataclass_from_args(ExportHFConfig, args)
    t0 = time.perf_counter()
    source = Path(opts.checkpoint)
    check_export_out(Path(opts.out), overwrite=opts.overwrite, source=source)  # before the long load
    model, ckpt = load_model(opts.checkpoint, warn=_warn)
    with_tokenizer = model.config.vocab_size == VOCAB_SIZE
    try:
        fp = ckpt.get("tokenizer_fingerprint")
        if with_tokenizer and fp is not None and fp != tokenizer_fingerprint():
            raise UserError(
                f"{ckpt['checkpoint_path']} was trained with tokenizer {fp}, this tokenizer is "
                f"{tokenizer_fingerprint()}; the exported tokenizer files would not match its ids"
            )
        out = export_hf(model, opts.out, overwrite=opts.overwrite, source=source)
    except TokenizerUnavailableError as e:
        raise UserError(f"export-hf writes the tokenizer files: {e}") from None
    table = _table("export-hf", ("from", "to", "vocab_size", "tokenizer", "seconds"))
    tokenizer = "GPT-2 BPE + owtgpt specials" if with_tokenizer else "none (not owtgpt's vocabulary)"
    table.add_row(
        ckpt["checkpoint_path"], str(out), str(model.config.vocab_size), tokenizer,
        f"{time.perf_counter() - t0:.1f}",
    )  # fmt: skip
    _err().print(table)
    print(f"load it with: transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    if with_tokenizer:
        print(f"          and transformers.AutoTokenizer.from_pretrained({str(out)!r})")
    return 0


# ----------------------------------------------------------------------------------------- info


def _meta_model(cfg: GPTConfig) -> GPT:
    with torch.device("meta"):
        return GPT(cfg)


def cmd_info(args: argparse.Namespace) -> int:
    opts = dataclass_from_args(InfoConfig, args)
    table = _table(
        "owtgpt model presets" if opts.checkpoint is None else "checkpoint",
        ("name", "layers", "heads", "width", "ctx", "vocab", "padded", "params", "non-emb", "GFLOP/tok"),
        justify="right",
    )
    if opts.checkpoint is not None:
        model, ckpt = load_model(opts.checkpoint, warn=_warn)  # on the CPU: the weights are checked finite
        rows = [(ckpt["checkpoint_path"], model)]
    else:
        rows = [(name, _meta_model(GPTConfig.from_preset(name))) for name in PRESETS]
    for name, model in rows:
        c = model.config
        table.add_row(
            name, str(c.n_layer), str(c.n_head), str(c.n_embd), str(c.block_size),
            str(c.vocab_size), str(c.padded_vocab_size),
            f"{model.num_params(non_embedding=False) / 1e6:,.1f}M",
            f"{model.num_params() / 1e6:,.1f}M", f"{model.flops_per_token() / 1e9:.2f}",
        )  # fmt: skip
    _console().print(table)
    return 0


# ----------------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from model.tools.eval_tasks import TASKS
    from model.tools.evaluate import results_table, run_tasks
    from pipeline.fsutil import atomic_write_text
    from pipeline.tokenizer import tokenizer_fingerprint

    opts = dataclass_from_args(EvalConfig, args)  # validated: a bad flag fails before any load
    tasks = opts.tasks()
    if opts.json not in (None, "-"):
        _check_json_out(Path(opts.json))  # before the long evaluation, not after it
    device = resolve_device(opts.device)
    model, ckpt = load_model(opts.checkpoint, map_location=device, warn=_warn)
    fp = ckpt.get("tokenizer_fingerprint")
    if model.config.vocab_size != VOCAB_SIZE or (fp is not None and fp != tokenizer_fingerprint()):
        raise UserError(
            f"{ckpt['checkpoint_path']}: not trained with the owtgpt tokenizer (vocab_size "
            f"{model.config.vocab_size}, tokenizer {fp}); the tasks' text would be misread"
        )
    model.eval()
    to_stdout = opts.json == "-"
    console = _console(stderr=True)
    results = run_tasks(model, tasks, data=opts.data, limit=opts.limit, batch_size=opts.batch_size,
                        autocast=lambda: _autocast(device, opts.dtype), console=console)  # fmt: skip
    _console(stderr=to_stdout).print(results_table(results, title=f"eval: {ckpt['checkpoint_path']}"))
    if opts.json is not None:
        doc = {"checkpoint": ckpt["checkpoint_path"], "device": str(device), "limit": opts.limit,
               "tasks": {r.task: r.to_json() for r in results},
               "sources": {t: str(opts.data) if opts.data is not None else TASKS[t].hub_path
                           for t in tasks}}  # fmt: skip
        text = json.dumps(doc, indent=2) + "\n"
        if to_stdout:
            sys.stdout.write(text)
        else:
            atomic_write_text(Path(opts.json), text)
    return 0


def _check_json_out(path: Path) -> None:
    """``--json PATH`` replaces only an earlier eval result (its own keys), never another file."""
    from pipeline.fsutil import path_type

    kind = path_type(path)
    if kind == "missing":
        return
    if kind != "file":
        raise UserError(f"--json {path} is a {kind}, not a file; choose a new file path")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        earlier = isinstance(doc, dict) and {"checkpoint", "tasks", "sources"} <= set(doc)
    except (OSError, UnicodeDecodeError, ValueError):
        earlier = False
    if not earlier:
        raise UserError(
            f"--json {path} exists and is not an earlier eval result (no 'checkpoint', 'tasks' and "
            "'sources' keys); eval replaces only its own output: choose another path"
        )


# --------------------------------------------------------------------------------------- parser


def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="print the full traceback of an error (or OWTGPT_DEBUG=1)"
    )
    parser = argparse.ArgumentParser(
        prog="python -m model",
        parents=[common],
        description="owtgpt's GPT-2: sample, import/export Hugging Face checkpoints, list presets. "
        "Run `python -m model COMMAND --help` for each command's flags.",
        epilog="exit status: 0 ok, 1 bad file or folder, 2 bad flag, 130 interrupted; errors are one line.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "sample",
        parents=[common],
        help="stream a continuation of --prompt from a checkpoint",
        description="Generate text from a checkpoint (KV-cached), printing it as it is produced.",
    )
    add_dataclass_arguments(p, SampleConfig)  # one flag per field, its default and help
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "import-hf",
        parents=[common],
        help="convert a local Hugging Face GPT-2 folder to an owtgpt checkpoint",
        description="Read config.json + model.safetensors|pytorch_model.bin (the hub's gpt2 layout) "
        "and write an owtgpt checkpoint. 50257-row models gain <|startoftext|> (:= EOT's row) and "
        "<|padding|>/<|unknown|> (:= mean row); see model/hf.py.",
    )
    add_dataclass_arguments(p, ImportHFConfig, positional=("dir",))
    p.set_defaults(func=cmd_import_hf)

    p = sub.add_parser(
        "export-hf",
        parents=[common],
        help="write a checkpoint as a Hugging Face GPT-2 folder",
        description="Write config.json + model.safetensors loadable by "
        "transformers.GPT2LMHeadModel.from_pretrained (vocab_size 50260, padded rows dropped), and the "
        "tokenizer (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json, "
        "derived from tiktoken's GPT-2 ranks: no download) so AutoTokenizer, pipeline() and lm-eval load "
        "the folder as it is.",
    )
    add_dataclass_arguments(p, ExportHFConfig, positional=("checkpoint",))
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser(
        "info",
        parents=[common],
        help="presets (or a checkpoint): sizes, parameter counts, FLOPs/token",
        description="Show each preset's shape, parameter counts (tied embedding once) and "
        "training FLOPs per token at full context (6N + 6LCT).",
    )
    add_dataclass_arguments(p, InfoConfig)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "eval",
        parents=[common],
        help="zero-shot tasks (hellaswag, lambada, wikitext2/103) or a shard folder's val split",
        description="Score a checkpoint as lm-evaluation-harness 0.4 does: hellaswag (acc, acc_norm), "
        "lambada (acc, perplexity), wikitext2 / wikitext103 (word/byte perplexity, bits per byte), "
        "shards (loss, perplexity, bits per byte of --data DIR's val split). Hub datasets load through "
        "`datasets`; --data reads a local .jsonl/.parquet in the hub schema instead. See README.md.",
    )
    add_dataclass_arguments(p, EvalConfig)  # one flag per field, its default and help
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from model.hf import HFFormatError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser().parse_args(argv)
    return run_command(
        lambda: args.func(args),
        debug=args.debug or "--debug" in argv,
        user_errors=(CheckpointError, HFFormatError),
    )
