"""A PostgreSQL server archiving into a repository with a config: the site every WAL, PITR, epoch, timeline
and archiver-fault test starts from, written once.

The site is production-like: a scratch cluster whose archive_command is backupctl's own, run by PostgreSQL
as the ``postgres`` OS user with the postmaster's environment; its config, repository and spool live in a
fresh postgres-owned directory in /tmp (not pytest's tmp_path, which is 0700 root). Tests choose the
[wal] table (the WAL tests shorten its timeouts so that stalls show in seconds), the store (local, moto,
SeaweedFS), the archive_command (the fast path ``pg-settings`` prints, or the console script) and whether
``backupctl init`` runs first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backupctl.core.config import parse_config
from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.cluster import ScratchCluster
from backupctl.storage import open_storage
from backupctl.wal.conf import archive_command, restore_command
from backupctl.wal.listing import parse_key
from tests.support.cli import CliRunner, Result, backup_id, cli_env, run_cli
from tests.support.config import write_toml
from tests.support.s3_servers import S3Endpoint

SOURCE = "main"
BACKUPCTL = str(Path(sys.executable).parent / "backupctl")
QUICK_WAL: Mapping[str, Any] = {"async": True, "timeout": 10, "idle_exit": 60}  # stalls show in seconds


def chown_to_postgres(path: Path) -> None:
    subprocess.run(["chown", "-R", "postgres:postgres", str(path)], check=True)


def as_postgres(argv: list[str], cwd: Path | str = "/", timeout: float = 120) -> Result:
    proc = subprocess.run(argv, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout,
                          user="postgres", group="postgres", extra_groups=[], check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def query(cluster: ScratchCluster, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on ``cluster`` ([] for a statement without rows)."""
    with cluster.connect(dbname) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def start_promoted(binaries: PgBinaries, pgdata: Path, settings: Mapping[str, str],
                   remove_datadir: bool = True) -> ScratchCluster:
    """Start a restored data directory and wait until recovery has promoted it."""
    restored = ScratchCluster.adopt(binaries, pgdata, remove_datadir=remove_datadir, settings=dict(settings))
    restored.start(timeout=120)
    deadline = time.monotonic() + 120  # hot standby accepts connections before recovery ends
    while time.monotonic() < deadline:
        try:
            with restored.connect() as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return restored
        except psycopg.OperationalError:
            break
        time.sleep(0.2)
    log = restored.log_file.read_text()[-3000:]
    restored.remove()
    raise AssertionError(f"the restored server did not promote:\n{log}")


def adopt_running(binaries: PgBinaries, pgdata: Path) -> ScratchCluster:
    """A server that ``restore --start`` left running on ``pgdata``, as a ScratchCluster to query and stop
    (its port from postmaster.pid; ``remove()`` leaves the data directory, which the site removes)."""
    cluster = ScratchCluster.adopt(binaries, pgdata)
    cluster.port = int((pgdata / "postmaster.pid").read_text().splitlines()[3])
    return cluster


def effective_setting(binaries: PgBinaries, pgdata: Path, name: str) -> str:
    """What a server started on ``pgdata`` would use for ``name`` (postgres -C reads every config file)."""
    return subprocess.run(["runuser", "-u", "postgres", "--", str(binaries.path("postgres")), "-C", name,
                           "-D", str(pgdata)], capture_output=True, text=True, check=True).stdout.strip()


def fast_path_archive_command(config: Path) -> str:
    """The archive_command ``backupctl pg-settings`` prints (the site's spool is ``spool`` beside its config)."""
    return archive_command(config, SOURCE, str(config.parent / "spool" / SOURCE))


def console_archive_command(config: Path) -> str:
    """wal-push through the installed console script, as a hand-written postgresql.conf would call it."""
    return f"{BACKUPCTL} --config {config} wal-push %p"


