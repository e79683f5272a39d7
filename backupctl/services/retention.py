"""Retention policy: which backups and which archived WAL a source keeps, decided from the catalog alone.

Pure: no I/O. `expire` gathers the manifests, pins, live readers and the WAL listing, this module decides,
and the same plan is what `expire --dry-run` prints and what the real run executes. `delete` asks the same
plan which of a backup's rules protect it (``protections``) and which incrementals build on it.

Backups: the rules apply to each family of backups separately (physical full + incremental, logical,
SQLite). ``keep_last``/``keep_daily``/``keep_weekly``/``keep_monthly``/``keep_yearly``/``keep_within``
follow restic's documented `forget` semantics: "last N days" means the last N days *that have a backup*,
the newest backup of each such day is kept, the oldest backup is kept too while a rule has counts left,
and ``keep_within`` is measured back from the family's newest backup (so that backups which stopped
running do not make every older one expire). Day, week (ISO), month and year boundaries are those of the
policy's time zone, applied to each backup's finish time. A backup is kept when any rule keeps it; the
newest backup of each type, pinned backups, backups a live reader holds and every ancestor of a kept
incremental are always kept. ``recovery_window`` keeps, for every timeline still archiving within the
window, the newest physical backup that finished before the window began (and can reach that timeline),
so that any moment of the window can be restored; in the live epoch production's timeline (``timelines``:
not merely the highest number) and the highest one count as archiving even when they are quiet.

Clocks: the recovery window is judged on the store's clock alone. ``now`` is the store's (expire reads
it with ``lease.store_now``), archiving is judged by the segments' Last-Modified, and a backup's end by
its ``store_stop_time`` (``finished_at`` for manifests that predate it): a host whose clock is off, the
backup's or the expiring one's, cannot move a backup out of the window. The keep_* buckets and
keep_within use ``finished_at``: they place backups relative to each other, not to "now".

WAL: a retained physical backup needs every segment from its start along the history of each timeline it
can reach (up to each fork, then the branch from the fork on); whatever no retained backup needs is
removed. History files are never removed. A timeline no retained backup reaches is kept while it is still
being archived (a segment newer than the newest retained backup), because a backup of it may be under way.
Each history epoch (a PostgreSQL system: pg_upgrade starts a new one) has its own WAL stream, governed by
the backups of that system alone; an old epoch's WAL goes with its last backup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from backupctl.core.config import RetentionConfig
from backupctl.core.units import format_duration
from backupctl.engines.registry import ENGINES, PHYSICAL_TYPES
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest, parse_iso
from backupctl.wal.listing import ArchivedWal
from backupctl.wal.names import parse_lsn, segment_name, timeline_path
from backupctl.wal.timelines import judge

WAL_KINDS = ("segment", "partial", "backup")  # per-segment files; history files are never removed

_BUCKETS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("keep_daily", lambda t: t.strftime("%Y-%m-%d")),
    ("keep_weekly", lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2])),
    ("keep_monthly", lambda t: t.strftime("%Y-%m")),
    ("keep_yearly", lambda t: t.strftime("%Y")),
)
_RULES = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within",
          "recovery_window")


# The rules that protect a backup from `delete` without --force, as opposed to the schedule rules (keep_last,
# keep_daily, ... keep_within), which only say that expire would not remove it yet: the newest backup of a
# type, a pinned one, one a live reader holds, an ancestor of a kept incremental, and the base of the recovery
# window are each worth a deliberate decision. Every rule above is spelled with one of these prefixes.
PROTECTING = ("newest ", "pinned: ", "read by ", "parent of ", "recovery_window ")


def protections(rules: Iterable[str], going: Iterable[str] = ()) -> list[str]:
    """The rules among ``rules`` (a ``Decision``'s) that protect the backup from `delete` without --force;
    being the parent of a backup in ``going`` (ids deleted together with it) protects nothing."""
    children = {f"parent of {backup_id}" for backup_id in going}
    return [rule for rule in rules if rule.startswith(PROTECTING) and rule not in children]


def descendants(manifests: Iterable[Manifest], backup_id: str) -> list[Manifest]:
    """Every incremental whose chain runs through ``backup_id`` (restoring it needs that backup), newest first."""
    by_id = {m.id: m for m in manifests}
    found = []
    for m in by_id.values():
        ancestor = m.parent
        while ancestor and ancestor != backup_id:
            ancestor = by_id[ancestor].parent if ancestor in by_id else None
        if ancestor == backup_id:
            found.append(m)
    return sorted(found, key=lambda m: (m.finished_at, m.id), reverse=True)


def has_rules(policy: RetentionConfig) -> bool:
    """False for a policy that keeps nothing by itself: expire refuses it rather than remove almost all."""
    return any(getattr(policy, rule) for rule in _RULES)


@dataclass
class Decision:
    """One backup's fate and every rule that keeps it (none: it is removed)."""

    manifest: Manifest
    rules: list[str] = field(default_factory=list)

    @property
    def keep(self) -> bool:
        return bool(self.rules)

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {"id": m.id, "item": "backup", "source": m.source, "type": m.type, "finished_at": m.finished_at,
                "action": "keep" if self.keep else "remove", "rules": self.rules or ["no rule keeps it"],
                "stored_size": m.stored_size}


@dataclass
class WalRange:
    """A run of archived WAL files of one timeline that share a fate."""

    source: str
    stream: str  # where the WAL lives: the source (epoch 1) or <source>/epochs/<N>
    timeline: int
    first: str
    last: str
    segments: int  # distinct segment positions
    stored_size: int
    keep: bool
    reason: str
    keys: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"id": f"{layout.wal_prefix(self.stream)}{self.first}..{self.last}", "item": "wal",
                "source": self.source, "stream": self.stream, "timeline": self.timeline, "first": self.first,
                "last": self.last,
                "segments": self.segments, "stored_size": self.stored_size, "action": "keep" if self.keep else "remove",
                "rules": [self.reason]}


