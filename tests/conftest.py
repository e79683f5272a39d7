"""Shared fixtures: repositories on a local directory and on real S3 endpoints, PostgreSQL clusters, and a
CLI runner. The helpers behind them live in ``tests/support/``; the fixtures defined there are registered
here (``pytest_plugins``) for every test.

The CLI runs as a real subprocess (``python -m backupctl``) with a scrubbed environment, as cron or
archive_command would run it: everything it needs comes from the config file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backupctl.postgres.binaries import PgBinaries
from tests.support.backends import BACKENDS, STORAGE_BACKENDS, Backend, make_backend
from tests.support.cli import CliRunner, run_cli
from tests.support.pg_site import Site, archiving_site, console_archive_command

# The fixtures defined beside their helpers: pg_binaries, pg_cluster, pg_database; moto_endpoint, seaweedfs_endpoint.
pytest_plugins = ["tests.support.pg_fixtures", "tests.support.s3_servers"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh, empty repository location on each backend."""
    return make_backend(request.param, tmp_path, request)


@pytest.fixture(params=STORAGE_BACKENDS)
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Like ``backend``, and the in-memory driver too: for tests of the storage interface alone."""
    return make_backend(request.param, tmp_path, request)


@pytest.fixture
def local_backend(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    return make_backend("local", tmp_path, request)


@pytest.fixture
def cli() -> CliRunner:
    return run_cli


@pytest.fixture
def site(pg_binaries: PgBinaries) -> Iterator[Site]:
    """A production-like cluster of each major archiving into a local repository through the console script's
    wal-push, with the [wal] defaults; the repository is not initialised yet."""
    with archiving_site(pg_binaries, wal={}, settings={"max_wal_senders": "4"},
                        archive_command=console_archive_command, init=False) as made:
        yield made
