"""PostgreSQL logical backups end to end, on real servers of both majors, through the real CLI."""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backupctl.postgres.cluster import ScratchCluster
from tests.support.backends import Backend, make_backend
from tests.support.cli import CliRunner, backup_id
from tests.support.pg_fixtures import PgDatabase, drop_database, pg_config

SCHEMA = """
CREATE ROLE {reader} NOLOGIN;
CREATE TABLE customers (
    id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE,
    balance numeric(12,2) CHECK (balance > -1000), created timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id),
    total_cents int NOT NULL, note text, tags text[], payload jsonb
);
CREATE INDEX orders_by_customer ON orders (customer_id, total_cents DESC);
CREATE INDEX big_orders ON orders (total_cents) WHERE total_cents > 50000;
CREATE INDEX customers_lower_name ON customers (lower(name));
CREATE SEQUENCE invoice_numbers START 1000 INCREMENT 7;
CREATE VIEW vip AS SELECT c.name, sum(o.total_cents) AS cents
    FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.name HAVING sum(o.total_cents) > 100000;
CREATE FUNCTION next_invoice(prefix text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN RETURN prefix || '-' || nextval('invoice_numbers'); END $$;
CREATE SCHEMA archive;
CREATE TABLE archive.old_orders (id int PRIMARY KEY, body text, raw bytea);
GRANT SELECT ON customers TO {reader};
COMMENT ON TABLE customers IS 'people who buy things — «commentaire»';
INSERT INTO customers (name, email, balance)
    SELECT n, 'user' || g || '@example.org', (g % 500) - 20.5
    FROM generate_series(1, 800) g,
         LATERAL (SELECT (ARRAY['Zoë', 'Jürgen', '山田太郎', 'Ólafur', 'O''Brien', 'Søren 🦀'])[g % 6 + 1]
                  || ' ' || g AS n) names;
INSERT INTO orders (customer_id, total_cents, note, tags, payload)
    SELECT (g % 800) + 1, (g * 7919) % 100000, CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END,
           ARRAY['a' || g % 3, 'b'], jsonb_build_object('g', g, 'ü', 'ñ')
    FROM generate_series(1, 5000) g;
INSERT INTO archive.old_orders SELECT g, repeat('x', g % 100), decode(md5(g::text), 'hex')
    FROM generate_series(1, 300) g;
SELECT setval('invoice_numbers', 4242);
SELECT next_invoice('INV');
"""

CATALOG_QUERIES = {
    "indexes": "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes "
               "WHERE schemaname NOT IN ('pg_catalog') ORDER BY 1, 2, 3",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                   "WHERE connamespace IN ('public'::regnamespace, 'archive'::regnamespace) ORDER BY 1, 2",
    "sequences": "SELECT schemaname, sequencename, last_value, increment_by FROM pg_sequences ORDER BY 1, 2",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1",
    "functions": "SELECT proname, pg_get_functiondef(oid) FROM pg_proc "
                 "WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
    "large objects": "SELECT lo_get(oid) FROM pg_largeobject_metadata ORDER BY oid",
    "comments": "SELECT objoid::regclass::text, description FROM pg_description "
                "WHERE classoid = 'pg_class'::regclass ORDER BY 1",
    "grants": "SELECT table_name, grantee, privilege_type FROM information_schema.table_privileges "
              "WHERE table_schema = 'public' AND grantee NOT IN ('postgres') ORDER BY 1, 2, 3",
    "encoding": "SELECT pg_encoding_to_char(encoding), datcollate, datctype, datconnlimit, "
                "shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()",
    "settings": "SELECT unnest(setconfig) FROM pg_db_role_setting "
                "WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "ORDER BY 1",
    "database grants": "SELECT a.privilege_type, a.grantee::regrole::text FROM pg_database d, "
                       "aclexplode(d.datacl) a WHERE d.datname = current_database() ORDER BY 1, 2",
}

# pg_dump's COPY of a table, seen from another session (the test kills it, or counts it).
DUMPING = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
           "WHERE application_name = 'backupctl' AND query LIKE 'COPY%%'")

TABLES = {"public.customers": "id", "public.orders": "id", "archive.old_orders": "id"}


def populate(db: PgDatabase) -> str:
    """The objects the issue names, with data; returns the role made for grants."""
    reader = f"reader_{secrets.token_hex(3)}"
    with db.connect() as conn:
        conn.execute(SCHEMA.format(reader=reader))
        conn.execute("SELECT lo_from_bytea(0, convert_to('large object ✓ ' || repeat('z', 5000), 'UTF8'))")
        conn.execute(f'ALTER DATABASE "{db.name}" SET search_path TO "$user", public, archive')
        conn.execute(f"ALTER DATABASE \"{db.name}\" SET statement_timeout = '5min'")
        conn.execute(f"ALTER DATABASE \"{db.name}\" CONNECTION LIMIT 42")
        conn.execute(f"COMMENT ON DATABASE \"{db.name}\" IS 'the shop, ünïcode'")
        conn.execute(f'REVOKE ALL ON DATABASE "{db.name}" FROM PUBLIC')
        conn.execute(f'GRANT CONNECT ON DATABASE "{db.name}" TO {reader}')
    return reader


