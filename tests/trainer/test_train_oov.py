"""Issue 11 section 3: shards whose payload holds an id >= vocab_size (their headers pass) stop the
trainer with one line naming the shard, the offset and the id, before any id reaches the model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from pipeline.format import HEADER_SIZE, Manifest, read_header
from tests.trainer.conftest import fast, run_trainer


def corrupt_payload(d: Path, every: int = 7) -> tuple[Path, int]:
    """Overwrite every ``every``-th token of the train shard with ``vocab + position % 1000`` in place.

    Only payload bytes change: header, checksum fields and manifest are untouched, so every cheap
    start-up check passes (only ``verify``, which hashes the payload, would notice).
    """
    m = Manifest.load(d)
    entry = m.split("train")[0]
    path = d / entry.file
    n = read_header(path).num_tokens
    mm = np.memmap(path, dtype="<u2", mode="r+", offset=HEADER_SIZE, shape=(n,))
    pos = np.arange(0, n, every)
    mm[pos] = (m.vocab_size + pos % 1000).astype(np.uint16)
    mm.flush()
    del mm
    return path, m.vocab_size


def test_out_of_vocab_ids_exit_1_with_one_line(gen_shards, tmp_path):
    data = Path(shutil.copytree(gen_shards, tmp_path / "shards"))
    path, vocab = corrupt_payload(data)
    proc = run_trainer(fast(data, tmp_path / "run", "--max-steps", "3"))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    m = re.fullmatch(
        r"error: (\S+): token id (\d+) at token offset ([\d,]+) is >= vocab_size (\d+); .*"
        r"`python -m pipeline verify \S+`.*",
        lines[0],
    )
    assert m is not None, lines[0]
    assert m[1] == str(path) and int(m[4]) == vocab
    offset, token = int(m[3].replace(",", "")), int(m[2])
    # the named id is really at the named offset of the named file (read back independently)
    with open(path, "rb") as f:
        f.seek(HEADER_SIZE + 2 * offset)
        assert int.from_bytes(f.read(2), "little") == token >= vocab


def test_a_shard_folder_still_being_built_is_refused_not_read(gen_shards, tmp_path):
    """The trainer never maps shards that a build (e.g. ``--overwrite``) holds: one line, exit 1."""
    from pipeline.fsutil import folder_lock
    from tests.cli import one_error, snapshot

    data = Path(shutil.copytree(gen_shards, tmp_path / "shards"))
    with folder_lock(data, "build"):  # this process plays the build holding the folder
        before = snapshot(data)
        proc = run_trainer(fast(data, tmp_path / "run", "--max-steps", "2"))
        assert snapshot(data) == before
    one_error(proc, 1, str(data), "build in progress")
    assert not (tmp_path / "run" / "checkpoints").exists()
    # once the build has let go, the same command trains
    assert run_trainer(fast(data, tmp_path / "run", "--max-steps", "2")).returncode == 0
