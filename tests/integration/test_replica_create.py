"""A replica built from the repository (issue 16): `restore SOURCE --pgdata DIR --standby [--primary-conninfo C
[--slot S]] --start` restores the newest backup, replays the archive, then streams from the primary; without a
conninfo it is an archive-only standby. Success is the outcome: the primary sees the sender, a row written on
the primary afterwards is read on the replica; a standby that cannot stream is a failure that says why.

Each test runs the real CLI against a real archiving cluster (tests/support/pg_site.py) on pg15 and pg18.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from backupctl.postgres.cluster import ScratchCluster
from backupctl.services.standby import STREAM_WAIT_SECONDS
from tests.support import json_contract
from tests.support.cli import CliRunner, backup_id
from tests.support.config import write_toml
from tests.support.pg_replication import create_slot, senders, wait_replayed
from tests.support.pg_site import Site, adopt_running, batches, effective_setting, init_and_backup, query
from tests.support.s3_servers import free_port


def _mark(site: Site, row: int, batch: str) -> None:
    site.sql(f"INSERT INTO marks (id, batch) VALUES ({row}, '{batch}')")


def _primary_conninfo(site: Site, name: str) -> str:
    return f"host=127.0.0.1 port={site.cluster.port} user=postgres application_name={name}"


def _backup_then_more(site: Site, cli: CliRunner) -> str:
    """A full backup, a row archived after it (the replica must fetch it from the archive) and one that is only
    in the primary's current segment (it must stream it). The backup's id."""
    backup = init_and_backup(site, cli)
    _mark(site, 1, "archived")
    site.archived_now(cli)
    _mark(site, 2, "unarchived")
    return backup


def _wait_for(replica: ScratchCluster, batch: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while batch not in batches(replica):
        assert time.monotonic() < deadline, f"{batch} never reached the replica: {batches(replica)}"
        time.sleep(0.2)


def _wait_sender(primary: ScratchCluster, expected: list[tuple[str, str, str | None]], timeout: float = 30) -> None:
    """Until the primary's senders are ``expected`` (a walsender is in catchup for a moment before streaming)."""
    deadline = time.monotonic() + timeout
    while senders(primary) != expected:
        assert time.monotonic() < deadline, f"the primary's senders: {senders(primary)}, not {expected}"
        time.sleep(0.2)


def test_a_replica_from_the_repository_catches_up_through_the_archive_and_streams_through_its_slot(
        site: Site, cli: CliRunner) -> None:
    backup = _backup_then_more(site, cli)
    create_slot(site.cluster, "replica1")
    pgdata = site.restore_dir("replica")
    result = cli(site.config, "restore", "main", "--pgdata", str(pgdata), "--standby",
                 "--primary-conninfo", _primary_conninfo(site, "replica1"), "--slot", "replica1",
                 "--start", "--port", str(free_port()), "-o", "json")
    assert result.code == 0, result.stderr
    restored = json.loads(result.stdout)
    replica = adopt_running(site.cluster.binaries, pgdata)
    try:
        assert restored["backup"] == backup
        assert json_contract.check("restore", restored) == 2  # the restore and its standby object
        assert restored["standby"] == {"mode": "streaming", "primary": f"127.0.0.1:{site.cluster.port}",
                                       "primary_conninfo": _primary_conninfo(site, "replica1"),
                                       "slot": "replica1", "recovery_target_timeline": "latest"}
        recovery = restored["recovery"]
        assert recovery["state"] == "running as a standby", recovery
        streaming = recovery["streaming"]
        assert (streaming["state"], streaming["sender"], streaming["slot"], streaming["timeline"]) == \
            ("streaming", f"127.0.0.1:{site.cluster.port}", "replica1", 1), streaming
        assert (pgdata / "standby.signal").exists() and not (pgdata / "recovery.signal").exists()
        # The primary sees it, through the slot; what it wrote before and after the restore is on the replica.
        _wait_sender(site.cluster, [("replica1", "streaming", "replica1")])
        _mark(site, 3, "after")
        wait_replayed(site.cluster, replica)
        assert query(replica, "SELECT pg_is_in_recovery()") == [(True,)]
        assert batches(replica) == ["after", "archived", "unarchived"]
    finally:
        replica.stop()


def test_an_archive_only_standby_replays_the_archive_and_stays_in_recovery(site: Site, cli: CliRunner) -> None:
    backup = _backup_then_more(site, cli)
    pgdata = site.restore_dir("standby")
    result = cli(site.config, "restore", "main", "--pgdata", str(pgdata), "--standby", "--start",
                 "--port", str(free_port()))
    assert result.code == 0, result.stderr
    assert f"backup:       {backup}" in result.stdout
    assert "timeline:     1" in result.stdout
    assert "standby:      archive-only standby (restore_command from the repository, " \
           "recovery_target_timeline = 'latest')" in result.stdout, result.stdout
    assert "server running as a standby" in result.stdout
    replica = adopt_running(site.cluster.binaries, pgdata)
    try:
        assert query(replica, "SELECT pg_is_in_recovery(), (SELECT count(*) FROM pg_stat_wal_receiver)") == \
            [(True, 0)]
        assert batches(replica) == ["archived"]  # the unarchived row exists only on the primary
        assert senders(site.cluster) == []
        # It keeps following the archive: the next archived segment is replayed too.
        site.archived_now(cli)
        _wait_for(replica, "unarchived")
        assert query(replica, "SELECT pg_is_in_recovery()") == [(True,)]
    finally:
        replica.stop()


