"""Full backups that read the data directory directly (``engines.pg_filecopy``) hold what pg_basebackup would.

The walk follows the server's exclusion rules on a tree made to look like a data directory; a real
cluster backed up while a writer commits rows and a second session holds a temporary table restores to
exactly the committed rows, with its unlogged table empty, and ``pg_verifybackup`` accepts the manifest
backupctl wrote; a pgdata that is not the server's falls back to pg_basebackup.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import psycopg

from backupctl.engines.pg_filecopy import unusable_reason
from backupctl.engines.pg_physical import ServerFacts
from backupctl.postgres.connection import ConnParams
from backupctl.postgres.datadir import walk
from backupctl.postgres.tarstream import DIRECTORY, FILE
from backupctl.postgres.tools import run_tool
from tests.support.cli import CliRunner, backup_id
from tests.support.pg_site import Site, restore_and_start


def _tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_the_walk_keeps_what_the_server_keeps(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _tree(root, {
        "PG_VERSION": b"15\n", "postgresql.auto.conf": b"", "postmaster.pid": b"1", "postmaster.opts": b"x",
        "backup_label": b"old", "backup_manifest": b"old", "postgresql.auto.conf.tmp": b"",
        "global/pg_control": b"c", "global/1260": b"r", "global/pg_internal.init": b"cache",
        "base/5/16384": b"a", "base/5/16384_vm": b"v", "base/5/16390": b"u", "base/5/16390_init": b"i",
        "base/5/16390_fsm": b"f", "base/5/16390.1": b"u2", "base/5/t3_16400": b"temp",
        "base/5/pg_internal.init.123": b"cache", "base/pgsql_tmp/pgsql_tmp1.0": b"spill",
        "pg_wal/000000010000000000000001": b"wal", "pg_wal/archive_status/000000010000000000000001.ready": b"",
        "pg_stat_tmp/global.stat": b"s", "pg_replslot/slot/state": b"s", "pg_subtrans/0000": b"s",
        "pg_tblspc/.keep": b"",
    })
    (root / "pg_tblspc" / "16500").symlink_to(tmp_path)
    os.mkfifo(root / "a_fifo")
    entries = list(walk(str(root)))
    files = [e.name.decode() for e in entries if e.kind == FILE]
    directories = {e.name.decode() for e in entries if e.kind == DIRECTORY}
    assert sorted(files) == sorted(["PG_VERSION", "postgresql.auto.conf", "global/1260", "base/5/16384",
                                    "base/5/16384_vm", "base/5/16390_init", "global/pg_control"])
    assert files[-1] == "global/pg_control"  # copied last, as the server sends it
    assert {"pg_wal", "pg_wal/archive_status", "pg_stat_tmp", "pg_replslot", "pg_subtrans", "pg_tblspc",
            "base", "base/5", "global"} <= directories
    assert not {"base/pgsql_tmp", "pg_replslot/slot", "pg_tblspc/16500"} & directories
    for index, entry in enumerate(entries):  # every directory comes before what it holds
        parent = entry.name.rpartition(b"/")[0]
        assert not parent or parent in {e.name for e in entries[:index] if e.kind == DIRECTORY}, entry.name


def test_a_pgdata_that_is_not_the_servers_is_not_read(tmp_path: Path) -> None:
    facts = ServerFacts(version_num=150000, system_identifier="1", segment_size=16 * 1024**2,
                        data_directory="/var/lib/postgresql/15/main", config_files={}, tablespaces={}, databases={},
                        archive_mode="on", summarize_wal=False, catalog_version=202209061)
    params = ConnParams(host="127.0.0.1", port=1)
    assert "is not the server's data directory" in (unusable_reason(params, facts, str(tmp_path)) or "")
    assert "no pgdata" in (unusable_reason(params, facts, None) or "")
    older = ServerFacts(**{**facts.__dict__, "version_num": 140000})
    assert "has no pg_backup_start" in (unusable_reason(params, older, facts.data_directory) or "")
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes((2).to_bytes(8, "little") + bytes(100))
    here = ServerFacts(**{**facts.__dict__, "data_directory": str(tmp_path)})
    assert "belongs to system 2" in (unusable_reason(params, here, str(tmp_path)) or "")


def _writer(site: Site, stop: threading.Event, done: list[int]) -> None:
    """Commits one row at a time until told to stop; ``done`` gets the ids that were committed."""
    with psycopg.connect(**site.cluster.conninfo(), autocommit=True) as conn:
        number = 0
        while not stop.is_set():
            number += 1
            conn.execute("INSERT INTO ledger VALUES (%s, repeat('x', 500))", (number,))
            done.append(number)


def test_a_backup_taken_under_writes_restores_every_committed_row(site: Site, cli: CliRunner) -> None:
    assert cli(site.config, "init").code == 0
    site.sql("CREATE TABLE ledger (id int PRIMARY KEY, body text)")
    site.sql("CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 1000) g")
    site.sql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, 200000) g")
    holder = psycopg.connect(**site.cluster.conninfo(), autocommit=True)
    holder.execute("CREATE TEMP TABLE mine AS SELECT g FROM generate_series(1, 1000) g")  # a t<backend>_ file
    stop, done = threading.Event(), []
    writer = threading.Thread(target=_writer, args=(site, stop, done))
    writer.start()
    try:
        result = cli(site.config, "backup", "main", "--type", "full", "-o", "json")
    finally:
        stop.set()
        writer.join()
        holder.close()
    bid = backup_id(result)
    shown = json.loads(cli(site.config, "show", bid, "-o", "json").stdout)
    assert shown["extra"]["copied_by"] == "backupctl"
    assert len(done) > 10, "the writer committed rows while the backup ran"
    site.archived_now(cli)
    restored, plan = restore_and_start(site, cli, "copied")
    try:
        assert plan["backup"] == bid
        query = "SELECT count(*), md5(string_agg(t, ',' ORDER BY id)) FROM bulk"
        with restored.connect() as conn:
            assert conn.execute("SELECT count(*), max(id) FROM ledger").fetchone() == (len(done), done[-1])
            assert conn.execute("SELECT count(*) FROM scratch").fetchone()[0] == 0  # unlogged: reset at start
            assert conn.execute(query).fetchone() == site.sql(query)[0]
    finally:
        restored.remove()
    checked = site.restore_dir("checked")
    first = cli(site.config, "restore", "main", "--pgdata", str(checked), "--target", "immediate")
    assert first.code == 0, first.stderr
    run_tool([site.cluster.binaries.path("pg_verifybackup"), "--no-parse-wal", str(checked)], dict(os.environ),
             "pg_verifybackup")


def test_a_file_the_servers_user_cannot_read_fails_the_backup_in_one_line(site: Site, cli: CliRunner) -> None:
    assert cli(site.config, "init").code == 0
    stray = site.cluster.datadir / "left_by_root.conf"
    stray.write_text("secret")
    stray.chmod(0o600)  # owned by root: the backup runs as the data directory's owner
    try:
        result = cli(site.config, "backup", "main", "--type", "full")
    finally:
        stray.unlink()
    assert result.code == 1
    assert result.error_line == (f"backupctl: error: cannot read {stray} as OS user postgres: Permission denied; "
                                 "the backup is not taken: give it to the server's OS user or remove it (the "
                                 "server cannot back it up either)")
    assert json.loads(cli(site.config, "list", "main", "-o", "json").stdout) == []
