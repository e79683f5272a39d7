"""Which files of a running cluster's data directory belong in a base backup, in the server's own words.

A backup that copies the data directory itself (``engines.pg_filecopy``) must hold exactly what
``pg_basebackup`` would: the server's rules (src/backend/backup/basebackup.c) are restated here. Left out:
the contents of directories the server empties or rebuilds at start (``pg_stat_tmp``, ``pg_replslot``,
``pg_dynshmem``, ``pg_notify``, ``pg_serial``, ``pg_snapshots``, ``pg_subtrans``; the directories themselves
are kept for their permissions), WAL (``pg_wal`` is kept empty with ``archive_status``: a restore takes WAL
from the archive), the relation cache init files, temporary files and temporary relations, every fork but
the init fork of an unlogged relation, a lingering ``backup_label``/``tablespace_map``/``backup_manifest``,
``postmaster.pid``/``.opts``, and special files. ``pg_tblspc`` is kept empty: the backup's tablespace_map
names the tablespaces, each of which is walked as an archive of its own. ``global/pg_control`` comes last,
as the server sends it.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from backupctl.core.errors import BackupctlError
from backupctl.postgres.tarstream import DIRECTORY, FILE

EMPTIED_DIRECTORIES = frozenset({"pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial",
                                 "pg_snapshots", "pg_subtrans"})
EXCLUDED_FILES = frozenset({"postgresql.auto.conf.tmp", "current_logfiles.tmp", "backup_label", "tablespace_map",
                            "backup_manifest", "postmaster.pid", "postmaster.opts"})
EXCLUDED_PREFIXES = ("pg_internal.init", "pgsql_tmp")
CONTROL_FILE = "global/pg_control"
# A relation file: relfilenode, optional fork, optional segment number ("16384", "16384_vm", "16384.2").
_RELATION = re.compile(r"(\d+)(?:_(fsm|vm|init))?(?:\.\d+)?")
_TEMP_RELATION = re.compile(r"t\d+_\d+(?:_(?:fsm|vm|init))?(?:\.\d+)?")


@dataclass(frozen=True)
class Entry:
    """One member of the backup: its name in the archive and where to read it."""

    name: bytes  # relative to the archive's root, no trailing slash
    path: bytes  # absolute
    kind: bytes  # FILE or DIRECTORY
    size: int
    mode: int
    mtime: int


def unreadable(path: bytes, exc: OSError) -> BackupctlError:
    """The one-line error for a file of the data directory that cannot be read, naming who tried."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    return BackupctlError(f"cannot read {os.fsdecode(path)} as OS user {user}: {exc.strerror}; the backup is not "
                          "taken: give it to the server's OS user or remove it (the server cannot back it up either)")


def is_excluded_file(name: str) -> bool:
    """A file the server leaves out of every base backup, wherever it is."""
    return name in EXCLUDED_FILES or name.startswith(EXCLUDED_PREFIXES)


def skipped_relation_files(names: list[str]) -> set[str]:
    """The files of a database directory a backup leaves out: temporary relations, and the forks other than
    the init fork of unlogged relations (those with an ``_init`` fork), which recovery resets from it."""
    unlogged = {match.group(1) for name in names if (match := _RELATION.fullmatch(name)) and match.group(2) == "init"}

    def unlogged_data(name: str) -> bool:
        match = _RELATION.fullmatch(name)
        return match is not None and match.group(1) in unlogged and match.group(2) != "init"

    return {name for name in names if _TEMP_RELATION.fullmatch(name) or unlogged_data(name)}


def _listing(directory: str) -> list[str]:
    """The names in ``directory``, sorted; none when it vanished since its parent was listed."""
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise unreadable(directory.encode(), exc) from exc


def _entry(name: bytes, path: bytes, st: os.stat_result, kind: bytes) -> Entry:
    return Entry(name, path, kind, st.st_size if kind == FILE else 0, stat.S_IMODE(st.st_mode), int(st.st_mtime))


def walk(root: str, prefix: str = "", tablespace_roots: frozenset[str] = frozenset(),
         major: int = 15) -> Iterator[Entry]:
    """The members of one archive, directories before what they hold.

    ``root`` is the data directory (``prefix`` empty) or a tablespace's version directory (``prefix`` its
    name, e.g. ``PG_15_202209061``: the archive then starts with that directory). Directories whose real
    path is in ``tablespace_roots`` (a tablespace made inside the data directory) are left to their own
    archive. Files that vanish while the walk runs are skipped, as the server skips them.
    """
    in_data_directory = not prefix
    if prefix:
        yield _entry(prefix.encode(), root.encode(), os.stat(root), DIRECTORY)
    control: Entry | None = None
    stack = [(root, prefix)]
    while stack:
        directory, name = stack.pop()
        names = _listing(directory)
        top, _, inner = name.partition("/")
        in_database = inner.isdigit() and top == (prefix or "base")  # base/<oid>, or <version dir>/<oid>
        skipped = skipped_relation_files(names) if in_database else set()
        subdirectories = []
        for child in names:
            if is_excluded_file(child) or child in skipped:
                continue
            path = os.path.join(directory, child)
            member = f"{name}/{child}" if name else child
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise unreadable(path.encode(), exc) from exc
            if in_data_directory and member == "pg_wal":
                yield _entry(b"pg_wal", path.encode(), os.stat(path), DIRECTORY)
                for inside in ("archive_status", "summaries") if major >= 17 else ("archive_status",):
                    yield _entry(f"pg_wal/{inside}".encode(), path.encode(), os.stat(path), DIRECTORY)
            elif child in EMPTIED_DIRECTORIES or (in_data_directory and member == "pg_tblspc"):
                yield _entry(member.encode(), path.encode(), st, DIRECTORY)
            elif stat.S_ISDIR(st.st_mode):
                if os.path.realpath(path) in tablespace_roots:
                    continue
                yield _entry(member.encode(), path.encode(), st, DIRECTORY)
                subdirectories.append((path, member))
            elif stat.S_ISREG(st.st_mode):
                entry = _entry(member.encode(), path.encode(), st, FILE)
                if in_data_directory and member == CONTROL_FILE:
                    control = entry
                else:
                    yield entry
        stack.extend(reversed(subdirectories))
    if control is not None:
        yield control
