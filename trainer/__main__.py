"""``python -m trainer``: pretrain GPT-2 on owtgpt shards (single process, or one rank under torchrun).

Exit status: 0 when the run finished or was stopped by SIGTERM/SIGINT after saving a checkpoint;
2 for a setting, data or resume problem found before training (the message names the flag or file);
1 when training itself failed (e.g. too many non-finite steps).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from pipeline.format import ShardFormatError
    from pipeline.sampler_index import SamplerError
    from pipeline.tokenizer import TokenizerUnavailableError
    from trainer.checkpoint import ResumeError
    from trainer.config import ConfigError, config_from_args
    from trainer.train import NonFiniteError, train

    rank = int(os.environ.get("RANK", "0"))
    prefix = f"error (rank {rank}): " if "RANK" in os.environ else "error: "
    try:
        cfg = config_from_args(argv)
        train(cfg)
    except (ConfigError, SamplerError, ResumeError, ShardFormatError, FileNotFoundError,
            TokenizerUnavailableError) as e:
        print(prefix + str(e), file=sys.stderr, flush=True)
        return int(getattr(e, "exit_code", 2))  # SamplerError is a pipeline UserError: data, exit 1
    except NonFiniteError as e:
        print(prefix + str(e), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
