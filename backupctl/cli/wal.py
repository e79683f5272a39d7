"""The WAL commands of the CLI: wal-push, wal-fetch, wal status|verify|check|new-epoch, pg-settings.

``wal-push`` and ``wal-fetch`` run the same code as the fast entry ``python -I -m backupctl.walpusher``
that ``pg-settings`` prints; through ``backupctl`` they cost the CLI's own start (~80 ms more per call).
"""

from __future__ import annotations

import sys
from typing import Any

import click


def register(cli: click.Group) -> None:
    """Add the WAL commands to the ``backupctl`` group."""
    from backupctl.cli.app import OUTPUT, State, pass_state

    @cli.command(name="wal-push")
    @click.argument("path")
    @click.option("--source", help="The PostgreSQL source (optional when the config has only one).")
    @pass_state
    def wal_push(state: State, path: str, source: str | None) -> None:
        """archive_command: store the WAL file PATH (%p) in the repository; exit 0 once it is durable."""
        from backupctl.walpusher import push_command

        sys.exit(push_command(state.config_file, source, path, state.debug))

    @cli.command(name="wal-fetch")
    @click.argument("name")
    @click.argument("dest")
    @click.option("--source", help="The PostgreSQL source (optional when the config has only one).")
    @click.option("--epoch", type=click.IntRange(min=1), default=1, show_default=True,
                  help="The history epoch whose WAL to fetch (a cluster restored from a backup taken after "
                       "pg_upgrade; `restore` and `pg-settings` write it).")
    @pass_state
    def wal_fetch(state: State, name: str, dest: str, source: str | None, epoch: int) -> None:
        """restore_command: fetch archived file NAME (%f) into DEST (%p); exit 1 when it is not archived."""
        from backupctl.walpusher import fetch_command

        sys.exit(fetch_command(state.config_file, source, name, dest, state.debug, epoch))

    @cli.group(name="wal")
    def wal_group() -> None:
        """The WAL archive of a PostgreSQL source: status, verify, check, new-epoch, forget-timeline."""

    @wal_group.command(name="status")
    @click.argument("source", required=False)
    @OUTPUT
    @pass_state
    def wal_status(state: State, source: str | None, output: str) -> None:
        """Archived range per history epoch and timeline, gaps, the newest segment and its age."""
        from backupctl.cli.output import emit_json
        from backupctl.wal import archive as wal

        config = state.config()
        name = wal.select_source(config, source).name
        with wal.open_wal_repository(config) as repo:
            rows = wal.wal_status(repo, name)
            streams = wal.streams_of(repo, name)
        if output == "json":
            emit_json(rows)
        else:
            _status_table(name, rows, streams)

    @wal_group.command(name="verify")
    @click.argument("source", required=False)
    @click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
                  help="Objects read in parallel.")
    @OUTPUT
    @pass_state
    def wal_verify(state: State, source: str | None, jobs: int, output: str) -> None:
        """Check each history epoch's archive is continuous from its oldest physical backup to its newest
        segment, across timelines, and decode every object (exit 1 on any problem)."""
        from backupctl.cli.output import emit_json
        from backupctl.core.errors import BackupctlError
        from backupctl.wal import archive as wal

        config = state.config()
        name = wal.select_source(config, source).name
        with wal.open_wal_repository(config) as repo:
            results = wal.verify_epochs(repo, name, jobs)
        if output == "json":
            emit_json([result.to_json() for result in results])
        else:
            for result in results:
                _verify_view(result, len(results) > 1)
        problems = [(r, p) for r in results for p in r.problems]
        if problems:
            first, problem = problems[0]
            where = f" (epoch {first.epoch})" if len(results) > 1 else ""
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BackupctlError(f"WAL archive of {name}{where} is not whole: {problem}{more}")

    @wal_group.command(name="check")
    @click.argument("source", required=False)
    @click.option("--timeout", type=float, default=60.0, show_default=True,
                  help="Seconds to wait for the segment to reach the repository.")
    @OUTPUT
    @pass_state
    def wal_check(state: State, source: str | None, timeout: float, output: str) -> None:
        """Switch the server to a new WAL segment and wait until the finished one is archived."""
        from backupctl.cli.output import emit_json
        from backupctl.wal import archive as wal

        config = state.config()
        src = wal.select_source(config, source)
        with wal.open_wal_repository(config) as repo:
            result = wal.wal_check(repo, src, timeout)
        if output == "json":
            emit_json([result])
        else:
            epoch = f" (history epoch {result['epoch']})" if result["epoch"] > 1 else ""
            click.echo(f"{result['segment']} of {src.name}{epoch} archived {result['seconds']:.2f}s after the "
                       f"switch (at {result['switch_lsn']})")

    @wal_group.command(name="new-epoch")
    @click.argument("source")
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
        from backupctl.cli.output import emit_json
        from backupctl.core.config import parse_size
        from backupctl.core.errors import ConfigError
        from backupctl.core.privileges import become_server_user
        from backupctl.repo.repository import open_repository
        from backupctl.wal import archive as wal
        from backupctl.wal import epochs

        config = state.config()
        src = wal.select_source(config, source)
        given = [value is not None for value in (system_identifier, major, segment_size)]
        if any(given) and not all(given):
            raise ConfigError("give --system-identifier, --major and --segment-size together (`pg_controldata "
                              "DATADIR` shows them), or none of them to ask the server")
        become_server_user(src)
        if system_identifier is not None and major is not None and segment_size is not None:
            try:
                size = parse_size(segment_size)
            except ValueError as exc:
                raise ConfigError(f"--segment-size: {exc}") from None
            system = epochs.ServerSystem.from_options(system_identifier, major, size)
        else:
            system = epochs.server_system(src)
        with open_repository(config) as repo:
            result = epochs.start_epoch(repo, src.name, system)
        if output == "json":
            emit_json([result.to_json()])
        else:
            _epoch_view(result)

    @wal_group.command(name="forget-timeline")
    @click.argument("timeline", type=click.IntRange(min=1))
    @click.option("--source", help="The PostgreSQL source (optional when the config has only one).")
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
        from backupctl.cli.output import emit_json
        from backupctl.core.privileges import become_server_user
        from backupctl.repo.repository import open_repository
        from backupctl.wal import archive as wal
        from backupctl.wal import timelines

        config = state.config()
        src = wal.select_source(config, source)
        if src.pgdata:
            become_server_user(src)
        with open_repository(config) as repo:
            result = timelines.forget(repo, src.name, timeline, dry_run=dry_run, force=force, epoch=epoch)
        if output == "json":
            emit_json([result.to_json()])
        else:
            _forgotten_view(result)

    @cli.command(name="pg-settings")
    @click.argument("source", required=False)
    @pass_state
    def pg_settings(state: State, source: str | None) -> None:
        """Print the postgresql.conf lines that archive SOURCE into the repository (absolute paths); the
        restore_command replays the current history epoch's WAL."""
        from backupctl.core.errors import BackupctlError
        from backupctl.wal import archive as wal
        from backupctl.wal import epochs

        config = state.config()
        src = wal.select_source(config, source)
        epoch = 1
        try:
            with wal.open_wal_repository(config) as repo:
                current = epochs.current_stream(repo, src.name)
                epoch = current.epoch if current else 1
        except BackupctlError as exc:
            click.echo(f"backupctl: warning: {exc}; restore_command is shown for history epoch 1", err=True)
        click.echo(wal.pg_settings(config, src, epoch), nl=False)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _status_table(source: str, rows: list[dict[str, Any]], streams: list[Any]) -> None:
    from backupctl.cli.output import console, human_size, table

    if len(streams) > 1:
        for identity in streams:
            console().print(f"epoch {identity.epoch}: {identity.describe()}, since {identity.started_at or '-'}, "
                            f"WAL in {identity.stream}/wal/"
                            + ("" if any(r["epoch"] == identity.epoch for r in rows) else ": nothing archived yet"))
    if not rows:
        console().print(f"no WAL archived for {source}")
        return
    table(None, ["EPOCH", "TIMELINE", "FIRST", "LAST", "SEGMENTS", "GAPS", "STORED", "NEWEST", "AGE"], [
        [
            str(r["epoch"]), f"{r['timeline']}", r["first"] or "-", r["last"] or "-", str(r["segments"]),
            ", ".join(f"{g['from']}..{g['to']} ({g['missing']})" for g in r["gaps"]) or "none",
            human_size(r["stored_bytes"]), r["newest_archived_at"] or "-", _age(r["newest_age_seconds"]),
        ]
        for r in rows
    ])
    newest = max((r for r in rows if r["newest_archived_at"]), key=lambda r: r["newest_archived_at"], default=None)
    if newest is not None:
        console().print(f"newest segment {newest['newest_segment']} archived {_age(newest['newest_age_seconds'])} ago")


