"""Run ``python -m trainer`` (or ``python -m model``) with a fault injected by monkeypatching.

Fault injection lives here, in the tests, never in the product: this wrapper patches the trainer's
checkpoint writer or optimizer in its own process, then calls the real CLI entry point, so the
test sees exactly what a user would (exit status, stderr, files on disk).

    python -m tests.trainer.faults [--fault KIND:STEP ...] -- trainer|model ARGS...

KINDs (STEP = the optimizer step whose checkpoint or update is hit):

* ``kill-after-ckpt``  SIGKILL right after the checkpoint of STEP is written (a crash between saves).
* ``kill-during-ckpt`` write half of the checkpoint of STEP to its temp file, fsync, SIGKILL.
* ``enospc-ckpt``      the checkpoint file of STEP raises ``OSError(ENOSPC)`` after 4 KiB were
  written (a full disk): the real ``torch.save`` hits it inside its zip writer.
* ``readonly-ckpt``    ``checkpoints/`` is made read-only before the checkpoint of STEP; as root
  (which ignores permissions) the open of its temp file raises ``PermissionError(EACCES)`` too.
* ``sigint-during-ckpt`` two SIGINTs arrive while the checkpoint of STEP is being written (the
  second Ctrl-C a user presses when the save takes long).
* ``kill-at-step``     SIGKILL right after step STEP is logged (metrics.jsonl holds steps the newest
  checkpoint does not: a crash between saves, at a known step).
* ``nan-before-ckpt``  one weight of the payload of STEP's checkpoint is NaN (tests the save path).
* ``nan-update``       update number STEP (1-based ``AdamW.step`` call) writes NaN into a weight.
"""

from __future__ import annotations

import builtins
import errno
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

FULL_AFTER_BYTES = 4096
NAN_TENSOR = "transformer.h.0.attn.c_attn.weight"


def _step_temp(name: str, step: int) -> bool:
    return name.startswith(f".step-{step:08d}.pt.tmp-")


class _FaultyFile:
    """A binary file whose ``write`` calls ``hook(bytes_so_far)`` before writing (the hook may raise)."""

    def __init__(self, f: Any, hook):
        self._f, self._hook, self._n = f, hook, 0

    def write(self, data) -> int:
        self._hook(self._n + len(data))
        self._n += len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _patch_open(step: int, hook_for_file) -> None:
    """Wrap files that ``pipeline.fsutil`` opens for the checkpoint of ``step`` (its temp file)."""
    import pipeline.fsutil as fsutil

    def fake_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 - the caller closes it
        if "w" in mode and _step_temp(Path(path).name, step):
            return _FaultyFile(f, hook_for_file(Path(path)))
        return f

    fsutil.open = fake_open  # shadows the builtin inside pipeline.fsutil only


def install(kind: str, step: int) -> None:
    import torch

    import trainer.checkpoint as tck

    if kind == "kill-after-ckpt":
        real = tck.save_checkpoint

        def save_then_kill(run_dir, s, payload, keep_last):
            path = real(run_dir, s, payload, keep_last)
            if s == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return path

        tck.save_checkpoint = save_then_kill
    elif kind == "kill-at-step":
        import trainer.observe as tobs

        real_step = tobs.Observer.step

        def log_then_kill(self, s, total, rec):
            real_step(self, s, total, rec)
            if s == step:
                os.kill(os.getpid(), signal.SIGKILL)

        tobs.Observer.step = log_then_kill
    elif kind == "kill-during-ckpt":
        import io

        from model.checkpoint import checkpoint_path
        from pipeline.fsutil import atomic_open

        real_write = tck.write_checkpoint

        def half_then_kill(path, obj):
            if Path(path) != checkpoint_path(Path(path).parents[1], step):
                return real_write(path, obj)
            buf = io.BytesIO()
            torch.save(obj, buf)
            data = buf.getvalue()
            with atomic_open(path) as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

        tck.write_checkpoint = half_then_kill
    elif kind == "enospc-ckpt":

        def full(path: Path):
            def hook(n: int) -> None:
                if n > FULL_AFTER_BYTES:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            return hook

        _patch_open(step, full)
    elif kind == "sigint-during-ckpt":

        def interrupt(path: Path):
            sent = []

            def hook(n: int) -> None:
                if n > FULL_AFTER_BYTES and not sent:
                    sent.append(1)
                    os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: "finish, save, stop"
                    os.kill(os.getpid(), signal.SIGINT)  # second: abort now

            return hook

        _patch_open(step, interrupt)
    elif kind == "readonly-ckpt":
        import pipeline.fsutil as fsutil

        real_save = tck.save_checkpoint

        def readonly_then_save(run_dir, s, payload, keep_last):
            if s == step:
                folder = Path(run_dir) / "checkpoints"
                folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
                if os.geteuid() == 0:  # root ignores the mode bits: refuse as the kernel would for a user

                    def fake_open(path, mode="r", *args, **kwargs):
                        if "w" in mode and Path(path).parent == folder:
                            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                        return builtins.open(path, mode, *args, **kwargs)

                    fsutil.open = fake_open
            return real_save(run_dir, s, payload, keep_last)

        tck.save_checkpoint = readonly_then_save
    elif kind == "nan-before-ckpt":
        real_save = tck.save_checkpoint

        def poison_then_save(run_dir, s, payload, keep_last):
            if s == step:
                model = dict(payload["model"])
                model[NAN_TENSOR] = model[NAN_TENSOR].clone().fill_(float("nan"))
                payload = {**payload, "model": model}
            return real_save(run_dir, s, payload, keep_last)

        tck.save_checkpoint = poison_then_save
    elif kind == "nan-update":
        real_step = torch.optim.AdamW.step
        calls = [0]

        def step_then_poison(self, *args, **kwargs):
            out = real_step(self, *args, **kwargs)
            calls[0] += 1
            if calls[0] == step:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("nan"))
            return out

        torch.optim.AdamW.step = step_then_poison
    else:
        raise SystemExit(f"tests.trainer.faults: unknown fault {kind!r}")


def main(argv: list[str]) -> int:
    sep = argv.index("--")
    opts, (cli, *args) = argv[:sep], argv[sep + 1 :]
    while opts:
        flag, spec, *opts = opts
        assert flag == "--fault", flag
        kind, _, step = spec.partition(":")
        install(kind, int(step))
    if cli == "trainer":
        from trainer.__main__ import main as entry
    else:
        from model.tools.cli import main as entry
    return entry(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
