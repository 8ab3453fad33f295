"""The build's resume state: the ``build-state.jsonl`` log, and which finished shards a rerun keeps.

:class:`StateLog` writes the header and kept records atomically when a run starts, then
appends and fsyncs one line per finished shard (O(1) per shard; ``bench/many_shards.py``).
:func:`read_state` ignores a torn last line and still reads an older ``build-state.json``.
:func:`load_resume_state` keeps the prefix of shards whose headers still match. Line format:
pipeline/FORMAT.md, "Build guarantees".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.format import MANIFEST_NAME, SHARD_SUFFIX, SPLITS, ShardFormatError, read_header
from pipeline.fsutil import atomic_write_text
from pipeline.tools.build_config import BuildError

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
        self._f = None

    def _line(self, split: str, rec: dict) -> str:
        return json.dumps(
            {"split": split, "shard": rec, "forced_val": self.state["forced_val"]}, sort_keys=True
        )

    def start(self) -> None:
        """Write the header and the kept records atomically, before the run writes any shard.

        So a shard file can never be on disk while the folder has no log: an interrupt between a
        shard's rename and its record leaves a log without that record, and the rerun rewrites it.
        """
        head = json.dumps({"settings": self.state["settings"], "forced_val": self.state["forced_val"]},
                          sort_keys=True)  # fmt: skip
        body = [self._line(s, r) for s in SPLITS for r in self.state["splits"][s]]
        atomic_write_text(self.out / STATE_NAME, "\n".join([head, *body]) + "\n")
        (self.out / LEGACY_STATE_NAME).unlink(missing_ok=True)
        self._f = open(self.out / STATE_NAME, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, split: str) -> None:
        """Record the newest shard of ``split`` (already appended to ``state["splits"][split]``)."""
        if self._f is None:
            self.start()
        self._f.write(self._line(split, self.state["splits"][split][-1]) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# --- resuming: which finished shards a rerun keeps ---


def settings_diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def shard_files(out: Path) -> list[Path]:
    return sorted(p for s in SPLITS for p in out.glob(f"{s}-*{SHARD_SUFFIX}"))


def clear_output(out: Path) -> None:
    """Remove what a previous build wrote (only our own files; anything else is left alone)."""
    for p in [out / MANIFEST_NAME, out / STATE_NAME, out / LEGACY_STATE_NAME, *shard_files(out)]:
        p.unlink(missing_ok=True)


def shard_ok(out: Path, rec: dict) -> bool:
    try:
        h = read_header(out / rec["file"])
    except (OSError, ShardFormatError):
        return False
    size = (out / rec["file"]).stat().st_size
    return (h.num_tokens, h.num_docs, h.payload_sha256, size) == (
        rec["num_tokens"],
        rec["num_docs"],
        rec["payload_sha256"],
        h.file_size,
    )


def load_resume_state(out: Path, settings: dict) -> dict | None:
    state = read_state(out)
    if state is None:
        return None
    if state.get("settings") != settings:
        raise BuildError(
            f"{out}: holds an unfinished build with different settings "
            f"({settings_diff(state.get('settings', {}), settings)}). Rerun with the original settings to "
            "resume it, or pass --overwrite to start over."
        )
    for split in SPLITS:  # keep the prefix of shards that are still intact
        recs = state["splits"].get(split, [])
        good = []
        for rec in recs:
            if not shard_ok(out, rec):
                break
            good.append(rec)
        state["splits"][split] = good
    return state
