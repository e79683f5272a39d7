"""Reading the archive back: ``wal status`` (what is archived, per epoch and timeline) and ``wal verify``.

Status is one listing per stream and reports what it sees: the range, the gaps inside it, duplicates and
the newest segment's age. Verify judges one history epoch's archive: continuous from the oldest physical
backup of its system (else the oldest segment) to the newest segment along the timeline history, each
object decoded against the checksum in its key and each segment's header against the stream's system.
"""

from __future__ import annotations

import collections
import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backupctl.core.errors import BackupctlError, IntegrityError, ObjectNotFound
from backupctl.wal import timelines as timeline_judgement
from backupctl.wal.fetch import CountingSink, decode_object, read_history
from backupctl.wal.identity import check_segment, read_header
from backupctl.wal.listing import ArchivedWal, list_wal_objects
from backupctl.wal.names import (
    DEFAULT_SEGMENT_SIZE,
    WalName,
    history_name,
    parse_wal_name,
    segment_name,
    timeline_ranges,
)
from backupctl.wal.streams import SourceIdentity, read_identity, streams_of

if TYPE_CHECKING:
    from backupctl.repo.repository import Repository


def _gaps(segnos: list[int], timeline: int, size: int) -> list[dict[str, Any]]:
    gaps = []
    for before, after in itertools.pairwise(segnos):
        if after > before + 1:
            gaps.append({"from": segment_name(timeline, before + 1, size),
                         "to": segment_name(timeline, after - 1, size), "missing": after - before - 1})
    return gaps


