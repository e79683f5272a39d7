"""Which timeline production is on, on real PostgreSQL: a promoted side copy that pushed its timeline into
production's source, and a real failover to a streaming standby. (The pure judgement over several tree shapes:
unit/test_timelines.py.)
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

from backupctl.postgres.cluster import ScratchCluster
from tests.support.cli import CliRunner, backup_id
from tests.support.pg_site import Site, batches, init_and_backup, restore_and_start


def _timeline_rows(site: Site, cli: CliRunner) -> dict[int, dict[str, Any]]:
    rows = json.loads(cli(site.config, "wal", "status", "main", "-o", "json").stdout)
    return {row["timeline"]: row for row in rows}


def _wait_for(site: Site, cli: CliRunner, what: str, ready: Callable[[dict[int, dict[str, Any]]], bool]) -> None:
    """Poll `wal status` until the archive shows ``what`` (the server's archiver works on its own)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ready(_timeline_rows(site, cli)):
            return
        time.sleep(0.3)
    raise AssertionError(f"the archive never showed {what}: {_timeline_rows(site, cli)}")


def _history_archived(site: Site, timeline: int) -> bool:
    return any((site.root / "repo" / "main" / "wal").glob(f"{timeline:08X}.history-*"))


def _point_config_at(site: Site, port: int) -> None:
    """After a failover the config names the new primary (as an operator would change it)."""
    text = site.config.read_text()
    site.config.write_text(re.sub(r"port = \d+\n", f"port = {port}\n", text, count=1))


def _json(result: Any) -> Any:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _side_copy(site: Site, cli: CliRunner) -> None:
    """A copy restored beside production and promoted, with production's archive_command: its timeline 2
    lands in production's source, while production goes on committing and archiving on timeline 1."""
    init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    site.archived_now(cli)
    # The copy keeps production's archive_command: its timeline 2 lands in production's source.
    copy, _ = restore_and_start(site, cli, "copy", archive=True)
    try:
        with copy.connect() as conn:
            conn.execute("INSERT INTO marks (id, batch) VALUES (2, 'copy')")
            conn.execute("SELECT pg_switch_wal()")
        _wait_for(site, cli, "the copy's timeline 2", lambda rows: rows.get(2, {}).get("segments", 0) > 0)
        assert _history_archived(site, 2)
    finally:
        copy.remove()
    # Production has archived nothing since the copy forked: the archive alone takes timeline 2 for
    # production, and only production's server, asked by check, can tell it is a copy's.
    check = cli(site.config, "check", "main")
    assert check.code == 2, check.stdout
    assert "the server writes timeline 1, but restores would follow timeline 2" in check.stdout
    assert "forget-timeline 2 --source main" in check.stdout
    for number in (3, 4):
        site.sql(f"INSERT INTO marks (id, batch) VALUES ({number}, 'production')")
        site.archived_now(cli)


def test_a_promoted_copy_archiving_into_the_source_does_not_steer_restores_and_can_be_forgotten(
        site: Site, cli: CliRunner) -> None:
    _side_copy(site, cli)
    plan = _json(cli(site.config, "restore", "main", "--dry-run", "-o", "json"))
    assert plan["timeline"] == 1 and plan["timelines"]["production"] == 1
    assert plan["timelines"]["branches"] == [2]
    assert any("forget-timeline 2" in note for note in plan["notes"])
    status = _json(cli(site.config, "status", "main", "-o", "json"))[0]
    assert status["timelines"]["production"] == 1 and status["window"]["timeline"] == 1
    check = cli(site.config, "check", "main")
    assert check.code == 1 and "backupctl wal forget-timeline 2 --source main" in check.stdout, check.stdout
    drilled = _json(cli(site.config, "drill", "run", "main", "-o", "json"))
    planned = next(c["detail"] for c in drilled["checks"] if c["name"] == "plan")
    assert drilled["status"] == "passed" and "on timeline 1;" in planned and "timeline 2" in planned, planned

    restored, plan = restore_and_start(site, cli, "after_copy")
    try:
        assert plan["timeline"] == 1
        assert batches(restored) == ["a", "production"]  # production's last rows, not the copy's
        settings = (restored.datadir / "postgresql.auto.conf").read_text()
        assert "recovery_target_timeline = '1'" in settings
    finally:
        restored.remove()

    refused = cli(site.config, "wal", "forget-timeline", "1", "--source", "main")
    assert refused.code == 2 and "cannot be forgotten" in refused.error_line
    preview = _json(cli(site.config, "wal", "forget-timeline", "2", "--source", "main", "--dry-run", "-o", "json"))[0]
    assert preview["history_files"] == ["00000002.history"] and preview["wal_files"] > 0
    assert _history_archived(site, 2)  # a dry run removes nothing
    done = _json(cli(site.config, "wal", "forget-timeline", "2", "--source", "main", "-o", "json"))[0]
    assert done["timelines"] == [2] and done["wal_files"] == preview["wal_files"]
    assert 2 not in _timeline_rows(site, cli) and not _history_archived(site, 2)
    check = cli(site.config, "check", "main")
    assert check.code == 0, check.stdout
    again = _json(cli(site.config, "restore", "main", "--dry-run", "-o", "json"))
    assert again["timeline"] == 1 and not any("timeline 2" in note for note in again["notes"])


def test_after_expire_the_copys_history_file_neither_blocks_restores_nor_keeps_check_critical(
        site: Site, cli: CliRunner) -> None:
    _side_copy(site, cli)
    newer = backup_id(cli(site.config, "backup", "main", "--type", "full", "-o", "json"))
    site.sql("INSERT INTO marks (id, batch) VALUES (5, 'production')")
    site.archived_now(cli)
    site.config.write_text(site.config.read_text() + "\n[sources.main.retention]\nkeep_last = 1\n")
    expired = cli(site.config, "expire", "main")
    assert expired.code == 0, expired.stderr
    assert _history_archived(site, 2) and _timeline_rows(site, cli).get(2, {}).get("segments", 0) == 0

    plan = _json(cli(site.config, "restore", "main", "--dry-run", "-o", "json"))
    assert (plan["backup"], plan["timeline"]) == (newer, 1)
    check = cli(site.config, "check", "main")
    assert check.code == 1 and "forget-timeline 2" in check.stdout, check.stdout
    done = _json(cli(site.config, "wal", "forget-timeline", "2", "--source", "main", "-o", "json"))[0]
    assert done["history_files"] == ["00000002.history"] and done["wal_files"] == 0
    assert cli(site.config, "check", "main").code == 0


def test_a_failover_to_a_streaming_standby_is_followed_and_the_old_primarys_last_segments_are_not(
        site: Site, cli: CliRunner) -> None:
    init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'before')")
    site.archived_now(cli)
    standby_dir = site.root / "standby"
    port = site.cluster.port
    basebackup = subprocess.run([site.cluster.binaries.path("pg_basebackup"), "-h", "127.0.0.1", "-p", str(port),
                                 "-U", "postgres", "-D", str(standby_dir), "-R", "-X", "stream", "-c", "fast"],
                                capture_output=True, text=True, check=False)
    assert basebackup.returncode == 0, basebackup.stderr
    standby = ScratchCluster.adopt(site.cluster.binaries, standby_dir, remove_datadir=True, settings=site.settings)
    try:
        standby.start(timeout=120)
        site.sql("INSERT INTO marks (id, batch) VALUES (2, 'replicated')")
        lsn = site.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        deadline = time.monotonic() + 120
        with standby.connect() as conn:
            while conn.execute(f"SELECT pg_last_wal_replay_lsn() < '{lsn}'").fetchone()[0]:
                assert time.monotonic() < deadline, "the standby never caught up"
                time.sleep(0.2)
            assert conn.execute("SELECT pg_promote()").fetchone()[0] is True
            conn.execute("INSERT INTO marks (id, batch) VALUES (3, 'after failover')")
        deadline = time.monotonic() + 120
        while not _history_archived(site, 2):
            assert time.monotonic() < deadline, "the new primary never archived its history file"
            time.sleep(0.2)
        # The old primary, not yet fenced, writes and archives past the fork; then it stops for good.
        site.sql("INSERT INTO marks (id, batch) VALUES (4, 'lost')")
        site.archived_now(cli)
        site.archived_now(cli)
        site.cluster.stop()
        _point_config_at(site, standby.port)
        with standby.connect() as conn:
            conn.execute("INSERT INTO marks (id, batch) VALUES (5, 'after failover')")
        site.archived_now(cli)
        site.archived_now(cli)

        plan = _json(cli(site.config, "restore", "main", "--dry-run", "-o", "json"))
        assert plan["timeline"] == 2 and plan["timelines"]["production"] == 2
        assert plan["timelines"]["abandoned"] == [1] and plan["timelines"]["branches"] == []
        assert any("a failover's old primary" in note for note in plan["notes"]), plan["notes"]
        status = _json(cli(site.config, "status", "main", "-o", "json"))[0]
        assert status["timelines"]["production"] == 2
        (check,) = _json(cli(site.config, "check", "main", "-o", "json"))
        timelines = [f for f in check["findings"] if f["check"] == "timelines"]
        assert [(f["state"], f["message"]) for f in timelines] == [("OK", "production on timeline 2")]

        restored, plan = restore_and_start(site, cli, "after_failover")
        try:
            assert plan["timeline"] == 2
            with restored.connect() as conn:
                rows = conn.execute("SELECT id, batch FROM marks ORDER BY id").fetchall()
            assert rows == [(1, "before"), (2, "replicated"), (3, "after failover"), (5, "after failover")]
        finally:
            restored.remove()
    finally:
        standby.remove()
