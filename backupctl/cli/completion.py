"""Shell completion of the values only the config and the repository know: source names and backup ids.

click completes commands and options itself (``_BACKUPCTL_COMPLETE=bash_source backupctl``, README: Shell
completion); these callbacks add the dynamic values. They run inside the user's shell on every <Tab>, so
they are silent (any failure, an unreadable config or an unreachable repository, completes nothing: a
traceback or a log line would be printed into the command line being typed) and cheap (backup ids come from
one listing of manifests, never a GET per backup). The ``--config`` already typed on the line is honoured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

if TYPE_CHECKING:
    from backupctl.core.config import Config


def _config(ctx: click.Context) -> Config:
    from backupctl.core.config import config_path, load_config  # start-up cost: only when completing

    return load_config(config_path(ctx.find_root().params.get("config_file")))


def complete_sources(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The config's source names that start with what is typed (with their kind as help, for zsh and fish)."""
    try:
        sources = _config(ctx).sources
    except Exception:  # completion never fails aloud, see the module docstring
        return []
    return [CompletionItem(name, help=source.kind) for name, source in sorted(sources.items())
            if name.startswith(incomplete)]


def complete_backup_ids(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The repository's backup ids that start with what is typed, newest first; only SOURCE's when the
    command already names one (``restore SOURCE --backup <Tab>``, ``drill run SOURCE --backup <Tab>``)."""
    try:
        from backupctl.repo.catalog import Catalog  # start-up cost: only when completing
        from backupctl.storage import open_storage

        config = _config(ctx)
        # restore's first argument may be a source; and while an option's value is being completed, click
        # leaves the arguments before it unparsed in ctx.args.
        named = [ctx.params.get("source"), ctx.params.get("backup_id"), *ctx.args]
        source = next((name for name in named if name in config.sources), None)
        storage = open_storage(config.repository)
        try:
            ids = Catalog(storage).ids(source)
        finally:
            storage.close()
    except Exception:  # completion never fails aloud, see the module docstring
        return []
    return [CompletionItem(backup_id) for backup_id in ids if backup_id.startswith(incomplete)]


def complete_backup_ids_or_sources(ctx: click.Context, param: click.Parameter,
                                   incomplete: str) -> list[CompletionItem]:
    """``restore BACKUP_ID|SOURCE``: the sources first (a point-in-time restore), then the backup ids."""
    return complete_sources(ctx, param, incomplete) + complete_backup_ids(ctx, param, incomplete)
