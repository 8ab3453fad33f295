"""The owtgpt tokenizer: tiktoken's GPT-2 BPE plus three special tokens.

Ids 0..50256 are ``tiktoken.get_encoding("gpt2")``'s (50256 = ``<|endoftext|>``); we add
``<|startoftext|>`` = 50257, ``<|padding|>`` = 50258 and ``<|unknown|>`` = 50259 (:data:`VOCAB_SIZE` =
50260). A document is ``[SOT] + encode_ordinary(text) + [EOT]``: text is always *ordinary*, so a literal
``"<|endoftext|>"`` in a page can never forge a boundary. Loading goes through tiktoken's own path
(``TIKTOKEN_CACHE_DIR`` applies); a failure raises :class:`TokenizerUnavailableError` with the fix.
:func:`tokenizer_fingerprint` travels with shards, manifests and checkpoints. README.md, "Design".
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import tiktoken

BASE_ENCODING = "gpt2"
ENCODING_NAME = "owtgpt-gpt2"

EOT_ID = 50256  # <|endoftext|>, GPT-2's own
SOT_ID = 50257  # <|startoftext|>
PAD_ID = 50258  # <|padding|>
UNK_ID = 50259  # <|unknown|>
VOCAB_SIZE = 50260

SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": EOT_ID,
    "<|startoftext|>": SOT_ID,
    "<|padding|>": PAD_ID,
    "<|unknown|>": UNK_ID,
}

# uint16 storage holds ids 0..65535; anything larger would wrap silently, so the build refuses.
MAX_STORABLE_ID = np.iinfo(np.uint16).max


class TokenizerUnavailableError(RuntimeError):
    """The GPT-2 BPE files could not be loaded (no network and no cache)."""


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The extended GPT-2 encoding (cached per process; tiktoken encodings are thread-safe)."""
    try:
        base = tiktoken.get_encoding(BASE_ENCODING)
    except Exception as e:  # network errors, missing cache, corrupt download: all the same fix
        raise TokenizerUnavailableError(
            f"could not load tiktoken's '{BASE_ENCODING}' BPE ({type(e).__name__}: {e}).\n"
            "tiktoken downloads vocab.bpe and encoder.json on first use. Either allow network access "
            "once, or point TIKTOKEN_CACHE_DIR at a folder that already holds them, e.g.\n"
            "    export TIKTOKEN_CACHE_DIR=$PWD/../shared/tiktoken-cache"
        ) from e
    if base.n_vocab != EOT_ID + 1 or base.eot_token != EOT_ID:
        raise TokenizerUnavailableError(
            f"tiktoken's '{BASE_ENCODING}' has n_vocab={base.n_vocab}, eot={base.eot_token}; "
            f"expected {EOT_ID + 1} and {EOT_ID}. The BPE cache is not GPT-2's."
        )
    enc = tiktoken.Encoding(
        name=ENCODING_NAME,
        pat_str=base._pat_str,
        mergeable_ranks=base._mergeable_ranks,
        special_tokens=dict(SPECIAL_TOKENS),
    )
    check_storable(enc.n_vocab)
    return enc


def check_storable(n_vocab: int) -> None:
    """Refuse a vocabulary whose ids would not fit the uint16 shard payload."""
    if n_vocab - 1 > MAX_STORABLE_ID:
        raise ValueError(
            f"vocabulary of {n_vocab} ids: id {n_vocab - 1} exceeds {MAX_STORABLE_ID}, the largest "
            "value a uint16 shard can hold; refusing to build rather than wrap ids"
        )


@functools.lru_cache(maxsize=1)
def tokenizer_fingerprint() -> str:
    """``"owtgpt-gpt2:<sha256 prefix>"`` over the BPE ranks (in rank order) and special ids."""
    enc = get_tokenizer()
    h = hashlib.sha256()
    ranks = enc._mergeable_ranks
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little"))
        h.update(len(token).to_bytes(2, "little"))
        h.update(token)
    for name, idx in sorted(SPECIAL_TOKENS.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}={name};".encode())
    return f"{ENCODING_NAME}:{h.hexdigest()[:32]}"


def encode_document(text: str, enc: tiktoken.Encoding | None = None) -> np.ndarray:
    """``[SOT] + encode_ordinary(text) + [EOT]`` as uint16 (ids are checked < VOCAB_SIZE)."""
    enc = enc or get_tokenizer()
    ids = enc.encode_ordinary(text)
    out = np.empty(len(ids) + 2, dtype=np.uint16)
    out[0] = SOT_ID
    out[1:-1] = ids
    out[-1] = EOT_ID
    return out


def decode(ids: np.ndarray | list[int], enc: tiktoken.Encoding | None = None) -> str:
    """Decode ids to text; special ids decode to their ``<|...|>`` strings.

    Ids outside the vocabulary (e.g. the model's padded rows) decode as ``<|unknown|>`` rather
    than raising, so a stray id never crashes a sampler or the stats display.
    """
    enc = enc or get_tokenizer()
    ids = [int(i) if 0 <= int(i) < VOCAB_SIZE else UNK_ID for i in ids]
    return enc.decode(ids, errors="replace")
