"""Zero-shot eval tasks: where their data comes from, and the text each one asks the model to score.

* Every task follows lm-evaluation-harness 0.4's definition (its task YAMLs and ``utils.py``), so
  numbers compare with published ones; README.md "Evaluating a model" lists them:
  - ``hellaswag`` (hub ``Rowan/hellaswag``, validation): query ``preprocess(activity_label + ": " +
    ctx_a + " " + ctx_b.capitalize())``, four endings ``" " + preprocess(ending)``.
  - ``lambada`` (hub ``EleutherAI/lambada_openai``, test): context = the words before the last
    space-separated word, target = ``" " + last word``.
  - ``wikitext2`` / ``wikitext103`` (hub ``EleutherAI/wikitext_document_level``, test, configs
    ``wikitext-2-raw-v1`` / ``wikitext-103-raw-v1``): each ``page`` through the harness's
    detokenizer, scored whole with rolling windows; words and bytes are counted on the raw page.
  - ``shards``: the val split of an owtgpt shard folder (``--data DIR``), document by document.
* :func:`load_docs` reads a task's rows from the hub through ``datasets``, or from a local
  ``.jsonl`` / ``.parquet`` in the same schema (``--data``). A missing field, a field of the wrong
  type (``null`` included), an empty file or an unknown suffix is a :class:`~pipeline.errors.UserError`
  naming the file, the line or row, the field and the fix.
* Nothing here runs the model; :mod:`model.tools.evaluate` scores what these functions build.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UsageError, UserError, json_type_name

if TYPE_CHECKING:  # numpy only for the annotation: importing this module stays light
    import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's rows live and which fields every row must have."""

    name: str
    kind: str  # "multiple_choice" | "loglikelihood" | "rolling" | "shards"
    hub_path: str | None
    hub_name: str | None
    split: str | None
    fields: tuple[str, ...]
    about: str


TASKS: dict[str, TaskSpec] = {
    "hellaswag": TaskSpec(
        "hellaswag",
        "multiple_choice",
        "Rowan/hellaswag",
        None,
        "validation",
        ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
        "pick the likeliest of 4 endings: acc, acc_norm (length-normalised)",
    ),
    "lambada": TaskSpec(
        "lambada",
        "loglikelihood",
        "EleutherAI/lambada_openai",
        "default",
        "test",
        ("text",),
        "predict the last word: acc (greedy), perplexity",
    ),
    "wikitext2": TaskSpec(
        "wikitext2",
        "rolling",
        "EleutherAI/wikitext_document_level",
        "wikitext-2-raw-v1",
        "test",
        ("page",),
        "whole-document perplexity: word_perplexity, byte_perplexity, bits_per_byte",
    ),
    "wikitext103": TaskSpec(
        "wikitext103",
        "rolling",
        "EleutherAI/wikitext_document_level",
        "wikitext-103-raw-v1",
        "test",
        ("page",),
        "as wikitext2, on the WikiText-103 test pages",
    ),
    "shards": TaskSpec(
        "shards",
        "shards",
        None,
        None,
        "val",
        (),
        "val split of a shard folder (--data DIR): loss, perplexity, bits_per_byte",
    ),
}


def parse_tasks(values: list[str] | str) -> list[str]:
    """``["hellaswag,lambada", "wikitext2"]`` -> the task names in order, each once; unknown -> UsageError."""
    items = [values] if isinstance(values, str) else list(values)
    names: list[str] = []
    for item in items:
        for name in (s.strip() for s in item.split(",")):
            if not name:
                continue
            if name not in TASKS:
                raise UsageError(f"--task {name!r} is not a task; choose from {', '.join(TASKS)}")
            if name not in names:
                names.append(name)
    if not names:
        raise UsageError(f"--task is empty; choose from {', '.join(TASKS)}")
    return names


# ------------------------------------------------------------------------------------ loading


