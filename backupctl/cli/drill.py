"""The drill commands: drill run, drill list, drill show (the service is ``backupctl.services.drill``).

Services and the writers are imported where they are used: start-up cost, see ``cli.common``.
"""

from __future__ import annotations

import click

from backupctl.cli.common import OUTPUT, State, TargetOptions, act_as, pass_state, target_options
from backupctl.cli.completion import complete_backup_ids, complete_sources
from backupctl.core.errors import BackupctlError


@click.group(name="drill")
def drill_group() -> None:
    """Restore-and-verify drills: prove a backup restores, and measure how long it takes."""


@drill_group.command(name="run")
@click.argument("source", shell_complete=complete_sources)
@click.option("--backup", "backup_id", metavar="ID",
              help="Drill this backup: id, unique prefix, latest or oldest (default: the newest).",
              shell_complete=complete_backup_ids)
@target_options("Physical: stop as soon as the backup is consistent (default: the end of archived WAL).")
@click.option("--keep", is_flag=True, help="Keep the scratch copy (stopped) for a look afterwards.")
@OUTPUT
@pass_state
def drill_run(state: State, source: str, backup_id: str | None, target: TargetOptions, keep: bool,
              output: str) -> None:
    """Restore a backup of SOURCE into a scratch copy, start it, check it and record the result
    (exit 1 when a check fails)."""
    from backupctl.cli.output import writer
    from backupctl.cli.progress import progress_for
    from backupctl.repo.repository import open_repository
    from backupctl.services import drill

    recovery_target = target.target()
    config = state.config()
    src = config.source(source)
    act_as(config, "server", source)  # a SQLite drill's record must not be root's either
    with open_repository(config) as repo:
        result = drill.run_drill(repo, src, drill.DrillRequest(backup_id, recovery_target, keep), progress_for(state))
    writer(output).drill(result.to_json())  # `drill show` renders the stored document the same way
    if result.status != "passed":
        failed = [c.name for c in result.checks if c.status == "failed"]
        more = f" (also failed: {', '.join(failed[1:])})" if len(failed) > 1 else ""
        raise BackupctlError(f"drill {result.id} of {source} (backup {result.backup_id}) failed: "
                             f"{result.error}{more}")


@drill_group.command(name="list")
@click.argument("source", required=False, shell_complete=complete_sources)
@OUTPUT
@pass_state
def drill_list(state: State, source: str | None, output: str) -> None:
    """List drill results, newest first (all sources, or one)."""
    from backupctl.cli.output import writer
    from backupctl.services.drill_results import list_drills

    with state.repository() as repo:
        results = list_drills(repo.storage, source, repo.pipeline)
    writer(output).drills(results)


@drill_group.command(name="show")
@click.argument("drill_id")
@OUTPUT
@pass_state
def drill_show(state: State, drill_id: str, output: str) -> None:
    """Show one drill's result: every check, the point reached and the time each part took."""
    from backupctl.cli.output import writer
    from backupctl.services.drill_results import find_drill

    with state.repository() as repo:
        result = find_drill(repo.storage, drill_id, repo.pipeline)
    writer(output).drill(result)
