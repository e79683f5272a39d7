"""The retention policy on generated catalogs (hypothesis): restic's GFS semantics, what is always kept,
incremental chains, the recovery window and the WAL each retained backup replays, and a stable plan.

The references below are written from the documentation (restic `forget`, the issue's WAL rules), not
from retention.py: "the newest backup of each of the last N days that have one, plus the oldest backup
while a rule has counts left"; "a retained backup needs every archived file from its start along the
history of each timeline it can reach".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backupctl.core.config import RetentionConfig
from backupctl.repo.catalog import Manifest, iso, parse_iso
from backupctl.services.retention import RetentionPlan, WalInventory, plan_retention, protections
from backupctl.wal.listing import ArchivedWal
from backupctl.wal.names import format_lsn, history_name, parse_lsn, parse_wal_name, segment_name

SIZE = 16 * 1024**2
EPOCH = datetime(2025, 12, 20, 5, 0, tzinfo=UTC)
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
LETTER = {"full": "F", "incr": "I", "logical": "L", "sqlite": "S"}
FAMILY = {"full": "physical", "incr": "physical", "logical": "logical", "sqlite": "sqlite"}
BUCKETS: dict[str, Callable[[datetime], object]] = {
    "keep_daily": lambda t: t.date(),
    "keep_weekly": lambda t: t.isocalendar()[:2],
    "keep_monthly": lambda t: (t.year, t.month),
    "keep_yearly": lambda t: t.year,
}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def manifest(number: int, backup_type: str, finished: datetime, parent: str | None = None,
             extra: dict | None = None) -> Manifest:
    stamp = finished.strftime("%Y%m%dT%H%M%S") + f"{finished.microsecond // 1000:03d}Z"
    return Manifest(id=f"{stamp}-{LETTER[backup_type]}-{number:03d}", source="main",
                    kind="sqlite" if backup_type == "sqlite" else "postgres", type=backup_type,
                    started_at=iso(finished - timedelta(minutes=1)), finished_at=iso(finished), objects=[],
                    encryption=None, parent=parent, extra=extra or {})


# --- strategies ------------------------------------------------------------------------------------------


@st.composite
def catalogs(draw: st.DrawFn, types: tuple[str, ...] = ("full", "logical", "sqlite")) -> list[Manifest]:
    """Backups at irregular times: several a day, then gaps of days or weeks, over up to two years."""
    gaps = draw(st.lists(st.one_of(st.integers(1, 600), st.integers(600, 3 * 1440), st.integers(1440, 40 * 1440)),
                         min_size=1, max_size=60))
    moment, result = EPOCH, []
    for number, gap in enumerate(gaps):
        moment += timedelta(minutes=gap)
        result.append(manifest(number, draw(st.sampled_from(types)), moment))
    return result


policies = st.builds(
    RetentionConfig,
    keep_last=st.none() | st.integers(0, 6),
    keep_daily=st.none() | st.integers(0, 10),
    keep_weekly=st.none() | st.integers(0, 6),
    keep_monthly=st.none() | st.integers(0, 14),
    keep_yearly=st.none() | st.integers(0, 3),
    keep_within=st.none() | st.sampled_from([3600.0, 86400.0, 14 * 86400.0]),
    timezone=st.sampled_from(ZONES),
)


def kept_by(plan: RetentionPlan, rule: str) -> set[str]:
    return {d.manifest.id for d in plan.decisions if any(r.startswith(rule + " ") for r in d.rules)}


def reference_gfs(group: list[Manifest], policy: RetentionConfig, rule: str) -> set[str]:
    """restic's documented semantics on one family (newest first)."""
    zone = ZoneInfo(policy.timezone)
    count = getattr(policy, rule) or 0
    if rule == "keep_last":
        return {m.id for m in group[:count]}
    if rule == "keep_within":
        if not policy.keep_within:
            return set()
        newest = parse_iso(group[0].finished_at)
        return {m.id for m in group if parse_iso(m.finished_at) > newest - timedelta(seconds=policy.keep_within)}
    newest_of: dict[object, str] = {}
    for m in group:
        newest_of.setdefault(BUCKETS[rule](parse_iso(m.finished_at).astimezone(zone)), m.id)
    periods = list(newest_of)[:count]  # insertion order: newest period first
    kept = {newest_of[p] for p in periods}
    if count and len(newest_of) < count:
        kept.add(group[-1].id)  # the oldest, while the rule has counts left
    return kept


