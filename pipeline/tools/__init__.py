"""Offline tooling behind ``python -m pipeline``: read sources, build shards, stats, verify, show.

Nothing here is imported at training time; ``model/`` and ``trainer/`` use only ``pipeline/``'s top level
(tokenizer, shard format, sampler). Layout and commands: README.md, "Design".
"""
