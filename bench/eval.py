"""Benchmark: ``python -m model eval``'s scorer against lm-evaluation-harness, same CPU, model and items.

One process builds a model (``--preset``, random init: the weights do not change the cost), saves it
as an owtgpt checkpoint and as an ``export-hf`` folder, and writes the same rows for three tasks in
the hub schemas: HellaSwag (multiple choice), LAMBADA (context + target) and WikiText (rolling
windows), cut from real OpenWebText documents when ``../shared/corpora`` is present, else from this
repository's README. Each round times, per task, the harness (``lm_eval``'s ``HFLM`` on the export,
built once; ``simple_evaluate`` with local YAMLs that include the harness's own task files) and
owtgpt (:func:`model.tools.evaluate.run_tasks` on the checkpoint), alternately so that both see the same
machine load; the median of ``--rounds`` is reported. Both times include reading and tokenizing
the rows. The figures of the two must agree (accuracies equal, perplexities to 1e-4), else the
script exits 1.

    python bench/eval.py                         # gpt2 124M, 16 items per task, 3 rounds
    python bench/eval.py --preset tiny --items 64

Needs ``pip install lm-eval`` (a dev-only tool, not a dependency of owtgpt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import GPT, PRESETS, GPTConfig  # noqa: E402
from model.checkpoint import save_model  # noqa: E402
from model.hf import export_hf  # noqa: E402
from model.tools.evaluate import run_tasks  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpora" / "owt-sample" / "train-00000-of-00001.parquet"
TASKS = {"hellaswag": ("owt_hellaswag", "hellaswag"), "lambada": ("owt_lambada", "lambada"),
         "wikitext2": ("owt_wikitext", "wikitext")}  # fmt: skip
# owtgpt metric -> harness key; accuracies must be equal, the rest within 1e-4 relative
METRICS = {"hellaswag": ("acc", "acc_norm"), "lambada": ("acc", "perplexity"),
           "wikitext2": ("word_perplexity", "byte_perplexity", "bits_per_byte")}  # fmt: skip


def texts(n: int, corpus: Path) -> list[str]:
    """Long documents: OpenWebText's when the corpus is there, else README paragraphs.

    Literal special-token strings (``<|endoftext|>``) are dropped from the fallback: owtgpt encodes
    them as ordinary text (as it trains), an HF tokenizer as special ids, so they would not compare.
    """
    if corpus.is_file():
        import pyarrow.parquet as pq

        docs = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
        return [d for d in docs if len(d.split()) > 700 and "<|" not in d][:n]
    words = [w for w in (REPO / "README.md").read_text(encoding="utf-8").split() if "<|" not in w]
    return [" ".join(words[i * 50 : i * 50 + 800]) for i in range(n)]


def write_rows(out: Path, items: int, corpus: Path) -> dict[str, Path]:
    docs = texts(items, corpus)
    hella, lam, wiki = [], [], []
    for i, d in enumerate(docs):
        w = d.split()
        endings = [" ".join(w[40 + 12 * k : 52 + 12 * k]) for k in range(4)]
        hella.append(
            {
                "ind": i,
                "activity_label": "Web text",
                "ctx_a": " ".join(w[:37]),
                "ctx_b": " ".join(w[37:40]),
                "ctx": "",
                "endings": endings,
                "source_id": "bench",
                "split": "val",
                "split_type": "indomain",
                "label": "0",
            }
        )
        lam.append({"text": " ".join(w[100:180])})
    wiki = [{"page": " " + " ".join(d.split()[:700]) + " \n"} for d in docs[: max(1, items // 8)]]
    files = {}
    for name, rows in (("hellaswag", hella), ("lambada", lam), ("wikitext", wiki)):
        files[name] = out / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt2", choices=list(PRESETS), help="model size (default gpt2, 124M)")
    p.add_argument(
        "--items", type=int, default=16, help="HellaSwag and LAMBADA rows; WikiText gets items/8 pages"
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds; the median is reported")
    p.add_argument("--batch-size", type=int, default=16, help="batch size of both (default 16)")
    p.add_argument("--corpus", type=Path, default=CORPUS, help=f"OpenWebText parquet (default {CORPUS})")
    p.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (default 0: torch's default)"
    )
    args = p.parse_args(argv)
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        print(
            "error: lm_eval is not installed; `pip install lm-eval` (a dev-only tool) and rerun",
            file=sys.stderr,
        )
        return 2
    from tests.model.test_eval_harness import harness_yamls

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix="owtgpt-bench-eval-"))
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset)).eval()
    save_model(tmp / "model.pt", model, {})
    export_hf(model, tmp / "hf")
    files = write_rows(tmp, args.items, args.corpus)
    console.print(f"rows from {args.corpus if args.corpus.is_file() else 'README.md (no corpus)'}")
    manager = TaskManager(include_path=str(harness_yamls(tmp, files)))
    lm = HFLM(pretrained=str(tmp / "hf"), batch_size=args.batch_size, device="cpu")

    times: dict[str, dict[str, list[float]]] = {t: {"owtgpt": [], "harness": []} for t in TASKS}
    figures: dict[str, dict[str, tuple[dict, dict]]] = {}
    for r in range(args.rounds):
        for task, (h_task, data) in TASKS.items():
            t0 = time.perf_counter()
            h = simple_evaluate(model=lm, tasks=[h_task], task_manager=manager, bootstrap_iters=0,
                                verbosity="ERROR")["results"][h_task]  # fmt: skip
            t1 = time.perf_counter()
            (ours,) = run_tasks(model, [task], data=files[data], batch_size=args.batch_size)
            t2 = time.perf_counter()
            times[task]["harness"].append(t1 - t0)
            times[task]["owtgpt"].append(t2 - t1)
            figures[task] = ({k: v for k, (v, _) in ours.metrics.items()}, h)
        console.print(f"round {r + 1}/{args.rounds} done")

    table = Table(title=f"eval: owtgpt vs lm-evaluation-harness {args.preset}, CPU, batch {args.batch_size}, "
                        f"{torch.get_num_threads()} threads, median of {args.rounds}")  # fmt: skip
    for col in ("task", "rows", "harness s", "owtgpt s", "speed-up", "figures agree"):
        table.add_column(col, justify="right" if col != "task" else "left")
    ok_all, tot_h, tot_o = True, 0.0, 0.0
    for task in TASKS:
        ours, h = figures[task]
        ok = True
        for m in METRICS[task]:
            want = h[f"{m},none"]
            ok &= ours[m] == want if m.startswith("acc") else abs(ours[m] - want) <= 1e-4 * abs(want)
        ok_all &= ok
        th, to = statistics.median(times[task]["harness"]), statistics.median(times[task]["owtgpt"])
        tot_h, tot_o = tot_h + th, tot_o + to
        rows = sum(1 for _ in files[TASKS[task][1]].open())
        shown = ", ".join(f"{m} {ours[m]:.4g}" for m in METRICS[task])
        table.add_row(task, str(rows), f"{th:.2f}", f"{to:.2f}", f"{th / to:.2f}x",
                      ("yes: " if ok else "NO: ") + shown)  # fmt: skip
    table.add_row(
        "all", "", f"{tot_h:.2f}", f"{tot_o:.2f}", f"{tot_h / tot_o:.2f}x", "yes" if ok_all else "NO"
    )
    Console().print(table)
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
