"""Shared fixtures: repositories on a local directory and on real S3 endpoints, PostgreSQL clusters, and a
CLI runner. The helpers behind them live in ``tests/support/``; the fixtures defined there are imported
here so that pytest registers them for every test.

The CLI runs as a real subprocess (``python -m backupctl``) with a scrubbed environment, as cron or
archive_command would run it: everything it needs comes from the config file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.backends import BACKENDS, Backend, make_backend
from tests.support.cli import CliRunner, run_cli
from tests.support.pg_fixtures import pg_binaries, pg_cluster, pg_database  # noqa: F401 - fixtures
from tests.support.s3_servers import moto_endpoint, seaweedfs_endpoint  # noqa: F401 - fixtures


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh, empty repository location on each backend."""
    return make_backend(request.param, tmp_path, request)


@pytest.fixture
def local_backend(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    return make_backend("local", tmp_path, request)


@pytest.fixture
def cli() -> CliRunner:
    return run_cli