def snapshot(cluster: ScratchCluster, dbname: str) -> dict[str, Any]:
    """Every row of every table and the catalog facts, for comparing two databases."""
    with cluster.connect(dbname) as conn:
        facts: dict[str, Any] = {
            name: conn.execute(query).fetchall() for name, query in CATALOG_QUERIES.items()
        }
        for table, key in TABLES.items():
            facts[table] = conn.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
        return facts


@pytest.mark.parametrize("backend_name", ["local", "seaweedfs"])
def test_logical_round_trip(
    tmp_path: Path, request: pytest.FixtureRequest, cli: CliRunner, pg_database: PgDatabase, backend_name: str
) -> None:
    cluster = pg_database.cluster
    reader = populate(pg_database)
    before = snapshot(cluster, pg_database.name)
    recipient = cli(None, "keygen", "--to", str(tmp_path / "age.key")).stdout.strip()
    backend = make_backend(backend_name, tmp_path, request)
    config = pg_config(tmp_path, backend, cluster, encrypted_with=recipient)
    assert cli(config, "init").code == 0

    bid = backup_id(cli(config, "backup", "main", "--database", pg_database.name, "-o", "json"))
    shown = json.loads(cli(config, "show", bid, "-o", "json").stdout)
    assert shown["type"] == "logical" and shown["extra"]["pg_major"] == cluster.binaries.major
    recorded = shown["details"]["databases"][pg_database.name]
    assert recorded["tables"] == {"public.customers": 800, "public.orders": 5000, "archive.old_orders": 300}
    assert recorded["encoding"] == "UTF8" and recorded["connection_limit"] == 42

    verified = json.loads(cli(config, "verify", bid, "-o", "json").stdout)[0]
    assert verified["ok"] and any("pg_restore --list" in check for check in verified["checks"])

    restored = f"{pg_database.name}_r"
    result = cli(config, "restore", bid, "--database", pg_database.name, "--to-database", restored)
    assert result.code == 0, result.stderr
    try:
        after = snapshot(cluster, restored)
        for key, value in before.items():
            if key not in ("settings", "database grants", "encoding"):
                assert after[key] == value, key
        assert after["encoding"] == before["encoding"]
        assert after["settings"] == before["settings"]
        assert after["database grants"] == before["database grants"]
        assert any(reader in str(grant) for grant in after["grants"])

        again = cli(config, "restore", bid, "--database", pg_database.name, "--to-database", restored)
        assert again.code == 2 and "is not empty: pass --clean" in again.error_line
        with cluster.connect(restored) as conn:
            conn.execute("DELETE FROM archive.old_orders WHERE id < 100")
        cleaned = cli(config, "restore", bid, "--database", pg_database.name, "--to-database", restored,
                      "--clean")
        assert cleaned.code == 0, cleaned.stderr
        assert snapshot(cluster, restored)["archive.old_orders"] == before["archive.old_orders"]
    finally:
        drop_database(cluster, restored)

    parallel = f"{pg_database.name}_p"
    try:
        result = cli(config, "restore", bid, "--database", pg_database.name, "--to-database", parallel,
                     "--jobs", "3")
        assert result.code == 0, result.stderr
        assert snapshot(cluster, parallel)["public.orders"] == before["public.orders"]
    finally:
        drop_database(cluster, parallel)

    globals_file = tmp_path / "globals.sql"
    assert cli(config, "restore", bid, "--globals-only", "--to-file", str(globals_file)).code == 0
    assert f"CREATE ROLE {reader};" in globals_file.read_text()

    # Nothing stored names a database, a table or a customer.
    storage = backend.storage()
    everything = b"".join(storage.get_bytes(info.key) for info in storage.list(""))
    for secret in (pg_database.name.encode(), b"old_orders", b"customers", b"example.org"):
        assert secret not in everything


def test_selective_restore(tmp_path: Path, local_backend: Backend, cli: CliRunner,
                           pg_database: PgDatabase) -> None:
    cluster = pg_database.cluster
    populate(pg_database)
    config = pg_config(tmp_path, local_backend, cluster, databases=[pg_database.name])
    cli(config, "init")
    bid = backup_id(cli(config, "backup", "main", "-o", "json"))
    for option, value, present in (("--schema", "archive", {"archive.old_orders"}),
                                   ("--table", "customers", {"public.customers"})):
        target = f"{pg_database.name}_{value}"
        try:
            result = cli(config, "restore", bid, "--database", pg_database.name, "--to-database", target,
                         option, value)
            assert result.code == 0, result.stderr
            with cluster.connect(target) as conn:
                tables = {f"{s}.{t}" for s, t in conn.execute(
                    "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('public', 'archive')")}
            assert tables == present
        finally:
            drop_database(cluster, target)