@dataclass
class Site:
    """A cluster archiving into a repository with a config; everything the server touches belongs to postgres."""

    root: Path
    config: Path
    cluster: ScratchCluster
    settings: dict[str, str]
    repository: dict[str, Any]
    wal: dict[str, Any]  # the [wal] table
    encryption: dict[str, Any] = field(default_factory=dict)
    extra: list[ScratchCluster] = field(default_factory=list)  # more clusters, removed with the site
    source_options: dict[str, Any] = field(default_factory=dict)  # more keys of [sources.main] (backup_from, standbys)

    def write_config(self, cluster: ScratchCluster | None = None, *, path: Path | None = None,
                     spool: Path | None = None) -> None:
        """(Re)write the config, its source naming ``cluster`` (default: the site's own), and give the tree to
        postgres. A repository moved elsewhere by a test is ``site.repository = ...`` and this. ``path`` and
        ``spool``: another host's config (default: the site's own file and spool root), e.g. a standby's, whose
        resident pusher must not share the primary's spool (``pg_replication.host_archive_command``)."""
        cluster = cluster or self.cluster
        write_toml(path or self.config, {
            "repository": self.repository,
            **({"encryption": self.encryption} if self.encryption else {}),
            "wal": {**self.wal, **({"spool_dir": str(spool)} if spool else {})},
            "sources": {SOURCE: {"kind": "postgres", "host": "127.0.0.1", "port": cluster.port or 1,
                                 "user": "postgres", "pgdata": str(cluster.datadir),
                                 "bindir": str(cluster.binaries.bindir), **self.source_options}},
        })
        chown_to_postgres(self.root)

    @property
    def spool(self) -> Path:
        return self.root / "spool" / SOURCE

    def storage(self) -> Any:
        return open_storage(parse_config({"repository": self.repository}, self.config).repository)

    def cli(self, *args: str, timeout: float = 120) -> Result:
        return run_cli(self.config, *args, timeout=timeout)

    def sql(self, sql: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        return query(self.cluster, sql, dbname)

    def command(self, verb: str, *args: str) -> list[str]:
        """The fast-path command line as PostgreSQL runs it (what pg-settings prints)."""
        line = archive_command(self.config, SOURCE) if verb == "push" else restore_command(self.config, SOURCE)
        words = shlex.split(line)
        placeholders = [i for i, w in enumerate(words) if w in ("%p", "%f")]
        return words[: placeholders[0]] + list(args)

    def push(self, path: Path | str, cwd: Path | str = "/") -> Result:
        return as_postgres(self.command("push", str(path)), cwd=cwd)

    def fetch(self, name: str, dest: Path | str) -> Result:
        return as_postgres(self.command("fetch", name, str(dest)))

    def switch(self, rows: int = 2000) -> str:
        """Write something, close the segment; returns its name."""
        with self.cluster.connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (id serial, payload text)")
            conn.execute(f"INSERT INTO t (payload) SELECT md5(g::text) FROM generate_series(1, {rows}) g")
            return conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]

    def archived_now(self, cli: CliRunner) -> None:
        """Close the current segment and wait until backupctl has it in the repository."""
        result = cli(self.config, "wal", "check", SOURCE)
        assert result.code == 0, result.stderr

    def wait_archived(self, name: str, timeout: float = 60) -> None:
        wait_archived(self.cluster, name, timeout, self.pusher_log)

    def segment_copy(self, name: str) -> Path:
        """A postgres-owned copy of a segment in pg_wal, to push by hand."""
        folder = self.root / "copies"
        folder.mkdir(exist_ok=True)
        copy = folder / name
        shutil.copy(self.cluster.datadir / "pg_wal" / name, copy)
        chown_to_postgres(folder)
        return copy

    def restore_dir(self, name: str) -> Path:
        return self.root / name

    def start_restored(self, pgdata: Path, remove_datadir: bool = True, **extra: str) -> ScratchCluster:
        return start_promoted(self.cluster.binaries, pgdata, {**self.settings, **extra}, remove_datadir)

    def pusher_pid(self, spool: Path | None = None) -> int | None:
        """The resident pusher's pid: the site's, or the one of another host's ``spool`` (its source's folder)."""
        try:
            return int(((spool or self.spool) / "pusher.pid").read_text())
        except (OSError, ValueError):
            return None

    def pusher_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.spool / "pusher.log").read_text()
        return ""

    def wal_keys(self) -> dict[str, str]:
        """Archived file name -> key."""
        found = {}
        for info in self.storage().list(f"{SOURCE}/wal/"):
            parsed = parse_key(SOURCE, info.key)
            if parsed is not None:
                found[parsed.name.name] = info.key
        return found

    def stop_pusher(self, spool: Path | None = None) -> None:
        pid = self.pusher_pid(spool)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)


