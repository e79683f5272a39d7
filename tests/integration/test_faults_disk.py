"""Full disks and slow disks under the repository, the pusher's spool and the restore target.

Real filesystems that really fill up: a small tmpfs mounted where the data goes (the most faithful full disk;
``prlimit --fsize`` gives EFBIG, not ENOSPC, and spares the other files of the filesystem). Slow disks:
``strace -f -e inject=write:delay_enter=...`` delays every write of the command. Each case asserts the outcome:
the exit code, one error line, and what is stored or left behind; never a duration.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from psycopg import sql

from backupctl.core.errors import StorageError
from backupctl.postgres.backup_manifest import RESTORE_MARKER
from backupctl.postgres.cluster import ScratchCluster
from backupctl.storage.local import LocalStorage
from tests.support.backends import Backend
from tests.support.cli import CliRunner, Result, backup_id, cli_env
from tests.support.config import make_config
from tests.support.disks import fill, small_disk, spool_on_a_small_disk
from tests.support.pg_fixtures import PgDatabase, drop_database, pg_config, require_binaries
from tests.support.pg_site import QUICK_WAL, Site, alive, archiving_site, chown_to_postgres


def files(root: Path) -> set[str]:
    """Every regular file under ``root``, relative (the filler excluded)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "filler"}


def one_line_about_space(result: Result) -> str:
    """The command failed (exit 1) with one error line that names the full disk."""
    line = one_failure_line(result)
    assert "space" in line.lower(), line
    return line


def limited(config: Path, fsize: int, *args: str) -> Result:
    """backupctl with RLIMIT_FSIZE (``prlimit --fsize``): every write past ``fsize`` bytes of a file fails with
    EFBIG, after any free-space check passed; the mid-write failure, deterministically and without a mount."""
    argv = ["prlimit", f"--fsize={fsize}", sys.executable, "-m", "backupctl", "--config", str(config), *args]
    proc = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=300, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def one_failure_line(result: Result) -> str:
    """Exit 1 with one error line, no traceback."""
    assert result.code == 1, (result.code, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    return result.error_line


def _sqlite_source(tmp_path: Path, megabytes: int = 2) -> tuple[Path, str]:
    """A SQLite database of incompressible rows; (path, sha256 of its rows' content)."""
    db = tmp_path / "dev.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        conn.executemany("INSERT INTO t (payload) VALUES (?)", ((os.urandom(1024),) for _ in range(megabytes * 1024)))
    return db, _content(db)


def _content(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        digest = hashlib.sha256()
        for _, payload in conn.execute("SELECT id, payload FROM t ORDER BY id"):
            digest.update(payload)
        return digest.hexdigest()


# --- (a) the pusher's spool ----------------------------------------------------------------------------


def test_wal_fetch_with_a_full_spool_never_says_not_archived(request: pytest.FixtureRequest) -> None:
    """The spool (where the pusher prefetches) cannot hold a segment: fetches of archived files still succeed
    (or fail above 125, which stops recovery); never exit 1, which would end recovery early."""
    with archiving_site(require_binaries(15), request, wal={**QUICK_WAL, "prefetch": 4}) as site, \
            spool_on_a_small_disk(site) as mount:
        names = [site.switch(rows=500) for _ in range(4)]
        site.wait_archived(names[-1])
        fill(mount)
        dest = site.root / "fetched"
        dest.mkdir()
        chown_to_postgres(dest)
        for name in names:
            got = site.fetch(name, dest / "RECOVERYXLOG")
            assert got.code != 1, got.stderr
            if got.code == 0:
                key = site.wal_keys()[name]
                assert hashlib.sha256((dest / "RECOVERYXLOG").read_bytes()).hexdigest() in key
            else:
                assert got.code > 125 and not (dest / "RECOVERYXLOG").exists(), got.stderr
            (dest / "RECOVERYXLOG").unlink(missing_ok=True)


# --- (b) a local repository on a full disk -------------------------------------------------------------


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "pusher"])
def test_wal_push_into_a_full_repository_fails_and_stores_nothing(request: pytest.FixtureRequest,
                                                                  async_: bool) -> None:
    with archiving_site(require_binaries(15), request, wal={**QUICK_WAL, "async": async_, "timeout": 3}) as site:
        first = site.switch(rows=500)
        site.wait_archived(first)
        repo = Path(site.repository["path"])
        stored = site.root / "repo.before"
        repo.rename(stored)
        with small_disk(repo, "4m", owner="postgres"):
            subprocess.run(["cp", "-a", f"{stored}/.", str(repo)], check=True)
            filler = fill(repo)
            before = files(repo)
            # PostgreSQL's own retries pause (its archive_command fails without touching anything), so that
            # the push run by hand below is the only writer when the repository's files are compared.
            command = site.sql("SHOW archive_command")[0][0]
            _set_archive_command(site, "false")
            name = site.switch(rows=500)
            copy = site.segment_copy(name)
            # The command PostgreSQL runs, run by hand: one line, exit 1, nothing new in the repository.
            pushed = site.push(copy)
            one_line_about_space(pushed)
            # The pusher may be trying the .ready segment again on its own: compare once it has stopped.
            _stop_pusher(site)
            assert files(repo) == before, sorted(files(repo) ^ before)
            assert name not in site.wal_keys()
            # Space again: PostgreSQL's next try stores it, whole.
            filler.unlink()
            _set_archive_command(site, command)
            site.wait_archived(name, timeout=90)
            verify = site.cli("wal", "verify")
            assert verify.code == 0, verify.stdout + verify.stderr


