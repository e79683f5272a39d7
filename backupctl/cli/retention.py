"""The retention commands: expire, delete, pin and unpin (``repo gc`` is in ``cli.repo``).

Services and the writers are imported where they are used: start-up cost, see ``cli.common``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from backupctl.cli.common import OUTPUT, State, act_as, pass_state
from backupctl.cli.completion import complete_backup_ids, complete_sources

if TYPE_CHECKING:  # types only (start-up cost)
    from backupctl.repo.catalog import Manifest
    from backupctl.repo.repository import Repository


@click.command()
@click.argument("source", shell_complete=complete_sources)
@click.option("--dry-run", is_flag=True, help="Print the plan (every backup and WAL range, and why) and stop.")
@click.option("--force", is_flag=True, help="Allow a run that removes more than half of the source's backups.")
@OUTPUT
@pass_state
def expire(state: State, source: str, dry_run: bool, force: bool, output: str) -> None:
    """Apply SOURCE's retention policy: remove the backups no rule keeps, then the WAL none needs."""
    from backupctl.cli.output import writer
    from backupctl.cli.progress import progress_for
    from backupctl.repo.repository import open_repository
    from backupctl.services.expire import expire as run

    config = state.config()
    src = config.source(source)
    act_as(config, "repository", source)
    with open_repository(config) as repo:
        outcome = run(repo, src, dry_run=dry_run, force=force, progress=progress_for(state))
    writer(output).expired(outcome.rows(), dry_run)
    if outcome.guard:
        click.echo(f"note: the real run refuses without --force: {outcome.guard}", err=True)


@click.command()
@click.argument("backup_id", shell_complete=complete_backup_ids)
@click.option("--dry-run", is_flag=True, help="Print what would be removed, and what protects it, and stop.")
@click.option("--force", is_flag=True, help="Delete a backup retention protects (newest, pinned, read, the "
              "recovery window's base), and the incrementals built on it.")
@OUTPUT
@pass_state
def delete(state: State, backup_id: str, dry_run: bool, force: bool, output: str) -> None:
    """Remove BACKUP_ID now, unless retention protects it; the WAL it alone needed goes at the next expire."""
    from backupctl.cli.output import writer
    from backupctl.cli.progress import progress_for
    from backupctl.services.delete import delete as run

    config = state.config()
    with _open_for(state, backup_id) as (repo, manifest):
        outcome = run(repo, config.source(manifest.source), manifest.id, dry_run=dry_run, force=force,
                      progress=progress_for(state))
    writer(output).deleted(outcome)
    if dry_run and outcome.protected and not force:
        click.echo(f"note: the real run refuses without --force: {outcome.protected}", err=True)


@click.command()
@click.argument("backup_id", shell_complete=complete_backup_ids)
@click.option("--reason", required=True, help="Why the backup must be kept (shown by list and expire).")
@pass_state
def pin(state: State, backup_id: str, reason: str) -> None:
    """Keep BACKUP_ID whatever the retention policy says, until `unpin`."""
    from backupctl.repo import pins

    with _open_for(state, backup_id) as (repo, manifest):
        record = pins.pin(repo, manifest, reason)
    click.echo(f"pinned {manifest.id} of {manifest.source}: {record.describe()}")


@click.command()
@click.argument("backup_id", shell_complete=complete_backup_ids)
@pass_state
def unpin(state: State, backup_id: str) -> None:
    """Let the retention policy decide about BACKUP_ID again."""
    from backupctl.repo import pins

    with _open_for(state, backup_id) as (repo, manifest):
        removed = pins.unpin(repo.storage, manifest)
    click.echo(f"unpinned {manifest.id}" if removed else f"{manifest.id} was not pinned")


@contextlib.contextmanager
def _open_for(state: State, backup_id: str) -> Iterator[tuple[Repository, Manifest]]:
    """The repository and one backup's manifest, acting as the repository's user (see ``act_as``)."""
    config = state.config()
    with state.repository() as repo:
        manifest = repo.catalog.resolve(backup_id)
        if manifest.source in config.sources:
            act_as(config, "repository", manifest.source)
        yield repo, manifest
