"""``python -m pipeline build``: tokenize a corpus once into checked uint16 shards.

Contract
--------
* :func:`build_shards` reads a :class:`~pipeline.tools.sources.Source` in its deterministic order and
  writes ``DIR/train-00000.bin ...``, ``DIR/val-00000.bin ...`` and, last, ``DIR/manifest.json``.
  Each document is ``[SOT] + encode_ordinary(text) + [EOT]`` (special-token strings in the text
  are ordinary text). Empty / whitespace-only documents are dropped and counted.
* **Splits.** A document's split is a pure function of ``(seed, position)`` (a splitmix64 hash
  of its source position compared with ``val_fraction``), so val membership needs no
  tokenization and does not depend on the worker count. When ``val_fraction > 0`` the first
  non-empty document also goes to val, so small corpora never end with an empty val split.
* **Shards.** Documents of a split fill its current shard in source order; a shard is closed
  when the next document would take it past ``shard_tokens`` (a document never straddles two
  shards; a document longer than ``shard_tokens`` gets a shard of its own).
* **Parallel and deterministic.** A reader process (:mod:`pipeline.tools.readahead`) decompresses and
  frames local sources into a shared-memory ring; worker processes decode (UTF-8, JSON) and
  tokenize whole chunks; the main process only hands out slot numbers and writes shards. Results
  are consumed in submission order, so the output bytes are identical for any ``--workers``. At
  most ``2 * workers + 2`` chunks are in flight, so memory is bounded whatever the corpus size.
* **Resumable.** After every finished shard, one line appended to ``build-state.jsonl``
  (:mod:`pipeline.tools.build_state`: O(1) per shard) records it, with the source position where it
  ended; the log's first line holds the settings. A rerun with
  the same settings keeps finished shards whose headers still match, re-reads the source and
  tokenizes only documents of each split past its last finished shard. ``manifest.json`` is
  written last and marks completion; rerunning on a finished output is a no-op. A different
  source or settings on an existing output is refused unless ``overwrite``.
* **One writer per folder.** The build holds ``DIR/.lock`` (:func:`pipeline.fsutil.folder_lock`)
  from before it touches anything in ``DIR`` until it returns; a second build is refused at once.
  Any failure leaves finished shards and no temp file; a full disk says so and a rerun resumes.
* **Bad records.** A record whose text is not a string (``null`` included) fails the build,
  naming its file, line/row and type, unless ``skip_bad_records``: then it is skipped and counted
  (``counts.docs_skipped_bad``); either way it never becomes ``str(value)``.

Trade-off: processes, not threads. tiktoken releases the GIL while encoding, but JSON parsing,
UTF-8 checks and building results do not, so threads share one interpreter's worth of Python
work; processes pay a pickle of each 2 MiB chunk instead, which is small next to BPE.
``bench/tokenize_throughput.py`` measures both raw designs beside the pipeline (rows ``raw-threads`` and
``raw-proc``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline import tokenizer as tk
from pipeline.errors import ConfigError, UserError, describe_oserror
from pipeline.format import (
    MANIFEST_NAME,
    SHARD_SUFFIX,
    SPLITS,
    Manifest,
    ShardEntry,
    ShardFormatError,
    ShardWriter,
    read_header,
    shard_name,
)
from pipeline.fsutil import LOCK_NAME, TMP_MARKER, folder_lock, remove_stale_temps
from pipeline.tools.build_state import LEGACY_STATE_NAME, STATE_NAME, StateLog, read_state, state_path
from pipeline.tools.readahead import ReadAhead, SlotRef, TokensRef, fetch_tokens, resolve, stash_tokens
from pipeline.tools.sources import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_TEXT_GLOB,
    SOURCE_FORMATS,
    RawChunk,
    Source,
    decode_chunk,
    open_source,
)
from pipeline.tools.views import BuildProgress

BUILD_VERSION = 1  # bump when the document -> bytes mapping changes; part of the settings


class BuildError(UserError):
    """The build cannot proceed (conflicting output, empty corpus, bad record, full disk); the message
    says what to do. Exit status 1 through :func:`pipeline.errors.run_command`."""


@dataclass
class ShardConfig:
    """Settings of one build. CLI flags (``python -m pipeline build``) map 1:1 to these fields.

    Only ``source`` (its identity), ``shard_tokens``, ``val_fraction`` and ``seed`` (plus the
    text field / glob / hub options that select the documents) determine the output bytes;
    ``workers``, ``streaming``, ``chunk_bytes`` and ``overwrite`` do not, and neither does
    ``skip_bad_records``: without it a bad record (a non-string text) fails the build, so every
    finished build holds exactly the string records. Bad values raise :class:`ConfigError` (exit 2).
    """

    source: str
    out: Path
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    shard_tokens: int = 100_000_000
    val_fraction: float = 0.0005
    seed: int = 0
    streaming: bool = False
    overwrite: bool = False
    text_glob: str = DEFAULT_TEXT_GLOB
    text_field: str = "text"
    source_format: str = "auto"
    hf_config: str | None = None
    hf_split: str = "train"
    hf_revision: str | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    skip_bad_records: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.source:
            raise ConfigError("SOURCE is empty: pass a hub dataset name, a file or a folder")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: must be an integer >= 1")
        if self.shard_tokens < 3:
            raise ConfigError(f"--shard-tokens {self.shard_tokens}: must be >= 3 (one tiny document)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed {self.seed}: must be in [0, 2**63)")
        if not [g for g in self.text_glob.split(",") if g.strip()]:
            raise ConfigError(f"--text-glob {self.text_glob!r}: give at least one pattern, e.g. '*.txt'")
        if not self.text_field:
            raise ConfigError("--text-field is empty: name the column/field that holds the text")
        if self.source_format not in SOURCE_FORMATS:
            raise ConfigError(f"--source-format {self.source_format!r}: expected one of {SOURCE_FORMATS}")
        if self.chunk_bytes < 1024:
            raise ConfigError(f"--chunk-bytes {self.chunk_bytes}: must be >= 1024")


# ----------------------------------------------------------------------------- split assignment


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLD  # uint64 arithmetic wraps, which is what the hash wants
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def val_mask(positions: np.ndarray, seed: int, val_fraction: float) -> np.ndarray:
    """Which source positions belong to val: ``u(seed, pos) < val_fraction``, u uniform in [0, 1)."""
    if val_fraction <= 0:
        return np.zeros(len(positions), dtype=bool)
    pos = np.asarray(positions, dtype=np.uint64)
    h = _splitmix64(_splitmix64(np.full(len(pos), seed, dtype=np.uint64)) ^ pos)
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return u < val_fraction


def split_is_val(positions: np.ndarray, seed: int, val_fraction: float, forced_val: int | None) -> np.ndarray:
    """The split rule: :func:`val_mask`, plus the position of the first non-empty document when known."""
    m = val_mask(positions, seed, val_fraction)
    if forced_val is not None:
        m |= positions == forced_val
    return m


@dataclass(frozen=True)
class SkipPlan:
    """What a resumed build need not tokenize: docs of split s at positions < resume[s]."""

    seed: int
    val_fraction: float
    resume_train: int = 0
    resume_val: int = 0
    forced_val: int | None = None

    def is_val(self, positions: np.ndarray) -> np.ndarray:
        return split_is_val(positions, self.seed, self.val_fraction, self.forced_val)


# ----------------------------------------------------------------------------- workers


@dataclass
class EncodedChunk:
    """A worker's result for one :class:`RawChunk` (only non-empty docs are listed)."""

    start: int
    count: int
    input_bytes: int
    positions: np.ndarray  # (k,) int64 source positions of the non-empty docs
    lengths: np.ndarray  # (k,) int64 tokens per doc incl. SOT/EOT; 0 when skipped (resume)
    src_bytes: np.ndarray  # (k,) int64 UTF-8 bytes of each doc's text
    tokens: np.ndarray | TokensRef  # (sum(lengths),) uint16, the docs back to back (or where they are)
    empty: int
    invalid_utf8: int
    bad: int = 0  # records whose text is not a string
    first_bad: str = ""  # the first one, described with its file and line/row


