"""Run the real ``python -m model`` / ``python -m trainer`` in a fresh process and check how it failed.

Each CLI error test asserts the exit status, exactly one stderr error line naming the flag or file,
no traceback, and (with :func:`snapshot` before and after) that nothing already on disk changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OWTGPT_DEBUG", None)  # tracebacks only where a test asks for them
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def run_module(module: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in a new process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def running(module: str, *args: str) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """``python -m MODULE ARGS`` running in the background; killed on the way out if still alive."""
    return _background([sys.executable, "-m", module, *args])


def running_script(script: Path, *args: str) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """``python SCRIPT ARGS`` (a test wrapper around a real main) in the background, as :func:`running`."""
    return _background([sys.executable, str(script), *args])


@contextlib.contextmanager
def _background(cmd: list[str]) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_for_line(proc: subprocess.Popen, prefix: str) -> None:
    """Block until ``proc`` prints a stdout line starting with ``prefix`` (synchronises without sleeping)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the process exited (status {proc.wait()}) before printing {prefix!r}")


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [ln for ln in proc.stderr.splitlines() if ln.startswith(("error", "interrupted"))]


def one_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The one stderr error line of ``proc``, after checking its exit status and that it names ``needles``."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and the set of folders) under ``roots``: equal snapshots, nothing changed."""
    out: dict[str, str] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for dirpath, _, files in os.walk(root):
            out[dirpath] = "<dir>"
            for f in files:
                p = Path(dirpath) / f
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
