"""The facts about each source that an operator needs to know it is protected: gathered, never judged.

``status`` shows them, ``check`` judges them against thresholds (monitor.py), the metrics are made from
them (metrics.py). Everything comes from the repository (so any host sees the same picture) except what
only the server can tell: pg_stat_archiver, the ``.ready`` backlog, pg_wal's size and the free space on
the data directory's filesystem, taken when the server is reachable and its data directory is local.
A fact that cannot be gathered is recorded as an error of that source; it never hides the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupctl.core.config import Config, PostgresSource, SourceConfig
from backupctl.core.errors import BackupctlError, ObjectNotFound
from backupctl.core.log import get_logger
from backupctl.engines.registry import BACKUP_TYPES, PHYSICAL_TYPES, source_kind
from backupctl.postgres import hosts
from backupctl.postgres.connection import ConnParams
from backupctl.repo import layout, lease
from backupctl.repo.catalog import Manifest, iso, parse_iso
from backupctl.repo.repository import Repository, open_repository
from backupctl.services import pitr
from backupctl.services.drill_results import latest_drill
from backupctl.wal import timelines
from backupctl.wal.listing import find_archived, list_wal_objects
from backupctl.wal.names import DEFAULT_SEGMENT_SIZE
from backupctl.wal.streams import current_stream
from backupctl.wal.verify import wal_status

log = get_logger(__name__)


def _age(text: str | None, now: datetime) -> float | None:
    return None if text is None else round((now - parse_iso(text)).total_seconds(), 1)


# --- the facts, as status returns them (docs/json-output.md documents their JSON) -----------------------


@dataclass(frozen=True)
class RepositoryFacts:
    """The source's part of the store, or why the store did not answer (then only ``error`` is known)."""

    reachable: bool
    error: str | None = None
    location: str | None = None
    stored_bytes: int = 0
    objects: int = 0
    backup_bytes: int = 0
    wal_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        if not self.reachable:
            return {"reachable": False, "error": self.error}
        return {"reachable": True, "location": self.location, "stored_bytes": self.stored_bytes,
                "objects": self.objects, "backup_bytes": self.backup_bytes, "wal_bytes": self.wal_bytes}


@dataclass(frozen=True)
class NewestBackup:
    """The newest backup of one type, with how many of that type there are."""

    type: str
    id: str
    finished_at: str
    age_seconds: float
    size: int
    stored_size: int
    duration_seconds: float
    count: int
    server: dict[str, Any] | None = None  # physical: the server it was copied from (the manifest's extra.server)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StandbyFacts:
    """One configured standby of a PostgreSQL source as it answered now (``postgres.hosts.probe_server``)."""

    name: str
    address: str
    probe: hosts.Probe

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, **self.probe.to_json()}


@dataclass(frozen=True)
class WalFacts:
    """The archive as the repository has it; the newest segment is production's (not a branch's)."""

    newest_segment: str | None
    newest_archived_at: str | None
    age_seconds: float | None
    timelines: tuple[int, ...]
    segments: int
    gaps: int
    stored_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "timelines": list(self.timelines)}


@dataclass(frozen=True)
class Window:
    """The recoverable window. Its JSON has three shapes: snapshots (with ``points``), a point-in-time span
    (with the backup it starts from), and a point-in-time window no backup can open (``earliest`` None,
    ``problem`` says why)."""

    kind: str  # "snapshots" or "pitr"
    earliest: str | None
    latest: str | None
    seconds: float | None
    problem: str | None
    points: int | None = None  # snapshots only
    from_backup: str | None = None  # pitr, when a backup reaches the archive's end
    timeline: int | None = None
    wal_last: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "earliest": self.earliest, "latest": self.latest,
                               "seconds": self.seconds}
        if self.kind == "snapshots":
            doc["points"] = self.points
        elif self.earliest is not None:
            doc.update(from_backup=self.from_backup, timeline=self.timeline, wal_last=self.wal_last)
        return {**doc, "problem": self.problem}


