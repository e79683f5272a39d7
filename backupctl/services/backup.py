"""The backup verb: run an engine, stream its output into the repository, publish the manifest last."""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupctl.core import faultpoints
from backupctl.core.config import PostgresSource, SqliteSource
from backupctl.core.errors import BackupctlError, ConfigError, StorageError
from backupctl.core.log import get_logger
from backupctl.core.signals import shielded
from backupctl.engines import pg_contents, pg_logical, pg_physical, sqlite
from backupctl.postgres.cluster import find_binaries
from backupctl.postgres.connection import ConnParams
from backupctl.repo.catalog import MANIFEST_NAME, Manifest, backup_prefix, iso, new_backup_id, seal_details
from backupctl.repo.lease import Lease, store_now
from backupctl.repo.pipeline import StoredObject, iter_reader
from backupctl.repo.repository import Repository
from backupctl.wal import archive, epochs

log = get_logger(__name__)


@dataclass(frozen=True)
class BackupOptions:
    """What the command line may add to a backup."""

    export_json: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    databases: tuple[str, ...] = ()


class _Run:
    """One backup in progress: its id, clock and stored objects, removed again if it fails."""

    def __init__(self, repo: Repository, source: str, backup_type: str) -> None:
        self.repo = repo
        self.source = source
        self.type = backup_type
        self.started = datetime.now(UTC)
        self.clock = time.monotonic()
        self.id = new_backup_id(backup_type, self.started)
        self.prefix = backup_prefix(source, self.id)
        self.objects: list[StoredObject] = []
        self.lease: Lease | None = None

    def store(self, name: str, stream: Any, finalize: Any = None) -> StoredObject:
        obj = self.repo.pipeline.store(self.prefix + name, stream, finalize)
        self.objects.append(obj)
        return obj

    @contextlib.contextmanager
    def cleanup_on_failure(self) -> Iterator[None]:
        """Hold the source's backup lease; a failed backup takes its objects with it.

        The lease makes a second backup of the same source fail at once, on any host; removal of a failed
        backup's objects is best effort (`repo gc` catches the rest, and skips a backup whose lease lives).
        Once a manifest for this id is stored (whatever the failure that followed it), or when that cannot
        be known, the objects stay: a published backup must never lose its data.
        """
        with self.repo.exclusive_lease(self.source, "backup", f"{self.type} backup", {"backup_id": self.id}) as held:
            self.lease = held
            log.info("backup started", backup_id=self.id, source=self.source, type=self.type)
            try:
                yield
            except BaseException:
                with shielded(), contextlib.suppress(StorageError):
                    if self.repo.storage.head(self.prefix + MANIFEST_NAME) is None:
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


def backup_source(repo: Repository, source: SqliteSource | PostgresSource, backup_type: str | None,
                  options: BackupOptions) -> Manifest:
    """Dispatch on the source's kind and the requested type; a type the source cannot take is a usage error."""
    if isinstance(source, SqliteSource):
        if backup_type not in (None, "sqlite"):
            raise ConfigError(f"source {source.name} is a SQLite database: --type {backup_type} does not apply "
                              "(it takes --type sqlite, the default)")
        if options.databases:
            raise ConfigError("--database applies to PostgreSQL logical backups")
        return backup_sqlite(repo, source, options)
    if backup_type not in (None, "logical", "full", "incr"):
        raise ConfigError(f"source {source.name} is a PostgreSQL server: --type {backup_type} does not apply "
                          "(it takes --type logical, full or incr)")
    if options.export_json:
        raise ConfigError("--export-json applies to SQLite backups")
    if backup_type in (None, "logical"):
        return backup_logical(repo, source, options)
    if options.databases:
        raise ConfigError("--database applies to logical backups: a physical backup takes the whole cluster")
    return backup_physical(repo, source, "incr" if backup_type == "incr" else "full", options)


