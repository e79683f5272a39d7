"""The restore verb: stream a backup back, prove it, and only then put it in place.

A restore never leaves a half-written target: data lands in a temp file beside the target (same
filesystem, so the final rename is atomic), is checked, fsynced, and renamed over the target last.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backupctl.core.errors import BackupctlError, ConfigError, IntegrityError
from backupctl.core.log import get_logger
from backupctl.core.progress import NO_PROGRESS, ProgressObserver
from backupctl.core.signals import shielded
from backupctl.engines import pg_logical, sqlite
from backupctl.postgres.binaries import PgBinaries, find_binaries
from backupctl.postgres.connection import ConnParams
from backupctl.postgres.tools import ProcessSink, ToolProcess
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest, open_details
from backupctl.repo.pipeline import StoredObject
from backupctl.repo.repository import Repository
from backupctl.storage.local import create_private, fsync_dir

log = get_logger(__name__)


def restore_sqlite(repo: Repository, manifest: Manifest, target: Path, force: bool,
                   progress: ProgressObserver = NO_PROGRESS) -> Path:
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
    database = manifest.object(layout.SQLITE_DATABASE)
    sqlite.ensure_free_space(target.parent, database.size + 1024**2, f"restoring {manifest.id}")
    log.info("restore started", backup_id=manifest.id, target=str(target))
    clock = time.monotonic()
    temp = target.parent / f".{target.name}.backupctl-{secrets.token_hex(4)}"
    try:
        with open(temp, "xb") as out, repo.pipeline.reading_progress(progress, f"restore {manifest.id}", [database]):
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



@dataclass(frozen=True)
class LogicalRestore:
    """What `restore --database` was asked to do."""

    database: str
    to_database: str
    jobs: int = 1
    no_owner: bool = False
    clean: bool = False
    schemas: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()


def _logical_details(repo: Repository, manifest: Manifest) -> dict:
    if manifest.type != "logical":
        raise ConfigError(f"backup {manifest.id} is a {manifest.type} backup, not a logical one")
    return open_details(manifest, repo.pipeline)


def _object(manifest: Manifest, key: str) -> StoredObject:
    for obj in manifest.objects:
        if obj.key == key:
            return obj
    raise IntegrityError(f"backup {manifest.id} lacks object {key}")


def restore_binaries(manifest: Manifest, bindir: str | None) -> PgBinaries:
    """A pg_restore that reads archives written by this backup's pg_dump."""
    return find_binaries(min_major=manifest.extra["pg_dump_major"], bindir=bindir, need="pg_restore")


def restore_logical(repo: Repository, manifest: Manifest, request: LogicalRestore, target: ConnParams,
                    binaries: PgBinaries, tmp_dir: Path | None, progress: ProgressObserver = NO_PROGRESS) -> None:
    """Restore one database of a logical backup into a new (or, with --clean, an existing) database."""
    details = _logical_details(repo, manifest)
    databases = details["databases"]
    if request.database not in databases:
        names = ", ".join(sorted(databases))
        raise ConfigError(f"backup {manifest.id} has no database {request.database} (it has: {names})")
    info = pg_logical.DatabaseInfo.from_json(
        {k: v for k, v in databases[request.database].items() if k != "object"}
    )
    dump = _object(manifest, databases[request.database]["object"])
    roles, version, existing = pg_logical.server_roles_and_version(target)
    where = target.describe(request.to_database)
    created = request.to_database not in existing
    if not created and not request.clean and pg_logical.user_objects(target, request.to_database):
        raise ConfigError(
            f"{where} is not empty: pass --clean to replace its objects, or pick a new --to-database"
        )
    log.info("restore started", backup_id=manifest.id, database=request.database, target=where,
             jobs=request.jobs)
    clock = time.monotonic()
    if created:
        owner = None if request.no_owner or info.owner not in roles else info.owner
        _create_database(target, info, request.to_database, version, owner, roles)
    try:
        if request.schemas:
            # pg_restore --schema restores what is in a schema but not the schema itself.
            with target.connect(request.to_database) as conn:
                for schema in request.schemas:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {pg_logical.quote_ident(schema)}")
        with repo.pipeline.reading_progress(progress, f"restore {request.database}", [dump]):
            _run_pg_restore(repo, dump, request, target, binaries, tmp_dir)
    except BaseException:
        if created:
            with shielded(), contextlib.suppress(BackupctlError), target.connect() as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {pg_logical.quote_ident(request.to_database)}")
        raise
    log.info("restore finished", backup_id=manifest.id, database=request.database, target=where,
             bytes=dump.size, seconds=round(time.monotonic() - clock, 3))


