"""Point-in-time restore: plan first, refuse what cannot work, then restore and hand over to recovery.

The plan picks the newest physical backup that can reach the target on the target's timeline, and the
archived WAL from that backup's start onwards along the timeline's history. Everything that would make
PostgreSQL stop short or fork the wrong way (the target lies before every backup or after the end of
archived WAL, a segment is missing, the backup is on a branch that does not lead to the timeline) is
found here, before a byte is downloaded. The default timeline is the one production is on, judged from
the archive by ``timelines`` (not merely the highest number), and recovery is told that number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.log import get_logger
from backupctl.engines.registry import PHYSICAL_TYPES
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest, iso
from backupctl.repo.repository import Repository
from backupctl.wal import epochs, timelines
from backupctl.wal.fetch import read_history
from backupctl.wal.listing import group_archived, list_wal_objects
from backupctl.wal.names import (
    LsnError,
    format_lsn,
    parse_lsn,
    segment_name,
    segment_of_lsn,
    timeline_path,
)
from backupctl.wal.streams import SourceIdentity, list_streams

log = get_logger(__name__)

TARGET_NAME_BYTES = 63  # recovery_target_name: PostgreSQL's MAXFNAMELEN - 1


@dataclass(frozen=True)
class Target:
    """What `restore --target-*` asked for; ``kind`` "end" replays all archived WAL."""

    kind: str  # "end", "time", "lsn", "xid", "name", "immediate"
    value: str | None = None
    timeline: str = "latest"  # "latest", "current" or a number
    action: str | None = None  # None: PostgreSQL's default (pause)
    inclusive: bool = True

    def moment(self) -> datetime:
        assert self.kind == "time" and self.value is not None
        return parse_time(self.value)


def _parse_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--target-time {text!r} is not a time (e.g. 2026-11-25 03:14:00+01:00)") from exc


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without an offset is UTC (and the plan says so)."""
    moment = _parse_time(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def target_from_options(time: str | None, lsn: str | None, xid: str | None, name: str | None, immediate: bool,
                        timeline: str = "latest", action: str | None = None, inclusive: bool = True) -> Target:
    """The ``--target-*`` options of a command as a Target: at most one, none meaning the end of archived WAL.

    Every value is checked here, before anything is planned or downloaded (PostgreSQL would refuse a bad
    one only when the restored server starts), and normalised to the form PostgreSQL is given.
    """
    given = [(kind, value) for kind, value in (("time", time), ("lsn", lsn), ("xid", xid), ("name", name))
             if value is not None]
    if immediate:
        given.append(("immediate", None))
    if len(given) > 1:
        raise ConfigError("give at most one of --target-time, --target-lsn, --target-xid, --target-name, --target")
    kind, value = given[0] if given else ("end", None)
    return Target(kind, _checked_value(kind, value), _checked_timeline(timeline), action, inclusive)


def _checked_value(kind: str, value: str | None) -> str | None:
    """A target value as recovery will be given it, or a usage error that says what is wrong with it."""
    if kind == "time":
        parse_time(str(value))
    elif kind == "lsn":
        try:
            return format_lsn(parse_lsn(str(value)))
        except LsnError as exc:
            raise ConfigError(f"--target-lsn {value!r} is not an LSN (like 0/3000028, as pg_current_wal_lsn() "
                              "shows it)") from exc
    elif kind == "xid":
        text = str(value).strip()
        # A 64-bit id (epoch and xid, as pg_current_xact_id() shows it) or a plain xid; 0, 1 and 2 in the
        # low 32 bits are reserved and never name a transaction.
        if not (text.isascii() and text.isdigit()) or int(text) >= 2**64 or int(text) % 2**32 < 3:
            raise ConfigError(f"--target-xid {value!r} is not a transaction id: give the decimal id of a "
                              "transaction (3 or more, e.g. from pg_current_xact_id())")
        return str(int(text))
    elif kind == "name":
        if not value:
            raise ConfigError("--target-name is empty: give the name of a restore point (pg_create_restore_point)")
        size = len(value.encode())
        if size > TARGET_NAME_BYTES:
            raise ConfigError(f"--target-name is {size} bytes long: restore point names have at most "
                              f"{TARGET_NAME_BYTES} (PostgreSQL cuts longer ones, so none can match)")
    return value


def _checked_timeline(timeline: str) -> str:
    """``--target-timeline``: latest, current or a timeline number (PostgreSQL's are 32-bit, from 1)."""
    if timeline in ("latest", "current"):
        return timeline
    if timeline.isascii() and timeline.isdigit() and 0 < int(timeline) < 2**32:
        return str(int(timeline))
    raise ConfigError(f"--target-timeline {timeline!r} is not a timeline: use latest, current or a number (1, 2, ...)")


@dataclass(frozen=True)
class Plan:
    """The backup and WAL that reach the target, and what recovery will be told; ``to_json`` is what
    `restore --plan -o json` prints (docs/json-output.md)."""

    source: str
    backup: Manifest
    target: Target
    timeline: int
    path: list[tuple[int, int, int | None]]  # (timeline, from LSN, switch LSN or None for the last)
    wal_first: str
    wal_last: str
    segments: int
    notes: tuple[str, ...] = ()
    epoch: int = 1  # the history epoch of the backup (see ``epochs``): its WAL is in ``stream``
    stream: str = ""
    timelines: timelines.Judgement | None = None  # which timeline production is on, and why

    def recovery_settings(self, restore_command: str, standby: bool = False) -> dict[str, str]:
        settings = {"restore_command": restore_command}
        kind, value = self.target.kind, self.target.value
        if kind == "time":
            settings["recovery_target_time"] = self.target.moment().isoformat()
        elif kind in ("lsn", "xid", "name"):
            settings[f"recovery_target_{kind}"] = str(value)
        elif kind == "immediate":
            settings["recovery_target"] = "immediate"
        settings["recovery_target_timeline"] = self.timeline_setting(standby)
        if kind != "end" and self.target.action:
            settings["recovery_target_action"] = self.target.action
        if kind in ("time", "lsn", "xid") and not self.target.inclusive:
            settings["recovery_target_inclusive"] = "off"
        return settings

    def timeline_setting(self, standby: bool) -> str:
        """recovery_target_timeline: the chosen number, since PostgreSQL's 'latest' follows the highest history
        file it can fetch, which may be a branch production left behind (see ``timelines``). A standby that
        follows production's timeline to the end of the archive gets 'latest' when no timeline lies above
        production's: it must follow production through its next failover, which 'latest' does."""
        judged = self.timelines
        above = judged is not None and any(t > self.timeline for t in [*judged.histories, *judged.unplaced])
        if standby and self.target.kind == "end" and self.target.timeline == "latest" and not above:
            return "latest"
        return str(self.timeline)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.backup.id,
            "source": self.source,
            "backup": self.backup.id,
            "backup_type": self.backup.type,
            "backup_finished_at": self.backup.finished_at,
            "backup_start_lsn": self.backup.extra["start_lsn"],
            "backup_stop_lsn": self.backup.extra["stop_lsn"],
            "target": {"kind": self.target.kind, "value": self.target.value,
                       "action": self.target.action or "pause (PostgreSQL's default)"},
            "epoch": self.epoch,
            "timeline": self.timeline,
            "timeline_path": [{"timeline": t, "from": format_lsn(a), "until": format_lsn(b) if b else None}
                              for t, a, b in self.path],
            "wal_first": self.wal_first,
            "wal_last": self.wal_last,
            "wal_segments": self.segments,
            "download_bytes": self.backup.stored_size,
            "notes": list(self.notes),
            "timelines": self.timelines.to_json() if self.timelines else None,
        }


