"""Retention commands of the CLI: expire, repo gc, pin and unpin."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click


def _duration(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    from backupctl.core.config import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def register(cli: click.Group) -> None:
    """Add expire, repo gc, pin and unpin to the ``backupctl`` group."""
    from backupctl.cli.app import OUTPUT, State, pass_state

    @cli.command()
    @click.argument("source")
    @click.option("--dry-run", is_flag=True, help="Print the plan (every backup and WAL range, and why) and stop.")
    @click.option("--force", is_flag=True, help="Allow a run that removes more than half of the source's backups.")
    @OUTPUT
    @pass_state
    def expire(state: State, source: str, dry_run: bool, force: bool, output: str) -> None:
        """Apply SOURCE's retention policy: remove the backups no rule keeps, then the WAL none needs."""
        from backupctl.cli.output import emit_json
        from backupctl.core.privileges import become_repository_owner
        from backupctl.repo.repository import open_repository
        from backupctl.services.expire import expire as run

        config = state.config()
        src = config.source(source)
        become_repository_owner(config, source)
        with open_repository(config) as repo:
            outcome = run(repo, src, dry_run=dry_run, force=force)
        rows = outcome.rows()
        if output == "json":
            emit_json(rows)
        else:
            _expire_view(rows, dry_run)
        if outcome.guard:
            click.echo(f"note: the real run refuses without --force: {outcome.guard}", err=True)

    group = cli.commands.get("repo")
    if not isinstance(group, click.Group):
        @cli.group(name="repo")
        def repo_group() -> None:
            """The repository as a whole."""

        group = repo_group

    @group.command(name="gc")
    @click.option("--dry-run", is_flag=True, help="Print what would be removed and stop.")
    @click.option("--grace", default="24h", show_default=True, callback=_duration, metavar="DURATION",
                  help="Leave debris younger than this (a backup may still be writing it).")
    @OUTPUT
    @pass_state
    def repo_gc(state: State, dry_run: bool, grace: float, output: str) -> None:
        """Remove debris: folders of interrupted or expired-while-read backups, stale leases, and (S3)
        incomplete multipart uploads."""
        from backupctl.cli.output import emit_json
        from backupctl.core.privileges import become_repository_owner
        from backupctl.services.gc import collect

        become_repository_owner(state.config())  # a root-owned folder would refuse its user's next run
        with state.repository() as repo:
            items = collect(repo, grace, dry_run)
        rows = [item.to_json(dry_run) for item in items]
        if output == "json":
            emit_json(rows)
        else:
            _gc_view(rows, dry_run)

    @cli.command()
    @click.argument("backup_id")
    @click.option("--reason", required=True, help="Why the backup must be kept (shown by list and expire).")
    @pass_state
    def pin(state: State, backup_id: str, reason: str) -> None:
        """Keep BACKUP_ID whatever the retention policy says, until `unpin`."""
        from backupctl.repo import pins

        with _open_for(state, backup_id) as (repo, manifest):
            record = pins.pin(repo, manifest, reason)
        click.echo(f"pinned {backup_id} of {manifest.source}: {record.describe()}")

    @cli.command()
    @click.argument("backup_id")
    @pass_state
    def unpin(state: State, backup_id: str) -> None:
        """Let the retention policy decide about BACKUP_ID again."""
        from backupctl.repo import pins

        with _open_for(state, backup_id) as (repo, manifest):
            removed = pins.unpin(repo.storage, manifest)
        click.echo(f"unpinned {backup_id}" if removed else f"{backup_id} was not pinned")


@contextlib.contextmanager
def _open_for(state: Any, backup_id: str) -> Iterator[tuple[Any, Any]]:
    """The repository and one backup's manifest, acting as the repository's user (see ``privileges``)."""
    from backupctl.core.privileges import become_repository_owner

    config = state.config()
    with state.repository() as repo:
        manifest = repo.catalog.find(backup_id)
        if manifest.source in config.sources:
            become_repository_owner(config, manifest.source)
        yield repo, manifest


def _expire_view(rows: list[dict[str, Any]], dry_run: bool) -> None:
    from backupctl.cli.output import console, human_size, table

    backups = [r for r in rows if r["item"] == "backup"]
    wal = [r for r in rows if r["item"] == "wal"]
    result = [] if dry_run else ["RESULT"]
    if backups:
        table(None, ["ID", "TYPE", "FINISHED", "ACTION", "RULES", *result], [
            [r["id"], r["type"], r["finished_at"], r["action"], "; ".join(r["rules"]),
             *([] if dry_run else [r["result"]])]
            for r in backups
        ])
    if wal:
        table("WAL", ["TIMELINE", "FIRST", "LAST", "SEGMENTS", "STORED", "ACTION", "WHY", *result], [
            [str(r["timeline"]) if r["stream"] == r["source"] else f"{r['stream']}: {r['timeline']}",
             r["first"], r["last"], str(r["segments"]), human_size(r["stored_size"]),
             r["action"], r["rules"][0], *([] if dry_run else [r["result"]])]
            for r in wal
        ])
    gone = [r for r in backups if r["action"] == "remove"]
    gone_wal = [r for r in wal if r["action"] == "remove"]
    verb = "would remove" if dry_run else "removed"
    console().print(f"{verb} {len(gone)} of {len(backups)} backups ({human_size(sum(r['stored_size'] for r in gone))})"
                    f" and {sum(r['segments'] for r in gone_wal)} WAL segments "
                    f"({human_size(sum(r['stored_size'] for r in gone_wal))})")


def _gc_view(rows: list[dict[str, Any]], dry_run: bool) -> None:
    from backupctl.cli.output import console, human_size, table

    if not rows:
        console().print("nothing to collect")
        return
    table(None, ["ID", "ITEM", "SOURCE", "ACTION", "OBJECTS", "STORED", "WHY", "RESULT"], [
        [r["id"], r["item"], r["source"] or "-", r["action"], str(r["objects"]), human_size(r["stored_size"]),
         r["rules"][0], r["result"]]
        for r in rows
    ])
    gone = [r for r in rows if r["action"] == "remove"]
    verb = "would remove" if dry_run else "removed"
    console().print(f"{verb} {sum(r['objects'] for r in gone)} objects "
                    f"({human_size(sum(r['stored_size'] for r in gone))})")
