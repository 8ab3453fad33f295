"""``python -m model eval``: harness preprocessing by hand, scores against a plain full-sequence
log-softmax, hand-computed figures of a uniform model on every task, and the one-line errors.

The fixtures in ``fixtures/eval`` are small hand-written rows in the hub schemas (Rowan/hellaswag,
EleutherAI/lambada_openai, EleutherAI/wikitext_document_level). The harness parity test is
``test_eval_harness.py`` (slow, needs lm_eval).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from model.checkpoint import save_model
from model.generate import generate
from model.tools.cli import main
from model.tools.eval_tasks import (
    encode_pair,
    hellaswag_item,
    lambada_item,
    parse_tasks,
    rolling_windows,
    wikitext_counts,
    wikitext_detokenize,
)
from model.tools.evaluate import Scorer, task_metrics, task_sums
from pipeline.errors import UsageError
from pipeline.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE, get_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
HELLA, LAMBADA, WIKI = FIXTURES / "hellaswag.jsonl", FIXTURES / "lambada.jsonl", FIXTURES / "wikitext.jsonl"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tiny(block: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("tiny", n_layer=2, n_head=2, n_embd=32, block_size=block)).eval()


@pytest.fixture(scope="module")
def uniform_ckpt(tmp_path_factory) -> Path:
    """Every weight zero: every logit is 0, so every token has log-probability exactly -ln(50260)."""
    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    path = tmp_path_factory.mktemp("uniform") / "uniform.pt"
    save_model(path, model, {})
    return path


def run_eval(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["tasks"]


# ------------------------------------------------------------------- preprocessing, by hand


def test_hellaswag_preprocessing_by_hand():
    r = rows(HELLA)
    assert hellaswag_item(r[0]) == (
        "Painting a fence: A woman dips a wide brush into a can of white paint. She",
        ["eats the brush slowly.", "sings to a passing cloud.", "throws the can into a lake.",
         "spreads the paint along the wooden boards."], 3,
    )  # fmt: skip
    # str.capitalize lowercases the rest: "THE man" -> "The man"
    assert hellaswag_item(r[1])[0] == (
        "Making tea: A man fills a kettle with water and sets it on the stove. "
        "The water begins to boil. The man"
    )
    # " [title]" -> ". ", brackets dropped, one pass of "  " -> " " (a triple space leaves a double)
    query, choices, gold = hellaswag_item(r[2])
    assert query == "Home and Garden: How to wash a bike. Rinse the frame. spray the frame with a hose."
    assert choices == [" Scrub the chain with a brush. Dry the bike.", "Paint the bike  red.",
                       " Use a café cloth for the seat.", "Sell the garage."]  # fmt: skip
    assert gold == 1


def test_lambada_split_by_hand():
    r = rows(LAMBADA)
    assert lambada_item(r[2]) == ("Give me one", " word")
    assert lambada_item(r[1])[1] == " mat"
    ctx, target = lambada_item(r[0])
    assert target == " brother" and ctx.endswith("handed it to her") and "\n\n" in ctx


def test_wikitext_detokenizer_by_hand():
    page = (
        " = Mill Road Bridge = \n The Mill Road Bridge is a brick bridge over the river in the old town . "
        "Built in 1790 , it was the town 's first crossing for carts . \n"
    )
    assert wikitext_detokenize(page) == (
        " = Mill Road Bridge =\nThe Mill Road Bridge is a brick bridge over the river in the old town. "
        "Built in 1790, it was the town's first crossing for carts.\n"
    )
    assert wikitext_counts(page) == (37, len(page))  # 35 words + the empty ends re.split leaves
    s = (
        "It is 24 @.@ 5 m , 1 @,@ 200 m ; glass @-@ maker at 20 \u00b0 C ( a note ) "
        '" a fine piece " said the keepers \' report . = = Design = ='
    )
    assert wikitext_detokenize(s) == (
        "It is 24.5 m, 1,200 m; glass-maker at 20\u00b0C (a note) "
        '"a fine piece" said the keepers\' report. == Design =='
    )


def test_encode_pair_moves_trailing_space_to_the_continuation():
    enc = get_tokenizer()
    ctx, cont = encode_pair(enc.encode_ordinary, "The cat sat ", "on", SOT_ID)
    assert ctx == enc.encode_ordinary("The cat sat") and cont == enc.encode_ordinary(" on")
    assert encode_pair(enc.encode_ordinary, "", " hello", SOT_ID) == ([SOT_ID], enc.encode_ordinary(" hello"))
    # a literal special-token string in the data is text, as owtgpt trains (never the special id)
    ctx, cont = encode_pair(enc.encode_ordinary, "a <|endoftext|> b", " c", SOT_ID)
    assert EOT_ID not in ctx + cont and enc.decode(ctx + cont) == "a <|endoftext|> b c"


def test_rolling_windows_by_hand():
    assert rolling_windows(list(range(10)), 99, 4) == [
        ([99], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([5, 6, 7], [8, 9]),
    ]  # fmt: skip
    assert rolling_windows([5], 99, 4) == [([99], [5])]
    assert rolling_windows([], 99, 4) == []


def test_parse_tasks_comma_lists_and_repeats():
    assert parse_tasks(["hellaswag,lambada", "wikitext2", "lambada"]) == ["hellaswag", "lambada", "wikitext2"]
    with pytest.raises(UsageError, match="'nope' is not a task"):
        parse_tasks(["nope"])


# ------------------------------------------------------ scores against an independent reference


def reference(model: GPT, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """Full-sequence forward of the last block_size+1 tokens, log_softmax over the real vocabulary."""
    seq = (ctx + cont)[-(model.config.block_size + 1) :]
    with torch.no_grad():
        logits = model(torch.tensor([seq[:-1]]))[0][0, :, :VOCAB_SIZE].double()  # (T, V)
    logp = F.log_softmax(logits, dim=-1)
    pos = range(len(seq) - 1 - len(cont), len(seq) - 1)
    ll = sum(float(logp[p, t]) for p, t in zip(pos, cont, strict=True))
    greedy = all(int(logits[p].argmax()) == t for p, t in zip(pos, cont, strict=True))
    return ll, greedy


def test_scorer_matches_full_sequence_log_softmax():
    model = tiny(block=16, seed=1)
    with torch.no_grad():
        model.lm_head.weight[VOCAB_SIZE:] = 5.0  # padded rows with large logits: they must not count
        prompt = torch.tensor([[SOT_ID, 464, 3797]])
        greedy = generate(model, prompt, 3, temperature=0)[0, 3:].tolist()
    reqs = [
        ([SOT_ID, 464, 3797], greedy),  # the model's own greedy continuation
        (list(range(100, 130)), [7, 8, 9]),  # 33 tokens > block 16 + 1: cut from the left
        ([5], [6]),
        (list(range(200, 210)), list(range(300, 316))),  # continuation of exactly block_size
        ([11, 12], [13, 14, 15, 16, 17]),
    ]
    got = Scorer(model, batch_size=2).loglikelihood(reqs)
    for (ctx, cont), (ll, g) in zip(reqs, got, strict=True):
        ref_ll, ref_g = reference(model, ctx, cont)
        assert ll == pytest.approx(ref_ll, rel=1e-5, abs=1e-4)
        assert g == ref_g
    assert got[0][1] is True


def test_rolling_loglik_of_a_short_document_is_the_full_sequence_sum():
    model = tiny(block=64, seed=2)
    enc = get_tokenizer()
    page = rows(WIKI)[1]["page"]
    ids = enc.encode_ordinary(wikitext_detokenize(page))
    assert len(ids) < 64
    sums = task_sums("wikitext2", [{"page": page}], Scorer(model))
    ref, _ = reference(model, [SOT_ID], ids)
    assert sums[1] == pytest.approx(ref, rel=1e-5)
    assert sums[2:] == list(wikitext_counts(page))


def test_counts_add_across_a_split_of_the_rows():
    model = tiny(block=16, seed=3)
    docs = rows(HELLA) + rows(HELLA)[:1]
    whole = task_sums("hellaswag", docs, Scorer(model, batch_size=3))
    parts = [task_sums("hellaswag", docs[r::2], Scorer(model, batch_size=3)) for r in range(2)]
    assert [a + b for a, b in zip(*parts, strict=True)] == whole


def test_accuracy_stderr_is_the_sample_stderr_of_0_1_scores():
    m = task_metrics("hellaswag", [4, 1, 3])
    assert m["acc"] == (0.25, math.sqrt(0.25 * 0.75 / 3))
    assert m["acc_norm"][0] == 0.75


# ---------------------------------------------------- hand-computed figures of a uniform model


def test_uniform_model_lambada(uniform_ckpt, capsys):
    res = run_eval(capsys, "--checkpoint", str(uniform_ckpt), "--task", "lambada", "--data", str(LAMBADA))
    # each target (" brother", " mat", " word") is one BPE token of probability 1/50260
    assert res["lambada"]["perplexity"] == pytest.approx(50260, rel=1e-5)
    assert res["lambada"]["acc"] == 0.0 and res["lambada"]["n"] == 3


def test_uniform_model_hellaswag(uniform_ckpt, capsys):
    res = run_eval(capsys, "--checkpoint", str(uniform_ckpt), "--task", "hellaswag", "--data", str(HELLA))
    enc = get_tokenizer()
    acc = acc_norm = 0
    for row in rows(HELLA):
        _, choices, gold = hellaswag_item(row)
        ntok = [len(enc.encode_ordinary(" " + c)) for c in choices]  # every token costs ln(V)
        acc += ntok.index(min(ntok)) == gold
        norm = [-n / len(c) for n, c in zip(ntok, choices, strict=True)]
        acc_norm += norm.index(max(norm)) == gold
    assert res["hellaswag"]["acc"] == acc / 3 and res["hellaswag"]["acc_norm"] == acc_norm / 3


def test_uniform_model_wikitext(uniform_ckpt, capsys):
    res = run_eval(capsys, "--checkpoint", str(uniform_ckpt), "--task", "wikitext2", "--data", str(WIKI))
    enc = get_tokenizer()
    pages = [r["page"] for r in rows(WIKI)]
    tokens = sum(len(enc.encode_ordinary(wikitext_detokenize(p))) for p in pages)
    words = sum(len(p.split()) + 2 for p in pages)  # every page starts with " " and ends with "\n"
    nbytes = sum(len(p.encode("utf-8")) for p in pages)
    w = res["wikitext2"]
    assert w["word_perplexity"] == pytest.approx(50260 ** (tokens / words), rel=1e-4)
    assert w["byte_perplexity"] == pytest.approx(50260 ** (tokens / nbytes), rel=1e-5)
    assert w["bits_per_byte"] == pytest.approx(tokens * math.log2(50260) / nbytes, rel=1e-5)


def test_uniform_model_shards(uniform_ckpt, tmp_path, capsys):
    from tests.textgen import make_docs
    from tests.trainer.trainshards import make_shards

    texts = make_docs(10, seed=4, min_words=5, max_words=40)
    data = make_shards(tmp_path / "shards", texts=texts, val_docs=4)
    res = run_eval(capsys, "--checkpoint", str(uniform_ckpt), "--task", "shards", "--data", str(data))
    enc = get_tokenizer()
    tokens = sum(len(enc.encode_ordinary(t)) + 1 for t in texts[:4])  # text + EOT, after SOT
    nbytes = sum(len(t.encode("utf-8")) for t in texts[:4])
    s = res["shards"]
    assert s["n"] == 4
    assert s["loss"] == pytest.approx(math.log(50260), rel=1e-6)
    assert s["perplexity"] == pytest.approx(50260, rel=1e-5)
    assert s["bits_per_byte"] == pytest.approx(tokens * math.log2(50260) / nbytes, rel=1e-5)


# ------------------------------------------------------------------------- files and the hub


def test_parquet_limit_and_multiple_tasks(uniform_ckpt, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows(HELLA)), tmp_path / "h.parquet")
    a = run_eval(capsys, "--checkpoint", str(uniform_ckpt), "--task", "hellaswag", "--data", str(HELLA))
    b = run_eval(capsys, "--checkpoint", str(uniform_ckpt), "--task", "hellaswag",
                 "--data", str(tmp_path / "h.parquet"))  # fmt: skip
    assert {k: v for k, v in a["hellaswag"].items() if k != "seconds"} == {
        k: v for k, v in b["hellaswag"].items() if k != "seconds"
    }
    c = run_eval(capsys, "--checkpoint", str(uniform_ckpt), "--task", "hellaswag", "--data", str(HELLA),
                 "--limit", "2")  # fmt: skip
    assert c["hellaswag"]["n"] == 2


def test_hub_datasets_are_loaded_through_datasets(uniform_ckpt, monkeypatch, capsys):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        src = {"Rowan/hellaswag": HELLA, "EleutherAI/lambada_openai": LAMBADA}[path]
        return datasets.Dataset.from_list(rows(src))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    res = run_eval(capsys, "--checkpoint", str(uniform_ckpt), "--task", "hellaswag,lambada")
    assert calls == [
        ("Rowan/hellaswag", None, "validation"),
        ("EleutherAI/lambada_openai", "default", "test"),
    ]
    assert res["hellaswag"]["n"] == 3 and res["lambada"]["n"] == 3

    def offline(*a, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert main(["eval", "--checkpoint", str(uniform_ckpt), "--task", "wikitext103"]) == 1
    err = capsys.readouterr().err
    assert "wikitext-103-raw-v1" in err and "--data LOCAL_FILE" in err


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "content, args, code, message",
    [
        (None, ["--task", "nope"], 2, "--task 'nope' is not a task"),
        (None, ["--task", "hellaswag", "--data", "missing.jsonl"], 1, "does not exist"),
        ('{"activity_label": "a", "ctx_a": "b", "endings": ["c"], "label": "0"}\n',
         ["--task", "hellaswag"], 1, "line 1: no field 'ctx_b'"),
        ("\n", ["--task", "lambada"], 1, "no rows"),
        ('{"text": "a b"}\n', ["--task", "lambada,hellaswag"], 2, "one task's file"),
        (None, ["--task", "shards"], 2, "needs --data DIR"),
        ("x", ["--task", "lambada", "--suffix", ".csv"], 2, "unknown suffix '.csv'"),
        ("not json\n", ["--task", "lambada"], 1, "line 1 is not JSON"),
        ('{"text": "say ' + "qzxv" * 40 + '"}\n', ["--task", "lambada"], 1,
         "exceeds the model's context of 16"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(uniform_ckpt, tmp_path, capsys, content, args, code, message):
    args = list(args)
    suffix = ".jsonl"
    if "--suffix" in args:
        suffix = args.pop(args.index("--suffix") + 1)
        args.remove("--suffix")
    if content is not None:
        path = tmp_path / f"data{suffix}"
        path.write_text(content)
        args += ["--data", str(path)]
    elif "--data" in args:
        args[args.index("--data") + 1] = str(tmp_path / args[args.index("--data") + 1])
    assert main(["eval", "--checkpoint", str(uniform_ckpt), *args]) == code
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # a progress bar may stand before it
    assert last.startswith("error: ") and message in last and "Traceback" not in err


# ------------------------------------------------- issue 18: every field type-checked, by file and line


def _hella(**fields) -> str:
    row = {"activity_label": "Tea", "ctx_a": "A man boils water.", "ctx_b": "he", "label": "1",
           "endings": ["pours it.", "drinks it."]}  # fmt: skip
    row.update(fields)
    return json.dumps(row)


def test_malformed_eval_row_is_one_line_through_the_cli(uniform_ckpt, tmp_path):
    """The issue's case: numbers where strings belong gave a TypeError / AttributeError traceback."""
    from tests.cli import one_error, run_module, snapshot

    data = tmp_path / "hellaswag.jsonl"
    data.write_text(_hella() + "\n\n" + _hella(ctx_b=5) + "\n")  # line 3: the blank line 2 still counts
    before = snapshot(tmp_path)
    proc = run_module("model", "eval", "--checkpoint", str(uniform_ckpt), "--task", "hellaswag",
                      "--data", str(data), "--device", "cpu")  # fmt: skip
    one_error(proc, 1, f"--data {data}: line 3: field 'ctx_b' is a number (5)", "needs a string")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "task, line, message",
    [
        ("hellaswag", _hella(ctx_b=None), "line 1: field 'ctx_b' is null"),
        ("hellaswag", _hella(activity_label=["a"]), "line 1: field 'activity_label' is an array ([\"a\"])"),
        ("hellaswag", _hella(endings="pours it."), "field 'endings' is a string"),
        ("hellaswag", _hella(endings=["a", 7]), "field 'endings' item 1 is a number (7)"),
        ("hellaswag", _hella(endings=[]), "field 'endings' is an array ([])"),
        ("hellaswag", _hella(label=None), "field 'label' is null"),
        ("hellaswag", _hella(label="x"), "field 'label' is a string (\"x\")"),
        ("hellaswag", _hella(label=2), "field 'label' is a number (2)"),
        ("hellaswag", _hella(label=True), "field 'label' is a boolean (true)"),
        ("lambada", '{"text": 17}', "line 1: field 'text' is a number (17)"),
        ("lambada", '{"text": null}', "line 1: field 'text' is null"),
        ("lambada", '{"txt": "a b"}', "line 1: no field 'text'"),
        ("lambada", '["a b"]', "line 1 is a JSON array, not an object"),
        ("wikitext2", '{"page": {"title": "x"}}', "line 1: field 'page' is an object"),
        ("wikitext2", '{"page": ""}', "line 1: field 'page' is an empty string"),
    ],
)  # fmt: skip
def test_every_field_is_type_checked(uniform_ckpt, tmp_path, capsys, task, line, message):
    data = tmp_path / "data.jsonl"
    data.write_text(line + "\n")
    assert main(["eval", "--checkpoint", str(uniform_ckpt), "--task", task, "--data", str(data)]) == 1
    err = capsys.readouterr().err
    (error,) = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert "Traceback" not in err and error.startswith(f"error: --data {data}: ")
    assert message in error, error


