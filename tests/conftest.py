"""Shared fixtures: repositories on a local directory and on real S3 endpoints, and a CLI runner.

The CLI runs as a real subprocess (``python -m backupctl``) with a scrubbed environment, as cron or
archive_command would run it: everything it needs comes from the config file.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pg_fixtures import pg_binaries, pg_cluster, pg_database  # noqa: F401 - fixtures
from s3_servers import S3Endpoint, moto_endpoint, seaweedfs_endpoint  # noqa: F401 - fixtures

BACKENDS = ["local", "moto", "seaweedfs"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, document: dict[str, Any]) -> Path:
    """Write nested dicts as TOML tables (enough for backupctl configs)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix and (scalars or not table):
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        for key, value in table.items():
            if isinstance(value, dict):
                emit(f"{prefix}.{key}" if prefix else key, value)

    emit("", document)
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Backend:
    """One repository location for a test: the [repository] table and a way to reach raw objects."""

    name: str
    repository: dict[str, Any]
    endpoint: S3Endpoint | None = None

    def raw_client(self) -> Any:
        import boto3

        assert self.endpoint is not None
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint.url,
            aws_access_key_id=self.endpoint.access_key,
            aws_secret_access_key=self.endpoint.secret_key,
            region_name=self.endpoint.region,
        )

    def storage(self) -> Any:
        """The repository through backupctl's own driver, to read or damage objects directly."""
        from backupctl.core.config import parse_config
        from backupctl.storage import open_storage

        config = parse_config({"repository": self.repository}, Path("/nonexistent/test.toml"))
        return open_storage(config.repository)


def make_backend(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    if name == "local":
        return Backend(name, {"type": "local", "path": str(tmp_path / "repo")})
    endpoint: S3Endpoint = request.getfixturevalue(f"{name}_endpoint")
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[default]\naws_access_key_id = {endpoint.access_key}\n"
        f"aws_secret_access_key = {endpoint.secret_key}\n"
    )
    repository = {
        "type": "s3",
        "bucket": endpoint.new_bucket(),
        "prefix": f"team/{secrets.token_hex(3)}",
        "region": endpoint.region,
        "endpoint_url": endpoint.url,
        "addressing_style": "path",
        "credentials_file": str(credentials),
        "part_size": "5MiB",
    }
    return Backend(name, repository, endpoint)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A fresh, empty repository location on each backend."""
    return make_backend(request.param, tmp_path, request)


@pytest.fixture
def local_backend(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    return make_backend("local", tmp_path, request)


def cli_env() -> dict[str, str]:
    """The bare environment archive_command and cron give: no AWS_*, no BACKUPCTL_CONFIG."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT")
    return {k: v for k, v in os.environ.items() if k in keep}


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The one-line error backupctl prints last on stderr."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("backupctl: error:")]
        assert len(lines) == 1, self.stderr
        return lines[0]


CliRunner = Callable[..., Result]


def run_cli(config: Path | None, *args: str, timeout: float = 300) -> Result:
    command = [sys.executable, "-m", "backupctl"]
    if config is not None:
        command += ["--config", str(config)]
    proc = subprocess.run(
        [*command, *args], capture_output=True, text=True, env=cli_env(), timeout=timeout, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli() -> CliRunner:
    return run_cli


def make_config(
    tmp_path: Path,
    backend: Backend,
    *,
    compression: str = "zstd",
    encrypted: bool = False,
    cli: CliRunner = run_cli,
    db: Path | None = None,
    tmp_dir: Path | None = None,
) -> Path:
    """A config with one SQLite source; with encryption, a fresh key pair made by `keygen`."""
    document: dict[str, Any] = {
        "repository": backend.repository,
        "compression": {"algorithm": compression},
        "sources": {"devdb": {"kind": "sqlite", "path": str(db or tmp_path / "dev.sqlite3")}},
    }
    if tmp_dir is not None:
        document["sources"]["devdb"]["tmp_dir"] = str(tmp_dir)
    if encrypted:
        key = tmp_path / "age.key"
        result = cli(None, "keygen", "--output", str(key))
        assert result.code == 0, result.stderr
        document["encryption"] = {"recipients": [result.stdout.strip()], "identity_file": str(key)}
    return write_toml(tmp_path / "backupctl.toml", document)


def backup_id(result: Any) -> str:
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)["id"]