def _stop_pusher(site: Site) -> None:
    """SIGTERM the resident pusher (if any) and wait until it has exited."""
    pid = site.pusher_pid()
    site.stop_pusher()
    deadline = time.monotonic() + 60
    while pid is not None and alive(pid):
        assert time.monotonic() < deadline, f"pusher {pid} still running 60 s after SIGTERM"
        time.sleep(0.05)


def _set_archive_command(site: Site, command: str) -> None:
    with site.cluster.connect() as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
        conn.execute("SELECT pg_reload_conf()")


@pytest.mark.parametrize("publish", ["commit", "commit_if_absent"])
def test_a_write_the_full_disk_refuses_at_commit_leaves_no_temp_file(tmp_path: Path, publish: str) -> None:
    """The tail of an object still buffered when the disk is full fails at commit (the flush): one StorageError,
    and the temp file goes too (closing it flushes again and fails again; it was left behind, seen with the
    pusher pushing a small segment into a full repository)."""
    with small_disk(tmp_path / "repo", "1m") as root:
        storage = LocalStorage(root)
        storage.open_write("wal/first").commit()  # the directory exists, so only the data needs space
        fill(root)
        writer = storage.open_write("wal/segment")
        writer.write(b"x" * 100)
        with pytest.raises(StorageError, match="no space left"):
            getattr(writer, publish)()
        assert files(root) == {"wal/first"}, sorted(files(root))


def test_backup_into_a_full_repository_fails_and_publishes_nothing(tmp_path: Path, cli: CliRunner) -> None:
    db, _ = _sqlite_source(tmp_path)
    backend = Backend("local", {"type": "local", "path": str(tmp_path / "repo")})
    with small_disk(tmp_path / "repo", "1m"):
        config = make_config(tmp_path, backend, db=db, compression="none")
        assert cli(config, "init").code == 0
        before = files(tmp_path / "repo")
        one_line_about_space(cli(config, "backup", "devdb", "-o", "json"))
        listed = cli(config, "list", "-o", "json")
        assert listed.code == 0 and json.loads(listed.stdout) == [], listed.stdout + listed.stderr
        # What the failed backup left: the source's registration and its released lease; no data object.
        new = files(tmp_path / "repo") - before
        leases = {name for name in new if name.startswith("devdb/locks/")}
        assert new - leases == {"devdb/source.json"}, sorted(new)
        for name in leases:
            assert json.loads((tmp_path / "repo" / name).read_text())["released"] is True


# --- (d) the restore target ------------------------------------------------------------------------------


def test_sqlite_restore_onto_a_full_disk_leaves_no_target(tmp_path: Path, cli: CliRunner,
                                                          local_backend: Backend) -> None:
    db, content = _sqlite_source(tmp_path)
    config = make_config(tmp_path, local_backend, db=db)
    assert cli(config, "init").code == 0
    made = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    with small_disk(tmp_path / "target", "1m") as target:
        one_line_about_space(cli(config, "restore", made, "--to", str(target / "restored.sqlite3")))
        assert files(target) == set(), sorted(files(target))
    # Space enough by statvfs, yet the write fails half-way (EFBIG past 1 MB): still no file, no temp.
    halfway = tmp_path / "halfway"
    halfway.mkdir()
    assert "too large" in one_failure_line(limited(config, 10**6, "restore", made, "--to", str(halfway / "r.db")))
    assert files(halfway) == set(), sorted(files(halfway))
    restored = tmp_path / "restored.sqlite3"
    assert cli(config, "restore", made, "--to", str(restored)).code == 0
    assert _content(restored) == content


# --- slow disk -------------------------------------------------------------------------------------------


