"""PostgreSQL's backup_manifest, and proving restored files against it in the same pass that writes them.

pg_basebackup records every file of a backup with its size and a checksum (CRC32C unless told
otherwise), and seals the manifest with a SHA-256 of its own text. ``pg_verifybackup`` checks a restored
directory by reading every file back; backupctl checks the same things as the bytes go by during
extraction instead: the manifest's own checksum, each file's size and checksum, no file missing and none
that the manifest does not know. WAL (``pg_wal/``) is left out, as ``pg_verifybackup --no-parse-wal``
leaves it out: it comes from the archive.

A delta restore (``restore --delta``) reuses files already in the target that match the manifest: it
reads each candidate once, keeps the ones whose size and checksum match, and removes everything the
backup does not have, so what remains is exactly what a restore into an empty directory would write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c

from backupctl.core.errors import IntegrityError
from backupctl.postgres.tarstream import remove_path

IGNORED_PREFIXES = (b"pg_wal/",)  # WAL comes from the archive, as with pg_verifybackup --no-parse-wal
# Files whose data ends with their own CRC-32C (pg_control, relation maps, two-phase state, replication
# origins): the CRC-32C of the whole file is then the same for every valid version, so the manifest's
# checksum cannot tell an old one from the backup's. A delta restore always writes them; they are small.
SELF_CHECKSUMMED = (b"global/pg_control", b"pg_logical/replorigin_checkpoint")
SELF_CHECKSUMMED_PARTS = (b"/pg_filenode.map",)
MANIFEST_NAME = b"backup_manifest"  # written from its own object, never from a tar member
# A backupctl restore keeps this file in the data directory until its files are complete: --force and
# --delta accept a directory that holds it (an interrupted restore), and --delta keeps it while it works.
RESTORE_MARKER = "backupctl.restore-in-progress"
READ_STEP = 1024 * 1024


class Crc32c:
    """CRC-32C in PostgreSQL's manifest notation: the 4 bytes in little-endian order, as hex."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = crc32c.crc32c(data, self.value)  # releases the GIL for large buffers

    def hexdigest(self) -> str:
        return self.value.to_bytes(4, "little").hex()


class _SizeOnly:
    """For manifests made with --manifest-checksums=none: the size is all there is to check."""

    def update(self, data: Any) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


def new_hasher(algorithm: str) -> Any:
    if algorithm == "CRC32C":
        return Crc32c()
    if algorithm == "NONE":
        return _SizeOnly()
    if algorithm in ("SHA224", "SHA256", "SHA384", "SHA512"):
        return hashlib.new(algorithm.lower())
    raise IntegrityError(f"the backup_manifest uses checksum algorithm {algorithm!r}, which backupctl does not know")


@dataclass(frozen=True)
class FileEntry:
    size: int
    algorithm: str
    checksum: str  # lower-case hex, "" without a checksum


class BackupManifest:
    """A parsed backup_manifest whose own SHA-256 has been checked."""

    def __init__(self, data: bytes) -> None:
        try:
            document = json.loads(data)
            files = document["Files"]
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"the backup's backup_manifest cannot be read: {exc}") from exc
        _check_manifest_checksum(data, document.get("Manifest-Checksum"))
        self.data = data
        self.files: dict[bytes, FileEntry] = {}
        for entry in files:
            path = bytes.fromhex(entry["Encoded-Path"]) if "Encoded-Path" in entry else os.fsencode(entry["Path"])
            algorithm = entry.get("Checksum-Algorithm", "NONE")
            self.files[path] = FileEntry(int(entry["Size"]), algorithm, entry.get("Checksum", "").lower())

    def checked_files(self) -> Iterable[bytes]:
        """The files a restore must produce (WAL excluded)."""
        return (path for path in self.files if not path.startswith(IGNORED_PREFIXES))