def _timeline_path(repo: Repository, source: str, timeline: int) -> list[tuple[int, int, int | None]]:
    """The ancestry of ``timeline``: (timeline, begins at, switches away at) from timeline 1 on."""
    return timeline_path(read_history(repo, source, timeline) if timeline > 1 else [], timeline)


class _Unreachable(BackupctlError):
    """No backup of one history epoch reaches the target; an older epoch may (a time before pg_upgrade)."""


def make_plan(repo: Repository, source: str, target: Target, backup_id: str | None = None) -> Plan:
    """Choose the backup and WAL that reach ``target``; refuse with the reason when none can.

    Backups are grouped by history epoch (``epochs``): with ``backup_id`` that backup's epoch, otherwise
    the newest epoch with a backup that reaches the target, so a target time before a pg_upgrade falls
    to the old epoch. WAL, timelines and history files come from the chosen epoch's stream.
    """
    manifests, _ = repo.catalog.scan(source)
    backups = [m for m in manifests if m.type in PHYSICAL_TYPES]
    if not backups:
        raise BackupctlError(f"source {source} has no physical backup: take one with `backupctl backup "
                             f"{source} --type full`")
    groups = [(e, members) for e, members in epochs.group_backups(source, list_streams(repo, source), backups)
              if members and (not backup_id or any(m.id == backup_id for m in members))]
    if not groups:
        raise ConfigError(f"no physical backup {backup_id} of source {source} (see `backupctl list {source}`)")
    failure: _Unreachable | None = None
    for identity, members in reversed(groups):
        try:
            plan = _plan_in_epoch(repo, source, identity, members, target, backup_id)
        except _Unreachable as exc:
            failure = exc
            continue
        notes = []
        if identity.epoch > 1 or len(groups) > 1:
            notes.append(f"history epoch {identity.epoch} of {source}: {identity.describe()}, WAL from "
                         + layout.wal_prefix(identity.stream))
        if len(groups) > 1 and not backup_id and target.kind in ("lsn", "xid", "name"):
            notes.append(f"--target-{target.kind} is looked for in epoch {identity.epoch} only (each "
                         "PostgreSQL system has its own): pass --backup ID for a backup of another epoch")
        return dataclasses.replace(plan, notes=(*plan.notes, *notes))
    assert failure is not None
    raise failure


