"""The physical engine: a PostgreSQL cluster's files, full or incremental (PostgreSQL 17+), restored with
archived WAL to any point in time.

A full backup on the database host reads the data directory itself (``pg_filecopy``); incrementals and
backups from elsewhere stream pg_basebackup's archives (``pg_physical``). This module runs one backup with
either: the checks before the lease (archive_mode, an incremental's parent), the choice between the two,
the parent's manifest, the contents a drill judges the copy by, the config files Debian keeps outside
pgdata, and the manifest's facts. The server it copies is the one ``backup_from`` picks
(``postgres.hosts``): the primary, or a standby, whose WAL the primary's archiver (or the standby's own,
with ``archive_mode = always``) must store within ``wal_wait_timeout``; ``extra.server`` records which.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backupctl.core.config import PostgresSource, SourceConfig
from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.log import get_logger
from backupctl.engines import pg_contents, pg_filecopy, pg_physical
from backupctl.engines.base import BackupOptions, Engine, StartRun
from backupctl.engines.pg_clocks import stop_clocks
from backupctl.postgres import hosts
from backupctl.postgres.binaries import find_binaries
from backupctl.postgres.connection import ConnParams
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest
from backupctl.repo.repository import Repository
from backupctl.wal import epochs
from backupctl.wal.listing import find_segments
from backupctl.wal.names import parse_lsn, segment_of_lsn

log = get_logger(__name__)


class PhysicalEngine(Engine):
    """The cluster's files into the repository; its backups need the archived WAL from their start to their stop."""

    name = "physical"
    source_kind = "postgres"
    backup_types = ("full", "incr")
    uses_wal = True
    drill_checks = ("plan", "restore", "recovery", "connect", "amcheck", "row_counts")
    schedule_jobs = ("full", "incr")

    def check_options(self, source: SourceConfig, options: BackupOptions) -> None:
        if options.export_json:
            raise ConfigError("--export-json applies to SQLite backups")
        if options.databases:
            raise ConfigError("--database applies to logical backups: a physical backup takes the whole cluster")

    def backup(self, repo: Repository, source: PostgresSource, backup_type: str, options: BackupOptions,
               start: StartRun) -> Manifest:
        """The data directory (copied, or streamed by pg_basebackup) into the repository, with the config files
        Debian keeps outside pgdata."""
        host = hosts.backup_host(source)
        if host.fallback:
            log.warning("backup from the primary: no standby to take it from", reason=host.fallback)
        params = host.params
        facts = pg_physical.server_facts(params)
        standby = _standby_wal(source, host, facts) if host.role == "standby" else None
        if standby is None and facts.archive_mode == "off":
            raise BackupctlError(
                f"archive_mode is off on source {source.name}: physical backups take their WAL from the archive; "
                f"run `backupctl pg-settings {source.name}` for the settings, then restart the server"
            )
        # A server of any history epoch of the source (after pg_upgrade: `wal new-epoch`), else refused.
        identity = epochs.register_system(repo, source.name, facts.system_identifier, facts.major, facts.segment_size)
        binaries = find_binaries(min_major=facts.major, bindir=source.bindir, need="pg_basebackup")
        tmp_root = Path(source.tmp_dir) if source.tmp_dir else Path(tempfile.gettempdir())
        parent = _incremental_parent(repo, source, facts) if backup_type == "incr" else None
        run = start(backup_type)
        with run.cleanup_on_failure(), tempfile.TemporaryDirectory(dir=tmp_root) as scratch:
            # The databases' sizes estimate a full copy; an incremental one stores an unknown part of them.
            run.expect(facts.data_size if parent is None else None)
            parent_manifest = None
            if parent is not None:
                parent_manifest = Path(scratch) / "parent_backup_manifest"
                with open(parent_manifest, "wb") as out:
                    repo.pipeline.read(parent.object(layout.PG_BACKUP_MANIFEST), out)
            # Drills judge the restored copy by these: read from the statistics, never by scanning a table.
            contents = pg_contents.describe(params, list(facts.databases))
            label, fast = f"backupctl {run.id}", source.checkpoint == "fast"
            wal_present = _wal_present(repo, identity.stream)
            if parent is not None:
                why_not: str | None = "incremental backups come from the server"
            elif source.copy == "pg_basebackup":
                why_not = f"sources.{source.name}.copy = pg_basebackup"
            else:
                why_not = pg_filecopy.unusable_reason(params, facts, host.pgdata)
            if why_not is None:
                assert host.pgdata is not None
                streamed = pg_filecopy.copy_data_directory(params, facts, host.pgdata, label, fast, run.store,
                                                           wal_present, source.split_size, standby)
            else:
                log.debug("backup by pg_basebackup", reason=why_not)
                streamed = pg_physical.stream_basebackup(
                    binaries, params, facts, label, fast, run.store, tmp_root, parent_manifest,
                    wal_present=wal_present, part_bytes=source.split_size, standby=standby,
                )
            run.store(layout.PG_BACKUP_MANIFEST, io.BytesIO(streamed.manifest))
            for name, path in facts.config_files.items():
                try:
                    with open(path, "rb") as handle:
                        run.store(layout.config_file(name), handle)
                except OSError as exc:
                    log.warning("config file not backed up", file=path, error=exc.strerror)
            wal = streamed.wal
            assert wal is not None
            extra = _extra(facts, wal, streamed.tablespaces, binaries.version)
            extra["copied_by"] = "backupctl" if why_not is None else "pg_basebackup"
            extra["server"] = host.to_json()
            extra.update(stop_clocks(repo, source.name, params))
            details = {
                "data_directory": facts.data_directory,
                "tablespaces": streamed.tablespaces,
                "config_files": facts.config_files,
                "databases": facts.databases,
                **contents,
            }
            return run.publish("postgres", details, extra, options, parent.id if parent else None)


