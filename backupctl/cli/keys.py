"""Key rotation in the CLI: ``backupctl repo recipients add|remove AGE1...``.

The repository's marker lists the age recipients new data is encrypted to; backup and wal-push refuse a
config whose list differs. These commands are the one way to change the repository's list; each host's
config is then given the new list.
"""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add ``recipients add|remove`` to the ``repo`` group (made by cli_retention)."""
    from backupctl.cli.app import State, pass_state

    repo_group = cli.commands["repo"]
    assert isinstance(repo_group, click.Group), "cli_retention registers the repo group first"

    @repo_group.group(name="recipients")
    def recipients() -> None:
        """The age recipients new backups and WAL are encrypted to (key rotation)."""

    @recipients.command(name="add")
    @click.argument("recipient", metavar="AGE1...")
    @pass_state
    def add(state: State, recipient: str) -> None:
        """Encrypt new data to RECIPIENT too (from `backupctl keygen`); then give every host's config the new
        list. Existing backups stay encrypted to the keys they were written with."""
        _change(state, recipient, add=True)

    @recipients.command(name="remove")
    @click.argument("recipient", metavar="AGE1...")
    @pass_state
    def remove(state: State, recipient: str) -> None:
        """Stop encrypting new data to RECIPIENT (the last one cannot go); then give every host's config the new
        list. Backups already encrypted to it still need its identity to restore."""
        _change(state, recipient, add=False)


def _change(state: object, recipient: str, add: bool) -> None:
    from backupctl.core.privileges import become_repository_owner
    from backupctl.repo.repository import change_recipients

    config = state.config()  # type: ignore[attr-defined]
    become_repository_owner(config)  # the marker and the lease belong to the repository's user
    change = change_recipients(config, recipient, add)
    if change.action == "unchanged":
        click.echo(f"{change.recipient} is already a recipient of {change.location}")
    else:
        click.echo(f"{change.action} recipient {change.recipient}: {change.location} now encrypts new data to "
                   f"{', '.join(change.recipients)}")
    click.echo(f"set encryption.recipients in every host's config to: {change.recipients}")
