"""``python -m trainer``: pretrain GPT-2 on owtgpt shards (single process, or one rank under torchrun).

Exit status (README, "When things go wrong"): 0 when the run finished or was stopped by
SIGTERM/SIGINT after saving a checkpoint; 1 for a data, shard, resume or filesystem problem, or a
failed run (too many non-finite steps); 2 for a bad flag or flag combination; 130 when a second
Ctrl-C aborted it. Errors are one line naming the flag or file; ``--debug`` or ``OWTGPT_DEBUG=1``
adds the traceback.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import EXIT_INTERRUPTED, UserError, run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    prefix = f"error (rank {os.environ['RANK']}): " if "RANK" in os.environ else "error: "

    def body() -> int:
        from trainer.config import train_config_from_argv
        from trainer.train import train

        try:
            train(train_config_from_argv(argv))
        except KeyboardInterrupt:
            if os.environ.get("RANK", "0") != "0":  # a second Ctrl-C reaches every rank: rank 0 says it
                return EXIT_INTERRUPTED
            raise
        except OSError as e:
            if (
                e.errno is None and e.args
            ):  # raised with a message of ours (e.g. "no manifest in DIR"), not by the OS
                raise UserError(str(e)) from None
            raise
        return 0

    return run_command(
        body, debug="--debug" in argv, prefix=prefix, user_errors=_user_errors(),
        on_interrupt="interrupted: the current step was not checkpointed; rerun with --resume to continue "
        "from the newest checkpoint",
    )  # fmt: skip


def _user_errors() -> tuple[type[BaseException], ...]:
    """The package errors whose message is already the whole story (exit 1, or their ``exit_code``)."""
    from model.checkpoint import CheckpointError
    from pipeline.format import ShardFormatError
    from pipeline.sampler_index import SamplerError
    from pipeline.tokenizer import TokenizerUnavailableError
    from trainer.checkpoint import ResumeError
    from trainer.train import NonFiniteError

    return (
        SamplerError, ResumeError, ShardFormatError, TokenizerUnavailableError, NonFiniteError,
        CheckpointError,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
