"""The restore verb: stream a backup back, prove it, and only then put it in place.

A restore never leaves a half-written target: data lands in a temp file beside the target (same
filesystem, so the final rename is atomic), is checked, fsynced, and renamed over the target last.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from backupctl.catalog import Manifest, open_details
from backupctl.engines import sqlite
from backupctl.errors import ConfigError
from backupctl.log import get_logger
from backupctl.repository import Repository
from backupctl.signals import shielded
from backupctl.storage.local import fsync_dir

log = get_logger(__name__)


def restore_sqlite(repo: Repository, manifest: Manifest, target: Path, force: bool) -> Path:
    """Restore a SQLite backup to ``target``; refuses to replace an existing file without ``force``."""
    if manifest.kind != "sqlite":
        raise ConfigError(f"backup {manifest.id} is a {manifest.kind} backup: --to takes SQLite backups")
    target = target.expanduser().absolute()
    if target.is_dir():
        raise ConfigError(f"{target} is a directory: give the path of the database file to write")
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: pass --force to replace it (stop its applications first)")
    if not target.parent.is_dir():
        raise ConfigError(f"directory {target.parent} does not exist")
    details = open_details(manifest, repo.pipeline)
    database = manifest.object("database.sqlite3")
    sqlite.ensure_free_space(target.parent, database.size + 1024**2, f"restoring {manifest.id}")
    log.info("restore started", backup_id=manifest.id, target=str(target))
    clock = time.monotonic()
    temp = target.parent / f".{target.name}.backupctl-{secrets.token_hex(4)}"
    try:
        with open(temp, "xb") as out:
            repo.pipeline.read(database, out)
            out.flush()
            os.fsync(out.fileno())
        sqlite.check_restored(temp, details)
        if "file_mode" in details:
            os.chmod(temp, details["file_mode"])
        sqlite.drop_sidecars(target)
        os.replace(temp, target)
        fsync_dir(target.parent)
    finally:
        with shielded():
            for leftover in (temp, Path(f"{temp}-wal"), Path(f"{temp}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
    log.info(
        "restore finished",
        backup_id=manifest.id,
        target=str(target),
        bytes=database.size,
        seconds=round(time.monotonic() - clock, 3),
    )
    return target

