"""``python -m pipeline build``: tokenize a corpus once into checked uint16 shards.

:func:`build_shards` reads a :class:`~pipeline.tools.sources.Source` in its order, tokenizes chunks in
worker processes (:mod:`~pipeline.tools.build_workers`), and writes ``DIR/{train,val}-NNNNN.bin`` in
source order, then ``DIR/manifest.json`` last. It holds ``DIR/.lock`` throughout, records each finished
shard in the resume log (:mod:`~pipeline.tools.build_state`), and leaves no temp file on failure.
What the build guarantees (deterministic for any ``--workers``, resumable, one writer, idempotent):
pipeline/FORMAT.md, "Build guarantees". Processes, not threads: JSON parsing and UTF-8 checks hold the
GIL (``bench/tokenize_throughput.py`` measures both designs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline import tokenizer as tk
from pipeline.errors import describe_oserror
from pipeline.format import (
    MANIFEST_NAME,
    SPLITS,
    Manifest,
    ShardEntry,
    ShardFormatError,
    ShardWriter,
    shard_name,
)
from pipeline.fsutil import LOCK_NAME, TMP_MARKER, folder_lock, fsync_dir, remove_stale_temps
from pipeline.tools.build_config import BuildError, ShardConfig
from pipeline.tools.build_state import (
    STATE_NAME,
    StateLog,
    clear_output,
    foreign_folder,
    is_build_folder,
    load_resume_state,
    read_state,
    settings_diff,
    shard_files,
    shard_ok,
    state_path,
)
from pipeline.tools.build_workers import (
    EncodedChunk,
    SkipPlan,
    encode_chunk,
    split_is_val,
    val_mask,
    worker_init,
)
from pipeline.tools.readahead import ReadAhead, fetch_tokens
from pipeline.tools.sources import Source, open_source
from pipeline.tools.views import BuildProgress

__all__ = [
    "BUILD_VERSION",
    "STATE_NAME",
    "BuildError",
    "ShardConfig",
    "build_settings",
    "build_shards",
    "val_mask",
]

# bump when the document -> bytes mapping changes; part of the settings. 2: the split is keyed by each
# document's text, not its source position (the same documents split alike in every container)
BUILD_VERSION = 2
STAGE_NAME = ".overwrite"  # where --overwrite builds the new shards before swapping them in


def build_settings(cfg: ShardConfig, src: Source) -> dict:
    """Everything the output bytes depend on (compared on rerun; stored in the manifest)."""
    return json.loads(
        json.dumps(
            {
                "build_version": BUILD_VERSION,
                "source": src.identity(),
                "shard_tokens": cfg.shard_tokens,
                "val_fraction": cfg.val_fraction,
                "seed": cfg.seed,
                "tokenizer_fingerprint": tk.tokenizer_fingerprint(),
                "vocab_size": tk.VOCAB_SIZE,
            }
        )
    )


# ----------------------------------------------------------------------------- the build


def _add_runs(w: ShardWriter, lengths: np.ndarray, offsets: np.ndarray, tokens: np.ndarray, take) -> None:
    """Append docs ``take`` (ascending chunk indices) to ``w``."""
    # contiguous runs of taken docs are contiguous in the chunk's token array
    breaks = np.flatnonzero(np.diff(take) != 1) + 1
    for run in np.split(take, breaks):
        a, b = int(offsets[run[0]]), int(offsets[run[-1]] + lengths[run[-1]])
        w.add_documents(tokens[a:b], lengths[run])


class _Repairs:
    """Rebuilds damaged finished shards in place from the documents of their recorded position range.

    Each is rewritten (temp file, rename) once it holds its recorded number of documents, and must
    come out byte-identical to its record; the good shards around it are never touched.
    """

    def __init__(self, out: Path, state: dict):
        self.out = out
        self.todo = {(s, i): state["splits"][s][i] for s in SPLITS for i in state["redo"][s]}
        self.writers: dict[tuple[str, int], ShardWriter] = {}

    def ranges(self, split: str) -> list[tuple[int, int, int]]:
        return [(i, r["start_pos"], r["end_pos"]) for (s, i), r in self.todo.items() if s == split]

    def add(self, split: str, i: int, lengths, offsets, tokens, take) -> None:
        rec = self.todo[(split, i)]
        w = self.writers.get((split, i))
        if w is None:
            w = self.writers[(split, i)] = ShardWriter(
                self.out / rec["file"],
                vocab_size=tk.VOCAB_SIZE,
                tokenizer_fingerprint=tk.tokenizer_fingerprint(),
            )
        _add_runs(w, lengths, offsets, tokens, take)
        if w.num_docs >= rec["num_docs"]:
            h = w.finish()
            del self.writers[(split, i)], self.todo[(split, i)]
            if (h.num_tokens, h.num_docs, h.payload_sha256) != (
                rec["num_tokens"],
                rec["num_docs"],
                rec["payload_sha256"],
            ):
                raise BuildError(
                    f"{w.path}: rebuilt from the source, it differs from the shard the build recorded (the "
                    "source changed since); pass --overwrite to rebuild the whole folder"
                )

    def check_done(self) -> None:
        if self.todo:
            names = ", ".join(r["file"] for r in self.todo.values())
            raise BuildError(
                f"{self.out}: the source no longer holds the documents of {names} (it changed since the "
                "build); pass --overwrite to rebuild the whole folder"
            )

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()
        self.writers.clear()


class _SplitWriter:
    """Rolls one split's documents into consecutive shards of at most ``shard_tokens``."""

    def __init__(self, out: Path, split: str, shard_tokens: int, done: list[dict], on_finish):
        self.out, self.split, self.shard_tokens = out, split, shard_tokens
        self.done = done  # finished shard records (ShardEntry fields + start/end positions)
        self.on_finish = on_finish
        self.writer: ShardWriter | None = None
        self.start_pos = self.end_pos = 0
        self.src_bytes = 0

    def add(
        self,
        positions: np.ndarray,
        lengths: np.ndarray,
        src_bytes: np.ndarray,
        offsets: np.ndarray,
        tokens: np.ndarray,
        idx: np.ndarray,
    ) -> None:
        """Append docs ``idx`` (indices into the chunk arrays, ascending) in order."""
        i = 0
        while i < len(idx):
            w = self._writer(int(positions[idx[i]]))
            room = self.shard_tokens - w.num_tokens
            rest = idx[i:]
            k = int(np.searchsorted(np.cumsum(lengths[rest]), room, side="right"))
            if k == 0:
                if w.num_docs:
                    self.finish()
                    continue
                k = 1  # a single document longer than a shard: it gets a shard of its own
            take = rest[:k]
            _add_runs(w, lengths, offsets, tokens, take)
            self.src_bytes += int(src_bytes[take].sum())
            self.end_pos = int(positions[take[-1]]) + 1
            i += k
            if i < len(idx) or w.num_tokens >= self.shard_tokens:
                self.finish()

    def _writer(self, pos: int) -> ShardWriter:
        if self.writer is None:
            name = shard_name(self.split, len(self.done))
            self.writer = ShardWriter(
                self.out / name, vocab_size=tk.VOCAB_SIZE, tokenizer_fingerprint=tk.tokenizer_fingerprint()
            )
            self.start_pos, self.src_bytes = pos, 0
        return self.writer

    def finish(self) -> None:
        w = self.writer
        if w is None:
            return
        if w.num_docs == 0:
            self.abort()
            return
        h = w.finish()  # self.writer stays set until here, so an interrupt can still abort() it
        self.writer = None
        entry = ShardEntry(
            w.path.name, self.split, h.num_tokens, h.num_docs, h.payload_sha256, self.src_bytes
        )
        self.done.append({**asdict(entry), "start_pos": self.start_pos, "end_pos": self.end_pos})
        self.on_finish()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def build_shards(cfg: ShardConfig, *, progress: bool = True) -> Manifest:
    """Build (or resume, or confirm) the shard folder ``cfg.out`` from ``cfg.source``.

    Nothing in ``cfg.out`` is touched before this process holds the folder's lock
    (:func:`pipeline.fsutil.folder_lock`); a folder this call created is removed again when the
    build fails before writing anything into it.
    """
    t0 = time.perf_counter()
    tk.check_storable(tk.VOCAB_SIZE)
    tk.get_tokenizer()  # fail early (TIKTOKEN_CACHE_DIR hint); forked workers inherit it
    out = cfg.out.resolve()
    src = open_source(
        cfg.source,
        source_format=cfg.source_format,
        text_glob=cfg.text_glob,
        text_field=cfg.text_field,
        hf_config=cfg.hf_config,
        hf_split=cfg.hf_split,
        hf_revision=cfg.hf_revision,
        streaming=cfg.streaming,
        exclude=[out],
    )
    settings = build_settings(cfg, src)
    foreign = foreign_folder(out)  # before anything (even the lock file) is written into it
    if foreign is not None and (cfg.overwrite or not foreign.startswith("holds")):
        raise BuildError(
            f"--out {out}: {foreign}; "
            + ("--overwrite replaces only a folder that an earlier build wrote" if cfg.overwrite
               else "a build does not write shards into it")
            + "; choose another --out (a new or empty folder)"
        )  # fmt: skip
    created = _make_out(out)
    lock = contextlib.ExitStack()
    try:
        lock.enter_context(folder_lock(out, "build"))
    except OSError as e:  # the folder exists but we may not create files in it
        raise BuildError(f"--out {describe_oserror(e, out)}") from e
    with lock:
        try:
            ui = BuildProgress(enabled=progress)
            if cfg.overwrite and is_build_folder(out):
                return _overwrite_staged(cfg, out, src, settings, ui, t0)
            return _build_locked(cfg, out, src, settings, ui, t0)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT) or e.filename is None:
                raise _write_error(e, out) from e
            raise
        finally:
            if created:
                _remove_if_empty(out)