def wait_archived(cluster: ScratchCluster, name: str, timeout: float = 60,
                  more_logs: Callable[[], str] | None = None) -> None:
    """Until ``cluster``'s archiver reports segment ``name`` (or a later one) archived: any host, a standby with
    archive_mode = always included. On timeout the failure quotes the archiver's stats and the server log
    (and ``more_logs()``, e.g. the pusher's)."""
    deadline = time.monotonic() + timeout
    while True:
        last = query(cluster, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        if last is not None and last[:24] >= name[:24] and len(last) == 24:
            return
        if time.monotonic() > deadline:
            stats = query(cluster, "SELECT * FROM pg_stat_archiver")
            extra = more_logs()[-3000:] if more_logs else ""
            pytest.fail(f"{name} not archived in {timeout}s: {stats}\n{cluster._read_log()[-3000:]}\n{extra}")
        time.sleep(0.05)


def store_repository(kind: str, root: Path, request: pytest.FixtureRequest | None, endpoint_url: str | None = None,
                     max_attempts: int = 3) -> dict[str, Any]:
    """The [repository] table of a site: a directory in its root, or a fresh bucket on moto or SeaweedFS
    (``endpoint_url``: reach it through a proxy)."""
    if kind == "local":
        return {"type": "local", "path": str(root / "repo")}
    assert request is not None, "an S3 store needs the test's request for its endpoint fixture"
    endpoint: S3Endpoint = request.getfixturevalue(f"{kind}_endpoint")
    credentials = root / "aws-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {endpoint.access_key}\n"
                           f"aws_secret_access_key = {endpoint.secret_key}\n")
    return {"type": "s3", "bucket": endpoint.new_bucket(), "prefix": "wal-tests", "region": endpoint.region,
            "endpoint_url": endpoint_url or endpoint.url, "addressing_style": "path",
            "credentials_file": str(credentials), "max_attempts": max_attempts}


@contextlib.contextmanager
def archiving_site(binaries: PgBinaries, request: pytest.FixtureRequest | None = None, *, store: str = "local",
                   endpoint_url: str | None = None, encrypted: bool = False, wal: Mapping[str, Any] = QUICK_WAL,
                   settings: Mapping[str, str] | None = None,
                   archive_command: Callable[[Path], str] = fast_path_archive_command,
                   initdb_args: tuple[str, ...] = (), init: bool = True,
                   site_class: type[Site] = Site) -> Iterator[Site]:
    """A running cluster of ``binaries`` archiving into a repository on ``store``; removed afterwards with its
    clusters, directory and resident pusher. ``wal`` is the [wal] table besides its spool_dir, ``settings``
    more server settings, ``init`` runs ``backupctl init``, ``site_class`` is a test module's own Site."""
    root = Path(tempfile.mkdtemp(prefix="backupctl-site-", dir="/tmp"))
    os.chmod(root, 0o755)  # pg-settings checks that the server's user can reach the config
    config = root / "backupctl.toml"
    server_settings = {"wal_level": "replica", "archive_mode": "on", "archive_command": archive_command(config),
                       **(settings or {})}
    cluster = ScratchCluster(binaries, initdb_args=initdb_args, settings=server_settings)
    site = site_class(root, config, cluster, server_settings, {}, {**wal, "spool_dir": str(root / "spool")})
    try:
        site.repository = store_repository(store, root, request, endpoint_url)
        if encrypted:
            key = root / "age.key"
            recipient = run_cli(None, "keygen", "--to", str(key)).stdout.strip()
            site.encryption = {"recipients": [recipient], "identity_file": str(key)}
        cluster.init()
        site.write_config()  # before the server starts, so that its first archive_command finds the config
        cluster.start()
        site.write_config()  # with the port the server got
        if init:
            result = run_cli(config, "init")
            assert result.code == 0, result.stderr
            chown_to_postgres(root)
        yield site
    finally:
        site.stop_pusher()
        for other in [cluster, *site.extra]:
            other.remove()
        shutil.rmtree(root, ignore_errors=True)


# --- the scenario of the PITR tests: a table of marked rows, a full backup, restores to a target ----------


def init_and_backup(site: Site, cli: CliRunner) -> str:
    assert cli(site.config, "init").code == 0
    site.sql("CREATE TABLE marks (id int PRIMARY KEY, batch text NOT NULL, at timestamptz DEFAULT now())")
    return backup_id(cli(site.config, "backup", "main", "--type", "full", "-o", "json"))


def restore_and_start(site: Site, cli: CliRunner, name: str, *target: str,
                      archive: bool = False) -> tuple[ScratchCluster, dict[str, Any]]:
    """Restore and start; without ``archive`` the copy does not archive (its new timeline stays private)."""
    pgdata = site.restore_dir(name)
    result = cli(site.config, "restore", "main", "--pgdata", str(pgdata), "--target-action", "promote",
                 *target, *(["--archive"] if archive else []), "-o", "json")
    assert result.code == 0, result.stderr
    extra = {} if archive else {"archive_mode": "off"}
    return site.start_restored(pgdata, **extra), json.loads(result.stdout)


def batches(cluster: ScratchCluster) -> list[str]:
    with cluster.connect() as conn:
        return [row[0] for row in conn.execute("SELECT DISTINCT batch FROM marks ORDER BY 1")]


# --- processes of a site ------------------------------------------------------------------------------


def wal_push_processes(config: Path) -> list[int]:
    """Pids of the archive_command processes of this site: this interpreter running wal-push with its config.

    (The postmaster's own command line holds the archive_command too: argv is matched word by word.)
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if argv[0] == sys.executable and "wal-push" in argv and str(config) in argv:
                    found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
