"""The encryption keys: ``backupctl keygen``, and key rotation with ``backupctl repo recipients add|remove``.

The repository's marker lists the age recipients new data is encrypted to; backup and wal-push refuse a
config whose list differs. These commands are the one way to change the repository's list; each host's
config is then given the new list. Services are imported where they are used: start-up cost, see
``cli.common``.
"""

from __future__ import annotations

from pathlib import Path

import click

from backupctl.cli.common import FORMATS, State, act_as, pass_state
from backupctl.core.errors import ConfigError


class _Format(click.Choice):
    """``-o/--output`` as everywhere else, with one line for the old ``--output FILE`` (before issue 15, keygen's
    --output was the key's path): a path is refused with the new option to use, never taken as a format."""

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        if value not in self.choices:
            raise ConfigError(f"keygen --output {value}: --output is the result format ({' or '.join(self.choices)}); "
                              f"the key file is --to FILE, e.g. `backupctl keygen --to {value}`")
        return value


@click.command()
@click.option("--to", "key_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Where to write the identity (private key), mode 0600; never overwritten.  [required]")
@click.option("--output", "-o", type=_Format(list(FORMATS)), default="table", show_default=True,
              help="Result format: the recipient alone for people and scripts, JSON for programs.")
def keygen(key_file: Path | None, output: str) -> None:
    """Make an age key pair: identity to FILE (mode 0600), recipient (public key) on stdout."""
    from backupctl.cli.output import writer
    from backupctl.repo.crypto import generate_key_file

    if key_file is None:
        raise ConfigError("keygen needs --to FILE: where to write the identity (private key), e.g. "
                          "`backupctl keygen --to /etc/backupctl/age.key`")
    if key_file.name in FORMATS:
        raise ConfigError(f"keygen --to {key_file}: a key file named like an output format is a mistake more "
                          f"often than not (the format is -o {key_file.name}); name it e.g. {key_file}.key")
    recipient = generate_key_file(key_file)
    writer(output).key_made(recipient, key_file.absolute())
    click.echo(f"identity written to {key_file}; put the recipient in encryption.recipients", err=True)


@click.group(name="recipients")
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


def _change(state: State, recipient: str, add: bool) -> None:
    from backupctl.repo.repository import change_recipients

    config = state.config()
    act_as(config, "repository")  # the marker and the lease belong to the repository's user
    change = change_recipients(config, recipient, add)
    if change.action == "unchanged":
        click.echo(f"{change.recipient} is already a recipient of {change.location}")
    else:
        click.echo(f"{change.action} recipient {change.recipient}: {change.location} now encrypts new data to "
                   f"{', '.join(change.recipients)}")
    click.echo(f"set encryption.recipients in every host's config to: {change.recipients}")
