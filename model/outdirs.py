"""Where ``import-hf`` and ``export-hf`` may write: never into a folder that is not their own.

* :func:`pipeline.fsutil.folder_kind` names what is at ``--out`` by each writer's marker files. A new
  path or an empty folder is written. A training run, a run's checkpoints, a shard folder, a Hugging
  Face model (the source of an import included), the folder of an export's source checkpoint, a
  user's files, or a file/FIFO where a folder belongs are refused, ``--overwrite`` or not.
* ``--overwrite`` replaces only what the same command wrote before, recognised by its own record: an
  export's :data:`~pipeline.fsutil.EXPORT_MARKER` (listing its files; a folder holding anything else
  is refused), an import's ``source`` entry (kind ``huggingface``) inside the checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from model.checkpoint import CKPT_DIRNAME, checkpoint_path, list_checkpoints
from pipeline.errors import UserError
from pipeline.fsutil import (
    EXPORT_MARKER,
    HF_MODEL,
    MODEL_EXPORT,
    RUN_CHECKPOINTS,
    SHARD_FOLDER,
    TMP_MARKER,
    TRAINING_RUN,
    folder_kind,
    path_type,
)


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def export_files(out: Path) -> list[str]:
    """The names an earlier export in ``out`` wrote, from its :data:`EXPORT_MARKER` (refuses a bad one)."""
    marker = out / EXPORT_MARKER
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
        files = doc["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError("'files' is not a list of names")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"--out {out}: its {EXPORT_MARKER} is damaged ({type(e).__name__}: {e}), so what the export "
            "wrote there is unknown; choose another --out (or delete the folder yourself)"
        ) from None
    return files


def check_export_out(out: Path, *, overwrite: bool, source: Path | None = None) -> None:
    """Refuse an ``--out`` that :func:`export_hf` must not write, naming what it is.

    A missing path or an empty folder is written; a folder an earlier export wrote (its
    :data:`EXPORT_MARKER`) is replaced with ``overwrite`` only, and only when it holds nothing else.
    Anything else (a training run, a run's checkpoints, a shard folder, a Hugging Face model, the
    folder of the ``source`` checkpoint, a user's files, a file or FIFO) is refused, ``overwrite`` or not.
    """
    out = Path(out)
    kind = folder_kind(out)
    if kind is None:
        return
    src_dir = None if source is None else (source if source.is_dir() else source.parent)
    if kind.kind == MODEL_EXPORT and not (src_dir is not None and _same_path(out, src_dir)):
        if not overwrite:
            raise UserError(
                f"--out {out} already holds an owtgpt export ({EXPORT_MARKER}); pass --overwrite to replace "
                "it, or choose another --out"
            )
        own = {EXPORT_MARKER, *export_files(out)}
        foreign = sorted(p.name for p in out.iterdir() if p.name not in own)
        if foreign:
            raise UserError(
                f"--out {out} is an owtgpt export but also holds files it did not write "
                f"({', '.join(foreign[:4])}); --overwrite replaces the whole folder, so move them out first "
                "or choose another --out"
            )
        return
    what = str(kind)
    if src_dir is not None and _same_path(out, src_dir) and kind.kind not in (SHARD_FOLDER, TRAINING_RUN):
        what = f"the folder of the source checkpoint {source}"
    raise UserError(
        f"--out {out} is {what}; export-hf writes only a new or empty folder, or replaces an earlier "
        "export with --overwrite: choose another --out"
    )


def is_import(path: Path) -> bool:
    """Whether ``path`` is a checkpoint ``import-hf`` wrote: its own record, ``source.kind`` huggingface."""
    try:
        # mmap: only the small metadata is read, however large the weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False
    source = ckpt.get("source") if isinstance(ckpt, dict) else None
    return isinstance(source, dict) and source.get("kind") == "huggingface"


def import_target(out: Path, source: Path, overwrite: bool) -> Path:
    """The file ``import-hf --out OUT`` writes, after refusing an ``OUT`` that is not its to write.

    ``OUT.pt`` is written as it is, ``OUT`` (a folder) as ``OUT/checkpoints/step-00000000.pt``. A new
    path or an empty folder is written; an earlier import (the checkpoint's ``source`` record) is
    replaced with ``--overwrite``; anything else (a training run or its checkpoints, a shard folder,
    an export or the source folder, a user's files, a FIFO) is refused, ``--overwrite`` or not.
    """

    def refuse(what: str) -> UserError:
        return UserError(
            f"--out {out} is {what}; import-hf writes only a new .pt file or a new or empty folder, or "
            "replaces an earlier import with --overwrite: choose another --out"
        )

    if out.suffix == ".pt":
        ptype = path_type(out)
        parent = folder_kind(out.parent)
        if parent is not None and parent.kind in (SHARD_FOLDER, TRAINING_RUN, RUN_CHECKPOINTS, MODEL_EXPORT,
                                                   HF_MODEL):  # fmt: skip
            raise refuse(f"inside {out.parent}, {parent}")
        if ptype == "missing":
            return out
        if ptype != "file":
            raise refuse(f"a {ptype}, not a checkpoint file")
        if not is_import(out):
            raise refuse("a file import-hf did not write (no huggingface 'source' record in it)")
        if not overwrite:
            raise UserError(f"--out {out} holds an earlier import; pass --overwrite to replace it")
        return out
    target = checkpoint_path(out, 0)
    kind = folder_kind(out)
    if kind is None:
        return target
    earlier_import = (
        kind.kind == TRAINING_RUN
        and sorted(p.name for p in out.iterdir()) == [CKPT_DIRNAME]
        and list_checkpoints(out) == [target]
        and [p.name for p in target.parent.iterdir() if TMP_MARKER not in p.name] == [target.name]
        and is_import(target)
    )
    if not earlier_import:
        raise refuse(f"the source folder, {kind}" if _same_path(out, source) else str(kind))
    if not overwrite:
        raise UserError(f"--out {out} holds an earlier import ({target}); pass --overwrite to replace it")
    return target
