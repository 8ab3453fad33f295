"""The owtgpt tokenizer against tiktoken's own GPT-2 encoding."""

from __future__ import annotations

import numpy as np
import pytest
import tiktoken

from pipeline import tokenizer as tk
from tests.textgen import make_docs

GPT2 = tiktoken.get_encoding("gpt2")


def test_ids_and_vocab() -> None:
    enc = tk.get_tokenizer()
    assert (tk.EOT_ID, tk.SOT_ID, tk.PAD_ID, tk.UNK_ID, tk.VOCAB_SIZE) == (50256, 50257, 50258, 50259, 50260)
    assert enc.n_vocab == tk.VOCAB_SIZE == GPT2.n_vocab + 3
    for name, idx in tk.SPECIAL_TOKENS.items():
        assert enc.encode(name, allowed_special="all") == [idx]
        assert enc.decode([idx]) == name
    assert GPT2.eot_token == tk.EOT_ID


def test_encode_document_matches_tiktoken_gpt2() -> None:
    enc = tk.get_tokenizer()
    for text in [*make_docs(30, seed=4), "", " ", "tab\tand\r\nnewlines", "emoji 🙂 and 中文"]:
        ids = tk.encode_document(text)
        assert ids.dtype == np.uint16
        assert ids[0] == tk.SOT_ID and ids[-1] == tk.EOT_ID
        assert ids[1:-1].tolist() == GPT2.encode_ordinary(text) == enc.encode_ordinary(text)
        assert tk.decode(ids[1:-1]) == text


def test_special_strings_in_text_are_ordinary() -> None:
    text = "x <|endoftext|> y <|startoftext|><|padding|><|unknown|> z"
    ids = tk.encode_document(text)[1:-1]
    assert not set(ids.tolist()) & set(tk.SPECIAL_TOKENS.values())
    assert ids.tolist() == GPT2.encode(text, disallowed_special=())
    assert tk.decode(ids) == text


def test_decode_out_of_range_ids_as_unknown() -> None:
    assert tk.decode([tk.VOCAB_SIZE, 50303, -1]) == "<|unknown|>" * 3


def test_fingerprint_is_stable_named_and_fits_the_header() -> None:
    from pipeline.format import FINGERPRINT_BYTES

    fp = tk.tokenizer_fingerprint()
    assert fp.startswith(tk.ENCODING_NAME + ":") and len(fp.encode("ascii")) <= FINGERPRINT_BYTES
    assert fp == tk.tokenizer_fingerprint()


def test_ids_beyond_uint16_are_refused() -> None:
    tk.check_storable(65536)  # ids 0..65535 fit
    with pytest.raises(ValueError, match="65536 exceeds 65535"):
        tk.check_storable(65537)


def test_missing_bpe_files_say_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str):
        raise ConnectionError("no network")

    tk.get_tokenizer.cache_clear()
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    try:
        with pytest.raises(tk.TokenizerUnavailableError, match="TIKTOKEN_CACHE_DIR"):
            tk.get_tokenizer()
    finally:
        monkeypatch.undo()
        tk.get_tokenizer.cache_clear()
    assert tk.get_tokenizer().n_vocab == tk.VOCAB_SIZE
