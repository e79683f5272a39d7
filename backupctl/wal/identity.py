"""A segment's identity: its long page header, and the PostgreSQL system it must belong to.

Every segment starts with a long page header naming its system identifier, timeline, position and segment
size. A push reads it before anything is stored: the first push (or the first backup) registers the
source's system, major and segment size with a conditional write, and WAL of any other system is refused
(``ForeignWal``), unless ``wal new-epoch`` made that system a later history epoch of the source, in which
case the file goes to that epoch's stream (``IdentityGuard``). A fetch makes the same check against the
restoring cluster's pg_control: PostgreSQL would take another system's page header for the end of WAL.
"""

from __future__ import annotations

import json
import shlex
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backupctl.core.errors import BackupctlError
from backupctl.repo import layout
from backupctl.repo.repository import SourceMismatch
from backupctl.wal.names import WalName, WalNameError, format_lsn, is_valid_segment_size, segments_per_log
from backupctl.wal.streams import SourceIdentity, current_stream, list_streams, read_identity

if TYPE_CHECKING:
    from backupctl.core.config import Config
    from backupctl.repo.repository import Repository

# Long page header of a WAL segment's first page (little-endian, as written on x86 and ARM):
# magic, info, timeline, page address, remaining length, padding, system identifier, segment size,
# WAL block size.
LONG_HEADER = struct.Struct("<HHIQI4xQII")
XLP_LONG_HEADER = 0x0002
# XLOG_PAGE_MAGIC of each major (src/include/access/xlog_internal.h); 15 and 18 checked on real servers.
MAGIC_MAJOR = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}


class WalRefused(BackupctlError):
    """A push that can never succeed as it stands (another system's WAL, a conflicting checksum,
    a damaged header): retrying will not help, a person must look."""


class WalConflict(WalRefused):
    """A different file is already archived under the same name."""


class ForeignWal(WalRefused):
    """WAL of another PostgreSQL system (another system identifier or major) than the source's."""


@dataclass(frozen=True)
class SegmentHeader:
    """The long page header at the start of every WAL segment."""

    magic: int
    timeline: int
    page_address: int
    system_identifier: str
    segment_size: int
    block_size: int
    major: int | None  # None for a magic this backupctl does not know (a newer PostgreSQL)


def read_header(data: bytes, what: str) -> SegmentHeader:
    """Decode the long page header; ``WalRefused`` when ``data`` does not start with one."""
    if len(data) < LONG_HEADER.size:
        raise WalRefused(f"{what} is too short ({len(data)} bytes) to be a WAL segment")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = LONG_HEADER.unpack_from(data)
    if not info & XLP_LONG_HEADER or not is_valid_segment_size(seg_size) or not blcksz:
        raise WalRefused(
            f"{what} does not start with a WAL long page header (magic 0x{magic:04X}, info 0x{info:04X}, "
            f"segment size {seg_size}): it is not a WAL segment or it is damaged"
        )
    return SegmentHeader(magic, tli, pageaddr, str(sysid), seg_size, blcksz, MAGIC_MAJOR.get(magic))


def check_segment(name: WalName, header: SegmentHeader, size: int, what: str) -> None:
    """The header must describe the segment its name says, at its full size."""
    seg_size = header.segment_size
    if name.seg >= segments_per_log(seg_size):
        raise WalNameError(f"{name.name!r} cannot exist with {seg_size // 1024**2} MiB segments")
    expected = name.start_lsn(seg_size)
    if header.page_address != expected:
        raise WalRefused(
            f"{what} holds WAL from {format_lsn(header.page_address)}, but its name says "
            f"{format_lsn(expected)}: the file was renamed or is damaged"
        )
    if header.timeline > name.timeline:
        raise WalRefused(f"{what} holds timeline {header.timeline}, but its name says {name.timeline}")
    if size != seg_size:
        raise WalRefused(f"{what} has {size} bytes; its header says segments have {seg_size}")


def _major_of(header: SegmentHeader, path: Path) -> int:
    if header.major is not None:
        return header.major
    # A magic this version does not know: ask the data directory (pg_wal's parent).
    try:
        return int((data_directory(path) / "PG_VERSION").read_text().strip())
    except (OSError, ValueError) as exc:
        raise WalRefused(
            f"{path.name} has WAL page magic 0x{header.magic:04X}, which this backupctl does not know: "
            "upgrade backupctl"
        ) from exc


def data_directory(path: Path) -> Path:
    """The data directory of a file in its pg_wal: archive_command's and restore_command's %p are
    ``pg_wal/NAME`` relative to it (a symlinked pg_wal is not followed: the link lives in the data directory)."""
    return path.absolute().parent.parent


def pg_control_sysid(path: Path) -> str | None:
    """The system identifier in the data directory's pg_control (for files without a WAL header)."""
    try:
        with open(data_directory(path) / "global" / "pg_control", "rb") as handle:
            data = handle.read(8)
    except OSError:
        return None
    return str(struct.unpack("<Q", data)[0]) if len(data) == 8 else None


