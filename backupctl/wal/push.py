"""Pushing one file into the archive: what archive_command (and the resident pusher) do per segment.

The plaintext sha256 in the key makes a push idempotent without the private key (as pgBackRest does
with SHA1): pushing a segment again finds its own key and succeeds; a different segment under the same
name finds another checksum and fails, naming both (``WalConflict``). Before anything is stored the
segment's long page header is checked against its name and the source's system (``identity``). A segment
is read once into a per-thread buffer and compressed from it without a copy; larger ones are read twice,
the second read proven against the first one's digest.

A segment is stored with a conditional create (``Pipeline.store_if_absent``: S3 If-None-Match, local link(2)):
with archive_mode = always a primary and its standbys push the same segments, and two pushes of one segment
at the same moment store it once; the one that loses finds the identical object and succeeds. Its key holds
the plaintext digest, so a lost create means identical bytes; different bytes are refused as above.

The resident pusher passes an ``ArchiveView``: one listing of a 16-hex folder (256 segments) then answers
"nothing is archived under this name yet" for every push into that folder for ``LISTING_TTL`` seconds,
so that a busy archive costs one PUT per segment on S3 instead of a LIST and a PUT. Only that answer is
taken from the view; a name it has seen archived is listed afresh, as without a view.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from backupctl.core.errors import BackupctlError
from backupctl.repo import layout
from backupctl.wal.identity import (
    LONG_HEADER,
    IdentityGuard,
    WalConflict,
    check_segment,
    pg_control_sysid,
    read_header,
)
from backupctl.wal.listing import ArchivedWal, find_archived, object_prefix, parse_key
from backupctl.wal.names import WalName, parse_wal_name
from backupctl.wal.opening import IN_MEMORY_LIMIT, SerialCodec

if TYPE_CHECKING:
    from collections.abc import Callable

    from backupctl.repo.repository import Repository

LISTING_TTL = 5.0  # seconds a folder's listing may answer "not archived yet" (ArchiveView)


@dataclass
class PushResult:
    """What one push did: ``stored`` a new object, or found it ``already archived``."""

    name: str
    key: str
    status: str
    size: int
    seconds: float
    stat: tuple[int, int, int] = (0, 0, 0)  # (inode, size, mtime_ns) of the file that was read


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class ArchiveView:
    """The names archived in each 16-hex folder, from one listing per folder at most every ``ttl`` seconds.

    The resident pusher keeps one for its life: during a drain or a busy hour every push of a folder is
    answered from one LIST. The view is trusted only to say that a name is absent (the common case, and
    the one that costs nothing to get wrong later: a conflicting object that another writer stored since
    the listing is still refused by fetch and reported by verify; the check at push time, a LIST before
    the PUT, never closed that race either). A name the view has seen is looked up afresh. History files
    lie beside the folders and are always looked up.
    """

    def __init__(self, ttl: float = LISTING_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()  # one listing at a time: parallel pushes wait for it, not list again
        self._folders: dict[tuple[str, str], tuple[float, set[str]]] = {}
        self._contended: set[tuple[str, str]] = set()  # folders where another writer's create won (``lost``)

    def absent(self, repo: Repository, stream: str, name: WalName) -> bool:
        """True when a listing younger than ``ttl`` holds no object for ``name``."""
        if not name.directory:
            return False
        folder = (stream, name.directory)
        with self._lock:
            seen = self._folders.get(folder)
            if seen is None or self._clock() - seen[0] > self._ttl:
                taken = self._clock()  # before the request: the listing is at least this old
                names = set()
                for info in repo.storage.list(layout.wal_folder_prefix(stream, name.directory)):
                    obj = parse_key(stream, info.key)
                    if obj is not None:
                        names.add(obj.name.name)
                seen = self._folders[folder] = (taken, names)
            return name.name not in seen[1]

    def contended(self, stream: str, name: WalName) -> bool:
        """Whether a create in ``name``'s folder has lost to another writer (``lost``)."""
        with self._lock:
            return (stream, name.directory) in self._contended

    def lost(self, stream: str, name: WalName) -> None:
        """Note that another writer stored ``name`` first: a second host pushes the same segments
        (archive_mode = always). From then on a push into the folder asks the store for its exact key (one
        HEAD, no body) before it uploads, so the host that comes second sends no segment twice."""
        with self._lock:
            self._contended.add((stream, name.directory))

    def stored(self, stream: str, name: WalName) -> None:
        """Note a name this process has just archived (a later push of it is then looked up afresh)."""
        with self._lock:
            seen = self._folders.get((stream, name.directory))
            if seen is not None:
                seen[1].add(name.name)


