"""Helpers for the tests that run the real ``python -m pipeline`` in a subprocess (issue 11).

Each such test asserts the exit code, exactly one stderr line naming the path or flag, no traceback,
and that nothing already on disk changed (:func:`tests.cli.snapshot` before and after).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cli import snapshot

__all__ = ["ENV", "REPO", "one_error_line", "run_cli", "snapshot", "write_jsonl"]

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("OWTGPT_DEBUG", None)


def run_cli(
    *args: str | Path, script: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` (or ``python SCRIPT ARGS``, a test wrapper around the same main)."""
    head = [str(script)] if script is not None else ["-m", "pipeline"]
    return subprocess.run(
        [sys.executable, *head, *map(str, args)],
        cwd=REPO,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_error_line(res: subprocess.CompletedProcess, code: int, *names: str) -> str:
    """Assert ``res`` failed with ``code`` and exactly one stderr line naming each of ``names``."""
    assert "Traceback" not in res.stderr, res.stderr
    assert "Exception ignored" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    for n in names:
        assert n in lines[0], (n, lines[0])
    assert res.returncode == code, (res.returncode, res.stderr)
    return lines[0]


def write_jsonl(path: Path, records: list) -> Path:
    """One JSON value per line (records may be dicts with non-string ``text`` values)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