def _overwrite_staged(
    cfg: ShardConfig, out: Path, src: Source, settings: dict, ui: BuildProgress, t0: float
) -> Manifest:
    """``--overwrite`` of an earlier build: build the new one in ``out/.overwrite`` beside the old
    one, then swap it in (old manifest removed first, new manifest renamed in last). The old build
    stays whole until the new one is complete; an interrupted overwrite resumes when rerun.
    """
    stage = out / STAGE_NAME
    if stage.exists() and (read_state(stage) or {}).get("settings") != settings:
        shutil.rmtree(stage)  # a staged build of other settings: it cannot be resumed
    stage.mkdir(exist_ok=True)
    remove_stale_temps(out)
    m = _build_locked(dataclasses.replace(cfg, overwrite=False), stage, src, settings, ui, t0, shown=out)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # from here the folder reads as unfinished
    clear_output(out)
    for p in [*shard_files(stage), stage / STATE_NAME]:
        os.replace(p, out / p.name)
    os.replace(stage / MANIFEST_NAME, out / MANIFEST_NAME)  # last: the new build is finished
    fsync_dir(out)
    shutil.rmtree(stage, ignore_errors=True)
    return m


def _make_out(out: Path) -> bool:
    """Create ``--out`` if missing; True when this call created it."""
    if out.exists() and not out.is_dir():
        raise BuildError(
            f"--out {out}: is a file, not a folder; pass a folder path (it is created if missing)"
        )
    if out.is_dir():
        return False
    try:
        out.mkdir(parents=True)
    except FileExistsError:  # another build created it a moment ago: it is not ours to remove
        return False
    except OSError as e:
        raise BuildError(f"--out {describe_oserror(e, out)}") from e
    return True


