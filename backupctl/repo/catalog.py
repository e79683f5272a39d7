"""Backup ids and manifests: the catalog lives in the repository, so any host can restore.

A backup exists once, and only once, its ``manifest.json`` is stored; it is written last, with a
conditional write, after every data object is durable. The manifest is self-checking (a sha256 over its
canonical JSON). With encryption on, its ``details`` (database, table and schema descriptions) are
stored sealed with age, while ids, times, sizes and checksums stay readable for ``list`` and ``expire``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
import string
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backupctl import __version__
from backupctl.core.errors import BackupctlError, IntegrityError, ObjectNotFound
from backupctl.repo import layout
from backupctl.repo.pipeline import Pipeline, StoredObject
from backupctl.storage import Storage

MANIFEST_FORMAT = "backupctl-manifest"
MANIFEST_VERSION = 1
TYPE_LETTERS = {"full": "F", "incr": "I", "logical": "L", "sqlite": "S"}
_ID_RE = re.compile(r"^\d{8}T\d{9}Z-[FILS]-[a-z0-9]{3}$")
_ALPHABET = string.ascii_lowercase + string.digits


def new_backup_id(backup_type: str, now: datetime | None = None) -> str:
    """Time-sortable, repository-unique: ``20261125T021500123Z-S-k3x``."""
    return new_record_id(TYPE_LETTERS[backup_type], now)


def new_record_id(letter: str, now: datetime | None = None) -> str:
    """The id shape of backups for any record (D drills, V verifications): sortable by time, unique."""
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(3))
    return f"{stamp}-{letter}-{suffix}"


def is_backup_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Manifest:
    """One backup, as the repository records it."""

    id: str
    source: str
    kind: str  # the source's kind: "sqlite", "postgres"
    type: str  # "sqlite", "logical", "full", "incr"
    started_at: str
    finished_at: str
    objects: list[StoredObject]
    encryption: dict[str, Any] | None  # {"method": "age", "recipients": [...]}
    details: dict[str, Any] | None = None  # None while sealed and no identity has opened it
    sealed_details: str | None = None  # base64 age ciphertext of ``details`` when encrypted
    parent: str | None = None
    host: str = field(default_factory=socket.gethostname)
    tool_version: str = __version__
    labels: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific plaintext (LSNs, timelines)

    @property
    def key(self) -> str:
        return layout.manifest_key(self.source, self.id)

    @property
    def size(self) -> int:
        return sum(o.size for o in self.objects)

    @property
    def stored_size(self) -> int:
        return sum(o.stored_size for o in self.objects)

    @property
    def duration(self) -> float:
        return (parse_iso(self.finished_at) - parse_iso(self.started_at)).total_seconds()

    @property
    def server_stop_time(self) -> datetime:
        """When the backup stopped on the PostgreSQL server's own clock (``extra["server_stop_time"]``, its
        clock_timestamp() once the backup had stopped): the clock of commit times and recovery targets. A
        manifest written before backupctl recorded it (or of a SQLite backup) gives ``finished_at``."""
        return parse_iso(self.extra.get("server_stop_time") or self.finished_at)

    @property
    def store_stop_time(self) -> datetime:
        """The same moment on the store's clock (the clock of Last-Modified, leases and ``expire``'s "now");
        ``finished_at`` for a manifest that predates it."""
        return parse_iso(self.extra.get("store_stop_time") or self.finished_at)

    @property
    def store_clock_ahead(self) -> timedelta:
        """How far the store's clock was ahead of the server's when the backup stopped (both read back to
        back); zero when the manifest does not record both."""
        if not (self.extra.get("server_stop_time") and self.extra.get("store_stop_time")):
            return timedelta(0)
        return self.store_stop_time - self.server_stop_time

    def object(self, role_key: str) -> StoredObject:
        """The object whose key starts with this backup's prefix plus ``role_key``."""
        wanted = layout.backup_prefix(self.source, self.id) + role_key
        for obj in self.objects:
            if obj.key.startswith(wanted):
                return obj
        raise IntegrityError(f"backup {self.id} has no object {role_key!r}")

    def summary(self) -> dict[str, Any]:
        """The stable JSON shape of ``list``."""
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "type": self.type,
            "parent": self.parent,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": round(self.duration, 3),
            "size": self.size,
            "stored_size": self.stored_size,
            "objects": len(self.objects),
            "encrypted": self.encryption is not None,
            "host": self.host,
            "labels": self.labels,
        }

    def to_document(self) -> dict[str, Any]:
        """The manifest as stored, with its own checksum; details sealed when encrypted."""
        doc: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "type": self.type,
            "parent": self.parent,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "host": self.host,
            "tool_version": self.tool_version,
            "labels": self.labels,
            "encryption": self.encryption,
            "extra": self.extra,
            "objects": [o.to_json() for o in self.objects],
            "totals": {"size": self.size, "stored_size": self.stored_size, "objects": len(self.objects)},
        }
        if self.encryption:
            doc["sealed_details"] = self.sealed_details
        else:
            doc["details"] = self.details
        doc["sha256"] = _document_hash(doc)
        return doc


