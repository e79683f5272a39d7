"""The embedded default: a throwaway SQLite shop database, backed up, verified, restored and compared.

``make demo`` (or ``python -m backupctl.demo``) runs it against ``config/dev.toml``: it drives the real
CLI as a user would, with a writer adding rows during the backup, and prints a short report. The sample
data generator is also what the tests use, so the demo and the tests exercise the same shapes of data:
unicode text, NULLs, REAL and BLOB values, foreign keys, an index, a view and a trigger.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backupctl.core.config import load_config
from backupctl.core.errors import EXIT_FAILED, EXIT_OK, BackupctlError
from backupctl.postgres.binaries import find_binaries
from backupctl.postgres.cluster import ScratchCluster
from backupctl.wal.conf import archive_command

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE, country TEXT,
    created_at TEXT NOT NULL, balance REAL, avatar BLOB
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
    created_at TEXT NOT NULL, status TEXT NOT NULL, total_cents INTEGER NOT NULL, note TEXT
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id), line INTEGER NOT NULL, sku TEXT NOT NULL,
    quantity INTEGER NOT NULL, price_cents INTEGER NOT NULL, PRIMARY KEY (order_id, line)
) WITHOUT ROWID;
CREATE TABLE events (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, payload TEXT NOT NULL);
CREATE INDEX orders_by_customer ON orders (customer_id, created_at);
CREATE VIEW revenue_by_country AS
    SELECT c.country, sum(o.total_cents) AS cents FROM orders o JOIN customers c ON c.id = o.customer_id
    GROUP BY c.country;
CREATE TRIGGER orders_total_positive BEFORE INSERT ON orders WHEN NEW.total_cents < 0
    BEGIN SELECT RAISE(ABORT, 'negative total'); END;
"""

FIRST = ["Ada", "Grace", "Linus", "Zoë", "Jürgen", "Ólafur", "Mei", "Søren", "Ana", "Dmitrij", "अनु", "Ōta"]
LAST = ["Lovelace", "Hopper", "Torvalds", "Ngô", "Müller", "Þórsson", "Chen", "Kierkegaard", "O'Brien"]
COUNTRIES = ["DE", "FR", "IS", "JP", "US", "BR", "IN", "VN", "DK", None]
STATUSES = ["new", "paid", "shipped", "delivered", "refunded"]


def make_sample_sqlite(path: Path, customers: int = 2000, seed: int = 7, wal: bool = True) -> dict[str, int]:
    """Create a shop database with realistic, varied data; returns each table's row count."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    with contextlib.closing(sqlite3.connect(path)) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (
                    i,
                    f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                    f"user{i}@example.org" if rng.random() > 0.05 else None,
                    rng.choice(COUNTRIES),
                    (start + timedelta(minutes=rng.randrange(500_000))).isoformat(),
                    round(rng.uniform(-50, 5000), 2) if rng.random() > 0.1 else None,
                    rng.randbytes(rng.randrange(16, 512)) if rng.random() > 0.7 else None,
                )
                for i in range(1, customers + 1)
            ),
        )
        order_id = 0
        orders, items = [], []
        for customer in range(1, customers + 1):
            for _ in range(rng.randrange(0, 10)):
                order_id += 1
                lines = rng.randrange(1, 6)
                prices = [(rng.randrange(1, 20), rng.randrange(99, 99_999)) for _ in range(lines)]
                total = sum(q * p for q, p in prices)
                created = (start + timedelta(seconds=rng.randrange(30_000_000))).isoformat()
                note = rng.choice([None, "", "gift wrap 🎁", "leave at the door", "«urgent»"])
                orders.append((order_id, customer, created, rng.choice(STATUSES), total, note))
                items.extend(
                    (order_id, n, f"SKU-{rng.randrange(10_000):05d}", q, p) for n, (q, p) in enumerate(prices)
                )
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", orders)
        db.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?, ?)", items)
        db.commit()
        return table_counts(db)


def table_counts(db: sqlite3.Connection) -> dict[str, int]:
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    return {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def table_rows(path: Path, table: str) -> list[tuple]:
    """Every row of a table in primary-key order, for row-by-row comparison."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2').fetchall()