class ManifestWriter:
    """A backup_manifest as the server writes it, for a backup whose files backupctl copied itself.

    The layout follows PostgreSQL's own (one line per file, the WAL ranges, then the SHA-256 of every
    line before the last), so ``pg_verifybackup``, ``pg_combinebackup`` and an incremental backup's
    ``UPLOAD_MANIFEST`` read it like one of pg_basebackup's. Version 2 (PostgreSQL 17+) names the system.
    """

    def __init__(self, major: int, system_identifier: str) -> None:
        version = 2 if major >= 17 else 1
        head = f'{{ "PostgreSQL-Backup-Manifest-Version": {version},\n'
        if version == 2:
            head += f'"System-Identifier": {int(system_identifier)},\n'
        self._lines = [head + '"Files": [']
        self._files = 0

    def add_file(self, path: bytes, size: int, mtime: float, crc: Crc32c) -> None:
        try:
            name = '"Path": ' + json.dumps(path.decode())
        except UnicodeDecodeError:
            name = f'"Encoded-Path": "{path.hex()}"'
        modified = time.strftime("%Y-%m-%d %H:%M:%S GMT", time.gmtime(mtime))
        self._lines.append(("\n" if not self._files else ",\n") + f'{{ {name}, "Size": {size}, "Last-Modified": '
                           f'"{modified}", "Checksum-Algorithm": "CRC32C", "Checksum": "{crc.hexdigest()}" }}')
        self._files += 1

    def finish(self, timeline: int, start_lsn: str, end_lsn: str) -> bytes:
        """The whole manifest, sealed; ``start_lsn``/``end_lsn`` in PostgreSQL's X/X notation."""
        self._lines.append(f'\n],\n"WAL-Ranges": [\n{{ "Timeline": {timeline}, "Start-LSN": "{start_lsn}", '
                           f'"End-LSN": "{end_lsn}" }}\n],\n')
        body = "".join(self._lines).encode()
        return body + f'"Manifest-Checksum": "{hashlib.sha256(body).hexdigest()}"}}\n'.encode()


def _check_manifest_checksum(data: bytes, recorded: Any) -> None:
    """PostgreSQL's rule: SHA-256 of everything up to and including the newline before the last line."""
    last = data.rfind(b"\n", 0, len(data) - 1)
    if not isinstance(recorded, str) or last < 0 or not data.endswith(b"\n"):
        raise IntegrityError("the backup's backup_manifest has no Manifest-Checksum: it is damaged")
    actual = hashlib.sha256(data[:last + 1]).hexdigest()
    if actual != recorded.lower():
        raise IntegrityError(f"the backup's backup_manifest is damaged: its SHA-256 is {actual[:16]}..., "
                             f"it records {recorded[:16]}...")


def _name(path: bytes) -> str:
    return path.decode(errors="replace")


class ManifestCheck:
    """Proves the files of one restore against the manifest while they are written (thread-safe).

    ``reused`` are files already in place and proven (a delta restore): they are neither written nor
    checked again.
    """

    def __init__(self, manifest: BackupManifest, reused: set[bytes] | None = None) -> None:
        self.manifest = manifest
        self.reused = reused or set()
        self._proven: set[bytes] = set()
        self._lock = threading.Lock()

    def archive(self, prefix: bytes) -> ArchiveCheck:
        """The checks for one tar archive, whose member names are ``prefix`` + name in the manifest."""
        return ArchiveCheck(self, prefix)

    def begin(self, path: bytes, size: int) -> Any:
        if path == MANIFEST_NAME or path in self.reused:
            return None
        entry = self.manifest.files.get(path)
        if entry is None:
            if path.startswith(IGNORED_PREFIXES):
                return _SizeOnly()
            raise IntegrityError(f"the backup holds {_name(path)}, which its backup_manifest does not list: "
                                 "the backup is not the one the manifest describes")
        return new_hasher(entry.algorithm)

    def end(self, path: bytes, size: int, hasher: Any) -> None:
        entry = self.manifest.files.get(path)
        if entry is None:
            return
        digest = hasher.hexdigest()
        if size != entry.size or digest != entry.checksum:
            raise IntegrityError(
                f"restored file {_name(path)} does not match the backup's manifest: {size} bytes"
                + (f" with {entry.algorithm} {digest}" if entry.checksum else "")
                + f", the manifest records {entry.size}" + (f" and {entry.checksum}" if entry.checksum else "")
            )
        with self._lock:
            self._proven.add(path)

    def finish(self) -> int:
        """Every file of the manifest is in place and proven; returns how many."""
        missing = [p for p in self.manifest.checked_files() if p not in self._proven and p not in self.reused]
        if missing:
            raise IntegrityError(
                f"{len(missing)} files of the backup's manifest were not restored, e.g. {_name(sorted(missing)[0])}: "
                "the backup is incomplete"
            )
        return len(self._proven) + len(self.reused)