def _document_hash(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def parse_manifest(data: bytes, key: str) -> Manifest:
    """Check format, version and self-checksum; refuse anything else as foreign or damaged."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(f"{key} is not valid JSON: the manifest is damaged") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise IntegrityError(f"{key} is not a backupctl manifest")
    if not isinstance(doc.get("version"), int) or doc["version"] > MANIFEST_VERSION:
        raise IntegrityError(
            f"{key} has manifest version {doc.get('version')}, newer than this backupctl "
            f"({__version__}) reads ({MANIFEST_VERSION}): upgrade backupctl"
        )
    if doc.get("sha256") != _document_hash(doc):
        raise IntegrityError(f"{key} fails its own checksum: the manifest is damaged")
    try:
        return Manifest(
            id=doc["id"],
            source=doc["source"],
            kind=doc["kind"],
            type=doc["type"],
            parent=doc["parent"],
            started_at=doc["started_at"],
            finished_at=doc["finished_at"],
            host=doc["host"],
            tool_version=doc["tool_version"],
            labels=doc["labels"],
            encryption=doc["encryption"],
            extra=doc["extra"],
            objects=[StoredObject.from_json(o) for o in doc["objects"]],
            details=doc.get("details"),
            sealed_details=doc.get("sealed_details"),
        )
    except (KeyError, TypeError) as exc:
        raise IntegrityError(f"{key} lacks field {exc}: the manifest is damaged") from exc


def seal_details(manifest: Manifest, pipeline: Pipeline) -> None:
    """Encrypt the description of the data when the repository is encrypted."""
    if pipeline.encrypted and manifest.details is not None:
        plain = json.dumps(manifest.details, sort_keys=True).encode()
        manifest.sealed_details = base64.b64encode(pipeline.seal(plain)).decode()


def open_details(manifest: Manifest, pipeline: Pipeline) -> dict[str, Any]:
    """The description of the data, decrypting it with the identity when sealed."""
    if manifest.details is None and manifest.sealed_details:
        recipients = (manifest.encryption or {}).get("recipients", [])
        pipeline.check_recipient(recipients, f"backup {manifest.id}")
        manifest.details = json.loads(pipeline.unseal(base64.b64decode(manifest.sealed_details)))
    return manifest.details or {}


class Catalog:
    """Queries over the manifests of a repository."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def write(self, manifest: Manifest) -> None:
        """Publish a backup: the last write of every backup, never replacing another manifest.

        A manifest already there with exactly our bytes is ours (its PUT was stored, the answer lost, and
        the retry refused): the backup is published. Anything else under our id is another backup's.
        """
        data = json.dumps(manifest.to_document(), indent=1, sort_keys=True).encode()
        if not self.storage.create(manifest.key, data):
            raise BackupctlError(f"{manifest.key} already exists: backup ids must be unique")

    def read(self, key: str) -> Manifest:
        return parse_manifest(self.storage.get_bytes(key), key)

    def sources(self) -> list[str]:
        """Sources that have a ``backups/`` folder in the repository."""
        return [p.rstrip("/") for p in self.storage.list_prefixes("") if layout.is_source_folder(p)]

    def ids(self, source: str | None = None) -> list[str]:
        """The ids of the complete backups (those with a manifest), newest first, from listings alone."""
        sources = [source] if source else self.sources()
        found = {layout.backup_id_of(name, info.key) for name in sources
                 for info in self.storage.list(layout.backups_prefix(name)) if layout.is_manifest_key(info.key)}
        return sorted((i for i in found if i), reverse=True)

    def scan(self, source: str | None = None) -> tuple[list[Manifest], dict[str, str]]:
        """Every complete backup (newest first by finish time), and the manifests that cannot be read.

        One paginated listing per source and one GET per backup, never per data object. A damaged
        manifest does not hide the others: it is returned with its error for the caller to report.
        """
        sources = [source] if source else self.sources()
        keys = [
            info.key
            for name in sources
            for info in self.storage.list(layout.backups_prefix(name))
            if layout.is_manifest_key(info.key)
        ]

        def load(key: str) -> Manifest | str:
            try:
                return self.read(key)
            except IntegrityError as exc:
                return str(exc)

        with ThreadPoolExecutor(max_workers=8) as pool:
            loaded = dict(zip(keys, pool.map(load, keys), strict=True))
        manifests = [m for m in loaded.values() if isinstance(m, Manifest)]
        damaged = {k: v for k, v in loaded.items() if isinstance(v, str)}
        manifests.sort(key=lambda m: (m.finished_at, m.id), reverse=True)
        return manifests, damaged

    def find(self, backup_id: str) -> Manifest:
        """A backup by id alone: ids are unique in the whole repository."""
        if not is_backup_id(backup_id):
            raise BackupctlError(
                f"{backup_id!r} is not a backup id (they look like 20261125T021500123Z-S-k3x; "
                "see `backupctl list`)"
            )
        for name in self.sources():
            key = layout.manifest_key(name, backup_id)
            try:
                return self.read(key)
            except ObjectNotFound:
                continue
        raise BackupctlError(f"no backup {backup_id} in the repository (see `backupctl list`)")
