"""The postgresql.conf lines that archive a source: archive_command, restore_command and advice.

``backupctl pg-settings`` prints them, drills and restores write restore_command, and the tests run the
very commands. Each command runs the stdlib-only fast path (``backupctl.walpusher``, see
``backupctl.wal.agent``) with absolute paths and ``--config``, since the server runs it from its data
directory as its own OS user.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from backupctl.wal.agent.client import bootstrap

if TYPE_CHECKING:
    from backupctl.core.config import Config, PostgresSource


def invocation() -> list[str]:
    """How the server's user runs backupctl's WAL fast path: this interpreter, a three-statement bootstrap.

    ``-I`` keeps the data directory (the command's cwd) and PYTHON* variables out of the import path;
    ``-S`` skips ``site`` (the venv's .pth files: ~12 ms per call), which walpusher loads itself only
    when it must do the work in-process; the bootstrap puts backupctl's own directory on the path and
    imports walpusher as a module, so its compiled cache is used (run as a script, the file would be
    compiled on every call). A call the resident pusher answers at once then costs ~12 ms of CPU and
    ~14 ms of wall time with the shell (2 cores, 2026-12-05), of which ~7 ms is the interpreter's own start.
    The console script (``backupctl wal-push``) goes straight to the same code after the venv's ``site``:
    as cheap from a regular or ``editable_mode=compat`` install, ~20 ms more from setuptools' default
    editable install, whose import hook loads pathlib, re and urllib on every start.
    """
    return bootstrap()


def _command(config_path: str | Path, source_name: str, verb: str, *args: str, epoch: int = 1) -> str:
    config = str(Path(config_path).absolute())
    words = [*invocation(), "--config", config, verb, "--source", source_name]
    if epoch > 1:
        words += ["--epoch", str(epoch)]
    return " ".join([*(shlex.quote(w) for w in words), *args])


def archive_command(config_path: str | Path, source_name: str) -> str:
    """The exact archive_command for ``source_name`` (absolute paths, ``--config``)."""
    return _command(config_path, source_name, "wal-push", "%p")


def restore_command(config_path: str | Path, source_name: str, epoch: int = 1) -> str:
    """The exact restore_command for ``source_name`` (absolute paths, ``--config``).

    A cluster of a later history epoch (see ``epochs``) replays that epoch's WAL: ``--epoch N``; epoch 1's
    command is the one written before epochs existed, so restored clusters and standbys keep working.
    """
    return _command(config_path, source_name, "wal-fetch", "%f", "%p", epoch=epoch)


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("'", "''") + "'"


def _not_traversable(path: Path) -> Path | None:
    """The first directory on ``path`` that other users cannot enter (mode without o+x), if any."""
    for parent in [*reversed(path.parents)]:
        try:
            if not os.stat(parent).st_mode & 0o001:
                return parent
        except OSError:
            return parent
    return None


def pg_settings(config: Config, source: PostgresSource, epoch: int = 1) -> str:
    """The lines for postgresql.conf that archive ``source`` into the repository, with advice.

    ``epoch``: the history epoch whose WAL restore_command replays (the current one: the live server's).
    """
    archive = archive_command(config.file, source.name)
    restore = restore_command(config.file, source.name, epoch)
    lines = [
        f"# backupctl: continuous WAL archiving of source {source.name!r} into {_location(config)}",
        "# (wal_level and archive_mode take effect after a server restart; the commands after a reload)",
        "wal_level = replica                     # or logical; 'minimal' cannot be archived",
        "archive_mode = on",
        f"archive_command = {conf_quote(archive)}",
        "archive_timeout = 60s                   # advice: at most a minute of WAL waits in a quiet hour",
        "# recovery and standbys (ignored by a running primary)"
        + (f"; history epoch {epoch} (after pg_upgrade):" if epoch > 1 else ":"),
        f"restore_command = {conf_quote(restore)}",
    ]
    blocked = _not_traversable(Path(sys.executable))
    if blocked is not None:
        lines.append(f"# WARNING: {blocked} is not traversable by other users: the server's OS user cannot run "
                     f"{sys.executable}; install backupctl in a world-readable venv (/usr/bin/python3 -m venv)")
    return "\n".join(lines) + "\n"


def _location(config: Config) -> str:
    repo = config.repository
    if repo.type == "s3":
        return f"s3://{repo.bucket}/{repo.prefix}".rstrip("/")
    return str(repo.path)
