"""A failover, end to end on real PostgreSQL: the standby is promoted, the old primary comes back as its
standby through pg_rewind, and backups, restores, `wal status`, status and check follow the new timeline.

Real parts: a primary archiving with backupctl's archive_command and a ``pg_basebackup -R`` standby with the
one ``pg-settings`` prints on its own host (its own config and pusher spool). The old primary, not fenced yet,
writes and archives past the fork before it is stopped (a failover's usual mess); pg_rewind then makes it a
standby of the new primary. A drill and check then pass on timeline 2. Run with archive_mode = on on both
(the rewound standby archives nothing) and always (it archives the new timeline's segments, identical to what
the new primary stored).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.cluster import ScratchCluster
from backupctl.wal.conf import restore_command
from tests.support import json_contract
from tests.support.cli import CliRunner, backup_id
from tests.support.pg_replication import (
    host_archive_command,
    pgbench_load,
    promote,
    rewind_as_standby,
    start_standby,
    stop_host_pusher,
    timeline_of,
    wait_replayed,
)
from tests.support.pg_site import (
    QUICK_WAL,
    SOURCE,
    Site,
    archiving_site,
    init_and_backup,
    query,
    restore_and_start,
    wait_archived,
)


def _json(result: Any) -> Any:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def _switch(cluster: ScratchCluster, row: int, batch: str) -> str:
    """Commit a marked row and close the segment; the closed segment's name."""
    query(cluster, f"INSERT INTO marks (id, batch) VALUES ({row}, '{batch}')")
    return str(query(cluster, "SELECT pg_walfile_name(pg_switch_wal())")[0][0])


def _rows(cluster: ScratchCluster) -> list[tuple[int, str]]:
    return [(int(i), str(b)) for i, b in query(cluster, "SELECT id, batch FROM marks ORDER BY id")]


def _archived_segments(site: Site, timeline: int) -> set[str]:
    """The full segments archived on ``timeline`` (the repository's listing)."""
    return {name for name in site.wal_keys() if len(name) == 24 and int(name[:8], 16) == timeline}


def _failed(cluster: ScratchCluster) -> int:
    return int(query(cluster, "SELECT failed_count FROM pg_stat_archiver")[0][0])


@pytest.mark.parametrize("mode", ["on", "always"])
def test_a_failover_with_pg_rewind_keeps_one_archive_that_backs_up_and_restores_both_sides_of_the_fork(
        pg_binaries: PgBinaries, cli: CliRunner, mode: str) -> None:
    settings = {"archive_mode": mode, "max_wal_senders": "4", "wal_log_hints": "on"}
    with archiving_site(pg_binaries, wal=QUICK_WAL, settings=settings, init=False) as site:
        first_backup = init_and_backup(site, cli)  # before the standby: its base backup closes a segment
        new = start_standby(site.cluster, "standby1",
                            {**site.settings, "archive_command": host_archive_command(site, "standby")})
        site.extra.append(new)
        try:
            _run_failover(site, cli, new, mode, first_backup)
        finally:
            stop_host_pusher(site, "standby")


