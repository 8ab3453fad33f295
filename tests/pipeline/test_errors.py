"""pipeline.errors: the failure contract every command shares (one line, exit 0/1/2/130, --debug)."""

from __future__ import annotations

import errno
import os

import pytest

from pipeline.errors import (
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ConfigError,
    UsageError,
    UserError,
    describe_oserror,
    run_command,
)


@pytest.mark.parametrize(
    ("code", "what", "fix"),
    [
        (errno.ENOENT, "does not exist", "check the path"),
        (errno.EACCES, "permission denied", "writable path"),
        (errno.EROFS, "read-only filesystem", "writable filesystem"),
        (errno.EISDIR, "is a folder", "pass a file path"),
        (errno.ENOTDIR, "is a file", "pass a folder path"),
    ],
)
def test_describe_oserror_names_path_what_and_fix(code: int, what: str, fix: str) -> None:
    line = describe_oserror(OSError(code, os.strerror(code), "/data/x.bin"))
    assert line.startswith("/data/x.bin: ")
    assert what in line and fix in line
    assert "\n" not in line


def test_describe_oserror_full_disk_names_the_folder_and_resume() -> None:
    line = describe_oserror(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "/big/shards/train-00003.bin")
    assert "/big/shards" in line and "free space, then rerun the same command to resume" in line


def _raise(e: BaseException):
    def body() -> int:
        raise e

    return body


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UserError("in.jsonl: line 3: bad"), EXIT_DATA),
        (UsageError("--lr: must be finite"), EXIT_USAGE),
        (ConfigError("--workers 0: must be >= 1"), EXIT_USAGE),
        (FileNotFoundError(errno.ENOENT, "No such file", "/nope"), EXIT_DATA),
    ],
)
def test_run_command_one_line_and_exit_code(exc: BaseException, code: int, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OWTGPT_DEBUG", raising=False)
    assert run_command(_raise(exc), prefix="x: error: ") == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("x: error: ")
    assert "Traceback" not in err


def test_config_error_is_also_a_value_error() -> None:
    assert isinstance(ConfigError("x"), ValueError)


def test_interrupt_is_130_with_the_command_message(capsys, monkeypatch) -> None:
    monkeypatch.delenv("OWTGPT_DEBUG", raising=False)
    assert run_command(_raise(KeyboardInterrupt()), on_interrupt="interrupted: rerun") == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted: rerun\n"


def test_debug_env_adds_the_traceback(capsys, monkeypatch) -> None:
    monkeypatch.setenv("OWTGPT_DEBUG", "1")
    assert run_command(_raise(UserError("bad"))) == EXIT_DATA
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "error: bad"


def test_a_bug_is_not_swallowed(monkeypatch) -> None:
    monkeypatch.delenv("OWTGPT_DEBUG", raising=False)
    with pytest.raises(ZeroDivisionError):
        run_command(lambda: 1 // 0)


def test_success_returns_the_body_code() -> None:
    assert run_command(lambda: None) == 0
    assert run_command(lambda: 3) == 3
