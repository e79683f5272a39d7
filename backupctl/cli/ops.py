"""The operations commands: status, check (the monitoring plugin) and metrics.

Services and the writers are imported where they are used: start-up cost, see ``cli.common``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from backupctl.cli.common import OUTPUT, State, pass_state
from backupctl.cli.completion import complete_sources
from backupctl.core.errors import ConfigError


@click.command()
@click.argument("sources", nargs=-1, metavar="[SOURCE]...", shell_complete=complete_sources)
@OUTPUT
@pass_state
def status(state: State, sources: tuple[str, ...], output: str) -> None:
    """Is every source protected? Last backups, WAL archiving, recoverable window, size, verify, drill."""
    from backupctl.cli.output import writer
    from backupctl.monitoring.status import gather

    writer(output).status(gather(state.config(), list(sources)))


@click.command()
@click.argument("sources", nargs=-1, metavar="[SOURCE]...", shell_complete=complete_sources)
@OUTPUT
@pass_state
def check(state: State, sources: tuple[str, ...], output: str) -> None:
    """Monitoring plugin: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN ([sources.X.check])."""
    from backupctl.cli.output import writer
    from backupctl.monitoring import check as monitor
    from backupctl.monitoring.status import gather

    try:
        config = state.config()
        now = datetime.now(UTC)
        facts = gather(config, list(sources), now)
        findings = [f for s in facts for f in monitor.evaluate(s, config.source(s.source), config, now)]
    except Exception as exc:  # a plugin that cannot look says UNKNOWN, never a traceback
        click.echo(f"BACKUPCTL UNKNOWN - {exc}")
        sys.exit(monitor.UNKNOWN)
    writer(output).checked([s.source for s in facts], findings)
    sys.exit(monitor.worst([f.state for f in findings]))


@click.command()
@click.option("--write", is_flag=True, help="Write [metrics] textfile instead of printing.")
@pass_state
def metrics(state: State, write: bool) -> None:
    """Prometheus metrics of every source (for cron, or a timer beside the units)."""
    from backupctl.scheduler.runner import Reporter

    config = state.config()
    if write and not config.metrics.textfile:
        raise ConfigError(f"--write needs [metrics] textfile in {config.file}")
    reporter = Reporter(config)
    if not write:
        reporter.publisher.textfile = None  # print: leave the textfile (and its job counters) alone
    reporter.refresh()
    if not write:
        click.echo(reporter.publisher.exposition.text(), nl=False)
