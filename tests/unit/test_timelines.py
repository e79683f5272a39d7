"""Which timeline production is on: the pure judgement (``backupctl.wal.timelines``) over several tree shapes, and
the recovery settings a plan writes from it. (On real PostgreSQL: integration/test_timelines.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from backupctl.repo.catalog import Manifest
from backupctl.services.pitr import Plan, Target
from backupctl.wal.listing import ArchivedWal
from backupctl.wal.names import history_name, parse_wal_name, segment_name
from backupctl.wal.timelines import Judgement, judge

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
