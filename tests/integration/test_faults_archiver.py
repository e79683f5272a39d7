"""The archive backlog under faults, on a real PostgreSQL 15 cluster archiving through backupctl.

An archive_command that cannot run at all (exit 127: not found) makes PostgreSQL restart the archiver
without counting a failure, so pg_stat_archiver looks healthy while nothing is archived: `check` sees it
through the age of the oldest ``.ready`` file, read from the data directory or through SQL. A store that
is down for a long time: backupctl drops no WAL, pg_wal grows with every segment waiting, `check` goes
CRITICAL on the backlog's age and pg_wal's size, and once the store is back every waiting segment is
archived in order, with no gap. Ages are waited for by polling, never by fixed sleeps.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from backupctl.core.config import load_config
from backupctl.monitoring import check as monitor
from backupctl.monitoring import status
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import Site, archiving_site

SEGMENT = 16 * 1024**2


def _poll(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    """``probe()`` until it returns something true: that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _server(site: Site) -> dict[str, Any]:
    result = site.cli("status", "main", "-o", "json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)[0]["server"]


def _findings(site: Site) -> tuple[int, dict[str, dict[str, Any]]]:
    result = site.cli("check", "main", "-o", "json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.code, {f["check"]: f for f in json.loads(result.stdout)[0]["findings"]}


def _waited(site: Site, name: str, seconds: float) -> Callable[[], dict[str, Any] | None]:
    """A probe: the server facts once ``name`` is the oldest .ready file and has waited ``seconds``."""
    def probe() -> dict[str, Any] | None:
        server = _server(site)
        if server["oldest_ready"] == name and server["oldest_ready_age_seconds"] >= seconds:
            return server
        return None
    return probe


def _restart_with(site: Site, archive_command: str) -> None:
    site.cluster.settings["archive_command"] = archive_command  # a command-line setting: needs a restart
    site.cluster.stop()
    site.cluster.start()


def test_an_archive_command_that_cannot_run_is_seen_by_the_oldest_ready_age(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        with site.config.open("a") as toml:
            toml.write('\n[sources.main.check]\nready_age_warning = "1s"\nready_age_critical = "2s"\n')
        site.wait_archived(site.switch())
        code, findings = _findings(site)
        assert findings["ready_age"]["state"] == "OK", findings
        assert findings["ready_age"]["message"] == "no WAL file waiting to be archived"

        good_command = site.cluster.settings["archive_command"]
        _restart_with(site, f"/nonexistent/backupctl wal-push --config {site.config} main %p")
        name = site.switch()
        server = _poll(f"{name} waiting 2s", _waited(site, name, 2.0))
        # The premise: exit 127 restarts the archiver and is not counted as a failure.
        assert server["failed_count"] == 0 and not server["failing"] and server["local"]
        assert "archive command failed with exit code 127" in site.cluster._read_log()

        code, findings = _findings(site)
        assert code == monitor.CRITICAL
        finding = findings["ready_age"]
        assert finding["state"] == "CRITICAL" and finding["value"] >= 2 and finding["critical"] == 2
        assert finding["message"].startswith(f"{name} has waited ")
        assert "(critical 2s)" in finding["message"] and "archive_command may not run at all" in finding["message"]
        assert "archive_command failing" not in json.dumps(findings), "pg_stat_archiver saw no failure"
        summary = site.cli("check", "main").stdout.splitlines()[0]
        assert summary.startswith("BACKUPCTL CRITICAL") and name in summary
        assert "'main_ready_age'=" in summary

        # The same facts through SQL (pg_ls_archive_statusdir), for a server whose data directory is elsewhere.
        remote = dataclasses.replace(load_config(site.config).sources["main"], pgdata=None)
        facts = status.server_facts(remote)
        assert facts is not None and not facts["local"]
        assert facts["oldest_ready"] == name and facts["oldest_ready_age_seconds"] >= 2 and facts["ready"] >= 1

        exposition = site.cli("metrics").stdout
        assert any(line.startswith('backupctl_wal_oldest_ready_age_seconds{source="main"}')
                   for line in exposition.splitlines()), exposition

        # The command fixed: the backlog drains and the finding is OK again.
        _restart_with(site, good_command)
        site.switch()
        _poll("the backlog drained", lambda: _server(site)["oldest_ready"] is None)
        code, findings = _findings(site)
        assert findings["ready_age"]["state"] == "OK", findings


def test_a_store_down_for_long_keeps_every_segment_and_goes_critical(request: pytest.FixtureRequest) -> None:
    """No queue cap: while the repository refuses writes, every segment stays in pg_wal (.ready), pg_wal
    grows, and check is CRITICAL on the backlog's age and pg_wal's size; afterwards nothing is missing."""
    with archiving_site(require_binaries(15), request) as site:
        with site.config.open("a") as toml:
            toml.write('\n[sources.main.check]\nready_age_warning = "1s"\nready_age_critical = "2s"\n'
                       'pg_wal_warning = "32MiB"\npg_wal_critical = "64MiB"\n')
        backup = site.cli("backup", "main", "--type", "full")
        assert backup.code == 0, backup.stderr
        site.wait_archived(site.switch())

        wal_root = site.root / "repo" / "main" / "wal"
        wal_dirs = [wal_root, *(d for d in wal_root.rglob("*") if d.is_dir())]
        for directory in wal_dirs:
            directory.chmod(0o500)  # the store refuses every write, as an unreachable one does
        try:
            names = [site.switch(rows=10) for _ in range(4)]
            server = _poll("four segments waiting 2s", _waited(site, names[0], 2.0))
            assert server["ready"] >= 4 and server["failing"]
            pg_wal = site.cluster.datadir / "pg_wal"
            assert all((pg_wal / n).stat().st_size == SEGMENT for n in names), "a waiting segment was dropped"
            assert server["pg_wal_bytes"] >= (len(names) + 1) * SEGMENT
            code, findings = _findings(site)
            assert code == monitor.CRITICAL
            assert findings["ready_age"]["state"] == "CRITICAL" and names[0] in findings["ready_age"]["message"]
            assert "may not run at all" not in findings["ready_age"]["message"], "failures are counted here"
            assert findings["pg_wal"]["state"] == "CRITICAL", findings["pg_wal"]
            assert findings["archiver"]["state"] == "WARNING"
        finally:
            for directory in wal_dirs:
                directory.chmod(0o700)

        last = site.switch()  # a new segment wakes the archiver at once (it retries on its own after 60 s)
        site.wait_archived(last, timeout=120)
        archived = {p.name.split("-")[0] for p in wal_root.rglob("0*-*")}
        assert set(names) <= archived
        verify = site.cli("wal", "verify", "main", "-o", "json")
        assert verify.code == 0 and json.loads(verify.stdout)[0]["ok"], verify.stdout + verify.stderr
        code, findings = _findings(site)
        # pg_wal shrinks only as checkpoints recycle the archived segments; the backlog is gone at once.
        assert findings["ready_age"]["state"] == "OK" and findings["ready"]["value"] == 0, findings


