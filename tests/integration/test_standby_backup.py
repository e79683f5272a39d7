"""Physical backups taken on a streaming standby (``backup_from``), and what status, check and metrics say of it.

A primary archives into the repository, a hot standby streams from it (tests/support/pg_replication.py), and
backupctl runs where both live, so the standby's data directory can be read directly (``pgdata`` in its table)
or streamed by pg_basebackup (no ``pgdata``). A backup from the standby under pgbench load restores to a
read-write cluster holding the primary's rows at a known point; prefer-standby falls back to the primary
and says so; a standby that is down, or WAL that nobody archives, fails the backup with one clear line and
leaves nothing in the catalog.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.cluster import ScratchCluster
from tests.support.cli import CliRunner, backup_id
from tests.support.pg_replication import start_standby, wait_replayed, wait_streaming
from tests.support.pg_site import Site, archiving_site, query, restore_and_start

# What the load changes, read the same way on the primary and on the restored copy.
PGBENCH_STATE = ("SELECT (SELECT count(*) FROM pgbench_history), (SELECT sum(delta) FROM pgbench_history), "
                 "(SELECT sum(abalance) FROM pgbench_accounts)")


@pytest.fixture
def ha(pg_binaries: PgBinaries) -> Iterator[tuple[Site, ScratchCluster]]:
    """An archiving primary (the site's cluster) and a hot standby streaming from it, both removed afterwards."""
    with archiving_site(pg_binaries) as site:
        standby = start_standby(site.cluster, "replica1")
        site.extra.append(standby)
        yield site, standby


def from_standby(site: Site, standby: ScratchCluster, mode: str, local: bool = True, **options: Any) -> None:
    """Configure the site's source to back up from ``standby`` (with its pgdata when ``local``)."""
    table: dict[str, Any] = {"host": "127.0.0.1", "port": standby.port}
    if local:
        table["pgdata"] = str(standby.datadir)
    site.source_options = {"backup_from": mode, "standbys": {"replica1": table}, **options}
    site.write_config()


def pgbench(site: Site, *args: str) -> list[str]:
    cluster = site.cluster
    return [cluster.binaries.path("pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.superuser,
            *args, "postgres"]


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as (name, sorted labels) -> value."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(exposition) for sample in family.samples}


def catalog(site: Site, cli: CliRunner) -> list[dict[str, Any]]:
    listed = cli(site.config, "list", "-o", "json")
    assert listed.code == 0, listed.stderr
    return json.loads(listed.stdout)


def test_a_backup_from_the_standby_under_pgbench_load_restores_read_write_at_a_known_point(
        ha: tuple[Site, ScratchCluster], cli: CliRunner) -> None:
    site, standby = ha
    subprocess.run(pgbench(site, "-i", "-s", "2", "-q"), check=True, capture_output=True, timeout=300)
    site.sql("CREATE TABLE marks (id int PRIMARY KEY, batch text NOT NULL)")
    site.sql("INSERT INTO marks VALUES (1, 'before')")
    from_standby(site, standby, "standby")
    load = subprocess.Popen(pgbench(site, "-n", "-c", "2", "-T", "600"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        result = cli(site.config, "backup", "main", "--type", "full", "-o", "json")
        assert load.poll() is None, "pgbench stopped before the backup ended"
    finally:
        load.terminate()
        load.wait(timeout=60)
    bid = backup_id(result)
    assert json.loads(result.stdout)["server"] == {"name": "replica1", "role": "standby",
                                                   "address": f"127.0.0.1:{standby.port}"}
    shown = json.loads(cli(site.config, "show", bid, "-o", "json").stdout)
    assert shown["extra"]["copied_by"] == "backupctl"  # the standby's data directory, read directly
    assert shown["extra"]["server"]["role"] == "standby"
    assert "server:       replica1 (standby, 127.0.0.1:" in cli(site.config, "show", bid).stdout

    # The known point: the load has stopped (its sessions too, so no commit lands after the reading); what the
    # primary holds now is what a restore to here must hold.
    deadline = time.monotonic() + 30
    while site.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")[0][0]:
        assert time.monotonic() < deadline, "pgbench's sessions did not end"
        time.sleep(0.1)
    expected = site.sql(PGBENCH_STATE)[0]
    assert expected[0] > 0, "pgbench committed transactions"
    target = site.sql("SELECT pg_current_wal_insert_lsn()")[0][0]
    site.sql("INSERT INTO marks VALUES (2, 'after the target')")
    site.archived_now(cli)
    restored, plan = restore_and_start(site, cli, "restored", "--target-lsn", str(target))
    site.extra.append(restored)
    assert plan["backup"] == bid
    assert query(restored, PGBENCH_STATE)[0] == expected
    assert query(restored, "SELECT batch FROM marks ORDER BY id") == [("before",)]
    assert query(restored, "SELECT pg_is_in_recovery()") == [(False,)]
    query(restored, "INSERT INTO marks VALUES (3, 'written on the restored copy')")  # read-write
    restored.remove()
    # To the end of the archive: the standby.signal the standby's files carried would keep the copy waiting for
    # more WAL forever; the restore drops it, so recovery ends and the copy opens read-write.
    latest, _ = restore_and_start(site, cli, "latest")
    site.extra.append(latest)
    assert query(latest, "SELECT batch FROM marks ORDER BY id") == [("before",), ("after the target",)]
    assert query(latest, PGBENCH_STATE)[0] == expected
    assert not (latest.datadir / "standby.signal").exists()


def test_prefer_standby_falls_back_to_the_primary_when_the_standby_is_stopped_and_records_why(
        ha: tuple[Site, ScratchCluster], cli: CliRunner) -> None:
    site, standby = ha
    from_standby(site, standby, "prefer-standby")
    standby.stop()
    result = cli(site.config, "backup", "main", "--type", "full", "-o", "json")
    server = json.loads(result.stdout)["server"] if result.code == 0 else None
    assert result.code == 0, result.stderr
    assert server is not None
    assert (server["name"], server["role"]) == ("primary", "primary")
    assert server["address"] == f"127.0.0.1:{site.cluster.port}"
    assert "replica1" in server["fallback"] and "down" in server["fallback"]
    assert "no standby to take it from" in result.stderr  # the operator is told at once
    listed = cli(site.config, "list").stdout
    assert "SERVER" in listed and "primary*" in listed
    assert "fell back: no standby up and streaming" in cli(site.config, "show", backup_id(result)).stdout


def test_backup_from_standby_with_the_standby_down_fails_in_one_line_and_leaves_nothing(
        ha: tuple[Site, ScratchCluster], cli: CliRunner) -> None:
    site, standby = ha
    from_standby(site, standby, "standby")
    standby.stop()
    result = cli(site.config, "backup", "main", "--type", "full")
    assert result.code == 1, result.stderr
    line = result.error_line
    assert "no standby is up and in recovery" in line and f"replica1 (127.0.0.1:{standby.port}) down" in line
    assert catalog(site, cli) == []
    assert not [info.key for info in site.storage().list("main/backups/")]


def test_a_standby_backup_whose_wal_nobody_archives_fails_after_wal_wait_timeout(
        ha: tuple[Site, ScratchCluster], cli: CliRunner) -> None:
    site, standby = ha
    from_standby(site, standby, "standby", local=False, wal_wait_timeout="4s")
    # archive_mode stays on with no archive_command: segments pile up and nobody stores them (the site's
    # settings are on the server's command line, so a restart is how they change).
    site.cluster.settings["archive_command"] = ""
    site.cluster.stop()
    site.cluster.start()
    wait_streaming(site.cluster, "replica1")
    site.sql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS i")
    wait_replayed(site.cluster, standby)
    started = time.monotonic()
    result = cli(site.config, "backup", "main", "--type", "full")
    took = time.monotonic() - started
    assert result.code == 1, result.stderr
    line = result.error_line
    assert "not archived after 4s" in line
    assert "is archive_command set on the primary, or archive_mode=always on the standby?" in line
    assert 4 <= took < 60
    assert catalog(site, cli) == []
    assert not [info.key for info in site.storage().list("main/backups/")]


def test_status_check_and_metrics_show_the_standby_and_the_server_of_the_last_backup(
        ha: tuple[Site, ScratchCluster], cli: CliRunner) -> None:
    site, standby = ha
    from_standby(site, standby, "standby", local=False)
    result = cli(site.config, "backup", "main", "--type", "full", "-o", "json")
    bid = backup_id(result)
    shown = json.loads(cli(site.config, "show", bid, "-o", "json").stdout)
    assert shown["extra"]["copied_by"] == "pg_basebackup"  # no pgdata for the standby: streamed
    (status,) = json.loads(cli(site.config, "status", "-o", "json").stdout)
    (facts,) = status["standbys"]
    assert (facts["name"], facts["up"], facts["in_recovery"], facts["streaming"]) == ("replica1", True, True, True)
    assert facts["address"] == f"127.0.0.1:{standby.port}"
    assert isinstance(facts["lag_bytes"], int) and facts["replay_delay_seconds"] is not None
    (full,) = [b for b in status["backups"] if b["type"] == "full"]
    assert full["server"]["name"] == "replica1" and full["id"] == bid
    assert "standby replica1" in cli(site.config, "status").stdout

    checked = cli(site.config, "check", "main", "-o", "json")
    findings = {f["check"]: f for f in json.loads(checked.stdout)[0]["findings"]}
    assert findings["standby_replica1"]["state"] == "OK"
    metrics = samples(cli(site.config, "metrics").stdout)
    standby_labels = (("source", "main"), ("standby", "replica1"))
    assert metrics[("backupctl_standby_up", standby_labels)] == 1
    assert metrics[("backupctl_backup_last_server_info",
                    (("role", "standby"), ("server", "replica1"), ("source", "main"), ("type", "full")))] == 1
    assert metrics[("backupctl_standby_lag_bytes", standby_labels)] >= 0
    assert metrics[("backupctl_standby_replay_delay_seconds", standby_labels)] >= 0

    standby.stop()
    checked = cli(site.config, "check", "main", "-o", "json")
    assert checked.code == 2, checked.stdout + checked.stderr
    findings = {f["check"]: f for f in json.loads(checked.stdout)[0]["findings"]}
    assert findings["standby_replica1"]["state"] == "CRITICAL"
    assert "standby replica1" in findings["standby_replica1"]["message"] and "down" in \
        findings["standby_replica1"]["message"]
    assert samples(cli(site.config, "metrics").stdout)[("backupctl_standby_up", standby_labels)] == 0


def test_a_standby_that_archives_has_its_archiver_judged_whatever_backups_come_from(
        pg_binaries: PgBinaries, cli: CliRunner) -> None:
    with archiving_site(pg_binaries) as site:
        # archive_mode = always with an archive_command that fails: the hole nobody sees until the day the
        # primary's archiver is the one that stops.
        healthy = site.root / "standby-archives"  # its archive_command fails until this file exists
        standby = start_standby(site.cluster, "replica1",
                                {"archive_mode": "always", "archive_command": f"test -e {healthy}"})
        site.extra.append(standby)
        site.source_options = {"standbys": {"replica1": {"host": "127.0.0.1", "port": standby.port}}}
        site.write_config()
        site.wait_archived(site.switch())
        wait_replayed(site.cluster, standby)

        def failing_now() -> bool:
            (status,) = json.loads(cli(site.config, "status", "-o", "json").stdout)
            archiver = status["standbys"][0]["archiver"]
            assert archiver is not None, "a standby with archive_mode = always reports its archiver"
            return bool(archiver["failing"])

        deadline = time.monotonic() + 60
        while not failing_now():
            assert time.monotonic() < deadline, "the standby's archiver never failed"
            time.sleep(0.5)
        checked = cli(site.config, "check", "main", "-o", "json")
        finding = {f["check"]: f for f in json.loads(checked.stdout)[0]["findings"]}["standby_replica1_archiver"]
        assert finding["state"] == "WARNING" and "archive_command failing" in finding["message"]
        assert "standby_replica1" not in {f["check"] for f in json.loads(checked.stdout)[0]["findings"]}
        labels = (("source", "main"), ("standby", "replica1"))
        assert samples(cli(site.config, "metrics").stdout)[("backupctl_standby_archive_failing", labels)] == 1

        healthy.touch()
        site.switch()
        deadline = time.monotonic() + 60
        while failing_now():
            assert time.monotonic() < deadline, "the standby's archiver did not recover"
            time.sleep(0.5)
        checked = cli(site.config, "check", "main", "-o", "json")
        finding = {f["check"]: f for f in json.loads(checked.stdout)[0]["findings"]}["standby_replica1_archiver"]
        assert finding["state"] == "OK", finding
        assert samples(cli(site.config, "metrics").stdout)[("backupctl_standby_archive_failing", labels)] == 0
