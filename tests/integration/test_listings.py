"""Listings as people and cron see them, through the real CLI: ids whole on an 80-column terminal (a pty),
the id forms every command takes, list's filters, and logs that stay quiet when asked (cron mails only
failures)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tests.support.cli import cli_env
from tests.support.ops_helpers import SqliteSite, sqlite_site

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _backup(site: SqliteSite, *args: str) -> str:
    made = site.cli("backup", "devdb", "-o", "json", *args)
    assert made.code == 0, made.stderr
    return json.loads(made.stdout)["id"]


def _on_a_terminal(site: SqliteSite, *args: str, columns: int = 80) -> str:
    """What the CLI prints when stdout is a terminal ``columns`` wide (a pty, as a shell gives it)."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(site.config), *args],
                            stdout=follower, stderr=subprocess.DEVNULL, env={**cli_env(), "NO_COLOR": "1"})
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, "the CLI printed nothing for 60s"
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


def test_ids_stay_on_one_line_of_an_80_column_terminal(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path)
    first = _backup(site, "--label", "ticket=OPS-1234", "--label", "env=production")
    second = _backup(site)
    assert site.cli("pin", first, "--reason", "kept for the yearly audit, as the auditors asked").code == 0
    screen = _on_a_terminal(site, "list").splitlines()
    assert max(len(line) for line in screen) <= 80, screen
    assert screen[1].startswith(second + "  ") and screen[2].startswith(first + "  "), screen
    assert "ENCRYPTED" not in screen[0]  # nothing is encrypted: the column is left out
    assert re.search(r"  \d\d-\d\d \d\d:\d\d  kept for ", screen[2]), screen  # short time, then the reason folds
    wide = _on_a_terminal(site, "list", columns=200).splitlines()
    assert "TOOK" in wide[0] and "env=production" in wide[2]  # room enough: every column, nothing folded
    piped = site.cli("list").stdout.splitlines()  # the same table when piped, never JSON
    assert piped[2].split()[0] == first and "env=production, ticket=OPS-1234" in piped[2]


def test_every_backup_argument_takes_prefixes_latest_and_oldest(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path)
    first, second = _backup(site), _backup(site)
    shown = site.cli("show", second[:20].lower(), "-o", "json")
    assert shown.code == 0 and json.loads(shown.stdout)["id"] == second, shown.stderr
    assert site.cli("pin", "oldest", "--reason", "audit").stdout.startswith(f"pinned {first} of devdb")
    assert site.cli("unpin", "devdb:oldest").stdout.strip() == f"unpinned {first}"
    verified = site.cli("verify", "latest", "-o", "json")
    assert verified.code == 0 and json.loads(verified.stdout)[0]["id"] == second
    restored = site.cli("restore", "latest", "--to", str(tmp_path / "copy.sqlite3"))
    assert restored.code == 0 and restored.stdout.strip() == f"restored {second} to {tmp_path / 'copy.sqlite3'}"
    common = next(first[:n] for n in range(len(first)) if first[n] != second[n])
    ambiguous = site.cli("show", common)
    assert ambiguous.code == 2 and ambiguous.error_line == (
        f"backupctl: error: {common!r} matches 2 backups: {second}, {first}; give more of the id")
    unknown = site.cli("drill", "run", "devdb", "--backup", "2025")
    assert unknown.code == 2 and "no backup of source devdb has an id starting with '2025'" in unknown.error_line


def test_list_filters_by_type_label_and_count(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path)
    tagged = [_backup(site, "--label", "env=prod"), _backup(site), _backup(site, "--label", "env=prod")]

    def listed(*args: str) -> list[str]:
        result = site.cli("list", "-o", "json", *args)
        assert result.code == 0, result.stderr
        return [row["id"] for row in json.loads(result.stdout)]

    assert listed("--label", "env=prod") == [tagged[2], tagged[0]]
    assert listed("--label", "env=prod", "--last", "1") == [tagged[2]]
    assert listed("--last", "2") == [tagged[2], tagged[1]]
    assert listed("--type", "sqlite", "devdb") == tagged[::-1]
    assert listed("--type", "logical") == []
    bad = site.cli("list", "--label", "env")
    assert bad.code == 2 and "--label 'env' must look like KEY=VALUE" in bad.error_line
    assert site.cli("list", "--last", "0").code == 2


def _run(site: SqliteSite, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backupctl", "--config", str(site.config), *args],
                          capture_output=True, text=True, env={**cli_env(), **env}, timeout=120, check=False)


def _private_site(tmp_path: Path) -> SqliteSite:
    """A site whose config only its owner reads, as the README asks: else every command rightly warns."""
    site = sqlite_site(tmp_path)
    site.config.chmod(0o600)
    return site


def test_run_job_is_silent_on_success_and_says_only_what_failed(tmp_path: Path) -> None:
    site = _private_site(tmp_path)
    done = _run(site, "scheduler", "run-job", "devdb", "backup")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert len(json.loads(site.cli("list", "-o", "json").stdout)) == 1  # it did run
    talkative = _run(site, "--log-level", "info", "scheduler", "run-job", "devdb", "backup")
    assert talkative.returncode == 0 and '"event": "job finished"' in talkative.stderr
    site.db.rename(tmp_path / "moved.sqlite3")
    failed = _run(site, "scheduler", "run-job", "devdb", "backup")
    assert failed.returncode == 1 and failed.stdout == ""
    lines = failed.stderr.splitlines()
    assert lines[0] == f"backupctl: error: SQLite database {site.db} does not exist: check the source's path"
    assert [json.loads(line)["event"] for line in lines[1:]] == ["job failed"]  # with its job id, for the journal


def test_quiet_and_the_log_level_choose_the_lines_on_stderr(tmp_path: Path) -> None:
    site = _private_site(tmp_path)
    chatty = _run(site, "backup", "devdb")
    assert '"level": "info"' in chatty.stderr
    for args, env in ((("-q",), {}), ((), {"BACKUPCTL_LOG_LEVEL": "warning"}), (("--log-level", "error"), {})):
        quiet = _run(site, *args, "backup", "devdb", **env)
        assert quiet.returncode == 0 and quiet.stderr == "", (args, env, quiet.stderr)
        assert quiet.stdout.startswith("backup ")  # the result still prints
    loud = _run(site, "--log-level", "info", "-q", "backup", "devdb")  # the explicit level wins over -q
    assert '"level": "info"' in loud.stderr
    bad = _run(site, "backup", "devdb", BACKUPCTL_LOG_LEVEL="chatty")
    assert bad.returncode == 2 and "'chatty' is not one of 'debug', 'info', 'warning', 'error'" in bad.stderr
