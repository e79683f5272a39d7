"""The report's data: per source, everything that has a place on a timeline, gathered, never drawn.

`backupctl report --html` and the scheduler's ``/report`` page show it (``report_html`` draws it): the
backups of the catalog, the archived WAL as contiguous runs per timeline with the gaps between them, the
recoverable window as status computes it (so the picture and `status` never disagree), the drills with their
RTO, and the verifications. Everything comes from the repository, like status, so any host draws the same
picture; the server's own facts come with the source's status.

Only the last ``days`` are gathered (drill and verify records accumulate; a year on one axis would hide
the last night's backup), but the window, the newest backups and the errors are the source's current ones.
A part that cannot be read becomes a line in the source's ``errors`` and never hides the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from backupctl import __version__
from backupctl.core.config import Config
from backupctl.core.errors import BackupctlError
from backupctl.engines.registry import source_kind
from backupctl.monitoring.check import Finding, evaluate
from backupctl.monitoring.status import DrillSummary, SourceStatus, VerifySummary, read_record, source_status
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest, iso, parse_iso
from backupctl.repo.repository import Repository, open_repository
from backupctl.services.drill_results import list_drills
from backupctl.wal.listing import ArchivedWal, list_wal_objects
from backupctl.wal.names import DEFAULT_SEGMENT_SIZE, segment_name
from backupctl.wal.streams import streams_of

DEFAULT_DAYS = 30


@dataclass(frozen=True)
class WalRun:
    """Consecutive archived segments of one timeline, with when the first and the last reached the store."""

    epoch: int
    timeline: int
    first: str
    last: str
    segments: int
    first_archived_at: str
    last_archived_at: str


@dataclass(frozen=True)
class WalGap:
    """Segments missing between two runs of one timeline: no restore replays across it."""

    epoch: int
    timeline: int
    first_missing: str
    last_missing: str
    missing: int
    after: str  # when the segment before the gap was archived
    before: str  # when the segment after it was


@dataclass(frozen=True)
class SourceReport:
    """One source: its status (window, newest backups, WAL facts, errors) and what lies on its timeline."""

    status: SourceStatus
    findings: tuple[Finding, ...]  # `check`'s judgement of the status, worst first in the page
    backups: tuple[Manifest, ...]  # oldest first
    wal_runs: tuple[WalRun, ...]
    wal_gaps: tuple[WalGap, ...]
    drills: tuple[DrillSummary, ...]  # oldest first
    verifications: tuple[VerifySummary, ...]  # oldest first
    errors: tuple[str, ...]  # the report's own reading failures; the status has its own

    @property
    def name(self) -> str:
        return self.status.source


@dataclass(frozen=True)
class Report:
    """The whole picture: when it was made, of which repository, from when, by which backupctl."""

    generated_at: str
    since: str
    repository: str
    tool_version: str
    sources: tuple[SourceReport, ...]


def gather_report(config: Config, names: list[str] | None = None, days: int = DEFAULT_DAYS,
                  now: datetime | None = None) -> Report:
    """The report of each named source (all configured ones by default) over the last ``days``.

    Unlike status, a repository that does not open is the report's failure (``BackupctlError``): a picture
    with nothing on it would only hide the one line that says why."""
    now = now or datetime.now(UTC)
    since = now - timedelta(days=days)
    sources = [config.source(name) for name in names] if names else list(config.sources.values())
    with open_repository(config) as repo:
        reports = tuple(_source_report(repo, source_status(repo, source, now), since, now) for source in sources)
        return Report(iso(now), iso(since), repo.storage.location, __version__, reports)


def _attempt(errors: list[str], part: str, gather_part: Callable[[], Any], empty: Any) -> Any:
    try:
        return gather_part()
    except BackupctlError as exc:
        errors.append(f"{part}: {exc}")
        return empty


def _source_report(repo: Repository, status: SourceStatus, since: datetime, now: datetime) -> SourceReport:
    source = repo.config.source(status.source)
    findings = tuple(evaluate(status, source, repo.config, now))
    errors: list[str] = []
    if status.repository is None or not status.repository.reachable:
        return SourceReport(status, findings, (), (), (), (), (), ())
    manifests = _attempt(errors, "backups", lambda: repo.catalog.scan(source.name)[0], [])
    runs, gaps = ((), ())
    if source_kind(source).archives_wal:
        runs, gaps = _attempt(errors, "wal", lambda: _wal_runs(repo, source.name), ((), ()))
    drills = _attempt(errors, "drills", lambda: list_drills(repo.storage, source.name), [])
    verifications = _attempt(errors, "verifications", lambda: _verifications(repo, source.name, since), [])
    recent = [m for m in manifests if parse_iso(m.finished_at) >= since]
    return SourceReport(
        status,
        findings,
        backups=tuple(sorted(recent, key=lambda m: m.started_at)),
        wal_runs=tuple(r for r in runs if parse_iso(r.last_archived_at) >= since),
        wal_gaps=tuple(g for g in gaps if parse_iso(g.before) >= since),
        drills=tuple(DrillSummary.from_record(d, now) for d in reversed(drills) if _after(d.get("finished_at"), since)),
        verifications=tuple(VerifySummary.from_record(v, now) for v in verifications),
        errors=tuple(errors),
    )


def _after(text: str | None, since: datetime) -> bool:
    return text is not None and parse_iso(text) >= since


def _wal_runs(repo: Repository, source: str) -> tuple[tuple[WalRun, ...], tuple[WalGap, ...]]:
    """Each epoch's segments per timeline (one listing per epoch), cut into runs where a segment is missing."""
    runs: list[WalRun] = []
    gaps: list[WalGap] = []
    for identity in streams_of(repo, source):
        size = identity.segment_size or DEFAULT_SEGMENT_SIZE
        per_timeline: dict[int, dict[int, ArchivedWal]] = {}
        for obj in list_wal_objects(repo, identity.stream):
            if obj.name.kind == "segment":
                per_timeline.setdefault(obj.name.timeline, {})[obj.name.segno(size)] = obj
        for timeline, by_segno in sorted(per_timeline.items()):
            run: list[ArchivedWal] = []
            for segno in sorted(by_segno):
                if run and segno != run[-1].name.segno(size) + 1:
                    runs.append(_run(identity.epoch, timeline, run))
                    gaps.append(_gap(identity.epoch, timeline, run[-1], by_segno[segno], size))
                    run = []
                run.append(by_segno[segno])
            runs.append(_run(identity.epoch, timeline, run))
    return tuple(runs), tuple(gaps)


def _run(epoch: int, timeline: int, run: list[ArchivedWal]) -> WalRun:
    return WalRun(epoch, timeline, run[0].name.name, run[-1].name.name, len(run),
                  iso(min(s.modified for s in run)), iso(max(s.modified for s in run)))


def _gap(epoch: int, timeline: int, before: ArchivedWal, after: ArchivedWal, size: int) -> WalGap:
    first, last = before.name.segno(size) + 1, after.name.segno(size) - 1
    return WalGap(epoch, timeline, segment_name(timeline, first, size), segment_name(timeline, last, size),
                  last - first + 1, iso(before.modified), iso(after.modified))


def _verifications(repo: Repository, source: str, since: datetime) -> list[dict[str, Any]]:
    """The verify records started since ``since``, oldest first: their ids begin with the time they started
    (``new_record_id``), so older ones are left unread."""
    oldest = since.strftime("%Y%m%dT%H%M%S")
    prefix = layout.verifications_prefix(source)
    keys = sorted(info.key for info in repo.storage.list(prefix)
                  if layout.is_record_key(info.key) and info.key.removeprefix(prefix) >= oldest)
    return [record for record in (read_record(repo, key) for key in keys) if record is not None]