@dataclass(frozen=True)
class VerifySummary:
    """What status shows of the newest verify record (``<source>/verifications/``), with its age."""

    id: str | None
    backup_id: str | None
    status: str | None
    started_at: str | None
    finished_at: str | None
    mode: str | None
    bytes: int | None
    error: str | None
    age_seconds: float | None

    @classmethod
    def from_record(cls, record: dict[str, Any], now: datetime) -> VerifySummary:
        return cls(*(record.get(f.name) for f in dataclasses.fields(cls)[:-1]),
                   age_seconds=_age(record.get("finished_at"), now))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DrillSummary:
    """What status shows of the newest drill (`drill show` has the rest), with its age and failed checks."""

    id: str | None
    backup_id: str | None
    status: str | None
    started_at: str | None
    finished_at: str | None
    rto_seconds: float | None
    error: str | None
    age_seconds: float | None
    failed_checks: tuple[str, ...]

    @classmethod
    def from_record(cls, record: dict[str, Any], now: datetime) -> DrillSummary:
        return cls(*(record.get(f.name) for f in dataclasses.fields(cls)[:-2]),
                   age_seconds=_age(record.get("finished_at"), now),
                   failed_checks=tuple(c["name"] for c in record.get("checks", []) if c.get("status") == "failed"))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "failed_checks": list(self.failed_checks)}


@dataclass(frozen=True)
class RunningBackup:
    """The backup running now, as its lease tells (any host sees it): who runs it, since when, how far.

    ``started_at`` is on the store's clock; whether the lease is live and ``running_seconds`` are judged by
    this host's clock, like every age status gives (gathering never writes). The byte counts are the
    holder's at its latest lease renewal (every quarter of ``lease_ttl``), None until it wrote one.
    ``bytes_total`` is the engine's estimate (the databases' size), None when it has none.
    """

    backup_id: str | None
    operation: str
    host: str
    pid: int
    started_at: str
    running_seconds: float
    bytes_done: int | None
    bytes_total: int | None

    @classmethod
    def from_lease(cls, holder: lease.LeaseInfo, now: datetime) -> RunningBackup:
        progress = holder.progress or {}
        return cls(holder.details.get("backup_id"), holder.operation, holder.host, holder.pid,
                   iso(holder.store_started_at), round(max(0.0, (now - holder.store_started_at).total_seconds()), 1),
                   progress.get("done"), progress.get("total"))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SourceStatus:
    """Every fact about one source. ``server`` and ``timelines`` stay open objects: which facts the server
    gives depends on its reachability, privileges and host (see ``server_facts``), and ``timelines`` is the
    judgement's own JSON (``timelines.Judgement.to_json``)."""

    source: str
    kind: str
    checked_at: str
    drills_scheduled: bool
    repository: RepositoryFacts | None = None
    backups: tuple[NewestBackup, ...] = ()
    backup_count: int = 0
    damaged_manifests: tuple[str, ...] = ()
    wal: WalFacts | None = None
    server: dict[str, Any] | None = None
    window: Window | None = None
    timelines: dict[str, Any] | None = None
    last_verify: VerifySummary | None = None
    last_drill: DrillSummary | None = None
    errors: tuple[str, ...] = ()
    running_backup: RunningBackup | None = None
    standbys: tuple[StandbyFacts, ...] = ()

    def failed(self, part: str) -> bool:
        """Whether gathering ``part`` (``"last verify"``, ...) failed: its None then means "not known"."""
        return any(error.startswith(f"{part}: ") for error in self.errors)

    def to_json(self) -> dict[str, Any]:
        def part(value: Any) -> Any:
            return None if value is None else value.to_json()

        return {"id": self.source, "source": self.source, "kind": self.kind, "checked_at": self.checked_at,
                "repository": part(self.repository), "backups": [b.to_json() for b in self.backups],
                "backup_count": self.backup_count, "damaged_manifests": list(self.damaged_manifests),
                "wal": part(self.wal), "server": self.server, "window": part(self.window),
                "timelines": self.timelines, "last_verify": part(self.last_verify),
                "last_drill": part(self.last_drill), "drills_scheduled": self.drills_scheduled,
                "errors": list(self.errors), "running_backup": part(self.running_backup),
                "standbys": [standby.to_json() for standby in self.standbys]}


# --- gathering -----------------------------------------------------------------------------------------


def gather(config: Config, names: list[str] | None = None, now: datetime | None = None) -> list[SourceStatus]:
    """The status of each named source (all configured ones by default); an unreachable repository is a
    fact of every source, not an exception."""
    now = now or datetime.now(UTC)
    sources = [config.source(name) for name in names] if names else list(config.sources.values())
    try:
        repo = open_repository(config)
    except BackupctlError as exc:
        return [_unreachable(source, now, str(exc)) for source in sources]
    with repo:
        return [source_status(repo, source, now) for source in sources]


def _unreachable(source: SourceConfig, now: datetime, error: str) -> SourceStatus:
    """The store does not answer: nothing in it can be read, but the server can still be asked."""
    return SourceStatus(source.name, source.kind, iso(now), source.schedule.drill is not None,
                        repository=RepositoryFacts(reachable=False, error=error), server=server_facts(source),
                        errors=(f"repository: {error}",), standbys=standby_facts(source))