def test_globals_apply_and_missing_database(tmp_path: Path, local_backend: Backend, cli: CliRunner,
                                            pg_database: PgDatabase) -> None:
    cluster = pg_database.cluster
    reader = populate(pg_database)
    config = pg_config(tmp_path, local_backend, cluster, databases=[pg_database.name])
    cli(config, "init")
    bid = backup_id(cli(config, "backup", "main", "-o", "json"))
    with cluster.connect() as conn:
        conn.execute(f"REASSIGN OWNED BY {reader} TO postgres")
        for db in (pg_database.name, "postgres"):
            with cluster.connect(db) as inner:
                inner.execute(f"DROP OWNED BY {reader}")
        conn.execute(f"DROP ROLE {reader}")
    applied = cli(config, "restore", bid, "--globals-only", "--apply")
    assert applied.code == 0, applied.stderr
    with cluster.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (reader,)).fetchone()[0] == 1
    missing = cli(config, "restore", bid, "--database", "nosuchdb", "--to-database", "x")
    assert missing.code == 2
    assert f"has no database nosuchdb (it has: {pg_database.name})" in missing.error_line


def test_database_dropped_mid_run_fails_cleanly(tmp_path: Path, local_backend: Backend, cli: CliRunner,
                                                pg_database: PgDatabase) -> None:
    """The second database vanishes while the first is dumped: one clear line, no manifest, no debris."""
    cluster = pg_database.cluster
    with pg_database.connect() as conn:  # enough data that the first dump takes a moment
        conn.execute("CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 400000) g")
    doomed = f"{pg_database.name}_doomed"
    with cluster.connect() as conn:
        conn.execute(f'CREATE DATABASE "{doomed}"')
    config = pg_config(tmp_path, local_backend, cluster, databases=[pg_database.name, doomed])
    cli(config, "init")

    def drop_when_dumping() -> None:
        deadline = time.monotonic() + 30
        with cluster.connect() as conn:
            while time.monotonic() < deadline:
                busy = conn.execute(DUMPING.replace("pg_terminate_backend(pid)", "*")).fetchone()[0]
                if busy:
                    conn.execute(f'DROP DATABASE "{doomed}" WITH (FORCE)')
                    return
                time.sleep(0.005)

    dropper = threading.Thread(target=drop_when_dumping)
    dropper.start()
    result = cli(config, "backup", "main")
    dropper.join()
    assert result.code == 1
    assert doomed in result.error_line and "does not exist" in result.error_line
    assert json.loads(cli(config, "list", "-o", "json").stdout) == []
    assert [i.key for i in local_backend.storage().list("main/backups/")] == []


def test_killed_pg_dump_and_bad_password(tmp_path: Path, local_backend: Backend, cli: CliRunner,
                                         pg_database: PgDatabase) -> None:
    cluster = pg_database.cluster
    with pg_database.connect() as conn:
        conn.execute("CREATE TABLE filler AS SELECT g, md5(g::text) AS h FROM generate_series(1, 400000) g")
    config = pg_config(tmp_path, local_backend, cluster, databases=[pg_database.name])
    cli(config, "init")

    def kill_dump() -> None:
        deadline = time.monotonic() + 30
        with cluster.connect() as conn:
            while time.monotonic() < deadline:
                killed = conn.execute(DUMPING).fetchone()[0]
                if killed:
                    return
                time.sleep(0.005)

    killer = threading.Thread(target=kill_dump)
    killer.start()
    result = cli(config, "backup", "main")
    killer.join()
    assert result.code == 1 and f"pg_dump of database {pg_database.name} failed" in result.error_line
    assert [i.key for i in local_backend.storage().list("main/backups/")] == []

    role = f"pw_{secrets.token_hex(3)}"
    with cluster.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'right-password'")
    hba = cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + original)
    try:
        with cluster.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        (tmp_path / "password").write_text("wrong-password\n")
        bad = pg_config(tmp_path, local_backend, cluster, user=role, password_file=str(tmp_path / "password"))
        refused = cli(bad, "backup", "main")
        assert refused.code == 1 and "password authentication failed" in refused.error_line
        assert "wrong-password" not in refused.stderr
        (tmp_path / "password").write_text("right-password\n")
        good = pg_config(tmp_path, local_backend, cluster, user=role,
                         password_file=str(tmp_path / "password"), databases=[pg_database.name])
        assert cli(good, "backup", "main").code == 0
    finally:
        hba.write_text(original)
        with cluster.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
    assert len(json.loads(cli(config, "list", "-o", "json").stdout)) == 1
