"""The small storage interface every repository driver implements.

Keys are ``/``-separated and relative to the repository root; a driver adds its own root (a directory,
or a bucket and prefix). Writes are all-or-nothing: an object appears under its key only once it is
complete and durable, so a reader never sees half an object and a killed writer leaves no visible key.

Drivers: ``local`` and ``s3`` (``open_storage`` picks one from the config) and ``memory`` (tests). A feature
only some stores have (what a killed writer leaves behind) is a method here with a harmless default, which a
driver overrides: callers never ask which driver they hold. One conformance suite proves every driver:
tests/integration/test_storage.py.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import BinaryIO

from backupctl.core.errors import ObjectNotFound, StorageError
from backupctl.core.signals import shielded


def check_key(key: str) -> None:
    """Refuse keys that are not plain relative paths, so every driver accepts the same repository layout.

    S3 would store ``a/../b`` literally, but stores built on a filesystem (the local driver, SeaweedFS's
    filer) resolve such paths, which could leave the repository.
    """
    if not key or any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"invalid object key {key!r}")


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or a HEAD tells about one stored object."""

    key: str
    size: int
    modified: datetime
    etag: str | None = None


class ObjectWriter(abc.ABC):
    """A streaming write to one key; the object becomes visible only on ``commit``.

    Used as a context manager: a clean exit commits, an exception aborts and removes every trace.
    """

    @abc.abstractmethod
    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes; returns how many were taken (always all of them)."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make the object durable and visible under its key."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; safe to call more than once."""

    def writable(self) -> bool:
        """File-like protocol, so the writer can be handed to code that expects a binary file."""
        return True

    def flush(self) -> None:  # noqa: B027 - a no-op by design, not an abstract hook
        """Nothing to flush: durability comes from ``commit``."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            with shielded():
                self.abort()


class Storage(abc.ABC):
    """One repository store: a local directory or an S3 bucket and prefix (or, in tests, memory)."""

    #: Where the repository lives, for messages ("/var/lib/backupctl/repo", "s3://bucket/prefix").
    location: str

    @abc.abstractmethod
    def open_write(self, key: str) -> ObjectWriter:
        """Start a streaming write; see ``ObjectWriter``."""

    def put(self, key: str, data: bytes) -> None:
        """Store a whole object, replacing any object under the same key."""
        with self.open_write(key) as writer:
            writer.write(data)

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` only if nothing is stored under ``key``; False when something already is.

        Atomic against concurrent writers on any host: this is what leases and idempotent WAL pushes
        are built on. False also when the object is this caller's own: a conditional write whose answer
        was lost is retried by the driver, and the retry finds what the first attempt stored (see
        ``create``).
        """

    def create(self, key: str, data: bytes) -> bool:
        """``put_if_absent`` that knows its own write: True when ``key`` now holds exactly ``data``.

        After a lost answer the store may have acted (the retry is then refused: 412), or a failed attempt
        may have been stored after all: only reading the object back tells ours from another writer's.
        For callers whose bytes are unique to them (manifests, lease bodies). Other errors propagate when
        the object is not ours.
        """
        try:
            if self.put_if_absent(key, data):
                return True
        except StorageError:
            with contextlib.suppress(StorageError):
                if self.get_bytes(key) == data:
                    return True
            raise
        try:
            return self.get_bytes(key) == data
        except ObjectNotFound:
            return False

    @abc.abstractmethod
    def get(self, key: str) -> BinaryIO:
        """Open an object for streaming reads; raises ``ObjectNotFound`` when it does not exist."""

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole (manifests, markers)."""
        with self.get(key) as stream:
            return stream.read()

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Size and time of one object, or None when it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, recursively, in key order."""

    @abc.abstractmethod
    def list_prefixes(self, prefix: str) -> list[str]:
        """The immediate "directories" under ``prefix`` (which ends with ``/`` or is empty).

        Each returned entry ends with ``/``; this lets a reader find sources and backups without listing
        every object below them.
        """

    @abc.abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove objects; keys that do not exist are ignored."""

    # -- optional: unfinished writes, for `repo gc` --------------------------------------------------------
    # A writer killed mid-write leaves what no listing shows. Drivers say here what kind of leftovers they
    # can have; the defaults are those of a store that keeps none.

    #: Unfinished writes live on as multipart uploads, stored (and billed) until aborted by age (S3).
    keeps_incomplete_uploads: bool = False

    def abort_incomplete_uploads(self, older_than: datetime) -> int:
        """Abort the multipart uploads started before ``older_than`` (the store's clock); how many."""
        return 0

    def stale_temp_files(self, older_than: datetime) -> list[tuple[str, int]]:
        """Temp files of unfinished writes last written before ``older_than``, as (path, size): what a driver
        that writes through temp files beside its objects (local) leaves behind."""
        return []

    def remove_temp_files(self, paths: Iterable[str]) -> None:  # noqa: B027 - a no-op where there are none
        """Remove temp files ``stale_temp_files`` found; ones gone meanwhile are ignored."""

    def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release connections and threads."""