def _run_failover(site: Site, cli: CliRunner, new: ScratchCluster, mode: str, first_backup: str) -> None:
    old = site.cluster
    pgbench_load(old, scale=1, seconds=2)
    query(old, "INSERT INTO marks (id, batch) VALUES (1, 'before')")
    time.sleep(1.1)
    before = str(query(old, "SELECT now()::text")[0][0])
    time.sleep(1.1)
    site.wait_archived(_switch(old, 2, "replicated"))
    # Written and replayed but not switched: the promotion forks in the middle of a segment, whose first part
    # the new primary archives as 0000000100000000000000NN.partial.
    query(old, "INSERT INTO marks (id, batch) VALUES (8, 'replicated')")
    wait_replayed(old, new)

    assert promote(new) == 2
    after_promotion = _switch(new, 3, "after failover")
    wait_archived(new, after_promotion)
    # The old primary, not fenced yet, commits and archives past the fork; then it is stopped for good.
    site.wait_archived(_switch(old, 4, "lost"))
    site.wait_archived(_switch(old, 40, "lost"))
    old.stop()
    site.write_config(new)  # the operator points backupctl at the new primary

    # pg_rewind fetches the old primary's recycled WAL back to the common checkpoint with backupctl's wal-fetch.
    rewind_as_standby(old, new, "old_primary", restore_command=restore_command(site.config, SOURCE))
    assert timeline_of(old) == 2
    archived_as_standby = query(old, "SELECT archived_count FROM pg_stat_archiver")[0][0]
    for row in (5, 6):
        last = _switch(new, row, "after failover")
    wait_archived(new, last)
    wait_replayed(new, old)
    if mode == "always":
        wait_archived(old, last)  # as a standby it archives the new timeline's segments: identical, no conflict
        assert query(old, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0].startswith("00000002")
    else:  # archive_mode = on: a standby archives nothing
        assert query(old, "SELECT archived_count FROM pg_stat_archiver")[0][0] == archived_as_standby
    assert (_failed(new), _failed(old)) == (0, 0)

    after_failover_backup = backup_id(cli(site.config, "backup", SOURCE, "--type", "full", "-o", "json"))
    shown = _json(cli(site.config, "show", after_failover_backup, "-o", "json"))
    assert shown["extra"]["timeline"] == 2, shown["extra"]
    last = _switch(new, 7, "after backup")
    wait_archived(new, last)

    printed = _json(cli(site.config, "wal", "status", SOURCE, "-o", "json"))
    assert json_contract.check("wal status", printed) == 3  # two rows and one fork, as docs/json-output.md says
    rows = {r["timeline"]: r for r in printed}
    assert rows[2]["production"] is True and rows[1]["production"] is False
    fork = rows[2]["fork"]
    assert (fork["kind"], fork["from_timeline"], fork["to_timeline"]) == ("failover", 1, 2), fork
    assert fork["lsn"] and fork["at"] and rows[1]["fork"] is None
    # The promoted standby archived the fork segment's .partial under its own name, beside the full segment the
    # old primary archived as it went on: neither counted as the other.
    assert len(rows[1]["partial"]) == 1 and rows[1]["partial"][0].endswith(".partial"), rows[1]
    assert rows[1]["partial"][0][:24] in _archived_segments(site, 1), rows[1]
    assert [r["duplicates"] for r in rows.values()] == [[], []]
    table = cli(site.config, "wal", "status", SOURCE)
    assert "failover: timeline 1 -> 2 at " + fork["lsn"] in table.stdout, table.stdout
    assert "production on timeline 2" in table.stdout

    verified = _json(cli(site.config, "wal", "verify", SOURCE, "-o", "json"))
    assert [v["problems"] for v in verified] == [[]], verified
    status = _json(cli(site.config, "status", SOURCE, "-o", "json"))[0]
    assert status["timelines"]["production"] == 2
    drill = _json(cli(site.config, "drill", "run", SOURCE, "-o", "json"))
    assert drill["status"] == "passed" and drill["reached"]["timeline"] == 2, drill
    checked = cli(site.config, "check", SOURCE, "-o", "json")
    (check,) = json.loads(checked.stdout)
    bad = [f for f in check["findings"] if f["state"] != "OK"]
    assert checked.code == 0 and bad == [], bad
    assert {f["check"] for f in check["findings"]} >= {"timelines", "wal_age", "backup_age"}

    restored, plan = restore_and_start(site, cli, "before_failover", "--target-time", before)
    try:
        assert plan["backup"] == first_backup
        assert _rows(restored) == [(1, "before")]
    finally:
        restored.remove()
    restored, plan = restore_and_start(site, cli, "after_failover")
    try:
        assert plan["timeline"] == 2 and plan["backup"] == after_failover_backup
        assert _rows(restored) == [(1, "before"), (2, "replicated"), (3, "after failover"), (5, "after failover"),
                                   (6, "after failover"), (7, "after backup"), (8, "replicated")]
        assert timeline_of(restored) == 3  # promoted from timeline 2
    finally:
        restored.remove()
