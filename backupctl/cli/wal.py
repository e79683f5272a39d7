"""The WAL commands: wal-push, wal-fetch, wal status|verify|check|new-epoch|forget-timeline, pg-settings.

``wal-push`` and ``wal-fetch`` run the same code as the fast entry ``python -I -m backupctl.walpusher``
that ``pg-settings`` prints; through ``backupctl`` they cost the CLI's own start (~80 ms more per call).
Services and the writers are imported where they are used: start-up cost, see ``cli.common``.
"""

from __future__ import annotations

import sys

import click

from backupctl.cli.common import OUTPUT, State, act_as, pass_state
from backupctl.cli.completion import complete_sources
from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.options import parse_size


@click.command(name="wal-push")
@click.argument("path")
@click.option("--source", help="The PostgreSQL source (optional when the config has only one).",
              shell_complete=complete_sources)
@pass_state
def wal_push(state: State, path: str, source: str | None) -> None:
    """archive_command: store the WAL file PATH (%p) in the repository; exit 0 once it is durable."""
    from backupctl.wal.agent.client import push_command

    sys.exit(push_command(state.config_file, source, path, state.debug))


@click.command(name="wal-fetch")
@click.argument("name")
@click.argument("dest")
@click.option("--source", help="The PostgreSQL source (optional when the config has only one).",
              shell_complete=complete_sources)
@click.option("--epoch", type=click.IntRange(min=1), default=1, show_default=True,
              help="The history epoch whose WAL to fetch (a cluster restored from a backup taken after "
                   "pg_upgrade; `restore` and `pg-settings` write it).")
@pass_state
def wal_fetch(state: State, name: str, dest: str, source: str | None, epoch: int) -> None:
    """restore_command: fetch archived file NAME (%f) into DEST (%p); exit 1 when it is not archived."""
    from backupctl.wal.agent.client import fetch_command

    sys.exit(fetch_command(state.config_file, source, name, dest, state.debug, epoch))


@click.group(name="wal")
def wal_group() -> None:
    """The WAL archive of a PostgreSQL source: status, verify, check, new-epoch, forget-timeline."""


@wal_group.command(name="status")
@click.argument("source", required=False, shell_complete=complete_sources)
@OUTPUT
@pass_state
def wal_status(state: State, source: str | None, output: str) -> None:
    """Archived range per history epoch and timeline, gaps, the newest segment and its age."""
    from backupctl.cli.output import writer
    from backupctl.wal.opening import open_wal_repository, select_source
    from backupctl.wal.streams import streams_of
    from backupctl.wal.verify import wal_status as archived_ranges

    config = state.config()
    name = select_source(config, source).name
    with open_wal_repository(config) as repo:
        rows = archived_ranges(repo, name)
        streams = streams_of(repo, name)
    writer(output).wal_status(name, rows, streams)


@wal_group.command(name="verify")
@click.argument("source", required=False, shell_complete=complete_sources)
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Objects read in parallel.")
@OUTPUT
@pass_state
def wal_verify(state: State, source: str | None, jobs: int, output: str) -> None:
    """Check each history epoch's archive is continuous from its oldest physical backup to its newest
    segment, across timelines, and decode every object (exit 1 on any problem)."""
    from backupctl.cli.output import writer
    from backupctl.wal.opening import open_wal_repository, select_source
    from backupctl.wal.verify import verify_epochs

    config = state.config()
    name = select_source(config, source).name
    with open_wal_repository(config) as repo:
        results = verify_epochs(repo, name, jobs)
    writer(output).wal_verified(results)
    problems = [(r, p) for r in results for p in r.problems]
    if problems:
        first, problem = problems[0]
        where = f" (epoch {first.epoch})" if len(results) > 1 else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BackupctlError(f"WAL archive of {name}{where} is not whole: {problem}{more}")


@wal_group.command(name="check")
@click.argument("source", required=False, shell_complete=complete_sources)
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the segment to reach the repository.")
@OUTPUT
@pass_state
def wal_check(state: State, source: str | None, timeout: float, output: str) -> None:
    """Switch the server to a new WAL segment and wait until the finished one is archived."""
    from backupctl.cli.output import writer
    from backupctl.wal.check import wal_check as switch_and_wait
    from backupctl.wal.opening import open_wal_repository, select_source

    config = state.config()
    src = select_source(config, source)
    act_as(config, "server", src.name)  # as root: connect as the server's user (peer authentication), like backup
    with open_wal_repository(config) as repo:
        result = switch_and_wait(repo, src, timeout)
    writer(output).wal_checked(src.name, result)


