"""Progress while a backup, verify, restore, drill or expire runs, and a running backup in status and the metrics.

The progress line is judged as a user sees it: the CLI runs with its stderr on a pseudo-terminal, and with
stderr a pipe (cron, systemd) it must draw nothing at all. A running backup is seen from another process:
through the lease a backup holds (status and metrics read it, as on another host).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from backupctl.core.config import load_config
from backupctl.repo import lease
from backupctl.repo.repository import open_repository
from tests.support.cli import cli_env
from tests.support.ops_helpers import SqliteSite, sqlite_site
from tests.support.pg_site import Site

# "8.1 MiB of 8.1 MiB, 40.2 MiB/s": bytes done of the total, and the rate.
BYTES_LINE = re.compile(r"\d+(\.\d)? (B|KiB|MiB) of \d+(\.\d)? (B|KiB|MiB), \d+(\.\d)? (B|KiB|MiB|GiB)/s")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(site: SqliteSite | Site, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pty (120 columns), stdout a pipe; its exit code, stdout and the terminal's
    text without colour codes."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(site.config), *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env={**cli_env(), "TERM": "xterm", **(env or {})})
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, stdout.decode(), ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def test_backup_verify_restore_drill_and_expire_show_progress_on_a_terminal_only(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path, {"sources": {"devdb": {"retention": {"keep_last": 1}}}}, blob_mib=8)
    size = site.db.stat().st_size

    code, out, terminal = on_terminal(site, "backup", "devdb", "-o", "json")
    assert code == 0, terminal
    first = json.loads(out)["id"]
    lines = [line for line in re.split(r"[\r\n]", terminal) if line.startswith("backup devdb")]
    assert lines, terminal
    assert "100%" in lines[-1] and BYTES_LINE.search(lines[-1]), lines[-1]
    assert f"of {size / 1024**2:.1f} MiB" in lines[-1], "the total is the database file's size"

    code, _, terminal = on_terminal(site, "verify", first)
    assert code == 0, terminal
    assert re.search(rf"verify {first} .*100%", terminal) and BYTES_LINE.search(terminal), terminal

    code, _, terminal = on_terminal(site, "restore", first, "--to", str(tmp_path / "restored.sqlite3"))
    assert code == 0, terminal
    assert re.search(rf"restore {first} .*100%", terminal) and BYTES_LINE.search(terminal), terminal

    code, _, terminal = on_terminal(site, "drill", "run", "devdb", "--backup", first)
    assert code == 0, terminal
    assert re.search(rf"drill {first} .*100%", terminal) and BYTES_LINE.search(terminal), terminal

    assert site.cli("backup", "devdb").code == 0  # a second one: keep_last = 1 expires the first
    code, _, terminal = on_terminal(site, "expire", "devdb")
    assert code == 0, terminal
    assert re.search(r"expire devdb .*100%.* (\d+) of \1 objects", terminal), terminal

    # stderr a pipe (cron, systemd, the scheduler's children): the same commands draw nothing.
    for args in (["backup", "devdb"], ["verify", "--latest", "devdb"]):
        result = site.cli(*args)
        assert result.code == 0, result.stderr
        assert "\r" not in result.stderr and "━" not in result.stderr and "/s" not in result.stderr, result.stderr
        assert all(line.startswith("{") for line in result.stderr.splitlines()), "only JSON log lines"


def screen(terminal: str) -> list[str]:
    """The lines left on the screen: rich redraws its line after a carriage return (and an erase); the pty
    ends each line with \\r\\n."""
    return [line.removesuffix("\r").rpartition("\r")[2] for line in terminal.split("\n")]


def test_log_lines_are_written_above_the_progress_line(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path, blob_mib=2)
    code, _, terminal = on_terminal(site, "backup", "devdb")
    assert code == 0, terminal
    # "backup finished" is logged while the line is drawn: it gets a line of its own, the bar is drawn again below
    lines = screen(terminal)
    (finished,) = [i for i, line in enumerate(lines) if "backup finished" in line]
    assert "━" not in lines[finished], lines
    assert any(line.startswith("backup devdb") and "100%" in line for line in lines[finished + 1:]), lines


def _metrics(site: SqliteSite) -> dict[str, float]:
    result = site.cli("metrics")
    assert result.code == 0, result.stderr
    return {sample.name: sample.value for family in text_string_to_metric_families(result.stdout)
            for sample in family.samples if sample.name.startswith("backupctl_backup_running")}


def _running(site: SqliteSite) -> dict[str, Any] | None:
    result = site.cli("status", "-o", "json")
    assert result.code == 0, result.stderr
    (facts,) = json.loads(result.stdout)
    assert facts["errors"] == [], facts["errors"]
    return facts["running_backup"]


def test_status_and_metrics_show_a_backup_held_by_another_process(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path)
    assert _running(site) is None
    assert _metrics(site) == {"backupctl_backup_running": 0.0}

    backup_id = "20261205T120000000Z-S-abc"
    with open_repository(load_config(site.config)) as repo, \
            repo.exclusive_lease("devdb", "backup", "sqlite backup", {"backup_id": backup_id}) as held:
        held.progress = lambda: {"unit": "bytes", "done": 3 * 1024**2, "total": 8 * 1024**2}
        held.renew()  # what the renewal thread writes every quarter of lease_ttl
        time.sleep(1.1)  # the store's clock has whole seconds: the backup has run for at least one
        running = _running(site)
        assert running is not None
        assert running["backup_id"] == backup_id and running["operation"] == "sqlite backup"
        assert running["host"] == os.uname().nodename and running["pid"] == os.getpid()
        assert running["bytes_done"] == 3 * 1024**2 and running["bytes_total"] == 8 * 1024**2
        assert 0 < running["running_seconds"] < 120
        metrics = _metrics(site)
        assert metrics["backupctl_backup_running"] == 1.0
        assert metrics["backupctl_backup_running_bytes"] == 3 * 1024**2
        assert metrics["backupctl_backup_running_total_bytes"] == 8 * 1024**2
        assert 0 < metrics["backupctl_backup_running_seconds"] < 120
        table = site.cli("status", "-o", "table")
        assert (f"backup {backup_id} running on "
                f"{os.uname().nodename} (pid {os.getpid()}) since ") in table.stdout, table.stdout
        assert "3.0 MiB read of about 8.0 MiB" in table.stdout, table.stdout
    assert _running(site) is None, "a released lease is no running backup"
    assert _metrics(site)["backupctl_backup_running"] == 0.0


def test_a_real_backup_reports_how_far_it_is_through_its_lease(tmp_path: Path) -> None:
    # zstd at level 19 makes 24 MiB of random bytes take seconds; lease_ttl 2s renews (with the counts) every 0.5s.
    site = sqlite_site(tmp_path, {"repository": {"lease_ttl": "2s"}, "compression": {"level": 19}}, blob_mib=24)
    size = site.db.stat().st_size
    backup = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(site.config), "backup", "devdb"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    seen: list[dict[str, Any]] = []
    try:
        while backup.poll() is None and not any(s["bytes_done"] for s in seen):
            running = _running(site)
            if running is not None:
                seen.append(running)
    finally:
        assert backup.wait(timeout=300) == 0
    assert seen, "status never saw the backup running"
    counted = next(s for s in seen if s["bytes_done"])
    assert counted["pid"] == backup.pid and counted["operation"] == "sqlite backup"
    assert counted["bytes_total"] == size and 0 < counted["bytes_done"] <= size
    assert _running(site) is None


def test_the_lease_of_a_backup_that_died_is_no_running_backup_once_it_expires(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path)
    storage = site.storage()
    with lease.exclusive(storage, "devdb", "backup", operation="sqlite backup", ttl=2) as held:
        assert _running(site) is not None
        held.stop_renewing()  # as if the process was killed: nobody renews, nobody releases
        time.sleep(3.5)
        assert _running(site) is None
        assert _metrics(site) == {"backupctl_backup_running": 0.0}



def test_a_physical_backup_and_its_verify_show_progress(site: Site) -> None:
    assert site.cli("init").code == 0
    sizes = site.sql("SELECT sum(pg_database_size(oid)) FROM pg_database")[0][0]
    code, out, terminal = on_terminal(site, "backup", "main", "--type", "full", "-o", "json")
    assert code == 0, terminal
    lines = [line for line in re.split(r"[\r\n]", terminal) if line.startswith("backup main")]
    assert lines and BYTES_LINE.search(lines[-1]), terminal
    assert f"of {sizes / 1024**2:.1f} MiB" in lines[-1], "the total is the databases' size"
    full = json.loads(out)["id"]
    code, _, terminal = on_terminal(site, "verify", full)
    assert code == 0, terminal
    assert re.search(rf"verify {full} .*100%", terminal) and BYTES_LINE.search(terminal), terminal
