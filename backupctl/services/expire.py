"""The expire verb: apply a source's retention plan, backups first, then WAL, under the source's expire lease.

The plan comes from ``retention.plan_retention`` over what the repository holds right now; `--dry-run`
prints it and the real run executes exactly it, with two late checks that can only keep more: a reader that
started meanwhile, and the lease (a run whose lease was taken over stops). Pins cannot change while it runs:
`pin` takes the same lease.

A backup stops existing the moment its manifest is deleted, so that goes first. Readers (restore, verify,
drill) write their lease before they read a manifest, so listing the readers again after the manifests are
gone finds every reader that could still be using a removed backup: those backups' data objects stay, with
an ``expired.json`` marker, for `repo gc` to remove once the reader has finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from backupctl.core import faultpoints
from backupctl.core.config import RetentionConfig, SourceConfig
from backupctl.core.errors import BackupctlError, ConfigError, DecryptionError, IntegrityError, ObjectNotFound
from backupctl.core.log import get_logger
from backupctl.core.progress import NO_PROGRESS, Meter, ProgressObserver, metered
from backupctl.engines.registry import PHYSICAL_TYPES, source_kind
from backupctl.repo import layout, lease, pins
from backupctl.repo.catalog import Manifest, iso
from backupctl.repo.repository import Repository
from backupctl.services.retention import RetentionPlan, WalInventory, has_rules, plan_retention
from backupctl.wal.fetch import read_history
from backupctl.wal.listing import list_wal_objects
from backupctl.wal.names import DEFAULT_SEGMENT_SIZE
from backupctl.wal.streams import streams_of

log = get_logger(__name__)



@dataclass
class ExpireInputs:
    """Everything the plan is made from, kept so that late findings can re-plan from the same facts."""

    source: str
    policy: RetentionConfig
    now: datetime
    manifests: list[Manifest]
    pins: dict[str, str]
    held: dict[str, str]
    wal: list[WalInventory]

    def plan(self) -> RetentionPlan:
        return plan_retention(self.source, self.manifests, self.policy, self.now, self.pins, self.held, self.wal)


@dataclass
class ExpireOutcome:
    """The plan, and in a real run what became of each of its rows."""

    plan: RetentionPlan
    dry_run: bool
    guard: str | None = None  # why the real run would refuse without --force
    results: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        rows = self.plan.rows()
        for row in rows:
            default = "planned" if self.dry_run else ("kept" if row["action"] == "keep" else "removed")
            row["result"] = self.results.get(row["id"], default)
        return rows


def readers_by_backup(repo: Repository, source: str) -> dict[str, str]:
    """Backup id -> the live reader (restore, verify, drill) that holds it."""
    return {backup_id: f"{r.operation} on {r.host} pid {r.pid}"
            for r in lease.live_readers(repo.storage, source) for backup_id in r.backups}


def gather(repo: Repository, source: SourceConfig, now: datetime | None = None, verb: str = "expire") -> ExpireInputs:
    """Read what the plan needs: manifests, pins, live readers, (PostgreSQL) the WAL listing, and "now" on
    the store's clock (the clock of Last-Modified and of each backup's ``store_stop_time``), never this
    host's: an expiring host whose clock runs days ahead must not push backups out of the recovery window.
    ``verb`` (expire, delete) names the command in the error about a damaged manifest."""
    manifests, damaged = repo.catalog.scan(source.name)
    if damaged:
        key, problem = next(iter(damaged.items()))
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise BackupctlError(f"{verb} of {source.name} stopped before removing anything: {problem}{more}; a "
                             f"backup that cannot be read cannot be judged (fix or remove {key}, see "
                             "`backupctl verify --all`)")
    pinned = {backup_id: pin.describe() for backup_id, pin in pins.read_pins(repo.storage, source.name).items()}
    inventories = _wal_inventories(repo, source.name, manifests) if source_kind(source).archives_wal else []
    return ExpireInputs(source.name, source.retention, now or lease.store_now(repo.storage, source.name), manifests,
                        pinned, readers_by_backup(repo, source.name), inventories)


def _wal_inventories(repo: Repository, source: str, manifests: list[Manifest]) -> list[WalInventory]:
    """Each history epoch's WAL listing and timeline histories (one listing per epoch)."""
    physical = [m for m in manifests if m.type in PHYSICAL_TYPES]
    streams = streams_of(repo, source)
    inventories = []
    for identity in streams:
        objects = list_wal_objects(repo, identity.stream)
        system = identity.system_identifier or None
        members = [m for m in physical if system in (None, str(m.extra.get("system_identifier")))]
        size = identity.segment_size or (int(members[0].extra["wal_segment_size"]) if members else None) \
            or DEFAULT_SEGMENT_SIZE
        timelines = {o.name.timeline for o in objects} | {int(m.extra["timeline"]) for m in members}
        histories: dict[int, list[tuple[int, int]] | None] = {}
        for tli in sorted(t for t in timelines if t > 1):
            try:
                histories[tli] = read_history(repo, identity.stream, tli)
            except (ObjectNotFound, IntegrityError, DecryptionError) as exc:
                log.warning("timeline history unreadable: its WAL is kept", stream=identity.stream, timeline=tli,
                            error=str(exc))
                histories[tli] = None
        inventories.append(WalInventory(objects, histories, size, identity.stream, system, identity is streams[-1]))
    return inventories