def backup_sqlite(repo: Repository, source: SqliteSource, options: BackupOptions) -> Manifest:
    """Copy, check, upload and catalog one SQLite database."""
    repo.register_source(source.name, {"kind": "sqlite"})
    run = _Run(repo, source.name, "sqlite")
    tmp_root = Path(source.tmp_dir) if source.tmp_dir else Path(tempfile.gettempdir())
    with run.cleanup_on_failure(), sqlite.snapshot(source, tmp_root) as snap:
        with open(snap.path, "rb") as data:
            run.store("database.sqlite3", data)
        details = snap.details
        if options.export_json:
            # Object names are numbered, never named after tables: names are data, and may be secret.
            names = {table: f"export/{i:04d}.jsonl" for i, table in enumerate(sorted(details["tables"]))}
            run.store("export/schema.sql", io.BytesIO(details["schema_sql"].encode()))
            for table, name in names.items():
                run.store(name, iter_reader(sqlite.export_rows(snap.path, table)))
            details["export"] = {"schema": "export/schema.sql", "tables": names}
        extra = {"page_size": details["page_size"], "page_count": details["page_count"]}
        return run.publish("sqlite", details, extra, options)


def _select_databases(server: pg_logical.ServerInfo, wanted: tuple[str, ...] | list[str],
                      source: PostgresSource) -> list[pg_logical.DatabaseInfo]:
    by_name = {d.name: d for d in server.databases}
    if not wanted:
        return list(server.databases)
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise BackupctlError(
            f"database {missing[0]} does not exist on source {source.name} or does not allow "
            f"connections (databases: {', '.join(sorted(by_name)) or 'none'})"
        )
    return [by_name[name] for name in wanted]


def backup_logical(repo: Repository, source: PostgresSource, options: BackupOptions) -> Manifest:
    """Globals, then one pg_dump per database, each streamed straight into the repository."""
    params = ConnParams.from_source(source)
    server = pg_logical.inspect_server(params)
    epochs.register_system(repo, source.name, server.system_identifier, server.major)
    selected = _select_databases(server, options.databases or source.databases, source)
    binaries = pg_logical.dump_binaries(source.bindir, server.major)
    run = _Run(repo, source.name, "logical")
    databases: dict[str, Any] = {}
    with run.cleanup_on_failure():
        with pg_logical.globals_dump(binaries, params, source.role_passwords) as tool:
            run.store("globals.sql", tool.stdout, tool.wait)
        for index, info in enumerate(selected):
            log.info("dumping database", backup_id=run.id, database=info.name, size=info.size)
            # Numbered, never named after the database: names are data, and may be secret.
            with pg_logical.snapshot_dump(binaries, params, info) as tool:
                obj = run.store(f"databases/{index:04d}.pgdump", tool.stdout, tool.wait)
            databases[info.name] = {**info.to_json(), "object": obj.key}
        details = {
            "server_version": server.version,
            "pg_dump_version": binaries.version,
            "globals": run.objects[0].key,
            "databases": databases,
        }
        extra = {
            "pg_major": server.major,
            "pg_version_num": server.version_num,
            "system_identifier": server.system_identifier,
            "pg_dump_major": binaries.major,
            "databases": len(databases),
            **_stop_clocks(repo, source.name, params),
        }
        return run.publish("postgres", details, extra, options)


