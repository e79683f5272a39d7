"""The ``backupctl`` group: its global options, every command added from its module, and ``main``.

Each command lives in the module of its verb family (``cli.backup``, ``cli.restore``, ``cli.wal``, ...) as a
plain click command that parses its options, calls a service and hands the result to a writer of
``cli.output``; this module only assembles them, and no command module imports it back.

Failures the user can act on are ``BackupctlError``s and print as one line with their exit code
(2 for usage and config, 1 for a failed operation); a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import signal
import sys
import traceback
from typing import NoReturn

import click
from click.core import ParameterSource

from backupctl import __version__
from backupctl.cli import backup, drill, keys, ops, repo, report, restore, retention, scheduler, wal
from backupctl.cli.argv import command_word
from backupctl.cli.common import State, chosen_log_level
from backupctl.core import log, signals
from backupctl.core.errors import (
    CHECK_UNKNOWN,
    EXIT_FAILED,
    EXIT_USAGE,
    BackupctlError,
    Interrupted,
    signal_exit_code,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config", "config_file", metavar="FILE",
    help="Config file (default: $BACKUPCTL_CONFIG, then /etc/backupctl/backupctl.toml).",
)
@click.option("--debug", is_flag=True, help="Debug logs, and a traceback on errors.")
@click.option("--log-level", type=click.Choice(log.LEVELS, case_sensitive=False), envvar=log.LOG_LEVEL_ENV,
              show_envvar=True, help="Log lines on stderr from this level up (default: info; run-job: warning).")
@click.option("--quiet", "-q", is_flag=True,
              help="Only warnings and errors on stderr, and no progress; results still print.")
@click.version_option(__version__, prog_name="backupctl")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, debug: bool, log_level: str | None, quiet: bool) -> None:
    """Backups and point-in-time recovery for PostgreSQL, and SQLite for development."""
    given = ctx.get_parameter_source("log_level") is ParameterSource.COMMANDLINE
    state = State(config_file, debug, chosen_log_level(debug, log_level, given, quiet))
    log.configure(debug=debug, level=state.log_level or "info")
    ctx.obj = state


for command in (
    repo.init, repo.repo_group, keys.keygen,
    backup.backup, backup.list_, backup.show, backup.verify,
    restore.restore,
    wal.wal_push, wal.wal_fetch, wal.wal_group, wal.pg_settings,
    retention.expire, retention.delete, retention.pin, retention.unpin,
    ops.status, ops.check, ops.metrics, report.report,
    scheduler.scheduler,
    drill.drill_group,
):
    cli.add_command(command)


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
        sys.exit(CHECK_UNKNOWN if command_word(args) == "check" else EXIT_USAGE)
    except click.Abort:
        _fail("aborted", signal_exit_code(signal.SIGINT), debug)
    except KeyboardInterrupt:
        _fail("interrupted by SIGINT: nothing was published; partial uploads were removed",
              signal_exit_code(signal.SIGINT), debug)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        _fail(f"interrupted by {name}: nothing was published; partial uploads were removed",
              exc.exit_code, debug)
    except BackupctlError as exc:
        _fail(str(exc), exc.exit_code, debug)
    except Exception as exc:
        message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
        _fail(message, EXIT_FAILED, debug)