def guard_problem(plan: RetentionPlan) -> str | None:
    """A run that removes more than half of a source's backups is more likely a typo than a policy."""
    removed, total = len(plan.removed), len(plan.decisions)
    if removed * 2 <= total:
        return None
    return (f"expire would remove {removed} of the {total} backups of {plan.source}, more than half: check the "
            f"policy with `backupctl expire {plan.source} --dry-run`, then run again with --force")


def expire(repo: Repository, source: SourceConfig, *, dry_run: bool = False, force: bool = False,
           now: datetime | None = None, progress: ProgressObserver = NO_PROGRESS) -> ExpireOutcome:
    """Plan and (unless ``dry_run``) apply the source's retention policy; ``progress`` counts the objects
    removed."""
    if not has_rules(source.retention):
        raise ConfigError(f"source {source.name} has no retention policy, and expire would keep only the newest "
                          f"backups: add a [sources.{source.name}.retention] table (keep_last, keep_daily, ... "
                          "recovery_window)")
    if dry_run:
        plan = gather(repo, source, now).plan()
        problem = guard_problem(plan)
        if problem and force:
            problem = None
        return ExpireOutcome(plan, True, problem)
    with repo.exclusive_lease(source.name, "expire", "expire") as held:
        inputs = gather(repo, source, now)
        plan = inputs.plan()
        problem = guard_problem(plan)
        if problem and not force:
            raise ConfigError(problem)
        return apply(repo, inputs, plan, held, progress)


def apply(repo: Repository, inputs: ExpireInputs, plan: RetentionPlan, held: lease.Lease,
          progress: ProgressObserver = NO_PROGRESS) -> ExpireOutcome:
    """Execute ``plan`` (made from ``inputs``) while holding the source's expire lease ``held``.

    Only ever less than planned: a backup a reader started on stays whole until `repo gc`, with the WAL it
    needs. Pins cannot change meanwhile: `pin` takes this same lease.
    """
    log.info("expire started", source=plan.source, backups=len(plan.decisions), remove=len(plan.removed),
             wal_ranges=len(plan.wal_removed))
    outcome = ExpireOutcome(plan, False)
    # Each backup's manifest and data objects, and the WAL files: what a reader keeps is left out of the count.
    total = sum(len(m.objects) + 1 for m in plan.removed) + sum(len(r.keys) for r in plan.wal_removed)
    with metered(progress, f"expire {plan.source}", total, "objects") as meter:
        deferred = _remove_backups(repo, plan, held, outcome, meter)
        effective = replace(inputs, held={**inputs.held, **deferred}).plan() if deferred else plan
        _remove_wal(repo, plan, effective, held, outcome, meter)
    log.info("expire finished", source=plan.source, removed=len(plan.removed), data_left_for_gc=len(deferred),
             wal_segments=sum(r.segments for r in effective.wal_removed))
    return outcome


