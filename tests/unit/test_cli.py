"""The command line's pure parts: the command word, each command module on its own, and the writers.

A command module is importable alone (no module of ``cli`` imports the group back), loads nothing heavy
until a command runs, and answers ``--help`` without the group around it.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner

from backupctl.cli.argv import command_word
from backupctl.cli.output import JsonWriter, TableWriter, Writer, writer
from backupctl.core.units import short_time

COMMAND_MODULES = ["backup", "restore", "wal", "retention", "repo", "keys", "ops", "scheduler", "drill"]
HEAVY = ["backupctl.cli.app", "backupctl.cli.output", "rich", "boto3", "psycopg", "zstandard", "structlog"]


@pytest.mark.parametrize(("args", "verb"), [
    (["wal-push", "pg_wal/x"], "wal-push"),
    (["--config", "/etc/b.toml", "--debug", "wal-fetch", "a", "b"], "wal-fetch"),
    (["--config=/etc/b.toml", "wal-push", "--source", "main", "p"], "wal-push"),
    (["--config", "wal-push"], None),
    (["--version"], None),
    (["backup", "main"], "backup"),
    ([], None),
])
def test_the_command_word_is_found_after_the_global_options(args: list[str], verb: str | None) -> None:
    assert command_word(args) == verb


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_a_command_module_imports_alone_and_loads_nothing_heavy(name: str) -> None:
    probe = f"import sys\nimport backupctl.cli.{name}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.split() == []


def _commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += _commands(sub, (*path, name))
    return found


def _module_commands() -> list[Any]:
    cases = []
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"backupctl.cli.{name}")
        roots = [value for value in vars(module).values()
                 if isinstance(value, click.Command) and value.callback.__module__ == module.__name__]
        cases += [pytest.param(root, path, id=f"{name}:{root.name} {' '.join(path)}".strip())
                  for root in roots for path, _ in _commands(root)]
    return cases


@pytest.mark.parametrize(("root", "path"), _module_commands())
def test_every_command_answers_help_without_the_group(root: click.Command, path: tuple[str, ...]) -> None:
    # The group's help option names, as the group would give them: click caches a command's help option the
    # first time it is built, so building it here with other names would change what the full CLI prints.
    result = CliRunner().invoke(root, [*path, "--help"], help_option_names=["-h", "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")


def test_every_format_writes_every_result() -> None:
    assert "checked" in Writer.__abstractmethods__  # one abstract method per result
    assert not JsonWriter.__abstractmethods__ and not TableWriter.__abstractmethods__


def test_the_format_is_chosen_by_the_option_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for tty in (False, True):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty)
        assert isinstance(writer("json"), JsonWriter) and isinstance(writer("table"), TableWriter)


SUMMARY = {"id": "20261125T021500123Z-S-k3x", "source": "devdb", "type": "sqlite",
           "finished_at": "2026-11-25T02:15:01Z", "duration_seconds": 1.25, "size": 3 * 1024**2,
           "stored_size": 1024**2, "encrypted": True, "pinned": {"reason": "legal hold"}}


def test_the_json_writer_prints_the_data_as_given(capsys: pytest.CaptureFixture[str]) -> None:
    JsonWriter().backups([SUMMARY])
    assert json.loads(capsys.readouterr().out) == [SUMMARY]


def test_the_json_writer_wraps_single_results_in_a_list(capsys: pytest.CaptureFixture[str]) -> None:
    JsonWriter().wal_checked("main", {"segment": "000000010000000000000003", "epoch": 1})
    assert json.loads(capsys.readouterr().out) == [{"segment": "000000010000000000000003", "epoch": 1}]


def test_the_table_writer_draws_a_listing_with_people_units(capsys: pytest.CaptureFixture[str]) -> None:
    TableWriter().backups([{**SUMMARY, "labels": {"env": "prod", "ticket": "OPS-1"}}])
    header, row = capsys.readouterr().out.splitlines()  # piped: as wide as the rows, nothing folded
    assert re.split(r"  +", header.strip()) == ["ID", "SOURCE", "TYPE", "FINISHED", "TOOK", "SIZE", "STORED",
                                                "ENCRYPTED", "PINNED", "LABELS"]
    assert re.split(r"  +", row.strip()) == [SUMMARY["id"], "devdb", "sqlite", "11-25 02:15", "1.2s",
                                             "3.0 MiB", "1.0 MiB", "yes", "legal hold", "env=prod, ticket=OPS-1"]


def test_a_narrow_terminal_keeps_ids_whole_and_leaves_out_empty_then_optional_columns(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    rows = [{**SUMMARY, "encrypted": False, "pinned": None, "labels": {}},
            {**SUMMARY, "id": "20261125T031500123Z-S-abc", "encrypted": False,
             "pinned": {"reason": "kept for the audit of the year, as the auditors asked"},
             "labels": {"ticket": "OPS-1234", "env": "production"}}]
    TableWriter().backups(rows)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in capsys.readouterr().out.splitlines()]
    assert max(map(len, lines)) <= 80
    assert re.split(r"  +", lines[0].strip()) == ["ID", "SOURCE", "TYPE", "FINISHED", "PINNED", "LABELS"]
    assert lines[1].startswith(SUMMARY["id"] + "  ") and lines[2].startswith("20261125T031500123Z-S-abc  ")
    assert lines[2].endswith("  ticket=OPS-1")  # the labels column folds beside the id


def test_short_times_drop_the_year_only_for_this_one() -> None:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    assert short_time("2026-12-05T14:09:59.999Z", now) == "12-05 14:09"
    assert short_time("2025-12-05T15:09:00+01:00", now) == "2025-12-05 14:09"
    assert short_time(None, now) == "-"


def test_the_table_writer_says_when_there_is_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    TableWriter().backups([])
    TableWriter().drills([])
    TableWriter().collected([], dry_run=True)
    assert capsys.readouterr().out == "no backups\nno drills\nnothing to collect\n"


def test_the_table_writer_prints_a_backup_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    manifest = SimpleNamespace(id="20261125T021500123Z-S-k3x", source="devdb", size=2048, stored_size=100,
                               duration=0.34)
    TableWriter().backup(manifest)  # type: ignore[arg-type]
    assert capsys.readouterr().out == "backup 20261125T021500123Z-S-k3x of devdb: 2.0 KiB -> 100 B stored in 0.3s\n"


def test_the_table_writer_of_a_check_is_the_monitoring_plugins_output(capsys: pytest.CaptureFixture[str]) -> None:
    from backupctl.monitoring.check import OK, WARNING, Finding

    findings = [Finding("a", "sqlite_backup_age", OK, "last sqlite backup 2s old"),
                Finding("b", "sqlite_backup_age", WARNING, "last sqlite backup 2.0d old")]
    TableWriter().checked(["a", "b"], findings)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("BACKUPCTL WARNING")
    assert lines[1:] == ["OK: a: last sqlite backup 2s old", "WARNING: b: last sqlite backup 2.0d old"]
    JsonWriter().checked(["a", "b"], findings)
    assert [(s["id"], s["state"], len(s["findings"])) for s in json.loads(capsys.readouterr().out)] == [
        ("a", "OK", 1), ("b", "WARNING", 1)]


def test_the_expire_table_sums_what_goes(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"item": "backup", "id": "x1", "type": "sqlite", "finished_at": "2026-11-25T02:15:01Z", "action": "remove",
             "rules": ["no rule keeps it"], "stored_size": 2048, "result": "removed"},
            {"item": "backup", "id": "x2", "type": "sqlite", "finished_at": "2026-11-25T03:15:01Z", "action": "keep",
             "rules": ["keep_last (1 of 1)"], "stored_size": 4096, "result": "kept"}]
    TableWriter().expired(rows, dry_run=True)
    out = capsys.readouterr().out
    assert "RESULT" not in out
    assert out.splitlines()[-1] == "would remove 1 of 2 backups (2.0 KiB) and 0 WAL segments (0 B)"


def test_the_cli_offers_every_backup_type_the_catalog_knows() -> None:
    from backupctl.cli.backup import BACKUP_TYPES
    from backupctl.repo.catalog import TYPE_LETTERS

    assert set(BACKUP_TYPES) == set(TYPE_LETTERS)


def test_the_most_explicit_log_option_wins_and_quiet_follows_the_level() -> None:
    from backupctl.cli.common import State, chosen_log_level, quiet

    assert chosen_log_level(True, "error", True, True) == "debug"  # --debug
    assert chosen_log_level(False, "INFO", True, True) == "info"  # --log-level on the command line beats -q
    assert chosen_log_level(False, "info", False, True) == "warning"  # -q beats $BACKUPCTL_LOG_LEVEL
    assert chosen_log_level(False, "error", False, False) == "error"
    assert chosen_log_level(False, None, False, False) is None  # the command's own default
    assert [State(None, False, level).quiet for level in (None, "info", "warning", "error")] == \
        [False, False, True, True]
    assert quiet() is False  # outside a command
    with click.Context(click.Command("x"), obj=State(None, False, "warning")):
        assert quiet() is True
