"""The backup verb: run an engine, stream its output into the repository, publish the manifest last."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backupctl.catalog import Manifest, backup_prefix, iso, new_backup_id, seal_details
from backupctl.config import SqliteSource
from backupctl.engines import sqlite
from backupctl.log import get_logger
from backupctl.pipeline import StoredObject, iter_reader
from backupctl.repository import Repository

log = get_logger(__name__)


@dataclass(frozen=True)
class BackupOptions:
    """What the command line may add to a backup."""

    export_json: bool = False
    labels: tuple[tuple[str, str], ...] = ()


def backup_sqlite(repo: Repository, source: SqliteSource, options: BackupOptions) -> Manifest:
    """Copy, check, upload and catalog one SQLite database."""
    repo.register_source(source.name, {"kind": "sqlite"})
    started = datetime.now(UTC)
    clock = time.monotonic()
    backup_id = new_backup_id("sqlite", started)
    prefix = backup_prefix(source.name, backup_id)
    log.info("backup started", backup_id=backup_id, source=source.name, path=str(source.path))
    tmp_root = Path(source.tmp_dir) if source.tmp_dir else Path(tempfile.gettempdir())
    objects: list[StoredObject] = []
    with sqlite.snapshot(source, tmp_root) as snap:
        with open(snap.path, "rb") as data:
            objects.append(repo.pipeline.store(f"{prefix}database.sqlite3", data))
        details = snap.details
        if options.export_json:
            objects.extend(_export(repo, snap, prefix))
            # Object names are numbered, never named after tables: names are data, and may be secret.
            details["export"] = {"schema": "export/schema.sql", "tables": _export_names(snap)}
    manifest = Manifest(
        id=backup_id,
        source=source.name,
        kind="sqlite",
        type="sqlite",
        started_at=iso(started),
        finished_at=iso(datetime.now(UTC)),
        objects=objects,
        encryption=repo.pipeline.encryption_record(),
        details=details,
        labels=dict(options.labels),
        extra={"page_size": details["page_size"], "page_count": details["page_count"]},
    )
    seal_details(manifest, repo.pipeline)
    repo.catalog.write(manifest)
    log.info(
        "backup finished",
        backup_id=backup_id,
        source=source.name,
        bytes=manifest.size,
        stored_bytes=manifest.stored_size,
        seconds=round(time.monotonic() - clock, 3),
    )
    return manifest


def _export_names(snap: sqlite.Snapshot) -> dict[str, str]:
    return {table: f"export/{index:04d}.jsonl" for index, table in enumerate(sorted(snap.details["tables"]))}


def _export(repo: Repository, snap: sqlite.Snapshot, prefix: str) -> list[StoredObject]:
    """Per-table JSON lines and the schema DDL, stored beside the database image."""
    objects = [repo.pipeline.store_bytes(f"{prefix}export/schema.sql", snap.details["schema_sql"].encode())]
    for table, name in _export_names(snap).items():
        objects.append(repo.pipeline.store(prefix + name, iter_reader(sqlite.export_rows(snap.path, table))))
    return objects