def _remove_backups(repo: Repository, plan: RetentionPlan, held: lease.Lease,
                    outcome: ExpireOutcome, meter: Meter) -> dict[str, str]:
    """The planned backups (see ``remove_backups``); returns the ones live readers hold."""
    return remove_backups(repo, plan.source, plan.removed, held, outcome.results, "expire", meter)


def remove_backups(repo: Repository, source: str, doomed: list[Manifest], held: lease.Lease,
                   results: dict[str, str], verb: str, meter: Meter) -> dict[str, str]:
    """Remove backups of ``source``: every manifest first, then the data of each backup no live reader holds.

    The one order of expire and delete (``verb``, which names the log events and the fault points
    ``<verb>.manifest-removed`` and ``<verb>.data-removed``). Newest first, so that a kill -9 between two
    manifests never leaves an incremental listed whose parent is gone; data only once its manifest is, so that
    a listed backup always has all of its objects (a kill leaves data without a manifest: `repo gc` removes
    it). A reader's backup keeps its data, marked ``expired.json``, for `repo gc`; records the readers'
    results in ``results`` and returns backup id -> reader. ``meter`` counts the objects removed (progress).
    """
    storage = repo.storage
    gone: list[Manifest] = []
    for m in sorted(doomed, key=lambda m: (m.finished_at, m.id), reverse=True):
        held.ensure_held()
        storage.delete([m.key])
        meter.add(1)
        faultpoints.hit(f"{verb}.manifest-removed")
        gone.append(m)
        log.info(f"backup {verb}d", source=m.source, backup_id=m.id, type=m.type, finished_at=m.finished_at,
                 stored_bytes=m.stored_size)
    readers = readers_by_backup(repo, source) if gone else {}
    deferred: dict[str, str] = {}
    for m in gone:
        if m.id in readers:
            deferred[m.id] = readers[m.id]
            marker = {"backup_id": m.id, "expired_at": iso(datetime.now(UTC)), "reader": readers[m.id]}
            storage.put(layout.expired_marker_key(m.source, m.id), json.dumps(marker, indent=1).encode())
            results[m.id] = f"manifest removed; data left for `repo gc` ({readers[m.id]} reads it)"
            log.info(f"{verb}d backup's data left for gc", backup_id=m.id, reader=readers[m.id])
            continue
        storage.delete([info.key for info in storage.list(layout.backup_prefix(m.source, m.id))])
        meter.add(len(m.objects))
        faultpoints.hit(f"{verb}.data-removed")
    return deferred


def _remove_wal(repo: Repository, plan: RetentionPlan, effective: RetentionPlan, held: lease.Lease,
                outcome: ExpireOutcome, meter: Meter) -> None:
    """The planned WAL ranges, less what ``effective`` (the plan with late pins and readers) keeps."""
    allowed = {key for r in effective.wal_removed for key in r.keys}
    for wal_range in plan.wal_removed:
        keys = [k for k in wal_range.keys if k in allowed]
        row_id = wal_range.to_json()["id"]
        if len(keys) < len(wal_range.keys):
            outcome.results[row_id] = (f"{len(wal_range.keys) - len(keys)} of {len(wal_range.keys)} files kept for "
                                       "a backup that stayed")
        if not keys:
            continue
        held.ensure_held()
        repo.storage.delete(keys)
        meter.add(len(keys))
        log.info("WAL expired", source=plan.source, stream=wal_range.stream, timeline=wal_range.timeline,
                 first=wal_range.first, last=wal_range.last, files=len(keys), stored_bytes=wal_range.stored_size,
                 reason=wal_range.reason)
