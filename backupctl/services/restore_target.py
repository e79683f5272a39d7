"""Where a physical restore may write, and whether the restored cluster archives.

``--force`` empties a directory and ``--delta`` removes every file the backup does not have, so both act
only on a PostgreSQL data directory (PG_VERSION and ``global/``) or on what an interrupted backupctl
restore left (its marker, ``pgmanifest.RESTORE_MARKER``); never on ``/``, a home directory, or a directory
that holds another cluster deeper down. pgBackRest draws the same line (PG_VERSION or its own manifest).

A restored copy is not production: unless it is restored into the source's own ``pgdata`` (the real
disaster recovery) or the user asks with ``--archive``, it must not push its new timeline into the
source's archive, so ``archive_mode = off`` is written after the backup's own settings.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from backupctl.core.errors import ConfigError
from backupctl.postgres.backup_manifest import RESTORE_MARKER


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _home_directories() -> set[str]:
    homes = {os.path.realpath(entry.pw_dir) for entry in pwd.getpwall() if entry.pw_dir}
    if os.environ.get("HOME"):
        homes.add(os.path.realpath(os.environ["HOME"]))
    return homes


def is_data_directory(path: Path) -> bool:
    """PG_VERSION holding a major version and a ``global`` directory: what initdb and a restore leave."""
    try:
        version = (path / "PG_VERSION").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return version.split(".")[0].isdigit() and (path / "global").is_dir()


def nested_cluster(path: Path) -> Path | None:
    """A data directory below ``path`` (a subdirectory with its own ``global/pg_control``), if any.

    PG_VERSION is no sign of one: every database directory ``base/<oid>`` of a real cluster has its own.
    Symlinks are not followed (tablespaces and a ``pg_wal`` on another disk are the cluster's own); a
    directory that cannot be read raises, as nobody can tell what it holds.
    """

    def unreadable(exc: OSError) -> None:
        raise exc

    for directory, dirnames, _ in os.walk(path, onerror=unreadable):
        if directory != str(path) and "global" in dirnames and os.path.isfile(
                os.path.join(directory, "global", "pg_control")):
            return Path(directory)
    return None


def check_target(pgdata: Path, force: bool, delta: bool) -> bool:
    """Refuse a target a restore must not write to, with one line that says why; True when it holds files.

    Without --force or --delta a non-empty directory is refused; with them only a data directory (or a
    restore's leftovers) that is not ``/``, not a home directory and holds no other cluster is accepted.
    """
    try:
        return _check_target(pgdata, force, delta)
    except OSError as exc:  # a directory on the way the restoring user may not enter or read
        raise ConfigError(f"--pgdata {pgdata}: user {_user()} cannot read {exc.filename or pgdata} "
                          f"({exc.strerror}): pick a directory {_user()} can use") from exc


def _check_target(pgdata: Path, force: bool, delta: bool) -> bool:
    if pgdata.is_symlink() and not pgdata.exists():
        raise ConfigError(f"--pgdata {pgdata} is a dangling symbolic link: point it at a directory or pick another")
    if pgdata.exists() and not pgdata.is_dir():
        raise ConfigError(f"--pgdata {pgdata} is a file, not a directory: give the data directory to restore into")
    if not pgdata.exists():
        parent = pgdata.parent
        if not parent.is_dir():
            raise ConfigError(f"--pgdata {pgdata}: its parent directory {parent} does not exist: create it (owned "
                              "by the server's OS user) or fix the path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"--pgdata {pgdata}: user {_user()} cannot create it in {parent} (permission "
                              f"denied): create {pgdata} owned by {_user()}, or make {parent} writable for it")
        return False
    option = "--delta" if delta else "--force"
    real = os.path.realpath(pgdata)
    if (force or delta) and real == "/":
        raise ConfigError(f"{option} refuses to restore into /: give the data directory itself")
    if (force or delta) and real in _home_directories():
        raise ConfigError(f"{option} refuses to restore into the home directory {pgdata}: give a data directory")
    if not os.access(pgdata, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"--pgdata {pgdata}: user {_user()} cannot read and write it (permission denied): "
                          f"`chown {_user()} {pgdata}` or pick a directory {_user()} owns")
    if not any(pgdata.iterdir()):
        return False
    if not (force or delta):
        raise ConfigError(f"{pgdata} is not empty: pass --force to replace its contents, or --delta to reuse the "
                          "files that match the backup")
    if not is_data_directory(pgdata) and not (pgdata / RESTORE_MARKER).exists():
        raise ConfigError(f"{option} refused: {pgdata} is not a PostgreSQL data directory (no PG_VERSION and "
                          f"global/, no {RESTORE_MARKER} of an interrupted restore), so its files stay: restore "
                          "into an empty or new directory")
    other = nested_cluster(pgdata)
    if other is not None:
        raise ConfigError(f"{option} refused: {pgdata} holds another PostgreSQL cluster in {other}: move it out "
                          "or restore elsewhere")
    return True


def check_tablespace_target(location: Path, oid: str) -> None:
    """``--delta`` over a tablespace directory removes whatever the backup does not have there, so it acts only
    on what a tablespace holds: nothing, or PostgreSQL's ``PG_<major>_<catalog version>`` directories. Anything
    else (someone's files, another cluster's tablespace under another name) is refused with one line."""
    if not location.exists():
        return
    real = os.path.realpath(location)
    if real == "/" or real in _home_directories():
        raise ConfigError(f"--delta refuses to restore tablespace {oid} into {location}: pass --tablespace {oid}=DIR "
                          "with the tablespace's own directory")
    try:
        foreign = sorted(entry.name for entry in location.iterdir()
                         if not (entry.name.startswith("PG_") and entry.is_dir() and not entry.is_symlink()))
    except OSError as exc:
        raise ConfigError(f"tablespace {oid}: user {_user()} cannot read {location} ({exc.strerror}): pick a "
                          f"directory {_user()} can use (--tablespace {oid}=DIR)") from exc
    if foreign:
        raise ConfigError(f"--delta refused: tablespace directory {location} holds {', '.join(foreign[:3])}"
                          f"{' ...' if len(foreign) > 3 else ''}, which no tablespace holds, so its files stay: "
                          f"pass --tablespace {oid}=DIR with an empty or new directory")


@dataclass(frozen=True)
class Archiving:
    """Whether the restored cluster archives WAL, and why (shown in the restore's output)."""

    enabled: bool
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"state": "on" if self.enabled else "off", "reason": self.reason}


def archiving_rule(pgdata: Path, source_pgdata: str | None, source: str, asked: bool) -> Archiving:
    """On for a restore into the source's own pgdata (compared as real paths) or with --archive; else off."""
    if source_pgdata and os.path.realpath(pgdata) == os.path.realpath(source_pgdata):
        return Archiving(True, f"restored into {source}'s own pgdata: the server archives into the repository as "
                               "production did (archive settings from the backup)")
    if asked:
        return Archiving(True, f"--archive: the copy keeps the backup's archive settings and archives its WAL "
                               f"(and a new timeline after promotion) into {source}")
    return Archiving(False, f"a copy beside production: archive_mode = off written, so it never archives into "
                            f"{source}; pass --archive to keep the backup's archive settings")
