"""An export-hf folder loads as it is: transformers' pipeline, lm-evaluation-harness, and import-hf back.

Every figure the ecosystem computes from the folder is checked against owtgpt's own model on the
same ids (greedy continuations, log-likelihoods), so a tokenizer or weight mismatch cannot pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from model.checkpoint import load_model, save_model
from model.generate import generate
from model.hf import export_hf
from model.tools.cli import main as model_main
from pipeline.tokenizer import SOT_ID, VOCAB_SIZE, get_tokenizer

transformers = pytest.importorskip("transformers")

TOL = 1e-4  # both sides run float32 (the harness takes log_softmax of fp32 logits)
PROMPTS = ["The cat sat on the", "Water is", "One, two,"]


@pytest.fixture(scope="module")
def ours() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64)).eval()
    with torch.no_grad():  # spread the logits so greedy choices are far from ties
        model.transformer.wte.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def export_dir(ours, tmp_path_factory) -> Path:
    return export_hf(ours, tmp_path_factory.mktemp("export"))


def greedy(model: GPT, ids: list[int], n: int) -> list[int]:
    out = generate(model, torch.tensor([ids]), n, temperature=0.0)
    return out[0, len(ids) :].tolist()


def continuation_logprob(model: GPT, context: list[int], continuation: list[int]) -> float:
    """sum log p(continuation | context) under owtgpt's model."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits, _ = model(ids)
    # over the real ids only: the export drops the padded rows, so they are not in HF's softmax
    logp = F.log_softmax(logits[0, :-1, :VOCAB_SIZE].double(), dim=-1)  # (T-1, V): t predicts t+1
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][len(context) - 1 :].sum())


def test_text_generation_pipeline_runs_and_continues_as_owtgpt(ours, export_dir):
    pipe = transformers.pipeline("text-generation", model=str(export_dir))
    enc = get_tokenizer()
    for prompt in PROMPTS:
        got = pipe(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
        want = prompt + enc.decode(greedy(ours, enc.encode_ordinary(prompt), 8))
        assert got == want


def test_cli_export_then_import_gives_the_same_logits(ours, tmp_path):
    save_model(tmp_path / "a.pt", ours)
    assert model_main(["export-hf", str(tmp_path / "a.pt"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file() and (tmp_path / "hf" / "vocab.json").is_file()
    assert model_main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "b.pt")]) == 0
    back, _ = load_model(tmp_path / "b.pt")
    idx = torch.randint(0, VOCAB_SIZE, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = ours(idx)
        got, _ = back.eval()(idx)
    assert torch.equal(got, want)  # every column, the padded ones too


def test_export_of_a_checkpoint_with_another_tokenizer_is_refused(ours, tmp_path, capsys):
    save_model(tmp_path / "a.pt", ours, {"tokenizer_fingerprint": "owtgpt-gpt2:0000"})
    assert model_main(["export-hf", str(tmp_path / "a.pt"), "--out", str(tmp_path / "hf")]) == 1
    assert "owtgpt-gpt2:0000" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------------ lm-evaluation-harness

TASKS = {
    "mc": """task: owtgpt_export_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
""",
    "rolling": """task: owtgpt_export_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/docs.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""",
    "gen": """task: owtgpt_export_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/mc.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
}
DOCS = ["A short document about cats and dogs.", "Another one, with numbers 12345 and café."]
CHOICES = [["mat", "dog", "moon"], ["wet", "dry"], ["three", "blue"]]


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_lm_eval_runs_on_the_export_with_no_extra_model_args(ours, export_dir, tmp_path):
    """``lm_eval --model hf --model_args pretrained=DIR`` (local task YAMLs, ``dataset_path: json``)
    runs, and its log-likelihoods and greedy continuations are owtgpt's own."""
    lm_eval = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or shutil.which("lm_eval")
    if lm_eval is None:
        pytest.skip("lm_eval (lm-evaluation-harness) is not installed; an opt-in dev tool")
    items = [{"query": q, "choices": c, "gold": 0} for q, c in zip(PROMPTS, CHOICES, strict=True)]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    (tmp_path / "tasks").mkdir()
    for name, text in TASKS.items():
        (tmp_path / "tasks" / f"{name}.yaml").write_text(text.format(data=tmp_path))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # no network here
    cmd = [lm_eval, "--model", "hf", "--model_args", f"pretrained={export_dir}",
           "--tasks", "owtgpt_export_mc,owtgpt_export_rolling,owtgpt_export_gen",
           "--include_path", str(tmp_path / "tasks"), "--output_path", str(tmp_path / "out"),
           "--log_samples"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    enc = get_tokenizer()
    for s in _samples(tmp_path / "out", "owtgpt_export_mc"):
        context = enc.encode_ordinary(s["doc"]["query"])
        for choice, (resp,) in zip(s["doc"]["choices"], s["resps"], strict=True):
            want = continuation_logprob(ours, context, enc.encode_ordinary(" " + choice))
            assert float(resp[0]) == pytest.approx(want, abs=TOL)
    # whole-document log-likelihood: the harness's prefix token is the tokenizer's bos, <|startoftext|>,
    # which is how every owtgpt training document starts
    for s in _samples(tmp_path / "out", "owtgpt_export_rolling"):
        want = continuation_logprob(ours, [SOT_ID], enc.encode_ordinary(s["doc"]["text"]))
        assert float(s["resps"][0][0]) == pytest.approx(want, abs=TOL)
    for s in _samples(tmp_path / "out", "owtgpt_export_gen"):
        want = enc.decode(greedy(ours, enc.encode_ordinary(s["doc"]["query"]), 6)).split("\n")[0]
        assert s["resps"][0][0] == want
