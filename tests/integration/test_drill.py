"""Restore-and-verify drills through the real CLI: real SQLite, real PostgreSQL 15 (and 18) servers.

Each good backup must pass with every check named; each kind of damage must fail the drill with its
reason named; the scratch copy must be gone afterwards, whatever happened (a failing check, SIGTERM).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backupctl.demo import make_sample_sqlite
from backupctl.postgres.binaries import PgBinaries
from backupctl.repo.catalog import parse_manifest
from tests.support.backends import Backend, make_backend
from tests.support.cli import CliRunner, backup_id, cli_env
from tests.support.config import make_config, write_toml
from tests.support.pg_fixtures import PgDatabase
from tests.support.pg_site import Site

PG15 = pytest.mark.parametrize("pg_binaries", [15], indirect=True, ids=["pg15"])


def assertions_toml(source: str, tmp_dir: Path, *assertions: tuple[str, str, str | None]) -> str:
    """A [sources.X.drill] table with a scratch directory the test can watch, and custom assertions."""
    text = f'\n[sources.{source}.drill]\ntmp_dir = "{tmp_dir}"\n'
    for name, sql, database in assertions:
        text += f'\n[[sources.{source}.drill.assertions]]\nname = "{name}"\nsql = "{sql}"\n'
        if database:
            text += f'database = "{database}"\n'
    return text


def drill(cli: CliRunner, config: Path, source: str, *args: str) -> tuple[Any, dict[str, Any]]:
    result = cli(config, "drill", "run", source, *args, "-o", "json")
    return result, json.loads(result.stdout)


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in result["checks"]}


def detail(result: dict[str, Any], name: str) -> str:
    return next(c["detail"] for c in result["checks"] if c["name"] == name)


def assert_no_scratch_left(tmp_dir: Path) -> None:
    """The scratch directory is removed and no server runs on anything below it."""
    assert not tmp_dir.exists() or list(tmp_dir.iterdir()) == []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            assert str(tmp_dir) not in cmdline, f"process {proc.name} still runs on the scratch copy: {cmdline}"


def rewrite_details(backend: Backend, source: str, bid: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change what a manifest recorded (re-checksummed, so it reads as genuine): the data no longer matches."""
    storage = backend.storage()
    key = f"{source}/backups/{bid}/manifest.json"
    manifest = parse_manifest(storage.get_bytes(key), key)
    assert manifest.details is not None
    change(manifest.details)
    storage.put(key, json.dumps(manifest.to_document(), indent=1, sort_keys=True).encode())


