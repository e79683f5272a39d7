"""One table of exit codes: core/errors.py; the fast path's copies, check's states and the documented table
agree with it."""

from __future__ import annotations

import signal

import pytest

from backupctl.cli import app
from backupctl.core import errors
from backupctl.monitoring import check
from backupctl.wal.agent import client
from tests.support.json_contract import DOC


def test_the_wal_fast_path_copies_equal_the_table() -> None:
    """The archive_command fast path imports only the standard library, so it keeps its own constants."""
    assert (client.EXIT_OK, client.EXIT_FAILED, client.EXIT_USAGE, client.EXIT_FETCH_FATAL) == (
        errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_FETCH_FATAL)


def test_checks_states_are_the_plugin_exit_codes() -> None:
    assert (check.OK, check.WARNING, check.CRITICAL, check.UNKNOWN) == (0, 1, 2, 3)
    assert (check.OK, check.WARNING, check.CRITICAL, check.UNKNOWN) == (
        errors.CHECK_OK, errors.CHECK_WARNING, errors.CHECK_CRITICAL, errors.CHECK_UNKNOWN)


def test_errors_and_signals_carry_their_codes() -> None:
    assert errors.BackupctlError("x").exit_code == errors.EXIT_FAILED
    assert errors.ConfigError("x").exit_code == errors.EXIT_USAGE
    assert errors.Interrupted(signal.SIGTERM).exit_code == 143
    assert errors.signal_exit_code(signal.SIGINT) == 130


def test_the_documented_table_is_the_code_table() -> None:
    text = DOC.read_text().split("## Exit codes", 1)[1]
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ") and "Code" not in line]
    assert tuple((code.strip(), meaning.strip()) for code, meaning in rows) == errors.EXIT_CODES


def test_an_error_keeps_its_cause_yet_prints_one_line_without_debug(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        try:
            raise PermissionError(13, "Permission denied", "/repo/devdb")
        except OSError as exc:
            raise errors.StorageError("cannot read devdb/: Permission denied") from exc

    monkeypatch.setattr(app.signals, "install", lambda: None)
    monkeypatch.setattr(app.cli, "main", failing)
    with pytest.raises(SystemExit) as exited:
        app.main(["list"])
    assert exited.value.code == errors.EXIT_FAILED
    assert capsys.readouterr().err == "backupctl: error: cannot read devdb/: Permission denied\n"
    with pytest.raises(SystemExit):
        app.main(["--debug", "list"])
    shown = capsys.readouterr().err
    assert "PermissionError: [Errno 13] Permission denied: '/repo/devdb'" in shown
    assert "The above exception was the direct cause" in shown
