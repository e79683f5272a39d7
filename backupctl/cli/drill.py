"""The drill commands of the CLI: drill run, drill list, drill show (the service is ``backupctl.services.drill``)."""

from __future__ import annotations

from typing import Any

import click


def register(cli: click.Group) -> None:
    """Add the ``drill`` group to the ``backupctl`` group."""
    from backupctl.cli.app import OUTPUT, State, pass_state

    @cli.group(name="drill")
    def drill_group() -> None:
        """Restore-and-verify drills: prove a backup restores, and measure how long it takes."""

    @drill_group.command(name="run")
    @click.argument("source")
    @click.option("--backup", "backup_id", metavar="ID", help="Drill this backup (default: the newest).")
    @click.option("--target-time", help="Physical: recover to this time (ISO 8601; UTC without an offset).")
    @click.option("--target-lsn", help="Physical: recover to this WAL location.")
    @click.option("--target-xid", help="Physical: recover to this transaction.")
    @click.option("--target-name", help="Physical: recover to this named restore point.")
    @click.option("--target", "target_immediate", type=click.Choice(["immediate"]),
                  help="Physical: stop as soon as the backup is consistent (default: the end of archived WAL).")
    @click.option("--keep", is_flag=True, help="Keep the scratch copy (stopped) for a look afterwards.")
    @OUTPUT
    @pass_state
    def drill_run(state: State, source: str, backup_id: str | None, target_time: str | None,
                  target_lsn: str | None, target_xid: str | None, target_name: str | None,
                  target_immediate: str | None, keep: bool, output: str) -> None:
        """Restore a backup of SOURCE into a scratch copy, start it, check it and record the result
        (exit 1 when a check fails)."""
        from backupctl.cli.output import emit_json
        from backupctl.core.config import PostgresSource
        from backupctl.core.errors import BackupctlError
        from backupctl.core.privileges import become_repository_owner, become_server_user
        from backupctl.repo.repository import open_repository
        from backupctl.services import drill, pitr

        target = pitr.target_from_options(target_time, target_lsn, target_xid, target_name, bool(target_immediate))
        config = state.config()
        src = config.source(source)
        if isinstance(src, PostgresSource):
            become_server_user(src)
        else:  # its record must not be root's either
            become_repository_owner(config)
        with open_repository(config) as repo:
            result = drill.run_drill(repo, src, drill.DrillRequest(backup_id, target, keep))
        if output == "json":
            emit_json(result)
        else:
            _drill_view(result)
        if result["status"] != "passed":
            failed = [c["name"] for c in result["checks"] if c["status"] == "failed"]
            more = f" (also failed: {', '.join(failed[1:])})" if len(failed) > 1 else ""
            raise BackupctlError(f"drill {result['id']} of {source} (backup {result['backup_id']}) failed: "
                                 f"{result['error']}{more}")

    @drill_group.command(name="list")
    @click.argument("source", required=False)
    @OUTPUT
    @pass_state
    def drill_list(state: State, source: str | None, output: str) -> None:
        """List drill results, newest first (all sources, or one)."""
        from backupctl.cli.output import emit_json
        from backupctl.services.drill import list_drills

        with state.repository() as repo:
            results = list_drills(repo.storage, source, repo.pipeline)
        if output == "json":
            emit_json(results)
        else:
            _list_table(results)

    @drill_group.command(name="show")
    @click.argument("drill_id")
    @OUTPUT
    @pass_state
    def drill_show(state: State, drill_id: str, output: str) -> None:
        """Show one drill's result: every check, the point reached and the time each part took."""
        from backupctl.cli.output import emit_json
        from backupctl.services.drill import find_drill

        with state.repository() as repo:
            result = find_drill(repo.storage, drill_id, repo.pipeline)
        if output == "json":
            emit_json(result)
        else:
            _drill_view(result)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _drill_view(result: dict[str, Any]) -> None:
    from backupctl.cli.output import console, table

    out = console()
    out.print(f"drill {result['id']} of {result['source']}: {result['status'].upper()} (backup "
              f"{result['backup_id'] or '-'}, {result['backup_type'] or '-'}), {result['finished_at']} on "
              f"{result['host']}")
    target = result["target"]
    asked = "end of archived WAL" if target["kind"] == "end" else f"{target['kind']} {target['value'] or ''}".strip()
    reached = result.get("reached")
    if reached:
        when = f" (last transaction {reached['time']})" if reached.get("time") else ""
        out.print(f"target: {asked}; reached {reached['lsn']}{when} on timeline {reached['timeline']}, "
                  f"{result['wal_segments_replayed']} WAL segments replayed")
    elif result["kind"] == "postgres" and result["backup_type"] in ("full", "incr", None):
        out.print(f"target: {asked}; not reached")
    parts = result["rto_parts"]
    out.print(f"RTO: {_seconds(result['rto_seconds'])} (plan {parts['plan']:.1f}s, download {parts['download']:.1f}s, "
              f"extract {parts['extract']:.1f}s, WAL replay {parts['wal_replay']:.1f}s); checks {parts['checks']:.1f}s")
    if result.get("kept"):
        out.print(f"scratch copy kept (stopped) in {result['kept']}")
    table(None, ["CHECK", "RESULT", "DETAIL"], [[c["name"], c["status"], c["detail"]] for c in result["checks"]])


def _list_table(results: list[dict[str, Any]]) -> None:
    from backupctl.cli.output import console, table

    if not results:
        console().print("no drills")
        return
    table(None, ["ID", "SOURCE", "BACKUP", "TYPE", "STATUS", "FINISHED", "RTO", "WAL", "CHECKS", "ERROR"], [
        [r["id"], r["source"], r["backup_id"] or "-", r["backup_type"] or "-", r["status"], r["finished_at"],
         _seconds(r["rto_seconds"]), str(r["wal_segments_replayed"]),
         f"{sum(c['status'] == 'passed' for c in r['checks'])}/{len(r['checks'])}", r["error"] or ""]
        for r in results
    ])