def _standby_wal(source: PostgresSource, host: hosts.Host, facts: pg_physical.ServerFacts) -> pg_physical.StandbyWal:
    """Who archives a standby backup's WAL: the standby itself with ``archive_mode = always``, else the primary,
    which must then archive (checked when it answers; when it does not, the wait's timeout says so)."""
    primary = ConnParams.from_source(source)
    if facts.archive_mode == "always":
        return pg_physical.StandbyWal(primary, host.params, source.wal_wait_timeout)
    try:
        with primary.connect() as conn:
            mode = str(conn.execute("SHOW archive_mode").fetchone()[0])
    except BackupctlError as exc:
        log.warning("the primary does not answer: the backup's WAL must be archived without pg_switch_wal()",
                    error=str(exc))
    else:
        if mode == "off":
            raise BackupctlError(
                f"archive_mode is off on the primary of source {source.name} and not 'always' on standby {host.name}: "
                "a backup from the standby takes its WAL from the archive; run `backupctl pg-settings "
                f"{source.name}` on the primary (or set archive_mode = always on the standby), then restart it")
    return pg_physical.StandbyWal(primary, primary, source.wal_wait_timeout)


def _extra(facts: pg_physical.ServerFacts, wal: pg_physical.WalRange, tablespaces: dict[str, str],
           tool_version: str) -> dict[str, Any]:
    """The manifest's plain facts of a physical backup: the server, its timeline and WAL range."""
    start, stop = parse_lsn(wal.start_lsn), parse_lsn(wal.end_lsn)
    return {
        "pg_major": facts.major,
        "pg_version_num": facts.version_num,
        "system_identifier": facts.system_identifier,
        "timeline": wal.timeline,
        "start_lsn": wal.start_lsn,
        "stop_lsn": wal.end_lsn,
        "start_wal": segment_of_lsn(wal.timeline, start, facts.segment_size),
        "stop_wal": segment_of_lsn(wal.timeline, stop, facts.segment_size),
        "wal_segment_size": facts.segment_size,
        "tablespaces": sorted(tablespaces),
        "pg_basebackup_version": tool_version,
    }


def _wal_present(repo: Repository, stream: str) -> Callable[[list[str]], set[str]]:
    """Which of some WAL segments the repository holds in ``stream``: how a backup knows its WAL is archived."""
    return lambda segments: set(find_segments(repo, stream, segments))


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
    parents = [m for m in manifests if m.type in PhysicalEngine.backup_types
               and m.extra.get("system_identifier") == facts.system_identifier]
    if not parents:
        raise BackupctlError(f"source {source.name} has no full backup to build on: take --type full first")
    return parents[0]