def _plan_in_epoch(repo: Repository, source: str, identity: SourceIdentity, backups: list[Manifest],
                   target: Target, backup_id: str | None) -> Plan:
    stream = identity.stream
    objects = list_wal_objects(repo, stream)
    archived = group_archived(objects)
    size = int(backups[0].extra["wal_segment_size"])
    judgement = timelines.read(repo, stream, objects, size)
    timeline = _resolve_timeline(target, judgement, {**group_archived(objects, ("history",)), **archived},
                                 backups, backup_id)
    notes = judgement.notes(timeline, source)
    path = _timeline_path(repo, stream, timeline)
    on_path = {t: (a, b) for t, a, b in path}
    if target.kind == "time" and target.value and _parse_time(target.value).tzinfo is None:
        notes.append(f"target time {target.value} has no UTC offset: read as UTC")
    if target.action is None and target.kind != "end":
        notes.append("target action: pause (PostgreSQL's default): the server waits in recovery at the "
                     "target; `SELECT pg_wal_replay_resume()` then promotes it")

    def reaches(m: Manifest) -> str | None:
        """None when ``m`` can reach the target on the path, else why not."""
        tli, stop = m.extra["timeline"], parse_lsn(m.extra["stop_lsn"])
        if tli not in on_path:
            return f"it is on timeline {tli}, which is not an ancestor of timeline {timeline}"
        switch = on_path[tli][1]
        if switch is not None and stop > switch:
            return (f"it ends at {m.extra['stop_lsn']} on timeline {tli}, after timeline {timeline} forked "
                    f"at {format_lsn(switch)}")
        if target.kind == "time" and m.server_stop_time > target.moment():  # both on the server's clock
            return f"it finished at {iso(m.server_stop_time)} (server time), after the target time"
        if target.kind == "lsn" and stop > parse_lsn(str(target.value)):
            return f"it ends at {m.extra['stop_lsn']}, after the target LSN"
        return None

    if backup_id:
        chosen = next(m for m in backups if m.id == backup_id)  # make_plan picked the epoch that has it
        reason = reaches(chosen)
        if reason:
            raise BackupctlError(f"backup {backup_id} cannot reach the target: {reason}")
    else:
        eligible = [m for m in backups if reaches(m) is None]
        if not eligible:
            oldest = min(backups, key=lambda m: m.finished_at)
            why = reaches(oldest)
            raise _Unreachable(f"no backup of {source} can reach the target: the oldest ({oldest.id}) cannot "
                               f"because {why}")
        chosen = max(eligible, key=lambda m: (parse_lsn(m.extra["stop_lsn"]), m.finished_at))
    first, last, count = _check_wal(chosen, target, path, archived, notes)
    return Plan(source, chosen, target, timeline, path, first, last, count, tuple(notes), identity.epoch, stream,
                judgement)