class Writer(threading.Thread):
    """Appends to ``events`` in batches of 10 rows per transaction, as a busy application would."""

    BATCH = 10

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.batches = 0

    def run(self) -> None:
        with contextlib.closing(sqlite3.connect(self.path, timeout=60)) as db:
            while not self.stop.is_set():
                self.batches += 1
                with db:
                    db.executemany(
                        "INSERT INTO events (batch, payload) VALUES (?, ?)",
                        [(self.batches, f"event {self.batches}.{n}") for n in range(self.BATCH)],
                    )


def _backupctl(config: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "backupctl", "--config", str(config), *args],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"demo: `backupctl {' '.join(args)}` failed:\n{proc.stderr.strip()}")
    return proc.stdout


def run(config: Path, workdir: Path) -> int:
    """The whole demo; returns the process exit code (0 when every restore matches row by row)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return sqlite_demo(config, workdir) or postgres_demo(config, workdir) or pitr_demo()


def sqlite_demo(config: Path, workdir: Path) -> int:
    """SQLite: a backup taken while a writer commits, verified, restored and compared."""
    source = workdir / "devdb.sqlite3"
    restored = workdir / "restored.sqlite3"
    counts = make_sample_sqlite(source, customers=5000)
    print(f"demo database {source}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    _backupctl(config, "init")

    writer = Writer(source)
    writer.start()
    time.sleep(0.2)
    clock = time.monotonic()
    summary = json.loads(_backupctl(config, "backup", "devdb", "--output", "json"))
    backup_seconds = time.monotonic() - clock
    writer.stop.set()
    writer.join()

    clock = time.monotonic()
    verified = json.loads(_backupctl(config, "verify", summary["id"], "--output", "json"))
    verify_seconds = time.monotonic() - clock
    clock = time.monotonic()
    _backupctl(config, "restore", summary["id"], "--to", str(restored), "--force")
    restore_seconds = time.monotonic() - clock

    manifest = json.loads(_backupctl(config, "show", summary["id"], "--output", "json"))
    recorded = manifest["details"]["tables"]
    mismatches = []
    for table in ("customers", "orders", "order_items"):
        if table_rows(source, table) != table_rows(restored, table):
            mismatches.append(table)
    events = table_rows(restored, "events")
    source_events = table_rows(source, "events")
    # A consistent copy holds whole transactions only, and exactly the rows the manifest counted.
    per_batch: dict[int, int] = {}
    for _id, batch, _payload in events:
        per_batch[batch] = per_batch.get(batch, 0) + 1
    if events != source_events[: len(events)] or any(n != Writer.BATCH for n in per_batch.values()):
        mismatches.append("events")
    if recorded.get("events") != len(events):
        mismatches.append("events count")

    ratio = summary["size"] / max(summary["stored_size"], 1)
    print(f"backup   {summary['id']}: {summary['size'] / 2**20:.1f} MiB -> "
          f"{summary['stored_size'] / 2**20:.2f} MiB stored ({ratio:.1f}x) in {backup_seconds:.2f}s, "
          f"while a writer committed {writer.batches} transactions")
    print(f"verify   {'ok' if verified[0]['ok'] else 'DAMAGED'} ({verified[0]['objects']} objects, "
          f"mode {verified[0]['mode']}) in {verify_seconds:.2f}s")
    print(f"restore  {restored} in {restore_seconds:.2f}s")
    print(f"compare  customers/orders/order_items row by row; events: {len(events)} of "
          f"{len(source_events)} rows, {len(per_batch)} whole transactions (taken mid-write)")
    if mismatches:
        print(f"RESULT   FAILED: {', '.join(mismatches)} differ")
        return EXIT_FAILED
    print("RESULT   OK: the restored database matches the source row by row")
    return EXIT_OK


PG_SHOP = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, country text, since date);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers, total numeric(10,2),
                     placed timestamptz, items jsonb);
CREATE INDEX ON orders (customer_id, placed);
CREATE VIEW revenue AS SELECT c.country, sum(o.total) FROM orders o JOIN customers c ON c.id = o.customer_id
    GROUP BY 1;
INSERT INTO customers (name, country, since)
    SELECT (ARRAY['Zoë', 'Jürgen', '山田', 'Ólafur', 'Søren'])[g % 5 + 1] || ' ' || g,
           (ARRAY['DE', 'JP', 'IS', 'DK', NULL])[g % 5 + 1], date '2020-01-01' + g % 1500
    FROM generate_series(1, 20000) g;
INSERT INTO orders (customer_id, total, placed, items)
    SELECT g % 20000 + 1, (g * 7919 % 100000) / 100.0, timestamptz '2025-01-01' + g * interval '37 s',
           jsonb_build_object('sku', 'SKU-' || g % 977, 'qty', g % 7 + 1)
    FROM generate_series(1, 200000) g;
"""