@dataclass
class WalInventory:
    """One history epoch's archived WAL as listed, and each timeline's history (None when unreadable).

    A source has one stream of WAL per PostgreSQL system (after pg_upgrade, a new epoch: see ``epochs``);
    the backups of that system, and only they, govern its WAL.
    """

    objects: list[ArchivedWal]
    histories: dict[int, list[tuple[int, int]] | None]
    segment_size: int
    stream: str  # the source name for epoch 1, <source>/epochs/<N> after it
    system_identifier: str | None = None  # None: every physical backup belongs to this stream
    current: bool = True  # the live server's epoch; an older one is no longer archived


@dataclass
class RetentionPlan:
    """Every backup with keep/remove and its rules, then the WAL ranges to keep and remove."""

    source: str
    now: datetime
    decisions: list[Decision]
    wal: list[WalRange]

    @property
    def removed(self) -> list[Manifest]:
        return [d.manifest for d in self.decisions if not d.keep]

    @property
    def kept(self) -> list[Manifest]:
        return [d.manifest for d in self.decisions if d.keep]

    @property
    def wal_removed(self) -> list[WalRange]:
        return [r for r in self.wal if not r.keep]

    def rows(self) -> list[dict[str, Any]]:
        return [d.to_json() for d in self.decisions] + [r.to_json() for r in self.wal]


def plan_retention(source: str, manifests: list[Manifest], policy: RetentionConfig, now: datetime,
                   pins: dict[str, str] | None = None, held: dict[str, str] | None = None,
                   wal: list[WalInventory] | None = None) -> RetentionPlan:
    """Decide every backup of ``source`` and, given its WAL listing per epoch, the WAL to remove.

    ``pins`` and ``held`` map backup ids to a description (the pin's reason, the reader holding it).
    """
    ordered = sorted(manifests, key=lambda m: (m.finished_at, m.id), reverse=True)
    rules: dict[str, list[str]] = {m.id: [] for m in ordered}
    zone = ZoneInfo(policy.timezone)
    for engine in ENGINES:  # each engine's backups are kept by the rules on their own
        group = [m for m in ordered if m.type in engine.backup_types]
        if group:
            _family_rules(group, policy, zone, rules)
    for backup_type in dict.fromkeys(m.type for m in ordered):
        newest = next(m for m in ordered if m.type == backup_type)
        rules[newest.id].append(f"newest {backup_type}")
    for backup_id, reason in (pins or {}).items():
        if backup_id in rules:
            rules[backup_id].append(f"pinned: {reason}")
    for backup_id, reader in (held or {}).items():
        if backup_id in rules:
            rules[backup_id].append(f"read by {reader}")
    epochs = _by_epoch([m for m in ordered if m.type in PHYSICAL_TYPES], wal or [])
    graphs = [_Timelines(inventory, physical) if physical else None for inventory, physical in epochs]
    if policy.recovery_window:
        for (inventory, physical), graph in zip(epochs, graphs, strict=True):
            if graph is not None:
                _window_rule(physical, graph, now - timedelta(seconds=policy.recovery_window), policy, rules,
                             inventory.current)
    _keep_ancestors(ordered, rules)
    decisions = [Decision(m, rules[m.id]) for m in ordered]
    wal_ranges = [r for (inventory, physical), graph in zip(epochs, graphs, strict=True)
                  for r in _wal_plan(source, inventory, [m for m in physical if rules[m.id]], graph)]
    return RetentionPlan(source, now, decisions, wal_ranges)


