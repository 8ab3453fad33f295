"""Deterministic generated documents for tests: varied words, punctuation, numbers, unicode.

Not real text, but it exercises the BPE (multi-byte characters, whitespace runs, digits) and has
known figures: every property a test asserts is computed from these strings with tiktoken itself.
"""

from __future__ import annotations

import random

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "it",
    "from",
    "at",
    "his",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "data",
    "token",
    "shard",
    "model",
    "train",
    "memory",
    "sample",
    "offset",
    "window",
    "batch",
    "layer",
    "attention",
    "gradient",
    "naïve",
    "café",
    "résumé",
    "Zürich",
    "東京",
    "données",
    "ñandú",
    "—",
    "…",
    "“quoted”",
    "'single'",
    "(paren)",
    "[bracket]",
    "{brace}",
]


def make_docs(n: int, seed: int = 0, min_words: int = 5, max_words: int = 400) -> list[str]:
    """``n`` documents of ``min_words..max_words`` words, reproducible from ``seed``."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        k = rng.randint(min_words, max_words)
        parts = []
        for j in range(k):
            w = rng.choice(_WORDS)
            if rng.random() < 0.05:
                w = str(rng.randint(0, 10**6))
            parts.append(w)
            if rng.random() < 0.08:
                parts.append("." if j % 3 else ",")
            if rng.random() < 0.02:
                parts.append("\n\n")
        docs.append(" ".join(parts).strip())
    return docs
