"""`repo gc`: remove what interrupted and deferred work left in the repository.

- Backup folders without a manifest: the objects of a backup that was killed before it published (older
  than the grace period, judged by the store's clock), or of a backup expire removed while a reader held
  it (marked ``expired.json``; removed once no live reader holds it). A folder that a live backup lease
  names, or that a live reader holds, is never touched.
- Reader leases that expired long ago, the store-clock and conditional-write probes of killed processes, and
  exclusive-lease generations that a newer generation superseded.
- Unfinished writes older than the grace period, which no listing shows: on S3 multipart uploads never
  completed (their parts stay stored and billed), in a local repository the hidden temp files of a killed
  writer. Those of a backup whose lease is live are spared by moving the cutoff before that backup began.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from backupctl.core import faultpoints
from backupctl.core.log import get_logger
from backupctl.core.units import format_duration
from backupctl.repo import layout, lease
from backupctl.repo.catalog import iso
from backupctl.repo.repository import Repository
from backupctl.services.expire import readers_by_backup
from backupctl.storage import ObjectInfo

log = get_logger(__name__)

LEASE_CLOCK_MARGIN = timedelta(minutes=10)  # a backup's first write starts after its lease; allow slow lease writes


@dataclass
class GcItem:
    """One thing gc looked at: removed (or to remove) or kept, and why."""

    id: str
    item: str  # "backup-debris" | "expired-backup" | "stale-lease" | "partial-writes" | "multipart-uploads"
    source: str | None
    action: str  # "remove" | "keep" | "abort"
    reason: str
    keys: list[str] = field(default_factory=list)
    stored_size: int = 0
    before: datetime | None = None  # multipart uploads: abort those started before this (store's clock)
    result: str | None = None

    def to_json(self, dry_run: bool) -> dict[str, Any]:
        return {"id": self.id, "item": self.item, "source": self.source, "action": self.action,
                "rules": [self.reason], "objects": len(self.keys), "stored_size": self.stored_size,
                "result": "planned" if dry_run else (self.result or ("kept" if self.action == "keep" else "removed"))}


def _backup_dirs(repo: Repository, source: str) -> dict[str, list[ObjectInfo]]:
    """Objects under ``<source>/backups/``, by backup id (one listing)."""
    dirs: dict[str, list[ObjectInfo]] = {}
    for info in repo.storage.list(layout.backups_prefix(source)):
        backup_id = layout.backup_id_of(source, info.key)
        if backup_id is not None:
            dirs.setdefault(backup_id, []).append(info)
    return dirs


def _source_items(repo: Repository, source: str, cutoff: datetime, grace: str) -> list[GcItem]:
    dirs = {bid: objs for bid, objs in _backup_dirs(repo, source).items()
            if not any(layout.is_manifest_key(o.key) for o in objs)}
    items: list[GcItem] = []
    if dirs:
        running = lease.live_exclusive(repo.storage, source, "backup")
        running_id = running.details.get("backup_id") if running else None
        readers = readers_by_backup(repo, source)
        for backup_id, objs in sorted(dirs.items()):
            keys = [o.key for o in objs]
            size = sum(o.size for o in objs)
            newest = max(o.modified for o in objs)
            expired = any(layout.is_expired_marker_key(o.key) for o in objs)
            kind = "expired-backup" if expired else "backup-debris"
            if running is not None and backup_id == running_id:
                items.append(GcItem(backup_id, kind, source, "keep", f"a running backup writes it: "
                                    f"{running.describe()}", keys, size))
            elif backup_id in readers:
                items.append(GcItem(backup_id, kind, source, "keep", f"read by {readers[backup_id]}", keys, size))
            elif expired:
                items.append(GcItem(backup_id, kind, source, "remove", "expired while a reader held it; no reader "
                                    "holds it now", keys, size))
            elif newest > cutoff:
                items.append(GcItem(backup_id, kind, source, "keep", f"no manifest, but written within the grace "
                                    f"period ({grace}): a backup may still be finishing", keys, size))
            else:
                items.append(GcItem(backup_id, kind, source, "remove", "no manifest: left by an interrupted backup "
                                    f"(newest object written {newest:%Y-%m-%d %H:%M:%S %Z})", keys, size))
    live = {r.key for r in lease.live_readers(repo.storage, source)}
    stale = [o for o in repo.storage.list(layout.reader_leases_prefix(source))
             if o.key not in live and o.modified < cutoff]
    stale += [o for o in repo.storage.list(layout.clock_probes_prefix(source)) if o.modified < cutoff]
    stale += lease.superseded(repo.storage, source)
    if stale:
        items.append(GcItem(layout.locks_prefix(source).rstrip("/"), "stale-lease", source, "remove",
                            "expired reader leases, superseded lease generations and clock probes of processes "
                            "that ended without cleaning up",
                            [o.key for o in stale], sum(o.size for o in stale)))
    return items


def _write_cutoff(repo: Repository, sources: list[str], cutoff: datetime) -> datetime:
    """Unfinished writes (S3 multipart uploads, local temp files) of a running backup are never touched:
    start their cutoff before the oldest running backup began on the store's clock (its host's may be days
    ahead), whatever the grace period."""
    for source in sources:
        running = lease.live_exclusive(repo.storage, source, "backup")
        if running is not None:
            cutoff = min(cutoff, running.store_started_at - LEASE_CLOCK_MARGIN)
    return cutoff


def plan_gc(repo: Repository, grace: float) -> tuple[list[GcItem], datetime]:
    """What gc would do now, and the cutoff (on the store's clock) before which debris counts as stale."""
    now = lease.store_now(repo.storage, None)
    cutoff = now - timedelta(seconds=grace)
    text = format_duration(grace)
    sources = repo.catalog.sources()
    items = [item for source in sources for item in _source_items(repo, source, cutoff, text)]
    probes = [o for prefix in (layout.clock_probes_prefix(None), layout.PROBE_PREFIX)
              for o in repo.storage.list(prefix) if o.modified < cutoff]
    probes += lease.superseded(repo.storage, None)
    if probes:
        items.append(GcItem(layout.locks_prefix(None).rstrip("/"), "stale-lease", None, "remove",
                            "superseded lease generations, and clock and conditional-write probes of processes "
                            "that ended without cleaning up",
                            [o.key for o in probes], sum(o.size for o in probes)))
    write_cutoff = _write_cutoff(repo, sources, cutoff)
    partial = repo.storage.stale_temp_files(write_cutoff)
    if partial:
        items.append(GcItem("partial-writes", "partial-writes", None, "remove", "temp files of writes that never "
                            f"finished (a killed process), older than the grace period ({text})",
                            [path for path, _size in partial], sum(size for _path, size in partial)))
    if repo.storage.keeps_incomplete_uploads:
        items.append(GcItem("multipart-uploads", "multipart-uploads", None, "abort",
                            f"incomplete multipart uploads started before {write_cutoff:%Y-%m-%d %H:%M:%S %Z} "
                            f"(the grace period, {text}, and any running backup)", before=write_cutoff))
    return items, cutoff


def collect(repo: Repository, grace: float, dry_run: bool = False) -> list[GcItem]:
    """Plan, and unless ``dry_run`` remove, under the repository-wide gc lease."""
    if dry_run:
        return plan_gc(repo, grace)[0]
    with repo.exclusive_lease(None, "gc", "repo gc") as held:
        items, _cutoff = plan_gc(repo, grace)
        for item in items:
            if item.action == "keep":
                continue
            held.ensure_held()
            if item.item == "multipart-uploads":
                assert item.before is not None
                aborted = repo.storage.abort_incomplete_uploads(item.before)
                item.result = f"aborted {aborted}"
                log.info("incomplete multipart uploads aborted", count=aborted, started_before=iso(item.before))
                continue
            if item.item == "partial-writes":
                repo.storage.remove_temp_files(item.keys)
                log.info("partial writes removed", files=len(item.keys), bytes=item.stored_size)
                continue
            if item.item == "backup-debris" and item.source and \
                    repo.storage.head(layout.manifest_key(item.source, item.id)) is not None:
                item.result = "kept: its backup published meanwhile"
                continue
            repo.storage.delete(item.keys)
            faultpoints.hit("gc.removed")
            log.info("garbage removed", item=item.item, id=item.id, source=item.source, objects=len(item.keys),
                     stored_bytes=item.stored_size, reason=item.reason)
    return items
