"""How every owtgpt command fails: one stderr line that names the path or flag and the fix.

Exit codes (README, "When things go wrong"): 0 ok, 1 data or input, 2 usage, 130 interrupted.
A traceback is printed only with ``--debug`` or ``OWTGPT_DEBUG=1``. A closed stdout (``... | head``)
ends the command quietly with exit 1, as Python's documentation recommends. The entry points of
``pipeline``, ``model`` and ``trainer`` all go through :func:`run_command`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Callable

EXIT_OK = 0
EXIT_DATA = 1  # bad data or input, a failed run, a filesystem problem
EXIT_USAGE = 2  # a bad flag or flag combination (argparse uses 2 as well)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention

DEBUG_ENV = "OWTGPT_DEBUG"


class UserError(Exception):
    """A problem the user can fix; ``str(e)`` is the whole one-line message (path/flag + fix)."""

    exit_code = EXIT_DATA


class UsageError(UserError):
    """A bad flag or flag combination, found after argparse accepted the syntax."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError, ValueError):
    """A config dataclass field (hence its flag) has a bad value; the message names the flag.

    Also a ``ValueError``, so code that builds configs programmatically can catch either.
    """


def flag(field: str) -> str:
    """The CLI flag of a config field: ``micro_batch`` -> ``--micro-batch``."""
    return "--" + field.replace("_", "-")


def json_type_name(value: object) -> str:
    """A value's type as JSON names it (``null``, ``boolean``, ``number``, ``string``, ``array``,
    ``object``), else Python's name: what an error about a record's field shows the user."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# errno -> (what went wrong, what to do about it)
_OS_FIXES: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("does not exist", "check the path"),
    errno.EEXIST: ("already exists", "choose another path or remove it"),
    errno.EISDIR: ("is a folder, not a file", "pass a file path"),
    errno.ENOTDIR: ("is a file, not a folder (or a parent of it is)", "pass a folder path"),
    errno.EACCES: ("permission denied", "fix its permissions or choose a writable path"),
    errno.EPERM: ("operation not permitted", "fix its permissions or choose another path"),
    errno.EROFS: ("is on a read-only filesystem", "choose a path on a writable filesystem"),
    errno.ENOSPC: ("no space left on the device", "free space, then rerun the same command to resume"),
    errno.EDQUOT: ("disk quota exceeded", "free space, then rerun the same command to resume"),
    errno.ENAMETOOLONG: ("name too long", "use a shorter path"),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
}


def describe_oserror(e: OSError, path: str | os.PathLike[str] | None = None, then: str | None = None) -> str:
    """One line for an ``OSError``: the path, what went wrong, and the fix.

    ``then`` replaces the generic next step ("rerun the same command to resume", "retry") where the
    caller knows the one command that continues (the trainer's ``--resume``).
    """
    where = path if path is not None else (e.filename if e.filename is not None else "")
    what, fix = _OS_FIXES.get(e.errno or -1, (e.strerror or type(e).__name__, "check the path and retry"))
    if then is not None:
        fix = fix.split(", then ")[0].removesuffix(" and retry") + f", then {then}"
    if e.errno == errno.ENOSPC and where:
        folder = os.path.dirname(os.path.abspath(os.fspath(where)))
        return f"{where}: {what} (the filesystem of {folder} is full); {fix}"
    return f"{where}: {what}; {fix}" if where else f"{what}; {fix}"


def debug_enabled(flag: bool = False) -> bool:
    """True with ``--debug`` or ``OWTGPT_DEBUG=1`` in the environment."""
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(
    body: Callable[[], int | None],
    *,
    debug: bool = False,
    prefix: str = "error: ",
    user_errors: tuple[type[BaseException], ...] = (),
    on_interrupt: str = "interrupted",
) -> int:
    """Run a command's body and turn what a user can cause into one line and an exit code.

    ``user_errors`` are the package's own exception types whose ``str`` is already a full message;
    they exit 1 (or their ``exit_code`` attribute). ``OSError`` becomes :func:`describe_oserror`.
    Anything else is a bug: its traceback is always printed.
    """
    debug = debug_enabled(debug)
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(on_interrupt, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of stdout went away (`... | head`): nothing to report; point stdout at
        # /dev/null so the interpreter's final flush does not fail a second time
        if debug:
            traceback.print_exc()
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_DATA
    except (UserError, *user_errors) as e:  # type: ignore[misc]
        if debug:
            traceback.print_exc()
        print(prefix + _one_line(str(e)), file=sys.stderr, flush=True)
        return int(getattr(e, "exit_code", EXIT_DATA))
    except OSError as e:
        if debug:
            traceback.print_exc()
        print(prefix + describe_oserror(e), file=sys.stderr, flush=True)
        return EXIT_DATA


def _one_line(msg: str) -> str:
    return " ".join(msg.split()) or "(no message)"
