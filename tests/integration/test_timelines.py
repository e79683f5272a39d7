"""Which timeline production is on: the pure judgement (``backupctl.wal.timelines``) over several tree shapes,
then on real PostgreSQL: a promoted side copy that pushed its timeline into production's source, and a real
failover to a streaming standby.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from backupctl.postgres.cluster import ScratchCluster
from backupctl.repo.catalog import Manifest
from backupctl.services.pitr import Plan, Target
from backupctl.wal.archive import ArchivedWal, history_name, parse_wal_name, segment_name
from backupctl.wal.timelines import Judgement, judge
from tests.integration.test_pitr import Site, _batches, _init_and_backup, _restore
from tests.integration.test_pitr import site as pitr_site  # noqa: F401 - the archiving cluster fixture, as `pitr_site`
from tests.support.cli import CliRunner, backup_id

SIZE = 16 * 1024**2
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def _obj(name: str, minute: float) -> ArchivedWal:
    parsed = parse_wal_name(name)
    return ArchivedWal(parsed, f"main/wal/{parsed.directory}/{name}-x", "0" * 64, "none", False, 1,
                       T0 + timedelta(minutes=minute))


def _seg(timeline: int, segno: int, minute: float, partial: bool = False) -> ArchivedWal:
    return _obj(segment_name(timeline, segno, SIZE) + (".partial" if partial else ""), minute)


def _history(timeline: int, minute: float) -> ArchivedWal:
    return _obj(history_name(timeline), minute)


def _fork(segno: int) -> int:
    """A switch point in the middle of segment ``segno``."""
    return segno * SIZE + 0x28


def _judge(histories: dict[int, list[tuple[int, int]] | None], objects: list[ArchivedWal]) -> Judgement:
    return judge(histories, objects, SIZE)


def test_a_single_timeline_is_production() -> None:
    found = _judge({}, [_seg(1, n, n) for n in range(1, 6)])
    assert found.production == 1 and not found.ambiguous and found.branches() == []
    assert found.notes(1, "main") == []


def test_a_side_copy_whose_parent_kept_archiving_is_a_branch_and_not_followed() -> None:
    objects = [_seg(1, n, n) for n in range(1, 11)]
    objects += [_history(2, 5.2), _seg(2, 5, 5.3), _seg(2, 6, 5.4)]
    found = _judge({2: [(1, _fork(5))]}, objects)
    assert found.production == 1 and not found.ambiguous
    assert [t.timeline for t in found.abandoned] == [2] and found.branches() == [2]
    notes = " ".join(found.notes(1, "main"))
    assert "--target-timeline 2" in notes and "backupctl wal forget-timeline 2 --source main" in notes
    assert "PostgreSQL's 'latest' would follow timeline 2" in notes


def test_the_parents_fork_segment_archived_after_the_copy_was_born_counts_as_going_on() -> None:
    """The copy forked at the start of segment 6; production then filled segment 6 and archived it (and 7)."""
    objects = [_seg(1, n, n) for n in range(1, 6)] + [_history(2, 5.5), _seg(1, 6, 6), _seg(1, 7, 7)]
    found = _judge({2: [(1, 6 * SIZE)]}, objects)
    assert found.production == 1 and found.branches() == [2]


def test_a_failover_follows_the_new_timeline_and_notes_the_old_primarys_last_segments() -> None:
    objects = [_seg(1, n, n) for n in range(1, 6)] + [_seg(1, 6, 5.5)]  # the dying primary's last segment
    objects += [_history(2, 5.1), _seg(1, 5, 5.2, partial=True)] + [_seg(2, n, n + 1) for n in range(5, 10)]
    found = _judge({2: [(1, _fork(5))]}, objects)
    assert found.production == 2 and not found.ambiguous
    assert [t.timeline for t in found.abandoned] == [1] and found.branches() == []
    assert any("a failover's old primary" in note for note in found.notes(2, "main"))


def test_a_clean_failover_leaves_one_tip() -> None:
    """The promoted standby archives the old timeline's last segment as .partial: not a sign it went on."""
    objects = [_seg(1, n, n) for n in range(1, 6)] + [_seg(1, 5, 5.3, partial=True), _history(2, 5.2)]
    objects += [_seg(2, n, n + 1) for n in range(5, 8)]
    found = _judge({2: [(1, _fork(5))]}, objects)
    assert [t.timeline for t in found.tips] == [2] and found.production == 2


def test_two_timelines_still_archiving_are_a_split_brain_with_no_default() -> None:
    objects = [_seg(1, n, n) for n in range(1, 11)]
    objects += [_history(2, 5.2)] + [_seg(2, n, n + 0.5) for n in range(5, 10)]  # interleaved to the end
    found = _judge({2: [(1, _fork(5))]}, objects)
    assert found.ambiguous and found.production is None
    refusal = found.refusal()
    assert "--target-timeline 1" in refusal and "--target-timeline 2" in refusal


def test_a_copy_of_a_copy_is_retired_with_its_branch() -> None:
    objects = [_seg(1, n, n) for n in range(1, 21)]
    objects += [_history(2, 5.2), _seg(2, 5, 5.3), _seg(2, 6, 5.4), _seg(2, 7, 6.5)]
    objects += [_history(3, 6.1), _seg(3, 6, 6.2), _seg(3, 7, 6.3)]
    found = _judge({2: [(1, _fork(5))], 3: [(1, _fork(5)), (2, _fork(6))]}, objects)
    assert found.production == 1
    assert sorted(t.timeline for t in found.abandoned) == [2, 3]
    assert found.branches() == [2] and found.descendants(2) == [3]
    assert any("its descendants 3" in note for note in found.notes(1, "main"))


