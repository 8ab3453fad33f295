"""The build's resume state: the ``build-state.jsonl`` log, and which finished shards a rerun keeps.

:class:`StateLog` writes the header and kept records atomically when a run starts, then
appends and fsyncs one line per finished shard (O(1) per shard; ``bench/many_shards.py``).
:func:`read_state` ignores a torn last line and still reads an older ``build-state.json``.
:func:`load_resume_state` keeps every recorded shard and lists the damaged ones to rebuild. Line format:
pipeline/FORMAT.md, "Build guarantees".
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TextIO

from pipeline.errors import flag
from pipeline.format import (
    MAGIC,
    MANIFEST_NAME,
    SHARD_SUFFIX,
    SPLITS,
    ShardFormatError,
    open_shard,
    read_header,
)
from pipeline.fsutil import (
    HF_MODEL,
    MODEL_EXPORT,
    RUN_CHECKPOINTS,
    TRAINING_RUN,
    atomic_write_text,
    folder_kind,
)
from pipeline.tools.build_config import BuildError, ShardConfig

STATE_NAME = "build-state.jsonl"
LEGACY_STATE_NAME = "build-state.json"


def state_path(out: Path) -> Path | None:
    """The resume log in ``out`` (the legacy file when only it exists), or None."""
    for name in (STATE_NAME, LEGACY_STATE_NAME):
        if (out / name).is_file():
            return out / name
    return None


def read_state(out: Path) -> dict | None:
    """The state recorded in ``out`` (see the module docstring); None when absent or unreadable."""
    path = state_path(out)
    if path is None:
        return None
    text = path.read_text()
    if path.name == LEGACY_STATE_NAME:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None
    lines = text.split("\n")
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        return None  # written atomically: only a foreign or hand-edited file gets here; start over
    state = {"settings": head.get("settings"), "forced_val": head.get("forced_val"),
             "splits": {s: [] for s in SPLITS}}  # fmt: skip
    for line in lines[1:]:
        if not line:
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            break  # a torn last append: that shard is rebuilt
        state["splits"][item["split"]].append(item["shard"])
        state["forced_val"] = item["forced_val"]
    return state


class StateLog:
    """Appends one line per finished shard to ``out/build-state.jsonl`` (see the module docstring)."""

    def __init__(self, out: Path, state: dict):
        self.out = out
        self.state = state  # shared with the build: records are appended to state["splits"][s] first
        self._f: TextIO | None = None

    def _line(self, split: str, rec: dict) -> str:
        return json.dumps(
            {"split": split, "shard": rec, "forced_val": self.state["forced_val"]}, sort_keys=True
        )

    def start(self) -> None:
        """Write the header and the kept records atomically, before the run writes any shard.

        So a shard file can never be on disk while the folder has no log: an interrupt between a
        shard's rename and its record leaves a log without that record, and the rerun rewrites it.
        """
        # forced_val is not known yet on a fresh run; every record line carries it (read_state takes
        # the last), so the header holds null: the log is byte-identical however often the build resumed
        head = json.dumps({"settings": self.state["settings"], "forced_val": None}, sort_keys=True)
        body = [self._line(s, r) for s in SPLITS for r in self.state["splits"][s]]
        atomic_write_text(self.out / STATE_NAME, "\n".join([head, *body]) + "\n")
        (self.out / LEGACY_STATE_NAME).unlink(missing_ok=True)
        self._f = open(self.out / STATE_NAME, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, split: str) -> None:
        """Record the newest shard of ``split`` (already appended to ``state["splits"][split]``)."""
        if self._f is None:
            self.start()
            assert self._f is not None  # start() opened it
        self._f.write(self._line(split, self.state["splits"][split][-1]) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def build_command(out: Path, settings: dict | None) -> str:
    """The ``python -m pipeline build`` command that made ``out`` (from its recorded settings).

    Rerun, it rebuilds only the damaged or missing shards and rewrites a damaged manifest. Without
    settings (an unreadable folder) the generic form is returned.
    """
    import shlex

    settings = settings or {}
    src = settings.get("source")
    if not isinstance(src, dict):
        return f"python -m pipeline build SOURCE --out {shlex.quote(str(out))} (the command that built it)"
    words = ["python", "-m", "pipeline", "build", str(src.get("name") or src.get("path") or "SOURCE")]
    words += ["--out", str(out)]
    defaults = {f.name: f.default for f in dataclasses.fields(ShardConfig)}
    for key in ("shard_tokens", "val_fraction", "seed"):  # only what differs from the defaults
        if key in settings and settings[key] != defaults[key]:
            words += [flag(key), str(settings[key])]
    fmt = src.get("format")
    if fmt in ("hub", "text"):  # the two that auto-detection may not pick by itself
        words += ["--source-format", fmt]
    if src.get("text_field") not in (None, "text"):
        words += ["--text-field", str(src["text_field"])]
    if src.get("text_glob"):
        words += ["--text-glob", str(src["text_glob"])]
    for opt, key in (("--hf-config", "config"), ("--hf-split", "split"), ("--hf-revision", "revision")):
        if fmt == "hub" and src.get(key) and not (key == "split" and src[key] == "train"):
            words += [opt, str(src[key])]
    return shlex.join(words)


def recorded_settings(out: Path) -> dict | None:
    """The settings a build recorded in ``out`` (manifest first, then the resume log), or None."""
    try:
        raw = json.loads((out / MANIFEST_NAME).read_text())
        if isinstance(raw, dict) and isinstance(raw.get("settings"), dict):
            return raw["settings"]
    except (OSError, ValueError):
        pass
    try:
        state = read_state(out)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state.get("settings") if state and isinstance(state.get("settings"), dict) else None


def repair_hint(out: Path) -> str:
    """The fix for damaged shards or a damaged manifest in ``out``: one clause naming the command."""
    return f"rerun `{build_command(out, recorded_settings(out))}`: it rebuilds only the damaged shards"


# --- resuming: which finished shards a rerun keeps ---


def settings_diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def shard_files(out: Path) -> list[Path]:
    return sorted(p for s in SPLITS for p in out.glob(f"{s}-*{SHARD_SUFFIX}"))


def is_build_folder(out: Path) -> bool:
    """True when ``out`` holds what a build writes: a shard manifest or a resume log with settings."""
    try:
        raw = json.loads((out / MANIFEST_NAME).read_text())
        if isinstance(raw, dict) and "format_version" in raw and isinstance(raw.get("shards"), list):
            return True
    except (OSError, ValueError):
        pass
    try:
        state = read_state(out)
    except (OSError, ValueError, KeyError, TypeError):
        state = None
    if state and isinstance(state.get("settings"), dict):
        return True
    # a build whose manifest and log are both damaged: only build file names, and real shard files
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    shards = shard_files(out)
    if not shards or names - {MANIFEST_NAME, STATE_NAME, LEGACY_STATE_NAME} - {p.name for p in shards}:
        return False
    try:
        with open(shards[0], "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def foreign_folder(out: Path) -> str | None:
    """What ``out`` is when a build must not write into it: a training run, an exported model, or
    (for ``--overwrite``) a folder of files no build wrote. None for a build's own folder or an
    empty one. Other writers are recognised by :func:`pipeline.fsutil.folder_kind` (their markers).
    """
    if not out.is_dir() or is_build_folder(out):
        return None
    kind = folder_kind(out)
    if kind is not None and kind.kind in (TRAINING_RUN, RUN_CHECKPOINTS, MODEL_EXPORT, HF_MODEL):
        return f"is {kind}"
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if not names:
        return None
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"holds {len(names)} entries that no build wrote ({shown})"


def clear_output(out: Path) -> None:
    """Remove what a previous build wrote (only our own files; anything else is left alone)."""
    for p in [out / MANIFEST_NAME, out / STATE_NAME, out / LEGACY_STATE_NAME, *shard_files(out)]:
        p.unlink(missing_ok=True)


def shard_damage(out: Path, rec: dict) -> str | None:
    """What is wrong with the finished shard ``rec`` in ``out`` (None when it is intact).

    Checks the size and the header against the record first (cheap), then hashes the index and the
    payload against the header (one sequential read: flipped bytes are caught too).
    """
    path = out / rec["file"]
    try:
        h = read_header(path)
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ShardFormatError) as e:
        return f"unreadable header ({str(e).removeprefix(f'{path}: ')})"
    got = (h.num_tokens, h.num_docs, h.payload_sha256)
    if got != (rec["num_tokens"], rec["num_docs"], rec["payload_sha256"]):
        return "header does not match its record"
    if size != h.file_size:
        return f"{size:,} bytes, its header requires {h.file_size:,}"
    shard = open_shard(path)
    problems = shard.verify_checksums()
    shard.release()
    return "checksum mismatch" if problems else None


def shard_ok(out: Path, rec: dict) -> bool:
    return shard_damage(out, rec) is None


def load_resume_state(out: Path, settings: dict) -> dict | None:
    """The recorded state, every record kept, plus ``redo[split]``: indices of damaged shards.

    A damaged shard is rebuilt in place from the documents of its recorded position range, and the
    good shards around it stay untouched (pipeline/FORMAT.md, "Build guarantees").
    """
    state = read_state(out)
    if state is None:
        return None
    if state.get("settings") != settings:
        raise BuildError(
            f"{out}: holds an unfinished build with different settings "
            f"({settings_diff(state.get('settings', {}), settings)}). Rerun with the original settings to "
            "resume it, or pass --overwrite to start over."
        )
    state["redo"] = {s: {} for s in SPLITS}  # split -> {record index: what is wrong}
    for s in SPLITS:
        for i, rec in enumerate(state["splits"][s]):
            why = shard_damage(out, rec)
            if why is not None:
                state["redo"][s][i] = why
    return state
