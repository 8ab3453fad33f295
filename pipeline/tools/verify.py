"""Full validation of a shard folder (``python -m pipeline verify``): every problem, not the first.

:func:`verify_dataset` returns a list of :class:`Problem`, each naming its file; ``"error"``: the data
must not be trained on (exit 1), ``"warning"``: harmless (unlisted shard files, stale temp files, a
tokenizer mismatch the sampler refuses anyway). It checks the manifest, every listed shard's header,
size and checksums, every id < ``vocab_size``, the document index, and that every document is
``<|startoftext|> ... <|endoftext|>`` with no special id inside. It goes shard by shard (not through
:class:`ShardDataset`, which stops at the first bad shard), hashing the payload in the same pass that
checks the ids. The full list: ``python -m pipeline verify --help`` and README.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    REPAIR,
    REPAIR_MANIFEST,
    REPAIR_MISSING,
    SHARD_SUFFIX,
    SPLITS,
    Manifest,
    ShardEntry,
    ShardFormatError,
    entry_mismatches,
    open_shard,
    read_header,
)
from pipeline.fsutil import TMP_MARKER
from pipeline.tokenizer import EOT_ID, SOT_ID
from pipeline.tools.build_state import repair_hint

DEFAULT_CHUNK_TOKENS = 1 << 18  # 512 KiB of uint16 per read: the temporaries stay in cache
MAX_EXAMPLES = 5  # documents/positions named per kind of content problem
MARKER_SLACK = 1 << 20  # extra special ids tolerated before a shard is declared garbage

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class Problem:
    """One finding. ``file`` is the path of the shard or manifest it concerns."""

    file: str
    message: str
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, "severity": self.severity, "message": self.message}


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def planned_bytes(directory: str | os.PathLike[str]) -> int:
    """Bytes ``verify_dataset`` will read (the shard files); the progress bar's total."""
    d = Path(directory)
    return sum(p.stat().st_size for p in d.glob(f"*{SHARD_SUFFIX}") if p.is_file())


def verify_dataset(
    directory: str | os.PathLike[str],
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: ProgressFn | None = None,
    check_tokenizer: bool = True,
) -> list[Problem]:
    """Validate everything in a shard folder; returns every problem found (see module docstring).

    ``progress(n)`` is called with the number of bytes just checked.
    """
    d = Path(directory)
    if not d.is_dir():
        return [Problem(str(d), "not a directory; pass the folder `python -m pipeline build` wrote")]
    problems: list[Problem] = []
    manifest = _check_manifest(d, problems, check_tokenizer)
    listed: set[str] = set()
    if manifest is not None:
        for entry in manifest.shards:
            listed.add(entry.file)
            path = d / entry.file
            if not path.is_file():
                problems.append(
                    Problem(
                        str(path),
                        f"listed in {MANIFEST_NAME} ({entry.split} split) but missing; {REPAIR_MISSING}",
                    )
                )
                continue
            problems += verify_shard(
                path, entry=entry, manifest=manifest, chunk_tokens=chunk_tokens, progress=progress
            )
    for path in sorted(d.glob(f"*{SHARD_SUFFIX}")):
        if path.name in listed:
            continue
        if manifest is not None:
            problems.append(
                Problem(
                    str(path),
                    f"shard file not listed in {MANIFEST_NAME}; not part of "
                    "this dataset (left over from another build?)",
                    "warning",
                )
            )
        else:  # no usable manifest: still check each file on its own so the report is complete
            problems += verify_shard(path, chunk_tokens=chunk_tokens, progress=progress)
    for path in sorted(d.iterdir()):
        if path.name.startswith(".") and TMP_MARKER in path.name:
            problems.append(
                Problem(
                    str(path), "temp file left by an interrupted write; the next build removes it", "warning"
                )
            )
    return problems


def with_fix(problems: list[Problem], directory: str | os.PathLike[str]) -> list[Problem]:
    """``problems`` with every error naming the command that repairs it: the exact build command,
    from the folder's recorded settings (what ``python -m pipeline verify`` prints)."""
    hint = repair_hint(Path(directory))
    out = []
    for p in problems:
        msg = p.message
        if p.severity == "error":
            for generic in (REPAIR, REPAIR_MISSING, REPAIR_MANIFEST):
                msg = msg.replace(generic, hint)
            if "python -m pipeline build" not in msg:
                msg = f"{msg}; {hint}"
        out.append(Problem(p.file, msg, p.severity))
    return out


