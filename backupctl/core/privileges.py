"""One OS user per PostgreSQL source: started as root, backupctl becomes the owner of ``pgdata``.

Files that backupctl writes for a PostgreSQL source (a local repository's objects, spool files, a
restored data directory) must belong to the server's user, because archive_command and restore_command
run as that user and must be able to read and write them later. Any other command that writes to the
repository (verify records, key rotation) acts as the same user (``become_repository_owner``).
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from backupctl.core.config import Config, PostgresSource
from backupctl.core.errors import ConfigError
from backupctl.core.log import get_logger

log = get_logger(__name__)
_switched: str | None = None  # why this process, started as root, now runs as another user


def effective_user() -> str:
    """The name of the user this process acts as (``uid N`` when it has none): errors about files name it."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def switched_from_root() -> str | None:
    """Why root became the effective user, for errors: "started as root, backupctl acts as the owner of pgdata D"."""
    return _switched


def become_server_user(source: PostgresSource) -> None:
    """When root and the source's pgdata belongs to another user, switch to that user for good."""
    if os.geteuid() != 0 or source.pgdata is None:
        return
    try:
        owner_uid = Path(source.pgdata).stat().st_uid
    except FileNotFoundError:
        return  # not on this host (a restore elsewhere): stay root, hand files over afterwards
    _become(owner_uid, f"pgdata {source.pgdata}")


def become_repository_owner(config: Config, source: str | None = None) -> None:
    """When root, act as the user the repository belongs to before writing to it.

    That is the server's user of ``source`` or, failing that, of the first PostgreSQL source whose pgdata is
    on this host; with none, the owner of a local repository's directory. Objects and folders created as
    root there would refuse the next write by that user (archive_command, the scheduler's jobs).
    """
    if os.geteuid() != 0:
        return
    sources = list(config.sources.values())
    if source in config.sources:
        sources.insert(0, config.sources[source])
    for candidate in sources:
        if isinstance(candidate, PostgresSource) and candidate.pgdata and Path(candidate.pgdata).exists():
            become_server_user(candidate)
            if os.geteuid() != 0:
                return
    if config.repository.type == "local" and config.repository.path:
        try:
            owner_uid = Path(config.repository.path).stat().st_uid
        except FileNotFoundError:
            return
        _become(owner_uid, f"repository {config.repository.path}")


def _become(owner_uid: int, what: str) -> None:
    """Switch to ``owner_uid`` for good (root stays root); a uid without a user is refused in one line."""
    if owner_uid == 0:
        return
    try:
        owner = pwd.getpwuid(owner_uid)
    except KeyError as exc:
        raise ConfigError(f"{what} belongs to uid {owner_uid}, which has no user: run backupctl as its owner") \
            from exc
    os.initgroups(owner.pw_name, owner.pw_gid)
    os.setgid(owner.pw_gid)
    os.setuid(owner.pw_uid)
    os.environ["HOME"] = owner.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = owner.pw_name
    global _switched
    _switched = f"started as root, backupctl acts as the owner of {what}"
    log.debug("running as the owner", user=owner.pw_name, of=what)