def postgres_demo(config: Path, workdir: Path) -> int:
    """PostgreSQL: a throwaway cluster, a logical backup, a restore into a new database, compared."""
    try:
        binaries = find_binaries(need="postgres")
    except BackupctlError as exc:
        print(f"postgres skipped: {exc}")
        return EXIT_OK
    repository = load_config(config).repository.path
    with ScratchCluster(binaries) as cluster:
        info = cluster.conninfo()
        pg_config = workdir / "postgres.toml"
        pg_config.write_text(
            f'[repository]\ntype = "local"\npath = "{repository}"\n\n[sources.devpg]\nkind = "postgres"\n'
            f'host = "{info["host"]}"\nport = {info["port"]}\nuser = "{info["user"]}"\n'
            f'bindir = "{binaries.bindir}"\ndatabases = ["shop"]\n'
        )
        with cluster.connect() as conn:
            conn.execute("CREATE DATABASE shop")
        with cluster.connect("shop") as conn:
            conn.execute(PG_SHOP)
        print(f"postgres {binaries.version} scratch cluster on port {info['port']}, database shop "
              f"(config {pg_config})")
        clock = time.monotonic()
        summary = json.loads(_backupctl(pg_config, "backup", "devpg", "--output", "json"))
        print(f"backup   {summary['id']}: {summary['size'] / 2**20:.1f} MiB of pg_dump output -> "
              f"{summary['stored_size'] / 2**20:.2f} MiB stored in {time.monotonic() - clock:.2f}s")
        verified = json.loads(_backupctl(pg_config, "verify", summary["id"], "--output", "json"))[0]
        print(f"verify   {'ok' if verified['ok'] else 'DAMAGED'}: {'; '.join(verified['checks'])}")
        clock = time.monotonic()
        _backupctl(pg_config, "restore", summary["id"], "--database", "shop",
                   "--to-database", "shop_restored")
        print(f"restore  into database shop_restored in {time.monotonic() - clock:.2f}s")
        same = all(_pg_rows(cluster, "shop", t) == _pg_rows(cluster, "shop_restored", t)
                   for t in ("customers", "orders", "revenue"))
    print("RESULT   OK: shop_restored matches shop row by row" if same else "RESULT   FAILED: rows differ")
    return EXIT_OK if same else EXIT_FAILED


