"""Issue 18 on the real ``python -m pipeline`` CLI: a second Ctrl-C, repairs, damaged indexes and
counts, misleading messages, and the split of the same documents in every container.

Each test runs the CLI in a subprocess and asserts the exit status, exactly one stderr error line,
no traceback and (where it matters) what is on disk afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.fsutil import LOCK_NAME, folder_locked_by
from pipeline.tools.build_state import STATE_NAME
from tests.cli import child_env, wait_for_line
from tests.conftest import REPO
from tests.pipeline.cli_util import one_error_line, run_cli, snapshot, write_jsonl
from tests.textgen import make_docs


def folder_bytes(out: Path) -> dict[str, bytes]:
    """The build's output (shards and manifest), not its resume log or lock."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name not in (STATE_NAME, LOCK_NAME)}


# ----------------------------------------------------------------------------- 1. a second Ctrl-C

BLOCKING_WRAPPER = '''
"""python -m pipeline whose worker blocks in its third chunk (until killed, at most 60 s)."""
import sys, time
import pipeline.tools.build_workers as bw
from pipeline.__main__ import main

original, calls = bw.encode_texts, [0]

def encode_texts(texts):
    calls[0] += 1
    if calls[0] == 3:
        print("worker blocked", flush=True)
        deadline = time.monotonic() + 60  # bounded: an old build that waits for it still ends
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return original(texts)

bw.encode_texts = encode_texts  # the forked worker looks the name up at call time
sys.exit(main(sys.argv[1:]))
'''


def test_second_ctrl_c_stops_at_once_and_the_rerun_resumes(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in make_docs(300, seed=41, max_words=300)])
    flags = ("--shard-tokens", "3000", "--val-fraction", "0.05", "--workers", "1", "--chunk-bytes", "8192")
    out, ref = tmp_path / "out", tmp_path / "ref"
    wrapper = tmp_path / "blocking.py"
    wrapper.write_text(BLOCKING_WRAPPER)
    proc = subprocess.Popen(
        [sys.executable, str(wrapper), "build", str(src), "--out", str(out), *flags, "--quiet"],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_line(proc, "worker blocked")
        proc.send_signal(signal.SIGINT)
        wait_for_line(proc, "interrupting")  # the first one is being handled: cleanup now waits on the worker
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)  # a hang detector, not a timing
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    one_error_line(res, 130, "interrupted again", "rerun the same command")
    assert folder_locked_by(out) is None  # the workers died with it: the lock is free
    again = run_cli("build", src, "--out", out, *flags, "--quiet")
    assert again.returncode == 0, again.stderr
    assert run_cli("build", src, "--out", ref, *flags, "--quiet").returncode == 0
    assert folder_bytes(out) == folder_bytes(ref)
