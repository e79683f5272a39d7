"""What every command module shares: the group's state, the common options, and whose OS user a command is.

The command modules import this module and nothing else of the CLI at their top; the group in ``cli.app``
imports them, never the reverse. At their top they import click and the cheap modules of ``core`` (errors,
options); services, the config, logging and the output writers are imported where they are used: start-up
cost. ``backupctl --help`` and each command's start must not pay for boto3, psycopg, rich, structlog or
the config schema (~15 ms).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

if TYPE_CHECKING:  # types only; see the module docstring for why the modules load late
    from backupctl.core.config import Config
    from backupctl.repo.repository import Repository
    from backupctl.services.pitr import Target

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "json")  # what -o/--output takes, in every command
# The one rule of every command's result format: a table unless JSON is asked for, on a terminal or piped
# (`list | grep` keeps working; programs say `-o json`, or set $BACKUPCTL_OUTPUT=json once).
OUTPUT = click.option(
    "--output", "-o", type=click.Choice(FORMATS), default="table", show_default=True,
    envvar="BACKUPCTL_OUTPUT", show_envvar=True,
    help="Result format: a table for people (also when piped), JSON for programs.",
)


def chosen_log_level(debug: bool, log_level: str | None, given: bool, quiet: bool) -> str | None:
    """The level the group's options choose, None for each command's default (info; ``run-job``: warning).

    The most explicit wins: ``--debug``, then ``--log-level`` on the command line, then ``-q`` (warning),
    then ``$BACKUPCTL_LOG_LEVEL`` (``log_level`` not ``given``).
    """
    if debug:
        return "debug"
    if quiet and not given:
        return "warning"
    return log_level.lower() if log_level else None


@dataclass
class State:
    """What the group options give every command."""

    config_file: str | None
    debug: bool
    log_level: str | None  # chosen by --debug, --log-level, -q or $BACKUPCTL_LOG_LEVEL; None: the default

    @property
    def quiet(self) -> bool:
        """Only warnings and errors: no progress and no informational lines (see ``quiet``)."""
        return self.log_level in ("warning", "error")

    def config(self) -> Config:
        # Start-up cost: the config's modules load only once a command runs.
        from backupctl.core.config import config_path, load_config
        from backupctl.storage.local import warn_if_readable_by_others

        path = config_path(self.config_file)
        config = load_config(path)
        warn_if_readable_by_others(path, "config file")  # not on the wal-push fast path: once a segment is noise
        return config

    def repository(self) -> Repository:
        from backupctl.repo.repository import open_repository  # start-up cost

        return open_repository(self.config())


pass_state = click.make_pass_decorator(State)


def quiet() -> bool:
    """Whether the running command must stay silent but for warnings, errors and its result (``-q``,
    ``--log-level warning|error``): progress bars and notes ask here. False outside a command."""
    ctx = click.get_current_context(silent=True)
    state = ctx.find_object(State) if ctx else None
    return bool(state and state.quiet)

Role = Literal["server", "repository", "backup"]


def act_as(config: Config, role: Role, source: str | None = None) -> None:
    """Started as root, become the OS user a command's files must belong to: the CLI decides it here alone.

    ``server``: the command writes a PostgreSQL server's files (a restored data directory, its archive's
    epochs and timelines, a drill's scratch cluster): the owner of SOURCE's pgdata or, with no source named
    (``init``), of the first PostgreSQL source that has one; a source without a server (SQLite) acts as the
    repository's owner. ``repository``: the command writes to the repository (verify and drill records,
    retention, pins, key rotation): ``become_repository_owner``'s choice. ``backup``: a PostgreSQL source's
    backup acts as the repository's owner; a SQLite one stays who it is, since the database's reader may not
    be the repository's owner. See ``core.privileges`` for how the switch is made.
    """
    from backupctl.core.config import PostgresSource  # start-up cost
    from backupctl.core.privileges import become_repository_owner, become_server_user

    if role == "server":
        server = config.source(source) if source else next(
            (s for s in config.sources.values() if isinstance(s, PostgresSource) and s.pgdata), None)
        if isinstance(server, PostgresSource):
            become_server_user(server)
            return
        if server is None:
            return
    if role == "backup" and not isinstance(config.source(source or ""), PostgresSource):
        return
    become_repository_owner(config, source)


@dataclass(frozen=True)
class TargetOptions:
    """The ``--target-*`` options as given: at most one recovery target, checked by ``pitr``."""

    time: str | None
    lsn: str | None
    xid: str | None
    name: str | None
    immediate: bool

    def target(self, timeline: str = "latest", action: str | None = None, inclusive: bool = True) -> Target:
        from backupctl.services.pitr import target_from_options  # start-up cost

        return target_from_options(self.time, self.lsn, self.xid, self.name, self.immediate, timeline, action,
                                   inclusive)


def target_options(immediate_help: str) -> Callable[[F], F]:
    """The recovery target options of ``restore`` and ``drill run``, given to the command as ``target``."""
    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_target(*args: Any, target_time: str | None, target_lsn: str | None, target_xid: str | None,
                        target_name: str | None, target_immediate: str | None, **kwargs: Any) -> Any:
            target = TargetOptions(target_time, target_lsn, target_xid, target_name, bool(target_immediate))
            return command(*args, target=target, **kwargs)

        options = [
            click.option("--target-time", help="Physical: recover to this time (ISO 8601; UTC without an offset)."),
            click.option("--target-lsn", help="Physical: recover to this WAL location."),
            click.option("--target-xid", help="Physical: recover to this transaction."),
            click.option("--target-name", help="Physical: recover to this named restore point."),
            click.option("--target", "target_immediate", type=click.Choice(["immediate"]), help=immediate_help),
        ]
        for option in reversed(options):
            with_target = option(with_target)
        return with_target  # type: ignore[return-value]

    return decorate