def test_parquet_rows_are_checked_too(uniform_ckpt, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "a b"}, {"text": None}]), tmp_path / "l.parquet")
    assert main(["eval", "--checkpoint", str(uniform_ckpt), "--task", "lambada",
                 "--data", str(tmp_path / "l.parquet")]) == 1  # fmt: skip
    assert "row 1: field 'text' is null" in capsys.readouterr().err


def test_a_fifo_as_data_is_refused_without_reading_it(uniform_ckpt, tmp_path):
    import os

    from tests.cli import one_error, run_module

    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)  # opening it to read would block until a writer came: the timeout fails a hang
    proc = run_module("model", "eval", "--checkpoint", str(uniform_ckpt), "--task", "lambada",
                      "--data", str(fifo), "--device", "cpu", timeout=120)  # fmt: skip
    one_error(proc, 1, f"--data {fifo}: is a FIFO, not a file")


def test_json_out_replaces_only_an_earlier_result(uniform_ckpt, tmp_path, capsys):
    """``--json RUN/config.json`` replaced a training run's metadata; now only eval's own output is."""
    from tests.cli import one_error, run_module, snapshot

    run_config = tmp_path / "run" / "config.json"
    run_config.parent.mkdir()
    run_config.write_text('{"config": {"lr": 0.001}}\n')
    before = snapshot(tmp_path)
    proc = run_module("model", "eval", "--checkpoint", str(uniform_ckpt), "--task", "lambada",
                      "--data", str(LAMBADA), "--device", "cpu", "--json", str(run_config))  # fmt: skip
    one_error(proc, 1, f"--json {run_config} exists and is not an earlier eval result")
    assert snapshot(tmp_path) == before
    out = tmp_path / "results.json"
    for _ in range(2):  # written, then replaced
        assert main(["eval", "--checkpoint", str(uniform_ckpt), "--task", "lambada", "--data", str(LAMBADA),
                     "--json", str(out)]) == 0  # fmt: skip
        assert json.loads(out.read_text())["tasks"]["lambada"]["n"] == 3
    assert main(["eval", "--checkpoint", str(uniform_ckpt), "--task", "lambada", "--data", str(LAMBADA),
                 "--json", str(tmp_path)]) == 1  # fmt: skip
    assert "is a folder, not a file" in capsys.readouterr().err
