"""A physical backup's files back on disk: its tar parts fetched, decoded and written in parallel.

Each stored part is a complete tar archive of whole files (see ``tarstream``), so ``jobs`` threads take
one part each, largest first: download, sha256, decryption, decompression, writing and the checksum of
every file against PostgreSQL's backup_manifest all happen in that one pass (zstd, hashlib, CRC-32C and
the system calls release the GIL). Nothing is read back afterwards: the check that ``pg_verifybackup``
makes by reading every restored file again is made on the bytes as they are written (``pgmanifest``).
Each file's writeback to the disk is started while it is written (``tarstream.start_writeback``), so
the disk works alongside the decompression; at the end one ``sync`` waits for it all, so a restore that
reports success survives a power cut.

Backups made before parts existed hold one ``base.tar`` (and one ``tablespaces/<oid>.tar``) object;
those restore the same way, as a single part each.
"""

from __future__ import annotations

import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupctl.core import faultpoints
from backupctl.core.errors import ConfigError, IntegrityError
from backupctl.core.log import get_logger
from backupctl.postgres.backup_manifest import BackupManifest, ManifestCheck, expected_directories, prepare_delta, prune
from backupctl.postgres.tarstream import TarExtractor, remove_path
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest
from backupctl.repo.pipeline import StoredObject
from backupctl.repo.repository import Repository

log = get_logger(__name__)



@dataclass(frozen=True)
class Archive:
    """One stored tar part and where its members go."""

    obj: StoredObject
    root: Path
    prefix: bytes  # of its members' names in the backup_manifest


def backup_archives(backup: Manifest, pgdata: Path, locations: dict[str, str]) -> list[Archive]:
    """The tar parts of ``backup`` with their destinations; ``locations`` maps tablespace oids to directories."""
    archives = []
    for obj in backup.objects:
        name = layout.name_in_backup(backup.source, backup.id, obj.key)
        if not layout.is_tar_part(name):
            continue
        oid = layout.tar_part_tablespace(name)
        if oid is None:
            archives.append(Archive(obj, pgdata, b""))
            continue
        if not locations.get(oid):
            raise ConfigError(f"tablespace {oid} has no known location: pass --tablespace {oid}=DIR")
        archives.append(Archive(obj, Path(locations[oid]), f"pg_tblspc/{oid}/".encode()))
    return archives


def tablespace_locations(backup: Manifest, mapping: dict[str, str]) -> dict[str, str]:
    """Where each tablespace goes: where it was, unless ``--tablespace OID=DIR`` says otherwise."""
    return {**dict(backup.details.get("tablespaces", {}) if backup.details else {}), **mapping}


def restore_backup_files(repo: Repository, backup: Manifest, pgdata: Path, jobs: int, mapping: dict[str, str],
                         delta: bool = False, sync: bool = True) -> dict[str, Any]:
    """The files of one backup in ``pgdata`` (and its tablespaces), proven against its backup_manifest.

    ``sync`` false: no flush to disk (a chain's backups staged for pg_combinebackup, which flushes its output).
    """
    clock = time.monotonic()
    locations = tablespace_locations(backup, mapping)
    archives = backup_archives(backup, pgdata, locations)
    roots = {a.prefix: a.root for a in archives}
    roots[b""] = pgdata
    for prefix, root in roots.items():
        if prefix and not delta and root.exists() and any(root.iterdir()):
            oid = prefix.decode().split("/")[1]
            raise ConfigError(f"tablespace directory {root} is not empty: pass --tablespace {oid}=DIR to restore "
                              "it elsewhere, or --delta to reuse what is there")
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = _read_bytes(repo, backup.object(layout.PG_BACKUP_MANIFEST))
    manifest = BackupManifest(data)
    result: dict[str, Any] = {}
    reused: set[bytes] = set()
    if delta:
        found = prepare_delta(manifest, roots, jobs)
        reused = found.reused
        result.update({"reused_files": len(reused), "reused_bytes": found.reused_bytes, "removed": found.removed,
                       "delta_scan_seconds": round(time.monotonic() - clock, 3)})
    check = ManifestCheck(manifest, reused)
    directories = _extract_all(repo, archives, check, jobs)
    result["verified_files"] = check.finish()
    with open(pgdata / "backup_manifest", "wb") as out:
        out.write(data)
    if delta:
        prune(roots, expected_directories(manifest, directories))
    _link_tablespaces(pgdata, {a.prefix.split(b"/")[1].decode(): a.root for a in archives if a.prefix})
    result["download_extract_seconds"] = round(time.monotonic() - clock, 3)
    if sync:
        synced = time.monotonic()
        os.sync()  # durable before success is reported; one call for every filesystem written to
        result["sync_seconds"] = round(time.monotonic() - synced, 3)
    return result


def _read_bytes(repo: Repository, obj: StoredObject) -> bytes:
    out = io.BytesIO()
    repo.pipeline.read(obj, out)
    return out.getvalue()


def _extract_all(repo: Repository, archives: list[Archive], check: ManifestCheck, jobs: int) -> set[bytes]:
    """Every part, ``jobs`` at a time, largest first; the first failure stops the others."""
    stop = threading.Event()
    directories: set[bytes] = set()

    def extract(archive: Archive) -> None:
        def keep_link(name: bytes) -> bool:  # WAL on its own disk, as initdb --waldir leaves it
            return not archive.prefix and name == b"pg_wal"

        extractor = TarExtractor(archive.root, check.archive(archive.prefix), keep_link, stop)
        try:
            repo.pipeline.read(archive.obj, extractor)  # type: ignore[arg-type]
            extractor.finish()
            faultpoints.hit("restore.archive-extracted")
        finally:
            extractor.close()
        directories.update(archive.prefix + name for name in extractor.directories)

    ordered = sorted(archives, key=lambda a: a.obj.size, reverse=True)
    with ThreadPoolExecutor(max(1, jobs), thread_name_prefix="extract") as pool:
        futures = [pool.submit(extract, archive) for archive in ordered]
        try:
            for future in futures:
                future.result()
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            raise
    return directories


def _link_tablespaces(pgdata: Path, restored: dict[str, Path]) -> None:
    """pg_tblspc/<oid> as symlinks to where each tablespace went, as a plain-format backup has them.

    pg_basebackup's tar format lists them in tablespace_map instead (and pg_tblspc/<oid> as empty
    directories); with the links in place the file goes, so the server does not relink them itself.
    A link only ever points where this restore put a tablespace (``restored``): a tablespace_map that
    names another one (a forged backup's way to send the server's writes elsewhere) is refused.
    """
    tablespace_file = pgdata / "tablespace_map"
    if not tablespace_file.exists():
        return
    oids = [line.partition(" ")[0] for line in tablespace_file.read_text().splitlines() if line]
    foreign = [oid for oid in oids if oid not in restored]
    if foreign:
        raise IntegrityError(f"the backup's tablespace_map names tablespace {foreign[0]}, which the backup does not "
                             "hold: it is damaged or forged, and no link goes outside what was restored")
    (pgdata / "pg_tblspc").mkdir(mode=0o700, exist_ok=True)
    for oid in oids:
        link = pgdata / "pg_tblspc" / oid
        remove_path(os.fsencode(link))
        link.symlink_to(restored[oid])
    tablespace_file.unlink()
    log.debug("tablespaces linked", pgdata=str(pgdata))
