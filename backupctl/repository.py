"""The repository as a whole: its format marker, its sources, and the handles every service needs.

``backupctl.json`` at the root says what made the repository and whether it is encrypted; every command
reads it first, so a repository from a newer, incompatible backupctl, a foreign folder, or a config whose
encryption disagrees with the repository is refused before anything is written.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backupctl import __version__, lease
from backupctl.catalog import Catalog, Manifest, iso
from backupctl.config import Config
from backupctl.errors import BackupctlError, ConfigError, IntegrityError, ObjectNotFound
from backupctl.log import get_logger
from backupctl.pipeline import Pipeline
from backupctl.storage import Storage, open_storage

REPO_FORMAT = "backupctl-repository"
REPO_VERSION = 1
MARKER = "backupctl.json"
PROBE_PREFIX = ".probe/"

log = get_logger(__name__)


class SourceMismatch(BackupctlError):
    """``source.json`` records another value of ``field`` than the source has now (another server)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Repository:
    """An opened repository: storage, pipeline and catalog, checked against the config."""

    config: Config
    storage: Storage
    pipeline: Pipeline
    catalog: Catalog
    meta: dict[str, Any]

    def close(self) -> None:
        self.storage.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exclusive_lease(self, source: str | None, name: str, operation: str,
                        details: dict[str, Any] | None = None) -> AbstractContextManager[lease.Lease]:
        """Hold ``name`` (backup, expire, gc) for a block; a live holder elsewhere makes it fail at once."""
        return lease.exclusive(self.storage, source, name, operation=operation, details=details,
                               ttl=self.config.repository.lease_ttl)

    @contextmanager
    def reading(self, operation: str, manifests: list[Manifest]) -> Iterator[lease.Lease]:
        """Hold a reader lease on these backups, so expire and gc keep their objects while this runs.

        The manifests were read before the lease existed, so each is looked up again once it does: expire
        removes a manifest before it looks for readers, so a backup still listed now stays whole.
        """
        source = manifests[0].source
        with lease.shared(self.storage, source, operation=operation, backups=[m.id for m in manifests],
                          ttl=self.config.repository.lease_ttl) as held:
            for manifest in manifests:
                if self.storage.head(manifest.key) is None:
                    raise BackupctlError(f"backup {manifest.id} was expired while {operation} started")
            yield held

    def register_source(self, name: str, identity: dict[str, Any],
                        recorded: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record what a source is on first use, and refuse a different one under the same name later.

        ``identity`` holds the facts that must never change for a source (its kind; for PostgreSQL the
        system identifier and major version), written once with a conditional write. ``recorded`` holds
        facts written with the first registration but not compared here (a WAL segment size, which a
        logical backup cannot know): the caller checks them against the returned document.
        """
        key = f"{name}/source.json"
        document = {"source": name, "registered_at": iso(datetime.now(UTC)), **identity, **(recorded or {})}
        if self.storage.put_if_absent(key, json.dumps(document, indent=1).encode()):
            log.info("source registered", source=name, **identity)
            return document
        try:
            stored = json.loads(self.storage.get_bytes(key))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise IntegrityError(f"{key} is damaged: it is not JSON") from None
        for field, value in identity.items():
            if stored.get(field) != value:
                raise SourceMismatch(
                    f"source {name!r} in {self.storage.location} has {field} {stored.get(field)!r}, "
                    f"but the configured source has {value!r}: use another source name", field
                )
        return stored


def _read_marker(storage: Storage) -> dict[str, Any] | None:
    try:
        data = storage.get_bytes(MARKER)
    except ObjectNotFound:
        return None
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != REPO_FORMAT:
        raise BackupctlError(f"{storage.location}/{MARKER} is not a backupctl repository marker")
    return meta


def _check_compatible(meta: dict[str, Any], pipeline: Pipeline, location: str) -> None:
    version = meta.get("version")
    if not isinstance(version, int) or version > REPO_VERSION:
        raise BackupctlError(
            f"repository {location} has format version {version}, but this backupctl ({__version__}) "
            f"understands up to {REPO_VERSION}: upgrade backupctl"
        )
    encrypted = meta.get("encryption") is not None
    if encrypted and not pipeline.encrypted:
        raise ConfigError(
            f"repository {location} is encrypted but the config has no [encryption] section: "
            "add its recipients (and identity_file to restore)"
        )
    if pipeline.encrypted and not encrypted:
        raise ConfigError(
            f"repository {location} is not encrypted but the config has [encryption]: "
            "remove it or use a new repository"
        )


def open_repository(config: Config) -> Repository:
    """Open an existing repository; a missing one gets a pointer to ``backupctl init``."""
    storage = open_storage(config.repository)
    pipeline = Pipeline(storage, config)
    meta = _read_marker(storage)
    if meta is None:
        storage.close()
        raise BackupctlError(f"no repository at {storage.location}: run `backupctl init` first")
    _check_compatible(meta, pipeline, storage.location)
    return Repository(config, storage, pipeline, Catalog(storage), meta)


def init_repository(config: Config) -> tuple[Repository, bool]:
    """Create the repository marker; returns (repository, created). Existing ones are left intact."""
    storage = open_storage(config.repository)
    pipeline = Pipeline(storage, config)
    probe_conditional_writes(storage)
    meta = {
        "format": REPO_FORMAT,
        "version": REPO_VERSION,
        "created_at": iso(datetime.now(UTC)),
        "created_by": f"backupctl {__version__}",
        "encryption": pipeline.encryption_record(),
    }
    created = storage.put_if_absent(MARKER, json.dumps(meta, indent=1).encode())
    if not created:
        meta = _read_marker(storage) or meta
        _check_compatible(meta, pipeline, storage.location)
    return Repository(config, storage, pipeline, Catalog(storage), meta), created


def probe_conditional_writes(storage: Storage) -> None:
    """Leases and idempotent WAL pushes rely on If-None-Match: prove the store honours it."""
    key = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
    try:
        first = storage.put_if_absent(key, b"first")
        second = storage.put_if_absent(key, b"second")
        kept = storage.get_bytes(key) if first else b""
    finally:
        storage.delete([key])
    if not first or second or kept != b"first":
        raise BackupctlError(
            f"{storage.location} does not honour conditional writes (a second PUT with "
            "If-None-Match: * was accepted): backupctl needs them for leases and WAL idempotency; "
            "use AWS S3, MinIO, Ceph RGW or SeaweedFS, or a newer version of this store"
        )