def pitr_demo() -> int:
    """The 3 a.m. job: a cluster archiving WAL, a bad migration, a restore to just before it, then a drill.

    The server's OS user runs archive_command, so this part's repository lives beside the scratch cluster
    in the temp dir (owned by that user), and is removed at the end like the cluster.
    """
    try:
        binaries = find_binaries(need="postgres")
    except BackupctlError as exc:
        print(f"pitr     skipped: {exc}")
        return EXIT_OK
    cluster = ScratchCluster(binaries)
    root = cluster.base_dir / "demo"
    config = root / "backupctl.toml"
    cluster.settings.update({"wal_level": "replica", "archive_mode": "on", "max_wal_senders": "4",
                             "archive_command": archive_command(config, "shop")})
    restored: ScratchCluster | None = None
    try:
        cluster.init()
        root.mkdir()
        cluster.start()
        info = cluster.conninfo()
        config.write_text(
            f'[repository]\ntype = "local"\npath = "{root / "repo"}"\n\n[wal]\nspool_dir = "{root / "spool"}"\n\n'
            f'[sources.shop]\nkind = "postgres"\nhost = "{info["host"]}"\nport = {info["port"]}\n'
            f'user = "{info["user"]}"\npgdata = "{cluster.datadir}"\nbindir = "{binaries.bindir}"\n'
        )
        if cluster.os_user is not None:
            shutil.chown(root, cluster.os_user)
            shutil.chown(config, cluster.os_user)
        print(f"pitr     postgres {binaries.version} on port {info['port']} archiving WAL with "
              f"`backupctl wal-push` (config {config})")
        _backupctl(config, "init")
        with cluster.connect() as conn:
            conn.execute(PG_SHOP)
        clock = time.monotonic()
        backup = json.loads(_backupctl(config, "backup", "shop", "--type", "full", "--output", "json"))
        print(f"backup   {backup['id']}: {backup['size'] / 2**20:.1f} MiB cluster -> "
              f"{backup['stored_size'] / 2**20:.2f} MiB stored in {time.monotonic() - clock:.2f}s")
        with cluster.connect() as conn:
            conn.execute("INSERT INTO orders (customer_id, total, placed) "
                         "SELECT g % 20000 + 1, g, now() FROM generate_series(1, 5000) g")
            good = conn.execute("SELECT count(*), sum(total) FROM orders").fetchone()
            before = conn.execute("SELECT now()").fetchone()[0]
            time.sleep(1.0)
            conn.execute("DROP TABLE orders CASCADE")  # the bad migration
        _backupctl(config, "wal", "check", "shop")
        print(f"oops     a bad migration dropped table orders 1s after {before:%H:%M:%S.%f}; "
              f"{good[0]} orders were committed before it")

        target = root / "restored"
        clock = time.monotonic()
        _backupctl(config, "restore", "shop", "--pgdata", str(target), "--target-time", before.isoformat(),
                   "--target-action", "promote")
        restored = ScratchCluster.adopt(binaries, target, remove_datadir=True, settings={"archive_mode": "off"})
        restored.start(timeout=120)
        with restored.connect() as conn:
            _wait_promoted(conn)
            got = conn.execute("SELECT count(*), sum(total) FROM orders").fetchone()
        print(f"restore  --target-time {before.isoformat()} and replay in {time.monotonic() - clock:.2f}s: "
              f"{got[0]} orders back")
        drill = json.loads(_backupctl(config, "drill", "run", "shop", "--target-time", before.isoformat(),
                                      "--output", "json"))
        print(f"drill    {drill['status']}: " + ", ".join(c["name"] for c in drill["checks"])
              + f"; RTO {drill['rto_seconds']:.1f}s")
        if got != good or drill["status"] != "passed":
            print("RESULT   FAILED: the restored cluster does not hold the orders committed before the DROP")
            return EXIT_FAILED
        print("RESULT   OK: every order committed before the bad migration is back, and the drill passed")
        return EXIT_OK
    finally:
        if restored is not None:
            restored.remove()
        cluster.remove()


def _wait_promoted(conn: Any) -> None:
    deadline = time.monotonic() + 120
    while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        if time.monotonic() > deadline:
            raise SystemExit("demo: the restored server did not reach its target within 2 minutes")
        time.sleep(0.2)


def _pg_rows(cluster: ScratchCluster, dbname: str, relation: str) -> list[tuple]:
    with cluster.connect(dbname) as conn:
        return conn.execute(f"SELECT * FROM {relation} ORDER BY 1").fetchall()


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    config = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "config" / "dev.toml"
    sys.exit(run(config, root / ".demo"))


if __name__ == "__main__":
    main()
