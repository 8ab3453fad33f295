"""``show``: ``--doc I`` prints exactly source document I; windows equal tiktoken's ids."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tiktoken

from pipeline.__main__ import main
from pipeline.format import Manifest
from tests.pipeline.test_stats import build_folder
from tests.textgen import make_docs

EOT, SOT = 50256, 50257

DOCS = make_docs(120, seed=21, max_words=200)
DOCS[3] = ""  # dropped by the build, so stored doc I is the I-th *non-empty* source doc
DOCS[10] = "a literal <|endoftext|> and <|startoftext|> in the text stay text"
DOCS[11] = "\n\n  leading whitespace, trailing newline\n"
DOCS[12] = "ünïcödé 東京 — “quotes” … 🙂"
KEPT = [d for d in DOCS if d]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_folder(DOCS, tmp_path_factory.mktemp("show") / "shards", shard_tokens=5_000)


@pytest.fixture(scope="module")
def gpt2() -> tiktoken.Encoding:
    return tiktoken.get_encoding("gpt2")


def show_bytes(capsysbinary, *argv: str) -> bytes:
    assert main(["show", *argv]) == 0
    return capsysbinary.readouterr().out


def show_json(capsys, *argv: str) -> dict:
    assert main(["show", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_doc_round_trip_random_indices(built, capsysbinary):
    n = sum(e.num_docs for e in Manifest.load(built).split("train"))
    assert n == len(KEPT)
    picks = sorted({0, n - 1, 9, 10, 11, *random.Random(0).sample(range(n), 10)})
    for i in picks:
        assert show_bytes(capsysbinary, str(built), "--doc", str(i)) == KEPT[i].encode("utf-8"), i


def test_doc_at_every_shard_boundary(built, capsysbinary):
    base = 0
    for e in Manifest.load(built).split("train"):
        for i in (base, base + e.num_docs - 1):
            assert show_bytes(capsysbinary, str(built), "--doc", str(i)) == KEPT[i].encode("utf-8")
        base += e.num_docs


def test_keep_markers(built, capsysbinary):
    out = show_bytes(capsysbinary, str(built), "--doc", "10", "--keep-markers")
    assert out == f"<|startoftext|>{KEPT[10]}<|endoftext|>".encode()


def test_doc_json_ids_are_tiktoken_ids(built, capsys, gpt2):
    js = show_json(capsys, str(built), "--doc", "10", "--tokens")
    assert js["ids"] == [SOT, *gpt2.encode_ordinary(KEPT[10]), EOT]
    assert js["text"] == KEPT[10]
    assert js["num_tokens"] == len(js["ids"]) and js["doc"] == 10
    assert js["pieces"][1:-1] == [
        gpt2.decode_single_token_bytes(i).decode("utf-8", "replace") for i in js["ids"][1:-1]
    ]
    assert js["pieces"][0] == "<|startoftext|>" and js["pieces"][-1] == "<|endoftext|>"


def test_window_across_a_shard_boundary(built, capsys, gpt2):
    flat = [t for d in KEPT for t in (SOT, *gpt2.encode_ordinary(d), EOT)]
    first = Manifest.load(built).split("train")[0]
    offset, length = first.num_tokens - 7, 20
    js = show_json(capsys, str(built), "--offset", str(offset), "--length", str(length))
    assert js["ids"] == flat[offset : offset + length]
    assert js["offset"] == offset and js["doc"] is None
    assert [s["file"] for s in js["spans"]] == [first.file, Manifest.load(built).split("train")[1].file]
    # a window past the end is cut at the end of the split
    js = show_json(capsys, str(built), "--offset", str(len(flat) - 3), "--length", "50")
    assert js["ids"] == flat[-3:]


def test_window_text_and_token_table(built, capsysbinary, gpt2):
    ids = gpt2.encode_ordinary(KEPT[0])
    # doc 0 starts at token 0: its text tokens are 1..len(ids)
    out = show_bytes(capsysbinary, str(built), "--offset", "1", "--length", str(len(ids)))
    assert out == gpt2.decode_bytes(ids)
    assert main(["show", str(built), "--offset", "0", "--length", "4", "--tokens"]) == 0
    table = capsysbinary.readouterr().out.decode()
    assert str(SOT) in table and "'<|startoftext|>'" in table
    assert all(str(i) in table for i in ids[:3])


def test_bad_requests_are_clear_errors(built, capsys):
    n = len(KEPT)
    assert main(["show", str(built), "--doc", str(n)]) == 2
    assert f"--doc {n} is out of range" in capsys.readouterr().err
    assert main(["show", str(built), "--offset", "5"]) == 2
    assert "--offset needs --length" in capsys.readouterr().err
    assert main(["show", str(built), "--split", "val", "--doc", "0"]) == 2
    assert "has no shards" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --doc and --offset are exclusive
        main(["show", str(built), "--doc", "0", "--offset", "1", "--length", "2"])