def _remove_if_empty(out: Path) -> None:
    """Remove a folder this build created when it holds no shard (a failed build): only its lock
    file and a resume log that records nothing are in it."""
    with contextlib.suppress(OSError):
        if {p.name for p in out.iterdir()} <= {LOCK_NAME, STATE_NAME}:
            (out / STATE_NAME).unlink(missing_ok=True)
            (out / LOCK_NAME).unlink(missing_ok=True)
            out.rmdir()


def _write_error(e: OSError, out: Path) -> BuildError:
    """A write into ``out`` failed: one line naming the folder (and, for a full disk, how to resume)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on the device" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return BuildError(
            f"{out}: {what} (the filesystem holding this folder is full); finished shards are "
            "kept: free space, then rerun the same command to resume"
        )
    return BuildError(describe_oserror(e, out))


def _build_locked(
    cfg: ShardConfig,
    out: Path,
    src: Source,
    settings: dict,
    ui: BuildProgress,
    t0: float,
    shown: Path | None = None,
) -> Manifest:
    """:func:`build_shards` once this process holds ``out``'s lock."""
    remove_stale_temps(out)  # only under the lock: no other writer's temp files can be live here

    m: Manifest | None = None
    if (out / MANIFEST_NAME).exists() and not cfg.overwrite:
        try:
            m = Manifest.load(out)
        except (ShardFormatError, OSError) as e:
            why = str(e).split("; ")[0].removeprefix(f"{out / MANIFEST_NAME}: ")  # without its own advice
            if (read_state(out) or {}).get("settings") != settings:
                raise BuildError(
                    f"{out / MANIFEST_NAME}: unreadable ({why}) and there is no {STATE_NAME} with these "
                    "settings to rewrite it from; pass --overwrite to rebuild the folder"
                ) from e
            ui.message(f"{out}: {MANIFEST_NAME} is damaged ({why}); rewriting it from {STATE_NAME}.")
        if m is not None and m.settings != settings:
            raise BuildError(
                f"{out}: already holds shards built with different settings "
                f"({settings_diff(m.settings, settings)}). "
                "Pass --overwrite to replace them, or choose another --out."
            )
        if m is not None and state_path(out) is None:  # nothing records where each shard's documents are
            bad = [s.file for s in m.shards if not shard_ok(out, asdict(s))]
            if not bad:
                ui.message(f"{out}: already built from {m.source} with these settings; nothing to do.")
                return m
            raise BuildError(
                f"{out}: shards {bad} are damaged and there is no {STATE_NAME} to repair "
                "from; pass --overwrite to rebuild"
            )
    if cfg.overwrite:
        clear_output(out)
    state = load_resume_state(out, settings)  # checks every recorded shard (size, header, checksums)
    if state is None:
        if shard_files(out):
            raise BuildError(
                f"{out}: holds shard files but no manifest or build state, so their origin is unknown. "
                "Pass --overwrite to replace them, or choose another --out."
            )
        state = {"settings": settings, "forced_val": None, "splits": {s: [] for s in SPLITS},
                 "redo": {s: {} for s in SPLITS}}  # fmt: skip
    damaged = [
        f"{state['splits'][s][i]['file']} ({why})" for s in SPLITS for i, why in state["redo"][s].items()
    ]
    if (
        m is not None
        and not damaged
        and [asdict(e) for e in m.shards]
        == [{k: r[k] for k in ShardEntry.__dataclass_fields__} for s in SPLITS for r in state["splits"][s]]
    ):
        ui.message(f"{out}: already built from {m.source} with these settings; nothing to do.")
        return m
    if damaged:
        ui.message(f"{out}: damaged shards {', '.join(damaged)}; rebuilding only those.")
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # rewritten last, once every shard is whole again
    resumed = {s: len(state["splits"][s]) - len(state["redo"][s]) for s in SPLITS}  # intact shards kept

    log = StateLog(out, state)  # one appended line per finished shard: O(1) each, not a rewrite
    log.start()  # before any shard: a shard file never sits in the folder without a log
    writers = {s: _SplitWriter(out, s, cfg.shard_tokens, state["splits"][s], lambda s=s: log.append(s))
               for s in SPLITS}  # fmt: skip
    resume_at = {s: (state["splits"][s][-1]["end_pos"] if state["splits"][s] else 0) for s in SPLITS}
    repairs = _Repairs(out, state)
    redo = {sp: tuple((lo, hi) for _, lo, hi in repairs.ranges(sp)) for sp in SPLITS}
    plan = SkipPlan(
        cfg.seed, cfg.val_fraction, resume_at["train"], resume_at["val"], state["forced_val"],
        redo["train"], redo["val"],
    )  # fmt: skip
    counts = {"docs_read": 0, "docs_dropped_empty": 0, "docs_skipped_bad": 0, "docs_invalid_utf8": 0}
    forced_val = state["forced_val"]

    # the source reader is forked first: before the pool and the progress thread exist
    in_flight = 2 * cfg.workers + 2  # chunks submitted and not yet consumed, at most
    # +1 submitted before the oldest is consumed, +2 the reader may fill ahead
    reader = ReadAhead(src, cfg.chunk_bytes, slots=in_flight + 3)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    pool = ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=worker_init, initargs=(os.getpid(),))
    try:
        pool.submit(int, 0).result()  # start workers now, before the progress thread exists
        ui.start(src, resumed)
        pending: deque[Future] = deque()

        def consume(res: EncodedChunk) -> None:
            nonlocal forced_val
            if res.bad and not cfg.skip_bad_records:
                raise BuildError(
                    f"{res.first_bad}; fix the record, or pass --skip-bad-records to skip "
                    "such records (they are counted in the manifest)"
                )
            counts["docs_read"] += res.count
            counts["docs_skipped_bad"] += res.bad
            counts["docs_dropped_empty"] += res.empty
            counts["docs_invalid_utf8"] += res.invalid_utf8
            if len(res.positions):
                if forced_val is None and cfg.val_fraction > 0:
                    forced_val = state["forced_val"] = int(res.positions[0])
                is_val = split_is_val(res.positions, res.keyed_val, forced_val)
                offsets = np.cumsum(res.lengths) - res.lengths
                tokens = fetch_tokens(res.tokens)  # a view of the chunk's slot: used before release()
                for split, mask in (("train", ~is_val), ("val", is_val)):
                    for i, lo, hi in repairs.ranges(split):
                        take = np.flatnonzero(mask & (res.positions >= lo) & (res.positions < hi))
                        if len(take):
                            repairs.add(split, i, res.lengths, offsets, tokens, take)
                    idx = np.flatnonzero(mask & (res.positions >= resume_at[split]))
                    writers[split].add(res.positions, res.lengths, res.src_bytes, offsets, tokens, idx)
            ui.advance(res.count, int(res.lengths.sum()), int(res.src_bytes.sum()), res.input_bytes)
            reader.release()  # the chunk's slot in the reader's ring may be reused

        for chunk in reader:
            pending.append(pool.submit(encode_chunk, chunk, plan))
            while len(pending) > in_flight:
                consume(pending.popleft().result())
        while pending:
            consume(pending.popleft().result())
        for w in writers.values():
            w.finish()
        repairs.check_done()
    except BaseException:
        for w in writers.values():
            w.abort()
        repairs.abort()
        for tmp in out.glob(f".*{TMP_MARKER}{os.getpid()}"):  # a writer interrupted while opening
            tmp.unlink(missing_ok=True)
        # wait for the workers (each finishes at most one chunk): they hold a copy of the folder lock
        pool.shutdown(wait=True, cancel_futures=True)
        reader.close()
        log.close()
        ui.stop()
        raise
    pool.shutdown()
    reader.close()
    log.close()
    ui.stop()

    recs = [r for s in SPLITS for r in state["splits"][s]]
    if not recs:
        raise BuildError(
            f"{src.describe()}: no non-empty documents ({counts['docs_read']} records read, "
            f"{counts['docs_dropped_empty']} empty, {counts['docs_skipped_bad']} bad); nothing to write"
        )
    entries = [ShardEntry(**{k: r[k] for k in ShardEntry.__dataclass_fields__}) for r in recs]
    for s in SPLITS:
        ss = [e for e in entries if e.split == s]
        counts[f"docs_{s}"] = sum(e.num_docs for e in ss)
        counts[f"tokens_{s}"] = sum(e.num_tokens for e in ss)
        counts[f"shards_{s}"] = len(ss)
    counts["docs_written"] = counts["docs_train"] + counts["docs_val"]
    counts["source_bytes"] = sum(e.source_bytes for e in entries)
    manifest = Manifest(
        tokenizer_fingerprint=tk.tokenizer_fingerprint(),
        vocab_size=tk.VOCAB_SIZE,
        special_tokens=dict(tk.SPECIAL_TOKENS),
        source=src.describe(),
        settings=settings,
        shards=entries,
        counts=counts,
    )
    manifest.save(out)  # last: its presence marks a finished build (build-state.jsonl stays for repair)
    ui.summary(shown or out, manifest, time.perf_counter() - t0, resumed)
    if counts["docs_train"] == 0:
        ui.warn(
            f"--val-fraction {cfg.val_fraction} left the train split of {out} empty (all "
            f"{counts['docs_val']:,} documents are in val); training reads train: lower --val-fraction "
            "or add documents"
        )
    return manifest
