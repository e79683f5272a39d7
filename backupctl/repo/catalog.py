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
from backupctl.core.errors import BackupctlError, ConfigError, IntegrityError, ObjectNotFound
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
            "server": self.extra.get("server"),  # physical backups: the server copied ({name, role, address})
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


def select(manifests: list[Manifest], backup_type: str | None = None, labels: dict[str, str] | None = None,
           last: int | None = None) -> list[Manifest]:
    """``list``'s filters over ``scan``'s newest-first manifests: a type, labels that must all match, then the
    ``last`` newest of what is left."""
    chosen = [m for m in manifests if (backup_type is None or m.type == backup_type)
              and all(m.labels.get(key) == value for key, value in (labels or {}).items())]
    return chosen[:last] if last is not None else chosen


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
        """A backup by id alone: ids are unique in the whole repository. A malformed or unknown id is the
        command line's error (exit 2), as for any other argument that names nothing."""
        if not is_backup_id(backup_id):
            raise ConfigError(
                f"{backup_id!r} is not a backup id (they look like 20261125T021500123Z-S-k3x; "
                "see `backupctl list`)"
            )
        for name in self.sources():
            key = layout.manifest_key(name, backup_id)
            try:
                return self.read(key)
            except ObjectNotFound:
                continue
        raise ConfigError(f"no backup {backup_id} in the repository (see `backupctl list`)")

    def resolve(self, ref: str, source: str | None = None) -> Manifest:
        """The backup a user means by ``ref``: the one home of every form a command accepts for a backup id.

        ``ref`` is a full id, a unique prefix of one (``20261205T14``; letters in any case), ``latest`` or
        ``oldest`` (by finish time, as ``list`` orders them), or ``SOURCE:latest``/``SOURCE:oldest``.
        ``source`` narrows the search to one source (commands that name one: ``drill run SOURCE --backup``);
        without it, ``latest`` needs the repository to hold a single source's backups, since the newest of
        any source is rarely what a restore means. Anything that does not name exactly one backup is a usage
        error (exit 2) naming a few candidates: nothing has been read or written yet.
        """
        named, sep, position = ref.rpartition(":")
        if sep and position.lower() in _POSITIONS:
            if source is not None and named != source:
                raise ConfigError(f"{ref!r} names source {named}, but this command is about source {source}")
            return self._by_position(position.lower(), named)
        if ref.lower() in _POSITIONS:
            return self._by_position(ref.lower(), source)
        if is_backup_id(ref):
            manifest = self.find(ref)
            if source is not None and manifest.source != source:
                raise ConfigError(f"backup {manifest.id} belongs to source {manifest.source}, not {source}")
            return manifest
        prefix = _id_prefix(ref)
        if prefix is None:
            raise ConfigError(f"{ref!r} is not a backup id (they look like 20261125T021500123Z-S-k3x; give one, "
                              "a unique prefix of one, latest, oldest or SOURCE:latest; see `backupctl list`)")
        ids = {bid: name for name in ([source] if source else self.sources()) for bid in self.backup_ids(name)}
        matches = sorted((bid for bid in ids if bid.startswith(prefix)), reverse=True)
        if len(matches) == 1:
            return self.read(layout.manifest_key(ids[matches[0]], matches[0]))
        scope = f" of source {source}" if source else ""
        if not matches:
            raise ConfigError(f"no backup{scope} has an id starting with {ref!r} (see `backupctl list`)")
        raise ConfigError(f"{ref!r} matches {len(matches)} backups{scope}: {_few(matches)}; give more of the id")

    def backup_ids(self, source: str) -> list[str]:
        """The ids of a source's complete backups, from one listing (no manifest read)."""
        return [bid for info in self.storage.list(layout.backups_prefix(source))
                if layout.is_manifest_key(info.key) and (bid := layout.backup_id_of(source, info.key))]

    def _by_position(self, position: str, source: str | None) -> Manifest:
        """``latest`` or ``oldest`` of one source, or of the repository when it holds one source's backups."""
        manifests, _damaged = self.scan(source)
        if not manifests:
            where = f"source {source}" if source else "the repository"
            raise ConfigError(f"{where} has no backup yet: there is no {position} (see `backupctl list`)")
        sources = sorted({m.source for m in manifests})
        if len(sources) > 1:
            raise ConfigError(f"{position!r} is ambiguous: the repository holds backups of {_few(sources)}; "
                              f"say {sources[0]}:{position}")
        return manifests[0] if position == "latest" else manifests[-1]


_POSITIONS = ("latest", "oldest")
_SAMPLE_ID = "20261125T021500123Z-S-k3x"
_SUFFIX_AT = _SAMPLE_ID.rindex("-") + 1  # before it every letter is upper case, after it lower case


def _id_prefix(ref: str) -> str | None:
    """``ref`` spelled as the start of a backup id (letters in the id's own case), or None if no id starts so."""
    if not ref or len(ref) > len(_SAMPLE_ID):
        return None
    prefix = ref[:_SUFFIX_AT].upper() + ref[_SUFFIX_AT:].lower()
    return prefix if is_backup_id(prefix + _SAMPLE_ID[len(prefix):]) else None


def _few(names: list[str], limit: int = 4) -> str:
    """At most ``limit`` names for an error line, and how many more there are."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
