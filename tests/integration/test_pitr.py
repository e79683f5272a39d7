"""Physical backups, WAL archiving through the real archive_command, and point-in-time restores.

Each test runs a PostgreSQL cluster of each major whose archive_command is backupctl's own wal-push,
takes a full backup, writes marked data, and restores to a point, checking the rows that came back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from backupctl.postgres.cluster import ScratchCluster
from tests.support.cli import CliRunner, backup_id
from tests.support.pg_site import Site, batches, chown_to_postgres, init_and_backup, restore_and_start


def test_pitr_to_time_lsn_name_and_immediate(site: Site, cli: CliRunner) -> None:
    bid = init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) SELECT g, 'a' FROM generate_series(1, 100) g")
    lsn_after_a = site.sql("SELECT pg_current_wal_lsn()::text")[0][0]
    site.sql("SELECT pg_create_restore_point('after_a')")
    time.sleep(1.1)
    between = site.sql("SELECT now()::text")[0][0]
    time.sleep(1.1)
    site.sql("INSERT INTO marks (id, batch) SELECT g, 'b' FROM generate_series(101, 200) g")
    site.archived_now(cli)

    for name, target, expected in (
        ("by_time", ("--target-time", between), ["a"]),
        ("by_lsn", ("--target-lsn", lsn_after_a), ["a"]),
        ("by_name", ("--target-name", "after_a"), ["a"]),
        ("immediate", ("--target", "immediate"), []),
        ("to_end", (), ["a", "b"]),
    ):
        restored, plan = restore_and_start(site, cli, name, *target)
        try:
            assert plan["backup"] == bid
            assert batches(restored) == expected, name
        finally:
            restored.remove()


def test_promoted_restore_archives_a_new_timeline(site: Site, cli: CliRunner) -> None:
    init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    site.archived_now(cli)
    restored, _ = restore_and_start(site, cli, "branch", archive=True)
    try:
        with restored.connect() as conn:
            current = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            assert current.startswith("00000002"), f"promotion should start timeline 2, writes {current}"
            conn.execute("INSERT INTO marks (id, batch) VALUES (2, 'c')")
            conn.execute("SELECT pg_switch_wal()")
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        # The promoted copy archives timeline 2 into the same source; wait until it is there.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = json.loads(cli(site.config, "wal", "status", "main", "-o", "json").stdout)
            if any(row.get("timeline") == 2 for row in status):
                break
            time.sleep(0.5)
        with restored.connect() as conn:
            marker = conn.execute("SELECT now()::text").fetchone()[0]
            time.sleep(1.1)
            conn.execute("INSERT INTO marks (id, batch) VALUES (3, 'd')")  # a commit after the target
            conn.execute("SELECT pg_switch_wal()")
    finally:
        restored.stop()  # a clean shutdown archives what is left
    again, plan = restore_and_start(site, cli, "timeline2", "--target-time", marker)
    try:
        assert plan["timeline"] == 2
        assert batches(again) == ["a", "c"]
    finally:
        again.remove()
        restored.remove()


def test_missing_wal_is_refused_before_download(site: Site, cli: CliRunner) -> None:
    bid = init_and_backup(site, cli)
    for batch in ("a", "b", "c"):
        site.sql(f"INSERT INTO marks (id, batch) VALUES ({ord(batch)}, '{batch}')")
        site.archived_now(cli)
    plan = json.loads(cli(site.config, "restore", "main", "--dry-run", "-o", "json").stdout)
    assert plan["backup"] == bid and plan["wal_segments"] >= 3
    repo = site.root / "repo" / "main" / "wal"
    segments = sorted(p for p in repo.rglob("*") if p.is_file() and len(p.name.split("-")[0]) == 24
                      and not p.name.split("-")[0].endswith("backup"))
    victim = segments[len(segments) // 2]
    victim.unlink()
    pgdata = site.restore_dir("gap")
    refused = cli(site.config, "restore", "main", "--pgdata", str(pgdata))
    assert refused.code == 1 and "is missing from the archive" in refused.error_line
    assert victim.name.split("-")[0] in refused.error_line
    assert not pgdata.exists()


def test_restore_refuses_a_live_or_non_empty_data_directory(site: Site, cli: CliRunner) -> None:
    init_and_backup(site, cli)
    site.archived_now(cli)
    live = cli(site.config, "restore", "main", "--pgdata", str(site.cluster.datadir), "--force")
    assert live.code == 1 and "is running on" in live.error_line
    busy = site.restore_dir("busy")
    busy.mkdir()
    (busy / "precious").write_text("keep me")
    chown_to_postgres(busy)
    refused = cli(site.config, "restore", "main", "--pgdata", str(busy))
    assert refused.code == 2 and "--force" in refused.error_line
    assert (busy / "precious").read_text() == "keep me"


def test_incremental_chain(site: Site, cli: CliRunner) -> None:
    """PostgreSQL 17+: full + two incrementals, restored through pg_combinebackup; refused on older majors."""
    if site.cluster.binaries.major < 17:
        assert cli(site.config, "init").code == 0
        refused = cli(site.config, "backup", "main", "--type", "incr")
        assert refused.code == 2 and "needs PostgreSQL 17 or newer" in refused.error_line
        return
    site.sql("ALTER SYSTEM SET summarize_wal = on")
    site.sql("SELECT pg_reload_conf()")
    full = init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) SELECT g, 'a' FROM generate_series(1, 1000) g")
    first = backup_id(cli(site.config, "backup", "main", "--type", "incr", "-o", "json"))
    site.sql("INSERT INTO marks (id, batch) SELECT g, 'b' FROM generate_series(1001, 2000) g")
    second = backup_id(cli(site.config, "backup", "main", "--type", "incr", "-o", "json"))
    shown = json.loads(cli(site.config, "show", second, "-o", "json").stdout)
    assert shown["parent"] == first
    assert json.loads(cli(site.config, "show", first, "-o", "json").stdout)["parent"] == full
    full_size = json.loads(cli(site.config, "show", full, "-o", "json").stdout)["totals"]["size"]
    assert shown["totals"]["size"] < full_size
    restored, plan = restore_and_start(site, cli, "chain", "--target", "immediate")
    try:
        assert plan["backup"] == second and plan["backup_type"] == "incr"
        assert batches(restored) == ["a", "b"]
    finally:
        restored.remove()


PG15 = pytest.mark.parametrize("pg_binaries", [15], indirect=True)


def _split_small(site: Site, copy: str = "auto") -> None:
    """Store archives in parts of 1 MiB (the default is 256 MiB), so a small test cluster has many; ``copy``
    is the source's setting (auto: the data directory is read directly; pg_basebackup streams it)."""
    text = site.config.read_text()
    settings = f'[sources.main]\nsplit_size = "1MiB"\ncopy = "{copy}"\n'
    site.config.write_text(text.replace("[sources.main]\n", settings, 1))


