"""The repository as a whole: its format marker, its sources, and the handles every service needs.

``backupctl.json`` at the root says what made the repository and whether it is encrypted, and to which age
recipients; every command reads it first, so a repository from a newer, incompatible backupctl, a foreign
folder, or a config whose encryption disagrees with the repository is refused before anything is written.
New data is encrypted to exactly the recipients the marker lists; only ``change_recipients`` (``backupctl
repo recipients add|remove``, key rotation) changes that list, and it keeps the removed ones as ``retired``
so that older backups encrypted to them are not mistaken for foreign ones.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backupctl import __version__
from backupctl.core.config import Config
from backupctl.core.errors import BackupctlError, ConfigError, IntegrityError, ObjectNotFound
from backupctl.core.log import get_logger
from backupctl.repo import crypto, layout, lease
from backupctl.repo.catalog import Catalog, Manifest, iso
from backupctl.repo.codecs import Codec
from backupctl.repo.pipeline import Pipeline
from backupctl.storage import Storage, open_storage

REPO_FORMAT = "backupctl-repository"
REPO_VERSION = 1

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
        self.pipeline.require_repository_recipients()  # every writer registers its source before writing data
        key = layout.stream_record_key(name)
        document = {"source": name, "registered_at": iso(datetime.now(UTC)), **identity, **(recorded or {})}
        if self.storage.put_if_absent(key, json.dumps(document, indent=1).encode()):
            log.info("source registered", source=name, **identity)
            return document
        try:
            stored = json.loads(self.storage.get_bytes(key))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{key} is damaged: it is not JSON") from exc
        for field, value in identity.items():
            if stored.get(field) != value:
                raise SourceMismatch(
                    f"source {name!r} in {self.storage.location} has {field} {stored.get(field)!r}, "
                    f"but the configured source has {value!r}: use another source name", field
                )
        return stored


def _read_marker(storage: Storage) -> dict[str, Any] | None:
    try:
        data = storage.get_bytes(layout.MARKER)
    except ObjectNotFound:
        return None
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != REPO_FORMAT:
        raise BackupctlError(f"{storage.location}/{layout.MARKER} is not a backupctl repository marker")
    return meta


def listed_recipients(meta: dict[str, Any]) -> list[str]:
    """The recipients new data is encrypted to (empty for an unencrypted repository)."""
    return list((meta.get("encryption") or {}).get("recipients", []))


def retired_recipients(meta: dict[str, Any]) -> list[str]:
    """Recipients removed by key rotation: older backups may still be encrypted to them."""
    return [entry["recipient"] for entry in (meta.get("encryption") or {}).get("retired", [])]


def _check_version(meta: dict[str, Any], location: str) -> None:
    version = meta.get("version")
    if not isinstance(version, int) or version > REPO_VERSION:
        raise BackupctlError(
            f"repository {location} has format version {version}, but this backupctl ({__version__}) "
            f"understands up to {REPO_VERSION}: upgrade backupctl"
        )


def _check_compatible(meta: dict[str, Any], pipeline: Pipeline, location: str) -> None:
    """Refuse a config that disagrees with the repository, and bind the pipeline to the repository's
    recipients (its writes then refuse a config whose list differs; reads never do)."""
    _check_version(meta, location)
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
    pipeline.repository_recipients = listed_recipients(meta)


def open_repository(config: Config, storage: Storage | None = None, codec: Codec | None = None) -> Repository:
    """Open an existing repository; a missing one gets a pointer to ``backupctl init``.

    ``storage``: a driver made by the caller (the WAL's, whose requests have ``[wal] timeout``), closed here
    when the repository cannot be opened; ``codec``: in place of the config's (the WAL's one-shot zstd).
    """
    storage = storage or open_storage(config.repository)
    try:
        pipeline = Pipeline(storage, config, codec)
        meta = _read_marker(storage)
        if meta is None:
            raise BackupctlError(f"no repository at {storage.location}: run `backupctl init` first")
        _check_compatible(meta, pipeline, storage.location)
    except BaseException:
        storage.close()
        raise
    return Repository(config, storage, pipeline, Catalog(storage), meta)


def init_repository(config: Config, storage: Storage | None = None) -> tuple[Repository, bool]:
    """Create the repository marker; returns (repository, created). Existing ones are left intact.

    ``storage``: a driver made by the caller instead of the config's (the in-memory one of unit tests).
    """
    storage = storage or open_storage(config.repository)
    pipeline = Pipeline(storage, config)
    probe_conditional_writes(storage)
    meta = {
        "format": REPO_FORMAT,
        "version": REPO_VERSION,
        "created_at": iso(datetime.now(UTC)),
        "created_by": f"backupctl {__version__}",
        "encryption": pipeline.encryption_record(),
    }
    created = storage.create(layout.MARKER, json.dumps(meta, indent=1).encode())  # a lost answer: still ours
    if not created:
        meta = _read_marker(storage) or meta
    _check_compatible(meta, pipeline, storage.location)
    return Repository(config, storage, pipeline, Catalog(storage), meta), created


@dataclass
class RecipientsChange:
    """What ``change_recipients`` did: ``action`` is added, removed or unchanged."""

    location: str
    action: str
    recipient: str
    recipients: list[str]


def change_recipients(config: Config, recipient: str, add: bool) -> RecipientsChange:
    """Key rotation: add ``recipient`` to, or remove it from, the list new data is encrypted to.

    The marker is re-read and rewritten under the repository-wide ``recipients`` lease, itself a conditional
    write: two hosts changing the list at once cannot lose one change (the second fails at once and can run
    again). The config's own recipients are not compared here: this is the one command that makes them
    differ, and each host's config must then be given the new list. The last recipient of an encrypted
    repository cannot be removed (encryption is chosen once, at ``init``).
    """
    name = str(crypto.parse_recipients([recipient], "the recipient")[0])
    storage = open_storage(config.repository)
    with closing(storage):
        if _read_marker(storage) is None:
            raise BackupctlError(f"no repository at {storage.location}: run `backupctl init` first")
        with lease.exclusive(storage, None, "recipients", operation=f"recipients {'add' if add else 'remove'}",
                             ttl=config.repository.lease_ttl) as held:
            meta = _read_marker(storage) or {}  # as it is now that no other host can change it
            _check_version(meta, storage.location)
            encryption = meta.get("encryption")
            if encryption is None:
                raise ConfigError(f"repository {storage.location} is not encrypted: encryption is chosen at "
                                  "`backupctl init`; use a new repository to encrypt")
            listed = listed_recipients(meta)
            retired = [e for e in encryption.get("retired", []) if e["recipient"] != name]
            if add == (name in listed):
                if add:
                    return RecipientsChange(storage.location, "unchanged", name, listed)
                raise ConfigError(f"{name} is not a recipient of repository {storage.location} "
                                  f"({', '.join(listed)}): nothing to remove")
            if add:
                listed.append(name)
            elif listed == [name]:
                raise ConfigError(f"{name} is the last recipient of repository {storage.location}: add its "
                                  f"successor first (`backupctl repo recipients add AGE1...`)")
            else:
                listed.remove(name)
                retired.append({"recipient": name, "removed_at": iso(datetime.now(UTC))})
            data = json.dumps({**meta, "encryption": {**encryption, "recipients": listed, "retired": retired}},
                              indent=1).encode()
            held.ensure_held()
            storage.put(layout.MARKER, data)
            if storage.get_bytes(layout.MARKER) != data:
                raise BackupctlError(f"{storage.location}/{layout.MARKER} changed while the recipients were written: "
                                     "run the command again")
    log.info("repository recipients changed", location=storage.location, recipients=listed)
    return RecipientsChange(storage.location, "added" if add else "removed", name, listed)


def probe_conditional_writes(storage: Storage) -> None:
    """Leases and idempotent WAL pushes rely on If-None-Match: prove the store honours it."""
    key = layout.conditional_write_probe_key(secrets.token_hex(8))
    try:
        first = storage.create(key, b"first")  # a lost answer and a refused retry: still ours
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
