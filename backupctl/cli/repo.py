"""The repository as a whole: ``init``, and the ``repo`` group (``gc``, and ``recipients`` from ``cli.keys``).

Services and the writers are imported where they are used: start-up cost, see ``cli.common``.
"""

from __future__ import annotations

import click

from backupctl.cli.common import OUTPUT, State, act_as, pass_state
from backupctl.cli.keys import recipients
from backupctl.core.options import parse_duration


@click.command()
@pass_state
def init(state: State) -> None:
    """Create the repository (local directory or S3 bucket/prefix) named by the config."""
    from backupctl.repo.repository import init_repository

    config = state.config()
    act_as(config, "server")  # a repository that PostgreSQL sources archive into belongs to the server's user
    repo, created = init_repository(config)
    with repo:
        verb = "created" if created else "already exists, left unchanged:"
        enc = "encrypted with age" if repo.meta.get("encryption") else "not encrypted"
        click.echo(f"repository {verb} {repo.storage.location} ({enc}, format {repo.meta['version']})")


@click.group(name="repo")
def repo_group() -> None:
    """The repository as a whole."""


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@repo_group.command(name="gc")
@click.option("--dry-run", is_flag=True, help="Print what would be removed and stop.")
@click.option("--grace", default="24h", show_default=True, callback=_duration, metavar="DURATION",
              help="Leave debris younger than this (a backup may still be writing it).")
@OUTPUT
@pass_state
def repo_gc(state: State, dry_run: bool, grace: float, output: str) -> None:
    """Remove debris: folders of interrupted or expired-while-read backups, stale leases, and (S3)
    incomplete multipart uploads."""
    from backupctl.cli.output import writer
    from backupctl.services.gc import collect

    act_as(state.config(), "repository")  # a root-owned folder would refuse its user's next run
    with state.repository() as repo:
        items = collect(repo, grace, dry_run)
    writer(output).collected([item.to_json(dry_run) for item in items], dry_run)


repo_group.add_command(recipients)