def _worker_init(parent_pid: int) -> None:
    # Ctrl-C is the main process's to handle; workers just stop when it tears the pool down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # After a SIGKILL of the main process nothing closes the task pipe (every worker holds its
    # write end), so workers would wait forever: exit as soon as the parent is gone.
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    tk.get_tokenizer()


def encode_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``[SOT] + encode_ordinary(t) + [EOT]`` for each text: (flat uint16 tokens, int64 lengths).

    Uses ``encode_to_numpy`` (no Python int list) when the text holds no ``"<|"``, i.e. cannot
    contain a special-token string; otherwise ``encode_ordinary``, which never emits special ids.
    """
    enc = tk.get_tokenizer()
    ids = [
        np.asarray(enc.encode_ordinary(t), dtype=np.uint32)
        if "<|" in t
        else enc.encode_to_numpy(t, disallowed_special=())
        for t in texts
    ]
    lengths = np.fromiter((len(a) + 2 for a in ids), dtype=np.int64, count=len(ids))
    if not ids:
        return np.empty(0, dtype=np.uint16), lengths
    flat = np.concatenate(ids)  # (sum(lengths) - 2 * n,) uint32
    if len(flat) and int(flat.max()) > tk.MAX_STORABLE_ID:  # cannot happen with GPT-2; never wrap
        raise ValueError(f"token id {int(flat.max())} does not fit the uint16 shard payload")
    ends = np.cumsum(lengths)
    out = np.empty(int(ends[-1]), dtype=np.uint16)
    text = np.ones(len(out), dtype=bool)  # positions of text tokens; the rest are markers
    text[ends - lengths] = False
    text[ends - 1] = False
    out[ends - lengths] = tk.SOT_ID
    out[ends - 1] = tk.EOT_ID
    out[text] = flat
    return out, lengths


def encode_chunk(item: RawChunk | SlotRef, plan: SkipPlan) -> EncodedChunk:
    """Decode and tokenize one chunk (runs in a worker process)."""
    chunk = resolve(item)  # from the reader's shared-memory ring (pipeline/tools/readahead.py)
    dec = decode_chunk(chunk)
    count = len(dec.texts)  # == chunk.count, or the member count of an xz_tar chunk
    keep = [i for i, t in enumerate(dec.texts) if t and not t.isspace()]  # bad records decode to ""
    positions = np.arange(chunk.start, chunk.start + count, dtype=np.int64)[keep]
    is_val = plan.is_val(positions)
    need = positions >= np.where(is_val, plan.resume_val, plan.resume_train)
    texts = [dec.texts[i] for i in keep]
    src_bytes = np.fromiter(
        (len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts)
    )
    todo = [t for t, n in zip(texts, need.tolist(), strict=True) if n]
    tokens, todo_lengths = encode_texts(todo)
    lengths = np.zeros(len(texts), dtype=np.int64)
    lengths[need] = todo_lengths
    return EncodedChunk(
        chunk.start,
        count,
        chunk.input_bytes,
        positions,
        lengths,
        src_bytes,
        stash_tokens(item, tokens),
        empty=count - len(keep) - len(dec.bad),
        invalid_utf8=sum(dec.invalid_utf8),
        bad=len(dec.bad),
        first_bad=dec.bad[0][1] if dec.bad else "",
    )


# ----------------------------------------------------------------------------- state / settings


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


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def _shard_files(out: Path) -> list[Path]:
    return sorted(p for s in SPLITS for p in out.glob(f"{s}-*{SHARD_SUFFIX}"))


def _clear_output(out: Path) -> None:
    """Remove what a previous build wrote (only our own files; anything else is left alone)."""
    for p in [out / MANIFEST_NAME, out / STATE_NAME, out / LEGACY_STATE_NAME, *_shard_files(out)]:
        p.unlink(missing_ok=True)


def _shard_ok(out: Path, rec: dict) -> bool:
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


def _load_resume_state(out: Path, settings: dict) -> dict | None:
    state = read_state(out)
    if state is None:
        return None
    if state.get("settings") != settings:
        raise BuildError(
            f"{out}: holds an unfinished build with different settings "
            f"({_diff(state.get('settings', {}), settings)}). Rerun with the original settings to "
            "resume it, or pass --overwrite to start over."
        )
    for split in SPLITS:  # keep the prefix of shards that are still intact
        recs = state["splits"].get(split, [])
        good = []
        for rec in recs:
            if not _shard_ok(out, rec):
                break
            good.append(rec)
        state["splits"][split] = good
    return state


# ----------------------------------------------------------------------------- the build


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
            # contiguous runs of taken docs are contiguous in the chunk's token array
            breaks = np.flatnonzero(np.diff(take) != 1) + 1
            for run in np.split(take, breaks):
                a, b = int(offsets[run[0]]), int(offsets[run[-1]] + lengths[run[-1]])
                w.add_documents(tokens[a:b], lengths[run])
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
    created = _make_out(out)
    lock = contextlib.ExitStack()
    try:
        lock.enter_context(folder_lock(out, "build"))
    except OSError as e:  # the folder exists but we may not create files in it
        raise BuildError(f"--out {describe_oserror(e, out)}") from e
    with lock:
        try:
            return _build_locked(cfg, out, src, settings, BuildProgress(enabled=progress), t0)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT) or e.filename is None:
                raise _write_error(e, out) from e
            raise
        finally:
            if created:
                _remove_if_empty(out)


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
    """Remove a folder this build created when nothing but its lock file is in it (a failed build)."""
    with contextlib.suppress(OSError):
        if {p.name for p in out.iterdir()} <= {LOCK_NAME}:
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
    cfg: ShardConfig, out: Path, src: Source, settings: dict, ui: BuildProgress, t0: float
) -> Manifest:
    """:func:`build_shards` once this process holds ``out``'s lock."""
    remove_stale_temps(out)  # only under the lock: no other writer's temp files can be live here

    if (out / MANIFEST_NAME).exists() and not cfg.overwrite:
        try:
            m = Manifest.load(out)
        except (ShardFormatError, OSError) as e:
            raise BuildError(f"{out}: existing manifest is unreadable ({e}); pass --overwrite") from e
        if m.settings != settings:
            raise BuildError(
                f"{out}: already holds shards built with different settings "
                f"({_diff(m.settings, settings)}). Pass --overwrite to replace them, or choose another --out."
            )
        bad = [s.file for s in m.shards if not _shard_ok(out, asdict(s))]
        if not bad:
            ui.message(f"{out}: already built from {m.source} with these settings; nothing to do.")
            return m
        if state_path(out) is None:
            raise BuildError(
                f"{out}: shards {bad} are damaged and there is no {STATE_NAME} to repair "
                "from; pass --overwrite to rebuild"
            )
        ui.message(f"{out}: shards {bad} are damaged; rebuilding from the first damaged shard.")
        (out / MANIFEST_NAME).unlink()
    if cfg.overwrite:
        _clear_output(out)
    state = _load_resume_state(out, settings)
    if state is None:
        if _shard_files(out):
            raise BuildError(
                f"{out}: holds shard files but no manifest or build state, so their origin is unknown. "
                "Pass --overwrite to replace them, or choose another --out."
            )
        state = {"settings": settings, "forced_val": None, "splits": {s: [] for s in SPLITS}}
    resumed = {s: len(state["splits"][s]) for s in SPLITS}

    log = StateLog(out, state)  # one appended line per finished shard: O(1) each, not a rewrite
    writers = {s: _SplitWriter(out, s, cfg.shard_tokens, state["splits"][s], lambda s=s: log.append(s))
               for s in SPLITS}  # fmt: skip
    resume_at = {s: (state["splits"][s][-1]["end_pos"] if state["splits"][s] else 0) for s in SPLITS}
    plan = SkipPlan(cfg.seed, cfg.val_fraction, resume_at["train"], resume_at["val"], state["forced_val"])
    counts = {"docs_read": 0, "docs_dropped_empty": 0, "docs_skipped_bad": 0, "docs_invalid_utf8": 0}
    forced_val = state["forced_val"]

    # the source reader is forked first: before the pool and the progress thread exist
    in_flight = 2 * cfg.workers + 2  # chunks submitted and not yet consumed, at most
    # +1 submitted before the oldest is consumed, +2 the reader may fill ahead
    reader = ReadAhead(src, cfg.chunk_bytes, slots=in_flight + 3)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    pool = ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
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
                is_val = split_is_val(res.positions, cfg.seed, cfg.val_fraction, forced_val)
                offsets = np.cumsum(res.lengths) - res.lengths
                tokens = fetch_tokens(res.tokens)  # a view of the chunk's slot: used before release()
                for split, mask in (("train", ~is_val), ("val", is_val)):
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
    except BaseException:
        for w in writers.values():
            w.abort()
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
    ui.summary(out, manifest, time.perf_counter() - t0, resumed)
    if counts["docs_train"] == 0:
        ui.warn(
            f"--val-fraction {cfg.val_fraction} left the train split of {out} empty (all "
            f"{counts['docs_val']:,} documents are in val); training reads train: lower --val-fraction "
            "or add documents"
        )
    return manifest