def wal_status(repo: Repository, source: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per history epoch and timeline: the archived range, gaps inside it, the newest segment and its age.

    A stable JSON shape: a list of objects, each with an ``id`` (``<stream>/<timeline hex>``: epoch 1's
    stream is the source name, later ones ``<source>/epochs/<N>``) and its ``epoch``.
    """
    now = now or datetime.now(UTC)
    result = []
    for identity in streams_of(repo, source):
        result += _stream_status(repo, source, identity, now)
    return result


def _stream_status(repo: Repository, source: str, identity: SourceIdentity, now: datetime) -> list[dict[str, Any]]:
    stream = identity.stream
    size = identity.segment_size or DEFAULT_SEGMENT_SIZE
    objects = list_wal_objects(repo, stream)
    timelines = sorted({o.name.timeline for o in objects})
    judgement = timeline_judgement.read(repo, stream, objects, size)  # the one judgement restores follow
    result = []
    for tli in timelines:
        mine = [o for o in objects if o.name.timeline == tli]
        history = next((o for o in mine if o.name.kind == "history"), None)
        segments = sorted((o for o in mine if o.name.kind == "segment"), key=lambda o: o.name.name)
        segnos = sorted({o.name.segno(size) for o in segments})
        newest = max(segments, key=lambda o: o.modified, default=None)
        last = segments[-1] if segments else None
        counts = collections.Counter(o.name.name for o in segments)
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        result.append({
            "id": f"{stream}/{tli:08X}",
            "source": source,
            "epoch": identity.epoch,
            "system_identifier": identity.system_identifier or None,
            "pg_major": identity.major or None,
            "timeline": tli,
            "first": segments[0].name.name if segments else None,
            "last": last.name.name if last else None,
            "segments": len(segnos),
            "gaps": _gaps(segnos, tli, size),
            "duplicates": duplicates,
            "partial": sorted(o.name.name for o in mine if o.name.kind == "partial"),
            "backup_history": sorted(o.name.name for o in mine if o.name.kind == "backup"),
            "history_file": any(o.name.kind == "history" for o in mine),
            "stored_bytes": sum(o.stored_size for o in mine),
            "newest_segment": newest.name.name if newest else None,
            "newest_archived_at": newest.modified.astimezone(UTC).isoformat() if newest else None,
            "newest_age_seconds": round((now - newest.modified).total_seconds(), 1) if newest else None,
            "segment_size": size,
            "production": None if judgement.production is None else judgement.production == tli,
            "fork": judgement.fork(tli, history.modified if history else None),
        })
    return result


@dataclass
class WalVerifyResult:
    """What ``verify_wal`` found; ``ok`` only when the chain is whole and every object decodes."""

    source: str
    mode: str  # "full": decoded and checksummed; "listing": names only (no identity)
    start: str | None = None
    end: str | None = None
    start_from: str = ""  # "backup <id>" or "oldest segment"
    timelines: list[int] = field(default_factory=list)
    checked: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    epoch: int = 1
    stream: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"id": self.stream or self.source, "source": self.source, "epoch": self.epoch, "ok": self.ok,
                "mode": self.mode, "start": self.start,
                "end": self.end, "start_from": self.start_from, "timelines": self.timelines,
                "checked": self.checked, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "problems": self.problems}


def _oldest_physical_start(repo: Repository, source: str, system: str) -> tuple[str, int, str] | None:
    """The oldest physical backup of ``system`` (an epoch's; "" for any): where its WAL must begin."""
    manifests, _damaged = repo.catalog.scan(source)
    physical = [m for m in manifests if m.type in ("full", "incr") and m.extra.get("start_wal")
                and (not system or str(m.extra.get("system_identifier")) == system)]
    if not physical:
        return None
    oldest = min(physical, key=lambda m: (m.started_at, m.id))
    start = str(oldest.extra["start_wal"])
    timeline = int(oldest.extra.get("timeline") or parse_wal_name(start).timeline)
    return start, timeline, oldest.id


def verify_epochs(repo: Repository, source: str, jobs: int = 4) -> list[WalVerifyResult]:
    """``verify_wal`` of every history epoch of the source, oldest first."""
    return [verify_wal(repo, source, jobs, identity=identity) for identity in streams_of(repo, source)]


def verify_wal(repo: Repository, source: str, jobs: int = 4, decode: bool | None = None,
               identity: SourceIdentity | None = None) -> WalVerifyResult:
    """Check one history epoch's archive (``identity``; default epoch 1) is continuous from the oldest
    physical backup of its system (else the oldest segment) to the newest segment, following timeline
    history, and decode every object on the way.

    Decoding (plaintext sha256 from the key, segment header against the registered identity) happens
    when the identity is available or the repository is not encrypted; otherwise only names are checked.
    """
    started = time.monotonic()
    if decode is None:
        decode = not repo.pipeline.encrypted or repo.pipeline.can_decrypt()
    if identity is None:
        identity = read_identity(repo, source)
    stream = identity.stream if identity else source
    result = WalVerifyResult(source, "full" if decode else "listing", epoch=identity.epoch if identity else 1,
                             stream=stream)
    size = (identity.segment_size if identity else None) or DEFAULT_SEGMENT_SIZE
    objects = list_wal_objects(repo, stream)
    by_name = _by_name(objects, result)
    segments = [o for o in objects if o.name.kind == "segment"]
    if segments:
        to_check = _walk_chain(repo, source, identity, segments, by_name, size, result)
        if decode:
            _decode_all(repo, to_check, identity, size, jobs, result)
        result.checked = len(to_check)
    else:
        epoch = f" in epoch {result.epoch} ({stream})" if result.epoch > 1 else ""
        result.problems.append(f"no WAL segment is archived for source {source}{epoch}")
    result.seconds = time.monotonic() - started
    return result


def _by_name(objects: list[ArchivedWal], result: WalVerifyResult) -> dict[str, list[ArchivedWal]]:
    """The objects per file name; a name archived with different contents is a problem."""
    by_name: dict[str, list[ArchivedWal]] = {}
    for obj in objects:
        by_name.setdefault(obj.name.name, []).append(obj)
    for name, found in by_name.items():
        if len({o.sha256 for o in found}) > 1:
            result.problems.append(f"{name} is archived {len(found)} times with different contents")
    return by_name


def _walk_chain(repo: Repository, source: str, identity: SourceIdentity | None, segments: list[ArchivedWal],
                by_name: dict[str, list[ArchivedWal]], size: int, result: WalVerifyResult) -> list[ArchivedWal]:
    """Name every segment the chain needs (a missing one is a problem); the objects to decode."""
    # Production's timeline (the judgement restores follow: after a failover the old primary may have archived
    # past the fork last); while nobody can tell, or before production archived a segment, the most recently
    # archived segment's: the live timeline, not an abandoned branch with a higher number.
    production = timeline_judgement.read(repo, result.stream, list(itertools.chain(*by_name.values())),
                                         size).production
    newest = max(segments, key=lambda o: (o.name.timeline == production, o.modified, o.name.timeline,
                                          o.name.segno(size)))
    target = newest.name.timeline
    newest = max((o for o in segments if o.name.timeline == target), key=lambda o: o.name.segno(size))
    try:
        history = read_history(repo, result.stream, target)
    except (ObjectNotFound, IntegrityError) as exc:
        result.problems.append(str(exc))
        history = []
    ranges = timeline_ranges(history, target, size)
    result.timelines = [tli for tli, _first, _last in ranges]
    chain = set(result.timelines)
    start_segno = _start_segno(repo, source, identity, segments, chain, target, size, result)
    expected = [segment_name(_timeline_for(ranges, segno), segno, size)
                for segno in range(start_segno, newest.name.segno(size) + 1)]
    result.start = expected[0] if expected else None
    result.end = newest.name.name
    result.problems += _runs([name for name in expected if name not in by_name], size)
    to_check = [by_name[name][0] for name in expected if name in by_name]
    return to_check + [by_name[history_name(tli)][0] for tli in chain if tli > 1 and history_name(tli) in by_name]


def _start_segno(repo: Repository, source: str, identity: SourceIdentity | None, segments: list[ArchivedWal],
                 chain: set[int], target: int, size: int, result: WalVerifyResult) -> int:
    """Where the chain must begin: the oldest physical backup's start, else the oldest segment on it."""
    backup_start = _oldest_physical_start(repo, source, identity.system_identifier if identity else "")
    if backup_start is None:
        result.start_from = "oldest segment"
        return min(o.name.segno(size) for o in segments if o.name.timeline in chain)
    start_name, start_tli, backup_id = backup_start
    result.start_from = f"backup {backup_id}"
    if start_tli not in chain:
        result.problems.append(
            f"backup {backup_id} is on timeline {start_tli}, which is not an ancestor of timeline {target}"
        )
    return parse_wal_name(start_name).segno(size)


def _timeline_for(ranges: list[tuple[int, int, int | None]], segno: int) -> int:
    """The timeline recovery reads segment ``segno`` from."""
    chosen = ranges[0][0]
    for tli, first, _last in ranges:
        if segno >= first:
            chosen = tli
    return chosen


def _decode_all(repo: Repository, objects: list[ArchivedWal], identity: SourceIdentity | None, size: int,
                jobs: int, result: WalVerifyResult) -> None:
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for problem, nbytes in pool.map(lambda o: check_object(repo, o, identity, size), objects):
            result.bytes += nbytes
            if problem:
                result.problems.append(problem)


def _runs(missing: list[str], size: int) -> list[str]:
    """Missing segments as ranges: "gap: 000000010000000000000005 .. 000000010000000000000007 (3)"."""
    problems: list[str] = []
    run: list[WalName] = []

    def flush() -> None:
        if run:
            span = run[0].name if len(run) == 1 else f"{run[0].name} .. {run[-1].name}"
            problems.append(f"gap: {span} missing ({len(run)} segment{'s' if len(run) > 1 else ''})")

    for name in missing:
        parsed = parse_wal_name(name)
        if run and (parsed.timeline != run[-1].timeline or parsed.segno(size) != run[-1].segno(size) + 1):
            flush()
            run = []
        run.append(parsed)
    flush()
    return problems


def check_object(repo: Repository, obj: ArchivedWal, identity: SourceIdentity | None,
                 size: int) -> tuple[str | None, int]:
    """Decode one archived file against its checksum (and a segment's header against ``identity``):
    (the problem or None, plain bytes read)."""
    sink = CountingSink()
    try:
        decode_object(repo, obj, sink)  # type: ignore[arg-type]
        if obj.name.kind == "segment":
            header = read_header(sink.head, obj.key)
            check_segment(obj.name, header, sink.size, obj.key)
            if identity is not None and header.system_identifier != identity.system_identifier:
                return (f"{obj.key} belongs to system {header.system_identifier}, the source is "
                        f"{identity.system_identifier}"), sink.size
    except BackupctlError as exc:
        return str(exc), sink.size
    return None, sink.size
