"""The scoring engine of ``python -m model eval`` and of the trainer's ``--eval-tasks``.

* :class:`Scorer` answers lm-evaluation-harness's ``loglikelihood`` request: for token lists
  ``(context, continuation)`` the summed log-probability of the continuation and whether greedy
  decoding would produce it. Inputs longer than the model's context keep their last
  ``block_size + 1`` tokens (truncated from the left, the last one is only a target). Requests are
  sorted by length (longest first) and batched, right-padded (causal attention never looks right).
  Only the continuation's positions go through the LM head, in chunks, and the softmax runs in fp32
  over the *real* vocabulary (``vocab_size`` columns, not the padded rows), as a model exported with
  ``export-hf`` is scored by the harness. Under ``torch.no_grad``, in eval mode, with the caller's
  autocast (bf16 on CUDA from the CLI).
* :func:`task_sums` turns a task's rows into a few additive counts (correct answers, summed
  log-likelihoods, words, bytes, ...). Counts add across ranks, so the trainer splits the rows
  over ranks and all-reduces them; :func:`task_metrics` then gives the harness's figures and
  standard errors (``sqrt(p(1-p)/(n-1))`` for accuracies; ``None`` where the harness prints N/A or
  a bootstrap estimate). Task definitions: :mod:`model.tools.eval_tasks`; README "Evaluating a model".
* HellaSwag's ``acc_norm`` divides by the ending's length in *characters* (``len(str)``), which is
  what the harness 0.4 computes for ``acc_norm`` (its ``acc_bytes`` uses UTF-8 bytes); the two
  agree on ASCII endings.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from model.gpt import GPT
from model.tools.eval_tasks import (
    TASKS,
    encode_pair,
    hellaswag_item,
    lambada_item,
    load_docs,
    load_shard_docs,
    rolling_windows,
    wikitext_counts,
    wikitext_detokenize,
)
from pipeline.errors import UserError
from pipeline.tokenizer import EOT_ID, SOT_ID, get_tokenizer

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)
HEAD_CHUNK = 1024  # positions per LM-head matmul: 1024 x 50260 fp32 logits = 206 MB at most


class Scorer:
    """Batched ``loglikelihood`` over token requests with one model (see the module docstring)."""

    def __init__(
        self,
        model: GPT,
        *,
        batch_size: int = 32,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.block_size = int(model.config.block_size)
        self.vocab_size = int(model.config.vocab_size)
        self.device = next(model.parameters()).device
        self.autocast = autocast or contextlib.nullcontext
        self.on_batch = on_batch  # (requests done, tokens read) after each batch: the progress bar

    @torch.no_grad()
    def loglikelihood(self, requests: Sequence[Request]) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation | context), greedy == continuation)`` per request, in order."""
        L = self.block_size
        inputs: list[list[int]] = []
        for ctx, cont in requests:
            if not cont:
                raise ValueError("a request has an empty continuation; nothing to score")
            if len(cont) > L:  # nothing left to condition on: a data problem, not a bug
                raise UserError(
                    f"a continuation of {len(cont)} tokens exceeds the model's context of {L} tokens; "
                    "evaluate a model with a longer context (--block-size) or drop the row"
                )
            inputs.append((list(ctx) + list(cont))[-(L + 1) :][:-1])  # (<= L,) model input
        order = sorted(range(len(requests)), key=lambda i: -len(inputs[i]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        was_training = self.model.training
        self.model.eval()
        try:
            for lo in range(0, len(order), self.batch_size):
                batch = order[lo : lo + self.batch_size]
                scores = self._score_batch([inputs[i] for i in batch], [requests[i][1] for i in batch])
                for i, res in zip(batch, scores, strict=True):
                    out[i] = res
                if self.on_batch is not None:
                    self.on_batch(len(batch), sum(len(inputs[i]) for i in batch))
        finally:
            self.model.train(was_training)
        return out

    def _score_batch(self, inputs: list[list[int]], conts: list[list[int]]) -> list[tuple[float, bool]]:
        B, T = len(inputs), max(len(x) for x in inputs)
        x = torch.zeros(B, T, dtype=torch.long)  # right padding: later positions never reach earlier ones
        rows: list[int] = []
        cols: list[int] = []
        targets: list[int] = []
        for b, (inp, cont) in enumerate(zip(inputs, conts, strict=True)):
            x[b, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            n = len(cont)  # logits at positions len-n .. len-1 predict the continuation
            rows.extend([b] * n)
            cols.extend(range(len(inp) - n, len(inp)))
            targets.extend(cont)
        row_t = torch.tensor(rows, device=self.device)
        col_t = torch.tensor(cols, device=self.device)
        tgt_t = torch.tensor(targets, device=self.device)
        head = self.model.lm_head.weight[: self.vocab_size]  # (V, C): the real ids only
        lp = torch.empty(len(targets), dtype=torch.float32, device=self.device)
        hit = torch.empty(len(targets), dtype=torch.bool, device=self.device)
        with self.autocast():
            h = self.model.hidden_states(x.to(self.device))  # (B, T, C)
            for s in range(0, len(targets), HEAD_CHUNK):
                sel = slice(s, s + HEAD_CHUNK)
                logits = F.linear(h[row_t[sel], col_t[sel]], head).float()  # (n, V)
                logp = F.log_softmax(logits, dim=-1)
                lp[sel] = logp.gather(1, tgt_t[sel, None])[:, 0]
                hit[sel] = logits.argmax(dim=-1) == tgt_t[sel]
        sums = torch.zeros(B, dtype=torch.float32, device=self.device).index_add_(0, row_t, lp)
        misses = torch.zeros(B, dtype=torch.long, device=self.device).index_add_(0, row_t, (~hit).long())
        return [(float(a), int(m) == 0) for a, m in zip(sums.tolist(), misses.tolist(), strict=True)]


# ------------------------------------------------------------------------------ tasks -> sums


@functools.lru_cache(maxsize=1)
def _token_bytes() -> np.ndarray:
    """UTF-8 byte length of every BPE id (special ids count 0: they are markers, not text)."""
    enc = get_tokenizer()
    lengths = np.zeros(enc.n_vocab, dtype=np.int64)
    for i in range(EOT_ID):
        lengths[i] = len(enc.decode_single_token_bytes(i))
    return lengths


SUM_FIELDS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("n", "correct", "correct_norm"),
    "loglikelihood": ("n", "correct", "loglik"),
    "rolling": ("n", "loglik", "words", "bytes"),
    "shards": ("n", "loglik", "tokens", "bytes"),
}


def task_requests(
    task: str, docs: Sequence[Any], block_size: int
) -> tuple[list[Request], Callable[[list], list[float]]]:
    """The token requests of ``docs`` and a function turning their answers into the task's sums.

    ``block_size`` (the model's context) sets the rolling windows of the perplexity tasks.
    """
    kind = TASKS[task].kind
    encode = get_tokenizer().encode_ordinary
    reqs: list[Request] = []
    if kind == "multiple_choice":
        meta = []
        for doc in docs:
            query, choices, gold = hellaswag_item(doc)
            reqs += [encode_pair(encode, query, " " + c, SOT_ID) for c in choices]
            meta.append((len(choices), [float(len(c)) for c in choices], gold))

        def reduce(res: list) -> list[float]:
            n = correct = correct_norm = 0
            k = 0
            for m, lengths, gold in meta:
                lls = [ll for ll, _ in res[k : k + m]]
                k += m
                n += 1
                correct += int(np.argmax(lls)) == gold  # first maximum on ties, as numpy (and the harness)
                correct_norm += int(np.argmax(np.array(lls) / np.array(lengths))) == gold
            return [n, correct, correct_norm]

    elif kind == "loglikelihood":
        for doc in docs:
            reqs.append(encode_pair(encode, *lambada_item(doc), SOT_ID))

        def reduce(res: list) -> list[float]:
            return [len(res), sum(int(g) for _, g in res), math.fsum(ll for ll, _ in res)]

    elif kind == "rolling":
        spans, counts = [], []
        for doc in docs:
            windows = rolling_windows(encode(wikitext_detokenize(doc["page"])), SOT_ID, block_size)
            spans.append(len(windows))
            reqs += windows
            counts.append(wikitext_counts(doc["page"]))

        def reduce(res: list) -> list[float]:
            return [
                len(spans),
                math.fsum(ll for ll, _ in res),
                sum(w for w, _ in counts),
                sum(b for _, b in counts),
            ]

    else:  # shards: documents are [SOT] + text + [EOT]; SOT conditions the first prediction
        nbytes = _token_bytes()
        ntok = 0
        total_bytes = 0
        for doc in docs:
            ids = np.asarray(doc, dtype=np.int64)
            reqs += rolling_windows(ids[1:].tolist(), int(ids[0]), block_size)
            ntok += len(ids) - 1
            total_bytes += int(nbytes[ids[ids < len(nbytes)]].sum())

        def reduce(res: list) -> list[float]:
            return [len(docs), math.fsum(ll for ll, _ in res), ntok, total_bytes]

    return reqs, reduce


def task_sums(task: str, docs: Sequence[Any], scorer: Scorer) -> list[float]:
    """The additive counts of ``task`` over ``docs`` (:data:`SUM_FIELDS` order)."""
    reqs, reduce = task_requests(task, docs, scorer.block_size)
    return reduce(scorer.loglikelihood(reqs)) if reqs else [0.0] * len(SUM_FIELDS[TASKS[task].kind])


def _acc_stderr(p: float, n: int) -> float | None:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


def task_metrics(task: str, sums: Sequence[float]) -> dict[str, tuple[float, float | None]]:
    """``metric -> (value, stderr or None)`` from (all-reduced) :func:`task_sums` counts."""
    kind = TASKS[task].kind
    s = dict(zip(SUM_FIELDS[kind], (float(v) for v in sums), strict=True))
    n = round(s["n"])
    if kind == "multiple_choice":
        acc, acc_norm = s["correct"] / n, s["correct_norm"] / n
        return {"acc": (acc, _acc_stderr(acc, n)), "acc_norm": (acc_norm, _acc_stderr(acc_norm, n))}
    if kind == "loglikelihood":
        acc = s["correct"] / n
        return {"perplexity": (math.exp(-s["loglik"] / n), None), "acc": (acc, _acc_stderr(acc, n))}
    if kind == "rolling":
        return {
            "word_perplexity": (math.exp(-s["loglik"] / s["words"]), None),
            "byte_perplexity": (math.exp(-s["loglik"] / s["bytes"]), None),
            "bits_per_byte": (-s["loglik"] / s["bytes"] / math.log(2), None),
        }
    loss = -s["loglik"] / s["tokens"]
    return {
        "loss": (loss, None),
        "perplexity": (math.exp(loss), None),
        "bits_per_byte": (-s["loglik"] / s["bytes"] / math.log(2), None),
    }


# ----------------------------------------------------------------------------------- drivers


@dataclass
class TaskResult:
    """One task's figures, as the table and ``--json`` show them."""

    task: str
    n: int
    metrics: dict[str, tuple[float, float | None]]
    seconds: float = 0.0
    tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n}
        for name, (value, stderr) in self.metrics.items():
            out[name] = value
            out[name + "_stderr"] = stderr
        return {**out, "seconds": round(self.seconds, 3), **self.extra}


def load_task_docs(task: str, data=None, limit: int | None = None, vocab_size: int | None = None) -> list:
    """Rows (or shard documents) of ``task``; a shard folder's vocab must match the model's."""
    if TASKS[task].kind != "shards":
        return load_docs(task, data, limit)
    dataset, docs = load_shard_docs(data, limit)
    if vocab_size is not None and dataset.vocab_size != vocab_size:
        raise UserError(
            f"--data {data}: shards have vocab_size {dataset.vocab_size} but the model has {vocab_size}; "
            "evaluate a checkpoint trained on this tokenizer"
        )
    return docs


class TaskEvaluator:
    """The trainer's ``--eval-tasks``: rows loaded once, this rank's share scored at each call.

    Rank ``r`` of ``world_size`` scores rows ``r, r + world_size, ...``; the caller's ``all_reduce``
    (an in-place sum of a float64 tensor across ranks) adds the counts, so every rank ends with
    the figures of the whole set: the same numbers ``python -m model eval`` prints.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        *,
        data=None,
        limit: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        batch_size: int = 32,
        vocab_size: int | None = None,
    ):
        self.docs = {t: load_task_docs(t, data, limit, vocab_size)[rank::world_size] for t in tasks}
        self.batch_size = batch_size

    def __call__(
        self, model: GPT, autocast=None, all_reduce: Callable[[torch.Tensor], None] | None = None
    ) -> dict[str, TaskResult]:
        scorer = Scorer(model, batch_size=self.batch_size, autocast=autocast)
        out = {}
        for task, docs in self.docs.items():
            t0 = time.perf_counter()
            sums = torch.tensor(task_sums(task, docs, scorer), dtype=torch.float64, device=scorer.device)
            if all_reduce is not None:
                all_reduce(sums)
            vals = sums.tolist()
            out[task] = TaskResult(task, round(vals[0]), task_metrics(task, vals), time.perf_counter() - t0)
        return out


def run_tasks(
    model: GPT,
    tasks: Sequence[str],
    *,
    data=None,
    limit: int | None = None,
    batch_size: int = 32,
    autocast=None,
    console=None,
) -> list[TaskResult]:
    """Evaluate ``model`` on each task in this process, with a rich progress bar on ``console``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    results = []
    progress = Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("requests"),
        TextColumn("{task.fields[rate]} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
    )
    with progress:
        for task in tasks:
            docs = load_task_docs(task, data, limit, int(model.config.vocab_size))
            scorer = Scorer(model, batch_size=batch_size, autocast=autocast)
            t0 = time.perf_counter()
            reqs, reduce = task_requests(task, docs, scorer.block_size)
            bar = progress.add_task(task, total=len(reqs), rate="-")
            seen = [0]

            def on_batch(n_req: int, n_tok: int, bar=bar, seen=seen, t0=t0) -> None:
                seen[0] += n_tok
                rate = seen[0] / max(time.perf_counter() - t0, 1e-9)
                progress.update(bar, advance=n_req, rate=f"{rate:,.0f}")

            scorer.on_batch = on_batch
            sums = reduce(scorer.loglikelihood(reqs))
            res = TaskResult(task, len(docs), task_metrics(task, sums), time.perf_counter() - t0, seen[0])
            res.extra = {"requests": len(reqs), "tokens": seen[0]}
            results.append(res)
    return results


def results_table(results: Sequence[TaskResult], title: str = "eval"):
    """The rich table: task, metric, value, stderr, n (one row per metric)."""
    from rich.table import Table

    table = Table(title=title)
    justify: Literal["left", "right"]
    for col, justify in (
        ("task", "left"),
        ("metric", "left"),
        ("value", "right"),
        ("stderr", "right"),
        ("n", "right"),
    ):
        table.add_column(col, justify=justify)
    for r in results:
        for i, (name, (value, stderr)) in enumerate(r.metrics.items()):
            table.add_row(
                r.task if i == 0 else "",
                name,
                f"{value:.4f}",
                "-" if stderr is None else f"{stderr:.4f}",
                str(r.n) if i == 0 else "",
            )
    return table