def test_a_standby_whose_slot_is_missing_on_the_primary_fails_at_once_and_is_left_running(
        site: Site, cli: CliRunner) -> None:
    _backup_then_more(site, cli)
    pgdata = site.restore_dir("replica")
    clock = time.monotonic()
    result = cli(site.config, "restore", "main", "--pgdata", str(pgdata), "--standby",
                 "--primary-conninfo", _primary_conninfo(site, "replica1"), "--slot", "nosuch",
                 "--start", "--port", str(free_port()))
    took = time.monotonic() - clock
    assert result.code == 1, result.stdout + result.stderr
    line = result.error_line
    assert f"the standby does not stream from 127.0.0.1:{site.cluster.port}" in line, line
    assert 'replication slot "nosuch" does not exist' in line, line
    assert "it is left running" in line, line
    assert took < STREAM_WAIT_SECONDS, took  # known at the WAL receiver's first refusal, not after the wait
    replica = adopt_running(site.cluster.binaries, pgdata)
    try:
        assert query(replica, "SELECT pg_is_in_recovery()") == [(True,)]
        assert batches(replica) == ["archived"]  # it replayed the archive; only streaming failed
        assert senders(site.cluster) == []
    finally:
        replica.stop()


def test_without_start_the_standby_settings_are_written_and_win_over_the_backups_own(site: Site,
                                                                                     cli: CliRunner) -> None:
    # A backup of a server that had a primary_conninfo of its own (taken from a standby, or an ALTER SYSTEM).
    site.sql("ALTER SYSTEM SET primary_conninfo = 'host=elsewhere.invalid'")
    site.sql("ALTER SYSTEM SET primary_slot_name = 'old_slot'")
    _backup_then_more(site, cli)
    effective = {}
    for name, conninfo in (("archive-only", None), ("streaming", _primary_conninfo(site, "r2"))):
        pgdata = site.restore_dir(name)
        args = ["--primary-conninfo", conninfo] if conninfo else []
        result = cli(site.config, "restore", "main", "--pgdata", str(pgdata), "--standby", *args)
        assert result.code == 0, result.stderr
        assert (pgdata / "standby.signal").exists() and not (pgdata / "postmaster.pid").exists()
        effective[name] = {setting: effective_setting(site.cluster.binaries, pgdata, setting) for setting in
                           ("primary_conninfo", "primary_slot_name", "recovery_target_timeline", "restore_command",
                            "recovery_target_time", "archive_mode")}
        line = ("standby:      archive-only standby" if conninfo is None else
                f"standby:      streaming from 127.0.0.1:{site.cluster.port} (no slot) once started")
        assert line in result.stdout, result.stdout
    assert effective["archive-only"]["primary_conninfo"] == ""
    assert effective["archive-only"]["primary_slot_name"] == "old_slot"  # unused without a conninfo
    assert effective["streaming"]["primary_conninfo"] == _primary_conninfo(site, "r2")
    assert effective["streaming"]["primary_slot_name"] == ""
    for values in effective.values():
        assert values["recovery_target_timeline"] == "latest"
        assert "wal-fetch" in values["restore_command"] and values["recovery_target_time"] == ""
        assert values["archive_mode"] == "off"


def test_bad_standby_combinations_exit_2_with_one_line(site: Site, cli: CliRunner, tmp_path: Path) -> None:
    init_and_backup(site, cli)
    logical = backup_id(cli(site.config, "backup", "main", "--type", "logical", "-o", "json"))
    pgdata = str(site.restore_dir("replica"))
    conninfo = _primary_conninfo(site, "r")
    cases = [
        (["main", "--standby", "--target-time", "2026-01-01 00:00:00"], "--standby takes no recovery target "
                                                                         "(--target-time)"),
        (["main", "--standby", "--target-lsn", "0/3000000"], "--standby takes no recovery target (--target-lsn)"),
        (["main", "--standby", "--target-xid", "1234"], "--standby takes no recovery target (--target-xid)"),
        (["main", "--standby", "--target", "immediate"], "--standby takes no recovery target (--target immediate)"),
        (["main", "--standby", "--target-action", "promote"], "--standby takes no --target-action"),
        (["main", "--standby", "--slot", "s1"], "--slot needs --primary-conninfo"),
        (["main", "--standby", "--primary-conninfo", "host=127.0.0.1 port"],
         "--primary-conninfo is not a connection string libpq accepts: missing \"=\" after \"port\""),
        (["main", "--standby", "--primary-conninfo", "nosuchkey=1"],
         "--primary-conninfo is not a connection string libpq accepts: invalid connection option \"nosuchkey\""),
        (["main", "--standby", "--primary-conninfo", conninfo, "--slot", "Bad-Slot"],
         "--slot 'Bad-Slot' is not a replication slot name"),
        (["main", "--primary-conninfo", conninfo], "--primary-conninfo and --slot are for a replica: add --standby"),
        ([logical, "--standby"], f"--standby builds a replica from a physical backup: {logical} is a logical backup"),
    ]
    for args, message in cases:
        result = cli(site.config, "restore", *args, "--pgdata", pgdata)
        assert result.code == 2, (args, result.stdout, result.stderr)
        assert message in result.error_line, (args, result.error_line)
    assert not Path(pgdata).exists()  # refused before anything was written

    sqlite_config = tmp_path / "sqlite.toml"
    write_toml(sqlite_config, {"repository": {"type": "local", "path": str(tmp_path / "repo")},
                               "sources": {"dev": {"kind": "sqlite", "path": str(tmp_path / "dev.sqlite3")}}})
    result = cli(sqlite_config, "restore", "dev", "--standby", "--pgdata", pgdata)
    assert result.code == 2, result.stderr
    assert "--standby builds a PostgreSQL replica: dev is a sqlite source" in result.error_line
