"""``python -m trainer.launch``: torchrun, with Ctrl-C and SIGTERM ending a run the way they end one process.

Takes torchrun's arguments unchanged (``python -m trainer.launch --standalone --nproc_per_node=8 -m trainer
...``; ``make train`` uses it). torchrun's own agent turns SIGINT/SIGTERM into an exception: it signals
the ranks, SIGKILLs them after ``--shutdown-timeout`` (30 s: a CPU step or a big checkpoint is longer),
and exits 1 with a traceback. Here the agent instead passes every SIGINT and SIGTERM on to each rank
(torchrun starts them in sessions of their own, so a terminal's Ctrl-C reaches only the agent) and
keeps waiting for them. So, as for ``python -m trainer`` alone:

* the first Ctrl-C (or SIGTERM): every rank finishes the step, rank 0 saves a checkpoint, and the
  launcher exits 0 with the ranks;
* a second Ctrl-C: the ranks abort without saving, exit 130;
* a third: the ranks still alive are SIGKILLed (a rank stuck in a collective or the kernel).

A rank that fails ends the job with that rank's exit status; its own one-line error is the message
(no torchrun failure report). SIGHUP and SIGQUIT keep torchrun's handling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from pipeline.errors import EXIT_INTERRUPTED

FORWARDED = (signal.SIGINT, signal.SIGTERM)


def child_pids(parent: int | None = None) -> list[int]:
    """The pids whose parent is ``parent`` (this process by default), read from ``/proc``."""
    parent = os.getpid() if parent is None else parent
    found: list[int] = []
    if not os.path.isdir("/proc"):  # not Linux: no forwarding, torchrun's own shutdown (Forwarder.handle)
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # fields after the command name, which is in parentheses and may hold spaces: state, ppid, ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


class Forwarder:
    """The agent's SIGINT/SIGTERM handler: pass each one on to the ranks (this process's children)."""

    def __init__(self) -> None:
        self.interrupts = 0  # SIGINTs received
        self.received: list[int] = []

    def handle(self, signum: int, frame) -> None:
        self.received.append(signum)
        pids = child_pids()
        if not pids:  # no rank started yet (or all gone): stop the agent as torchrun would
            from torch.distributed.elastic.multiprocessing.api import SignalException

            raised = signal.Signals(signum)
            raise SignalException(f"{raised.name} before the ranks started", raised)
        if signum == signal.SIGINT:
            self.interrupts += 1
        sig = signal.SIGKILL if self.interrupts >= 3 else signum
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                os.kill(pid, sig)

    def install(self) -> None:
        for s in FORWARDED:
            signal.signal(s, self.handle)


def _first(failures):
    """The failure that tells the story: a rank's own error (exit 1, 2) before an interruption (130),
    before a kill by a signal; the earliest of those."""
    return min(
        failures.values(),
        key=lambda f: (f.exitcode <= 0, f.exitcode == EXIT_INTERRUPTED, f.timestamp),
    )


def _exit_code(failures) -> int:
    """The job's exit status from torchrun's per-rank failures: that rank's own code, or 128+signal."""
    first = _first(failures)
    return first.exitcode if first.exitcode > 0 else 128 - first.exitcode


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parser = get_args_parser()
    parser.prog = "python -m trainer.launch"
    parser.description = (
        "torchrun, with the same arguments, whose agent passes Ctrl-C and SIGTERM on to every rank and "
        "waits for them: each finishes its step, rank 0 saves a checkpoint, all exit 0 (a second Ctrl-C "
        "aborts, a third kills). Example: python -m trainer.launch --standalone --nproc_per_node=8 "
        "-m trainer --data shards --preset gpt2 --out runs/gpt2"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not hasattr(args, "signals_to_handle"):
        print(
            "error: this torch's torchrun has no --signals-to-handle; upgrade torch (make setup) or run "
            "torchrun directly (Ctrl-C then kills the ranks after --shutdown-timeout)",
            file=sys.stderr,
        )
        return 2
    # torchrun's agent keeps SIGHUP/SIGQUIT; SIGINT/SIGTERM are the Forwarder's
    kept = [s.strip() for s in args.signals_to_handle.split(",") if s.strip() not in ("SIGINT", "SIGTERM")]
    args.signals_to_handle = ",".join(kept) or "SIGQUIT"
    # torchrun's agent logs "failed (exitcode: N) local_rank: …" for a rank that exits non-zero; that rank
    # already printed its one-line error (and a rank killed by a signal gets ours below), so it is noise
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    fwd = Forwarder()
    fwd.install()
    try:
        run(args)
    except ChildFailedError as e:
        code = _exit_code(e.failures)
        if code > 128 and code != EXIT_INTERRUPTED:  # killed by a signal: the rank printed nothing
            first = _first(e.failures)
            print(
                f"error: rank {first.local_rank} (pid {first.pid}) was killed by {first.signal_name()}; "
                "rerun with --resume to continue from the newest checkpoint",
                file=sys.stderr,
            )
        return code
    except SignalException as e:
        print(f"interrupted ({signal.Signals(e.sigval).name}) before the ranks started", file=sys.stderr)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
