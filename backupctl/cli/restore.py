"""The restore command: one verb for three engines, each given its own typed request.

``restore`` takes the options of all three engines (a SQLite file, a PostgreSQL logical dump, a physical
point-in-time restore); which one runs depends on the backup named, so the options are parsed into the
request of that engine only (``SqliteRequest``, ``LogicalRequest``, ``PhysicalRequest``), whose fields are
named as the command's parameters. Services and the writers are imported where they are used: start-up cost,
see ``cli.common``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from backupctl.cli.common import OUTPUT, State, TargetOptions, act_as, pass_state, target_options
from backupctl.cli.completion import complete_backup_ids, complete_backup_ids_or_sources
from backupctl.core.errors import BackupctlError, ConfigError

if TYPE_CHECKING:  # types only (start-up cost)
    from backupctl.core.config import Config
    from backupctl.core.progress import ProgressObserver
    from backupctl.repo.catalog import Manifest
    from backupctl.repo.repository import Repository

R = TypeVar("R")


def _request(kind: type[R], options: dict[str, Any]) -> R:
    """The request of one engine, from the command's options of the same names."""
    return kind(**{field.name: options[field.name] for field in fields(kind)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class SqliteRequest:
    """``restore SQLITE_BACKUP_ID --to FILE``."""

    to: Path | None
    force: bool


@dataclass(frozen=True)
class LogicalRequest:
    """``restore LOGICAL_BACKUP_ID --database NAME --to-database NEW`` (or ``--globals-only``)."""

    force: bool
    database: str | None
    to_database: str | None
    jobs: int | None
    no_owner: bool
    clean: bool
    schemas: tuple[str, ...]
    tables: tuple[str, ...]
    globals_only: bool
    to_file: Path | None
    apply_globals: bool
    host: str | None
    port: int | None
    user: str | None
    dbname: str | None


@dataclass(frozen=True)
class PhysicalRequest:
    """``restore SOURCE --pgdata DIR`` (or a physical backup's id): a point-in-time restore of a source."""

    force: bool
    delta: bool
    pgdata: Path | None
    target: TargetOptions
    target_timeline: str
    target_action: str | None
    exclusive: bool
    backup_choice: str | None
    dry_run: bool
    start_server: bool
    standby: bool
    primary_conninfo: str | None
    slot: str | None
    keep_archiving: bool
    tablespaces: tuple[str, ...]
    restore_config: Path | None
    jobs: int | None
    port: int | None

    def tablespace_map(self) -> dict[str, str]:
        """``--tablespace OID=DIR`` options as the map ``pitr`` takes, with absolute directories."""
        mapping = {}
        for item in self.tablespaces:
            oid, sep, directory = item.partition("=")
            if not sep or not oid.isdigit() or not directory:
                raise ConfigError(f"--tablespace {item!r} must look like OID=DIR")
            mapping[oid] = str(Path(directory).absolute())
        return mapping


@click.command()
@click.argument("backup_id", metavar="BACKUP_ID|SOURCE", shell_complete=complete_backup_ids_or_sources)
@click.option("--to", type=click.Path(path_type=Path), help="SQLite: the database file to write.")
@click.option("--force", is_flag=True, help="Replace an existing file (--to, --to-file) or data directory.")
@click.option("--delta", is_flag=True,
              help="Physical: reuse the files in --pgdata whose checksums match the backup; write the rest.")
@click.option("--pgdata", type=click.Path(path_type=Path), help="Physical: the data directory to restore into.")
@target_options("Physical: stop as soon as the backup is consistent.")
@click.option("--target-timeline", default="latest", show_default=True,
              help="latest (the timeline production is on, judged from the archive: not merely the highest), "
                   "current (the backup's) or a number.")
@click.option("--target-action", type=click.Choice(["promote", "pause", "shutdown"]),
              help="Physical: what the server does at the target (default: PostgreSQL's, pause).")
@click.option("--exclusive", is_flag=True, help="Physical: stop just before the target (time, LSN, xid).")
@click.option("--backup", "backup_choice",
              help="Physical: restore this backup (id, unique prefix, latest, oldest) instead of the planner's choice.",
              shell_complete=complete_backup_ids)
@click.option("--dry-run", is_flag=True, help="Physical: print the plan and stop.")
@click.option("--start", "start_server", is_flag=True,
              help="Physical: start the restored server and wait until it reaches the target.")
@click.option("--standby", is_flag=True,
              help="Physical: a replica: standby.signal, no recovery target, following the latest timeline.")
@click.option("--primary-conninfo", metavar="CONNINFO",
              help="With --standby: stream from this primary (a libpq connection string); leave it out for an "
                   "archive-only standby.")
@click.option("--slot", metavar="SLOT",
              help="With --primary-conninfo: the primary's replication slot to stream through.")
@click.option("--archive", "keep_archiving", is_flag=True,
              help="Physical: the restored copy keeps the backup's WAL archiving (default: archive_mode = off, "
                   "unless restoring into the source's own pgdata).")
@click.option("--tablespace", "tablespaces", multiple=True, metavar="OID=DIR",
              help="Physical: restore a tablespace to another directory (repeatable).")
@click.option("--restore-config", type=click.Path(path_type=Path),
              help="Physical: write the config files kept outside pgdata (Debian) into this directory.")
@OUTPUT
@click.option("--database", help="Logical: the database of the backup to restore.")
@click.option("--to-database", help="Logical: the database to restore into (created from template0).")
@click.option("--jobs", "-j", type=click.IntRange(1, 64),
              help="Parallel jobs: pg_restore (logical; stages the dump, default 1 streams it) or "
                   "parts fetched and written at once (physical, default: one per core).")
@click.option("--no-owner", is_flag=True, help="Logical: objects belong to the restoring user; no grants.")
@click.option("--clean", is_flag=True, help="Logical: restore into a non-empty database, replacing objects.")
@click.option("--schema", "schemas", multiple=True, metavar="S",
              help="Logical: only this schema (repeatable).")
@click.option("--table", "tables", multiple=True, metavar="T", help="Logical: only this table (repeatable).")
@click.option("--globals-only", is_flag=True, help="Logical: the roles and tablespaces script.")
@click.option("--to-file", type=click.Path(path_type=Path), help="With --globals-only: write it here.")
@click.option("--apply", "apply_globals", is_flag=True, help="With --globals-only: run it on the server.")
@click.option("--host", help="Target server (default: the source's own connection settings).")
@click.option("--port", type=int, help="Target server's port (with --start: the restored server's).")
@click.option("--user", help="Target server's user.")
@click.option("--dbname", help="Database to connect to on the target for server-wide work.")
@pass_state
def restore(state: State, backup_id: str, output: str, **options: Any) -> None:
    """Restore: SQLite to a file (--to), PostgreSQL logical into a database (--database), or a
    PostgreSQL source to a point in time (SOURCE --pgdata DIR)."""
    from backupctl.cli.progress import progress_for
    from backupctl.repo.catalog import is_backup_id
    from backupctl.repo.repository import open_repository
    from backupctl.services import restore as service

    config = state.config()
    progress = progress_for(state)
    if not is_backup_id(backup_id) and backup_id in config.sources:
        kind = config.sources[backup_id].kind
        if options["standby"] and kind != "postgres":
            raise ConfigError(f"--standby builds a PostgreSQL replica: {backup_id} is a {kind} source")
        _restore_physical(config, backup_id, _request(PhysicalRequest, options), output, progress)
        return
    with open_repository(config) as repo:
        manifest = repo.catalog.resolve(backup_id)
        if options["standby"] and manifest.type in ("sqlite", "logical"):
            raise ConfigError(f"--standby builds a replica from a physical backup: {manifest.id} is a "
                              f"{manifest.type} backup")
        if manifest.type == "sqlite":
            sqlite = _request(SqliteRequest, options)
            if sqlite.to is None:
                raise ConfigError("restoring a SQLite backup needs --to PATH")
            with repo.reading("restore", [manifest]):
                written = service.restore_sqlite(repo, manifest, sqlite.to, sqlite.force, progress)
            click.echo(f"restored {manifest.id} to {written}")
            return
        if manifest.type == "logical":
            with repo.reading("restore", [manifest]):
                _restore_logical(repo, manifest, config, _request(LogicalRequest, options), progress)
            return
    # A physical backup by id: a point-in-time restore of its source, from that backup.
    physical = replace(_request(PhysicalRequest, options), backup_choice=manifest.id)
    _restore_physical(config, manifest.source, physical, output, progress)


def _restore_physical(config: Config, source_name: str, request: PhysicalRequest, output: str,
                      progress: ProgressObserver) -> None:
    from backupctl.cli.output import writer
    from backupctl.core.config import PostgresSource
    from backupctl.repo.repository import open_repository
    from backupctl.services import pitr, restore_physical, restore_start, standby
    from backupctl.wal.conf import restore_command

    source = config.source(source_name)
    if not isinstance(source, PostgresSource):
        raise ConfigError(f"source {source_name} is not a PostgreSQL source: restore its backups by id")
    target = request.target.target(request.target_timeline, request.target_action, not request.exclusive)
    replica = standby.check_request(request.standby, request.primary_conninfo, request.slot, target)
    mapping = request.tablespace_map()
    if not request.dry_run and request.pgdata is None:
        raise ConfigError("a physical restore needs --pgdata DIR (or --dry-run to see the plan)")
    if request.start_server and not request.dry_run:
        restore_start.check_port(request.port)  # before anything is downloaded
    act_as(config, "server", source_name)
    with open_repository(config) as repo:
        choice = repo.catalog.resolve(request.backup_choice, source_name).id if request.backup_choice else None
        plan = pitr.make_plan(repo, source_name, target, choice)
        if request.dry_run:
            writer(output).plan(plan)
            return
        assert request.pgdata is not None  # checked above: only a dry run goes without
        options = restore_physical.RestoreOptions(
            pgdata=request.pgdata, force=request.force, jobs=request.jobs or restore_physical.default_jobs(),
            standby=request.standby, tablespace_map=mapping, restore_config=request.restore_config,
            tmp_dir=Path(source.tmp_dir) if source.tmp_dir else None, delta=request.delta,
            archive=request.keep_archiving, source_pgdata=source.pgdata,
            standby_settings=replica.settings() if replica else {},
        )
        command = restore_command(config.file, source_name, plan.epoch)
        # The reader lease lasts through recovery with --start: expire must not remove the WAL it replays.
        with repo.reading("restore", restore_physical.backup_chain(repo, plan.backup)):
            result = restore_physical.restore_physical(repo, plan, options, command, source.bindir, progress)
            if replica:
                result["standby"] = replica.to_json(plan.timeline_setting(standby=True))
            if request.start_server:
                try:
                    result["recovery"] = restore_start.start_and_wait(
                        Path(result["pgdata"]), plan, source.bindir, source.user, request.port, request.standby)
                except BackupctlError as exc:
                    raise restore_start.RecoveryFailed(f"{exc}; once the cause is fixed, run the restore again: "
                                                       f"{_retry_command(plan.backup.type)}") from exc
            if replica and request.start_server:  # not streaming leaves it running: no retry, the error says so
                standby.settle(Path(result["pgdata"]), source.user, result["recovery"], plan, replica)
    writer(output).restored(result, plan.backup.id)


def _retry_command(backup_type: str) -> str:
    """This very command, redone over what the failed attempt restored (an incremental chain needs --force)."""
    words = [word for word in sys.argv[1:] if word not in ("--force", "--delta")]
    return shlex.join(["backupctl", *words, "--force" if backup_type == "incr" else "--delta"])


def _restore_logical(repo: Repository, manifest: Manifest, config: Config, request: LogicalRequest,
                     progress: ProgressObserver) -> None:
    from backupctl.core.config import PostgresSource
    from backupctl.postgres.connection import ConnParams
    from backupctl.services import restore as service

    source = config.sources.get(manifest.source)
    base = ConnParams.from_source(source) if isinstance(source, PostgresSource) else ConnParams()
    target = base.with_(host=request.host, port=request.port, user=request.user, dbname=request.dbname)
    bindir = source.bindir if isinstance(source, PostgresSource) else None
    binaries = service.restore_binaries(manifest, bindir)
    if request.globals_only:
        if request.to_file and request.apply_globals:
            raise ConfigError("--to-file and --apply exclude each other")
        apply_to = target if request.apply_globals else None
        script = service.restore_globals(repo, manifest, request.to_file, request.force, apply_to, binaries)
        if script is not None:
            click.echo(script, nl=False)
        elif request.to_file:
            click.echo(f"globals of {manifest.id} written to {request.to_file}", err=True)
        return
    if not request.database or not request.to_database:
        raise ConfigError("restoring a logical backup needs --database NAME and --to-database NEW "
                          "(or --globals-only)")
    logical = service.LogicalRestore(
        database=request.database, to_database=request.to_database, jobs=request.jobs or 1,
        no_owner=request.no_owner, clean=request.clean, schemas=request.schemas, tables=request.tables,
    )
    tmp_dir = Path(source.tmp_dir) if isinstance(source, PostgresSource) and source.tmp_dir else None
    service.restore_logical(repo, manifest, logical, target, binaries, tmp_dir, progress)
    where = target.describe(logical.to_database)
    click.echo(f"restored database {logical.database} of {manifest.id} into {where}")
