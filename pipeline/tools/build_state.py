"""``build-state.jsonl``: the resume log of a build, one appended line per finished shard.

Contract
--------
Line 1 is ``{"settings": ..., "forced_val": ...}``; every further line is ``{"split": s, "shard":
record, "forced_val": v}`` for one finished shard, in the order the shards were finished
(``record``: the manifest entry's fields plus the shard's ``start_pos``/``end_pos`` in the source).
:func:`read_state` returns ``{"settings", "forced_val", "splits": {split: [record, ...]}}`` (the last
line's ``forced_val`` wins), or ``None`` when there is no log.

Writing (:class:`StateLog`): the first shard of a run writes the header and every record kept from a
previous run atomically (temp file, fsync, rename), so the log appears whole or not at all; each
later shard appends one line and fsyncs it. That is O(1) per shard: a build of thousands of tiny
shards (small ``--shard-tokens``) no longer rewrites a growing file after each one, which made
the build quadratic in the shard count (``bench/many_shards.py``). A torn last line (power loss
in the middle of an append) is ignored on reading; its shard is simply rebuilt, byte-identical.

``build-state.json`` (the whole state rewritten after every shard, as owtgpt did before) is still
read, so an interrupted build of an older version resumes; the next shard replaces it by the log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.format import SPLITS
from pipeline.fsutil import atomic_write_text

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

    def append(self, split: str) -> None:
        """Record the newest shard of ``split`` (already appended to ``state["splits"][split]``)."""
        if self._f is None:  # first shard of this run: the whole log, atomically
            head = json.dumps({"settings": self.state["settings"], "forced_val": self.state["forced_val"]},
                              sort_keys=True)  # fmt: skip
            body = [self._line(s, r) for s in SPLITS for r in self.state["splits"][s]]
            atomic_write_text(self.out / STATE_NAME, "\n".join([head, *body]) + "\n")
            (self.out / LEGACY_STATE_NAME).unlink(missing_ok=True)
            self._f = open(self.out / STATE_NAME, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            return
        self._f.write(self._line(split, self.state["splits"][split][-1]) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


__all__ = ["LEGACY_STATE_NAME", "STATE_NAME", "StateLog", "read_state", "state_path"]
