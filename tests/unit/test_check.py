"""The judgements of ``backupctl check`` on facts gathered elsewhere: the age of the oldest segment waiting, WAL
archived to another place, the timeline production is on, the age of each scheduled kind of backup."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backupctl.core.config import CheckConfig, parse_config
from backupctl.core.errors import ConfigError
from backupctl.monitoring import check as monitor
from backupctl.monitoring import status

CONFIG = Path("/nonexistent/backupctl.toml")  # named in messages, never read


def test_ready_age_judgement() -> None:
    """WARNING between the thresholds; the cannot-run hint only when pg_stat_archiver counts no failure."""
    check = CheckConfig(ready_age_warning=60.0, ready_age_critical=600.0)
    server: dict[str, Any] = {"oldest_ready": "000000010000000000000007", "oldest_ready_age_seconds": 120.0}
    finding = monitor._ready_age_finding("main", server, check)
    assert finding.state == monitor.WARNING and "(warning 1.0m)" in finding.message
    assert "may not run at all" in finding.message
    server["failing"] = True
    assert "may not run at all" not in monitor._ready_age_finding("main", server, check).message
    server["oldest_ready_age_seconds"] = 30.0
    assert monitor._ready_age_finding("main", server, check).state == monitor.OK
    source = {"kind": "postgres", "host": "/tmp", "check": {"ready_age_warning": "2h", "ready_age_critical": "1h"}}
    with pytest.raises(ConfigError, match=r"main\.check\.ready_age_warning must not exceed ready_age_critical"):
        parse_config({"repository": {"type": "local", "path": "/tmp/r"}, "sources": {"main": source}},
                     CONFIG)


def test_wal_the_server_archived_elsewhere_is_critical() -> None:
    """archive_command succeeds (nothing waits, no failures) but the repository stopped receiving WAL."""
    from datetime import UTC, datetime

    from backupctl.core.config import CheckConfig
    from backupctl.repo.catalog import iso

    now = datetime.now(UTC)
    server = {"reachable": True, "archive_mode": "on", "ready": 0, "failing": False,
              "last_archived_wal": "000000010000000000000009", "last_archived_time": iso(now - timedelta(minutes=5))}
    def facts(newest_segment: str) -> status.SourceStatus:
        wal = status.WalFacts(newest_segment, None, 3600.0, (1,), 9, 0, 0)
        return _facts(("full", 1.0), server=server, wal=wal)

    (finding,) = monitor._wal_findings(facts("000000010000000000000005"), CheckConfig(), now)
    assert finding.state == monitor.CRITICAL and "stores WAL elsewhere" in finding.message
    (finding,) = monitor._wal_findings(facts("000000010000000000000009"), CheckConfig(), now)
    assert finding.state == monitor.OK, "the repository has what the server archived: a quiet server"
    server["last_archived_time"] = iso(now - timedelta(seconds=5))
    (finding,) = monitor._wal_findings(facts("000000010000000000000008"), CheckConfig(), now)
    assert finding.state == monitor.OK, "a segment archived seconds ago may not be listed yet"


def test_a_live_primary_on_another_timeline_than_restores_would_follow_is_critical() -> None:
    """The archive alone takes a copy's freshly archived timeline for production while production had nothing
    to archive yet; the source's server, answering as a primary, says which timeline is production's."""
    tree = [{"timeline": 1, "parent": None, "fork": None}, {"timeline": 2, "parent": 1, "fork": "0/5000000"}]
    judged = {"production": 2, "ambiguous": False, "reason": "timeline 2 is the only line still archived",
              "branches": [], "highest": 2, "tree": tree}
    server = {"reachable": True, "in_recovery": False, "current_wal": "000000010000000000000005"}
    (finding,) = monitor._timeline_findings(_facts(timelines=judged, server=server))
    assert finding.state == monitor.CRITICAL
    assert "the server writes timeline 1, but restores would follow timeline 2" in finding.message
    assert "`backupctl wal forget-timeline 2 --source main`" in finding.message
    server["current_wal"] = "000000020000000000000007"
    (finding,) = monitor._timeline_findings(_facts(timelines=judged, server=server))
    assert finding.state == monitor.OK, "the server agrees with the archive"
    server["current_wal"] = "000000030000000000000007"
    (finding,) = monitor._timeline_findings(_facts(timelines=judged, server=server))
    assert finding.state == monitor.WARNING and "no 00000003.history archived" in finding.message
    server.update(current_wal="000000010000000000000005", in_recovery=True)
    (finding,) = monitor._timeline_findings(_facts(timelines=judged, server=server))
    assert finding.state == monitor.OK, "a standby (a rewound old primary) says nothing about production"


def _facts(*backups: tuple[str, float], source: str = "main", **parts: Any) -> status.SourceStatus:
    """A source's status with backups of the given kinds and ages (hours), and any other ``parts``."""
    newest = tuple(status.NewestBackup(kind, f"backup-{kind}", "2026-12-01T00:00:00Z", hours * 3600, 1, 1, 1.0, 1)
                   for kind, hours in backups)
    return status.SourceStatus(source, "postgres", "2026-12-03T12:00:00Z", False, backups=newest, **parts)


def test_each_scheduled_kind_of_backup_is_judged_by_its_schedule() -> None:
    """A nightly pg_dump that stopped must not hide behind a physical backup that still runs, and a weekly
    full is not stale on day two; with no schedule, the newest backup of any kind meets 26h/50h."""
    from datetime import UTC, datetime

    document = {"repository": {"type": "local", "path": "/nonexistent/repo"},
                "sources": {"main": {"kind": "postgres", "host": "/tmp", "dbname": "postgres",
                                     "schedule": {"full": "0 2 * * 0", "logical": "30 3 * * *"}},
                            "cron": {"kind": "postgres", "host": "/tmp", "dbname": "postgres"}}}
    config = parse_config(document, CONFIG)
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    main = config.source("main")
    assert monitor.family_thresholds(main, "UTC", now) == {
        "physical": (7 * 86400 + 7200, 14 * 86400 + 7200), "logical": (26 * 3600, 50 * 3600)}

    def judged(source: str, *backups: tuple[str, float]) -> dict[str, tuple[int, str]]:
        return {f.check: (f.state, f.message)
                for f in monitor._backup_findings(_facts(*backups, source=source), config.source(source), "UTC", now)}

    findings = judged("main", ("full", 100), ("logical", 30))
    assert set(findings) == {"physical_backup_age", "logical_backup_age"}, "no schedule-blind 26h check"
    assert findings["physical_backup_age"][0] == monitor.OK
    assert findings["logical_backup_age"] == (monitor.WARNING, "last logical backup 1.2d old (warning 1.1d)")
    findings = judged("main", ("full", 2), ("logical", 60))
    assert findings["logical_backup_age"][0] == monitor.CRITICAL, "fresh physical backups hide nothing"
    findings = judged("main", ("full", 15 * 24 + 3))
    assert findings["physical_backup_age"][0] == monitor.CRITICAL
    assert findings["logical_backup_age"] == (monitor.WARNING, "no logical backup yet, though the schedule runs one")

    assert judged("cron", ("full", 30), ("logical", 100)) == {
        "backup_age": (monitor.WARNING, "last backup (full) 1.2d old (warning 1.1d)")}

    document["sources"]["main"]["check"] = {"backup_age_warning": "12h"}
    config = parse_config(document, CONFIG)
    findings = judged("main", ("full", 13), ("logical", 13))
    assert findings["backup_age"][0] == monitor.WARNING, "a configured threshold still applies to the newest"
    assert findings["physical_backup_age"][0] == findings["logical_backup_age"][0] == monitor.OK
