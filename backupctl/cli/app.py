"""The command line: parse, load the config, call one service function, render the result.

Failures the user can act on are ``BackupctlError``s and print as one line with their exit code
(2 for usage and config, 1 for a failed operation); a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import shlex
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from backupctl import __version__
from backupctl.console import command_word
from backupctl.core import log, signals
from backupctl.core.errors import EXIT_FAILED, EXIT_USAGE, BackupctlError, ConfigError, Interrupted

OUTPUT = click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True,
    help="Result format: a table for people, JSON for programs.",
)


@dataclass
class State:
    """What the group options give every command."""

    config_file: str | None
    debug: bool

    def config(self) -> Any:
        from backupctl.core.config import config_path, load_config
        from backupctl.storage.local import warn_if_readable_by_others

        path = config_path(self.config_file)
        config = load_config(path)
        warn_if_readable_by_others(path, "config file")  # not on the wal-push fast path: once a segment is noise
        return config

    def repository(self) -> Any:
        from backupctl.repo.repository import open_repository

        return open_repository(self.config())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config", "config_file", metavar="FILE",
    help="Config file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).",
)
@click.option("--debug", is_flag=True, help="Debug logs, and a traceback on errors.")
@click.version_option(__version__, prog_name="backupctl")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, debug: bool) -> None:
    """Backups and point-in-time recovery for PostgreSQL, and SQLite for development."""
    log.configure(debug=debug)
    ctx.obj = State(config_file, debug)


pass_state = click.make_pass_decorator(State)


@cli.command()
@pass_state
def init(state: State) -> None:
    """Create the repository (local directory or S3 bucket/prefix) named by the config."""
    from backupctl.core.config import PostgresSource
    from backupctl.core.privileges import become_server_user
    from backupctl.repo.repository import init_repository

    config = state.config()
    # A repository that PostgreSQL sources archive into belongs to the server's OS user.
    for source in config.sources.values():
        if isinstance(source, PostgresSource) and source.pgdata:
            become_server_user(source)
            break
    repo, created = init_repository(config)
    with repo:
        verb = "created" if created else "already exists, left unchanged:"
        enc = "encrypted with age" if repo.meta.get("encryption") else "not encrypted"
        click.echo(f"repository {verb} {repo.storage.location} ({enc}, format {repo.meta['version']})")


@cli.command()
@click.argument("source")
@click.option("--type", "backup_type", type=click.Choice(["sqlite", "logical", "full", "incr"]),
              help="Backup type (default: sqlite for SQLite sources, logical for PostgreSQL).")
@click.option("--database", "databases", multiple=True, metavar="NAME",
              help="Logical: back up only this database (repeatable; default: all, or the config's list).")
@click.option("--export-json", is_flag=True, help="SQLite: also store each table as JSON lines, and the DDL.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Tag the backup (repeatable).")
@OUTPUT
@pass_state
def backup(state: State, source: str, backup_type: str | None, databases: tuple[str, ...],
           export_json: bool, labels: tuple[str, ...], output: str) -> None:
    """Back up a configured SOURCE into the repository."""
    from backupctl.cli.output import emit_json, human_size
    from backupctl.core.config import PostgresSource
    from backupctl.core.privileges import become_repository_owner
    from backupctl.repo.repository import open_repository
    from backupctl.services.backup import BackupOptions, backup_source

    parsed = []
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {label!r} must look like KEY=VALUE")
        parsed.append((key, value))
    config = state.config()
    src = config.source(source)
    if isinstance(src, PostgresSource):  # SQLite: the database's reader may not be the repository's owner
        become_repository_owner(config, source)
    options = BackupOptions(export_json=export_json, labels=tuple(parsed), databases=databases)
    with open_repository(config) as repo:
        manifest = backup_source(repo, src, backup_type, options)
    if output == "json":
        emit_json(manifest.summary())
    else:
        click.echo(
            f"backup {manifest.id} of {source}: {human_size(manifest.size)} -> "
            f"{human_size(manifest.stored_size)} stored in {manifest.duration:.1f}s"
        )


@cli.command(name="list")
@click.argument("source", required=False)
@OUTPUT
@pass_state
def list_(state: State, source: str | None, output: str) -> None:
    """List backups, newest first (all sources, or one)."""
    from backupctl.cli.output import backups_table, emit_json
    from backupctl.repo.pins import read_pins

    with state.repository() as repo:
        manifests, damaged = repo.catalog.scan(source)
        pinned = {bid: pin for name in sorted({m.source for m in manifests})
                  for bid, pin in read_pins(repo.storage, name).items()}
    for key, problem in damaged.items():
        log.get_logger(__name__).warning("damaged manifest skipped", key=key, problem=problem)
    summaries = [{**m.summary(), "pinned": pinned[m.id].to_json() if m.id in pinned else None} for m in manifests]
    if output == "json":
        emit_json(summaries)
    else:
        backups_table(summaries)


@cli.command()
@click.argument("backup_id")
@OUTPUT
@pass_state
def show(state: State, backup_id: str, output: str) -> None:
    """Show one backup's manifest (the data's description too, when the identity can open it)."""
    from backupctl.cli.output import emit_json, manifest_view
    from backupctl.repo.catalog import open_details

    with state.repository() as repo:
        manifest = repo.catalog.find(backup_id)
        if manifest.details is None and repo.pipeline.can_decrypt():
            open_details(manifest, repo.pipeline)
    doc = manifest.to_document()
    doc["details"] = manifest.details
    doc.pop("sealed_details", None)
    if output == "json":
        emit_json(doc)
    else:
        manifest_view(doc)


@cli.command()
@click.argument("backup_id", required=False)
@click.option("--all", "all_", is_flag=True, help="Verify every backup in the repository.")
@click.option("--source", help="With --all: only this source's backups.")
@click.option("--latest", metavar="SOURCE", help="Verify the newest backup of SOURCE.")
@OUTPUT
@pass_state
def verify(state: State, backup_id: str | None, all_: bool, source: str | None, latest: str | None,
           output: str) -> None:
    """Read every object of a backup back and check it against the manifest (exit 1 on damage).

    Each verified backup leaves a record in the repository (<source>/verifications/), which `status` and
    `check` report."""
    from backupctl.cli.output import emit_json, verify_table
    from backupctl.core.privileges import become_repository_owner
    from backupctl.repo.repository import open_repository
    from backupctl.services.verify import latest_backup, source_bindir, verify_all, verify_backup

    if [bool(backup_id), all_, bool(latest)].count(True) != 1:
        raise ConfigError("give one of BACKUP_ID, --all or --latest SOURCE")
    config = state.config()
    become_repository_owner(config, latest or source)  # its records must not be root's
    with open_repository(config) as repo:
        if all_:
            results = verify_all(repo, source)
        else:
            manifest = latest_backup(repo, latest) if latest else repo.catalog.find(backup_id or "")
            results = [verify_backup(repo, manifest, source_bindir(repo, manifest))]
    data = [r.to_json() for r in results]
    if output == "json":
        emit_json(data)
    else:
        verify_table(data)
    bad = [r for r in results if not r.ok]
    unrecorded = [r.record_error for r in results if r.record_error]
    if bad:
        also = f" ({unrecorded[0]})" if unrecorded else ""
        raise BackupctlError(f"{len(bad)} of {len(results)} backups are damaged: {bad[0].problems[0]}{also}")
    if unrecorded:
        raise BackupctlError(f"{unrecorded[0]}; `check` still shows the previous result")


@cli.command()
@click.argument("backup_id", metavar="BACKUP_ID|SOURCE")
@click.option("--to", "target", type=click.Path(path_type=Path), help="SQLite: the database file to write.")
@click.option("--force", is_flag=True, help="Replace an existing file (--to, --to-file) or data directory.")
@click.option("--delta", is_flag=True,
              help="Physical: reuse the files in --pgdata whose checksums match the backup; write the rest.")
@click.option("--pgdata", type=click.Path(path_type=Path), help="Physical: the data directory to restore into.")
@click.option("--target-time", help="Physical: recover to this time (ISO 8601; UTC without an offset).")
@click.option("--target-lsn", help="Physical: recover to this WAL location.")
@click.option("--target-xid", help="Physical: recover to this transaction.")
@click.option("--target-name", help="Physical: recover to this named restore point.")
@click.option("--target", "target_immediate", type=click.Choice(["immediate"]),
              help="Physical: stop as soon as the backup is consistent.")
@click.option("--target-timeline", default="latest", show_default=True,
              help="latest (the timeline production is on, judged from the archive: not merely the highest), "
                   "current (the backup's) or a number.")
@click.option("--target-action", type=click.Choice(["promote", "pause", "shutdown"]),
              help="Physical: what the server does at the target (default: PostgreSQL's, pause).")
@click.option("--exclusive", is_flag=True, help="Physical: stop just before the target (time, LSN, xid).")
@click.option("--backup", "backup_choice", help="Physical: restore this backup instead of the planner's choice.")
@click.option("--dry-run", is_flag=True, help="Physical: print the plan and stop.")
@click.option("--start", "start_server", is_flag=True,
              help="Physical: start the restored server and wait until it reaches the target.")
@click.option("--standby", is_flag=True, help="Physical: write standby.signal instead of recovery.signal.")
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
def restore(state: State, backup_id: str, target: Path | None, force: bool, output: str,
            **logical: Any) -> None:
    """Restore: SQLite to a file (--to), PostgreSQL logical into a database (--database), or a
    PostgreSQL source to a point in time (SOURCE --pgdata DIR)."""
    from backupctl.repo.catalog import is_backup_id
    from backupctl.repo.repository import open_repository
    from backupctl.services import restore as service

    config = state.config()
    if not is_backup_id(backup_id) and backup_id in config.sources:
        _restore_physical(config, backup_id, force, output, logical)
        return
    with open_repository(config) as repo:
        manifest = repo.catalog.find(backup_id)
        if manifest.type == "sqlite":
            if target is None:
                raise ConfigError("restoring a SQLite backup needs --to PATH")
            with repo.reading("restore", [manifest]):
                written = service.restore_sqlite(repo, manifest, target, force)
            click.echo(f"restored {backup_id} to {written}")
            return
        if manifest.type == "logical":
            with repo.reading("restore", [manifest]):
                _restore_logical(repo, manifest, config, force, {**logical, "jobs": logical["jobs"] or 1})
            return
    # A physical backup by id: a point-in-time restore of its source, from that backup.
    _restore_physical(config, manifest.source, force, output, {**logical, "backup_choice": backup_id})


def _restore_physical(config: Any, source_name: str, force: bool, output: str, opts: dict[str, Any]) -> None:
    from backupctl.cli.output import emit_json, plan_view
    from backupctl.core.config import PostgresSource
    from backupctl.core.privileges import become_server_user
    from backupctl.repo.repository import open_repository
    from backupctl.services import pitr, restore_start
    from backupctl.wal import archive as wal

    source = config.source(source_name)
    if not isinstance(source, PostgresSource):
        raise ConfigError(f"source {source_name} is not a PostgreSQL source: restore its backups by id")
    target = pitr.target_from_options(opts["target_time"], opts["target_lsn"], opts["target_xid"],
                                      opts["target_name"], bool(opts["target_immediate"]), opts["target_timeline"],
                                      opts["target_action"], not opts["exclusive"])
    mapping = {}
    for item in opts["tablespaces"]:
        oid, sep, directory = item.partition("=")
        if not sep or not oid.isdigit() or not directory:
            raise ConfigError(f"--tablespace {item!r} must look like OID=DIR")
        mapping[oid] = str(Path(directory).absolute())
    if not opts["dry_run"] and opts["pgdata"] is None:
        raise ConfigError("a physical restore needs --pgdata DIR (or --dry-run to see the plan)")
    if opts["start_server"] and not opts["dry_run"]:
        restore_start.check_port(opts["port"])  # before anything is downloaded
    become_server_user(source)
    with open_repository(config) as repo:
        plan = pitr.make_plan(repo, source_name, target, opts["backup_choice"])
        if opts["dry_run"]:
            emit_json(plan.to_json()) if output == "json" else plan_view(plan.to_json())
            return
        options = pitr.RestoreOptions(pgdata=opts["pgdata"], force=force, jobs=opts["jobs"] or pitr.default_jobs(),
                                      standby=opts["standby"], tablespace_map=mapping,
                                      restore_config=opts["restore_config"],
                                      tmp_dir=Path(source.tmp_dir) if source.tmp_dir else None, delta=opts["delta"],
                                      archive=opts["keep_archiving"], source_pgdata=source.pgdata)
        command = wal.restore_command(config.file, source_name, plan.epoch)
        # The reader lease lasts through recovery with --start: expire must not remove the WAL it replays.
        with repo.reading("restore", pitr.backup_chain(repo, plan.backup)):
            result = pitr.restore_physical(repo, plan, options, command, source.bindir)
            if opts["start_server"]:
                try:
                    result["recovery"] = restore_start.start_and_wait(
                        Path(result["pgdata"]), plan, source.bindir, source.user, opts["port"], opts["standby"])
                except BackupctlError as exc:
                    raise restore_start.RecoveryFailed(f"{exc}; once the cause is fixed, run the restore again: "
                                                       f"{_retry_command(plan.backup.type)}") from None
    if output == "json":
        emit_json(result)
    else:
        plan_view(result)
        recovery = result.get("recovery")
        if recovery:
            for note in recovery["notes"]:
                click.echo(f"note: {note}")
            promoted = (f", promoted to timeline {recovery['promoted_timeline']}"
                        if "promoted_timeline" in recovery else "")
            commit = recovery["last_replayed_commit"] or "unknown"
            click.echo(f"restored {plan.backup.id} into {result['pgdata']}; server {recovery['state']} at "
                       f"{recovery['lsn']} on timeline {recovery['timeline']}{promoted}, port {recovery['port']}; "
                       f"last replayed commit {commit}")
            if "psql" in recovery:
                click.echo(f"connect: {recovery['psql']}")
        else:
            click.echo(f"restored {plan.backup.id} into {result['pgdata']}: start the server to recover")


def _retry_command(backup_type: str) -> str:
    """This very command, redone over what the failed attempt restored (an incremental chain needs --force)."""
    words = [word for word in sys.argv[1:] if word not in ("--force", "--delta")]
    return shlex.join(["backupctl", *words, "--force" if backup_type == "incr" else "--delta"])


def _restore_logical(repo: Any, manifest: Any, config: Any, force: bool, opts: dict[str, Any]) -> None:
    from backupctl.core.config import PostgresSource
    from backupctl.postgres.connection import ConnParams
    from backupctl.services import restore as service

    source = config.sources.get(manifest.source)
    base = ConnParams.from_source(source) if isinstance(source, PostgresSource) else ConnParams()
    target = base.with_(host=opts["host"], port=opts["port"], user=opts["user"], dbname=opts["dbname"])
    bindir = source.bindir if isinstance(source, PostgresSource) else None
    binaries = service.restore_binaries(manifest, bindir)
    if opts["globals_only"]:
        if opts["to_file"] and opts["apply_globals"]:
            raise ConfigError("--to-file and --apply exclude each other")
        apply_to = target if opts["apply_globals"] else None
        script = service.restore_globals(repo, manifest, opts["to_file"], force, apply_to, binaries)
        if script is not None:
            click.echo(script, nl=False)
        elif opts["to_file"]:
            click.echo(f"globals of {manifest.id} written to {opts['to_file']}", err=True)
        return
    if not opts["database"] or not opts["to_database"]:
        raise ConfigError("restoring a logical backup needs --database NAME and --to-database NEW "
                          "(or --globals-only)")
    request = service.LogicalRestore(
        database=opts["database"], to_database=opts["to_database"], jobs=opts["jobs"],
        no_owner=opts["no_owner"], clean=opts["clean"], schemas=opts["schemas"], tables=opts["tables"],
    )
    tmp_dir = Path(source.tmp_dir) if isinstance(source, PostgresSource) and source.tmp_dir else None
    service.restore_logical(repo, manifest, request, target, binaries, tmp_dir)
    where = target.describe(request.to_database)
    click.echo(f"restored database {request.database} of {manifest.id} into {where}")


@cli.command()
@click.option("--output", "output", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Where to write the identity (private key); never overwritten.")
def keygen(output: Path) -> None:
    """Make an age key pair: identity to FILE (mode 0600), recipient (public key) on stdout."""
    from backupctl.repo.crypto import generate_key_file

    click.echo(generate_key_file(output))
    click.echo(f"identity written to {output}; put the recipient above in encryption.recipients", err=True)


def _fail(message: str, code: int, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    click.echo(f"backupctl: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line per failure, the documented exit codes."""
    signals.install()
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="backupctl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        # A monitoring plugin's bad arguments are UNKNOWN (3): its 2 would read as CRITICAL.
        sys.exit(3 if command_word(args) == "check" else EXIT_USAGE)
    except click.Abort:
        _fail("aborted", 128 + signal.SIGINT, debug)
    except KeyboardInterrupt:
        _fail("interrupted by SIGINT: nothing was published; partial uploads were removed",
              128 + signal.SIGINT, debug)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        _fail(f"interrupted by {name}: nothing was published; partial uploads were removed",
              128 + exc.signum, debug)
    except BackupctlError as exc:
        _fail(str(exc), exc.exit_code, debug)
    except Exception as exc:
        message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
        _fail(message, EXIT_FAILED, debug)


from backupctl.cli.wal import register as _register_wal  # noqa: E402 - needs the group defined above

_register_wal(cli)
from backupctl.cli.drill import register as _register_drill  # noqa: E402 - needs the group defined above

_register_drill(cli)
from backupctl.cli.ops import register as _register_ops  # noqa: E402 - needs the group defined above

_register_ops(cli)
from backupctl.cli.retention import register as _register_retention  # noqa: E402 - needs the group defined above

_register_retention(cli)
from backupctl.cli.keys import register as _register_keys  # noqa: E402 - needs the repo group defined above

_register_keys(cli)
