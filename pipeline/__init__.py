"""owtgpt pipeline package: the ground floor. Besides the data layer (tokenizer, shard format, sampler)
it holds the helpers every package uses (``errors``, ``device``, ``fsutil``, ``cliconfig``), because
``model/`` and ``trainer/`` may import ``pipeline/`` and never the reverse (README.md, "Design")."""