def _read_local(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` pairs of a local file: ``"line N"`` (jsonl, from 1), ``"row N"`` (parquet, from 0)."""
    from pipeline.fsutil import path_type

    suffix = path.suffix.lower()
    kind = path_type(path)
    if kind in ("missing", "broken symlink"):
        raise UserError(
            f"--data {path}: does not exist; give a local .jsonl or .parquet in the task's hub schema"
        )
    if kind not in ("file", "folder"):  # a FIFO would block the read, /dev/zero never end it
        raise UserError(f"--data {path}: is a {kind}, not a file; give a local .jsonl or .parquet file")
    if suffix in (".jsonl", ".json"):
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(
                        f"--data {path}: line {lineno} is not JSON ({e.msg}); one object per line"
                    ) from e
                if not isinstance(row, dict):
                    raise UserError(
                        f"--data {path}: line {lineno} is a JSON {json_type_name(row)}, not an object; one "
                        "object per line"
                    )
                rows.append((f"line {lineno}", row))
        return rows
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return [(f"row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"--data {path}: not a readable parquet file ({e})") from e
    raise UsageError(f"--data {path}: unknown suffix {suffix!r}; give a .jsonl or .parquet file")


def _read_hub(spec: TaskSpec) -> list[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec.hub_path, spec.hub_name, split=spec.split)
    except Exception as e:  # offline, no cache, renamed dataset: all have the same fix
        raise UserError(
            f"task {spec.name}: could not load {spec.hub_path} ({spec.hub_name or 'default'}, {spec.split}) "
            f"from the hub ({type(e).__name__}: {e}); pass --data LOCAL_FILE (.jsonl or .parquet with "
            f"fields {', '.join(spec.fields)})"
        ) from e
    return [(f"row {i}", row) for i, row in enumerate(ds.to_list())]


def _shown(value: Any) -> str:
    """``null``, or ``a number (5)``: what a field holds, short enough for one line."""
    if value is None:
        return "null"
    text = json.dumps(value, ensure_ascii=False, default=str)
    kind = json_type_name(value)
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{article} {kind} ({text[:40] + '...' if len(text) > 40 else text})"


def _check_row(spec: TaskSpec, row: dict[str, Any]) -> str | None:
    """What is wrong with ``row`` for ``spec`` (field and value, as the file holds them), else None."""
    for name in spec.fields:
        if name not in row:
            return f"no field {name!r}; task {spec.name} expects fields {', '.join(spec.fields)}"
    strings = {"hellaswag": ("activity_label", "ctx_a", "ctx_b")}.get(spec.name, spec.fields)
    for name in strings:
        if not isinstance(row[name], str):
            return f"field {name!r} is {_shown(row[name])}; task {spec.name} needs a string there"
    if spec.kind == "rolling" and not row["page"]:  # no bytes: its bits per byte would divide by zero
        return f"field 'page' is an empty string; task {spec.name} needs the page's text"
    if spec.kind != "multiple_choice":
        return None
    endings, label = row["endings"], row["label"]
    if not isinstance(endings, list) or not endings:
        return f"field 'endings' is {_shown(endings)}; task {spec.name} needs a non-empty list of strings"
    for j, ending in enumerate(endings):
        if not isinstance(ending, str):
            return f"field 'endings' item {j} is {_shown(ending)}; task {spec.name} needs a list of strings"
    index = label if isinstance(label, int) and not isinstance(label, bool) else None
    if isinstance(label, str) and label.strip().isdigit():
        index = int(label)  # the hub stores it as a string, "0" to "3"
    if index is None or not 0 <= index < len(endings):
        return (
            f"field 'label' is {_shown(label)}; task {spec.name} needs the index of the right ending, "
            f"0 to {len(endings) - 1} (a number or a string of digits)"
        )
    return None


def load_docs(task: str, data: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of ``task`` (first ``limit`` of them), from ``data`` or the hub, type-checked.

    Every field the task reads is checked for its type; the error names the file, the line (jsonl,
    from 1) or row (parquet and the hub, from 0), the field and what it holds (``null`` as null).
    """
    spec = TASKS[task]
    if spec.kind == "shards":
        raise UsageError("task shards reads a shard folder; use load_shard_docs(--data DIR)")
    where = f"--data {data}" if data is not None else f"{spec.hub_path} ({spec.split})"
    rows = _read_local(Path(data)) if data is not None else _read_hub(spec)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise UserError(f"{where}: no rows; task {task} needs at least one")
    for loc, row in rows:
        problem = _check_row(spec, row)
        if problem is not None:
            raise UserError(
                f"{where}: {loc} {problem}" if problem.startswith("has ") else f"{where}: {loc}: {problem}"
            )
    return [row for _, row in rows]


def load_shard_docs(data: str | Path | None, limit: int | None = None):
    """``(ShardDataset, list of uint16 token arrays [SOT] + text + [EOT])`` of a folder's val split."""
    from pipeline.format import ShardDataset, ShardFormatError

    if data is None:
        raise UsageError("task shards needs --data DIR, a shard folder written by `python -m pipeline build`")
    try:
        dataset = ShardDataset(data)
        shards = dataset.shards("val")
    except (ShardFormatError, FileNotFoundError, ValueError) as e:
        raise UserError(f"--data {data}: not a readable shard folder ({e})") from e
    docs: list[np.ndarray] = []
    for shard in shards:
        for i in range(shard.num_docs):
            if limit is not None and len(docs) >= limit:
                break
            docs.append(shard.doc(i))
    if not docs:
        raise UserError(f"--data {data}: the val split has no documents; rebuild with --val-fraction > 0")
    return dataset, docs


# ------------------------------------------------------------------------- text preprocessing


def hellaswag_preprocess(text: str) -> str:
    """The harness's clean-up of WikiHow artefacts: ``" [title]"`` -> ``". "``, drop ``[...]``."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")  # once, as the harness does (not until no double space is left)


def hellaswag_item(doc: dict[str, Any]) -> tuple[str, list[str], int]:
    """``(query, choices, gold)``; choices carry no leading delimiter (the scorer adds ``" "``)."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()  # str.capitalize also lowercases the rest
    query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return query, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"])


def lambada_item(doc: dict[str, Any]) -> tuple[str, str]:
    """``(context, target)``: the text before the last ``" "``-separated word, and ``" " + word``."""
    words = doc["text"].split(" ")
    return " ".join(words[:-1]), " " + words[-1]


_DETOK_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
)
_DETOK_BRACKETS: tuple[tuple[str, str], ...] = (
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    (r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    (r"{\s*([^}]*?)\s*}", r"{\1}"),
    (r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    (r"'\s*([^']*?)\s*'", r"'\1'"),
)


def wikitext_detokenize(page: str) -> str:
    """Undo WikiText's tokenisation (``" @-@ "``, spaced punctuation, ...) in the harness's order."""
    s = page.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)  # sic: the harness's pattern, kept so scores compare
    for old, new in _DETOK_REPLACEMENTS:
        s = s.replace(old, new)
    for pattern, repl in _DETOK_BRACKETS:
        s = re.sub(pattern, repl, s)
    for old, new in (
        ("= = = =", "===="),
        ("= = =", "==="),
        ("= =", "=="),
        (" \u00b0 ", "\u00b0"),
        (" \n", "\n"),
        ("\n ", "\n"),
        (" N ", " 1 "),
        (" 's", "'s"),
    ):
        s = s.replace(old, new)
    return s


def wikitext_counts(page: str) -> tuple[int, int]:
    """``(words, UTF-8 bytes)`` of the *raw* page: the harness's denominators (not the detokenized text)."""
    return len(re.split(r"\s+", page)), len(page.encode("utf-8"))


# -------------------------------------------------------------------------- token requests


def encode_pair(
    encode: Callable[[str], list[int]], context: str, continuation: str, prefix_id: int
) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split the way the harness's HF model splits them.

    Trailing whitespace of the context moves to the continuation (so ``"word "`` + ``"x"`` is
    tokenised as ``"word"`` + ``" x"``, GPT-2's word-initial tokens); then the whole string is
    encoded and cut after the context's own tokens, so BPE merges across the seam are those the
    model saw in training. An empty context becomes ``[prefix_id]``.
    """
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    if not context:
        cont = encode(continuation)
        if cont and cont[0] == prefix_id:
            return cont[:1], cont[1:]
        return [prefix_id], cont
    ctx = encode(context)
    return ctx, encode(context + continuation)[len(ctx) :]


def rolling_windows(tokens: list[int], prefix_id: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint ``(context, scored)`` windows that score every token of ``tokens`` exactly once.

    The first window reads ``[prefix_id] + tokens[:max_len-1]`` and scores ``tokens[:max_len]``;
    each later window scores the next (up to) ``max_len`` tokens with as much preceding text as fits,
    so ``len(context) + len(scored) == max_len + 1`` and the model input is ``max_len`` tokens.
    This is the harness's ``get_rolling_token_windows(context_len=1)`` + ``make_disjoint_window``.
    """
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    out = [([prefix_id], tokens[:first])]
    done = first
    while done < len(tokens):
        m = min(max_len, len(tokens) - done)
        end = done + m
        out.append((tokens[end - max_len - 1 : end - m], tokens[end - m : end]))
        done = end
    return out