def _check_manifest(d: Path, problems: list[Problem], check_tokenizer: bool) -> Manifest | None:
    """Load the manifest leniently, appending every problem; None when it is unusable."""
    path = d / MANIFEST_NAME

    def err(msg: str, severity: str = "error") -> None:
        problems.append(Problem(str(path), msg, severity))

    if not path.is_file():
        err("missing; this folder is not a finished build (rerun `python -m pipeline build`)")
        return None
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        err(f"not valid JSON ({e}); {REPAIR_MANIFEST}")
        return None
    if not isinstance(raw, dict):
        err(f"not a JSON object; {REPAIR_MANIFEST}")
        return None
    if raw.get("format_version") != FORMAT_VERSION:
        err(
            f"format_version {raw.get('format_version')!r}, this owtgpt reads {FORMAT_VERSION}; "
            f"{REPAIR_MANIFEST}"
        )
        return None
    stored_fp = raw.pop("dataset_fingerprint", "")
    try:
        m = Manifest(**raw)
    except (TypeError, ValueError) as e:
        err(f"malformed ({e}); {REPAIR_MANIFEST}")
        return None
    # one hash-table pass: a manifest may list thousands of shards (small --shard-tokens)
    for name in sorted(f for f, n in Counter(s.file for s in m.shards).items() if n > 1):
        err(f"lists {name} more than once")
    for s in m.shards:
        if s.split not in SPLITS:
            err(f"{s.file} has unknown split {s.split!r} (expected one of {SPLITS})")
    if not stored_fp:
        err("has no dataset_fingerprint")
    elif stored_fp != m.dataset_fingerprint:
        err(
            f"dataset_fingerprint {stored_fp} does not match its shard list ({m.dataset_fingerprint}); "
            "the manifest was edited or is corrupt"
        )
    for problem in m.count_mismatches():  # stats would otherwise print an edited count as a fact
        err(f"{problem}; the manifest was edited or is corrupt")
    if check_tokenizer:
        from pipeline.tokenizer import TokenizerUnavailableError, tokenizer_fingerprint

        try:
            here = tokenizer_fingerprint()
        except TokenizerUnavailableError:
            err(
                "tokenizer fingerprint not compared: the GPT-2 BPE files are unavailable "
                "(set TIKTOKEN_CACHE_DIR)",
                "warning",
            )
        else:
            if here != m.tokenizer_fingerprint:
                err(
                    f"built with tokenizer {m.tokenizer_fingerprint}, this owtgpt uses {here}; the "
                    "sampler will refuse these shards",
                    "warning",
                )
    return m