def _create_database(target: ConnParams, info: pg_logical.DatabaseInfo, name: str, version: int,
                     owner: str | None, roles: set[str]) -> None:
    statements, skipped = pg_logical.database_properties_sql(info, name, roles)
    with target.connect() as conn:
        conn.execute(pg_logical.create_database_sql(info, name, version, owner))
        for statement in statements:
            conn.execute(statement)
    for what in skipped:
        log.warning("database property not restored", database=name, skipped=what)


def _run_pg_restore(repo: Repository, dump: StoredObject, request: LogicalRestore, target: ConnParams,
                    binaries: PgBinaries, tmp_dir: Path | None) -> None:
    """Stream the dump into pg_restore; a parallel restore needs a seekable file, so it is staged."""
    options = {"jobs": request.jobs, "no_owner": request.no_owner, "clean": request.clean,
               "schemas": request.schemas, "tables": request.tables}
    env = target.env()
    if request.jobs <= 1:
        argv = pg_logical.restore_argv(binaries, request.to_database, dump_file=None, **options)
        with ToolProcess(argv, env, f"pg_restore into {request.to_database}", read=False) as tool:
            repo.pipeline.read(dump, ProcessSink(tool))  # type: ignore[arg-type]
            tool.wait()
        return
    staging = Path(tmp_dir) if tmp_dir else Path(tempfile.gettempdir())
    sqlite.ensure_free_space(staging, dump.size + 64 * 1024**2, f"staging a {dump.size >> 20} MiB dump for "
                             f"pg_restore --jobs (set tmp_dir, or restore with --jobs 1 to stream)")
    with tempfile.NamedTemporaryFile(dir=staging, prefix="backupctl-restore-", suffix=".pgdump") as staged:
        repo.pipeline.read(dump, staged)  # type: ignore[arg-type]
        staged.flush()
        argv = pg_logical.restore_argv(binaries, request.to_database, dump_file=staged.name, **options)
        with ToolProcess(argv, env, f"pg_restore into {request.to_database}") as tool:
            tool.stdout.read()
            tool.wait()


def restore_globals(repo: Repository, manifest: Manifest, to_file: Path | None, force: bool,
                    apply_to: ConnParams | None, binaries: PgBinaries | None) -> str | None:
    """The globals script to a file, to a server (psql, past "already exists" errors) or returned."""
    details = _logical_details(repo, manifest)
    obj = _object(manifest, details["globals"])
    if apply_to is not None:
        assert binaries is not None
        argv = pg_logical.apply_sql_argv(binaries, apply_to.dbname)
        with ToolProcess(argv, apply_to.env(), "psql applying the globals", read=False) as tool:
            repo.pipeline.read(obj, ProcessSink(tool))  # type: ignore[arg-type]
            tool.wait()
        for line in tool.stderr_lines():
            log.warning("globals: statement failed", detail=line)
        return None
    if to_file is None:
        buffer = io.BytesIO()
        repo.pipeline.read(obj, buffer)
        return buffer.getvalue().decode()
    if to_file.exists() and not force:
        raise ConfigError(f"{to_file} exists: pass --force to replace it")
    temp = to_file.parent / f".{to_file.name}.backupctl-{secrets.token_hex(4)}"
    try:
        with create_private(temp) as out:  # role password hashes: 0600 whatever the umask
            repo.pipeline.read(obj, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, to_file)
        fsync_dir(to_file.parent)
    finally:
        with shielded(), contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return None
