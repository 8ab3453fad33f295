"""export-hf's tokenizer files: checked against OpenAI's own files and against tiktoken's encoding.

References: ``encoder.json`` / ``vocab.bpe`` (the files tiktoken itself downloads, found in
TIKTOKEN_CACHE_DIR under tiktoken's cache names), tiktoken's ``encode``/``encode_ordinary``, and
``transformers``' own ``AutoTokenizer`` loading the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from model.hf import export_hf
from model.hf_tokenizer import bytes_to_unicode, merge_for_rank, token_string
from pipeline.fsutil import EXPORT_MARKER
from pipeline.tokenizer import EOT_ID, PAD_ID, SOT_ID, SPECIAL_TOKENS, UNK_ID, get_tokenizer
from tests.conftest import SHARED
from tests.textgen import make_docs

transformers = pytest.importorskip("transformers")

OPENAI_BPE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
MIXED = (
    "<|startoftext|>Hello world, naïve café 東京 <|endoftext|><|startoftext|>  two  spaces\n\n"
    "tabs\there<|padding|><|padding|> <|unknown|>x's 'll 123456 <|endoftext|>"
)


def cached_openai_file(name: str) -> Path:
    """OpenAI's GPT-2 file ``name`` in the tiktoken cache (tiktoken names it sha1(url))."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or str(SHARED / "tiktoken-cache")
    path = Path(cache) / hashlib.sha1((OPENAI_BPE + name).encode()).hexdigest()
    if not path.is_file():
        pytest.skip(f"{path} ({name}) is absent; these tests compare against the real file")
    return path


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)).eval()
    return export_hf(model, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def hf_tok(export_dir):
    return transformers.AutoTokenizer.from_pretrained(export_dir)


def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    # the well-known spellings: space is 'Ġ' (U+0120), newline 'Ċ' (U+010A), tab 'ĉ' (U+0109)
    assert (table[ord(" ")], table[ord("\n")], table[ord("\t")]) == ("Ġ", "Ċ", "ĉ")
    assert table[ord("A")] == "A" and table[0xE9] == "é" and table[0] == "Ā"
    assert table[0xAD] == chr(256 + 33 + 34)  # soft hyphen: after 0x00-0x20 and 0x7F-0xA0 moved up
    assert all(not c.isspace() and c.isprintable() for c in table.values())


def test_merge_for_rank_on_a_hand_made_table():
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"bc": 257, b"abc": 258, b"cab": 259, b"cabc": 260})
    assert merge_for_rank(b"ab", 256, ranks) == (b"a", b"b")
    # below rank 258 "ab" (256) merges before "bc" (257): abc = ab + c
    assert merge_for_rank(b"abc", 258, ranks) == (b"ab", b"c")
    # c,a,b,c -> c,ab,c (256) -> c,abc: "abc" (258) outranks "cab" (259), so cabc = c + abc
    assert merge_for_rank(b"cabc", 260, ranks) == (b"c", b"abc")
    with pytest.raises(ValueError, match="not the merge of two"):
        merge_for_rank(b"abc", 256, ranks)  # with no lower merges, three bytes remain


def test_vocab_json_equals_openai_encoder_json(export_dir):
    want = json.loads(cached_openai_file("encoder.json").read_text(encoding="utf-8"))
    got = json.loads((export_dir / "vocab.json").read_text(encoding="utf-8"))
    assert got == want and len(got) == EOT_ID + 1


def test_merges_txt_equals_openai_vocab_bpe_byte_for_byte(export_dir):
    want = cached_openai_file("vocab.bpe").read_bytes()
    got = (export_dir / "merges.txt").read_bytes()
    assert got.count(b"\n") == 50001  # header + 50000 merges
    assert got == want


def test_token_string_spells_bytes_reversibly():
    enc = get_tokenizer()
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    for rank in (0, 255, 256, 1000, 31373, 50255):
        raw = enc.decode_single_token_bytes(rank)
        assert bytes(inverse[c] for c in token_string(raw)) == raw


def test_tokenizer_config_registers_owtgpt_specials(export_dir, hf_tok):
    config = json.loads((export_dir / "tokenizer_config.json").read_text())
    decoder = {int(k): v["content"] for k, v in config["added_tokens_decoder"].items()}
    assert decoder == {idx: name for name, idx in SPECIAL_TOKENS.items()}
    assert all(v["special"] for v in config["added_tokens_decoder"].values())
    model_config = json.loads((export_dir / "config.json").read_text())
    assert hf_tok.bos_token_id == model_config["bos_token_id"] == SOT_ID
    assert hf_tok.eos_token_id == model_config["eos_token_id"] == EOT_ID
    assert hf_tok.pad_token_id == model_config["pad_token_id"] == PAD_ID
    assert hf_tok.unk_token_id == UNK_ID
    assert len(hf_tok) == model_config["vocab_size"] == 50260
    assert hf_tok.model_max_length == 64
    assert hf_tok.convert_ids_to_tokens([EOT_ID, SOT_ID, PAD_ID, UNK_ID]) == list(SPECIAL_TOKENS)


def test_same_ids_as_tiktoken_on_text_with_special_tokens(hf_tok):
    want = get_tokenizer().encode(MIXED, allowed_special="all")
    assert want.count(SOT_ID) == 2 and want.count(PAD_ID) == 2 and want.count(UNK_ID) == 1
    assert hf_tok(MIXED)["input_ids"] == want
    assert hf_tok.decode(want) == MIXED


def test_same_ids_as_tiktoken_on_generated_documents(hf_tok):
    enc = get_tokenizer()
    docs = make_docs(200, seed=3)
    assert hf_tok(docs)["input_ids"] == [enc.encode_ordinary(d) for d in docs]


def test_same_ids_as_tiktoken_on_real_documents(hf_tok, owt_sample):
    import pyarrow.parquet as pq

    docs = pq.read_table(owt_sample / "train-00000-of-00001.parquet", columns=["text"]).column(0).to_pylist()
    enc = get_tokenizer()
    got = hf_tok(docs)["input_ids"]
    differ = [i for i, (d, ids) in enumerate(zip(docs, got, strict=True)) if ids != enc.encode_ordinary(d)]
    assert len(docs) == 1000 and not differ, f"{len(differ)} documents differ, first {differ[:5]}"
    assert [hf_tok.decode(ids) for ids in got[:100]] == docs[:100]


def test_without_tokenizers_library_the_vocab_files_load_alone(tmp_path, monkeypatch):
    """Where ``tokenizers`` is missing no tokenizer.json is written; transformers builds the same
    tokenizer from vocab.json + merges.txt + tokenizer_config.json."""
    import model.hf_tokenizer as hft

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64))
    export_hf(model, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()  # an older export's file must not survive
    monkeypatch.setattr(hft, "_tokenizer_json", lambda vocab, merges: None)
    export_hf(model, tmp_path, overwrite=True)
    assert not (tmp_path / "tokenizer.json").exists()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    enc = get_tokenizer()
    assert tok(MIXED)["input_ids"] == enc.encode(MIXED, allowed_special="all")
    docs = make_docs(50, seed=4)
    assert tok(docs)["input_ids"] == [enc.encode_ordinary(d) for d in docs]


def test_other_vocabularies_get_no_tokenizer_files(tmp_path):
    export_hf(GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16)), tmp_path)
    assert (tmp_path / "vocab.json").is_file()  # an earlier export of another model, with a tokenizer
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=1000)
    export_hf(GPT(cfg), tmp_path, overwrite=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "model.safetensors", EXPORT_MARKER, "owtgpt_padded_rows.safetensors"]