def new_epoch_hint(config: Config | None, source: str) -> str:
    config_arg = f" --config {shlex.quote(str(config.file))}" if config is not None else ""
    return f"backupctl{config_arg} wal new-epoch {shlex.quote(source)}"


def foreign_system(repo: Repository, source: str, what: str, sysid: str, major: int | None,
                   current: SourceIdentity | None) -> ForeignWal:
    """The refusal of a system that is no epoch of ``source``, naming the command that starts one."""
    server = f"PostgreSQL {major} system {sysid}" if major else f"system {sysid}"
    archived = " archives another system"
    if current is not None:
        epoch = f" (history epoch {current.epoch})" if current.epoch > 1 else ""
        archived = f" archives {current.describe()}{epoch}"
    return ForeignWal(
        f"{what} comes from {server}, but source {source!r} in {repo.storage.location}{archived}: if this "
        f"cluster was upgraded (pg_upgrade) or re-created, start a new history epoch with "
        f"`{new_epoch_hint(repo.config, source)}`; otherwise archive_command or the config names the wrong source"
    )


class IdentityGuard:
    """Finds the stream of each file's system, registers a source on its first WAL, refuses other systems.

    Thread-safe. The common case asks the repository once per process (source.json never changes once
    written); the epochs are listed only for a system that is not epoch 1's, and again for a system not
    seen yet, so that a resident pusher takes up an epoch that ``wal new-epoch`` has just started.
    """

    def __init__(self, repo: Repository, source: str) -> None:
        self.repo = repo
        self.source = source
        self._systems: dict[str, SourceIdentity] = {}
        self._newest: SourceIdentity | None = None
        self._lock = threading.Lock()

    def check(self, header: SegmentHeader, path: Path) -> str:
        """The stream a segment goes to; ``ForeignWal`` for a system that is no epoch of the source."""
        major = _major_of(header, path)
        sysid = header.system_identifier
        with self._lock:
            known = self._find(sysid, (major, header.segment_size))
            if known is not None and known.segment_size is None:
                self._record_size(known, header.segment_size)
        if known is None:
            raise foreign_system(self.repo, self.source, path.name, sysid, major, self._newest)
        if known.major != major:
            raise ForeignWal(f"{path.name} comes from PostgreSQL {major}, but system {sysid} of source "
                             f"{self.source!r} is PostgreSQL {known.major}: it comes from another cluster")
        if known.segment_size is not None and known.segment_size != header.segment_size:
            raise ForeignWal(
                f"{path.name} is a {header.segment_size}-byte WAL segment, but source {self.source!r} archives "
                f"{known.segment_size}-byte segments for {known.describe()}: it comes from another cluster"
            )
        return known.stream

    def check_system(self, sysid: str | None, what: str) -> str:
        """The stream of a file without a WAL header (history, backup history), by the data directory's
        pg_control. Without one (a file pushed by hand from elsewhere): the newest epoch, the live server's."""
        with self._lock:
            if sysid is None:
                newest = current_stream(self.repo, self.source)
                return newest.stream if newest else self.source
            known = self._find(sysid, None)
        if known is not None:
            return known.stream
        if self._newest is None:
            return self.source  # nothing registered yet: the first segment registers the source
        raise foreign_system(self.repo, self.source, what, sysid, None, self._newest)

    def _find(self, sysid: str, register: tuple[int, int] | None) -> SourceIdentity | None:
        """The epoch of ``sysid`` (under the lock); ``register``: (major, segment size) for a first push."""
        known = self._systems.get(sysid)
        if known is not None:
            return known
        if self._newest is None:
            first = read_identity(self.repo, self.source)
            if first is None and register is not None:
                first = self._register(sysid, *register)
            if first is None:
                return None
            self._remember([first])
            if first.system_identifier == sysid:
                return first
        self._remember(list_streams(self.repo, self.source))
        return self._systems.get(sysid)

    def _remember(self, identities: list[SourceIdentity]) -> None:
        for identity in identities:
            self._systems.setdefault(identity.system_identifier, identity)
            if self._newest is None or identity.epoch > self._newest.epoch:
                self._newest = identity

    def _register(self, sysid: str, major: int, size: int) -> SourceIdentity | None:
        try:
            doc = self.repo.register_source(
                self.source, {"kind": "postgres", "system_identifier": sysid, "major": major},
                recorded={"wal_segment_size": size},
            )
        except SourceMismatch:
            return read_identity(self.repo, self.source)  # another system registered first: judged by the caller
        return SourceIdentity(str(doc["system_identifier"]), int(doc["major"]), doc.get("wal_segment_size"),
                              1, self.source, doc.get("registered_at"))

    def _record_size(self, known: SourceIdentity, size: int) -> None:
        """Registered by a logical backup, which cannot know the segment size: record it beside the WAL."""
        key = layout.wal_segment_size_key(known.stream)
        if not self.repo.storage.put_if_absent(key, json.dumps({"wal_segment_size": size}).encode()):
            known.segment_size = int(json.loads(self.repo.storage.get_bytes(key))["wal_segment_size"])
        else:
            known.segment_size = size
