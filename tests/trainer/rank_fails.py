"""Test helper run as one rank of a two-process gloo job: ``python tests/trainer/rank_fails.py TRAINER-ARGS``.

On rank 1 it makes optimizer step 2 raise (by wrapping ``trainer.train.lr_at``, which the loop calls
once per step), while rank 0 goes on into that step's gradient all-reduce. The fault is injected
here, never through a flag of the product. Used by ``test_train_ddp.py`` (which puts the repository
on ``PYTHONPATH``).
"""

from __future__ import annotations

import os
import sys

import trainer.train
from trainer.__main__ import main

FAIL_RANK, FAIL_STEP = 1, 2


def _failing_lr_at(step, cfg, _real=trainer.train.lr_at):
    if int(os.environ["RANK"]) == FAIL_RANK and step == FAIL_STEP:
        raise RuntimeError(f"injected failure on rank {FAIL_RANK} at step {FAIL_STEP}")
    return _real(step, cfg)


if __name__ == "__main__":
    trainer.train.lr_at = _failing_lr_at
    sys.exit(main(sys.argv[1:]))