def _verify_view(result: Any, epochs: bool) -> None:
    from backupctl.cli.output import console, human_size

    out = console()
    verdict = "ok" if result.ok else "PROBLEMS"
    epoch = f" epoch {result.epoch}" if epochs else ""
    if result.end is None:
        out.print(f"WAL of {result.source}{epoch}: {verdict} ({result.mode}); nothing to check")
    else:
        out.print(f"WAL of {result.source}{epoch}: {verdict} ({result.mode}); {result.start} .. {result.end} from the "
                  f"{result.start_from}, timelines {', '.join(map(str, result.timelines)) or '-'}; {result.checked} "
                  f"objects, {human_size(result.bytes)} read in {result.seconds:.2f}s")
    for problem in result.problems:
        out.print(f"  {problem}")


def _forgotten_view(result: Any) -> None:
    """What ``wal forget-timeline`` removed, or would remove."""
    from backupctl.cli.output import console, human_size

    out = console()
    verb = "would remove" if result.dry_run else "removed"
    names = ", ".join(map(str, result.timelines))
    descendants = ", ".join(map(str, result.timelines[1:]))
    below = f" (with {descendants}, which branched from it)" if descendants else ""
    out.print(f"{verb} timeline {result.timelines[0]}{below} of {result.source}: {len(result.wal_files)} WAL "
              f"file(s)" + (f" {result.wal_files[0]}..{result.wal_files[-1]}" if result.wal_files else "")
              + f", history file(s) {', '.join(result.history_files) or 'none'}, {human_size(result.stored_bytes)}")
    if result.backups:
        out.print(f"{verb} the backups taken on timeline(s) {names}: {', '.join(result.backups)}")
    if result.production is not None:
        out.print(f"production is on timeline {result.production}; restores follow it")


