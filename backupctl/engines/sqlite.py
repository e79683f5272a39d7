"""SQLite: a consistent online copy with the backup API, described and checked before it is uploaded.

The backup API writes a file, so this is the one engine that stages a temp copy. The copy is taken in a
single step (``pages=-1``): SQLite holds one read transaction for the whole copy, so a busy writer can
neither corrupt it nor make it restart forever (in WAL mode writers carry on meanwhile; in rollback
mode they wait for the copy). The temp copy is removed on every exit path, signals included.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupctl.core.config import SourceConfig, SqliteSource
from backupctl.core.errors import BackupctlError, ConfigError, IntegrityError
from backupctl.core.signals import shielded
from backupctl.engines.base import BackupOptions, Engine, StartRun
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest
from backupctl.repo.pipeline import iter_reader
from backupctl.repo.repository import Repository

HEADER = b"SQLite format 3\x00"
BUSY_TIMEOUT_SECONDS = 60.0
SPACE_MARGIN = 1.10


@dataclass
class Snapshot:
    """A consistent copy of the database and what it contains."""

    path: Path
    details: dict[str, Any]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_is_sqlite(path: Path) -> None:
    """Fail with a clear line for a missing file or one that is not a SQLite database."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(HEADER))
    except FileNotFoundError as exc:
        raise BackupctlError(f"SQLite database {path} does not exist: check the source's path") from exc
    except IsADirectoryError as exc:
        raise BackupctlError(f"{path} is a directory, not a SQLite database file") from exc
    except PermissionError as exc:
        raise BackupctlError(f"SQLite database {path} is not readable by this user") from exc
    if header != HEADER:
        raise BackupctlError(f"{path} is not a SQLite 3 database (its header does not match)")


def ensure_free_space(directory: Path, needed: int, purpose: str) -> None:
    """Refuse to start a copy that cannot fit, rather than fill a disk halfway."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise BackupctlError(
            f"not enough free space in {directory} for {purpose}: need {needed / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB free (set tmp_dir to a larger filesystem or free space)"
        )


def describe(connection: sqlite3.Connection) -> dict[str, Any]:
    """What a restore or drill can check the data against: pages, tables, row counts and schema."""
    schema_rows = connection.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
    ).fetchall()
    schema_sql = ";\n".join(row[3] for row in schema_rows) + (";\n" if schema_rows else "")
    tables = [
        row[1]
        for row in schema_rows
        if row[0] == "table" and not row[3].upper().startswith("CREATE VIRTUAL")
    ]
    return {
        "page_size": connection.execute("PRAGMA page_size").fetchone()[0],
        "page_count": connection.execute("PRAGMA page_count").fetchone()[0],
        "journal_mode": connection.execute("PRAGMA journal_mode").fetchone()[0],
        "user_version": connection.execute("PRAGMA user_version").fetchone()[0],
        "sqlite_version": sqlite3.sqlite_version,
        "tables": {
            name: connection.execute(f"SELECT count(*) FROM {_quote(name)}").fetchone()[0]
            for name in tables
        },
        "schema_sql": schema_sql,
        "schema_sha256": hashlib.sha256(schema_sql.encode()).hexdigest(),
    }


def integrity_check(connection: sqlite3.Connection) -> list[str]:
    """``PRAGMA integrity_check``: an empty list means the database is sound."""
    rows = [row[0] for row in connection.execute("PRAGMA integrity_check").fetchall()]
    return [] if rows == ["ok"] else rows


@contextlib.contextmanager
def snapshot(source: SqliteSource, tmp_root: Path) -> Iterator[Snapshot]:
    """Yield a checked, consistent copy of the source database; the copy is always removed."""
    path = Path(source.path)
    check_is_sqlite(path)
    wal = Path(f"{path}-wal")
    size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    tmp_root.mkdir(parents=True, exist_ok=True)
    ensure_free_space(tmp_root, int(size * SPACE_MARGIN) + 1024**2, f"a copy of {path}")
    workdir = Path(tempfile.mkdtemp(prefix="backupctl-sqlite-", dir=tmp_root))
    try:
        copy = workdir / "copy.sqlite3"
        _online_copy(path, copy)
        with contextlib.closing(sqlite3.connect(copy)) as connection:
            problems = integrity_check(connection)
            if problems:
                raise IntegrityError(
                    f"source database {path} fails PRAGMA integrity_check: {'; '.join(problems[:3])}"
                )
            details = describe(connection)
        details["file_mode"] = stat.S_IMODE(path.stat().st_mode)
        details["source_path"] = str(path)
        yield Snapshot(copy, details)
    finally:
        with shielded():
            shutil.rmtree(workdir, ignore_errors=True)


def _online_copy(path: Path, copy: Path) -> None:
    """Copy with the backup API in one step, read-only on the source."""
    try:
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS)
    except sqlite3.Error as exc:
        raise BackupctlError(f"cannot open SQLite database {path}: {exc}") from exc
    try:
        with contextlib.closing(sqlite3.connect(copy)) as target:
            source.backup(target, pages=-1)
    except sqlite3.Error as exc:
        raise BackupctlError(f"online backup of {path} failed: {exc}") from exc
    finally:
        source.close()


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    return value


def export_rows(database: Path, table: str) -> Iterator[bytes]:
    """One table as JSON lines (BLOBs as {"$base64": ...}), read from the consistent copy."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        cursor = connection.execute(f"SELECT * FROM {_quote(table)}")
        columns = [d[0] for d in cursor.description]
        while rows := cursor.fetchmany(1000):
            yield "".join(
                json.dumps(dict(zip(columns, map(_json_value, row), strict=True))) + "\n" for row in rows
            ).encode()