def _parts(site: Site, bid: str, archive: str = "base") -> list[Path]:
    return sorted((site.root / "repo" / "main" / "backups" / bid / archive).glob("*.tar.zst"))


def _digest(cluster: ScratchCluster, query: str) -> Any:
    with cluster.connect() as conn:
        return conn.execute(query).fetchone()


@PG15
def test_delta_restore_rewrites_only_what_changed(site: Site, cli: CliRunner) -> None:
    _split_small(site)
    assert cli(site.config, "init").code == 0
    site.sql("CREATE TABLE marks (id int PRIMARY KEY, batch text NOT NULL)")
    site.sql("INSERT INTO marks SELECT g, 'a' FROM generate_series(1, 100) g")
    site.sql("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, 100000) g")
    site.sql("CREATE TABLE small AS SELECT g AS id FROM generate_series(1, 1000) g")
    site.sql("VACUUM (FREEZE) big, small")  # hint bits set: reading them later dirties no page
    big, small = site.sql("SELECT pg_relation_filepath('big'), pg_relation_filepath('small')")[0]
    bid = backup_id(cli(site.config, "backup", "main", "--type", "full", "-o", "json"))
    assert len(_parts(site, bid)) > 3
    site.archived_now(cli)
    pgdata = site.restore_dir("copy")
    target = ("--target", "immediate", "--target-action", "promote", "-o", "json")
    assert cli(site.config, "restore", "main", "--pgdata", str(pgdata), *target).code == 0

    copy = site.start_restored(pgdata, remove_datadir=False, archive_mode="off")
    try:
        with copy.connect() as conn:
            conn.execute("UPDATE marks SET batch = 'changed' WHERE id <= 10")
            conn.execute("DELETE FROM marks WHERE id > 90")
            conn.execute("CHECKPOINT")
    finally:
        copy.remove()  # stops it; the data directory stays
    (pgdata / small).unlink()
    os.utime(pgdata / big, (1_000_000_000, 1_000_000_000))  # a rewrite would bring the archive's time back
    inode = (pgdata / big).stat().st_ino

    live = cli(site.config, "restore", "main", "--pgdata", str(site.cluster.datadir), "--delta")
    assert live.code == 1 and "is running on" in live.error_line
    result = cli(site.config, "restore", "main", "--pgdata", str(pgdata), "--delta", *target)
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backup"] == bid
    assert report["reused_bytes"] >= (pgdata / big).stat().st_size and report["reused_files"] > 100
    assert (pgdata / big).stat().st_mtime == 1_000_000_000 and (pgdata / big).stat().st_ino == inode
    assert (pgdata / small).exists()
    assert not (pgdata / "pg_wal" / "00000002.history").exists()  # the copy's own timeline is gone

    again = site.start_restored(pgdata, archive_mode="off")
    try:
        for query in ("SELECT string_agg(id || batch, ',' ORDER BY id) FROM marks",
                      "SELECT count(*), md5(string_agg(t, ',' ORDER BY id)) FROM big",
                      "SELECT count(*), sum(id) FROM small"):
            assert _digest(again, query) == _digest(site.cluster, query), query
    finally:
        again.remove()


