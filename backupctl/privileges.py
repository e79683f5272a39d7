"""One OS user per PostgreSQL source: started as root, backupctl becomes the owner of ``pgdata``.

Files that backupctl writes for a PostgreSQL source (a local repository's objects, spool files, a
restored data directory) must belong to the server's user, because archive_command and restore_command
run as that user and must be able to read and write them later.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from backupctl.config import PostgresSource
from backupctl.errors import ConfigError
from backupctl.log import get_logger

log = get_logger(__name__)


def become_server_user(source: PostgresSource) -> None:
    """When root and the source's pgdata belongs to another user, switch to that user for good."""
    if os.geteuid() != 0 or source.pgdata is None:
        return
    try:
        owner_uid = Path(source.pgdata).stat().st_uid
    except FileNotFoundError:
        return  # not on this host (a restore elsewhere): stay root, hand files over afterwards
    if owner_uid == 0:
        return
    try:
        owner = pwd.getpwuid(owner_uid)
    except KeyError:
        raise ConfigError(
            f"pgdata {source.pgdata} belongs to uid {owner_uid}, which has no user: run backupctl as the "
            "server's OS user"
        ) from None
    os.initgroups(owner.pw_name, owner.pw_gid)
    os.setgid(owner.pw_gid)
    os.setuid(owner.pw_uid)
    os.environ["HOME"] = owner.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = owner.pw_name
    log.debug("running as the server's OS user", user=owner.pw_name, source=source.name)