def _attempt(errors: list[str], part: str, gather_part: Callable[[], Any]) -> Any:
    """Run one part of the gathering; its failure becomes a line in ``errors`` and the value None."""
    try:
        return gather_part()
    except BackupctlError as exc:
        errors.append(f"{part}: {exc}")
        return None


def source_status(repo: Repository, source: SourceConfig, now: datetime) -> SourceStatus:
    """Every fact about one source; a failing part is recorded in ``errors`` and the rest still gathered."""
    try:
        repository = _repository_usage(repo, source.name)
    except BackupctlError as exc:
        return _unreachable(source, now, str(exc))
    server = server_facts(source)
    errors: list[str] = []
    scanned = _attempt(errors, "backups", lambda: repo.catalog.scan(source.name))
    manifests, damaged = scanned or ([], {})
    judged = _attempt(errors, "timelines", lambda: _timelines(repo, source))
    wal_facts = _attempt(errors, "wal", lambda: _wal(repo, source, now, judged))
    verify = _attempt(errors, "last verify", lambda: _newest_record(repo, layout.verifications_prefix(source.name)))
    drill = _attempt(errors, "last drill", lambda: _last_drill(repo, source.name))
    window = _attempt(errors, "window", lambda: recoverable_window(repo, source, manifests, wal_facts))
    running = _attempt(errors, "running backup", lambda: _running_backup(repo, source.name, now))
    return SourceStatus(
        source.name, source.kind, iso(now), source.schedule.drill is not None, repository=repository,
        backups=_newest_per_type(manifests, now), backup_count=len(manifests), damaged_manifests=tuple(sorted(damaged)),
        wal=wal_facts, server=server, window=window, timelines=judged,
        last_verify=VerifySummary.from_record(verify, now) if verify else None,
        last_drill=DrillSummary.from_record(drill, now) if drill else None, errors=tuple(errors),
        running_backup=running, standbys=standby_facts(source))


def _running_backup(repo: Repository, source: str, now: datetime) -> RunningBackup | None:
    """The holder of the source's backup lease unless it expired; None when no backup runs."""
    holder = lease.newest_holder(repo.storage, source, "backup")
    return RunningBackup.from_lease(holder, now) if holder and holder.expires_at > now else None


def _repository_usage(repo: Repository, source: str) -> RepositoryFacts:
    """What the source occupies in the store: one listing of its prefix."""
    usage = {"stored_bytes": 0, "objects": 0, "backup_bytes": 0, "wal_bytes": 0}
    folders = {layout.backups_prefix(source): "backup_bytes", layout.wal_prefix(source): "wal_bytes"}
    for info in repo.storage.list(layout.source_prefix(source)):
        usage["stored_bytes"] += info.size
        usage["objects"] += 1
        for prefix, total in folders.items():
            if info.key.startswith(prefix):
                usage[total] += info.size
    return RepositoryFacts(reachable=True, location=repo.storage.location, **usage)


def _newest_per_type(manifests: list[Manifest], now: datetime) -> tuple[NewestBackup, ...]:
    """The newest backup of each type, with how many of that type there are."""
    rows = []
    for backup_type in BACKUP_TYPES:
        of_type = [m for m in manifests if m.type == backup_type]
        if of_type:
            newest = of_type[0]
            age = round((now - parse_iso(newest.finished_at)).total_seconds(), 1)
            rows.append(NewestBackup(backup_type, newest.id, newest.finished_at, age, newest.size, newest.stored_size,
                                     round(newest.duration, 3), len(of_type), newest.extra.get("server")))
    return tuple(rows)


def _timelines(repo: Repository, source: SourceConfig) -> dict[str, Any] | None:
    """Which timeline production is on in the live history epoch, and why (``timelines``): the judgement
    restore's default follows, with the branches it leaves behind."""
    if not source_kind(source).archives_wal:
        return None
    current = current_stream(repo, source.name)
    if current is None:
        return None
    objects = list_wal_objects(repo, current.stream)
    if not objects:
        return None
    judgement = timelines.read(repo, current.stream, objects, current.segment_size or DEFAULT_SEGMENT_SIZE)
    return {**judgement.to_json(), "epoch": current.epoch, "off_path": judgement.off_path()}