# --- backups ---------------------------------------------------------------------------------------------


@FAST
@given(catalogs(), policies)
def test_gfs_keeps_what_restic_documents(backups: list[Manifest], policy: RetentionConfig) -> None:
    plan = plan_retention("main", backups, policy, EPOCH + timedelta(days=800))
    for family in ("physical", "logical", "sqlite"):
        group = sorted((m for m in backups if FAMILY[m.type] == family), key=lambda m: m.finished_at, reverse=True)
        ids = {m.id for m in group}
        for rule in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within"):
            expected = reference_gfs(group, policy, rule) if group else set()
            assert kept_by(plan, rule) & ids == expected, (family, rule)
    for decision in plan.decisions:  # kept exactly when some rule keeps it
        assert decision.keep == bool(decision.rules)


def test_gfs_example_days_that_have_a_backup() -> None:
    """restic's own example: keep_daily counts days with backups, not calendar days."""
    days = [EPOCH + timedelta(days=d, hours=h) for d, h in ((0, 1), (0, 9), (3, 2), (10, 4), (10, 6), (11, 1))]
    backups = [manifest(n, "sqlite", moment) for n, moment in enumerate(days)]
    plan = plan_retention("main", backups, RetentionConfig(keep_daily=3), days[-1])
    kept = [d.manifest.finished_at[:16] for d in plan.decisions if d.keep]
    assert kept == ["2025-12-31T06:00", "2025-12-30T11:00", "2025-12-23T07:00"]
    plan = plan_retention("main", backups, RetentionConfig(keep_daily=9), days[-1])
    oldest = next(d for d in plan.decisions if d.manifest is backups[0])
    assert oldest.rules == ["keep_daily 2025-12-20 (oldest backup)"]


def test_daily_boundaries_follow_the_time_zone() -> None:
    # 23:30 and 00:30 UTC are two days in UTC but one (08:30 and 09:30) in Tokyo.
    first, second = EPOCH.replace(hour=23, minute=30), EPOCH.replace(hour=23, minute=30) + timedelta(hours=1)
    backups = [manifest(0, "sqlite", first), manifest(1, "sqlite", second)]
    utc = plan_retention("main", backups, RetentionConfig(keep_daily=2), second)
    tokyo = plan_retention("main", backups, RetentionConfig(keep_daily=1, timezone="Asia/Tokyo"), second)
    assert [d.keep for d in utc.decisions] == [True, True]
    assert [d.keep for d in tokyo.decisions] == [True, False]


@FAST
@given(catalogs(), policies, st.data())
def test_pinned_held_and_newest_of_each_type_are_never_removed(backups: list[Manifest], policy: RetentionConfig,
                                                               data: st.DataObject) -> None:
    pinned = data.draw(st.sets(st.sampled_from([m.id for m in backups])))
    held = data.draw(st.sets(st.sampled_from([m.id for m in backups])))
    plan = plan_retention("main", backups, policy, EPOCH + timedelta(days=800),
                          pins={b: "legal hold" for b in pinned}, held={b: "restore on h pid 1" for b in held})
    kept = {m.id for m in plan.kept}
    assert pinned | held <= kept
    for backup_type in {m.type for m in backups}:
        newest = max((m for m in backups if m.type == backup_type), key=lambda m: (m.finished_at, m.id))
        assert newest.id in kept
    for decision in plan.decisions:
        if decision.manifest.id in pinned:
            assert "pinned: legal hold" in decision.rules


@FAST
@given(st.lists(st.tuples(st.integers(30, 3 * 1440), st.booleans()), min_size=1, max_size=40), policies)
def test_a_kept_incremental_keeps_its_whole_chain(steps: list[tuple[int, bool]], policy: RetentionConfig) -> None:
    moment, backups = EPOCH, []
    for number, (gap, incremental) in enumerate(steps):
        moment += timedelta(minutes=gap)
        parent = backups[-1].id if incremental and backups else None
        backups.append(manifest(number, "incr" if parent else "full", moment, parent))
    plan = plan_retention("main", backups, policy, moment)
    kept = {m.id for m in plan.kept}
    by_id = {m.id: m for m in backups}
    for backup_id in kept:
        parent = by_id[backup_id].parent
        if parent:
            assert parent in kept
            assert f"parent of {backup_id}" in next(d.rules for d in plan.decisions if d.manifest.id == parent)


