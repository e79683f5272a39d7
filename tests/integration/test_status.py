"""status and check on healthy, stale and failing sources, through the real CLI.

SQLite sources for the repository's facts (backups, verify records, drills, damage, an unreachable
store); one PostgreSQL 15 cluster archiving through backupctl for WAL, pg_stat_archiver, the .ready
backlog and the recoverable window. Staleness is real time against short thresholds, or an injected clock.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backupctl.core.config import load_config
from backupctl.monitoring import check as monitor
from backupctl.monitoring import status
from backupctl.repo.catalog import parse_iso
from tests.support.cli import run_cli
from tests.support.config import write_toml
from tests.support.ops_helpers import sqlite_site
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import archiving_site
from tests.support.s3_servers import free_port


def _status(site: Any, *sources: str) -> list[dict[str, Any]]:
    result = site.cli("status", *sources, "-o", "json")
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _check(site: Any, *args: str) -> tuple[int, list[str]]:
    result = site.cli("check", *args)
    lines = result.stdout.splitlines()
    assert result.stderr.count("Traceback") == 0, result.stderr
    return result.code, lines


def test_sqlite_source_from_nothing_to_healthy_to_stale(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path, {"sources": {"devdb": {"check": {"backup_age_warning": "3s",
                                                                  "backup_age_critical": "1h"}}}})
    code, lines = _check(site)
    assert code == monitor.CRITICAL and lines[0] == "BACKUPCTL CRITICAL - devdb: no backup at all"

    backup = json.loads(site.cli("backup", "devdb", "-o", "json").stdout)
    assert site.cli("verify", "--latest", "devdb").code == 0
    code, lines = _check(site)
    assert code == monitor.OK, lines
    assert lines[0].startswith("BACKUPCTL OK - 1 source(s) protected: devdb (last backup (sqlite)")
    assert "| 'devdb_backup_age'=" in lines[0] and ";3;3600" in lines[0]

    facts = _status(site)[0]
    assert facts["id"] == "devdb" and facts["kind"] == "sqlite" and facts["errors"] == []
    (newest,) = facts["backups"]
    assert newest["id"] == backup["id"] and newest["type"] == "sqlite" and newest["count"] == 1
    assert newest["size"] == backup["size"] and newest["stored_size"] == backup["stored_size"]
    assert 0 <= newest["age_seconds"] < 60
    stored = sum(info.size for info in site.storage().list("devdb/"))
    assert facts["repository"]["stored_bytes"] == stored and facts["repository"]["backup_bytes"] > 0
    assert facts["last_verify"]["status"] == "passed" and facts["last_verify"]["backup_id"] == backup["id"]
    assert facts["window"]["kind"] == "snapshots" and facts["window"]["points"] == 1
    assert facts["wal"] is None and facts["server"] is None and facts["last_drill"] is None

    table = site.cli("status", "-o", "table")
    assert table.code == 0 and backup["id"] in table.stdout and "passed" in table.stdout

    time.sleep(3.2)
    code, lines = _check(site)
    assert code == monitor.WARNING
    assert re.match(r"BACKUPCTL WARNING - devdb: last backup \(sqlite\) \d+s old \(warning 3s\) \|", lines[0])

    # Much later, by an injected clock: CRITICAL against the default thresholds too.
    config = load_config(site.config)
    later = parse_iso(newest["finished_at"]) + timedelta(hours=51)
    (stale,) = status.gather(config, ["devdb"], later)
    findings = monitor.evaluate(stale, config.source("devdb"), config, later)
    assert monitor.worst([f.state for f in findings]) == monitor.CRITICAL
    critical = [f.message for f in findings if f.state == monitor.CRITICAL]
    assert critical == ["last backup (sqlite) 2.1d old (critical 1.0h)"]


def test_damage_found_by_verify_and_a_damaged_manifest(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path)
    first = json.loads(site.cli("backup", "devdb", "-o", "json").stdout)["id"]
    data = next(k for k in site.keys(f"devdb/backups/{first}/") if not k.endswith("manifest.json"))
    path = tmp_path / "repo" / data
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    assert site.cli("verify", "--latest", "devdb").code == 1
    code, lines = _check(site)
    assert code == monitor.CRITICAL
    assert f"the last verify found damage in backup {first}" in lines[0]
    record = _status(site)[0]["last_verify"]
    assert record["status"] == "failed" and record["backup_id"] == first and "sha256" in record["error"]

    second = json.loads(site.cli("backup", "devdb", "-o", "json").stdout)["id"]
    assert site.cli("verify", "--latest", "devdb").code == 0
    assert _check(site)[0] == monitor.OK, "a newer verify that passes clears it"

    (tmp_path / "repo" / f"devdb/backups/{first}/manifest.json").write_text("{not json")
    code, lines = _check(site)
    assert code == monitor.WARNING and "1 damaged manifest(s)" in lines[0]
    facts = _status(site)[0]
    assert facts["backups"][0]["id"] == second and facts["damaged_manifests"] == [
        f"devdb/backups/{first}/manifest.json"]


def test_drills_are_checked_when_scheduled(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path, {"sources": {"devdb": {"schedule": {"drill": "0 6 1 * *"}}}})
    assert site.cli("backup", "devdb").code == 0
    code, lines = _check(site)
    assert code == monitor.WARNING and "no restore drill has run yet" in lines[0]

    drilled = site.cli("drill", "run", "devdb", "-o", "json")
    assert drilled.code == 0, drilled.stderr
    drill = json.loads(drilled.stdout)
    code, lines = _check(site)
    assert code == monitor.OK, lines
    facts = _status(site)[0]
    assert facts["last_drill"]["id"] == drill["id"] and facts["last_drill"]["status"] == "passed"
    assert facts["last_drill"]["rto_seconds"] == drill["rto_seconds"]

    # A drill whose assertion fails: CRITICAL, naming it.
    with site.config.open("a") as toml:
        toml.write('\n[[sources.devdb.drill.assertions]]\nname = "orders exist"\nsql = "SELECT 0"\n')
    assert site.cli("drill", "run", "devdb").code == 1
    code, lines = _check(site)
    assert code == monitor.CRITICAL and "the last drill" in lines[0] and "failed" in lines[0]
    assert _status(site)[0]["last_drill"]["failed_checks"] == ["assertion: orders exist"]

    # Thresholds derived from the monthly schedule: one period and a day, then two.
    config = load_config(site.config)
    warning, critical = monitor.drill_thresholds(config.source("devdb"), "UTC", parse_iso(drill["finished_at"]))
    assert warning == 32 * 86400 and critical == 63 * 86400


def test_unreachable_repository_is_critical_and_a_bad_config_unknown(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "backupctl.toml", {
        "repository": {"type": "s3", "bucket": "b", "endpoint_url": f"http://127.0.0.1:{free_port()}",
                       "region": "us-east-1", "max_attempts": 1, "addressing_style": "path"},
        "sources": {"devdb": {"kind": "sqlite", "path": str(tmp_path / "dev.sqlite3")}},
    })
    result = run_cli(config, "check")
    assert result.code == monitor.CRITICAL, result.stderr
    assert result.stdout.startswith("BACKUPCTL CRITICAL - devdb: repository unreachable: ")
    facts = json.loads(run_cli(config, "status", "-o", "json").stdout)
    assert facts[0]["repository"]["reachable"] is False and facts[0]["backups"] == []

    config.write_text(config.read_text() + "\n[sources.devdb.check]\nbackup_age_warnings = \"1h\"\n")
    result = run_cli(config, "check")
    assert result.code == monitor.UNKNOWN
    assert result.stdout.startswith("BACKUPCTL UNKNOWN - ") and "backup_age_warnings is not a known setting" in \
        result.stdout
    assert run_cli(config, "check", "-o", "json").code == monitor.UNKNOWN
    assert run_cli(config, "check", "--no-such-option").code == monitor.UNKNOWN, "bad arguments are UNKNOWN too"
    assert run_cli(config, "status", "--no-such-option").code == 2


def test_postgres_archiving_window_and_archiver_failures(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        with site.config.open("a") as toml:
            toml.write("\n[sources.main.check]\nready_warning = 1\nready_critical = 3\n")
        backup = json.loads(site.cli("backup", "main", "--type", "full", "-o", "json").stdout)
        name = site.switch()
        site.wait_archived(name)

        facts = _status(site, "main")[0]
        assert facts["errors"] == [], facts["errors"]
        wal, server, window = facts["wal"], facts["server"], facts["window"]
        assert wal["newest_segment"] >= name and wal["gaps"] == 0 and 0 <= wal["age_seconds"] < 120
        assert server["reachable"] and server["archive_mode"] == "on" and server["local"]
        assert server["failed_count"] == 0 and not server["failing"] and server["ready"] == 0
        assert server["pg_wal_bytes"] >= 16 * 1024**2 and 0 < server["disk_free_percent"] <= 100
        assert window["kind"] == "pitr" and window["from_backup"] == backup["id"]
        assert window["earliest"] == backup["finished_at"] and window["wal_last"] >= name
        assert parse_iso(window["latest"]) >= parse_iso(window["earliest"]) and window["problem"] is None
        assert facts["repository"]["wal_bytes"] > 0
        code, lines = _check(site, "main")
        assert code == monitor.OK, lines
        report = json.loads(site.cli("check", "main", "-o", "json").stdout)
        assert [(r["id"], r["state"]) for r in report] == [("main", "OK")]
        assert {f["id"] for f in report[0]["findings"]} >= {"main/backup_age", "main/wal_age", "main/ready",
                                                             "main/disk_free"}

        exposition = site.cli("metrics")
        assert exposition.code == 0, exposition.stderr
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(exposition.stdout) for s in family.samples}
        main = (("source", "main"),)
        assert samples[("backupctl_wal_archive_failures_total", main)] == 0
        assert samples[("backupctl_wal_archive_failing", main)] == 0
        assert abs(samples[("backupctl_wal_last_archived_timestamp_seconds", main)] - time.time()) < 300
        assert samples[("backupctl_recoverable_window_seconds", (("kind", "pitr"), *main))] == window["seconds"]
        assert samples[("backupctl_backup_last_stored_bytes", (*main, ("type", "full")))] == backup["stored_size"]
        assert samples[("backupctl_verify_last_timestamp_seconds", main)] == 0, "never verified: present, at 0"
        linted = subprocess.run(["promtool", "check", "metrics"], input=exposition.stdout, capture_output=True,
                                text=True, timeout=60, check=False)
        assert linted.returncode == 0, linted.stdout + linted.stderr

        # Archiving starts failing (the repository refuses writes): the archiver says so, the backlog grows.
        wal_dirs = [site.root / "repo" / "main" / "wal", *(site.root / "repo" / "main" / "wal").rglob("*")]
        wal_dirs = [d for d in wal_dirs if d.is_dir()]
        for directory in wal_dirs:
            directory.chmod(0o500)
        try:
            site.switch(rows=10)
            _wait(lambda: site.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] > 0)
            code, lines = _check(site, "main")
            assert code == monitor.WARNING, lines
            assert "archive_command failing" in lines[0] and "1 WAL segment(s) waiting" in lines[0]
            for _ in range(3):
                site.switch(rows=10)
            code, lines = _check(site, "main")
            assert code == monitor.CRITICAL and "waiting to be archived (critical 3)" in lines[0]
            facts = _status(site, "main")[0]
            assert facts["server"]["failing"] and facts["server"]["ready"] >= 3
            assert facts["server"]["last_failed_wal"]
        finally:
            for directory in wal_dirs:
                directory.chmod(0o700)
        _wait(lambda: site.sql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")[0][0] == 0,
              timeout=120)
        code, lines = _check(site, "main")
        assert code == monitor.OK, lines
        assert facts["server"]["major"] == 15

        # An incremental schedule on PostgreSQL 15: the scheduler refuses to start, in one line.
        with site.config.open("a") as toml:
            toml.write('\n[sources.main.schedule]\nincr = "0 2 * * 1-6"\n')
        refused = site.cli("scheduler")
        assert refused.code == 2
        assert refused.error_line == ("backupctl: error: sources.main.schedule.incr: incremental backups need "
                                      "PostgreSQL 17 or newer and main runs 15: remove the incr schedule (full "
                                      "backups and archived WAL cover the days between)")


def _wait(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