def _wal(repo: Repository, source: SourceConfig, now: datetime, judged: dict[str, Any] | None) -> WalFacts | None:
    """The archive as the repository has it: the newest segment and its age, gaps, timelines.

    The newest segment is production's: a branch's archiving (a promoted copy) must not hide that
    production stopped archiving."""
    if not source_kind(source).archives_wal:
        return None
    per_timeline = wal_status(repo, source.name, now)
    if not per_timeline:
        return None
    elsewhere = {(judged["epoch"], t) for t in judged["off_path"]} if judged else set()
    newest = max((t for t in per_timeline if t["newest_archived_at"] and (t["epoch"], t["timeline"]) not in elsewhere),
                 key=lambda t: t["newest_archived_at"], default=None)
    return WalFacts(
        newest_segment=newest["newest_segment"] if newest else None,
        newest_archived_at=newest["newest_archived_at"] if newest else None,
        age_seconds=newest["newest_age_seconds"] if newest else None,
        timelines=tuple(t["timeline"] for t in per_timeline),
        segments=sum(t["segments"] for t in per_timeline),
        gaps=sum(len(t["gaps"]) for t in per_timeline),
        stored_bytes=sum(t["stored_bytes"] for t in per_timeline),
    )


def _newest_record(repo: Repository, prefix: str) -> dict[str, Any] | None:
    """The newest JSON record under ``prefix`` (ids sort by time); a damaged one is an error, not skipped."""
    keys = sorted(info.key for info in repo.storage.list(prefix) if layout.is_record_key(info.key))
    return read_record(repo, keys[-1]) if keys else None


def read_record(repo: Repository, key: str) -> dict[str, Any] | None:
    """A verify (or other JSON) record; None when it was removed meanwhile (expire), an error when damaged."""
    try:
        record = json.loads(repo.storage.get_bytes(key))
    except ObjectNotFound:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BackupctlError(f"{key} is not a JSON record") from exc
    if not isinstance(record, dict):
        raise BackupctlError(f"{key} is not a JSON object")
    return record


def _last_drill(repo: Repository, source: str) -> dict[str, Any] | None:
    return latest_drill(repo.storage, source)


# --- what only the server can tell ---------------------------------------------------------------------

_ARCHIVER_SQL = """
SELECT current_setting('server_version_num')::int, current_setting('archive_mode'), pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time,
       stats_reset
FROM pg_stat_archiver
"""