@FAST
@given(catalogs(), policies)
def test_expire_twice_removes_nothing_the_second_time(backups: list[Manifest], policy: RetentionConfig) -> None:
    now = EPOCH + timedelta(days=800)
    first = plan_retention("main", backups, policy, now)
    second = plan_retention("main", first.kept, policy, now)
    assert second.removed == []


# --- physical backups and WAL ----------------------------------------------------------------------------


@dataclass
class Cluster:
    """A generated cluster life: archived WAL per timeline, timeline histories, physical backups."""

    files: dict[tuple[int, str], datetime] = field(default_factory=dict)  # (timeline, file name) -> archived at
    histories: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    backups: list[Manifest] = field(default_factory=list)
    now: datetime = EPOCH

    @staticmethod
    def key(name: str) -> str:
        return f"main/wal/{name[:16]}/{name}-{'0' * 64}.zst"

    def archive(self, tli: int, segno: int, suffix: str = "") -> None:
        self.now += timedelta(minutes=3)
        self.files[(tli, segment_name(tli, segno, SIZE) + suffix)] = self.now

    def inventory(self, removed: frozenset[str] | set[str] = frozenset()) -> WalInventory:
        objects = []
        for (_tli, name), when in sorted(self.files.items()):
            if self.key(name) not in removed:
                objects.append(ArchivedWal(parse_wal_name(name), self.key(name), "0" * 64, "zstd", False, 1000, when))
        for tli in self.histories:
            name = history_name(tli)
            objects.append(ArchivedWal(parse_wal_name(name), f"main/wal/{name}-{'0' * 64}.zst", "0" * 64, "zstd",
                                       False, 100, EPOCH))
        return WalInventory(objects, dict(self.histories), SIZE, "main")


