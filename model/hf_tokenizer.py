"""The Hugging Face tokenizer files of an ``export-hf`` folder, derived from tiktoken (no download).

* ``vocab.json`` maps each GPT-2 BPE token to its id: the token's bytes are spelled with GPT-2's
  byte-to-unicode table (:func:`bytes_to_unicode`), ids 0..50255 are tiktoken's ranks and
  ``<|endoftext|>`` is 50256. It holds the same entries as OpenAI's ``encoder.json``.
* ``merges.txt`` holds one ``left right`` line per rank 256..50255, in rank order (GPT-2's
  ``vocab.bpe``). tiktoken keeps only the ranks, so each merge is recovered by
  :func:`merge_for_rank`: BPE over the token's own bytes with only the ranks below its rank stops
  at exactly two parts, and those two parts are the merge that created the token.
* ``tokenizer_config.json`` and ``special_tokens_map.json`` describe a ``GPT2Tokenizer`` with
  owtgpt's specials registered as added special tokens: ``<|startoftext|>`` 50257 (bos),
  ``<|padding|>`` 50258 (pad), ``<|unknown|>`` 50259 (unk), ``<|endoftext|>`` 50256 (eos), the
  same ids as the exported ``config.json``. No prefix space and no bos is added, so
  ``tokenizer(text).input_ids == enc.encode(text, allowed_special="all")`` for owtgpt's tiktoken
  encoding; a prompt in the training format starts with ``<|startoftext|>`` written in the text.
* ``tokenizer.json`` (the ``tokenizers`` serialisation, read by fast tokenizers and non-Python
  runtimes) is written when the ``tokenizers`` library is importable; it ships with
  ``transformers``, the only consumer of these folders. Without it the four files above load on
  their own.
See README.md, "Hugging Face interop".
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from pipeline.fsutil import atomic_write_text
from pipeline.tokenizer import EOT_ID, PAD_ID, SOT_ID, SPECIAL_TOKENS, UNK_ID, get_tokenizer

MERGES_HEADER = "#version: 0.2"
SPECIAL_ROLES = {
    "bos_token": SOT_ID,
    "eos_token": EOT_ID,
    "pad_token": PAD_ID,
    "unk_token": UNK_ID,
}


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE spells token bytes with it).

    Bytes that are printable Latin-1 characters stand for themselves; the other 68 (control
    characters, space, the non-breaking space and soft hyphen) map, in byte order, to
    U+0100, U+0101, ... so that no token string contains whitespace or control characters.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def token_string(token: bytes) -> str:
    """A token's bytes as the string ``vocab.json`` and ``merges.txt`` spell it."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def merge_for_rank(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair of tokens whose merge created ``token`` (of ``rank``).

    Runs tiktoken's BPE rule on the token's bytes (merge the adjacent pair whose concatenation
    has the lowest rank; leftmost on ties) with only the ranks below ``rank``: merges are learned
    in rank order, so what is left when no lower-ranked merge applies is the token's own split.
    """
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best_rank, best_i = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank, best_i = r, i
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(
            f"BPE rank {rank} ({token!r}) is not the merge of two lower-ranked tokens "
            f"({len(parts)} parts remain); the ranks are not a byte-level BPE"
        )
    return parts[0], parts[1]


@functools.lru_cache(maxsize=1)
def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(``vocab.json`` content, ``merges.txt`` pairs in rank order) from tiktoken's GPT-2 ranks."""
    ranks: dict[bytes, int] = get_tokenizer()._mergeable_ranks
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[token_string(token)] = rank
        if len(token) > 1:
            left, right = merge_for_rank(token, rank, ranks)
            merges.append((token_string(left), token_string(right)))
    vocab["<|endoftext|>"] = EOT_ID
    return vocab, merges


def _added_token(content: str) -> dict[str, object]:
    # normalized=False and no strip: the text around a special is encoded exactly as tiktoken does
    return {"content": content, "lstrip": False, "rstrip": False, "normalized": False,
            "single_word": False, "special": True}  # fmt: skip


def tokenizer_config(model_max_length: int) -> dict[str, object]:
    """``tokenizer_config.json``: a GPT2Tokenizer with owtgpt's specials (see the module docstring)."""
    names = {idx: name for name, idx in SPECIAL_TOKENS.items()}
    return {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "add_eos_token": False,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,  # decode() gives the text back byte for byte
        **{role: names[idx] for role, idx in SPECIAL_ROLES.items()},
        "added_tokens_decoder": {str(idx): _added_token(names[idx]) for idx in sorted(names)},
    }


def _tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]]) -> str | None:
    """``tokenizer.json`` built with the ``tokenizers`` library, or None when it is not installed."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
        from tokenizers.models import BPE
    except ImportError:
        return None
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix=""))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split regex
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # added in id order: <|endoftext|> keeps its vocab id, the others take 50257, 50258, 50259
    specials = sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1])
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    for name, idx in specials:
        if tok.token_to_id(name) != idx:
            raise RuntimeError(f"tokenizers gave {name} id {tok.token_to_id(name)}, expected {idx}")
    return tok.to_str(pretty=False)


def write_tokenizer(out_dir: str | os.PathLike[str], model_max_length: int) -> list[Path]:
    """Write the tokenizer files into ``out_dir`` (each atomically); returns the paths written."""
    out = Path(out_dir)
    vocab, merges = gpt2_vocab_and_merges()
    names = {idx: name for name, idx in SPECIAL_TOKENS.items()}
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False) + "\n",
        "merges.txt": "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config(model_max_length), indent=2) + "\n",
        "special_tokens_map.json": json.dumps(
            {role: _added_token(names[idx]) for role, idx in SPECIAL_ROLES.items()}, indent=2
        )
        + "\n",
    }
    fast = _tokenizer_json(vocab, merges)
    if fast is not None:
        files["tokenizer.json"] = fast
    else:
        (out / "tokenizer.json").unlink(missing_ok=True)  # never leave one from an older export
    written = []
    for name, text in files.items():
        atomic_write_text(out / name, text)
        written.append(out / name)
    return written
