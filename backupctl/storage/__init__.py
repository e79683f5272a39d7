"""Repository stores behind one interface; ``open_storage`` picks the driver from the config.

The S3 driver is imported only when used: boto3 costs ~150 ms to import, which matters to commands
that run once per WAL segment.
"""

from __future__ import annotations

from pathlib import Path

from backupctl.core.config import RepositoryConfig
from backupctl.storage.base import ObjectInfo, ObjectWriter, Storage
from backupctl.storage.local import LocalStorage

__all__ = ["ObjectInfo", "ObjectWriter", "Storage", "open_storage"]


def open_storage(config: RepositoryConfig, read_timeout: float | None = None) -> Storage:
    """The store a [repository] section describes; ``read_timeout`` bounds each S3 request's wait for an
    answer (the WAL's ``[wal] timeout``; a local directory has no such wait)."""
    if config.type == "s3":
        from backupctl.storage.s3 import S3Storage  # boto3 costs ~150 ms: only a repository on S3 pays it

        return S3Storage(config, read_timeout=read_timeout)
    assert config.path is not None, "validated by config"
    return LocalStorage(Path(config.path))