def backup_physical(repo: Repository, source: PostgresSource, backup_type: str,
                    options: BackupOptions) -> Manifest:
    """pg_basebackup streamed into the repository, with the config files Debian keeps outside pgdata."""
    params = ConnParams.from_source(source)
    facts = pg_physical.server_facts(params)
    if facts.archive_mode == "off":
        raise BackupctlError(
            f"archive_mode is off on source {source.name}: physical backups take their WAL from the archive; "
            f"run `backupctl pg-settings {source.name}` for the settings, then restart the server"
        )
    # A server of any history epoch of the source (after pg_upgrade: `wal new-epoch`), else refused.
    identity = epochs.register_system(repo, source.name, facts.system_identifier, facts.major, facts.segment_size)
    binaries = find_binaries(min_major=facts.major, bindir=source.bindir, need="pg_basebackup")
    tmp_root = Path(source.tmp_dir) if source.tmp_dir else Path(tempfile.gettempdir())
    parent = _incremental_parent(repo, source, facts) if backup_type == "incr" else None
    run = _Run(repo, source.name, backup_type)
    with run.cleanup_on_failure(), tempfile.TemporaryDirectory(dir=tmp_root) as scratch:
        parent_manifest = None
        if parent is not None:
            parent_manifest = Path(scratch) / "parent_backup_manifest"
            with open(parent_manifest, "wb") as out:
                repo.pipeline.read(parent.object("backup_manifest"), out)
        # Drills judge the restored copy by these: read from the statistics, never by scanning a table.
        contents = pg_contents.describe(params, list(facts.databases))
        streamed = pg_physical.stream_basebackup(
            binaries, params, facts, f"backupctl {run.id}", source.checkpoint == "fast", run.store, tmp_root,
            parent_manifest, wal_present=_wal_present(repo, identity.stream), part_bytes=source.split_size,
        )
        run.store("backup_manifest", io.BytesIO(streamed.manifest))
        for name, path in facts.config_files.items():
            try:
                with open(path, "rb") as handle:
                    run.store(f"config/{name}", handle)
            except OSError as exc:
                log.warning("config file not backed up", file=path, error=exc.strerror)
        wal = streamed.wal
        assert wal is not None
        start, stop = archive.parse_lsn(wal.start_lsn), archive.parse_lsn(wal.end_lsn)
        extra = {
            "pg_major": facts.major,
            "pg_version_num": facts.version_num,
            "system_identifier": facts.system_identifier,
            "timeline": wal.timeline,
            "start_lsn": wal.start_lsn,
            "stop_lsn": wal.end_lsn,
            "start_wal": archive.segment_of_lsn(wal.timeline, start, facts.segment_size),
            "stop_wal": archive.segment_of_lsn(wal.timeline, stop, facts.segment_size),
            "wal_segment_size": facts.segment_size,
            "tablespaces": sorted(streamed.tablespaces),
            "pg_basebackup_version": binaries.version,
            **_stop_clocks(repo, source.name, params),
        }
        details = {
            "data_directory": facts.data_directory,
            "tablespaces": streamed.tablespaces,
            "config_files": facts.config_files,
            "databases": facts.databases,
            **contents,
        }
        return run.publish("postgres", details, extra, options, parent.id if parent else None)


def _wal_present(repo: Repository, stream: str) -> Callable[[list[str]], set[str]]:
    """Which of some WAL segments the repository holds in ``stream``: how a backup knows its WAL is archived."""
    return lambda segments: set(archive.find_segments(repo, stream, segments))


def _stop_clocks(repo: Repository, source: str, params: ConnParams) -> dict[str, str]:
    """The moment the backup stopped, on the server's clock and then on the store's, read back to back.

    ``started_at``/``finished_at`` are the backup host's clock, which may be off by any amount. Restore
    targets and commit times are the server's clock, so the planner compares a backup with them through
    ``server_stop_time``; Last-Modified and expire's "now" are the store's, so retention uses
    ``store_stop_time``; their difference turns one into the other (to about a second: S3 keeps whole
    seconds). Read after a physical backup's WAL is stored, a little after pg_basebackup stopped: a
    later time only ever makes the planner pick an older backup, never one that ends after its target.
    """
    with params.connect() as conn:
        server = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    return {"server_stop_time": iso(server), "store_stop_time": iso(store_now(repo.storage, source))}


def _incremental_parent(repo: Repository, source: PostgresSource, facts: pg_physical.ServerFacts) -> Manifest:
    """The newest physical backup of this cluster: what an incremental backup builds on."""
    if facts.major < 17:
        raise ConfigError(f"--type incr needs PostgreSQL 17 or newer; source {source.name} runs {facts.major}: "
                          "take --type full backups")
    if not facts.summarize_wal:
        raise BackupctlError(
            f"summarize_wal is off on source {source.name}: incremental backups need WAL summaries "
            "(ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf()), and then a full backup to build on"
        )
    manifests, _ = repo.catalog.scan(source.name)
    parents = [m for m in manifests if m.type in ("full", "incr")
               and m.extra.get("system_identifier") == facts.system_identifier]
    if not parents:
        raise BackupctlError(f"source {source.name} has no full backup to build on: take --type full first")
    return parents[0]