def _resolve_timeline(target: Target, judgement: timelines.Judgement, archived: dict[int, list[Any]],
                      backups: list[Manifest], backup_id: str | None) -> int:
    """The timeline to recover along: "latest" is production's (``timelines``), not the highest number."""
    known = set(archived) | {m.extra["timeline"] for m in backups}
    if target.timeline == "latest":
        if judgement.ambiguous:
            raise BackupctlError(judgement.refusal())
        return judgement.production or max(known)
    if target.timeline == "current":
        chosen = next((m for m in backups if m.id == backup_id), None) if backup_id else max(
            backups, key=lambda m: m.finished_at)
        return int(chosen.extra["timeline"]) if chosen else max(known)
    try:
        timeline = int(target.timeline)
    except ValueError as exc:
        raise ConfigError(f"--target-timeline {target.timeline!r}: use latest, current or a number") from exc
    if timeline not in known:
        raise _Unreachable(f"timeline {timeline} does not exist in the archive (timelines: "
                           f"{', '.join(str(t) for t in sorted(known))})")
    return timeline


def _check_wal(backup: Manifest, target: Target, path: list[tuple[int, int, int | None]],
               archived: dict[int, list[Any]], notes: list[str]) -> tuple[str, str, int]:
    """Walk the WAL the restore needs, segment by segment along the timeline path.

    "The target time is after the end of archived WAL" compares two clocks: a segment's Last-Modified is
    the store's, the target (like every commit time) the server's. The rule: a segment's time is moved onto
    the server's clock by the offset ``backup`` recorded when it stopped (``Manifest.store_clock_ahead``,
    store minus server), and then compared; a manifest without it counts the clocks as equal.
    """
    size = int(backup.extra["wal_segment_size"])
    start = parse_lsn(backup.extra["start_lsn"])
    if target.kind == "immediate":
        need_until: int | None = parse_lsn(backup.extra["stop_lsn"])
    elif target.kind == "lsn":
        need_until = parse_lsn(str(target.value))
    else:
        need_until = None  # to the end of the archive (time, xid, name, end)
    first = segment_of_lsn(backup.extra["timeline"], start, size)
    last, count, previous = first, 0, None
    for tli, begin, switch in path:
        if switch is not None and switch <= start:
            continue
        have = {seg.name.segno(size): seg for seg in archived.get(tli, [])}
        segno = max(start, begin) // size
        end_segno = None
        if switch is not None:  # the segment holding the last byte before the switch
            end_segno = (switch - 1) // size
        if need_until is not None and (switch is None or need_until <= switch):
            end_segno = need_until // size
        while end_segno is None or segno <= end_segno:
            if segno not in have:
                if end_segno is None and not any(n > segno for n in have):  # the end of the archive
                    archived_at = previous.modified - backup.store_clock_ahead if previous else None
                    if target.kind == "time" and archived_at is not None and archived_at < target.moment():
                        raise BackupctlError(
                            f"the target time is after the end of archived WAL: the newest segment "
                            f"{previous.name.name} was archived at {archived_at:%Y-%m-%d %H:%M:%S %Z} (server "
                            "time); "
                            "run `backupctl wal check` to archive the current one, or pick an earlier time"
                        )
                    break
                missing = segment_name(tli, segno, size)
                raise BackupctlError(
                    f"WAL segment {missing} is missing from the archive: restoring from {backup.id} cannot get "
                    f"past {format_lsn(segno * size)} on timeline {tli}"
                    + (f" (the last segment before the gap is {last})" if count else "")
                )
            previous = have[segno]
            last = previous.name.name
            count += 1
            segno += 1
        if need_until is not None and (switch is None or need_until <= switch):
            break
    if count == 0:
        raise BackupctlError(f"no archived WAL from {first} on: backup {backup.id} cannot be made consistent")
    if need_until is None:
        notes.append(f"recovery replays archived WAL up to {last}, the newest segment on the path")
    return first, last, count