def _slowly(config: Path, *args: str, delay_us: int = 20000) -> Result:
    """backupctl under strace, every write(2) delayed by ``delay_us`` before it runs."""
    argv = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=write,pwrite64",
            "-e", f"inject=write,pwrite64:delay_enter={delay_us}",
            sys.executable, "-m", "backupctl", "--config", str(config), *args]
    proc = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=300, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_slow_repository_writes_still_finish_correctly(tmp_path: Path, cli: CliRunner,
                                                       local_backend: Backend) -> None:
    db, content = _sqlite_source(tmp_path, megabytes=1)
    config = make_config(tmp_path, local_backend, db=db)
    assert cli(config, "init").code == 0
    made = backup_id(_slowly(config, "backup", "devdb", "-o", "json"))
    verified = _slowly(config, "verify", made)
    assert verified.code == 0, verified.stdout + verified.stderr
    restored = tmp_path / "restored.sqlite3"
    got = _slowly(config, "restore", made, "--to", str(restored))
    assert got.code == 0, got.stderr
    assert _content(restored) == content


# --- (c) the source's tmp_dir, where restore --jobs stages a dump ------------------------------------------


def test_logical_restore_with_a_full_tmp_dir_creates_nothing(tmp_path: Path, cli: CliRunner,
                                                            local_backend: Backend, pg_database: PgDatabase) -> None:
    cluster = pg_database.cluster
    with cluster.connect(pg_database.name) as conn:
        conn.execute("CREATE TABLE t AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS payload "
                     "FROM generate_series(1, 50000) g")
    with small_disk(tmp_path / "scratch", "1m") as scratch:
        config = pg_config(tmp_path, local_backend, cluster, tmp_dir=str(scratch))
        assert cli(config, "init").code == 0
        made = backup_id(cli(config, "backup", "main", "--database", pg_database.name, "-o", "json"))
        restored = f"{pg_database.name}_r"
        try:
            result = cli(config, "restore", made, "--database", pg_database.name, "--to-database", restored,
                         "--jobs", "2")
            one_line_about_space(result)
            assert files(scratch) == set(), sorted(files(scratch))
            assert not _database_exists(cluster, restored), "a failed restore left a database behind"
            # Room by statvfs, but the staged dump's writes fail half-way (EFBIG past 256 kB): the same outcome.
            subprocess.run(["mount", "-o", "remount,size=256m", str(scratch)], check=True)
            one_failure_line(limited(config, 256 * 1024, "restore", made, "--database", pg_database.name,
                                     "--to-database", restored, "--jobs", "2"))
            assert files(scratch) == set(), sorted(files(scratch))
            assert not _database_exists(cluster, restored), "a failed restore left a database behind"
        finally:
            drop_database(cluster, restored)


def _database_exists(cluster: ScratchCluster, name: str) -> bool:
    with cluster.connect() as conn:
        return conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (1,)


# --- (d) a physical restore onto a full disk -----------------------------------------------------------


def test_physical_restore_onto_a_full_disk_is_marked_unfinished(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        site.switch()
        made = site.cli("backup", "main", "--type", "full", "-o", "json")
        assert made.code == 0, made.stderr
        site.wait_archived(site.switch())
        with small_disk(site.root / "target", "8m", owner="postgres") as target:
            pgdata = target / "pgdata"
            one_line_about_space(site.cli("restore", "main", "--pgdata", str(pgdata)))
            # Not a complete-looking target: the restore's marker says it is unfinished, nothing asks for recovery.
            assert (pgdata / RESTORE_MARKER).exists(), sorted(files(target))[:20]
            assert not (pgdata / "recovery.signal").exists()
            # Space again: the same command with --force redoes it, and the marker goes.
            subprocess.run(["mount", "-o", "remount,size=512m", str(target)], check=True)
            again = site.cli("restore", "main", "--pgdata", str(pgdata), "--force")
            assert again.code == 0, again.stderr
            assert not (pgdata / RESTORE_MARKER).exists() and (pgdata / "recovery.signal").exists()


def test_a_conditional_create_the_full_disk_refuses_leaves_no_temp_file(tmp_path: Path) -> None:
    """A WAL segment is stored with ``put_if_absent`` (archive_mode = always: the first host's create wins); on a
    full disk its write fails before the commit, and the temp file must go with it, not wait for `repo gc`."""
    with small_disk(tmp_path / "repo", "1m") as root:
        storage = LocalStorage(root)
        storage.open_write("wal/first").commit()
        fill(root)
        with pytest.raises(StorageError, match="no space left"):
            storage.put_if_absent("wal/segment", b"x" * 2_000_000)
        assert files(root) == {"wal/first"}, sorted(files(root))
