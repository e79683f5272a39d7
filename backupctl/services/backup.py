"""The backup verb: run an engine, stream its output into the repository, publish the manifest last."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from backupctl.core import faultpoints
from backupctl.core.config import SourceConfig
from backupctl.core.errors import BackupctlError, StorageError
from backupctl.core.log import get_logger
from backupctl.core.progress import NO_PROGRESS, Meter, ProgressObserver, metered
from backupctl.core.signals import shielded
from backupctl.engines.base import BackupOptions
from backupctl.engines.registry import engine_for
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest, iso, new_backup_id, seal_details
from backupctl.repo.lease import Lease
from backupctl.repo.pipeline import StoredObject
from backupctl.repo.repository import Repository

log = get_logger(__name__)


class _Run:
    """One backup in progress: its id, clock and stored objects, removed again if it fails (the
    ``engines.base.BackupRun`` an engine fills)."""

    def __init__(self, repo: Repository, source: str, backup_type: str, progress: ProgressObserver) -> None:
        self.repo = repo
        self.progress = progress
        self.meter: Meter | None = None
        self.source = source
        self.type = backup_type
        self.started = datetime.now(UTC)
        self.clock = time.monotonic()
        self.id = new_backup_id(backup_type, self.started)
        self.prefix = layout.backup_prefix(source, self.id)
        self.objects: list[StoredObject] = []
        self.lease: Lease | None = None

    def store(self, name: str, stream: Any, finalize: Any = None) -> StoredObject:
        obj = self.repo.pipeline.store(self.prefix + name, stream, finalize)
        self.objects.append(obj)
        return obj

    def expect(self, total_bytes: int | None) -> None:
        if self.meter is not None:
            self.meter.expect(total_bytes)

    @contextlib.contextmanager
    def cleanup_on_failure(self) -> Iterator[None]:
        """Hold the source's backup lease; a failed backup takes its objects with it.

        The lease makes a second backup of the same source fail at once, on any host; removal of a failed
        backup's objects is best effort (`repo gc` catches the rest, and skips a backup whose lease lives).
        Once a manifest for this id is stored (whatever the failure that followed it), or when that cannot
        be known, the objects stay: a published backup must never lose its data.
        """
        with (self.repo.exclusive_lease(self.source, "backup", f"{self.type} backup", {"backup_id": self.id}) as held,
              metered(self.progress, f"backup {self.source}") as meter, self.repo.pipeline.metering(meter)):
            self.lease = held
            self.meter = meter
            held.progress = meter.snapshot
            log.info("backup started", backup_id=self.id, source=self.source, type=self.type)
            try:
                yield
            except BaseException:
                with shielded(), contextlib.suppress(StorageError):
                    if self.repo.storage.head(layout.manifest_key(self.source, self.id)) is None:
                        self.repo.storage.delete([o.key for o in self.objects])
                raise

    def _check_stored(self) -> None:
        """Every object this backup wrote is in the repository with its size (one listing)."""
        stored = {info.key: info.size for info in self.repo.storage.list(self.prefix)}
        missing = [o.key for o in self.objects if stored.get(o.key) != o.stored_size]
        if missing:
            raise BackupctlError(f"backup {self.id} lost {len(missing)} of its {len(self.objects)} objects before "
                                 f"it was published ({missing[0]} is missing or of another size); nothing was "
                                 "published: run the backup again")

    def publish(self, kind: str, details: dict[str, Any], extra: dict[str, Any],
                options: BackupOptions, parent: str | None = None) -> Manifest:
        manifest = Manifest(
            id=self.id,
            source=self.source,
            kind=kind,
            type=self.type,
            started_at=iso(self.started),
            finished_at=iso(datetime.now(UTC)),
            objects=self.objects,
            encryption=self.repo.pipeline.encryption_record(),
            details=details,
            labels=dict(options.labels),
            extra=extra,
            parent=parent,
        )
        seal_details(manifest, self.repo.pipeline)
        assert self.lease is not None, "publish runs inside cleanup_on_failure"
        # Under a lease renewed just now and held without a gap since the backup began, with every object
        # still stored: a lapse (a stopped process) lets gc remove the objects of an unpublished backup.
        faultpoints.hit("backup.data-stored")
        self.lease.renew()
        self._check_stored()
        self.repo.catalog.write(manifest)
        faultpoints.hit("backup.published")
        log.info(
            "backup finished",
            backup_id=self.id,
            source=self.source,
            type=self.type,
            bytes=manifest.size,
            stored_bytes=manifest.stored_size,
            seconds=round(time.monotonic() - self.clock, 3),
        )
        return manifest


def backup_source(repo: Repository, source: SourceConfig, backup_type: str | None,
                  options: BackupOptions, progress: ProgressObserver = NO_PROGRESS) -> Manifest:
    """Back ``source`` up with the engine of the requested type; a type or option the source cannot take is
    a usage error. ``progress`` sees the bytes read from the source, of the engine's estimate of the total."""
    engine, chosen = engine_for(source, backup_type, options.databases)
    engine.check_options(source, options)
    return engine.backup(repo, source, chosen, options, lambda typ: _Run(repo, source.name, typ, progress))
