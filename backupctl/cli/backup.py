"""The backup commands: backup, list, show, verify.

Like every command module, this one imports click, ``cli.common`` and cheap parts of ``core`` at its top;
services and the writers are imported where they are used: start-up cost, see ``cli.common``.
"""

from __future__ import annotations

import click

from backupctl.cli.common import OUTPUT, State, act_as, pass_state
from backupctl.cli.completion import complete_backup_ids, complete_sources
from backupctl.core.errors import BackupctlError, ConfigError

BACKUP_TYPES = ("sqlite", "logical", "full", "incr")  # cheap here; catalog.TYPE_LETTERS has the same keys (test)


@click.command()
@click.argument("source", shell_complete=complete_sources)
@click.option("--type", "backup_type", type=click.Choice(BACKUP_TYPES),
              help="Backup type (default: full for a PostgreSQL source with pgdata and no --database, else "
                   "logical; sqlite for SQLite sources).")
@click.option("--database", "databases", multiple=True, metavar="NAME",
              help="Logical: back up only this database (repeatable; default: all, or the config's list).")
@click.option("--export-json", is_flag=True, help="SQLite: also store each table as JSON lines, and the DDL.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Tag the backup (repeatable).")
@OUTPUT
@pass_state
def backup(state: State, source: str, backup_type: str | None, databases: tuple[str, ...],
           export_json: bool, labels: tuple[str, ...], output: str) -> None:
    """Back up a configured SOURCE into the repository."""
    from backupctl.cli.output import writer
    from backupctl.cli.progress import progress_for
    from backupctl.core.log import get_logger
    from backupctl.engines.base import BackupOptions
    from backupctl.engines.registry import default_type
    from backupctl.repo.repository import open_repository
    from backupctl.services.backup import backup_source

    options = BackupOptions(export_json=export_json, labels=_labels(labels), databases=databases)
    config = state.config()
    src = config.source(source)
    if backup_type is None:
        backup_type, why = default_type(src, databases)
        if why:
            get_logger(__name__).info("no --type given", type=backup_type, reason=why)
    act_as(config, "backup", source)
    with open_repository(config) as repo:
        manifest = backup_source(repo, src, backup_type, options, progress_for(state))
    writer(output).backup(manifest)


def _labels(labels: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``--label KEY=VALUE`` options as pairs; a label without a key or ``=`` is a usage error."""
    parsed = []
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {label!r} must look like KEY=VALUE")
        parsed.append((key, value))
    return tuple(parsed)


@click.command(name="list")
@click.argument("source", required=False, shell_complete=complete_sources)
@click.option("--type", "backup_type", type=click.Choice(BACKUP_TYPES), help="Only backups of this type.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Only backups with this label (repeatable: all must match).")
@click.option("--last", type=click.IntRange(min=1), metavar="N", help="Only the N newest (after the filters).")
@OUTPUT
@pass_state
def list_(state: State, source: str | None, backup_type: str | None, labels: tuple[str, ...], last: int | None,
          output: str) -> None:
    """List backups, newest first (all sources, or one)."""
    from backupctl.cli.output import writer
    from backupctl.core import log
    from backupctl.repo.catalog import select
    from backupctl.repo.pins import read_pins

    wanted = _labels(labels)  # a malformed --label is refused before the repository is opened
    with state.repository() as repo:
        found, damaged = repo.catalog.scan(source)
        manifests = select(found, backup_type, dict(wanted), last)
        pinned = {bid: pin for name in sorted({m.source for m in manifests})
                  for bid, pin in read_pins(repo.storage, name).items()}
    for key, problem in damaged.items():
        log.get_logger(__name__).warning("damaged manifest skipped", key=key, problem=problem)
    writer(output).backups([{**m.summary(), "pinned": pinned[m.id].to_json() if m.id in pinned else None}
                            for m in manifests])


@click.command()
@click.argument("backup_id", shell_complete=complete_backup_ids)
@OUTPUT
@pass_state
def show(state: State, backup_id: str, output: str) -> None:
    """Show one backup's manifest (the data's description too, when the identity can open it).

    BACKUP_ID, here and wherever a command takes one: an id, a unique prefix of one, latest, oldest,
    SOURCE:latest or SOURCE:oldest."""
    from backupctl.cli.output import writer
    from backupctl.repo.catalog import open_details

    with state.repository() as repo:
        manifest = repo.catalog.resolve(backup_id)
        if manifest.details is None and repo.pipeline.can_decrypt():
            open_details(manifest, repo.pipeline)
    doc = manifest.to_document()
    doc["details"] = manifest.details
    doc.pop("sealed_details", None)
    writer(output).manifest(doc)


@click.command()
@click.argument("backup_id", required=False, shell_complete=complete_backup_ids)
@click.option("--all", "all_", is_flag=True, help="Verify every backup in the repository.")
@click.option("--source", help="With --all: only this source's backups.", shell_complete=complete_sources)
@click.option("--latest", metavar="SOURCE", help="Verify the newest backup of SOURCE.",
              shell_complete=complete_sources)
@OUTPUT
@pass_state
def verify(state: State, backup_id: str | None, all_: bool, source: str | None, latest: str | None,
           output: str) -> None:
    """Read every object of a backup back and check it against the manifest (exit 1 on damage).

    Each verified backup leaves a record in the repository (<source>/verifications/), which `status` and
    `check` report."""
    from backupctl.cli.output import writer
    from backupctl.cli.progress import progress_for
    from backupctl.repo.repository import open_repository
    from backupctl.services.verify import latest_backup, source_bindir, verify_all, verify_backup

    if [bool(backup_id), all_, bool(latest)].count(True) != 1:
        raise ConfigError("give one of BACKUP_ID, --all or --latest SOURCE")
    config = state.config()
    act_as(config, "repository", latest or source)  # its records must not be root's
    with open_repository(config) as repo:
        if all_:
            results = verify_all(repo, source, progress_for(state))
        else:
            manifest = latest_backup(repo, latest) if latest else repo.catalog.resolve(backup_id or "")
            results = [verify_backup(repo, manifest, source_bindir(repo, manifest), progress_for(state))]
    writer(output).verified(results)
    bad = [r for r in results if not r.ok]
    unrecorded = [r.record_error for r in results if r.record_error]
    if bad:
        also = f" ({unrecorded[0]})" if unrecorded else ""
        raise BackupctlError(f"{len(bad)} of {len(results)} backups are damaged: {bad[0].problems[0]}{also}")
    if unrecorded:
        raise BackupctlError(f"{unrecorded[0]}; `check` still shows the previous result")
