"""The operations commands of the CLI: status, check, metrics, and the scheduler (run, jobs, run-job)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

AUTO_OUTPUT = click.option(
    "--output", "-o", type=click.Choice(["table", "json"]), default=None,
    help="Result format (default: a table on a terminal, JSON otherwise).",
)


def register(cli: click.Group) -> None:
    """Add status, check, metrics and scheduler to the ``backupctl`` group."""
    from backupctl.cli.app import OUTPUT, State, pass_state

    @cli.command()
    @click.argument("sources", nargs=-1, metavar="[SOURCE]...")
    @AUTO_OUTPUT
    @pass_state
    def status(state: State, sources: tuple[str, ...], output: str | None) -> None:
        """Is every source protected? Last backups, WAL archiving, recoverable window, size, verify, drill."""
        from backupctl.cli.output import emit_json
        from backupctl.monitoring.status import gather

        facts = gather(state.config(), list(sources))
        if (output or ("table" if sys.stdout.isatty() else "json")) == "json":
            emit_json(facts)
        else:
            _status_view(facts)

    @cli.command()
    @click.argument("sources", nargs=-1, metavar="[SOURCE]...")
    @OUTPUT
    @pass_state
    def check(state: State, sources: tuple[str, ...], output: str) -> None:
        """Monitoring plugin: one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN ([sources.X.check])."""
        from datetime import UTC, datetime

        from backupctl.cli.output import emit_json
        from backupctl.monitoring import check as monitor
        from backupctl.monitoring.status import gather

        try:
            config = state.config()
            now = datetime.now(UTC)
            facts = gather(config, list(sources), now)
            findings = [f for s in facts for f in monitor.evaluate(s, config.source(s["source"]), config, now)]
        except Exception as exc:  # a plugin that cannot look says UNKNOWN, never a traceback
            click.echo(f"BACKUPCTL UNKNOWN - {exc}")
            sys.exit(monitor.UNKNOWN)
        code = monitor.worst([f.state for f in findings])
        if output == "json":
            emit_json([{"id": s["source"], "source": s["source"],
                        "state": monitor.STATE_NAMES[monitor.worst([f.state for f in findings
                                                                    if f.source == s["source"]])],
                        "findings": [f.to_json() for f in findings if f.source == s["source"]]} for s in facts])
        else:
            click.echo(monitor.summary(findings, [s["source"] for s in facts]))
            for finding in findings:  # the plugin's long output, after the summary line
                click.echo(f"{monitor.STATE_NAMES[finding.state]}: {finding.source}: {finding.message}")
        sys.exit(code)

    @cli.command()
    @click.option("--write", is_flag=True, help="Write [metrics] textfile instead of printing.")
    @pass_state
    def metrics(state: State, write: bool) -> None:
        """Prometheus metrics of every source (for cron, or a timer beside the units)."""
        from backupctl.core.errors import ConfigError
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

    @cli.group(invoke_without_command=True)
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
        from backupctl.cli.output import emit_json, table
        from backupctl.scheduler.runner import next_runs

        rows = next_runs(state.config())
        if output == "json":
            emit_json(rows)
        elif not rows:
            click.echo("no scheduled jobs: add [sources.NAME.schedule] tables to the config")
        else:
            table(None, ["JOB", "LANE", "SCHEDULE", "NEXT RUN", "COMMAND"],
                  [[r["id"], r["lane"], r["schedule"], r["next_run"] or "-", r["command"]] for r in rows])

    @scheduler.command(name="run-job")
    @click.argument("source")
    @click.argument("job", type=click.Choice(["backup", "full", "incr", "logical", "expire", "verify", "drill"]))
    @pass_state
    def scheduler_run_job(state: State, source: str, job: str) -> None:
        """Run one JOB of SOURCE now, as the scheduler would (job id, webhooks, metrics); for timers and cron.

        "backup" is the source's default backup (SQLite; PostgreSQL: logical). Exits with the job's code."""
        from backupctl.scheduler.runner import run_once

        result = run_once(state.config(), _config_file(state.config_file), source, job)
        sys.exit(0 if result.ok else (result.exit_code if result.exit_code and result.exit_code > 0 else 1))


def _age(seconds: float | None) -> str:
    from backupctl.monitoring.check import human_age

    return "-" if seconds is None else human_age(seconds)


def _status_view(facts: list[dict[str, Any]]) -> None:
    """Two tables: every source at a glance, then its newest backup of each type."""
    from backupctl.cli.output import console, human_size, table

    rows = []
    for s in facts:
        repository = s["repository"] or {}
        newest = min(s["backups"], key=lambda b: b["age_seconds"], default=None)
        rows.append([
            s["source"], s["kind"],
            f"{newest['type']}, {_age(newest['age_seconds'])} ago" if newest else "NONE",
            _wal_cell(s), _window_cell(s.get("window")),
            human_size(repository["stored_bytes"]) if repository.get("reachable") else "UNREACHABLE",
            _record_cell(s.get("last_verify")), _drill_cell(s.get("last_drill")),
        ])
    table(None, ["SOURCE", "KIND", "LAST BACKUP", "WAL ARCHIVE", "RECOVERABLE WINDOW", "STORED", "LAST VERIFY",
                 "LAST DRILL"], rows)
    backups = [[s["source"], b["type"], b["id"], b["finished_at"], _age(b["age_seconds"]), human_size(b["size"]),
                human_size(b["stored_size"]), f"{b['duration_seconds']:.1f}s", str(b["count"])]
               for s in facts for b in s["backups"]]
    if backups:
        table(None, ["SOURCE", "TYPE", "NEWEST", "FINISHED", "AGE", "SIZE", "STORED", "TOOK", "COUNT"], backups)
    for s in facts:
        judged = s.get("timelines")
        if judged and len(judged["tips"]) > 1:
            console().print(f"{s['source']}: timelines: {judged['reason']}")
        for error in s["errors"]:
            console().print(f"{s['source']}: {error}")


def _wal_cell(status: dict[str, Any]) -> str:
    wal, server = status.get("wal"), status.get("server") or {}
    if status["kind"] != "postgres":
        return "-"
    parts = [f"newest {_age(wal['age_seconds'])} ago, {wal['gaps']} gaps" if wal else "none archived"]
    if server.get("reachable"):
        parts.append(f"{server['failed_count']} failures" + (" (FAILING)" if server["failing"] else ""))
    if server.get("ready") is not None:
        parts.append(f"{server['ready']} ready")
    if server and not server.get("reachable"):
        parts.append("server unreachable")
    return ", ".join(parts)


def _window_cell(window: dict[str, Any] | None) -> str:
    if not window:
        return "-"
    if window["earliest"] is None:
        return f"NONE: {window['problem']}"
    kind = "PITR" if window["kind"] == "pitr" else f"{window['points']} backups"
    on = f" on timeline {window['timeline']}" if window.get("timeline") else ""
    return f"{kind} {window['earliest'][:16]} .. {window['latest'][:16]} ({_age(window['seconds'])}){on}"


def _record_cell(record: dict[str, Any] | None) -> str:
    if not record:
        return "never"
    return f"{record.get('status')}, {_age(record.get('age_seconds'))} ago"


def _drill_cell(record: dict[str, Any] | None) -> str:
    if not record:
        return "never"
    rto = record.get("rto_seconds")
    return _record_cell(record) + (f", RTO {_age(rto)}" if rto is not None else "")


def _config_file(path: str | None) -> Path:
    """The config file's absolute path: children and units must find it whatever their directory."""
    from backupctl.core.config import config_path

    return config_path(path).absolute()
