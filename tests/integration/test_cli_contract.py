"""The CLI's contract with scripts: every command's help and JSON stay byte-identical across refactors.

The goldens in ``tests/golden/`` were written by the code before the layout change (issue 13). Help is
compared exactly. JSON is compared after masking what differs between runs (temp paths, times, ids,
digests, numbers), so keys, nesting, value types and every stable string must match. A deliberate change
of either regenerates the goldens with ``BACKUPCTL_UPDATE_GOLDEN=1 pytest tests/...test_cli_contract.py``
and shows up in review as a diff of the golden file.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner as ClickRunner

from backupctl.cli.app import cli as cli_group
from backupctl.demo import make_sample_sqlite
from tests.support.backends import Backend
from tests.support.cli import CliRunner, backup_id
from tests.support.config import make_config

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE = os.environ.get("BACKUPCTL_UPDATE_GOLDEN") == "1"


def compare_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; if on purpose, regenerate with BACKUPCTL_UPDATE_GOLDEN=1"


def command_paths(command: click.Command, path: list[str]) -> list[list[str]]:
    paths = [path]
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(click.Context(command))):
            paths += command_paths(command.get_command(click.Context(command), name), [*path, name])
    return paths


def test_every_commands_help_is_unchanged() -> None:
    runner = ClickRunner()
    pages = []
    for path in command_paths(cli_group, []):
        result = runner.invoke(cli_group, [*path, "--help"], terminal_width=100)
        pages.append(f"$ backupctl {' '.join([*path, '--help'])}  (exit {result.exit_code})\n{result.output}")
    compare_golden("cli_help.txt", "\n".join(pages))


TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")
BACKUP_ID = re.compile(r"\b\d{8}T\d{6}(\d{3})?Z?[-_A-Za-z0-9]*\b")
HEX = re.compile(r"\b[0-9a-f]{16,}\b")
DURATION = re.compile(r"\b\d+(\.\d+)?(ms|s|m|h|d)\b")  # ages and elapsed times inside messages
AGE_KEY = re.compile(r"\bage1[0-9a-z]{58}\b")


def mask(value: Any, tmp: str) -> Any:
    """The run-independent part of a JSON value."""
    if isinstance(value, dict):
        return {key: mask(item, tmp) for key, item in value.items()}
    if isinstance(value, list):
        return [mask(item, tmp) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return f"<{type(value).__name__}>"
    text = AGE_KEY.sub("<recipient>", value.replace(tmp, "<tmp>"))  # before the host: a key may contain its name
    text = text.replace(socket.gethostname(), "<host>")
    text = TIME.sub("<time>", text)
    text = HEX.sub("<hex>", text)
    text = BACKUP_ID.sub("<id>", text)
    return DURATION.sub("<duration>", text)


def test_every_commands_json_is_unchanged(tmp_path: Path, local_backend: Backend, cli: CliRunner) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=50)
    config = make_config(tmp_path, local_backend, encrypted=True, cli=cli)
    with config.open("a") as file:
        file.write("[sources.devdb.retention]\nkeep_last = 1\n")
    assert cli(config, "init").code == 0
    first = backup_id(cli(config, "backup", "devdb", "--label", "env=test", "-o", "json"))
    second = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    runs = [
        ("list", "-o", "json"),
        ("list", "devdb", "-o", "json"),
        ("show", first, "-o", "json"),
        ("verify", first, "-o", "json"),
        ("verify", "--latest", "devdb", "-o", "json"),
        ("pin", first, "--reason", "legal hold"),
        ("expire", "devdb", "--dry-run", "-o", "json"),
        ("unpin", first),
        ("status", "-o", "json"),
        ("check", "-o", "json"),
        ("metrics",),
        ("drill", "run", "devdb", "-o", "json"),
        ("drill", "list", "-o", "json"),
        ("repo", "gc", "--dry-run", "-o", "json"),
        ("show", "no-such-backup", "-o", "json"),
    ]
    transcript = []
    for args in runs:
        result = cli(config, *args)
        shown = " ".join(second if a == second else a for a in args).replace(first, "<first>")
        try:
            body = json.dumps(mask(json.loads(result.stdout), str(tmp_path)), indent=1, sort_keys=False)
        except json.JSONDecodeError:
            body = re.sub(r"(?<![\w.<])\d+(\.\d+)?(e[+-]?\d+)?", "<n>", mask(result.stdout, str(tmp_path)))
            body = re.sub(r"(?<![\w.])\d+(\.\d+)?(e[+-]?\d+)?", "<n>", body)
        errors = [line for line in result.stderr.splitlines() if line.startswith("backupctl: error:")]
        error = mask(errors[-1], str(tmp_path)) + "\n" if errors else ""
        transcript.append(f"$ backupctl {shown}  (exit {result.code})\n{error}{body}\n")
    compare_golden("cli_json.txt", "\n".join(transcript))