def push_file(repo: Repository, source: str, path: str | Path, guard: IdentityGuard | None = None,
              view: ArchiveView | None = None) -> PushResult:
    """Archive one file PostgreSQL handed to archive_command; idempotent (see the module docstring).

    The file goes to the stream of its system's history epoch (``IdentityGuard``); ``view`` spares the
    lookup of names it knows to be absent (``ArchiveView``). Raises ``WalNameError``
    for names PostgreSQL never archives, ``WalRefused`` (``ForeignWal``, ``WalConflict``) for pushes that
    retrying cannot fix, and storage errors for the rest.
    """
    started = time.monotonic()
    path = Path(path)
    name = parse_wal_name(path.name)
    guard = guard or IdentityGuard(repo, source)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; the descriptor is kept for fstat
    except FileNotFoundError as exc:
        raise BackupctlError(f"{path} does not exist (archive_command's %p is relative to the data directory)") \
            from exc
    except OSError as exc:
        raise BackupctlError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        st = os.fstat(handle.fileno())
        in_memory = st.st_size <= IN_MEMORY_LIMIT
        data = _read_whole(handle, st.st_size) if in_memory else memoryview(handle.read(LONG_HEADER.size))
        if len(data) != st.st_size and in_memory:
            raise BackupctlError(f"{path} changed size while it was read")
        if name.kind in ("segment", "partial"):
            header = read_header(bytes(data[:LONG_HEADER.size]), path.name)
            check_segment(name, header, st.st_size, path.name)
            stream = guard.check(header, path)
        else:
            stream = guard.check_system(pg_control_sysid(path), path.name)
        if in_memory:
            digest = hashlib.sha256(data).hexdigest()
        else:
            handle.seek(0)
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        prefix = object_prefix(stream, name)
        viewed = view is not None and view.absent(repo, stream, name)
        existing = [] if viewed else find_archived(repo, stream, name)
        found = _archived_copy(existing, digest, name, source)
        if found is not None:
            return PushResult(name.name, found.key, "already archived", st.st_size,
                              time.monotonic() - started, _stat_key(st))
        if in_memory:
            key = repo.pipeline.object_key(prefix + digest)
            if view is not None and viewed and view.contended(stream, name) and repo.storage.head(key) is not None:
                view.stored(stream, name)
                return PushResult(name.name, key, "already archived", st.st_size, time.monotonic() - started,
                                  _stat_key(st))
            zero_copy = isinstance(repo.pipeline.codec, SerialCodec)
            reader: Any = _ViewReader(data) if zero_copy else io.BytesIO(data)
            if repo.pipeline.store_if_absent(prefix + digest, reader) is None:
                # Another writer (a standby with archive_mode = always) stored this very content meanwhile.
                found = _archived_copy(find_archived(repo, stream, name), digest, name, source)
                if view is not None:
                    view.lost(stream, name)
                    view.stored(stream, name)
                return PushResult(name.name, found.key if found else key, "already archived",
                                  st.st_size, time.monotonic() - started, _stat_key(st))
        else:
            handle.seek(0)
            check = _DigestCheck(handle, digest, path.name)
            key = repo.pipeline.store(prefix + digest, check, finalize=check.verify).key  # type: ignore[arg-type]
    if view is not None:
        view.stored(stream, name)
    return PushResult(name.name, key, "stored", st.st_size, time.monotonic() - started, _stat_key(st))


def _archived_copy(existing: list[ArchivedWal], digest: str, name: WalName, source: str) -> ArchivedWal | None:
    """The archived object of ``name`` with this file's ``digest`` (the push is then done), None when nothing
    is archived under the name; ``WalConflict`` when only different bytes are."""
    for obj in existing:
        if obj.sha256 == digest:
            return obj
    if existing:
        raise WalConflict(
            f"{name.name} is already archived with sha256 {existing[0].sha256}, but this file has sha256 "
            f"{digest}: a different file under the same name (another cluster archiving into source "
            f"{source!r}?); the archived one is kept"
        )
    return None


class _ViewReader:
    """A reader that hands out slices of one buffer without copying them (for ``Pipeline.store``)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._offset = 0

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size < 0 else min(len(self._view), self._offset + size)
        chunk = self._view[self._offset:end]
        self._offset = end
        return chunk


_buffers = threading.local()


def _read_whole(handle: BinaryIO, size: int) -> memoryview:
    """The file's bytes in this thread's reusable buffer: no fresh 16 MiB (and its page faults) per segment.

    The view is valid until this thread reads the next file.
    """
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _buffers.buffer = bytearray(size)
    view = memoryview(buffer)[:size]
    got = 0
    while got < size:
        n = handle.readinto(view[got:])
        if not n:
            break
        got += n
    return view[:got]


class _DigestCheck(io.RawIOBase):
    """Re-reads a large file for the upload and proves it is the one that was hashed."""

    def __init__(self, source: BinaryIO, digest: str, what: str) -> None:
        self._source = source
        self._hash = hashlib.sha256()
        self._digest = digest
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        self._hash.update(data)
        return len(data)

    def verify(self) -> None:
        if self._hash.hexdigest() != self._digest:
            raise BackupctlError(f"{self._what} changed while it was being archived")
