"""Parity with lm-evaluation-harness: the acceptance test of ``python -m model eval``.

A tiny model is trained until it has memorised part of the task text (so greedy LAMBADA answers
and HellaSwag choices are a mix of right and wrong), exported with ``export-hf``, and scored twice on
the same local files: by ``lm_eval`` (``--model hf``, local task YAMLs that include the harness's
own hellaswag / lambada_openai / wikitext YAMLs with ``dataset_path: json``) and by owtgpt.
Accuracies must be equal, perplexities equal to 1e-4 relative. Opt-in: skipped where ``lm_eval``
is not installed (it is a dev-only tool: ``pip install lm-eval``), and marked slow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from model.checkpoint import save_model
from model.tools.cli import main as model_main
from model.tools.eval_tasks import hellaswag_item, wikitext_detokenize
from pipeline.tokenizer import EOT_ID, SOT_ID, get_tokenizer
from tests.textgen import make_docs

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
BLOCK = 64  # small, so WikiText pages need several rolling windows and long contexts are cut

pytestmark = pytest.mark.slow


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines()]


def parity_data(out: Path) -> dict[str, Path]:
    """The fixture rows plus generated ones (some the model will memorise, some not), as jsonl."""
    docs = make_docs(12, seed=5, min_words=20, max_words=60)
    hella = _rows("hellaswag.jsonl")
    for i, d in enumerate(docs[:8]):
        words = d.split(" ")
        endings = [" ".join(words[12 + 4 * k : 16 + 4 * k]) or "x" for k in range(4)]
        hella.append({"ind": 100 + i, "activity_label": "Generated", "ctx_a": " ".join(words[:8]),
                      "ctx_b": " ".join(words[8:12]), "ctx": "", "endings": endings, "source_id": "gen",
                      "split": "val", "split_type": "indomain", "label": str(i % 4)})  # fmt: skip
    lam = _rows("lambada.jsonl") + [{"text": d} for d in docs]
    wiki = _rows("wikitext.jsonl") + [{"page": " " + d.replace(",", " ,") + " \n"} for d in docs[:4]]
    files = {}
    for name, rows in (("hellaswag", hella), ("lambada", lam), ("wikitext", wiki)):
        files[name] = out / f"{name}.jsonl"
        files[name].write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    return files


def memorising_model(files: dict[str, Path], steps: int = 100) -> GPT:
    """A tiny GPT trained on half of the items' text, so its answers are partly right."""
    enc = get_tokenizer()
    texts = []
    for row in _read(files["hellaswag"])[::2]:
        query, choices, gold = hellaswag_item(row)
        texts.append(query + " " + choices[gold])
    texts += [row["text"] for row in _read(files["lambada"])[::2]]
    texts += [wikitext_detokenize(row["page"]) for row in _read(files["wikitext"])]
    stream = torch.tensor([t for x in texts for t in [SOT_ID, *enc.encode_ordinary(x), EOT_ID]])
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", n_layer=2, n_head=2, n_embd=64, block_size=BLOCK))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - BLOCK - 1, (8,), generator=gen)
        x = torch.stack([stream[s : s + BLOCK] for s in starts])
        y = torch.stack([stream[s + 1 : s + BLOCK + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def harness_yamls(out: Path, files: dict[str, Path]) -> Path:
    """Task YAMLs that include the harness's own and swap in ``dataset_path: json`` + our files."""
    import lm_eval

    tasks = Path(lm_eval.__file__).parent / "tasks"
    specs = {
        "owt_hellaswag": (tasks / "hellaswag" / "hellaswag.yaml", "validation", files["hellaswag"]),
        "owt_lambada": (tasks / "lambada" / "lambada_openai.yaml", "test", files["lambada"]),
        "owt_wikitext": (tasks / "wikitext" / "wikitext.yaml", "test", files["wikitext"]),
    }
    ydir = out / "yaml"
    ydir.mkdir()
    for name, (base, split, data) in specs.items():
        (ydir / f"{name}.yaml").write_text(
            f"include: {base}\ntask: {name}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"training_split: null\nvalidation_split: {'validation' if split == 'validation' else 'null'}\n"
            f"test_split: {'test' if split == 'test' else 'null'}\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {data}\n"
        )
    return ydir


def run_harness(export_dir: Path, ydir: Path, batch_size: int = 16) -> dict[str, dict]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model="hf", model_args=f"pretrained={export_dir}",
        tasks=["owt_hellaswag", "owt_lambada", "owt_wikitext"],
        task_manager=TaskManager(include_path=str(ydir)), batch_size=batch_size, device="cpu",
        bootstrap_iters=0,
    )  # fmt: skip
    return out["results"]


def test_eval_matches_lm_evaluation_harness(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    files = parity_data(tmp_path)
    model = memorising_model(files)
    ckpt = tmp_path / "tiny.pt"
    save_model(ckpt, model, {})
    export = tmp_path / "hf"
    assert model_main(["export-hf", str(ckpt), "--out", str(export)]) == 0
    if not (export / "tokenizer_config.json").is_file():
        pytest.skip("export-hf writes no tokenizer files yet; lm_eval cannot load the folder")
    harness = run_harness(export, harness_yamls(tmp_path, files))

    ours = {}
    for task, data in (("hellaswag", "hellaswag"), ("lambada", "lambada"), ("wikitext2", "wikitext")):
        out = tmp_path / f"{task}.json"
        assert model_main(["eval", "--checkpoint", str(ckpt), "--task", task, "--data", str(files[data]),
                           "--device", "cpu", "--batch-size", "5", "--json", str(out)]) == 0  # fmt: skip
        ours[task] = json.loads(out.read_text())["tasks"][task]
    capsys.readouterr()

    h, lam, wiki = harness["owt_hellaswag"], harness["owt_lambada"], harness["owt_wikitext"]
    assert ours["hellaswag"]["acc"] == h["acc,none"]
    assert ours["hellaswag"]["acc_norm"] == h["acc_norm,none"]
    assert ours["lambada"]["acc"] == lam["acc,none"]
    assert 0 < lam["acc,none"] < 1 and 0 < h["acc,none"] < 1  # the comparison is not between two zeros
    assert ours["lambada"]["perplexity"] == pytest.approx(lam["perplexity,none"], rel=1e-4)
    for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours["wikitext2"][metric] == pytest.approx(wiki[f"{metric},none"], rel=1e-4)
    assert math.isfinite(ours["wikitext2"]["word_perplexity"])