def verify_shard(
    path: str | os.PathLike[str],
    *,
    entry: ShardEntry | None = None,
    manifest: Manifest | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: ProgressFn | None = None,
) -> list[Problem]:
    """Every problem with one shard file (header, size, manifest entry, checksums, content)."""
    path = Path(path)
    size = path.stat().st_size
    out: list[Problem] = []

    def err(msg: str) -> None:
        out.append(Problem(str(path), msg))

    def done() -> list[Problem]:
        if progress is not None:
            progress(size - advanced)
        return out

    advanced = 0
    try:
        h = read_header(path)
    except ShardFormatError as e:
        err(_strip_path(str(e), path))
        return done()
    if entry is not None and manifest is not None:
        for problem in entry_mismatches(h, entry, manifest):
            err(problem)
    if size != h.file_size:
        err(
            f"file is {size:,} bytes but its header (num_tokens={h.num_tokens:,}, num_docs={h.num_docs:,}) "
            f"requires {h.file_size:,}; it is {'truncated' if size < h.file_size else 'too long'}. "
            f"{REPAIR}"
        )
        return done()
    try:
        shard = open_shard(path)
    except ShardFormatError as e:  # raced with a writer; the checks above normally catch everything
        err(_strip_path(str(e), path))
        return done()
    specials = {} if manifest is None else manifest.special_tokens
    sot = int(specials.get("<|startoftext|>", SOT_ID))
    eot = int(specials.get("<|endoftext|>", EOT_ID))
    vocab = manifest.vocab_size if manifest is not None else h.vocab_size
    first_special = min([sot, eot, *(int(v) for v in specials.values())])

    # ---- one pass over the payload: hash, out-of-vocab ids, positions of special ids
    toks = shard.tokens
    sha = hashlib.sha256()
    limit = 2 * h.num_docs + MARKER_SLACK
    sot_pos: list[np.ndarray] = []
    eot_pos: list[np.ndarray] = []
    n_markers = 0
    overflow = False
    n_oov = 0
    first_oov: tuple[int, int] | None = None
    other_special: dict[int, int] = {}  # id -> count of non-marker specials (padding, unknown, ...)
    first_other: int | None = None
    for s in range(0, len(toks), chunk_tokens):
        chunk = np.ascontiguousarray(toks[s : s + chunk_tokens])
        sha.update(chunk.data)
        pos = np.flatnonzero(chunk >= first_special)
        if len(pos):
            vals = chunk[pos]
            oov = vals >= vocab
            if oov.any():
                n_oov += int(oov.sum())
                if first_oov is None:
                    k = int(np.argmax(oov))
                    first_oov = (s + int(pos[k]), int(vals[k]))
            is_sot, is_eot = vals == sot, vals == eot
            other = ~(is_sot | is_eot | oov)
            if other.any():
                ids, cnt = np.unique(vals[other], return_counts=True)
                for i, c in zip(ids.tolist(), cnt.tolist(), strict=True):
                    other_special[i] = other_special.get(i, 0) + c
                if first_other is None:
                    first_other = s + int(pos[int(np.argmax(other))])
            n_markers += int(is_sot.sum() + is_eot.sum())
            if n_markers > limit:
                overflow = True
                sot_pos.clear()
                eot_pos.clear()
            elif not overflow:
                sot_pos.append(pos[is_sot].astype(np.int64) + s)
                eot_pos.append(pos[is_eot].astype(np.int64) + s)
        shard.drop_pages(s, s + chunk_tokens)  # RSS stays at one chunk (the data stays in page cache)
        advanced += chunk.nbytes
        if progress is not None:
            progress(chunk.nbytes)
    if sha.hexdigest() != h.payload_sha256:
        err("payload checksum mismatch: the token bytes are corrupt (sha256 differs from the header)")
    index = np.asarray(shard.doc_offsets, dtype=np.uint64)
    if hashlib.sha256(index.tobytes()).hexdigest() != h.index_sha256:
        err("document index checksum mismatch: the index is corrupt")

    # ---- the document index
    idx = index.astype(np.int64)  # offsets < 2^63 in any shard that fits on a disk
    lengths = np.diff(idx)
    index_ok = True
    if idx[0] != 0:
        err(f"document index starts at {idx[0]}, expected 0")
        index_ok = False
    if idx[-1] != h.num_tokens:
        err(f"document index ends at {idx[-1]:,}, expected num_tokens={h.num_tokens:,}")
        index_ok = False
    bad = np.flatnonzero(lengths < 0)
    if len(bad):
        err(f"document index decreases at {len(bad):,} documents, e.g. {_examples(bad)}")
        index_ok = False
    short = np.flatnonzero((lengths >= 0) & (lengths < 2))
    if len(short):
        err(f"{len(short):,} documents shorter than their two markers, e.g. docs {_examples(short)}")

    # ---- content
    if n_oov:
        p, v = first_oov  # type: ignore[misc]
        err(
            f"{n_oov:,} token ids >= vocab_size {vocab}, first id {v} at token {p:,}"
            f"{_doc_of(p, idx) if index_ok else ''}; the shard is corrupt or from another tokenizer"
        )
    if other_special:
        names = {int(v): k for k, v in specials.items()}
        desc = ", ".join(f"{names.get(i, i)} x{c:,}" for i, c in sorted(other_special.items()))
        err(
            f"special ids that text never encodes to occur inside documents ({desc}), first at token "
            f"{first_other:,}{_doc_of(first_other, idx) if index_ok else ''}"
        )
    if overflow:
        err(
            f"{n_markers:,}+ <|startoftext|>/<|endoftext|> ids for {h.num_docs:,} documents: the "
            "payload is not a sequence of documents"
        )
    elif index_ok:
        nonempty = np.flatnonzero(lengths > 0)
        starts, ends = idx[:-1][nonempty], idx[1:][nonempty] - 1
        sots = np.concatenate(sot_pos) if sot_pos else np.zeros(0, np.int64)
        eots = np.concatenate(eot_pos) if eot_pos else np.zeros(0, np.int64)
        for what, found, where in (
            ("do not start with <|startoftext|>", starts, sots),
            ("do not end with <|endoftext|>", ends, eots),
        ):
            miss = np.setdiff1d(found, where, assume_unique=True)
            if len(miss):
                docs = np.searchsorted(idx, miss, side="right") - 1
                err(f"{len(miss):,} documents {what}, e.g. docs {_examples(docs)}")
        for name, found, edge in (("<|startoftext|>", sots, starts), ("<|endoftext|>", eots, ends)):
            inner = np.setdiff1d(found, edge, assume_unique=True)
            if len(inner):
                docs = np.searchsorted(idx, inner, side="right") - 1
                err(
                    f"{len(inner):,} {name} ids inside documents (boundaries are corrupt), e.g. at "
                    f"tokens {_examples(inner)} in docs {_examples(np.unique(docs))}"
                )
    return done()


def _strip_path(msg: str, path: Path) -> str:
    """ShardFormatError messages start with the path; Problem already carries it."""
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


def _examples(a: np.ndarray) -> str:
    head = ", ".join(f"{int(x):,}" for x in a[:MAX_EXAMPLES])
    return head + (", ..." if len(a) > MAX_EXAMPLES else "")


def _doc_of(pos: int | None, idx: np.ndarray) -> str:
    if pos is None:
        return ""
    return f" (doc {int(np.searchsorted(idx, pos, side='right')) - 1:,})"


__all__ = ["Problem", "errors", "planned_bytes", "verify_dataset", "verify_shard", "with_fix"]
