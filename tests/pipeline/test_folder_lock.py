"""pipeline.fsutil.folder_lock / folder_locked_by: one writer per folder, released by the kernel.

Other processes are real subprocesses; the tests synchronise on what those print (the holder says
"locked" only once it holds the lock), never on sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import EXIT_DATA, UserError
from pipeline.fsutil import LOCK_NAME, FolderLockedError, folder_lock, folder_locked_by

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys
from pathlib import Path
from pipeline.fsutil import folder_lock
with folder_lock(Path(sys.argv[1]), "build"):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the parent closes stdin (or kills us)
"""


def _holder(d: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(d)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.stdout.readline().strip() == "locked"  # blocks until the child holds the lock
    return p


def test_unlocked_folder_probes_none(tmp_path: Path) -> None:
    assert folder_locked_by(tmp_path) is None  # no lock file at all
    with folder_lock(tmp_path, "build"):
        pass
    assert (tmp_path / LOCK_NAME).is_file()
    assert folder_locked_by(tmp_path) is None  # lock file left behind, nobody holds it


def test_second_writer_refused_naming_holder(tmp_path: Path) -> None:
    p = _holder(tmp_path)
    try:
        assert folder_locked_by(tmp_path) == p.pid
        with pytest.raises(FolderLockedError) as ei, folder_lock(tmp_path, "build"):
            pass
        msg = str(ei.value)
        assert f"another build (pid {p.pid}) is writing {tmp_path}" in msg
        assert isinstance(ei.value, UserError) and ei.value.exit_code == EXIT_DATA
        assert ei.value.pid == p.pid
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    assert folder_locked_by(tmp_path) is None
    with folder_lock(tmp_path, "build"):
        assert folder_locked_by(tmp_path) == os.getpid()


def test_same_process_second_lock_refused(tmp_path: Path) -> None:
    with (
        folder_lock(tmp_path, "training run"),
        pytest.raises(FolderLockedError, match="another training run"),
        folder_lock(tmp_path, "training run"),
    ):
        pass


def test_killed_holder_releases_lock(tmp_path: Path) -> None:
    p = _holder(tmp_path)
    assert folder_locked_by(tmp_path) == p.pid
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stdin.close()
    p.stdout.close()
    assert folder_locked_by(tmp_path) is None
    with folder_lock(tmp_path, "build"):  # no stale lock blocks the rerun
        assert folder_locked_by(tmp_path) == os.getpid()


def test_probe_works_on_read_only_folder(tmp_path: Path) -> None:
    with folder_lock(tmp_path, "build"):
        pass
    tmp_path.chmod(0o555)
    try:
        assert folder_locked_by(tmp_path) is None
    finally:
        tmp_path.chmod(0o755)
