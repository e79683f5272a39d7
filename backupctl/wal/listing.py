"""What the archive holds: its keys read back as archived WAL files, listed per name, folder or stream.

The keys themselves are spelled by ``repo.layout`` (the WAL archive section); this module turns a listing
into ``ArchivedWal`` objects (a valid WAL name, the plaintext sha256, the codec and encryption the
extensions say) and never joins a key itself. Listings are one paginated request per prefix: the push
asks for one file's prefix, a backup's range for one prefix per 16-hex folder, status and verify for
the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backupctl.repo import layout
from backupctl.wal.names import WalName, WalNameError, parse_wal_name

if TYPE_CHECKING:
    from backupctl.repo.repository import Repository

_COMPRESSION_BY_EXT = {".zst": "zstd", ".lz4": "lz4", ".gz": "gzip", None: "none"}


@dataclass(frozen=True)
class ArchivedWal:
    """One archived file as the repository lists it."""

    name: WalName
    key: str
    sha256: str  # of the plain file
    compression: str
    encrypted: bool
    stored_size: int
    modified: datetime

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name.name, "key": self.key, "sha256": self.sha256, "compression": self.compression,
                "encrypted": self.encrypted, "stored_size": self.stored_size,
                "modified": self.modified.astimezone(UTC).isoformat()}


def object_prefix(stream: str, name: WalName) -> str:
    """Every object archived for ``name`` starts with this (then the plaintext sha256)."""
    return layout.wal_object_prefix(stream, name.directory, name.name)


def parse_key(stream: str, key: str, size: int = 0, modified: datetime | None = None) -> ArchivedWal | None:
    """The archived file a key names, or None for keys that are not WAL objects."""
    parts = layout.split_wal_key(stream, key)
    if parts is None:
        return None
    try:
        name = parse_wal_name(parts.name)
    except WalNameError:
        return None
    if parts.folder != name.directory:
        return None
    return ArchivedWal(
        name=name, key=key, sha256=parts.sha256, compression=_COMPRESSION_BY_EXT[parts.compression_extension],
        encrypted=parts.encrypted, stored_size=size, modified=modified or datetime.fromtimestamp(0, UTC),
    )


def find_archived(repo: Repository, stream: str, name: str | WalName) -> list[ArchivedWal]:
    """Every object stored for one file name (normally none or one)."""
    parsed = parse_wal_name(name) if isinstance(name, str) else name
    found = []
    for info in repo.storage.list(object_prefix(stream, parsed)):
        obj = parse_key(stream, info.key, info.size, info.modified)
        if obj is not None and obj.name.name == parsed.name:
            found.append(obj)
    return found


def find_segments(repo: Repository, stream: str, names: list[str]) -> dict[str, list[ArchivedWal]]:
    """The archived objects of some segments (e.g. a backup's range): one listing per 16-hex folder they
    fall in, never a request per segment. Names not archived are absent from the result."""
    wanted = set(names)
    found: dict[str, list[ArchivedWal]] = {}
    for folder in dict.fromkeys(name[:16] for name in names):
        for info in repo.storage.list(layout.wal_folder_prefix(stream, folder)):
            obj = parse_key(stream, info.key, info.size, info.modified)
            if obj is not None and obj.name.kind == "segment" and obj.name.name in wanted:
                found.setdefault(obj.name.name, []).append(obj)
    return found


def list_wal_objects(repo: Repository, stream: str) -> list[ArchivedWal]:
    """Every WAL object of a stream (one paginated listing), in key order."""
    found = []
    for info in repo.storage.list(layout.wal_prefix(stream)):
        obj = parse_key(stream, info.key, info.size, info.modified)
        if obj is not None:
            found.append(obj)
    return found


def group_archived(objects: Iterable[ArchivedWal], kinds: Iterable[str] = ("segment",)) -> dict[int, list[ArchivedWal]]:
    """Archived files per timeline, sorted by name (so by position), from one listing (which then serves
    the planner and the judgement of timelines alike).

    ``kinds`` picks among "segment", "partial", "backup" and "history"; a history file is listed under
    the timeline it describes.
    """
    wanted = set(kinds)
    result: dict[int, list[ArchivedWal]] = {}
    for obj in objects:
        if obj.name.kind in wanted:
            result.setdefault(obj.name.timeline, []).append(obj)
    for group in result.values():
        group.sort(key=lambda o: (o.name.name, o.key))
    return dict(sorted(result.items()))