def _by_epoch(physical: list[Manifest], inventories: list[WalInventory]) -> list[tuple[WalInventory, list[Manifest]]]:
    """Each epoch's WAL with the physical backups of its system (unmatched ones count as the first's)."""
    members: list[list[Manifest]] = [[] for _ in inventories]
    for m in physical:
        system = str(m.extra.get("system_identifier"))
        index = next((i for i, inv in enumerate(inventories) if inv.system_identifier in (system, None)), 0)
        if inventories:
            members[index].append(m)
    return list(zip(inventories, members, strict=True))


def _family_rules(group: list[Manifest], policy: RetentionConfig, zone: ZoneInfo,
                  rules: dict[str, list[str]]) -> None:
    """restic's bucket walk over one family, newest first."""
    local = [parse_iso(m.finished_at).astimezone(zone) for m in group]
    for index, m in enumerate(group[: policy.keep_last or 0]):
        rules[m.id].append(f"keep_last ({index + 1} of {policy.keep_last})")
    for rule, bucket in _BUCKETS:
        count, last = getattr(policy, rule) or 0, None
        for index, m in enumerate(group):
            if count <= 0:
                break
            value = bucket(local[index])
            oldest = index == len(group) - 1
            if value != last or oldest:
                rules[m.id].append(f"{rule} {value}" + (" (oldest backup)" if value == last else ""))
                last, count = value, count - 1
    if policy.keep_within:
        since = parse_iso(group[0].finished_at) - timedelta(seconds=policy.keep_within)
        for m in group:
            if parse_iso(m.finished_at) > since:
                rules[m.id].append(f"keep_within {format_duration(policy.keep_within)}")


def _keep_ancestors(ordered: list[Manifest], rules: dict[str, list[str]]) -> None:
    """An incremental restores only with its whole chain: a kept one keeps every ancestor."""
    by_id = {m.id: m for m in ordered}
    for m in ordered:
        if not rules[m.id]:
            continue
        child = m
        while child.parent and child.parent in by_id:
            reason = f"parent of {child.id}"
            if reason in rules[child.parent]:
                break
            rules[child.parent].append(reason)
            child = by_id[child.parent]