def check_restored(path: Path, expected: dict[str, Any]) -> None:
    """A restored file must pass integrity_check and hold the row counts recorded at backup time."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        problems = integrity_check(connection)
        if problems:
            raise IntegrityError(f"restored database fails integrity_check: {'; '.join(problems[:3])}")
        found = describe(connection)
    if expected and found["tables"] != expected.get("tables"):
        raise IntegrityError(
            f"restored database's row counts {found['tables']} differ from the manifest's "
            f"{expected['tables']}"
        )


def drop_sidecars(path: Path) -> None:
    """Remove a replaced database's -wal/-shm: SQLite would replay a stale WAL onto the new file."""
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


class SqliteEngine(Engine):
    """A SQLite database file: one consistent copy per backup, optionally with a JSON export of its tables."""

    name = "sqlite"
    source_kind = "sqlite"
    backup_types = ("sqlite",)
    drill_checks = ("restore", "integrity_check", "row_counts")
    schedule_jobs = ("backup",)

    def check_options(self, source: SourceConfig, options: BackupOptions) -> None:
        if options.databases:
            raise ConfigError("--database applies to PostgreSQL logical backups")

    def backup(self, repo: Repository, source: SqliteSource, backup_type: str, options: BackupOptions,
               start: StartRun) -> Manifest:
        """Copy, check, upload and catalog one SQLite database."""
        repo.register_source(source.name, {"kind": "sqlite"})
        run = start(backup_type)
        tmp_root = Path(source.tmp_dir) if source.tmp_dir else Path(tempfile.gettempdir())
        with run.cleanup_on_failure(), snapshot(source, tmp_root) as snap:
            run.expect(snap.path.stat().st_size)
            with open(snap.path, "rb") as data:
                run.store(layout.SQLITE_DATABASE, data)
            details = snap.details
            if options.export_json:
                # Object names are numbered, never named after tables: names are data, and may be secret.
                names = {table: layout.sqlite_table_export(i) for i, table in enumerate(sorted(details["tables"]))}
                run.store(layout.SQLITE_EXPORT_SCHEMA, io.BytesIO(details["schema_sql"].encode()))
                for table, name in names.items():
                    run.store(name, iter_reader(export_rows(snap.path, table)))
                details["export"] = {"schema": layout.SQLITE_EXPORT_SCHEMA, "tables": names}
            extra = {"page_size": details["page_size"], "page_count": details["page_count"]}
            return run.publish("sqlite", details, extra, options)
