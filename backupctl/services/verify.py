"""The verify verb: read every object of a backup back and prove it matches its manifest.

With the identity (or an unencrypted repository) each object is decrypted and decompressed too, which
checks age's authentication tags and the compressed frame's checksum: a full proof short of a restore.
A host with only the public key checks sizes and sha256 of the stored bytes, and says so.

A physical backup is restorable only with the archived WAL that makes its files consistent, so that WAL
range is read and decoded too (``_check_wal_range``): a backup whose range lost a segment fails here, as
its restore would.

An encrypted backup is also checked for whom it is encrypted to (``_check_recipients``): a backup written by
a config whose recipients drifted from the repository's is flagged, with or without the identity.

Every verdict is recorded in the repository; a verdict that cannot be recorded fails the command (the CLI
says so), because ``check`` would otherwise keep showing an older one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backupctl.core.config import PostgresSource
from backupctl.core.errors import BackupctlError, IntegrityError, ObjectNotFound, StorageError
from backupctl.core.log import get_logger
from backupctl.core.progress import NO_PROGRESS, ProgressObserver
from backupctl.engines import pg_logical, pg_physical
from backupctl.engines.registry import engine_of
from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.tools import ProcessSink, ToolProcess
from backupctl.repo import crypto, layout
from backupctl.repo.catalog import Manifest, iso, new_record_id, open_details
from backupctl.repo.pipeline import StoredObject
from backupctl.repo.repository import Repository, listed_recipients, retired_recipients
from backupctl.services.restore import restore_binaries
from backupctl.wal.listing import find_segments
from backupctl.wal.streams import stream_for_system
from backupctl.wal.verify import check_object

log = get_logger(__name__)


@dataclass(frozen=True)
class VerifyResult:
    """The outcome for one backup (or one unreadable manifest); ``to_json`` is one element of what
    `verify -o json` prints (docs/json-output.md)."""

    id: str
    source: str
    mode: str  # "full": decoded; "stored": checksums of stored bytes only; "manifest": the manifest is unreadable
    objects: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()  # what was proven beyond checksums
    record_error: str | None = None  # why the verdict could not be recorded in the repository

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "ok": self.ok,
            "mode": self.mode,
            "objects": self.objects,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "problems": list(self.problems),
            "checks": list(self.checks),
            "recorded": self.record_error is None,
        }


def _list_archive(repo: Repository, obj: StoredObject, binaries: PgBinaries) -> int:
    """Read a dump through its checksums into ``pg_restore --list``; returns its TOC entries."""
    with tempfile.TemporaryFile() as listing:
        argv = pg_logical.list_argv(binaries)
        with ToolProcess(argv, dict(os.environ), f"pg_restore --list of {obj.key}", read=False,
                         stdout=listing) as tool:
            repo.pipeline.read(obj, ProcessSink(tool))  # type: ignore[arg-type]
            try:
                tool.wait()
            except BackupctlError as exc:
                raise IntegrityError(str(exc)) from exc
        listing.seek(0)
        return sum(1 for line in listing if line.strip() and not line.startswith(b";"))


def verify_backup(repo: Repository, manifest: Manifest, bindir: str | None = None,
                  progress: ProgressObserver = NO_PROGRESS) -> VerifyResult:
    """Check every object; damage is collected, not raised, so one report covers the whole backup.

    ``progress`` sees the stored bytes of the backup's objects read (not of its WAL range)."""
    decode = manifest.encryption is None or repo.pipeline.can_decrypt()
    mode = "full" if decode else "stored"
    problems: list[str] = []
    checks: list[str] = []
    objects = size = 0
    started = datetime.now(UTC)
    clock = time.monotonic()
    log.info("verify started", backup_id=manifest.id, mode=mode)
    engine = engine_of(manifest.type)
    dumps: dict[str, str] = {}
    if decode:
        details = open_details(manifest, repo.pipeline)  # proves the sealed description opens, too
        dumps = engine.dump_archives(details)
    lister = restore_binaries(manifest, bindir) if dumps else None
    with repo.reading("verify", [manifest]):
        with repo.pipeline.reading_progress(progress, f"verify {manifest.id}", manifest.objects):
            for obj in manifest.objects:
                try:
                    if obj.key in dumps and lister is not None:
                        entries = _list_archive(repo, obj, lister)
                        checks.append(f"pg_restore --list of database {dumps[obj.key]}: {entries} entries")
                    else:
                        repo.pipeline.check(obj, decode=decode)
                except (IntegrityError, ObjectNotFound) as exc:
                    problems.append(str(exc))
                objects += 1
                size += obj.stored_size
        if manifest.encryption is not None:
            _check_recipients(repo, manifest, decode, problems, checks)
        if engine.uses_wal:
            _check_wal_range(repo, manifest, decode, problems, checks)
    result = VerifyResult(manifest.id, manifest.source, mode, objects, size, time.monotonic() - clock,
                          tuple(problems), tuple(checks))
    log.info(
        "verify finished",
        backup_id=manifest.id,
        ok=result.ok,
        objects=result.objects,
        bytes=result.bytes,
        seconds=round(result.seconds, 3),
    )
    return record_verification(repo, result, started)