def _epoch_view(result: Any) -> None:
    """What ``wal new-epoch`` did and what to do next."""
    from backupctl.cli.output import console

    out = console()
    identity, source = result.epoch, result.source
    if result.action == "registered":
        out.print(f"registered {identity.describe()} as history epoch 1 of source {source} ({result.note})")
        return
    if result.action == "current":
        out.print(f"{identity.describe()} is already the current history epoch of source {source} (epoch "
                  f"{identity.epoch}): {result.note}")
        return
    previous = result.previous
    out.print(f"started history epoch {identity.epoch} of source {source}: {identity.describe()}, "
              f"{identity.segment_size // 1024**2} MiB WAL segments; its WAL goes to {identity.stream}/wal/")
    last = result.previous_last_segment
    archived = (f"its last archived segment is {last.name.name} ({last.modified:%Y-%m-%d %H:%M:%S %Z})" if last
                else "it has no archived WAL")
    out.print(f"epoch {previous.epoch} ({previous.describe()}) keeps its backups and WAL, restorable as before; "
              f"{archived}")
    out.print("next steps:")
    out.print(f"  1. backupctl wal check {source}     # archives a segment of the upgraded server (and any refused "
              "so far)")
    out.print(f"  2. backupctl backup {source} --type full     # until then no restore can reach a time after the "
              "upgrade")
    out.print(f"  3. backupctl pg-settings {source}     # restore_command for standbys of the upgraded server "
              f"(--epoch {identity.epoch})")
