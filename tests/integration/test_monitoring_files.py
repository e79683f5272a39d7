"""The Prometheus alert rules and the Grafana dashboard in monitoring/, against Prometheus's own tool and
backupctl's real metrics.

promtool (Debian's ``prometheus`` package) checks the rules and runs their unit tests
(tests/promtool/backupctl-alerts.test.yml), checks every dashboard query as PromQL, and lints the
exposition of a real SQLite site before and after its first backup, verify and drill. Every metric name the
rules and the dashboard use must be one backupctl exports: a renamed metric would otherwise leave an alert
that can never fire.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backupctl.monitoring.metrics import Exposition, JobStats
from backupctl.monitoring.status import NewestBackup, RepositoryFacts, SourceStatus, WalFacts, Window
from tests.support.ops_helpers import sqlite_site

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "backupctl-alerts.yml"
DASHBOARD = ROOT / "monitoring" / "backupctl-dashboard.json"
RULE_TESTS = ROOT / "tests" / "promtool" / "backupctl-alerts.test.yml"
METRIC = re.compile(r"\bbackupctl_\w+")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install prometheus (.ci/run installs it)")
    return subprocess.run(["promtool", *args], input=stdin, capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def exported_names(exposition: str) -> set[str]:
    """Every metric name of an exposition: families and their samples (``_total`` of counters)."""
    families = list(text_string_to_metric_families(exposition))
    return {f.name for f in families} | {s.name for f in families for s in f.samples}


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition) for s in family.samples}


def test_the_alert_rules_pass_promtool_and_fire_where_their_unit_tests_say() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 17 rules found" in checked.stdout
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool has no query linter without a server; a recording rule per query is parsed the same way."""
    queries = dashboard_queries()
    assert len(queries) >= 25
    # Grafana's variables, as Grafana substitutes them before sending the query.
    concrete = [q.replace("$__rate_interval", "5m").replace("$source", "main|devdb") for q in queries]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(concrete)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_dashboard_imports_with_a_prometheus_datasource_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")]
    assert dashboard["id"] is None and dashboard["uid"] == "backupctl"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"]), panel["title"]
    (source,) = dashboard["templating"]["list"]
    assert source["name"] == "source" and source["datasource"]["uid"] == "${DS_PROMETHEUS}"
    titles = {p["title"] for p in panels}
    assert {"Newest backup age, per kind", "Archive lag", "archive_command failures", "Recoverable window",
            "Last verify", "Verify age", "Last drill", "Drill age"} <= titles


def _full_postgres_status() -> SourceStatus:
    """A PostgreSQL source with every fact a server gives (test_status.py gathers these from a real one)."""
    now = "2026-12-05T12:00:00.000Z"
    server = {"reachable": True, "failed_count": 2, "failing": False, "ready": 1, "oldest_ready_age_seconds": 3.0,
              "pg_wal_bytes": 64 << 20, "disk_free_percent": 40.0}
    return SourceStatus(
        "main", "postgres", now, True, repository=RepositoryFacts(True, stored_bytes=1 << 30),
        backups=(NewestBackup("full", "20261205T020000000Z-F-abc", now, 3600.0, 1 << 30, 1 << 28, 60.0, 2),),
        wal=WalFacts("000000010000000000000010", now, 30.0, (1,), 16, 0, 1 << 26), server=server,
        window=Window("pitr", "2026-12-01T02:00:00.000Z", now, 4 * 86400.0, None))


def test_every_metric_the_rules_and_dashboard_name_is_exported_and_promtool_accepts_the_exposition(
        tmp_path: Path) -> None:
    site = sqlite_site(tmp_path, {"sources": {"devdb": {"schedule": {"drill": "0 6 1 * *"}}}})
    before = site.cli("metrics")
    assert before.code == 0, before.stderr
    first = samples(before.stdout)
    devdb = (("source", "devdb"),)
    # Before the first verify and drill: present, saying "never", so that "too old" alerts fire.
    assert first[("backupctl_verify_last_success", devdb)] == -1
    assert first[("backupctl_verify_last_timestamp_seconds", devdb)] == 0
    assert first[("backupctl_drill_last_success", devdb)] == -1
    assert first[("backupctl_drill_last_timestamp_seconds", devdb)] == 0
    assert first[("backupctl_drill_scheduled", devdb)] == 1
    (build,) = [labels for name, labels in first if name == "backupctl_build_info"]
    assert dict(build)["version"] == "0.1.0" and re.fullmatch(r"3\.\d+\.\d+", dict(build)["python"])

    assert site.cli("backup", "devdb").code == 0
    assert site.cli("verify", "--latest", "devdb").code == 0
    drilled = site.cli("drill", "run", "devdb")
    assert drilled.code == 0, drilled.stderr
    after = site.cli("metrics")
    assert after.code == 0, after.stderr
    now = samples(after.stdout)
    assert now[("backupctl_verify_last_success", devdb)] == 1
    assert now[("backupctl_drill_last_success", devdb)] == 1
    assert now[("backupctl_drill_last_timestamp_seconds", devdb)] > 1.7e9

    # What a server adds (WAL, pg_stat_archiver, pg_wal, the PITR window), and the job counters.
    jobs = JobStats()
    jobs.record("main", "full", False, 2.0, 1.7e9)
    exposition = Exposition()
    exposition.update([_full_postgres_status()], jobs)
    server_side = exposition.text()

    for text in (before.stdout, after.stdout, server_side):
        linted = promtool("check", "metrics", stdin=text)
        assert linted.returncode == 0, linted.stdout + linted.stderr

    exported = exported_names(after.stdout) | exported_names(server_side)
    named = set(METRIC.findall(RULES.read_text())) | {m for q in dashboard_queries() for m in METRIC.findall(q)}
    assert len(named) >= 20
    assert named - exported == set()
    # The rules and the dashboard between them cover what the issue asks to watch.
    for needed in ("backupctl_backup_last_success_timestamp_seconds", "backupctl_wal_oldest_ready_age_seconds",
                   "backupctl_wal_archive_failures_total", "backupctl_recoverable_window_seconds",
                   "backupctl_drill_last_timestamp_seconds", "backupctl_drill_last_success",
                   "backupctl_verify_last_timestamp_seconds", "backupctl_verify_last_success"):
        assert needed in named, needed