def test_a_copy_restored_from_before_two_failovers_is_a_branch_off_production_path() -> None:
    objects = [_seg(1, n, n) for n in range(1, 5)] + [_history(2, 4.1)] + [_seg(2, n, n + 0.2) for n in range(4, 8)]
    objects += [_history(3, 8.1)] + [_seg(3, n, n + 1) for n in range(8, 20)]
    objects += [_history(4, 9.5), _seg(4, 6, 9.6), _seg(4, 7, 9.7)]  # restored from timeline 2's past
    histories = {2: [(1, _fork(4))], 3: [(1, _fork(4)), (2, _fork(8))], 4: [(1, _fork(4)), (2, _fork(6))]}
    found = _judge(histories, objects)
    assert found.production == 3 and found.branches() == [4] and found.ancestry(3) == [1, 2, 3]


def test_a_branch_whose_wal_was_expired_leaves_a_history_file_that_does_not_steer() -> None:
    objects = [_history(2, 5.2)] + [_seg(1, n, n) for n in range(8, 12)]
    found = _judge({2: [(1, _fork(5))]}, objects)
    assert found.production == 1 and found.branches() == [2]


def test_a_timeline_without_a_history_file_that_archives_makes_it_ambiguous() -> None:
    objects = [_seg(1, n, n) for n in range(1, 6)] + [_seg(3, 6, 6), _seg(3, 7, 7)]
    found = _judge({3: None}, objects)
    assert found.ambiguous and found.unplaced == [3] and "--target-timeline 3" in found.refusal()


@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6),
       st.integers(min_value=0, max_value=3))
def test_a_chain_of_failovers_always_follows_the_newest_timeline(lengths: list[int], dying: int) -> None:
    """Each failover: the old primary archives ``dying`` segments past the fork before the new one goes on."""
    objects, histories, history = [], {}, []
    segno, minute = 1, 0.0
    for index, length in enumerate(lengths):
        timeline = index + 1
        if timeline > 1:
            fork = _fork(segno)
            history = [*history, (timeline - 1, fork)]
            histories[timeline] = history
            for extra in range(dying):
                objects.append(_seg(timeline - 1, segno + 1 + extra, minute + 0.01 * (extra + 1)))
            minute += 0.1
            objects.append(_history(timeline, minute))
        for _ in range(length + 2):  # the new primary archives at least SETTLED objects
            minute += 1
            objects.append(_seg(timeline, segno, minute))
            segno += 1
    found = _judge(histories, objects)
    assert found.production == len(lengths) and not found.ambiguous and found.branches() == []


def _plan(judged: Judgement, timeline: int, target: Target) -> Plan:
    backup = Manifest(id="20261204T120000000Z-F-abc", source="main", kind="postgres", type="full",
                      started_at="2026-12-04T11:59:00Z", finished_at="2026-12-04T12:00:00Z", objects=[],
                      encryption=None, parent=None, extra={})
    return Plan("main", backup, target, timeline, [], "", "", 0, timelines=judged)


def test_recovery_names_the_timeline_and_only_a_standby_on_the_highest_one_follows_the_next_failover() -> None:
    """'latest' would lead PostgreSQL onto a branch above production; a standby of production with nothing
    above it must still follow production's next promotion, which only 'latest' does."""
    branch = _judge({2: [(1, _fork(5))]}, [_seg(1, n, n) for n in range(1, 11)] + [_history(2, 5.2), _seg(2, 5, 5.3)])
    single = _judge({}, [_seg(1, n, n) for n in range(1, 6)])
    end = Target("end")
    assert _plan(branch, 1, end).recovery_settings("x", standby=True)["recovery_target_timeline"] == "1"
    assert _plan(single, 1, end).recovery_settings("x", standby=False)["recovery_target_timeline"] == "1"
    assert _plan(single, 1, end).recovery_settings("x", standby=True)["recovery_target_timeline"] == "latest"
    pinned = Target("end", timeline="1")
    assert _plan(single, 1, pinned).recovery_settings("x", standby=True)["recovery_target_timeline"] == "1"


# --- on real PostgreSQL --------------------------------------------------------------------------------


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
    _init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    site.archived_now(cli)
    # The copy keeps production's archive_command: its timeline 2 lands in production's source.
    copy, _ = _restore(site, cli, "copy", archive=True)
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
        pitr_site: Site, cli: CliRunner) -> None:  # noqa: F811 - the fixture imported above
    site = pitr_site
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

    restored, plan = _restore(site, cli, "after_copy")
    try:
        assert plan["timeline"] == 1
        assert _batches(restored) == ["a", "production"]  # production's last rows, not the copy's
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
        pitr_site: Site, cli: CliRunner) -> None:  # noqa: F811 - the fixture imported above
    site = pitr_site
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
        pitr_site: Site, cli: CliRunner) -> None:  # noqa: F811 - the fixture imported above
    site = pitr_site
    _init_and_backup(site, cli)
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

        restored, plan = _restore(site, cli, "after_failover")
        try:
            assert plan["timeline"] == 2
            with restored.connect() as conn:
                rows = conn.execute("SELECT id, batch FROM marks ORDER BY id").fetchall()
            assert rows == [(1, "before"), (2, "replicated"), (3, "after failover"), (5, "after failover")]
        finally:
            restored.remove()
    finally:
        standby.remove()
