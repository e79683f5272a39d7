"""The scheduler commands: ``scheduler`` (the resident loop), ``scheduler jobs`` and ``scheduler run-job``.

Services and the writers are imported where they are used: start-up cost, see ``cli.common``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from backupctl.cli.common import OUTPUT, State, pass_state
from backupctl.cli.completion import complete_sources
from backupctl.core.errors import EXIT_FAILED, EXIT_OK


@click.group(name="scheduler", invoke_without_command=True)
@click.pass_context
def scheduler(ctx: click.Context) -> None:
    """Run the scheduled jobs of every source until stopped (systemd: Type=notify)."""
    if ctx.invoked_subcommand is not None:
        return
    from backupctl.core import log
    from backupctl.scheduler.runner import Scheduler

    state: State = ctx.obj
    log.configure(debug=state.debug, json_lines=True)
    Scheduler(state.config(), _config_file(state.config_file)).serve()


@scheduler.command(name="jobs")
@OUTPUT
@pass_state
def scheduler_jobs(state: State, output: str) -> None:
    """The scheduled jobs and when each runs next."""
    from backupctl.cli.output import writer
    from backupctl.scheduler.runner import next_runs

    writer(output).jobs(next_runs(state.config()))


@scheduler.command(name="run-job")
@click.argument("source", shell_complete=complete_sources)
@click.argument("job", type=click.Choice(["backup", "full", "incr", "logical", "expire", "verify", "drill"]))
@pass_state
def scheduler_run_job(state: State, source: str, job: str) -> None:
    """Run one JOB of SOURCE now, as the scheduler would (job id, webhooks, metrics); for timers and cron.

    "backup" is the source's default backup (SQLite; PostgreSQL: logical). Exits with the job's code; silent
    on success (logs from warning up, unless --log-level says otherwise), so cron mails only failures."""
    from backupctl.core import log
    from backupctl.scheduler.runner import run_once

    level = state.log_level or "warning"
    os.environ[log.LOG_LEVEL_ENV] = level  # the job runs as a child, which must log at the same level
    log.configure(debug=state.debug, level=level)
    result = run_once(state.config(), _config_file(state.config_file), source, job)
    code = result.exit_code
    sys.exit(EXIT_OK if result.ok else (code if code and code > 0 else EXIT_FAILED))


def _config_file(path: str | None) -> Path:
    """The config file's absolute path: children and units must find it whatever their directory."""
    from backupctl.core.config import config_path  # start-up cost

    return config_path(path).absolute()
