"""A repository on a real S3 server behind a fault proxy (tests/support/s3_servers.py), and what the store-fault
tests check afterwards: SQLite data that comes back whole, backups that verify, leases that lapse."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from backupctl.core.config import parse_config
from backupctl.repo import lease
from backupctl.storage.s3 import S3Storage
from tests.support.backends import Backend, make_backend
from tests.support.cli import CliRunner
from tests.support.config import make_config
from tests.support.s3_servers import FaultProxy


def direct_storage(backend: Backend) -> S3Storage:
    """The repository on the S3 server itself, not through the proxy: what a test inspects is never faulted,
    and never seen by the proxy (a stale listing replays the first answer the proxy relayed)."""
    assert backend.endpoint is not None
    return s3_storage(dataclasses.replace(backend, repository={**backend.repository,
                                                               "endpoint_url": backend.endpoint.url}))


def behind_proxy(server: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Backend, FaultProxy]:
    backend = make_backend(server, tmp_path, request)
    proxy = FaultProxy(backend.repository["endpoint_url"])
    backend.repository["endpoint_url"] = proxy.url
    return backend, proxy


def sqlite_db(path: Path, rows: int = 500) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        db.executemany("INSERT INTO t (payload) VALUES (?)", ((os.urandom(64),) for _ in range(rows)))
    return sqlite_rows(path)


def initialised(tmp_path: Path, backend: Backend, cli: CliRunner, **repository: object) -> tuple[Path, list]:
    """A SQLite source with a few hundred rows and an initialised repository (``repository``: settings of its
    [repository] table, such as lease_ttl); the config and the rows."""
    db = tmp_path / "dev.sqlite3"
    rows = sqlite_db(db)
    backend.repository.update(repository)
    config = make_config(tmp_path, backend, db=db)
    assert cli(config, "init").code == 0
    return config, rows


def sqlite_rows(path: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, payload FROM t ORDER BY id").fetchall()


def assert_listed_backups_verify(cli: CliRunner, config: Path) -> list[str]:
    """The repository invariant: every backup `list` shows passes `verify`. Returns their ids."""
    listed = cli(config, "list", "-o", "json")
    assert listed.code == 0, listed.stderr
    ids = [b["id"] for b in json.loads(listed.stdout)]
    if ids:
        verified = cli(config, "verify", "--all", "-o", "json")
        assert verified.code == 0, verified.stdout + verified.stderr
        assert all(report["ok"] for report in json.loads(verified.stdout))
    return ids


DATA_PUT = r"/backups/[^/]+/database\.sqlite3"  # the path of a SQLite backup's data object, for a Rule


def wait_lease_expired(backend: Backend, source: str) -> None:
    """Until the store's clock says the (stopped) holder's backup lease expired."""
    storage = direct_storage(backend)
    deadline = time.monotonic() + 60
    while lease.live_exclusive(storage, source, "backup") is not None:
        assert time.monotonic() < deadline, "the stopped backup's lease never expired"
        time.sleep(0.2)


def resumed(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGCONT a stopped CLI and wait for it: its exit code and stderr."""
    os.kill(proc.pid, signal.SIGCONT)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def s3_storage(backend: Backend, read_timeout: float | None = None) -> S3Storage:
    """backupctl's S3 driver on ``backend``'s repository (through the proxy, if it has one)."""
    config = parse_config({"repository": backend.repository}, Path("/nonexistent/test.toml"))
    return S3Storage(config.repository, read_timeout=read_timeout)


def random_db(path: Path, mib: int) -> None:
    """Incompressible rows, so the upload takes long enough to be interrupted."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        db.executemany("INSERT INTO blobs (data) VALUES (?)", ((os.urandom(1 << 20),) for _ in range(mib)))
