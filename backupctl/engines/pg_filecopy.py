"""A full physical backup that reads the data directory itself, on the database host, between
``pg_backup_start`` and ``pg_backup_stop``.

pg_basebackup moves every byte four times (the server reads the file, sends it over the replication
connection, pg_basebackup receives it and writes it to a pipe, backupctl reads the pipe), in two extra
processes: on 2 cores that is most of a full backup's CPU. When backupctl runs where the cluster lives
(the configured ``pgdata`` is the server's data directory), it takes the backup the way the server's
low-level API allows: a session calls ``pg_backup_start``, backupctl reads the files straight into the
compressor's buffers, and the same session calls ``pg_backup_stop``, whose label file and tablespace map
go into the archive. What goes in follows the server's own rules (``postgres.datadir``), the archives
have pg_basebackup's layout (``base`` and one per tablespace, stored in parts of whole files), and the
backup_manifest is written as the server writes it (``ManifestWriter``: CRC-32C of every file), so a
restore, ``pg_verifybackup``, ``pg_combinebackup`` and an incremental backup built on it cannot tell the
difference. Torn pages are harmless, as in any online backup: recovery replays the WAL from the backup's
start, which must be archived before the backup counts (``wait_until_stored``). A file that shrinks
while it is read is padded with zeros to its size at the walk and one that grows is read to that size,
as the server does; WAL replay restores both. ``pg_control`` is read last and read again until its own
CRC holds, so a concurrent rewrite of it is never stored torn.

Incremental backups (the server decides which blocks changed) and backups from another host still use
pg_basebackup (``pg_physical.stream_basebackup``).
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import crc32c

from backupctl.core.errors import BackupctlError
from backupctl.core.log import get_logger
from backupctl.engines.pg_physical import (
    ArchiverWatch,
    ServerFacts,
    StandbyWal,
    Store,
    StreamedBackup,
    WalRange,
    store_archive,
    wait_for_backup_wal,
    wait_for_standby_wal,
)
from backupctl.postgres.backup_manifest import Crc32c, ManifestWriter
from backupctl.postgres.connection import ConnParams
from backupctl.postgres.datadir import CONTROL_FILE, Entry, unreadable, walk
from backupctl.postgres.tarstream import BLOCK, DIRECTORY, END, FILE, Member, tar_header
from backupctl.repo import layout

log = get_logger(__name__)

CONTROL_READS = 10  # attempts at a pg_control whose CRC holds (the server rewrites it in one write)
_LABEL_LINE = re.compile(r"START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) .*\nSTART TIMELINE: (\d+)", re.S)


def unusable_reason(params: ConnParams, facts: ServerFacts, pgdata: str | None) -> str | None:
    """Why this host cannot copy the data directory itself (then pg_basebackup does), or None when it can.

    The configured ``pgdata`` must be the server's own data directory on this host, proven by its path and
    by the system identifier in its ``pg_control`` (a standby's data directory on the same host, or a
    stale copy, would pass the first test alone), and the role must be allowed to run ``pg_backup_start``.
    """
    if facts.major < 15:
        return f"PostgreSQL {facts.major} has no pg_backup_start (15 and newer)"
    if not pgdata:
        return "the source has no pgdata"
    if os.path.realpath(pgdata) != os.path.realpath(facts.data_directory):
        return f"pgdata {pgdata} is not the server's data directory {facts.data_directory} on this host"
    try:
        with open(os.path.join(pgdata, CONTROL_FILE), "rb") as control:
            identifier = int.from_bytes(control.read(8), "little")
    except OSError as exc:
        return f"cannot read {pgdata}/{CONTROL_FILE}: {exc.strerror}"
    if str(identifier) != facts.system_identifier:
        return f"{pgdata} belongs to system {identifier}, the server is system {facts.system_identifier}"
    with params.connect() as conn:
        allowed = conn.execute(
            "SELECT has_function_privilege('pg_backup_start(text, boolean)', 'EXECUTE')").fetchone()[0]
    if not allowed:
        return f"role {params.user or 'of the connection'} may not run pg_backup_start"
    return None


def _control_crc_holds(data: bytes) -> bool:
    """Whether ``data`` (pg_control) ends its ControlFileData with a CRC-32C that matches what precedes it.

    The struct's length differs between majors, so every 4-byte boundary of the first kilobyte is tried;
    a torn read matches at none of them.
    """
    return any(crc32c.crc32c(data[:end]) == int.from_bytes(data[end:end + 4], "little")
               for end in range(64, min(len(data) - 4, 1024), 4))


class _ArchiveSource(io.RawIOBase):
    """One archive as a tar stream, read from disk as the consumer asks for it (``store_archive`` splits it).

    Each file's bytes are read straight into the consumer's buffer, and its CRC-32C goes to the manifest
    once the file is complete. ``tail`` is called when the walk is over and returns the files that only
    exist then (backup_label, tablespace_map), with their contents.
    """

    def __init__(self, entries: Iterator[Entry], manifest_prefix: bytes, manifest: ManifestWriter,
                 tail: Callable[[], list[tuple[bytes, bytes]]] | None = None) -> None:
        self._entries = entries
        self._prefix = manifest_prefix
        self._manifest = manifest
        self._tail = tail
        self._out = memoryview(b"")  # header, padding, in-memory file or end marker still to hand out
        self._file: tuple[Entry, int, Crc32c] | None = None  # the file being read, its fd, its checksum
        self._left = 0  # of the current file's bytes
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if self._out:
                n = min(len(self._out), len(view))
                view[:n] = self._out[:n]
                self._out = self._out[n:]
                return n
            if self._file is not None:
                return self._read_file(view)
            if self._ended:
                return 0
            self._next()

    def _next(self) -> None:
        entry = next(self._entries, None)
        if entry is None:
            pending = b"".join(self._in_memory(name, data) for name, data in (self._tail() if self._tail else []))
            self._out = memoryview(pending + END)
            self._ended = True
            return
        if entry.kind == DIRECTORY:
            self._out = memoryview(tar_header(Member(entry.name, DIRECTORY, 0, entry.mode, entry.mtime, b"")))
            return
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # removed since the walk (a dropped table): the server skips it too
        except OSError as exc:
            raise unreadable(entry.path, exc) from exc
        if entry.name == CONTROL_FILE.encode():
            os.close(fd)
            self._out = memoryview(self._in_memory(entry.name, _read_control(entry.path), entry.mtime))
            return
        self._file, self._left = (entry, fd, Crc32c()), entry.size
        header = tar_header(Member(entry.name, FILE, entry.size, entry.mode, entry.mtime, b""))
        self._out = memoryview(header + self._end_file() if not entry.size else header)

    def _read_file(self, view: memoryview) -> int:
        assert self._file is not None
        _, fd, crc = self._file
        want = view[:min(len(view), self._left)]
        try:
            got = os.readv(fd, [want])
        except OSError as exc:
            raise unreadable(self._file[0].path, exc) from exc
        if not got:  # truncated since the walk: zeros to the size the header announced
            want[:] = bytes(len(want))
            got = len(want)
        crc.update(want[:got])
        self._left -= got
        if not self._left:
            self._out = memoryview(self._end_file())
        return got

    def _end_file(self) -> bytes:
        """Close the file and record it; returns the padding that completes its last block."""
        assert self._file is not None
        entry, fd, crc = self._file
        os.close(fd)
        self._file = None
        self._manifest.add_file(self._prefix + entry.name, entry.size, entry.mtime, crc)
        return bytes(-entry.size % BLOCK)

    def _in_memory(self, name: bytes, data: bytes, mtime: float | None = None) -> bytes:
        """A member whose bytes are already here; recorded in the manifest at once."""
        mtime = time.time() if mtime is None else mtime
        crc = Crc32c()
        crc.update(data)
        self._manifest.add_file(self._prefix + name, len(data), mtime, crc)
        return tar_header(Member(name, FILE, len(data), 0o600, int(mtime), b"")) + data + bytes(-len(data) % BLOCK)

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file[1])
            self._file = None
        super().close()


def _read_control(path: bytes) -> bytes:
    for _ in range(CONTROL_READS):
        with open(path, "rb") as control:
            data = control.read()
        if _control_crc_holds(data):
            return data
        time.sleep(0.01)
    raise BackupctlError(f"{os.fsdecode(path)} never read back with a valid CRC in {CONTROL_READS} attempts: "
                         "the file is damaged; the backup is not taken")


def copy_data_directory(params: ConnParams, facts: ServerFacts, pgdata: str, label: str, fast_checkpoint: bool,
                        store: Store, wal_present: Callable[[list[str]], set[str]],
                        part_bytes: int, standby: StandbyWal | None = None) -> StreamedBackup:
    """The backup: tablespaces first, then the data directory, pg_control last, then pg_backup_stop.

    Returns when every WAL segment from the backup's start to its stop is in the repository (on a standby,
    ``standby`` says how: ``pg_physical.wait_for_standby_wal``).
    """
    result = StreamedBackup(tablespaces=dict(facts.tablespaces))
    manifest = ManifestWriter(facts.major, facts.system_identifier)
    watch = ArchiverWatch(standby.archiver if standby else params)
    with params.connect() as session:
        session.execute("SELECT pg_backup_start(%s, %s)", (label, fast_checkpoint))
        watch.start()
        try:
            version_directory = f"PG_{facts.major}_{facts.catalog_version}"
            roots = frozenset(os.path.realpath(location) for location in facts.tablespaces.values())
            for oid, location in sorted(facts.tablespaces.items()):
                entries = walk(os.path.join(location, version_directory), version_directory, major=facts.major)
                source = _ArchiveSource(entries, f"pg_tblspc/{oid}/".encode(), manifest)
                objects, _ = store_archive(source, layout.tar_archive(f"{oid}.tar"), store, part_bytes)
                result.objects.extend(objects)
            stopped: dict[str, str] = {}

            def stop() -> list[tuple[bytes, bytes]]:
                row = session.execute("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)").fetchone()
                stopped.update(lsn=row[0], label=row[1])
                files = [(b"backup_label", row[1].encode())]
                if facts.tablespaces:
                    files.append((b"tablespace_map", row[2].encode()))
                return files

            source = _ArchiveSource(walk(pgdata, tablespace_roots=roots, major=facts.major), b"", manifest, stop)
            objects, _ = store_archive(source, layout.BASE_ARCHIVE, store, part_bytes)
            result.objects.extend(objects)
            found = _LABEL_LINE.search(stopped["label"])
            if found is None:
                raise BackupctlError(f"pg_backup_stop returned a label file backupctl cannot read: "
                                     f"{stopped['label'][:200]!r}")
            result.wal = WalRange(int(found.group(2)), found.group(1), stopped["lsn"])
            result.manifest = manifest.finish(result.wal.timeline, result.wal.start_lsn, result.wal.end_lsn)
            if standby is not None:
                result.wal_wait_seconds = wait_for_standby_wal(standby, result.wal, facts.segment_size, wal_present,
                                                               watch)
            else:
                result.wal_wait_seconds = wait_for_backup_wal(session, result.wal, facts.segment_size, wal_present,
                                                              watch)
        finally:
            watch.stop.set()
    log.debug("data directory copied", pgdata=pgdata, wal_wait_seconds=result.wal_wait_seconds)
    return result