@PG15
@pytest.mark.parametrize("copy", ["auto", "pg_basebackup"])
def test_tablespace_is_backed_up_and_restored_elsewhere(site: Site, cli: CliRunner, copy: str) -> None:
    """Extra tablespaces are archives of their own (read directly, or through pg_basebackup's FIFOs);
    restore puts one where --tablespace says."""
    _split_small(site, copy)
    assert cli(site.config, "init").code == 0
    space = site.root / "space"
    space.mkdir()
    shutil.chown(space, "postgres", "postgres")
    site.sql(f"CREATE TABLESPACE extra LOCATION '{space}'")
    site.sql("CREATE TABLE far TABLESPACE extra AS SELECT g AS id, md5(g::text) AS t "
             "FROM generate_series(1, 50000) g")
    site.sql("CREATE INDEX far_t ON far (t) TABLESPACE extra")  # a second file: a second part
    oid = site.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'")[0][0]
    backed_up = cli(site.config, "backup", "main", "--type", "full", "-o", "json")
    bid = backup_id(backed_up)
    assert len(_parts(site, bid, f"tablespaces/{oid}")) > 1
    shown = cli(site.config, "show", bid, "-o", "json")
    assert json.loads(shown.stdout)["extra"]["copied_by"] == ("backupctl" if copy == "auto" else "pg_basebackup")
    site.archived_now(cli)
    elsewhere = site.root / "space-restored"
    restored, plan = restore_and_start(site, cli, "with_space", "--target", "immediate",
                                       "--tablespace", f"{oid}={elsewhere}")
    try:
        assert plan["backup"] == bid
        assert os.readlink(restored.datadir / "pg_tblspc" / str(oid)) == str(elsewhere)
        query = "SELECT count(*), md5(string_agg(t, ',' ORDER BY id)) FROM far"
        assert _digest(restored, query) == _digest(site.cluster, query)
        assert any(elsewhere.rglob("*")) and not (restored.datadir / "tablespace_map").exists()
    finally:
        restored.remove()
    # --delta removes what the backup does not have: never in a tablespace directory that holds other files.
    again = site.root / "again"
    first = cli(site.config, "restore", "main", "--pgdata", str(again), "--target", "immediate",
                "--tablespace", f"{oid}={site.root / 'space-again'}")
    assert first.code == 0, first.stderr
    notes = site.root / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    shutil.chown(notes, "postgres", "postgres")
    refused = cli(site.config, "restore", "main", "--pgdata", str(again), "--delta", "--target", "immediate",
                  "--tablespace", f"{oid}={notes}")
    assert refused.code == 2 and f"tablespace directory {notes} holds keep.txt" in refused.error_line, refused.stderr
    assert (notes / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("pg_binaries", [18], indirect=True)
def test_incremental_chain_with_a_tablespace(site: Site, cli: CliRunner) -> None:
    """A chain whose tablespace changed between its backups: each backup's tablespace is staged beside it
    (never where production keeps it) and pg_combinebackup writes the result where --tablespace says."""
    site.sql("ALTER SYSTEM SET summarize_wal = on")
    site.sql("SELECT pg_reload_conf()")
    space = site.root / "space"
    space.mkdir()
    shutil.chown(space, "postgres", "postgres")
    site.sql(f"CREATE TABLESPACE extra LOCATION '{space}'")
    site.sql("CREATE TABLE far (id int PRIMARY KEY, t text) TABLESPACE extra")
    site.sql("INSERT INTO far SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    init_and_backup(site, cli)
    site.sql("INSERT INTO far SELECT g, md5(g::text) FROM generate_series(20001, 30000) g")
    incr = backup_id(cli(site.config, "backup", "main", "--type", "incr", "-o", "json"))
    oid = site.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'")[0][0]
    before = sorted(space.rglob("*"))
    site.archived_now(cli)
    elsewhere = site.root / "space-restored"
    restored, plan = restore_and_start(site, cli, "chain_space", "--target", "immediate",
                                       "--tablespace", f"{oid}={elsewhere}")
    try:
        assert plan["backup"] == incr and plan["backup_type"] == "incr"
        assert os.readlink(restored.datadir / "pg_tblspc" / str(oid)) == str(elsewhere)
        query = "SELECT count(*), md5(string_agg(t, ',' ORDER BY id)) FROM far"
        assert _digest(restored, query) == _digest(site.cluster, query)
        assert _digest(restored, query)[0] == 30000
        assert sorted(space.rglob("*")) == before, "nothing was staged in production's tablespace"
    finally:
        restored.remove()
