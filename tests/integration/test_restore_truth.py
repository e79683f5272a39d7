"""Physical restores that tell the truth (issue 11, points 1-3): a copy does not archive into production,
`restore --start` succeeds only when the server reached the plan's end in the state asked for, and
--force/--delta delete only inside a PostgreSQL data directory.

Each test runs the real CLI against a real cluster that archives through backupctl (see test_pitr's site).
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from backupctl.postgres.backup_manifest import RESTORE_MARKER
from backupctl.postgres.cluster import ScratchCluster
from tests.support.cli import CliRunner
from tests.support.pg_site import Site, chown_to_postgres, init_and_backup
from tests.support.s3_servers import free_port


def _effective(site: Site, pgdata: Path, name: str) -> str:
    """What a server started on ``pgdata`` would use for ``name`` (postgres -C reads every config file)."""
    postgres = str(site.cluster.binaries.path("postgres"))
    return subprocess.run(["runuser", "-u", "postgres", "--", postgres, "-C", name, "-D", str(pgdata)],
                          capture_output=True, text=True, check=True).stdout.strip()


def _stop_copy(site: Site, pgdata: Path) -> None:
    """Stop a server `restore --start` left running (the site's directory is removed afterwards)."""
    if (pgdata / "postmaster.pid").exists():
        ScratchCluster.adopt(site.cluster.binaries, pgdata).stop()


def _rows(recovery: dict[str, Any], site: Site) -> str:
    """The restored rows, read with the psql line `restore --start` printed (psql of the site's major)."""
    psql = [str(site.cluster.binaries.path("psql")), *shlex.split(recovery["psql"])[1:]]
    return subprocess.run([*psql, "-At", "-c", "SELECT string_agg(batch, ',' ORDER BY id) FROM marks"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _archive_in_backup(site: Site) -> None:
    """Production's archive settings in its own config files (ALTER SYSTEM), so a backup carries them."""
    site.sql("ALTER SYSTEM SET archive_mode = on")
    site.sql(f"ALTER SYSTEM SET archive_command = '{site.settings['archive_command']}'")


def _segments(site: Site) -> list[Path]:
    """The stored WAL segment objects, oldest first."""
    root = site.root / "repo" / "main" / "wal"
    return sorted(p for p in root.rglob("*") if p.is_file() and len(p.name.split("-")[0].split(".")[0]) == 24
                  and not p.name.split(".")[0].endswith("backup"))


def test_a_copy_does_not_archive_unless_asked_and_production_restored_in_place_does(site: Site,
                                                                                   cli: CliRunner) -> None:
    _archive_in_backup(site)
    init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    site.archived_now(cli)

    copy = site.restore_dir("copy")
    result = cli(site.config, "restore", "main", "--pgdata", str(copy), "-o", "json")
    assert result.code == 0, result.stderr
    archiving = json.loads(result.stdout)["archiving"]
    assert archiving["state"] == "off" and "--archive" in archiving["reason"], archiving
    assert _effective(site, copy, "archive_mode") == "off"
    text = cli(site.config, "restore", "main", "--pgdata", str(site.restore_dir("copy_text")))
    assert "archiving:    off (a copy beside production: archive_mode = off written" in text.stdout, text.stdout

    kept = site.restore_dir("kept")
    result = cli(site.config, "restore", "main", "--pgdata", str(kept), "--archive", "-o", "json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["archiving"]["state"] == "on"
    assert _effective(site, kept, "archive_mode") == "on"

    # The real disaster recovery: into the source's own pgdata (named through a symlink), archiving stays on.
    site.cluster.stop()
    alias = site.root / "pgdata-link"
    alias.symlink_to(site.cluster.datadir)
    result = cli(site.config, "restore", "main", "--pgdata", str(alias), "--force", "-o", "json")
    assert result.code == 0, result.stderr
    archiving = json.loads(result.stdout)["archiving"]
    assert archiving["state"] == "on" and "own pgdata" in archiving["reason"], archiving
    assert _effective(site, site.cluster.datadir, "archive_mode") == "on"
    site.cluster.start(timeout=120)
    while site.sql("SELECT pg_is_in_recovery()")[0][0]:
        time.sleep(0.2)
    assert site.sql("SELECT batch FROM marks") == [("a",)]


def test_restore_start_fails_quoting_postgres_when_an_archived_segment_is_damaged(site: Site,
                                                                                   cli: CliRunner) -> None:
    # Production logs through the logging collector (RHEL's default): the copy's FATAL must still be quoted.
    site.sql("ALTER SYSTEM SET logging_collector = on")
    init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    site.archived_now(cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (2, 'b')")
    site.archived_now(cli)
    victim = _segments(site)[-1]  # the newest segment, well past the backup's end
    original = victim.read_bytes()
    victim.write_bytes(original[:100] + bytes(b ^ 0xFF for b in original[100:200]) + original[200:])

    copy = site.restore_dir("copy")
    args = ("restore", "main", "--pgdata", str(copy), "--start", "--port", str(free_port()), "-o", "json")
    failed = cli(site.config, *args)
    try:
        assert failed.code == 1, failed.stdout + failed.stderr
        assert "FATAL: could not restore file" in failed.error_line, failed.error_line
        assert victim.name.split("-")[0].split(".")[0] in failed.error_line
        assert f"run the restore again: backupctl --config {site.config} {shlex.join(args)} --delta" \
            in failed.error_line, failed.error_line
        assert not (copy / "postmaster.pid").exists() and (copy / "PG_VERSION").exists()
        # The retry the error names works once the segment is whole again.
        victim.write_bytes(original)
        retried = cli(site.config, *args, "--delta")
        assert retried.code == 0, retried.stderr
        recovery = json.loads(retried.stdout)["recovery"]
        assert recovery["state"] == "promoted", recovery
        assert _rows(recovery, site) == "a,b"
    finally:
        _stop_copy(site, copy)


def test_restore_start_fails_when_the_target_xid_never_comes(site: Site, cli: CliRunner) -> None:
    init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    never = int(site.sql("SELECT txid_current()")[0][0]) + 1000
    site.archived_now(cli)
    copy = site.restore_dir("copy")
    failed = cli(site.config, "restore", "main", "--pgdata", str(copy), "--target-xid", str(never),
                 "--target-action", "promote", "--start", "--port", str(free_port()))
    try:
        assert failed.code == 1, failed.stdout + failed.stderr
        assert "FATAL: recovery ended before configured recovery target was reached" in failed.error_line, \
            failed.error_line
        assert not (copy / "postmaster.pid").exists()
    finally:
        _stop_copy(site, copy)


def test_promoted_restore_reports_the_last_replayed_commit_and_moves_off_a_taken_port(site: Site,
                                                                                      cli: CliRunner) -> None:
    site.sql(f"ALTER SYSTEM SET port = {site.cluster.port}")  # the copy's config names production's port
    init_and_backup(site, cli)
    with site.cluster.connect() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO marks (id, batch) VALUES (1, 'a')")
            before_commit = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        after_commit = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(1.1)
    target = site.sql("SELECT now()::text")[0][0]
    time.sleep(1.1)
    site.sql("INSERT INTO marks (id, batch) VALUES (2, 'b')")
    site.archived_now(cli)

    copy = site.restore_dir("copy")
    result = cli(site.config, "restore", "main", "--pgdata", str(copy), "--target-time", target,
                 "--target-action", "promote", "--start", "-o", "json")
    try:
        assert result.code == 0, result.stderr
        recovery = json.loads(result.stdout)["recovery"]
        assert recovery["state"] == "promoted"
        assert recovery["timeline"] == 1 and recovery["promoted_timeline"] == 2, recovery
        last = datetime.fromisoformat(recovery["last_replayed_commit"])
        assert before_commit <= last <= after_commit, (before_commit, last, after_commit)
        assert recovery["port"] != site.cluster.port
        assert recovery["notes"] == [f"port {site.cluster.port} of the restored configuration is in use: the "
                                     f"server was started on {recovery['port']}"]
        assert _rows(recovery, site) == "a"
    finally:
        _stop_copy(site, copy)


def test_restore_start_refuses_a_taken_port_before_downloading(site: Site, cli: CliRunner) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        copy = site.restore_dir("copy")
        refused = cli(site.config, "restore", "main", "--pgdata", str(copy), "--start", "--port", str(port))
    assert refused.code == 2
    assert refused.error_line == (f"backupctl: error: --port {port} is in use: pick a free port for the restored "
                                  "server (or leave --port out and a free one is chosen when the configured port "
                                  "is taken)")
    assert not copy.exists()


def test_force_and_delta_touch_only_a_data_directory(site: Site, cli: CliRunner) -> None:
    init_and_backup(site, cli)
    site.archived_now(cli)

    def refused(pgdata: Path, *options: str) -> str:
        result = cli(site.config, "restore", "main", "--pgdata", str(pgdata), *options)
        assert result.code == 2, result.stdout + result.stderr
        return result.error_line.removeprefix("backupctl: error: ")

    important = site.root / "important"
    important.mkdir()
    (important / "notes.txt").write_text("keep me")
    chown_to_postgres(important)
    assert refused(important, "--force") == (
        f"--force refused: {important} is not a PostgreSQL data directory (no PG_VERSION and global/, no "
        f"{RESTORE_MARKER} of an interrupted restore), so its files stay: restore into an empty or new directory")
    assert refused(important, "--delta").startswith(f"--delta refused: {important} is not a PostgreSQL data")
    assert (important / "notes.txt").read_text() == "keep me"

    # A data directory with another cluster inside: --delta would delete the other cluster's files.
    outer = site.root / "outer"
    shutil.copytree(site.cluster.datadir, outer, ignore=shutil.ignore_patterns("postmaster.pid"))
    shutil.copytree(site.cluster.datadir, outer / "old", ignore=shutil.ignore_patterns("postmaster.pid"))
    chown_to_postgres(outer)
    assert refused(outer, "--delta") == (f"--delta refused: {outer} holds another PostgreSQL cluster in "
                                         f"{outer / 'old'}: move it out or restore elsewhere")
    assert (outer / "old" / "global" / "pg_control").exists() and (outer / "old" / "PG_VERSION").exists()

    afile = site.root / "afile"
    afile.write_text("not a directory")
    assert refused(afile, "--force") == f"--pgdata {afile} is a file, not a directory: give the data directory to " \
                                        "restore into"
    missing = site.root / "no" / "such"
    assert refused(missing) == (f"--pgdata {missing}: its parent directory {missing.parent} does not exist: create "
                                "it (owned by the server's OS user) or fix the path")
    closed = site.root / "closed"
    closed.mkdir(mode=0o700)  # root's: the restore runs as postgres
    assert refused(closed / "data") == (f"--pgdata {closed / 'data'}: user postgres cannot read {closed / 'data'} "
                                        "(Permission denied): pick a directory postgres can use")
    assert refused(Path("/var/lib/postgresql"), "--force") == (
        "--force refuses to restore into the home directory /var/lib/postgresql: give a data directory")
    assert refused(Path("/"), "--delta") == "--delta refuses to restore into /: give the data directory itself"

    # What an interrupted restore left (its marker, no PG_VERSION yet) is replaced by --force.
    interrupted = site.root / "interrupted"
    (interrupted / "base" / "1").mkdir(parents=True)
    (interrupted / "base" / "1" / "1259").write_bytes(b"half")
    (interrupted / RESTORE_MARKER).write_text("backupctl restore")
    chown_to_postgres(interrupted)
    again = cli(site.config, "restore", "main", "--pgdata", str(interrupted), "--force", "--target", "immediate")
    assert again.code == 0, again.stderr
    assert (interrupted / "PG_VERSION").exists() and not (interrupted / RESTORE_MARKER).exists()


def test_restore_start_reports_a_pause_and_a_shutdown_at_the_target(site: Site, cli: CliRunner) -> None:
    init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    site.sql("SELECT pg_create_restore_point('after_a')")
    site.sql("INSERT INTO marks (id, batch) VALUES (2, 'b')")
    site.archived_now(cli)

    paused = site.restore_dir("paused")
    result = cli(site.config, "restore", "main", "--pgdata", str(paused), "--target-name", "after_a", "--start",
                 "--port", str(free_port()), "-o", "json")
    try:
        assert result.code == 0, result.stderr
        recovery = json.loads(result.stdout)["recovery"]
        assert recovery["state"] == "paused at the target" and recovery["timeline"] == 1, recovery
        assert _rows(recovery, site) == "a"
    finally:
        _stop_copy(site, paused)

    stopped = site.restore_dir("stopped")
    result = cli(site.config, "restore", "main", "--pgdata", str(stopped), "--target-name", "after_a",
                 "--target-action", "shutdown", "--start", "--port", str(free_port()))
    assert result.code == 0, result.stderr
    assert "; server shut down at the target at " in result.stdout, result.stdout
    assert "connect:" not in result.stdout and not (stopped / "postmaster.pid").exists()