@dataclass
class ArchiveCheck:
    """``FileChecks`` for the extraction of one archive (see ``tarstream.TarExtractor``)."""

    check: ManifestCheck
    prefix: bytes

    def begin(self, name: bytes, size: int) -> Any:
        return self.check.begin(self.prefix + name, size)

    def end(self, name: bytes, size: int, hasher: Any) -> None:
        self.check.end(self.prefix + name, size, hasher)


def file_digest(path: bytes, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    buffer = bytearray(READ_STEP)
    with open(path, "rb", buffering=0) as handle:
        while got := handle.readinto(buffer):
            hasher.update(memoryview(buffer)[:got])
    return str(hasher.hexdigest())


@dataclass
class DeltaResult:
    reused: set[bytes]
    reused_bytes: int
    removed: int


def prepare_delta(manifest: BackupManifest, roots: dict[bytes, Path], jobs: int) -> DeltaResult:
    """Keep the files under ``roots`` that match the manifest; remove every other file and symlink.

    ``roots`` maps a manifest prefix (``b""`` for the data directory, ``b"pg_tblspc/<oid>/"`` for a
    tablespace) to the directory that holds it. A ``pg_wal`` that is a symlink to a directory (WAL on
    its own disk) stays a symlink; its contents go, like all WAL. Directories are left to ``prune``.
    """
    candidates: list[tuple[bytes, bytes, FileEntry]] = []
    removed = 0
    for prefix, root in roots.items():
        for path, rel in _walk(os.fsencode(root), prefix):
            if rel == os.fsencode(RESTORE_MARKER):
                continue
            entry = manifest.files.get(rel)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            if (entry is not None and stat.S_ISREG(info.st_mode) and info.st_size == entry.size
                    and not _always_written(rel, entry)):
                candidates.append((path, rel, entry))
            else:
                remove_path(path)
                removed += 1

    def proven(item: tuple[bytes, bytes, FileEntry]) -> bool:
        path, _, entry = item
        if file_digest(path, entry.algorithm) == entry.checksum:
            return True
        os.unlink(path)
        return False

    reused: set[bytes] = set()
    reused_bytes = 0
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for item, ok in zip(candidates, pool.map(proven, candidates), strict=True):
            if ok:
                reused.add(item[1])
                reused_bytes += item[2].size
            else:
                removed += 1
    return DeltaResult(reused, reused_bytes, removed)


def _always_written(path: bytes, entry: FileEntry) -> bool:
    """WAL, and files whose CRC-32C cannot tell versions apart (see ``SELF_CHECKSUMMED``)."""
    if path.startswith(IGNORED_PREFIXES):
        return True
    return entry.algorithm == "CRC32C" and (
        path in SELF_CHECKSUMMED or path.endswith(SELF_CHECKSUMMED_PARTS) or path.startswith(b"pg_twophase/"))


def _walk(root: bytes, prefix: bytes) -> Iterable[tuple[bytes, bytes]]:
    """Every entry under ``root`` that is not a plain directory, as (path, manifest name).

    Symlinks are not followed, except a ``pg_wal`` link (its WAL goes, the link stays). Entries right
    under the data directory's ``pg_tblspc`` are leaves: the restore links them to their tablespaces anew.
    """
    for directory, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(directory, root)
        rel = prefix + (b"" if rel == b"." else rel + b"/")
        for name in list(dirnames):
            path = os.path.join(directory, name)
            if rel + name == b"pg_wal" and os.path.islink(path):
                dirnames.remove(name)
                yield from ((p, b"pg_wal/" + r) for p, r in _walk(path, b""))
            elif os.path.islink(path) or rel == b"pg_tblspc/":
                dirnames.remove(name)
                yield path, rel + name
        for name in filenames:
            yield os.path.join(directory, name), rel + name


def expected_directories(manifest: BackupManifest, extracted: Iterable[bytes]) -> set[bytes]:
    """Directories a restore leaves in place: those the archives hold, and every parent of a file."""
    keep = set(extracted)
    for path in manifest.checked_files():
        while b"/" in path:
            path = path.rsplit(b"/", 1)[0]
            keep.add(path)
    return keep


def prune(roots: dict[bytes, Path], keep: set[bytes]) -> None:
    """Remove directories under ``roots`` that the backup does not have."""
    for prefix, root in roots.items():
        base = os.fsencode(root)
        for directory, _, _ in os.walk(base, topdown=False):
            rel = os.path.relpath(directory, base)
            if rel != b"." and prefix + rel not in keep:
                shutil.rmtree(directory, ignore_errors=True)
