"""Repository locations for tests: a local directory, or a fresh bucket on moto or SeaweedFS; for tests of the
storage interface alone, also the in-memory driver (it has no [repository] table, so no CLI test can use it)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backupctl.storage.memory import MemoryStorage
from tests.support.s3_servers import S3Endpoint

BACKENDS = ["local", "moto", "seaweedfs"]
STORAGE_BACKENDS = ["memory", *BACKENDS]


@dataclass
class Backend:
    """One repository location for a test: the [repository] table and a way to reach raw objects."""

    name: str
    repository: dict[str, Any]
    endpoint: S3Endpoint | None = None
    memory: MemoryStorage | None = None

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
        if self.memory is not None:
            return self.memory
        from backupctl.core.config import parse_config
        from backupctl.storage import open_storage

        config = parse_config({"repository": self.repository}, Path("/nonexistent/test.toml"))
        return open_storage(config.repository)


def make_backend(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    if name == "memory":
        return Backend(name, {}, memory=MemoryStorage())
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
