"""Verify and drill series before the first run: "never" when the repository says so, absent when unknown."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from backupctl.monitoring.metrics import Exposition
from backupctl.monitoring.status import RepositoryFacts, SourceStatus

NOW = "2026-12-05T12:00:00.000Z"


def series(*statuses: SourceStatus) -> dict[tuple[str, str], float]:
    exposition = Exposition()
    exposition.update(statuses, None)
    return {(s.name, s.labels.get("source", "")): s.value
            for family in text_string_to_metric_families(exposition.text()) for s in family.samples}


def test_a_source_with_no_verify_or_drill_yet_says_never() -> None:
    got = series(SourceStatus("db", "sqlite", NOW, False, repository=RepositoryFacts(True)))
    assert got[("backupctl_verify_last_success", "db")] == -1
    assert got[("backupctl_verify_last_timestamp_seconds", "db")] == 0
    assert got[("backupctl_drill_last_success", "db")] == -1
    assert got[("backupctl_drill_last_timestamp_seconds", "db")] == 0
    assert got[("backupctl_drill_scheduled", "db")] == 0
    assert ("backupctl_drill_last_rto_seconds", "db") not in got


def test_what_could_not_be_read_is_absent_rather_than_never() -> None:
    unreachable = SourceStatus("down", "sqlite", NOW, True, repository=RepositoryFacts(False, error="refused"),
                               errors=("repository: refused",))
    unreadable = SourceStatus("half", "sqlite", NOW, False, repository=RepositoryFacts(True),
                              errors=("last verify: verifications/x.json: not JSON",))
    got = series(unreachable, unreadable)
    assert got[("backupctl_repository_up", "down")] == 0
    for name in ("backupctl_verify_last_success", "backupctl_verify_last_timestamp_seconds",
                 "backupctl_drill_last_success", "backupctl_drill_last_timestamp_seconds"):
        assert (name, "down") not in got
    assert ("backupctl_verify_last_success", "half") not in got
    assert got[("backupctl_drill_last_success", "half")] == -1, "only the part that failed is unknown"
    assert got[("backupctl_build_info", "")] == 1