def corrupt(path: Path) -> None:
    """Flip bytes in the middle of a stored object, as bit rot or a bad disk would."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


# --- SQLite ----------------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_site(tmp_path: Path, cli: CliRunner) -> tuple[Path, Backend, Path, str]:
    backend = make_backend("local", tmp_path, None)  # type: ignore[arg-type]
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=200)
    config = make_config(tmp_path, backend, cli=cli)
    scratch = tmp_path / "drills"
    with open(config, "a") as handle:
        handle.write(assertions_toml("devdb", scratch, ("has customers", "SELECT count(*) > 100 FROM customers",
                                                        None)))
    assert cli(config, "init").code == 0
    return config, backend, scratch, backup_id(cli(config, "backup", "devdb", "-o", "json"))


def test_sqlite_drill_passes_and_is_listed(sqlite_site: tuple[Path, Backend, Path, str], cli: CliRunner) -> None:
    config, backend, scratch, bid = sqlite_site
    run, result = drill(cli, config, "devdb")
    assert run.code == 0, run.stderr
    assert result["status"] == "passed" and result["backup_id"] == bid and result["error"] is None
    assert statuses(result) == {"restore": "passed", "integrity_check": "passed", "row_counts": "passed",
                                "assertion: has customers": "passed"}
    assert "4 tables hold exactly the rows" in detail(result, "row_counts")
    assert result["rto_seconds"] > 0 and result["rto_parts"]["download"] > 0
    assert_no_scratch_left(scratch)

    stored = json.loads(backend.storage().get_bytes(f"devdb/drills/{result['id']}.json"))
    assert stored["status"] == "passed" and stored["checks"] == result["checks"]
    listed = json.loads(cli(config, "drill", "list", "-o", "json").stdout)
    assert [d["id"] for d in listed] == [result["id"]]
    shown = json.loads(cli(config, "drill", "show", result["id"], "-o", "json").stdout)
    assert shown["checks"] == result["checks"]
    table = cli(config, "drill", "list")
    assert table.code == 0 and result["id"] in table.stdout and "passed" in table.stdout

    run, kept = drill(cli, config, "devdb", "--keep")
    assert run.code == 0 and kept["kept"] and Path(kept["kept"], "restored.sqlite3").is_file()
    shutil.rmtree(kept["kept"])


def test_drill_config_mistakes_are_one_line(sqlite_site: tuple[Path, Backend, Path, str], cli: CliRunner) -> None:
    config = sqlite_site[0]
    with open(config, "a") as handle:
        handle.write('\n[[sources.devdb.drill.assertions]]\nname = "x"\nsql = "SELECT 1"\ndatabase = "app"\n')
    run = cli(config, "drill", "run", "devdb")
    assert run.code == 2 and "sources.devdb.drill.assertions[1].database does not apply to a SQLite source" in (
        run.error_line)
    config.write_text(config.read_text().rsplit("\n[[sources.devdb.drill.assertions]]", 1)[0])
    for args, problem in ((("--target-time", "yesterday"), "is not a time"),
                          (("--backup", "nonsense"), "is not a backup id"),
                          (("--target", "immediate"), "--target-* options apply to PostgreSQL physical backups")):
        run = cli(config, "drill", "run", "devdb", *args)
        assert run.code in (1, 2) and problem in run.error_line, run.stderr
    assert cli(config, "drill", "show", "nonsense").code == 2
    assert json.loads(cli(config, "drill", "list", "-o", "json").stdout) == []


def test_sqlite_drill_fails_on_counts_assertion_and_damage(sqlite_site: tuple[Path, Backend, Path, str],
                                                            cli: CliRunner, tmp_path: Path) -> None:
    config, backend, scratch, bid = sqlite_site
    rewrite_details(backend, "devdb", bid, lambda d: d["tables"].update(customers=d["tables"]["customers"] + 1))
    with open(config, "a") as handle:
        handle.write('\n[[sources.devdb.drill.assertions]]\nname = "no orders"\n'
                     'sql = "SELECT count(*) = 0 FROM orders"\n')
    run, result = drill(cli, config, "devdb")
    assert run.code == 1
    assert statuses(result) == {"restore": "passed", "integrity_check": "passed", "row_counts": "failed",
                                "assertion: has customers": "passed", "assertion: no orders": "failed"}
    assert "customers has 200 rows, the manifest recorded 201" in detail(result, "row_counts")
    assert "returned 0" in detail(result, "assertion: no orders")
    assert "failed: row_counts: customers has 200 rows" in run.error_line
    assert "(also failed: assertion: no orders)" in run.error_line
    assert_no_scratch_left(scratch)

    obj = next((tmp_path / "repo" / "devdb" / "backups" / bid).glob("database.sqlite3*"))
    corrupt(obj)
    run, result = drill(cli, config, "devdb", "--backup", bid)
    assert run.code == 1 and result["status"] == "failed"
    assert statuses(result)["restore"] == "failed" and "database.sqlite3" in detail(result, "restore")
    assert statuses(result)["row_counts"] == "skipped" and detail(result, "row_counts") == "not run: restore failed"
    assert result["rto_seconds"] is None
    assert_no_scratch_left(scratch)
    newest = json.loads(cli(config, "drill", "list", "devdb", "-o", "json").stdout)
    assert newest[0]["id"] == result["id"] and newest[0]["status"] == "failed"


def test_encrypted_results_keep_names_sealed(tmp_path: Path, cli: CliRunner) -> None:
    backend = make_backend("local", tmp_path, None)  # type: ignore[arg-type]
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=50)
    config = make_config(tmp_path, backend, encrypted=True, cli=cli)
    with open(config, "a") as handle:
        handle.write(assertions_toml("devdb", tmp_path / "drills",
                                     ("secret orders", "SELECT count(*) > 0 FROM secret_ledger", None)))
    assert cli(config, "init").code == 0
    backup_id(cli(config, "backup", "devdb", "-o", "json"))
    run, result = drill(cli, config, "devdb")
    assert run.code == 1 and "no such table: secret_ledger" in detail(result, "assertion: secret orders")
    raw = backend.storage().get_bytes(f"devdb/drills/{result['id']}.json")
    assert b"secret_ledger" not in raw and b"secret orders" not in raw
    public = json.loads(raw)
    assert public["status"] == "failed" and [c["status"] for c in public["checks"]][-1] == "failed"
    shown = json.loads(cli(config, "drill", "show", result["id"], "-o", "json").stdout)
    assert shown["checks"] == result["checks"] and shown["error"] == result["error"]


# --- PostgreSQL physical ----------------------------------------------------------------------------------

APP_SCHEMA = """
CREATE TABLE orders (id bigint PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), note text);
CREATE INDEX orders_by_time ON orders (created_at);
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE UNLOGGED TABLE sessions (id int);
INSERT INTO orders (id, note) SELECT g, 'order ' || g FROM generate_series(1, 20000) g;
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 5000) g;
INSERT INTO sessions SELECT generate_series(1, 100);
ANALYZE;
"""
FRESH_ORDERS = ("orders are fresh", "SELECT max(created_at) > now() - interval '1 day' FROM orders", "app")


def physical_backup(where: Site, cli: CliRunner, *assertions: tuple[str, str, str | None]) -> tuple[Path, str]:
    """An `app` database with data, a full backup of the cluster, and the drill settings; (scratch, backup)."""
    scratch = where.root / "drills"
    with open(where.config, "a") as handle:
        handle.write(assertions_toml("main", scratch, *assertions))
    assert cli(where.config, "init").code == 0
    where.sql("CREATE DATABASE app")
    for statement in APP_SCHEMA.strip().split(";\n"):
        where.sql(statement, "app")
    return scratch, backup_id(cli(where.config, "backup", "main", "--type", "full", "-o", "json"))


def test_physical_drill_passes_without_touching_the_source(site: Site, cli: CliRunner) -> None:
    # Production's ALTER SYSTEM settings travel in the backup: a copy that obeyed them would archive its new
    # timeline into the source, and would not even start (no such library here).
    site.sql(f"ALTER SYSTEM SET archive_command = '{site.settings['archive_command']}'")
    site.sql("ALTER SYSTEM SET archive_mode = on")
    site.sql("ALTER SYSTEM SET shared_preload_libraries = 'no_such_library'")
    scratch, bid = physical_backup(site, cli, FRESH_ORDERS)
    shown = json.loads(cli(site.config, "show", bid, "-o", "json").stdout)["details"]
    assert shown["row_estimates"]["app"] == {"public.customers": 5000, "public.orders": 20000}
    assert shown["superuser"] == "postgres"
    # Ordinary writes after the backup: a drill to the end of the WAL replays them and still passes.
    site.sql("DELETE FROM orders WHERE id % 10 = 0", "app")
    site.sql("INSERT INTO orders (id) SELECT g FROM generate_series(20001, 21000) g", "app")
    site.archived_now(cli)

    run, result = drill(cli, site.config, "main")
    assert run.code == 0, run.stderr
    assert result["status"] == "passed" and result["backup_id"] == bid and result["backup_type"] == "full"
    assert list(statuses(result)) == ["plan", "restore", "recovery", "connect", "amcheck", "row_counts",
                                      "assertion: orders are fresh"]
    assert set(statuses(result).values()) == {"passed"}
    assert "no corruption in" in detail(result, "amcheck")
    assert "none missing, none lost most of its rows" in detail(result, "row_counts")
    assert result["reached"]["timeline"] == 1 and result["reached"]["promoted_timeline"] == 2
    assert result["wal_segments_replayed"] >= 2
    assert result["target"] == {"kind": "end", "value": None}
    parts = result["rto_parts"]
    assert all(parts[p] > 0 for p in ("plan", "download", "extract", "wal_replay", "checks"))
    assert result["rto_seconds"] == pytest.approx(sum(parts[p] for p in ("plan", "download", "extract",
                                                                           "wal_replay")), abs=0.01)
    assert_no_scratch_left(scratch)
    # The promoted copy archived nothing: the source's archive holds timeline 1 only, and the source runs on.
    status = json.loads(cli(site.config, "wal", "status", "main", "-o", "json").stdout)
    assert [row["timeline"] for row in status] == [1]
    assert site.sql("SELECT count(*) FROM orders", "app")[0][0] == 19000
    assert [d["id"] for d in json.loads(cli(site.config, "drill", "list", "main", "-o", "json").stdout)] == [
        result["id"]]


@PG15
def test_physical_drill_fails_on_lost_rows_and_assertion(site: Site, cli: CliRunner) -> None:
    scratch, _ = physical_backup(site, cli, FRESH_ORDERS)
    site.sql("INSERT INTO orders (id) VALUES (30000)", "app")
    time.sleep(1.1)
    before = site.sql("SELECT now()::text")[0][0]
    time.sleep(1.1)
    site.sql("DELETE FROM orders WHERE id > 2000", "app")
    site.sql("DROP TABLE customers", "app")
    site.archived_now(cli)
    # To a time before the damage: the copy holds what the backup recorded, and passes.
    run, result = drill(cli, site.config, "main", "--target-time", before)
    assert run.code == 0, run.stderr
    assert result["target"] == {"kind": "time", "value": before}
    assert datetime.fromisoformat(result["reached"]["time"]) <= datetime.fromisoformat(before)
    # To the end of the WAL: the drill replays the damage, and names it.
    with open(site.config, "a") as handle:
        handle.write('\n[[sources.main.drill.assertions]]\nname = "no orders"\n'
                     'sql = "SELECT count(*) = 0 FROM orders"\ndatabase = "app"\n')
    run, result = drill(cli, site.config, "main")
    assert run.code == 1
    assert statuses(result) == {"plan": "passed", "restore": "passed", "recovery": "passed", "connect": "passed",
                                "amcheck": "passed", "row_counts": "failed", "assertion: orders are fresh": "passed",
                                "assertion: no orders": "failed"}
    rows = detail(result, "row_counts")
    assert "app: public.customers is missing (~5000 rows at backup start)" in rows
    assert "app: public.orders has 2000 rows, but ~20000 at backup start" in rows
    assert "returned False in database app" in detail(result, "assertion: no orders")
    assert "failed: row_counts: app: public.customers is missing" in run.error_line
    assert result["rto_seconds"] > 0  # the copy came up: its restore time is measured all the same
    assert_no_scratch_left(scratch)


@PG15
def test_physical_drill_fails_on_missing_wal_and_corrupt_object(site: Site, cli: CliRunner) -> None:
    scratch, bid = physical_backup(site, cli)
    for batch in range(3):
        site.sql(f"INSERT INTO orders (id) VALUES ({100000 + batch})", "app")
        site.archived_now(cli)
    segments = sorted(p for p in (site.root / "repo" / "main" / "wal").rglob("*")
                      if p.is_file() and len(p.name.split("-")[0]) == 24)
    victim = segments[-2]
    victim.unlink()
    run, result = drill(cli, site.config, "main")
    assert run.code == 1 and result["status"] == "failed"
    assert statuses(result)["plan"] == "failed"
    assert f"WAL segment {victim.name.split('-')[0]} is missing from the archive" in detail(result, "plan")
    assert {s for n, s in statuses(result).items() if n != "plan"} == {"skipped"}
    assert "is missing from the archive" in run.error_line
    assert_no_scratch_left(scratch)

    stored = [p for p in (site.root / "repo" / "main" / "backups" / bid).rglob("*") if p.is_file()]
    base = max(stored, key=lambda p: p.stat().st_size)  # the data directory's archive
    corrupt(base)
    run, result = drill(cli, site.config, "main", "--target", "immediate")
    assert run.code == 1 and statuses(result)["plan"] == "passed" and statuses(result)["restore"] == "failed"
    assert base.name in detail(result, "restore")
    assert statuses(result)["recovery"] == "skipped"
    assert_no_scratch_left(scratch)
    stored = json.loads(cli(site.config, "drill", "list", "main", "-o", "json").stdout)
    assert [d["status"] for d in stored] == ["failed", "failed"]


@PG15
def test_sigterm_mid_drill_stops_the_server_and_removes_the_copy(site: Site, cli: CliRunner) -> None:
    scratch, bid = physical_backup(site, cli, ("slow", "SELECT pg_sleep(120) IS NOT NULL", None))
    site.archived_now(cli)
    proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(site.config), "drill", "run", "main"],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pids = list(scratch.glob("*/data/postmaster.pid"))
            if pids and [line.strip() for line in pids[0].read_text().splitlines()[7:8]] == ["ready"]:  # promoted
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            raise AssertionError("the scratch server never came up")
        time.sleep(3)  # into the checks: amcheck, counts, then the slow assertion
        assert list(scratch.glob("*/data/postmaster.pid")), "the scratch server is not running"
        readers = [json.loads(p.read_text()) for p in (site.root / "repo" / "main" / "locks" / "readers").iterdir()]
        assert [(r["operation"], r["backups"]) for r in readers] == [("drill", [bid])]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr
    assert_no_scratch_left(scratch)
    readers = site.root / "repo" / "main" / "locks" / "readers"
    assert not readers.exists() or list(readers.iterdir()) == []  # the drill's reader lease is released
    assert json.loads(cli(site.config, "drill", "list", "main", "-o", "json").stdout) == []


# --- PostgreSQL logical -----------------------------------------------------------------------------------


@PG15
def test_logical_drill_passes_then_fails_on_a_count(pg_database: PgDatabase, pg_binaries: PgBinaries,
                                                   tmp_path: Path, cli: CliRunner) -> None:
    with pg_database.connect() as conn:
        for statement in APP_SCHEMA.strip().split(";\n"):
            conn.execute(statement)
    scratch = Path(tempfile.mkdtemp(prefix="backupctl-test-drills-", dir="/tmp"))
    scratch.chmod(0o755)
    backend = make_backend("local", tmp_path, None)  # type: ignore[arg-type]
    config = write_toml(tmp_path / "backupctl.toml", {
        "repository": backend.repository,
        "sources": {"main": {"kind": "postgres", "host": "127.0.0.1", "port": pg_database.cluster.port,
                             "user": "postgres", "dbname": pg_database.name}},
    })
    with open(config, "a") as handle:
        handle.write(assertions_toml("main", scratch, (*FRESH_ORDERS[:2], None)))
    try:
        assert cli(config, "init").code == 0
        bid = backup_id(cli(config, "backup", "main", "--type", "logical", "--database", pg_database.name,
                            "-o", "json"))
        run, result = drill(cli, config, "main")
        assert run.code == 0, run.stderr
        assert result["backup_id"] == bid and result["backup_type"] == "logical"
        assert statuses(result) == {"restore": "passed", "connect": "passed", "amcheck": "passed",
                                    "row_counts": "passed", "assertion: orders are fresh": "passed"}
        assert "3 tables in 1 databases hold exactly the rows" in detail(result, "row_counts")
        assert_no_scratch_left(scratch)

        def lose_a_row(details: dict[str, Any]) -> None:
            details["databases"][pg_database.name]["tables"]["public.orders"] += 1

        rewrite_details(backend, "main", bid, lose_a_row)
        run, result = drill(cli, config, "main")
        assert run.code == 1
        assert f"{pg_database.name}: public.orders has 20000 rows, the manifest recorded 20001" in run.error_line
        assert_no_scratch_left(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
