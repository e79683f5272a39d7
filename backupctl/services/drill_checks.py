"""The checks a drill runs on a restored copy: each returns a one-line verdict or raises ``CheckFailed``.

They read the scratch copy only, so they may scan it whole (counting rows exactly, pg_amcheck): the point
is to prove the copy is a working database holding what the backup recorded, never to spare it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from backupctl.core.config import DrillAssertion
from backupctl.core.errors import BackupctlError
from backupctl.engines import pg_contents, sqlite
from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.connection import ConnParams

MAX_LISTED = 5  # problems named in one verdict; the rest are counted

# Every ordinary table outside the system schemas, with its schema and name apart (a name may hold dots).
_RESTORED_TABLES_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
"""


class CheckFailed(BackupctlError):
    """A check found the restored copy wanting; the message is the check's detail."""


def _listing(problems: list[str]) -> str:
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return "; ".join(problems[:MAX_LISTED]) + more


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# --- PostgreSQL --------------------------------------------------------------------------------------


def connect_all(params: ConnParams, expected: list[str]) -> str:
    """Every database the backup recorded exists in the copy and accepts a connection."""
    problems = []
    for name in expected:
        try:
            with params.connect(name) as conn:
                conn.execute("SELECT 1")
        except (BackupctlError, psycopg.Error) as exc:
            problems.append(f"database {name}: {_one_line(exc)}")
    if problems:
        raise CheckFailed(_listing(problems))
    return f"connected to all {len(expected)} databases"


def amcheck(binaries: PgBinaries, params: ConnParams, databases: int, timeout: float) -> str:
    """pg_amcheck of every database: heap pages and B-tree indexes (amcheck is installed where missing).

    Run directly rather than through ``tools.run_tool``: pg_amcheck reports corruption on stdout, which is
    the detail a DBA needs, and exits 2 for corruption, 1 for any other failure. It must end within
    ``timeout`` seconds (what is left of the drill's), or it is killed and the check fails.
    """
    argv = [binaries.path("pg_amcheck"), "--all", "--install-missing", "--no-password",
            f"--maintenance-db={params.dbname}"]
    try:
        proc = subprocess.run(argv, env=params.env(), capture_output=True, text=True, check=False,
                              timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"pg_amcheck did not finish within the drill's time left ({timeout:.0f}s; "
                          "drill.timeout in the config)") from exc
    if proc.returncode == 0:
        return f"no corruption in {databases} databases (heap and B-tree indexes)"
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    errors = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode == 2 and lines:
        raise CheckFailed(f"pg_amcheck found corruption: {_listing(lines)}")
    raise CheckFailed(f"pg_amcheck failed (exit {proc.returncode}): {(errors or lines or ['no message'])[-1]}")


def _restored_tables(conn: Any) -> dict[str, tuple[str, str]]:
    return {pg_contents.table_key(schema, table): (schema, table)
            for schema, table in conn.execute(_RESTORED_TABLES_SQL).fetchall()}


def pg_row_counts(params: ConnParams, recorded: dict[str, dict[str, int | None]], exact: bool,
                  timeout: float) -> str:
    """Each recorded table's rows in the copy, against the manifest; each count must end within ``timeout``.

    ``exact``: a logical backup's counts, taken in the dump's own snapshot, must match to the row (counted
    as they were, children of inheritance included). Otherwise they are a physical backup's estimates,
    judged by ``pg_contents.judge`` on the table's own rows (``FROM ONLY``, as its statistics count them).
    """
    problems: list[str] = []
    tables = unestimated = 0
    for database, expected in sorted(recorded.items()):
        try:
            conn = params.connect(database)
        except BackupctlError as exc:
            problems.append(f"{database}: {len(expected)} tables not counted: {_one_line(exc)}")
            continue
        with conn:
            conn.execute(f"SET statement_timeout = {max(1, int(timeout * 1000))}")
            present = _restored_tables(conn)
            for key, count in sorted(expected.items()):
                tables += 1
                unestimated += count is None
                found = None
                if key in present:
                    query = sql.SQL("SELECT count(*) FROM {}{}.{}").format(
                        sql.SQL("" if exact else "ONLY "), *map(sql.Identifier, present[key]))
                    found = conn.execute(query).fetchone()[0]
                if exact:
                    why = "is missing" if found is None else (
                        None if found == count else f"has {found} rows, the manifest recorded {count}")
                else:
                    why = pg_contents.judge(count, found)
                if why:
                    problems.append(f"{database}: {key} {why}")
    if problems:
        raise CheckFailed(_listing(problems))
    where = f"{tables} tables in {len(recorded)} databases"
    if exact:
        return f"{where} hold exactly the rows the manifest recorded"
    without = f" ({unestimated} had no estimate)" if unestimated else ""
    return f"{where}: none missing, none lost most of its rows against the estimates at backup start{without}"


def pg_assertion(params: ConnParams, assertion: DrillAssertion, default_db: str, timeout: float) -> str:
    """A custom query, run read-only, that must return true."""
    database = assertion.database or default_db
    try:
        with params.connect(database) as conn:
            conn.execute(f"SET statement_timeout = {max(1, int(timeout * 1000))}")
            conn.execute("SET default_transaction_read_only = on")
            row = conn.execute(assertion.sql).fetchone()
    except (BackupctlError, psycopg.Error) as exc:
        raise CheckFailed(f"in database {database}: {_one_line(exc)}") from exc
    return _verdict(row, f"in database {database}")


def _verdict(row: Any, where: str) -> str:
    if row is None:
        raise CheckFailed(f"returned no row {where} (it must return true)")
    if row[0] is True or (not isinstance(row[0], bool) and row[0] == 1):
        return f"returned true {where}"
    raise CheckFailed(f"returned {row[0]!r} {where} (it must return true)")


# --- SQLite ------------------------------------------------------------------------------------------


def _read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True))


def sqlite_integrity(path: Path) -> str:
    with _read_only(path) as conn:
        problems = sqlite.integrity_check(conn)
    if problems:
        raise CheckFailed(f"PRAGMA integrity_check: {_listing(problems)}")
    return "PRAGMA integrity_check: ok"


def sqlite_row_counts(path: Path, recorded: dict[str, int]) -> str:
    """Exact counts: the backup counted them in the very copy it stored."""
    with _read_only(path) as conn:
        found = sqlite.describe(conn)["tables"]
    problems = [f"{table} is missing" if table not in found else
                f"{table} has {found[table]} rows, the manifest recorded {count}"
                for table, count in sorted(recorded.items()) if found.get(table) != count]
    if problems:
        raise CheckFailed(_listing(problems))
    return f"{len(recorded)} tables hold exactly the rows the manifest recorded"


def sqlite_assertion(path: Path, assertion: DrillAssertion) -> str:
    try:
        with _read_only(path) as conn:
            row = conn.execute(assertion.sql).fetchone()
    except sqlite3.Error as exc:
        raise CheckFailed(_one_line(exc)) from exc
    return _verdict(row, "in the restored database")
