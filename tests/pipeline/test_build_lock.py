"""Issue 11 §1 on the real CLI: one build per --out, and readers that say "build in progress".

The first build runs through a wrapper that holds it still right after its first documents reach a
shard temp file, until the test says go; the test waits on observable state (a file the wrapper
writes), with a bounded poll, never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.format import MANIFEST_NAME, ShardDataset
from pipeline.fsutil import LOCK_NAME, folder_locked_by
from tests.pipeline.cli_util import ENV, REPO, one_error_line, run_cli, snapshot, write_jsonl
from tests.textgen import make_docs

PAUSING_WRAPPER = '''
"""python -m pipeline, pausing once, right after the first documents reach a shard temp file."""
import sys, time
from pathlib import Path
import pipeline.format
from pipeline.__main__ import main

gate = Path(sys.argv[1])
original = pipeline.format.ShardWriter.add_documents

def add_documents(self, tokens, lengths):
    original(self, tokens, lengths)
    if not (gate / "paused").exists():
        self._f.flush()
        (gate / "paused").write_text(str(self._tmp))
        deadline = time.monotonic() + 300
        while not (gate / "go").exists():  # bounded: never hang a test run
            if time.monotonic() > deadline:
                raise SystemExit("the test never said go")
            time.sleep(0.01)

pipeline.format.ShardWriter.add_documents = add_documents
sys.exit(main(sys.argv[2:]))
'''

FLAGS = ("--shard-tokens", "3000", "--val-fraction", "0.05", "--quiet")


def _start_paused_build(
    tmp_path: Path, src: Path, out: Path, workers: int
) -> tuple[subprocess.Popen, Path, Path]:
    gate = tmp_path / "gate"
    gate.mkdir()
    wrapper = tmp_path / "pausing.py"
    wrapper.write_text(PAUSING_WRAPPER)
    cmd = [
        sys.executable,
        str(wrapper),
        str(gate),
        "build",
        str(src),
        "--out",
        str(out),
        *FLAGS,
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (gate / "paused").exists():  # observable state: the wrapper has written its temp file
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first build never reached its first shard"
        time.sleep(0.01)  # polling interval, not synchronisation
    return proc, gate, Path((gate / "paused").read_text())


def test_second_build_is_refused_and_the_first_finishes_intact(tmp_path: Path) -> None:
    docs_a = make_docs(120, seed=31, max_words=120)
    src_a = write_jsonl(tmp_path / "a.jsonl", [{"text": d} for d in docs_a])
    src_b = write_jsonl(tmp_path / "b.jsonl", [{"text": d} for d in make_docs(50, seed=32)])
    out = (tmp_path / "shards").resolve()
    first, gate, temp = _start_paused_build(tmp_path, src_a, out, workers=1)
    try:
        assert temp.parent == out and temp.exists()
        assert folder_locked_by(out) == first.pid
        before = snapshot(out)

        second = run_cli("build", src_b, "--out", out, *FLAGS, "--workers", "1")
        one_error_line(second, 1, f"another build (pid {first.pid}) is writing {out}")
        # readers: "build in progress", never "corrupt" or a verify report
        for cmd in (
            ["stats", out, "--no-progress"],
            ["verify", out, "--no-progress"],
            ["show", out, "--doc", "0"],
        ):
            line = one_error_line(run_cli(*cmd), 1, str(out), "build in progress", f"pid {first.pid}")
            assert "corrupt" not in line and "FAILED" not in line
        assert snapshot(out) == before  # the refused build touched nothing: the temp file is still there
        assert temp.exists()
    finally:
        (gate / "go").touch()
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert stderr == ""
    assert folder_locked_by(out) is None
    assert (out / MANIFEST_NAME).exists()
    res = run_cli("verify", out, "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    ds = ShardDataset(out)
    assert ds.manifest.source == f"jsonl:{src_a.resolve()}"
    assert ds.num_docs("train") + ds.num_docs("val") == len(docs_a)


def test_killed_build_releases_the_lock_and_the_rerun_completes(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": d} for d in make_docs(120, seed=33, max_words=120)])
    out = (tmp_path / "shards").resolve()
    first, _, temp = _start_paused_build(tmp_path, src, out, workers=2)
    assert folder_locked_by(out) == first.pid
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    # the kernel drops the lock of the dead build (its orphaned workers exit on their own); the
    # rerun needs no manual cleanup of .lock or of the temp file the kill left behind
    assert (out / LOCK_NAME).exists() and temp.exists()
    rerun = run_cli("build", src, "--out", out, *FLAGS, "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    clean = tmp_path / "clean"
    assert run_cli("build", src, "--out", clean, *FLAGS, "--workers", "1").returncode == 0
    names = sorted(p.name for p in clean.iterdir() if p.name not in (LOCK_NAME, "build-state.jsonl"))
    assert names == sorted(p.name for p in out.iterdir() if p.name not in (LOCK_NAME, "build-state.jsonl"))
    for n in names:
        assert (out / n).read_bytes() == (clean / n).read_bytes(), n
    assert os.path.exists(out / MANIFEST_NAME)


def test_two_builds_started_together_exactly_one_succeeds(tmp_path: Path) -> None:
    """Issue 11: both used to exit 0 while the folder held one corpus. Whichever wins, the other is
    refused (by the lock while the winner runs, or by the settings check once it has finished)."""
    docs = {k: make_docs(80, seed=s, max_words=120) for k, s in (("a", 41), ("b", 42))}
    srcs = {k: write_jsonl(tmp_path / f"{k}.jsonl", [{"text": d} for d in v]) for k, v in docs.items()}
    out = (tmp_path / "shards").resolve()
    procs = {
        k: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline",
                "build",
                str(src),
                "--out",
                str(out),
                *FLAGS,
                "--workers",
                "1",
            ],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k, src in srcs.items()
    }
    results = {k: (p.wait(timeout=300), p.communicate()[1]) for k, p in procs.items()}
    winners = [k for k, (rc, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    rc, err = results[loser]
    assert rc == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "another build" in err or "different settings" in err, err
    assert run_cli("verify", out, "--no-progress").returncode == 0
    ds = ShardDataset(out)
    assert ds.manifest.source == f"jsonl:{srcs[winners[0]].resolve()}"
    assert ds.num_docs("train") + ds.num_docs("val") == len(docs[winners[0]])
