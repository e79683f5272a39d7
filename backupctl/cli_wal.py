"""The WAL commands of the CLI: wal-push, wal-fetch, wal status|verify|check, pg-settings.

``wal-push`` and ``wal-fetch`` run the same code as the fast entry ``python -I -m backupctl.walpusher``
that ``pg-settings`` prints; through ``backupctl`` they cost the CLI's own start (~80 ms more per call).
"""

from __future__ import annotations

import sys
from typing import Any

import click


def register(cli: click.Group) -> None:
    """Add the WAL commands to the ``backupctl`` group."""
    from backupctl.cli import OUTPUT, State, pass_state

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
    @pass_state
    def wal_fetch(state: State, name: str, dest: str, source: str | None) -> None:
        """restore_command: fetch archived file NAME (%f) into DEST (%p); exit 1 when it is not archived."""
        from backupctl.walpusher import fetch_command

        sys.exit(fetch_command(state.config_file, source, name, dest, state.debug))

    @cli.group(name="wal")
    def wal_group() -> None:
        """The WAL archive of a PostgreSQL source: status, verify, check."""

    @wal_group.command(name="status")
    @click.argument("source", required=False)
    @OUTPUT
    @pass_state
    def wal_status(state: State, source: str | None, output: str) -> None:
        """Archived range per timeline, gaps, the newest segment and its age."""
        from backupctl import wal
        from backupctl.render import emit_json

        config = state.config()
        name = wal.select_source(config, source).name
        with wal.open_wal_repository(config) as repo:
            rows = wal.wal_status(repo, name)
        if output == "json":
            emit_json(rows)
        else:
            _status_table(name, rows)

    @wal_group.command(name="verify")
    @click.argument("source", required=False)
    @click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
                  help="Objects read in parallel.")
    @OUTPUT
    @pass_state
    def wal_verify(state: State, source: str | None, jobs: int, output: str) -> None:
        """Check the archive is continuous from the oldest physical backup to the newest segment, across
        timelines, and decode every object (exit 1 on any problem)."""
        from backupctl import wal
        from backupctl.errors import BackupctlError
        from backupctl.render import emit_json

        config = state.config()
        name = wal.select_source(config, source).name
        with wal.open_wal_repository(config) as repo:
            result = wal.verify_wal(repo, name, jobs)
        if output == "json":
            emit_json([result.to_json()])
        else:
            _verify_view(result)
        if not result.ok:
            more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
            raise BackupctlError(f"WAL archive of {name} is not whole: {result.problems[0]}{more}")

    @wal_group.command(name="check")
    @click.argument("source", required=False)
    @click.option("--timeout", type=float, default=60.0, show_default=True,
                  help="Seconds to wait for the segment to reach the repository.")
    @OUTPUT
    @pass_state
    def wal_check(state: State, source: str | None, timeout: float, output: str) -> None:
        """Switch the server to a new WAL segment and wait until the finished one is archived."""
        from backupctl import wal
        from backupctl.render import emit_json

        config = state.config()
        src = wal.select_source(config, source)
        with wal.open_wal_repository(config) as repo:
            result = wal.wal_check(repo, src, timeout)
        if output == "json":
            emit_json([result])
        else:
            click.echo(f"{result['segment']} of {src.name} archived {result['seconds']:.2f}s after the switch "
                       f"(at {result['switch_lsn']})")

    @wal_group.command(name="new-epoch")
    @click.argument("source")
    @pass_state
    def wal_new_epoch(state: State, source: str) -> None:
        """Start a new history epoch for SOURCE after pg_upgrade (not available in this version)."""
        from backupctl.errors import BackupctlError

        raise BackupctlError(
            f"wal new-epoch is not available in this version: archive the upgraded cluster under a new source "
            f"name (a [sources.{source}-new] section with the same settings, then `backupctl pg-settings "
            f"{source}-new` for its archive_command), and take a full backup of it; the backups and WAL of "
            f"{source} stay restorable"
        )

    @cli.command(name="pg-settings")
    @click.argument("source", required=False)
    @pass_state
    def pg_settings(state: State, source: str | None) -> None:
        """Print the postgresql.conf lines that archive SOURCE into the repository (absolute paths)."""
        from backupctl import wal

        config = state.config()
        click.echo(wal.pg_settings(config, wal.select_source(config, source)), nl=False)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _status_table(source: str, rows: list[dict[str, Any]]) -> None:
    from backupctl.render import console, human_size, table

    if not rows:
        console().print(f"no WAL archived for {source}")
        return
    table(None, ["TIMELINE", "FIRST", "LAST", "SEGMENTS", "GAPS", "STORED", "NEWEST", "AGE"], [
        [
            f"{r['timeline']}", r["first"] or "-", r["last"] or "-", str(r["segments"]),
            ", ".join(f"{g['from']}..{g['to']} ({g['missing']})" for g in r["gaps"]) or "none",
            human_size(r["stored_bytes"]), r["newest_archived_at"] or "-", _age(r["newest_age_seconds"]),
        ]
        for r in rows
    ])
    newest = max((r for r in rows if r["newest_archived_at"]), key=lambda r: r["newest_archived_at"], default=None)
    if newest is not None:
        console().print(f"newest segment {newest['newest_segment']} archived {_age(newest['newest_age_seconds'])} ago")


def _verify_view(result: Any) -> None:
    from backupctl.render import console, human_size

    out = console()
    verdict = "ok" if result.ok else "PROBLEMS"
    out.print(f"WAL of {result.source}: {verdict} ({result.mode}); {result.start} .. {result.end} from the "
              f"{result.start_from}, timelines {', '.join(map(str, result.timelines)) or '-'}; {result.checked} "
              f"objects, {human_size(result.bytes)} read in {result.seconds:.2f}s")
    for problem in result.problems:
        out.print(f"  {problem}")