@wal_group.command(name="new-epoch")
@click.argument("source", shell_complete=complete_sources)
@click.option("--system-identifier", help="Without asking the server: its system identifier (pg_controldata's "
              "'Database system identifier'). Give all three or none.")
@click.option("--major", type=int, help="Without asking the server: its major version (PG_VERSION).")
@click.option("--segment-size", help="Without asking the server: its WAL segment size, e.g. 16MiB "
              "(pg_controldata's 'Bytes per WAL segment').")
@OUTPUT
@pass_state
def wal_new_epoch(state: State, source: str, system_identifier: str | None, major: int | None,
                  segment_size: str | None, output: str) -> None:
    """After pg_upgrade: start the next history epoch of SOURCE for its upgraded server.

    Asks the configured server for its system identifier, major and WAL segment size and records them
    (once; safe to run again). Its WAL is then archived beside the old epoch's, whose backups and WAL
    stay restorable; take a full backup of the upgraded server next.
    """
    from backupctl.cli.output import writer
    from backupctl.repo.repository import open_repository
    from backupctl.wal import epochs
    from backupctl.wal.opening import select_source

    config = state.config()
    src = select_source(config, source)
    given = [value is not None for value in (system_identifier, major, segment_size)]
    if any(given) and not all(given):
        raise ConfigError("give --system-identifier, --major and --segment-size together (`pg_controldata "
                          "DATADIR` shows them), or none of them to ask the server")
    act_as(config, "server", src.name)
    if system_identifier is not None and major is not None and segment_size is not None:
        try:
            size = parse_size(segment_size)
        except ValueError as exc:
            raise ConfigError(f"--segment-size: {exc}") from exc
        system = epochs.ServerSystem.from_options(system_identifier, major, size)
    else:
        system = epochs.server_system(src)
    with open_repository(config) as repo:
        result = epochs.start_epoch(repo, src.name, system)
    writer(output).epoch_started(result)


@wal_group.command(name="forget-timeline")
@click.argument("timeline", type=click.IntRange(min=1))
@click.option("--source", help="The PostgreSQL source (optional when the config has only one).",
              shell_complete=complete_sources)
@click.option("--epoch", type=click.IntRange(min=1), help="The history epoch (default: the current one).")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--force", is_flag=True, help="Also when the timeline may still be archiving, and remove the "
              "backups taken on it.")
@OUTPUT
@pass_state
def wal_forget_timeline(state: State, timeline: int, source: str | None, epoch: int | None, dry_run: bool,
                        force: bool, output: str) -> None:
    """Retire TIMELINE, a branch that should never have been archived (a promoted copy that kept
    production's archive_command): its history file and WAL, and those of every timeline that branched
    from it. Production's timeline and its ancestors are refused; `backupctl check` names the branches."""
    from backupctl.cli.output import writer
    from backupctl.repo.repository import open_repository
    from backupctl.services.forget_timeline import forget
    from backupctl.wal.opening import select_source

    config = state.config()
    src = select_source(config, source)
    act_as(config, "server", src.name)
    with open_repository(config) as repo:
        result = forget(repo, src.name, timeline, dry_run=dry_run, force=force, epoch=epoch)
    writer(output).timeline_forgotten(result)


@click.command(name="pg-settings")
@click.argument("source", required=False, shell_complete=complete_sources)
@pass_state
def pg_settings(state: State, source: str | None) -> None:
    """Print the postgresql.conf lines that archive SOURCE into the repository (absolute paths); the
    restore_command replays the current history epoch's WAL."""
    from backupctl.wal.conf import pg_settings as settings_lines
    from backupctl.wal.opening import open_wal_repository, select_source
    from backupctl.wal.streams import current_stream

    config = state.config()
    src = select_source(config, source)
    epoch = 1
    try:
        with open_wal_repository(config) as repo:
            current = current_stream(repo, src.name)
            epoch = current.epoch if current else 1
    except BackupctlError as exc:
        click.echo(f"backupctl: warning: {exc}; restore_command is shown for history epoch 1", err=True)
    click.echo(settings_lines(config, src, epoch), nl=False)