class _Timelines:
    """Each timeline's ancestry (as pitr walks it), and which backups can reach which timeline."""

    def __init__(self, wal: WalInventory, physical: list[Manifest]) -> None:
        self.size = wal.segment_size
        self.objects = [o for o in wal.objects if o.name.kind in WAL_KINDS]
        timelines = {o.name.timeline for o in wal.objects}  # history files name timelines without WAL yet
        timelines |= {int(m.extra["timeline"]) for m in physical}
        self.paths: dict[int, list[tuple[int, int, int | None]] | None] = {}
        for tli in sorted(timelines):
            history = [] if tli == 1 else wal.histories.get(tli)
            self.paths[tli] = None if history is None else timeline_path(history, tli)
        judged = judge(wal.histories, wal.objects, wal.segment_size)
        # Restore's default timeline (every tip while nobody can tell which one production is on).
        self.production = [judged.production] if judged.production else [t.timeline for t in judged.tips]

    def reaches(self, m: Manifest, timeline: int) -> bool:
        """Whether a restore of ``m`` can follow ``timeline`` (pitr's rule: ``m`` ends before the fork)."""
        path = self.paths.get(timeline)
        if path is None:
            return False
        own = int(m.extra["timeline"])
        for tli, _begin, switch in path:
            if tli == own:
                return switch is None or parse_lsn(m.extra["stop_lsn"]) <= switch
        return False

    def needs(self, m: Manifest, timeline: int) -> list[tuple[int, int, int | None]]:
        """(timeline, first segno, last segno or None) that a restore of ``m`` along ``timeline`` replays."""
        start = parse_lsn(m.extra["start_lsn"])
        ranges = []
        for tli, begin, switch in self.paths[timeline] or []:
            if switch is not None and switch <= start:
                continue
            ranges.append((tli, max(start, begin) // self.size, None if switch is None else (switch - 1) // self.size))
        return ranges


def _window_rule(physical: list[Manifest], graph: _Timelines, window_start: datetime, policy: RetentionConfig,
                 rules: dict[str, list[str]], current: bool) -> None:
    """Keep, per timeline archiving within the window, the newest backup older than the window."""
    window = format_duration(policy.recovery_window or 0)
    for tli in _live_timelines(graph, window_start, current):
        if graph.paths.get(tli) is None:
            # Without the timeline's history nobody can tell which backups lead to it: keep them all.
            for m in physical:
                rules[m.id].append(f"recovery_window {window} (timeline {tli}: its history file is unreadable)")
            continue
        reaching = [m for m in physical if graph.reaches(m, tli)]  # newest first
        before = [m for m in reaching if m.store_stop_time <= window_start]
        if before:
            rules[before[0].id].append(f"recovery_window {window} (timeline {tli})")
        elif reaching:
            rules[reaching[-1].id].append(f"recovery_window {window} (timeline {tli}; the window begins before "
                                          "every backup)")


def _live_timelines(graph: _Timelines, window_start: datetime, current: bool) -> list[int]:
    """Timelines with WAL archived within the window, and in the live epoch always production's (restore's
    default, see ``timelines``) and the highest one (`--target-timeline` may name it), even when archiving
    stopped before the window began: keeping a backup too many is cheap, losing production's is not."""
    live = {o.name.timeline for o in graph.objects if o.modified >= window_start}
    if current:
        live.update([*graph.production, max(graph.paths)])
    return sorted(live)


def _wal_plan(source: str, wal: WalInventory, kept: list[Manifest], graph: _Timelines | None) -> list[WalRange]:
    """Per timeline of one epoch, runs of archived files to keep (with why) and to remove."""
    by_timeline: dict[int, list[ArchivedWal]] = {}
    for obj in wal.objects:
        if obj.name.kind in WAL_KINDS:
            by_timeline.setdefault(obj.name.timeline, []).append(obj)
    for objs in by_timeline.values():
        objs.sort(key=lambda o: (o.name.segno(wal.segment_size), o.name.name, o.key))
    if graph is None:
        reason = "no physical backup of this system: its WAL is not expired without one"
        return [_run(source, wal, tli, objs, True, reason) for tli, objs in sorted(by_timeline.items())]
    needs: dict[int, list[tuple[int, int | None, str]]] = {}
    for m in sorted(kept, key=lambda m: parse_lsn(m.extra["start_lsn"])):
        for tli in graph.paths:
            if graph.reaches(m, tli):
                for on, lo, hi in graph.needs(m, tli):
                    needs.setdefault(on, []).append((lo, hi, m.id))
    newest_kept = max((m.store_stop_time for m in kept), default=None)
    ranges: list[WalRange] = []
    for tli, objs in sorted(by_timeline.items()):
        if graph.paths.get(tli) is None:
            reason = f"the history file of timeline {tli} is missing or unreadable: its WAL is kept"
            ranges.append(_run(source, wal, tli, objs, True, reason))
        elif tli in needs:
            ranges.extend(_split(source, wal, tli, objs, needs[tli]))
        elif wal.current and (newest_kept is None or max(o.modified for o in objs) > newest_kept):
            ranges.append(_run(source, wal, tli, objs, True, "no retained backup reaches this timeline, but it is "
                               "still being archived: kept until a backup of it exists"))
        else:
            ranges.append(_run(source, wal, tli, objs, False, "no retained backup reaches this timeline"))
    return ranges


def _split(source: str, wal: WalInventory, tli: int, objs: list[ArchivedWal],
           needs: list[tuple[int, int | None, str]]) -> list[WalRange]:
    """Runs of needed and unneeded files of one timeline (a sweep over the need ranges sorted by start)."""
    needs = sorted(needs, key=lambda n: n[0])
    first_need, oldest = needs[0][0], needs[0][2]
    others = " and newer retained backups" if len({n[2] for n in needs}) > 1 else ""
    needed = (True, f"replayed by restores of {oldest}{others}")
    runs: list[WalRange] = []
    current: list[ArchivedWal] = []
    state: tuple[bool, str] | None = None
    pointer, reach = 0, -1.0
    for obj in objs:
        segno = obj.name.segno(wal.segment_size)
        while pointer < len(needs) and needs[pointer][0] <= segno:
            hi = needs[pointer][1]
            reach = max(reach, float("inf") if hi is None else hi)
            pointer += 1
        if segno <= reach:
            fate = needed
        elif segno < first_need:
            fate = (False, "older than the start of every retained backup that replays this timeline")
        else:
            fate = (False, "after a fork: no retained backup replays it on this timeline")
        if state is not None and fate != state:
            runs.append(_run(source, wal, tli, current, *state))
            current = []
        state = fate
        current.append(obj)
    if current and state is not None:
        runs.append(_run(source, wal, tli, current, *state))
    return runs


def _run(source: str, wal: WalInventory, tli: int, objs: Iterable[ArchivedWal], keep: bool, reason: str) -> WalRange:
    objs = list(objs)
    size = wal.segment_size
    names = [segment_name(tli, o.name.segno(size), size) for o in objs]
    return WalRange(source, wal.stream, tli, names[0], names[-1], len({o.name.segno(size) for o in objs}),
                    sum(o.stored_size for o in objs), keep, reason, [o.key for o in objs])
