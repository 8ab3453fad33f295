"""``pipeline.fsutil.folder_kind`` (what a folder holds, by each writer's own markers) and
``publish_dir`` (a whole folder replaced atomically): the one rule every command that writes a folder
uses. The marker names are spelled out in fsutil (pipeline imports neither model nor trainer); this
test holds them equal to the writers' own constants.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline import fsutil
from pipeline.fsutil import (
    HF_MODEL,
    IN_USE,
    MODEL_EXPORT,
    OTHER_FILES,
    RUN_CHECKPOINTS,
    SHARD_FOLDER,
    TRAINING_RUN,
    folder_kind,
    folder_lock,
    publish_dir,
    temp_dir_for,
)


def test_marker_names_are_the_writers_own():
    from model.checkpoint import CKPT_DIRNAME, checkpoint_path
    from model.hf import PADDED_ROWS_FILE
    from pipeline.format import MANIFEST_NAME, shard_name
    from pipeline.tools.build_state import LEGACY_STATE_NAME, STATE_NAME
    from trainer.rundir import _EVENTS_GLOB, CONFIG_NAME, METRICS_NAME, PROFILE_DIRNAME

    assert set(fsutil.SHARD_MARKERS) == {MANIFEST_NAME, STATE_NAME, LEGACY_STATE_NAME}
    assert any(Path(shard_name("train", 3)).match(g) for g in fsutil.SHARD_GLOBS)
    assert any(Path(shard_name("val", 0)).match(g) for g in fsutil.SHARD_GLOBS)
    assert set(fsutil.RUN_MARKERS) == {METRICS_NAME, CKPT_DIRNAME, PROFILE_DIRNAME}
    assert fsutil.RUN_GLOBS == (_EVENTS_GLOB,) and fsutil.RUN_CONFIG == CONFIG_NAME
    assert checkpoint_path("r", 7).match(fsutil.CHECKPOINT_GLOB)
    assert PADDED_ROWS_FILE != fsutil.EXPORT_MARKER


def make(root: Path, *names: str, content: str = "x") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_text(content)
    return root


def test_each_writers_folder_is_named_by_its_markers(tmp_path: Path):
    assert folder_kind(tmp_path / "missing") is None
    assert folder_kind(make(tmp_path / "empty")) is None
    assert folder_kind(make(tmp_path / "s", "manifest.json")).kind == SHARD_FOLDER
    assert folder_kind(make(tmp_path / "s2", "train-00000.bin")).kind == SHARD_FOLDER  # a build under way
    assert folder_kind(make(tmp_path / "r", "metrics.jsonl")).kind == TRAINING_RUN
    run = make(tmp_path / "r2", "checkpoints/step-00000004.pt")
    assert folder_kind(run).kind == TRAINING_RUN and folder_kind(run).markers == ("checkpoints/",)
    assert folder_kind(run / "checkpoints").kind == RUN_CHECKPOINTS
    run_cfg = make(tmp_path / "r3", "config.json", content=json.dumps({"config": {"lr": 1}}))
    assert folder_kind(run_cfg).kind == TRAINING_RUN and folder_kind(run_cfg).markers == ("config.json",)
    hf = make(tmp_path / "hf", "config.json", "model.safetensors", content="{}")
    assert folder_kind(hf).kind == HF_MODEL  # a config.json without "config" is a model's, not a run's
    assert folder_kind(make(hf, fsutil.EXPORT_MARKER)).kind == MODEL_EXPORT
    other = folder_kind(make(tmp_path / "u", "config.json", "notes.txt", ".hidden"))
    assert other.kind == OTHER_FILES and other.markers == ("config.json", "notes.txt", ".hidden")
    os.mkfifo(tmp_path / "fifo")
    assert str(folder_kind(tmp_path / "fifo")) == "a FIFO, not a folder"
    assert str(folder_kind(run / "checkpoints" / "step-00000004.pt")) == "a file, not a folder"


def test_a_free_lock_is_empty_and_a_held_one_is_in_use(tmp_path: Path):
    folder = make(tmp_path / "f")
    with folder_lock(folder, "build"):
        assert folder_kind(folder) is None  # this process's own lock does not refuse it
    assert folder_kind(folder) is None  # the lock file a killed writer left behind
    import subprocess
    import sys

    from tests.cli import REPO, child_env

    code = (
        "import sys,time; from pipeline.fsutil import folder_lock\nwith folder_lock(sys.argv[1], 'build'):\n"
    )
    code += "    print('held', flush=True); sys.stdin.read()"
    argv = [sys.executable, "-c", code, str(folder)]
    pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with subprocess.Popen(argv, cwd=REPO, env=child_env(), **pipes) as holder:
        assert holder.stdout.readline() == "held\n"
        kind = folder_kind(folder)
        assert kind.kind == IN_USE and f"pid {holder.pid}" in str(kind)
        holder.stdin.close()


@pytest.mark.parametrize("exchange", [True, False])
def test_publish_dir_replaces_a_folder_whole(tmp_path: Path, monkeypatch, exchange: bool):
    if not exchange:  # a filesystem without renameat2(RENAME_EXCHANGE): the rename-aside fallback
        monkeypatch.setattr(fsutil, "_exchange", lambda a, b: False)
    final = make(tmp_path / "out", "a.txt", "sub/b.txt", content="old")
    tmp = make(temp_dir_for(final), "c.txt", content="new")
    publish_dir(tmp, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left
    assert [p.name for p in final.iterdir()] == ["c.txt"] and (final / "c.txt").read_text() == "new"
    publish_dir(make(temp_dir_for(tmp_path / "new"), "d.txt"), tmp_path / "new")  # to a new name
    assert (tmp_path / "new" / "d.txt").is_file()


def test_stale_temp_dirs_of_dead_writers_are_removed(tmp_path: Path):
    final = tmp_path / "out"
    mine = make(temp_dir_for(final), "x")
    dead = make(tmp_path / f".out{fsutil.TMP_DIR_MARKER}999999999", "y")
    assert fsutil.remove_stale_temp_dirs(final) == [dead]
    assert mine.is_dir() and not dead.exists()