def _check_recipients(repo: Repository, manifest: Manifest, decode: bool, problems: list[str],
                      checks: list[str]) -> None:
    """Whom the backup is encrypted to: only recipients the repository lists (or listed once, retired by
    ``repo recipients remove``), and in each object's age header exactly one X25519 stanza per recipient the
    manifest records.

    An X25519 stanza does not name its recipient (it holds an ephemeral share and the wrapped file key), so
    a host with public keys only judges the manifest's record and the count of stanzas: an extra stanza the
    manifest hides is found, a stanza swapped for a stranger's under an honest count is not. The identity
    proves the rest that matters to its holder: the objects decrypt with it (``check`` decodes them).
    """
    damaged = bool(problems)
    recorded = list((manifest.encryption or {}).get("recipients", []))
    listed, retired = listed_recipients(repo.meta), retired_recipients(repo.meta)
    foreign = [r for r in recorded if r not in listed and r not in retired]
    if foreign:
        problems.append(
            f"backup {manifest.id} is encrypted to {', '.join(foreign)}, which the repository does not list "
            f"({', '.join(listed)}): a config whose recipients drifted wrote it; that key's holder can read it"
        )
    if old := [r for r in recorded if r in retired]:
        checks.append(f"encrypted to retired recipient {', '.join(old)} (removed by key rotation)")
    for obj in manifest.objects:
        if obj.encryption is None:
            continue
        try:
            with repo.storage.get(obj.key) as raw:
                stanzas = crypto.header_stanzas(raw)
        except ObjectNotFound:
            continue  # reported by the object's own check
        except ValueError as exc:
            problems.append(f"{obj.key} is not an age file: {exc}")
            continue
        if stanzas != ["X25519"] * len(recorded):
            kinds = ", ".join(sorted(set(stanzas))) or "none"
            problems.append(
                f"{obj.key} has {len(stanzas)} recipient stanzas ({kinds}), but manifest {manifest.id} records "
                f"{len(recorded)} recipients: it is encrypted to a recipient the manifest does not name"
            )
    if decode and not damaged:
        checks.append(f"decrypted with identity {crypto.public_key(repo.pipeline.identity())}, one of the "
                             f"{len(recorded)} recipients recorded")


def _check_wal_range(repo: Repository, manifest: Manifest, decode: bool, problems: list[str],
                     checks: list[str]) -> None:
    """Every archived segment from the backup's start to its stop: present (one listing), once, and with
    ``decode`` read and proven against its plain sha256, its header and the system identifier.

    This is the WAL a restore of this backup cannot do without. It is the same for a full backup and for
    the newest backup of an incremental chain: pg_combinebackup's output begins at the newest backup's
    checkpoint, so a restore replays from that backup's own start; the older backups of the chain need
    their ranges only to be restored themselves, and each is checked when it is verified. WAL after the
    stop (what a point-in-time target needs) is `verify --wal`'s and the restore plan's to judge.
    """
    size = int(manifest.extra["wal_segment_size"])
    names = pg_physical.WalRange(int(manifest.extra["timeline"]), manifest.extra["start_lsn"],
                                 manifest.extra["stop_lsn"]).segments(size)
    identity = stream_for_system(repo, manifest.source, str(manifest.extra["system_identifier"]))
    found = find_segments(repo, identity.stream if identity else manifest.source, names)
    span = f"WAL {names[0]} .. {names[-1]}"
    missing = [name for name in names if name not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problems.append(f"WAL segment {missing[0]}{more} is missing from the archive: backup {manifest.id} "
                               f"cannot be made consistent without its {span}")
    for name, objects in found.items():
        if len({o.sha256 for o in objects}) > 1:
            problems.append(f"WAL segment {name} is archived {len(objects)} times with different contents")
        elif decode:
            problem, _size = check_object(repo, objects[0], identity, size)
            if problem:
                problems.append(problem)
    done = "decoded" if decode else "present (not decoded: no identity to decrypt them)"
    checks.append(f"{span}: {len(found)} of {len(names)} segments {done}")


def record_verification(repo: Repository, result: VerifyResult, started: datetime) -> VerifyResult:
    """Keep the outcome in ``<source>/verifications/<id>.json``: status and check report when each source was
    last proven readable, from any host. A store that refuses the record gives the result a ``record_error``
    (the CLI fails on it): the verdict stands, but ``check`` would keep judging by an older record."""
    record = {
        "id": new_record_id("V", started),
        "source": result.source,
        "backup_id": result.id,
        "status": "passed" if result.ok else "failed",
        "mode": result.mode,
        "started_at": iso(started),
        "finished_at": iso(datetime.now(UTC)),
        "objects": result.objects,
        "bytes": result.bytes,
        "error": result.problems[0] if result.problems else None,
    }
    key = layout.verification_key(result.source, record["id"])
    try:
        repo.storage.put(key, json.dumps(record, indent=1).encode())
    except StorageError as exc:
        log.error("verification result not recorded", key=key, error=str(exc))
        return dataclasses.replace(result, record_error=f"the result of verifying {result.id} was not recorded "
                                                        f"in {key}: {exc}")
    return result


def verify_all(repo: Repository, source: str | None = None,
               progress: ProgressObserver = NO_PROGRESS) -> list[VerifyResult]:
    """Every backup in the repository (or one source), damaged manifests included as failures."""
    manifests, damaged = repo.catalog.scan(source)
    results = [verify_backup(repo, m, source_bindir(repo, m), progress) for m in manifests]
    for key, problem in damaged.items():
        backup_id = key.rsplit("/", 2)[-2]
        unreadable = VerifyResult(backup_id, key.split("/", 1)[0], "manifest", problems=(problem,))
        results.append(record_verification(repo, unreadable, datetime.now(UTC)))
    return results


def latest_backup(repo: Repository, source: str) -> Manifest:
    """The newest complete backup of ``source`` (``verify --latest``, the scheduler's verify job)."""
    manifests, _damaged = repo.catalog.scan(source)
    if not manifests:
        raise BackupctlError(f"source {source} has no backup to verify: take one with `backupctl backup {source}`")
    return manifests[0]


def source_bindir(repo: Repository, manifest: Manifest) -> str | None:
    """The configured bindir of the backup's source, when this host's config has that source."""
    source = repo.config.sources.get(manifest.source)
    return source.bindir if isinstance(source, PostgresSource) else None