def server_facts(source: SourceConfig) -> dict[str, Any] | None:
    """pg_stat_archiver and, for a local data directory, the backlog, pg_wal's size and free space.

    An unreachable server is a fact (``reachable: false`` with libpq's reason), not an error: status must
    work while the server is down, which is when people look.
    """
    if not isinstance(source, PostgresSource):
        return None
    facts: dict[str, Any] = {"reachable": False, "error": None, "local": False}
    try:
        with ConnParams.from_source(source).connect() as conn:
            row = conn.execute(_ARCHIVER_SQL).fetchone()
            facts.update(_remote_backlog(conn))
    except BackupctlError as exc:
        facts["error"] = str(exc)
        row = None
    except Exception as exc:  # psycopg errors: a query refused (privileges) must not hide the rest
        facts["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        row = None
    if row is not None:
        version, mode, recovery, current, archived, last_wal, last_time, failed, failed_wal, failed_time, reset = row
        facts.update({
            "reachable": True, "major": version // 10000, "archive_mode": mode, "in_recovery": recovery,
            "current_wal": current,
            "archived_count": archived, "last_archived_wal": last_wal,
            "last_archived_time": iso(last_time) if last_time else None, "failed_count": failed,
            "last_failed_wal": failed_wal, "last_failed_time": iso(failed_time) if failed_time else None,
            "stats_reset": iso(reset) if reset else None,
            # Failing now: the newest failure is more recent than the newest success.
            "failing": bool(failed_time and (last_time is None or failed_time > last_time)),
        })
    if source.pgdata and Path(source.pgdata).is_dir():
        facts.update(_local_facts(Path(source.pgdata)))
    return facts


def standby_facts(source: SourceConfig) -> tuple[StandbyFacts, ...]:
    """Each configured standby: up, in recovery, streaming, its replay lag and delay (a down one is a fact)."""
    if not isinstance(source, PostgresSource):
        return ()
    return tuple(StandbyFacts(host.name, host.params.address(), hosts.probe_server(host.params))
                 for host in hosts.standbys(source))


_BACKLOG_SQL = """
WITH ready AS (SELECT name, modification FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
     oldest AS (SELECT name, modification FROM ready ORDER BY modification, name LIMIT 1)
SELECT (SELECT count(*) FROM ready), (SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()),
       (SELECT name FROM oldest), (SELECT extract(epoch FROM clock_timestamp() - modification) FROM oldest)
"""


def _remote_backlog(conn: Any) -> dict[str, Any]:
    """The .ready backlog, its oldest file and pg_wal's size through SQL (superuser or pg_monitor); {} when
    refused. The oldest file's age is on the server's clock, like its modification time."""
    try:
        ready, size, oldest, age = conn.execute(_BACKLOG_SQL).fetchone()
    except Exception as exc:  # insufficient privilege: the local data directory may still tell
        log.debug("pg_wal facts not readable through SQL", error=str(exc))
        return {}
    return {"ready": int(ready), "pg_wal_bytes": int(size), **_oldest_ready(oldest, age)}


def _oldest_ready(name: str | None, age: float | None) -> dict[str, Any]:
    """The facts of the oldest .ready file: the WAL file that waits longest and for how many seconds."""
    return {"oldest_ready": name.removesuffix(".ready") if name else None,
            "oldest_ready_age_seconds": None if age is None else max(0.0, round(float(age), 1))}


def _local_facts(pgdata: Path) -> dict[str, Any]:
    """Read straight from the data directory when it is on this host (and readable by this user)."""
    facts: dict[str, Any] = {"local": True, "data_directory": str(pgdata)}
    try:
        stat = os.statvfs(pgdata)
        facts["disk_free_bytes"] = stat.f_bavail * stat.f_frsize
        facts["disk_size_bytes"] = stat.f_blocks * stat.f_frsize
        facts["disk_free_percent"] = round(100.0 * stat.f_bavail / stat.f_blocks, 2) if stat.f_blocks else None
    except OSError as exc:
        facts["local_error"] = f"cannot stat {pgdata}: {exc.strerror}"
        return facts
    try:
        pg_wal = pgdata / "pg_wal"
        ready = _ready_files(pg_wal / "archive_status")
        facts["ready"] = len(ready)
        facts.update(_oldest_ready(ready[0][1], time.time() - ready[0][0]) if ready else _oldest_ready(None, None))
        with os.scandir(pg_wal) as entries:
            facts["pg_wal_bytes"] = sum(e.stat().st_size for e in entries if e.is_file(follow_symlinks=False))
    except OSError as exc:
        facts["local_error"] = f"cannot read {exc.filename}: {exc.strerror} (run as the server's OS user)"
    return facts


def _ready_files(archive_status: Path) -> list[tuple[float, str]]:
    """(modification time, name) of each .ready file, oldest first. A file the archiver renames to .done
    between the listing and its stat is archived, not missing: it is left out."""
    found = []
    with os.scandir(archive_status) as entries:
        for entry in entries:
            if entry.name.endswith(".ready"):
                try:
                    found.append((entry.stat().st_mtime, entry.name))
                except FileNotFoundError:
                    continue
    return sorted(found)


# --- the recoverable window ----------------------------------------------------------------------------


def recoverable_window(repo: Repository, source: SourceConfig, manifests: list[Manifest],
                       wal_facts: WalFacts | None) -> Window | None:
    """The earliest and latest points a restore can reach.

    With physical backups and archived WAL it is a span (point in time): from the end of the oldest
    backup whose WAL is continuous to the end of the archive, up to the newest segment of that chain (the
    restore planner decides, so status and restore never disagree). Otherwise only the backups themselves
    can be restored: the span from the oldest to the newest one, as discrete points.
    """
    physical = sorted((m for m in manifests if m.type in PHYSICAL_TYPES), key=lambda m: m.finished_at)
    if source_kind(source).archives_wal and physical and wal_facts:
        return _pitr_window(repo, source.name, physical)
    if not manifests:
        return None
    oldest, newest = manifests[-1], manifests[0]
    seconds = (parse_iso(newest.finished_at) - parse_iso(oldest.finished_at)).total_seconds()
    return Window("snapshots", oldest.finished_at, newest.finished_at, round(seconds, 1), None,
                  points=len(manifests))


def _pitr_window(repo: Repository, source: str, physical: list[Manifest]) -> Window:
    problem = None
    for backup in physical:
        try:
            plan = pitr.make_plan(repo, source, pitr.Target("end"), backup.id)
        except BackupctlError as exc:
            problem = problem or f"from {backup.id}: {exc}"
            continue
        segments = find_archived(repo, plan.stream, plan.wal_last)
        latest = max((s.modified for s in segments), default=parse_iso(backup.finished_at))
        earliest = parse_iso(backup.finished_at)
        return Window("pitr", backup.finished_at, iso(latest), round(max(0.0, (latest - earliest).total_seconds()), 1),
                      problem, from_backup=backup.id, timeline=plan.timeline, wal_last=plan.wal_last)
    return Window("pitr", None, None, None, problem)