@st.composite
def cluster_lives(draw: st.DrawFn) -> Cluster:
    """Work, backups (full or incremental), failovers (a new timeline takes over mid-segment) and test
    restores that branch off at an earlier point and archive a few segments of their own."""
    c = Cluster()
    current, pos = 1, 3 * SIZE
    for segno in range(3):
        c.archive(1, segno)
    for number in range(draw(st.integers(2, 30))):
        c.now += timedelta(hours=draw(st.integers(1, 60)))
        event = draw(st.sampled_from(["work", "work", "backup", "backup", "failover", "branch"]))
        if event == "work":
            for _ in range(draw(st.integers(1, 4))):
                c.archive(current, pos // SIZE)
                pos += SIZE
        elif event == "backup":
            start, stop = pos + 0x28, pos + 0x2000
            physical = list(c.backups)
            incremental = bool(physical) and draw(st.booleans())
            extra = {"timeline": current, "start_lsn": format_lsn(start), "stop_lsn": format_lsn(stop),
                     "wal_segment_size": SIZE, "system_identifier": "7"}
            c.archive(current, pos // SIZE)
            c.backups.append(manifest(number, "incr" if incremental else "full", c.now,
                                      physical[-1].id if incremental else None, extra))
            pos += SIZE
        else:
            new = max([1, *c.histories]) + 1
            begin = c.histories[current][-1][1] if current > 1 else 0  # where the current timeline began
            if event == "failover":
                fork = pos + 0x3000
                c.archive(current, pos // SIZE, ".partial")
            elif pos // SIZE - 1 >= begin // SIZE + 1:
                fork = draw(st.integers(begin // SIZE + 1, pos // SIZE - 1)) * SIZE + 0x100
            else:
                continue
            c.histories[new] = [*c.histories.get(current, []), (current, fork)]
            if event == "branch":
                for segno in range(fork // SIZE, fork // SIZE + draw(st.integers(1, 3))):
                    c.archive(new, segno)
            else:
                current = new
    return c


def path_of(c: Cluster, timeline: int) -> list[tuple[int, int, int | None]]:
    history = c.histories.get(timeline, [])
    bounds = [0] + [switch for _, switch in history]
    return [(tli, bounds[i], switch) for i, (tli, switch) in enumerate(history)] + [(timeline, bounds[-1], None)]


def reaches(c: Cluster, m: Manifest, timeline: int) -> bool:
    for tli, _begin, switch in path_of(c, timeline):
        if tli == m.extra["timeline"]:
            return switch is None or parse_lsn(m.extra["stop_lsn"]) <= switch
    return False


def replayed(c: Cluster, m: Manifest, timeline: int) -> set[tuple[int, str]]:
    """Archived files a restore of ``m`` along ``timeline`` reads, to the end of that timeline."""
    start = parse_lsn(m.extra["start_lsn"])
    wanted = set()
    for tli, begin, switch in path_of(c, timeline):
        for (on, name), _when in c.files.items():
            segno = parse_wal_name(name).segno(SIZE)
            if on == tli and segno >= max(start, begin) // SIZE and (switch is None or segno <= (switch - 1) // SIZE):
                wanted.add((on, name))
    return wanted


def timelines(c: Cluster) -> list[int]:
    return sorted({1, *c.histories})


windows = st.sampled_from([None, 3600.0, 2 * 86400.0, 7 * 86400.0, 30 * 86400.0])


@FAST
@given(cluster_lives(), windows, st.integers(0, 3))
def test_every_retained_backup_still_replays_to_the_end_of_every_timeline_it_reaches(
        c: Cluster, window: float | None, keep_last: int) -> None:
    if not c.backups:
        return
    policy = RetentionConfig(keep_last=keep_last, recovery_window=window)
    plan = plan_retention("main", c.backups, policy, c.now, wal=[c.inventory()])
    removed = {key for r in plan.wal_removed for key in r.keys}
    gone = {file for file in c.files if c.key(file[1]) in removed}
    assert not any(".history" in key for key in removed), "history files are never removed"
    for m in plan.kept:
        for tli in timelines(c):
            if reaches(c, m, tli):
                assert not (replayed(c, m, tli) & gone), (m.id, tli)
    # Nothing at or after the oldest retained backup's start on its own timeline is touched.
    for tli in timelines(c):
        starts = [parse_lsn(m.extra["start_lsn"]) // SIZE for m in plan.kept if m.extra["timeline"] == tli]
        if starts:
            assert not any(on == tli and parse_wal_name(name).segno(SIZE) >= min(starts) for on, name in gone)


@FAST
@given(cluster_lives(), st.sampled_from([3600.0, 2 * 86400.0, 7 * 86400.0, 30 * 86400.0]))
def test_the_recovery_window_stays_restorable_on_every_live_timeline(c: Cluster, window: float) -> None:
    if not c.backups:
        return
    plan = plan_retention("main", c.backups, RetentionConfig(recovery_window=window), c.now, wal=[c.inventory()])
    start = c.now - timedelta(seconds=window)
    live = {tli for (tli, _name), when in c.files.items() if when >= start} | {max(timelines(c))}
    for tli in live:
        before = [m for m in c.backups if reaches(c, m, tli) and parse_iso(m.finished_at) <= start]
        if before:
            assert any(m in plan.kept and parse_iso(m.finished_at) <= start and reaches(c, m, tli)
                       for m in c.backups), f"no backup older than the window reaches timeline {tli}"
        elif any(reaches(c, m, tli) for m in c.backups):
            oldest = min((m for m in c.backups if reaches(c, m, tli)), key=lambda m: m.finished_at)
            assert oldest in plan.kept


SCHEDULE_RULES = ("keep_last ", "keep_daily ", "keep_weekly ", "keep_monthly ", "keep_yearly ", "keep_within ")


@FAST
@given(cluster_lives(), windows, st.integers(0, 3), st.data())
def test_every_rule_either_schedules_or_protects_from_delete(c: Cluster, window: float | None, keep_last: int,
                                                             data: st.DataObject) -> None:
    """`delete` refuses without --force exactly what a non-schedule rule keeps: a rule added later must say
    which it is. Newest, pinned, held, chain and window backups are each protected."""
    if not c.backups:
        return
    ids = [m.id for m in c.backups]
    pinned = data.draw(st.sets(st.sampled_from(ids), max_size=2))
    held = data.draw(st.sets(st.sampled_from(ids), max_size=2))
    policy = RetentionConfig(keep_last=keep_last, keep_daily=2, recovery_window=window)
    plan = plan_retention("main", c.backups, policy, c.now, pins={b: "audit" for b in pinned},
                          held={b: "restore on h pid 1" for b in held}, wal=[c.inventory()])
    newest = {next(m.id for m in sorted(c.backups, key=lambda m: (m.finished_at, m.id), reverse=True)
                   if m.type == t) for t in {m.type for m in c.backups}}
    for d in plan.decisions:
        protected = protections(d.rules)
        assert all(r in protected or r.startswith(SCHEDULE_RULES) for r in d.rules), d.rules
        assert not (set(protected) & {r for r in d.rules if r.startswith(SCHEDULE_RULES)})
        if d.manifest.id in newest | pinned | held or any(r.startswith("recovery_window") for r in d.rules):
            assert protected, d.rules


@FAST
@given(cluster_lives(), windows, st.integers(0, 3))
def test_wal_expiry_is_stable(c: Cluster, window: float | None, keep_last: int) -> None:
    if not c.backups:
        return
    policy = RetentionConfig(keep_last=keep_last, recovery_window=window)
    first = plan_retention("main", c.backups, policy, c.now, wal=[c.inventory()])
    removed = {key for r in first.wal_removed for key in r.keys}
    second = plan_retention("main", first.kept, policy, c.now, wal=[c.inventory(removed)])
    assert second.removed == [] and second.wal_removed == []


def test_wal_before_the_window_backup_goes_and_the_rest_stays() -> None:
    """A worked example: daily full backups, a 2-day window, keep_last 1."""
    c = Cluster()
    for day in range(6):
        c.now = EPOCH + timedelta(days=day)
        start = (day * 4) * SIZE
        c.archive(1, day * 4)
        c.backups.append(manifest(day, "full", c.now, extra={
            "timeline": 1, "start_lsn": format_lsn(start + 0x28), "stop_lsn": format_lsn(start + 0x2000),
            "wal_segment_size": SIZE, "system_identifier": "7"}))
        for segno in range(day * 4 + 1, day * 4 + 4):
            c.archive(1, segno)
    plan = plan_retention("main", c.backups, RetentionConfig(keep_last=1, recovery_window=2 * 86400.0),
                          c.now + timedelta(hours=1), wal=[c.inventory()])
    assert [d.keep for d in plan.decisions] == [True, False, True, False, False, False]
    assert plan.decisions[2].rules == ["recovery_window 2d (timeline 1)"]
    (removed,) = plan.wal_removed
    assert (removed.first, removed.last, removed.segments) == (segment_name(1, 0, SIZE), segment_name(1, 11, SIZE), 12)
    assert [w.to_json()["action"] for w in plan.wal] == ["remove", "keep"]


def test_no_physical_backup_leaves_wal_alone() -> None:
    c = Cluster()
    for segno in range(4):
        c.archive(1, segno)
    backups = [manifest(0, "logical", c.now)]
    plan = plan_retention("main", backups, RetentionConfig(keep_last=1), c.now, wal=[c.inventory()])
    assert plan.wal and all(r.keep for r in plan.wal)
    assert "no physical backup" in plan.wal[0].reason


def test_an_unreadable_history_keeps_that_timelines_wal() -> None:
    c = Cluster()
    for segno in range(6):
        c.archive(1, segno)
    extra = {"timeline": 1, "start_lsn": format_lsn(4 * SIZE + 0x28), "stop_lsn": format_lsn(4 * SIZE + 0x2000),
             "wal_segment_size": SIZE, "system_identifier": "7"}
    c.backups.append(manifest(0, "full", c.now, extra=extra))
    c.archive(2, 2)
    inventory = c.inventory()
    inventory.histories[2] = None
    plan = plan_retention("main", c.backups, RetentionConfig(keep_last=1), c.now, wal=[inventory])
    by_timeline = {r.timeline: r for r in plan.wal if r.keep}
    assert "history file of timeline 2" in by_timeline[2].reason


def test_an_unreadable_history_keeps_every_backup_that_might_lead_to_its_timeline() -> None:
    """Daily fulls, a failover to timeline 2 on day 3: the window's backup is on timeline 1 before the fork.
    With timeline 2's history unreadable, which backups lead there is unknown, so none may go."""
    c = Cluster()
    for day in range(10):
        c.now = EPOCH + timedelta(days=day)
        tli = 1 if day < 3 else 2
        c.archive(tli, day)
        extra = {"timeline": tli, "start_lsn": format_lsn(day * SIZE + 0x28),
                 "stop_lsn": format_lsn(day * SIZE + 0x2000), "wal_segment_size": SIZE, "system_identifier": "7"}
        c.backups.append(manifest(day, "full", c.now, extra=extra))
    c.histories[2] = [(1, 3 * SIZE)]
    policy = RetentionConfig(keep_last=1, recovery_window=5 * 86400)
    readable = plan_retention("main", c.backups, policy, c.now, wal=[c.inventory()])
    assert len(readable.removed) > 0  # the window keeps one backup from before it, not all
    inventory = c.inventory()
    inventory.histories[2] = None
    blind = plan_retention("main", c.backups, policy, c.now, wal=[inventory])
    assert blind.removed == []
    assert all(any("history file is unreadable" in rule for rule in d.rules) for d in blind.decisions)


@pytest.mark.parametrize("rule", ["keep_last", "keep_daily"])
def test_zero_counts_keep_only_the_newest(rule: str) -> None:
    backups = [manifest(n, "sqlite", EPOCH + timedelta(days=n)) for n in range(3)]
    plan = plan_retention("main", backups, RetentionConfig(**{rule: 0}), EPOCH + timedelta(days=3))
    assert [d.rules for d in plan.decisions] == [["newest sqlite"], [], []]


def test_the_window_backup_is_kept_when_archiving_stopped_before_the_window() -> None:
    """Backups kept running but WAL stopped arriving 10 days ago: PITR up to the archive's end stays possible."""
    c = Cluster()
    for day in range(15):
        c.now = EPOCH + timedelta(days=day)
        if day < 5:
            c.archive(1, day * 2)
            c.archive(1, day * 2 + 1)
        extra = {"timeline": 1, "start_lsn": format_lsn(min(day, 4) * 2 * SIZE + 0x28 + day),
                 "stop_lsn": format_lsn(min(day, 4) * 2 * SIZE + 0x2000), "wal_segment_size": SIZE,
                 "system_identifier": "7"}
        c.backups.append(manifest(day, "full", c.now, extra=extra))
    plan = plan_retention("main", c.backups, RetentionConfig(keep_last=1, recovery_window=7 * 86400.0), c.now,
                          wal=[c.inventory()])
    window = [d for d in plan.decisions if any(r.startswith("recovery_window") for r in d.rules)]
    assert [d.manifest.finished_at[:10] for d in window] == ["2025-12-27"]  # the newest before the window


def test_each_epochs_wal_is_governed_by_that_systems_backups() -> None:
    """After pg_upgrade the new system's WAL restarts at the same names in its own stream; expiring the old
    system's backups takes its WAL with them, and never touches the new one's."""
    streams = {}
    backups = []
    for epoch, system in ((1, "7"), (2, "8")):
        c = Cluster(now=EPOCH + timedelta(days=10 * epoch))
        for day in range(3):
            c.archive(1, day * 2)
            start = day * 2 * SIZE
            c.backups.append(manifest(epoch * 10 + day, "full", c.now, extra={
                "timeline": 1, "start_lsn": format_lsn(start + 0x28), "stop_lsn": format_lsn(start + 0x2000),
                "wal_segment_size": SIZE, "system_identifier": system}))
            c.archive(1, day * 2 + 1)
        stream = "main" if epoch == 1 else "main/epochs/2"
        inventory = c.inventory()
        inventory.objects = [replace(o, key=o.key.replace("main/", stream + "/", 1)) for o in inventory.objects]
        streams[epoch] = replace(inventory, stream=stream, system_identifier=system, current=epoch == 2)
        backups += c.backups
    now = EPOCH + timedelta(days=30)
    plan = plan_retention("main", backups, RetentionConfig(keep_last=2), now, wal=list(streams.values()))
    assert [d.manifest.extra["system_identifier"] for d in plan.decisions if d.keep] == ["8", "8"]
    old = [r for r in plan.wal if r.stream == "main"]
    assert [(r.keep, r.segments) for r in old] == [(False, 6)], "the old system's WAL went with its backups"
    new = [(r.keep, r.first, r.segments) for r in plan.wal if r.stream == "main/epochs/2"]
    assert new == [(False, segment_name(1, 0, SIZE), 2), (True, segment_name(1, 2, SIZE), 4)]
    assert all(key.startswith("main/epochs/2/") for r in plan.wal if r.stream != "main" for key in r.keys)
    kept_old = plan_retention("main", backups, RetentionConfig(keep_last=2), now, wal=list(streams.values()),
                              pins={backups[1].id: "audit"})
    old = [(r.keep, r.first) for r in kept_old.wal if r.stream == "main"]
    assert old == [(False, segment_name(1, 0, SIZE)), (True, segment_name(1, 2, SIZE))]
