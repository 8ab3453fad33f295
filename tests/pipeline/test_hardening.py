"""Issue 11 (pipeline side), each case on the real CLI in a subprocess: non-string texts (§4),
user-caused OSErrors as one line, full disk and resume (§5), misleading messages (§6), exit codes
and ``--debug``. The concurrent-build case is in test_build_lock.py.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import zstandard

from pipeline.format import MANIFEST_NAME, ShardDataset
from pipeline.fsutil import LOCK_NAME
from pipeline.tokenizer import EOT_ID, SOT_ID
from tests.pipeline.cli_util import ENV, REPO, one_error_line, run_cli, snapshot, write_jsonl
from tests.textgen import make_docs

GPT2 = tiktoken.get_encoding("gpt2")
DOCS = make_docs(40, seed=5, max_words=60)
QUIET = ("--quiet", "--workers", "1", "--val-fraction", "0")


def stored_docs(out: Path, split: str = "train") -> list[list[int]]:
    return [list(map(int, s.doc(i))) for s in ShardDataset(out).shards(split) for i in range(s.num_docs)]


def reference(texts: list[str]) -> list[list[int]]:
    return [[SOT_ID, *GPT2.encode_ordinary(t), EOT_ID] for t in texts]


# ----------------------------------------------------------------------------- §4 non-string text


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(12345, "number"), (["a", "b"], "array"), (None, "null"), ({"x": "y"}, "object"), (True, "boolean")],
)
def test_jsonl_non_string_text_names_file_line_and_type(tmp_path: Path, value, type_name: str) -> None:
    recs = [{"text": d} for d in DOCS[:5]]
    recs.insert(2, {"text": value})  # line 3
    src = write_jsonl(tmp_path / "bad.jsonl", recs)
    out = tmp_path / "shards"
    before = snapshot(tmp_path)
    res = run_cli("build", src, "--out", out, *QUIET)
    one_error_line(res, 1, str(src), "line 3", type_name, "--skip-bad-records")
    assert snapshot(tmp_path) == before  # not even an empty --out is left behind


def test_skip_bad_records_skips_and_counts(tmp_path: Path) -> None:
    good = DOCS[:12]
    recs: list = [{"text": d} for d in good]
    for i, v in ((1, 7), (5, ["a", "b"]), (9, None)):
        recs.insert(i, {"text": v})
    src = write_jsonl(tmp_path / "mixed.jsonl", recs)
    out = tmp_path / "shards"
    res = run_cli("build", src, "--out", out, "--workers", "1", "--val-fraction", "0", "--skip-bad-records")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["counts"]["docs_skipped_bad"] == 3
    assert m["counts"]["docs_read"] == len(recs)
    assert m["counts"]["docs_written"] == len(good)
    assert stored_docs(out) == reference(good)  # "7" and "['a', 'b']" were never stored
    row = [ln for ln in res.stdout.splitlines() if "skipped bad records" in ln]
    assert row and row[0].split()[-2] == "3", res.stdout  # the summary table's row: "... │ 3 │"


def test_parquet_non_string_values_name_file_row_and_type(tmp_path: Path) -> None:
    src = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["one doc", "two", None, "four"]}), src)
    res = run_cli("build", src, "--out", tmp_path / "s", *QUIET)
    one_error_line(res, 1, str(src), "row 2", "null", "--skip-bad-records")
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [10, 20]}), ints)
    res = run_cli("build", ints, "--out", tmp_path / "s", *QUIET)
    one_error_line(res, 1, str(ints), "row 0", "number")
    res = run_cli("build", src, "--out", tmp_path / "s", *QUIET, "--skip-bad-records")
    assert res.returncode == 0, res.stderr
    assert stored_docs(tmp_path / "s") == reference(["one doc", "two", "four"])
    assert json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())["counts"]["docs_skipped_bad"] == 1


# ----------------------------------------------------------------------------- §5 OSErrors as one line


def test_out_is_an_existing_file(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in DOCS[:3]])
    target = tmp_path / "taken"
    target.write_text("not a folder")
    before = snapshot(tmp_path)
    res = run_cli("build", src, "--out", target, *QUIET)
    one_error_line(res, 1, "--out", str(target), "is a file")
    assert snapshot(tmp_path) == before


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: chmod when not root, else a read-only mount."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    for d in (Path("/sys/fs"), Path("/proc/sys")):
        try:
            (d / ".owtgpt-probe").touch()
        except OSError:
            return d
        (d / ".owtgpt-probe").unlink()
    pytest.skip("running as root and no read-only folder to write into")


@pytest.mark.parametrize("below", [False, True], ids=["existing-folder", "new-folder-inside"])
def test_out_not_writable(tmp_path: Path, below: bool) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in DOCS[:3]])
    ro = _unwritable_folder(tmp_path)
    out = ro / "shards" if below else ro
    before = snapshot(tmp_path)
    try:
        res = run_cli("build", src, "--out", out, *QUIET)
    finally:
        if ro.is_relative_to(tmp_path):
            ro.chmod(0o755)
    one_error_line(res, 1, "--out", str(out))
    assert snapshot(tmp_path) == before


ENOSPC_WRAPPER = '''
"""python -m pipeline, on a disk that fills after BUDGET bytes (every file the build writes)."""
import errno, io, os, sys
import pipeline.format, pipeline.fsutil
from pipeline.__main__ import main

budget = [int(sys.argv[1])]

class FillingFile(io.FileIO):
    def write(self, b):
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        data = bytes(b)[: budget[0]]  # a short write, then ENOSPC, as a real full disk does
        budget[0] -= len(data)
        return super().write(data)

def filling_open(path, mode="r", *args, **kwargs):
    if "w" in mode:
        return io.BufferedWriter(FillingFile(path, "w"))
    return open(path, mode, *args, **kwargs)

pipeline.format.open = filling_open  # module globals shadow the builtin for the shard and
pipeline.fsutil.open = filling_open  # atomic (state, manifest) writers
sys.exit(main(sys.argv[2:]))
'''


def test_full_disk_one_line_no_temp_and_rerun_is_byte_identical(tmp_path: Path) -> None:
    docs = make_docs(200, seed=9, max_words=150)
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in docs])
    wrapper = tmp_path / "full_disk.py"
    wrapper.write_text(ENOSPC_WRAPPER)
    flags = ("--shard-tokens", "2000", "--val-fraction", "0.05", "--workers", "1", "--quiet")
    out = (tmp_path / "shards").resolve()
    src_before = snapshot(src)
    res = run_cli("60000", "build", src, "--out", out, *flags, script=wrapper)
    one_error_line(res, 1, str(out), "no space left", "free space, then rerun the same command to resume")
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert not (out / MANIFEST_NAME).exists()
    assert list(out.glob("train-*.bin")), "the disk filled before the first shard: raise the budget"
    assert snapshot(src) == src_before

    rerun = run_cli("build", src, "--out", out, *flags)
    assert rerun.returncode == 0, rerun.stderr
    clean = tmp_path / "clean"
    assert run_cli("build", src, "--out", clean, *flags).returncode == 0

    def data(d: Path) -> dict[str, bytes]:  # everything but the lock file (it holds the writer's pid)
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != LOCK_NAME}

    assert data(out) == data(clean)


# ----------------------------------------------------------------------------- §6 messages


def test_source_format_parquet_on_jsonl_says_what_it_is(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in DOCS[:3]])
    before = snapshot(tmp_path)
    res = run_cli("build", src, "--out", tmp_path / "s", "--source-format", "parquet", *QUIET)
    line = one_error_line(res, 1, str(src), "JSON lines", "--source-format jsonl")
    assert "corrupt" not in line and "re-download" not in line.lower()
    assert snapshot(tmp_path) == before


def test_compressed_suffix_contradicted_by_bytes(tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl.zst"
    src.write_bytes(gzip.compress(b'{"text": "x"}\n'))
    res = run_cli("build", src, "--out", tmp_path / "s", *QUIET)
    one_error_line(res, 1, str(src), "gzip-compressed", "not zstd")


def test_mixed_folder_is_refused_listing_what_it_holds(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table({"text": DOCS[:2]}), folder / "a.parquet")
    write_jsonl(folder / "b.jsonl", [{"text": d} for d in DOCS[2:4]])
    (folder / "c.txt").write_text(DOCS[5])
    before = snapshot(tmp_path)
    res = run_cli("build", folder, "--out", tmp_path / "s", *QUIET)
    one_error_line(
        res, 1, str(folder), "1 parquet file,", "1 jsonl file,", "1 *.txt file)", "--source-format text"
    )
    assert snapshot(tmp_path) == before
    res = run_cli("build", folder, "--out", tmp_path / "s", "--source-format", "jsonl", *QUIET)
    assert res.returncode == 0, res.stderr
    assert stored_docs(tmp_path / "s") == reference(DOCS[2:4])


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.zst"])
def test_utf8_bom_at_start_of_jsonl_is_stripped(tmp_path: Path, suffix: str) -> None:
    body = "".join(json.dumps({"text": d}) + "\n" for d in DOCS[:4]).encode()
    data = b"\xef\xbb\xbf" + body
    src = tmp_path / f"bom{suffix}"
    src.write_bytes(zstandard.ZstdCompressor().compress(data) if suffix.endswith(".zst") else data)
    res = run_cli("build", src, "--out", tmp_path / "s", *QUIET)
    assert res.returncode == 0, res.stderr
    assert stored_docs(tmp_path / "s") == reference(DOCS[:4])


def test_val_fraction_leaving_train_empty_warns(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "one.jsonl", [{"text": DOCS[0]}])  # the first doc always goes to val
    res = run_cli("build", src, "--out", tmp_path / "s", "--quiet", "--workers", "1", "--val-fraction", "0.5")
    assert res.returncode == 0
    line = one_error_line(res, 0, "--val-fraction 0.5", "train split", "empty")
    assert line.startswith("warning:")


def test_missing_source_leaves_no_out_folder(tmp_path: Path) -> None:
    res = run_cli("build", tmp_path / "nope.jsonl", "--out", tmp_path / "s", *QUIET)
    one_error_line(res, 1, str(tmp_path / "nope.jsonl"))
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- exit codes, --debug


def test_usage_error_exits_2_naming_the_flag(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])
    res = run_cli("build", src, "--out", tmp_path / "s", "--quiet", "--workers", "0")
    one_error_line(res, 2, "--workers 0")
    res = run_cli("build", src, "--out", tmp_path / "s", "--quiet", "--val-fraction", "nan")
    one_error_line(res, 2, "--val-fraction nan")
    assert not (tmp_path / "s").exists()


def test_inspect_exit_codes(tmp_path: Path) -> None:
    res = run_cli("stats", tmp_path, "--no-progress")  # no manifest: an input problem
    one_error_line(res, 1, str(tmp_path), "no manifest")
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in DOCS[:3]])
    out = tmp_path / "s"
    assert run_cli("build", src, "--out", out, *QUIET).returncode == 0
    before = snapshot(out)
    one_error_line(run_cli("show", out, "--doc", "3"), 2, "--doc 3")  # out of range: a bad flag value
    assert snapshot(out) == before


@pytest.mark.parametrize("how", ["flag-before", "flag-after", "env"])
def test_debug_shows_the_traceback(tmp_path: Path, how: str) -> None:
    src = write_jsonl(tmp_path / "bad.jsonl", [{"text": 1}])
    args = ["build", str(src), "--out", str(tmp_path / "s"), *QUIET]
    env = None
    if how == "flag-before":
        args = ["--debug", *args]
    elif how == "flag-after":
        args = [*args, "--debug"]
    else:
        env = {**ENV, "OWTGPT_DEBUG": "1"}
    res = run_cli(*args, env=env)
    assert res.returncode == 1
    assert "Traceback" in res.stderr
    assert res.stderr.splitlines()[-1].startswith("build: error: ")


def test_closed_stdout_ends_quietly(tmp_path: Path) -> None:
    """``python -m pipeline show ... | head``: the reader going away is not an error worth a traceback."""
    src = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in DOCS[:3]])
    out = tmp_path / "s"
    assert run_cli("build", src, "--out", out, *QUIET).returncode == 0
    for args in (["show", out, "--doc", "0"], ["stats", out, "--json", "--no-progress"]):
        r, w = os.pipe()
        os.close(r)  # nobody will ever read: the first write fails with EPIPE, deterministically
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pipeline", *map(str, args)],
                cwd=REPO,
                env=ENV,
                stdout=w,
                stderr=subprocess.PIPE,
                text=True,
                timeout=600,
            )
        finally:
            os.close(w)
        for bad in (
            "Traceback",
            "Exception ignored",
            "error",
            "Broken pipe",
        ):  # show's "from FILE" line is fine
            assert bad not in proc.stderr, proc.stderr
        assert proc.returncode == 1


def test_mixed_folder_counts_each_kind(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.jsonl", "sub/b.jsonl.gz", "c.jsonl.zst"):
        (folder / name).write_bytes(b"")
    for name in ("x.txt", "sub/y.txt"):
        (folder / name).write_text("doc")
    res = run_cli("build", folder, "--out", tmp_path / "s", *QUIET)
    one_error_line(res, 1, "(3 jsonl files, 2 *.txt files)", "--source-format jsonl or --source-format text")
