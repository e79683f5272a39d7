"""WAL archiving: names, keys, pushing and fetching segments, and reading the archive back.

Layout in the repository (each object goes through the pipeline, so it carries the pipeline's
compression and encryption extensions, e.g. ``.zst.age``)::

    <source>/wal/<TLI+log, 16 hex>/<segment>-<sha256 of the plain segment>      WAL segments
    <source>/wal/<TLI+log, 16 hex>/<segment>.partial-<sha256>                   last segment of a timeline
    <source>/wal/<TLI+log, 16 hex>/<segment>.<offset>.backup-<sha256>           backup history files
    <source>/wal/<TLI>.history-<sha256>                                         timeline history files
    <source>/wal/segment_size.json      the WAL segment size, when a logical backup registered the source

The plaintext checksum in the key is what makes a push idempotent without the private key (as
pgBackRest does with SHA1): pushing a segment again finds its own key and succeeds; a different segment
under the same name finds another checksum and fails, naming both. A push checks the segment's long
page header: the first push (or the first backup) registers the source's system identifier, major and
segment size with a conditional write, and WAL of any other system is refused, unless ``wal new-epoch``
made it a later history epoch of the source (after pg_upgrade: see ``backupctl.wal.epochs``); each epoch's
WAL has its own *stream*, the string these functions take as ``source`` (``<source>/epochs/<N>`` for
epoch N >= 2, so its WAL lives under ``<source>/epochs/<N>/wal/``).

The API the restore planner uses (all pure or repository-reading functions):

- ``parse_wal_name(name) -> WalName`` and ``WalName.segno(size)``, ``segment_name(tli, segno, size)``
- ``parse_lsn("0/3000028") -> int``, ``format_lsn(int) -> str``, ``lsn_to_segno(lsn, size)``,
  ``segno_to_lsn(segno, size)``, ``segment_of_lsn(tli, lsn, size) -> name``
- ``list_archived(repo, source, kinds=("segment",)) -> dict[int, list[ArchivedWal]]``
- ``read_history(repo, source, timeline) -> list[tuple[int, int]]``: (parent timeline, switch LSN)
- ``fetch(repo, source, name, dest) -> bool``: False when the file is not archived
- ``restore_command(config_path, source_name, epoch=1) -> str``, ``archive_command(...)``
- ``segment_size(repo, source) -> int | None``
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import itertools
import json
import os
import re
import secrets
import shlex
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from backupctl.core.errors import BackupctlError, ConfigError, IntegrityError, ObjectNotFound
from backupctl.repo.codecs import Codec
from backupctl.storage.local import fsync_dir

if TYPE_CHECKING:
    from backupctl.core.config import Config, PostgresSource
    from backupctl.repo.repository import Repository

# Long page header of a WAL segment's first page (little-endian, as written on x86 and ARM):
# magic, info, timeline, page address, remaining length, padding, system identifier, segment size,
# WAL block size.
LONG_HEADER = struct.Struct("<HHIQI4xQII")
XLP_LONG_HEADER = 0x0002
# XLOG_PAGE_MAGIC of each major (src/include/access/xlog_internal.h); 15 and 18 checked on real servers.
MAGIC_MAJOR = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}
MIN_SEGMENT_SIZE = 1024**2
MAX_SEGMENT_SIZE = 1024**3
DEFAULT_SEGMENT_SIZE = 16 * 1024**2
IN_MEMORY_LIMIT = 64 * 1024**2  # segments up to this size are read once into memory; larger ones twice
SEGMENT_SIZE_KEY = "segment_size.json"
FETCH_CHUNK = 1024 * 1024

_SEGMENT = r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})"
_NAME_RES = {
    "segment": re.compile(rf"^{_SEGMENT}$"),
    "partial": re.compile(rf"^{_SEGMENT}\.partial$"),
    "backup": re.compile(rf"^{_SEGMENT}\.([0-9A-F]{{8}})\.backup$"),
    "history": re.compile(r"^([0-9A-F]{8})\.history$"),
}
_KEY_RE = re.compile(
    r"^(?P<name>[0-9A-F]{8}(?:[0-9A-F]{16}(?:\.partial|\.[0-9A-F]{8}\.backup)?|\.history))"
    r"-(?P<sha>[0-9a-f]{64})(?P<comp>\.zst|\.lz4|\.gz)?(?P<age>\.age)?$"
)
_COMPRESSION_BY_EXT = {".zst": "zstd", ".lz4": "lz4", ".gz": "gzip", None: "none"}


class WalNameError(BackupctlError):
    """A file name PostgreSQL never archives: refused at once, never retried."""


class WalRefused(BackupctlError):
    """A push that can never succeed as it stands (another system's WAL, a conflicting checksum,
    a damaged header): retrying will not help, a person must look."""


class WalConflict(WalRefused):
    """A different file is already archived under the same name."""


class ForeignWal(WalRefused):
    """WAL of another PostgreSQL system (another system identifier or major) than the source's."""


class UnknownStream(BackupctlError):
    """restore_command names a source (or history epoch) the repository has no identity for: nothing was ever
    archived there, so "not archived" (which ends recovery) would be a guess. Retrying will not help."""


# --- names and positions -------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class WalName:
    """A parsed archive file name: a segment, a .partial segment, a backup history or timeline history file.

    ``log`` and ``seg`` are the two halves of the segment part of the name; ``offset`` is the start
    offset of a backup history file. History files have only a timeline.
    """

    timeline: int
    log: int
    seg: int
    kind: str  # "segment" | "partial" | "backup" | "history"
    name: str
    offset: int = 0

    def segno(self, segment_size: int) -> int:
        """The segment number (LSN // segment_size) of a segment-like name."""
        return self.log * segments_per_log(segment_size) + self.seg

    def start_lsn(self, segment_size: int) -> int:
        return segno_to_lsn(self.segno(segment_size), segment_size)

    @property
    def directory(self) -> str:
        """The 16-hex folder (timeline and log) that holds this file; "" for history files."""
        return "" if self.kind == "history" else self.name[:16]

    @property
    def segment(self) -> str:
        """The plain segment name this file belongs to (itself for a segment)."""
        return self.name[:24]


def parse_wal_name(name: str) -> WalName:
    """Parse a name PostgreSQL archives; ``WalNameError`` for anything else (with what was wrong)."""
    for kind, pattern in _NAME_RES.items():
        match = pattern.match(name)
        if match is None:
            continue
        timeline = int(match.group(1), 16)
        if timeline == 0:
            raise WalNameError(f"{name!r} is not a WAL file name: timeline 0 does not exist")
        if kind == "history":
            # PostgreSQL probes 00000001.history too (at promotion): a name to answer "not archived" for.
            return WalName(timeline, 0, 0, kind, name)
        log, seg = int(match.group(2), 16), int(match.group(3), 16)
        if seg >= segments_per_log(MIN_SEGMENT_SIZE):
            raise WalNameError(
                f"{name!r} is not a WAL file name: segment part {match.group(3)} is beyond any segment size"
            )
        offset = int(match.group(4), 16) if kind == "backup" else 0
        return WalName(timeline, log, seg, kind, name, offset)
    raise WalNameError(
        f"{name!r} is not a file PostgreSQL archives (a 24-hex-digit segment, optionally .partial, "
        "a TLI.history or a SEGMENT.OFFSET.backup file, upper-case hex): refusing it"
    )


def is_valid_segment_size(size: int) -> bool:
    return MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and size & (size - 1) == 0


def segments_per_log(segment_size: int) -> int:
    return 0x1_0000_0000 // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """``XLogFileName``: the name of segment ``segno`` on ``timeline``."""
    per_log = segments_per_log(segment_size)
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` to an integer."""
    match = re.fullmatch(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not an LSN (like 0/3000028)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_to_segno(lsn: int, segment_size: int) -> int:
    """``XLByteToSeg``: the segment that holds the byte at ``lsn``."""
    return lsn // segment_size


def segno_to_lsn(segno: int, segment_size: int) -> int:
    return segno * segment_size


def segment_of_lsn(timeline: int, lsn: int, segment_size: int) -> str:
    """The segment file on ``timeline`` that holds ``lsn``."""
    return segment_name(timeline, lsn_to_segno(lsn, segment_size), segment_size)


# --- keys ----------------------------------------------------------------------------------------


def wal_prefix(source: str) -> str:
    return f"{source}/wal/"


def object_prefix(source: str, name: WalName) -> str:
    """Every object archived for ``name`` starts with this (then the plaintext sha256)."""
    folder = f"{name.directory}/" if name.directory else ""
    return f"{wal_prefix(source)}{folder}{name.name}-"


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


def parse_key(source: str, key: str, size: int = 0, modified: datetime | None = None) -> ArchivedWal | None:
    """The archived file a key names, or None for keys that are not WAL objects."""
    prefix = wal_prefix(source)
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix):]
    folder, _, base = rest.rpartition("/")
    match = _KEY_RE.match(base)
    if match is None:
        return None
    try:
        name = parse_wal_name(match.group("name"))
    except WalNameError:
        return None
    if folder != name.directory:
        return None
    return ArchivedWal(
        name=name, key=key, sha256=match.group("sha"), compression=_COMPRESSION_BY_EXT[match.group("comp")],
        encrypted=match.group("age") is not None, stored_size=size,
        modified=modified or datetime.fromtimestamp(0, UTC),
    )


def find_archived(repo: Repository, source: str, name: str | WalName) -> list[ArchivedWal]:
    """Every object stored for one file name (normally none or one)."""
    parsed = parse_wal_name(name) if isinstance(name, str) else name
    found = []
    for info in repo.storage.list(object_prefix(source, parsed)):
        obj = parse_key(source, info.key, info.size, info.modified)
        if obj is not None and obj.name.name == parsed.name:
            found.append(obj)
    return found


def find_segments(repo: Repository, source: str, names: list[str]) -> dict[str, list[ArchivedWal]]:
    """The archived objects of some segments (e.g. a backup's range): one listing per 16-hex folder they
    fall in, never a request per segment. Names not archived are absent from the result."""
    wanted = set(names)
    found: dict[str, list[ArchivedWal]] = {}
    for folder in dict.fromkeys(name[:16] for name in names):
        for info in repo.storage.list(f"{wal_prefix(source)}{folder}/"):
            obj = parse_key(source, info.key, info.size, info.modified)
            if obj is not None and obj.name.kind == "segment" and obj.name.name in wanted:
                found.setdefault(obj.name.name, []).append(obj)
    return found


def list_wal_objects(repo: Repository, source: str) -> list[ArchivedWal]:
    """Every WAL object of a source (one paginated listing), in key order."""
    found = []
    for info in repo.storage.list(wal_prefix(source)):
        obj = parse_key(source, info.key, info.size, info.modified)
        if obj is not None:
            found.append(obj)
    return found


def list_archived(
    repo: Repository, source: str, kinds: Iterable[str] = ("segment",)
) -> dict[int, list[ArchivedWal]]:
    """Archived files per timeline, sorted by name (so by position), with their keys.

    ``kinds`` picks among "segment", "partial", "backup" and "history"; a history file is listed under
    the timeline it describes.
    """
    return group_archived(list_wal_objects(repo, source), kinds)


def group_archived(objects: Iterable[ArchivedWal], kinds: Iterable[str] = ("segment",)) -> dict[int, list[ArchivedWal]]:
    """``list_archived`` over objects already listed (one listing serves the planner and the judgement)."""
    wanted = set(kinds)
    result: dict[int, list[ArchivedWal]] = {}
    for obj in objects:
        if obj.name.kind in wanted:
            result.setdefault(obj.name.timeline, []).append(obj)
    for group in result.values():
        group.sort(key=lambda o: (o.name.name, o.key))
    return dict(sorted(result.items()))


def read_history(repo: Repository, source: str, timeline: int) -> list[tuple[int, int]]:
    """The ancestry of ``timeline`` from its archived history file: [(parent timeline, switch LSN)].

    The list is oldest first, as PostgreSQL writes it: each entry says that ``parent`` ended (and the
    next timeline began) at the switch LSN. Timeline 1 has no history: []. A missing history file of a
    later timeline raises ``ObjectNotFound``.
    """
    if timeline == 1:
        return []
    buffer = io.BytesIO()
    if not _fetch_into(repo, source, history_name(timeline), buffer):
        raise ObjectNotFound(f"the history file of timeline {timeline} ({history_name(timeline)}) is not "
                             f"archived for source {source}")
    return parse_history(buffer.getvalue().decode("utf-8", errors="replace"), timeline)


def parse_history(text: str, timeline: int | None = None) -> list[tuple[int, int]]:
    """Parse a .history file: lines ``parentTLI<TAB>switchpoint<TAB>reason``, '#' comments."""
    entries: list[tuple[int, int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 2)
        try:
            parent, switch = int(fields[0]), parse_lsn(fields[1])
        except (IndexError, ValueError):
            where = f"history of timeline {timeline}" if timeline else "history file"
            raise IntegrityError(f"{where}, line {number}: {line!r} is not 'TLI<TAB>LSN<TAB>reason'") from None
        if entries and (parent <= entries[-1][0] or switch < entries[-1][1]):
            raise IntegrityError(f"history of timeline {timeline}: timelines or LSNs go backwards at line {number}")
        entries.append((parent, switch))
    return entries


def timeline_path(history: list[tuple[int, int]], timeline: int) -> list[tuple[int, int, int | None]]:
    """The ancestry of ``timeline`` from its history: (timeline, begins at LSN, switches away at LSN or None
    for ``timeline`` itself), from timeline 1 on. Restore planning and retention walk the same path."""
    path: list[tuple[int, int, int | None]] = []
    begin = 0
    for parent, switch in history:
        path.append((parent, begin, switch))
        begin = switch
    path.append((timeline, begin, None))
    return path


def timeline_ranges(history: list[tuple[int, int]], timeline: int, segment_size: int,
                    ) -> list[tuple[int, int, int | None]]:
    """(timeline, first segno, last segno or None for open-ended) in the order recovery walks them.

    A timeline that switched at LSN S is read up to the segment before S's; the next one from S's
    segment on (PostgreSQL reads the segment holding the switch point from the new timeline).
    """
    ranges: list[tuple[int, int, int | None]] = []
    begin = 0
    for parent, switch in history:
        switch_seg = lsn_to_segno(switch, segment_size)
        ranges.append((parent, begin, switch_seg - 1))
        begin = switch_seg
    ranges.append((timeline, begin, None))
    return ranges


# --- commands for postgresql.conf ----------------------------------------------------------------


def invocation() -> list[str]:
    """How the server's user runs backupctl's WAL fast path: this interpreter, a three-statement bootstrap.

    ``-I`` keeps the data directory (the command's cwd) and PYTHON* variables out of the import path;
    ``-S`` skips ``site`` (the venv's .pth files: ~12 ms per call), which walpusher loads itself only
    when it must do the work in-process; the bootstrap puts backupctl's own directory on the path and
    imports walpusher as a module, so its compiled cache is used (run as a script, the file would be
    compiled on every call). A call then costs ~15 ms of CPU; the console script works as well but
    loads the whole CLI first (~110 ms per segment).
    """
    from backupctl import walpusher

    return walpusher.bootstrap()


def _command(config_path: str | Path, source_name: str, verb: str, *args: str, epoch: int = 1) -> str:
    config = str(Path(config_path).absolute())
    words = [*invocation(), "--config", config, verb, "--source", source_name]
    if epoch > 1:
        words += ["--epoch", str(epoch)]
    return " ".join([*(shlex.quote(w) for w in words), *args])


def archive_command(config_path: str | Path, source_name: str) -> str:
    """The exact archive_command for ``source_name`` (absolute paths, ``--config``)."""
    return _command(config_path, source_name, "wal-push", "%p")


def restore_command(config_path: str | Path, source_name: str, epoch: int = 1) -> str:
    """The exact restore_command for ``source_name`` (absolute paths, ``--config``).

    A cluster of a later history epoch (see ``epochs``) replays that epoch's WAL: ``--epoch N``; epoch 1's
    command is the one written before epochs existed, so restored clusters and standbys keep working.
    """
    return _command(config_path, source_name, "wal-fetch", "%f", "%p", epoch=epoch)


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("'", "''") + "'"


def _not_traversable(path: Path) -> Path | None:
    """The first directory on ``path`` that other users cannot enter (mode without o+x), if any."""
    for parent in [*reversed(path.parents)]:
        try:
            if not os.stat(parent).st_mode & 0o001:
                return parent
        except OSError:
            return parent
    return None


def pg_settings(config: Config, source: PostgresSource, epoch: int = 1) -> str:
    """The lines for postgresql.conf that archive ``source`` into the repository, with advice.

    ``epoch``: the history epoch whose WAL restore_command replays (the current one: the live server's).
    """
    archive = archive_command(config.file, source.name)
    restore = restore_command(config.file, source.name, epoch)
    lines = [
        f"# backupctl: continuous WAL archiving of source {source.name!r} into {_location(config)}",
        "# (wal_level and archive_mode take effect after a server restart; the commands after a reload)",
        "wal_level = replica                     # or logical; 'minimal' cannot be archived",
        "archive_mode = on",
        f"archive_command = {conf_quote(archive)}",
        "archive_timeout = 60s                   # advice: at most a minute of WAL waits in a quiet hour",
        "# recovery and standbys (ignored by a running primary)"
        + (f"; history epoch {epoch} (after pg_upgrade):" if epoch > 1 else ":"),
        f"restore_command = {conf_quote(restore)}",
    ]
    blocked = _not_traversable(Path(sys.executable))
    if blocked is not None:
        lines.append(f"# WARNING: {blocked} is not traversable by other users: the server's OS user cannot run "
                     f"{sys.executable}; install backupctl in a world-readable venv (/usr/bin/python3 -m venv)")
    return "\n".join(lines) + "\n"


def _location(config: Config) -> str:
    repo = config.repository
    if repo.type == "s3":
        return f"s3://{repo.bucket}/{repo.prefix}".rstrip("/")
    return str(repo.path)


# --- opening the repository for WAL --------------------------------------------------------------


@dataclass(frozen=True)
class _SerialCodec(Codec):
    def compressor(self) -> Any:
        return _OneShotZstd(self.level)


class _OneShotZstd:
    """zstd for WAL: one-shot compression of the whole object in ``flush``, without worker threads.

    python-zstandard releases the GIL only in its one-shot ``compress()``, not in ``compressobj``, so
    pushes in parallel threads only scale this way. Objects above ``IN_MEMORY_LIMIT`` (segments of 128
    MiB and more) switch to streaming. Either way the output is one standard zstd frame with a checksum.
    """

    def __init__(self, level: int) -> None:
        import zstandard

        self._compressor = zstandard.ZstdCompressor(level=level, threads=0, write_checksum=True)
        self._chunks: list[bytes] = []
        self._size = 0
        self._stream: Any = None

    def compress(self, data: bytes) -> bytes:
        if self._stream is not None:
            return self._stream.compress(data)
        self._chunks.append(data)
        self._size += len(data)
        if self._size <= IN_MEMORY_LIMIT:
            return b""
        self._stream = self._compressor.compressobj()
        out = b"".join(self._stream.compress(chunk) for chunk in self._chunks)
        self._chunks = []
        return out

    def flush(self) -> bytes:
        if self._stream is not None:
            return self._stream.flush()
        chunks, self._chunks = self._chunks, []
        if chunks and all(isinstance(c, memoryview) and c.obj is chunks[0].obj for c in chunks) \
                and self._size == len(chunks[0].obj):
            # Every slice of one buffer, in order (what _ViewReader hands out): compress it without a copy.
            return self._compressor.compress(chunks[0].obj)
        return self._compressor.compress(b"".join(chunks))


def open_wal_repository(config: Config) -> Repository:
    """The repository, with every store request bounded by ``[wal] timeout``.

    Like ``open_repository``; for S3 the client gets ``read_timeout = wal.timeout`` so that a store
    that stops answering fails a push in bounded time instead of holding the archiver.
    """
    from backupctl.repo.catalog import Catalog
    from backupctl.repo.pipeline import Pipeline
    from backupctl.repo.repository import Repository, _check_compatible, _read_marker

    storage: Any
    if config.repository.type == "s3":
        from backupctl.storage.s3 import S3Storage

        if not config.repository.verify_tls:
            # The user chose an unverified certificate; one warning per request would flood the server log.
            warnings.filterwarnings("ignore", message="Unverified HTTPS request")

        storage = S3Storage(config.repository, read_timeout=config.wal.timeout)
    else:
        from backupctl.storage import open_storage

        storage = open_storage(config.repository)
    try:
        pipeline = Pipeline(storage, config)
        pipeline.codec = serial_codec(pipeline.codec)
        meta = _read_marker(storage)
        if meta is None:
            raise BackupctlError(f"no repository at {storage.location}: run `backupctl init` first")
        _check_compatible(meta, pipeline, storage.location)
    except BaseException:
        storage.close()
        raise
    return Repository(config, storage, pipeline, Catalog(storage), meta)


def serial_codec(base: Codec) -> Codec:
    """The same codec, but zstd in one shot and without worker threads (see ``_OneShotZstd``).

    Segments are compressed in parallel with each other (``push_jobs``), so a worker thread per object
    only adds work: on 16 MiB of pgbench WAL, zstd level 3 costs 12 ms of CPU without one and 20 ms with
    one; and only one-shot compression lets those threads run at once.
    """
    return _SerialCodec(base.name, base.extension, base.level, base.threads) if base.name == "zstd" else base


def select_source(config: Config, name: str | None) -> PostgresSource:
    """``--source NAME``, or the only PostgreSQL source of the config."""
    from backupctl.core.config import PostgresSource

    if name:
        source = config.source(name)
        if not isinstance(source, PostgresSource):
            raise ConfigError(f"source {name!r} is a {source.kind} source: WAL belongs to PostgreSQL sources")
        return source
    candidates = [s for s in config.sources.values() if isinstance(s, PostgresSource)]
    if len(candidates) != 1:
        names = ", ".join(sorted(s.name for s in candidates)) or "none"
        raise ConfigError(f"pass --source NAME: {config.file} has {len(candidates)} PostgreSQL sources ({names})")
    return candidates[0]


# --- the segment header and the source's identity ------------------------------------------------


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
        return int((path.absolute().parent.parent / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        raise WalRefused(
            f"{path.name} has WAL page magic 0x{header.magic:04X}, which this backupctl does not know: "
            "upgrade backupctl"
        ) from None


def _data_directory(path: Path) -> Path:
    """The data directory of a file in its pg_wal: archive_command's and restore_command's %p are
    ``pg_wal/NAME`` relative to it (a symlinked pg_wal is not followed: the link lives in the data directory)."""
    return path.absolute().parent.parent


def _pg_control_sysid(path: Path) -> str | None:
    """The system identifier in the data directory's pg_control (for files without a WAL header)."""
    try:
        with open(_data_directory(path) / "global" / "pg_control", "rb") as handle:
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


@dataclass
class SourceIdentity:
    """A PostgreSQL system registered for a source: epoch 1 is the source's first system, each
    ``wal new-epoch`` (after pg_upgrade) adds the next one (see ``backupctl.wal.epochs``).

    ``stream`` is what the WAL functions of this module take as ``source`` for this system's WAL: the
    source name for epoch 1, ``<source>/epochs/<N>`` after it.
    """

    system_identifier: str
    major: int
    segment_size: int | None
    epoch: int = 1
    stream: str = ""
    started_at: str | None = None

    def describe(self) -> str:
        return f"PostgreSQL {self.major} system {self.system_identifier}"

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "stream": self.stream, "system_identifier": self.system_identifier,
                "pg_major": self.major, "wal_segment_size": self.segment_size, "started_at": self.started_at}


def read_identity(repo: Repository, stream: str) -> SourceIdentity | None:
    """What the repository records about one stream of a PostgreSQL source (None before its first backup
    or push); ``stream`` is the source name for epoch 1."""
    try:
        doc = json.loads(repo.storage.get_bytes(f"{stream}/source.json"))
    except ObjectNotFound:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IntegrityError(f"{stream}/source.json is damaged: it is not JSON") from None
    if doc.get("kind") != "postgres":
        raise BackupctlError(
            f"source {stream!r} in {repo.storage.location} is a {doc.get('kind')} source, not PostgreSQL: "
            "use another source name"
        )
    size = doc.get("wal_segment_size")
    if size is None:
        with contextlib.suppress(ObjectNotFound):
            size = json.loads(repo.storage.get_bytes(wal_prefix(stream) + SEGMENT_SIZE_KEY))["wal_segment_size"]
    return SourceIdentity(str(doc.get("system_identifier")), int(doc.get("major", 0)), size,
                          int(doc.get("epoch", 1)), stream, doc.get("started_at") or doc.get("registered_at"))


def segment_size(repo: Repository, source: str) -> int | None:
    """The source's WAL segment size as registered, or None when nothing registered it yet."""
    identity = read_identity(repo, source)
    return identity.segment_size if identity else None


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
        from backupctl.wal import epochs

        with self._lock:
            if sysid is None:
                newest = epochs.current_stream(self.repo, self.source)
                return newest.stream if newest else self.source
            known = self._find(sysid, None)
        if known is not None:
            return known.stream
        if self._newest is None:
            return self.source  # nothing registered yet: the first segment registers the source
        raise foreign_system(self.repo, self.source, what, sysid, None, self._newest)

    def _find(self, sysid: str, register: tuple[int, int] | None) -> SourceIdentity | None:
        """The epoch of ``sysid`` (under the lock); ``register``: (major, segment size) for a first push."""
        from backupctl.wal import epochs

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
        self._remember(epochs.list_streams(self.repo, self.source))
        return self._systems.get(sysid)

    def _remember(self, identities: list[SourceIdentity]) -> None:
        for identity in identities:
            self._systems.setdefault(identity.system_identifier, identity)
            if self._newest is None or identity.epoch > self._newest.epoch:
                self._newest = identity

    def _register(self, sysid: str, major: int, size: int) -> SourceIdentity | None:
        from backupctl.repo.repository import SourceMismatch

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
        key = wal_prefix(known.stream) + SEGMENT_SIZE_KEY
        if not self.repo.storage.put_if_absent(key, json.dumps({"wal_segment_size": size}).encode()):
            known.segment_size = int(json.loads(self.repo.storage.get_bytes(key))["wal_segment_size"])
        else:
            known.segment_size = size


# --- push ----------------------------------------------------------------------------------------


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


def push_file(repo: Repository, source: str, path: str | Path, guard: IdentityGuard | None = None) -> PushResult:
    """Archive one file PostgreSQL handed to archive_command; idempotent (see the module docstring).

    The file goes to the stream of its system's history epoch (``IdentityGuard``). Raises ``WalNameError``
    for names PostgreSQL never archives, ``WalRefused`` (``ForeignWal``, ``WalConflict``) for pushes that
    retrying cannot fix, and storage errors for the rest.
    """
    started = time.monotonic()
    path = Path(path)
    name = parse_wal_name(path.name)
    guard = guard or IdentityGuard(repo, source)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; the descriptor is kept for fstat
    except FileNotFoundError:
        raise BackupctlError(f"{path} does not exist (archive_command's %p is relative to the data directory)") \
            from None
    except OSError as exc:
        raise BackupctlError(f"cannot read {path}: {exc.strerror}") from None
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
            stream = guard.check_system(_pg_control_sysid(path), path.name)
        if in_memory:
            digest = hashlib.sha256(data).hexdigest()
        else:
            handle.seek(0)
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        prefix = object_prefix(stream, name)
        existing = find_archived(repo, stream, name)
        for obj in existing:
            if obj.sha256 == digest:
                return PushResult(name.name, obj.key, "already archived", st.st_size,
                                  time.monotonic() - started, _stat_key(st))
        if existing:
            raise WalConflict(
                f"{name.name} is already archived with sha256 {existing[0].sha256}, but this file has sha256 "
                f"{digest}: a different file under the same name (another cluster archiving into source "
                f"{source!r}?); the archived one is kept"
            )
        if in_memory:
            zero_copy = isinstance(repo.pipeline.codec, _SerialCodec)
            reader: Any = _ViewReader(data) if zero_copy else io.BytesIO(data)
            stored = repo.pipeline.store(prefix + digest, reader)
        else:
            handle.seek(0)
            check = _DigestCheck(handle, digest, path.name)
            stored = repo.pipeline.store(prefix + digest, check, finalize=check.verify)  # type: ignore[arg-type]
    return PushResult(name.name, stored.key, "stored", st.st_size, time.monotonic() - started, _stat_key(st))


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


# --- fetch ---------------------------------------------------------------------------------------


class _PlainWriter(io.RawIOBase):
    """Decompresses what age (or the store) hands it, hashes and writes the plain bytes."""

    def __init__(self, sink: BinaryIO, decompressor: Any) -> None:
        self._sink = sink
        self._decompressor = decompressor
        self.hash = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            out = self._decompressor.decompress(bytes(data))
            if out:
                self.hash.update(out)
                self._sink.write(out)
                self.size += len(out)
            return len(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise


class _CapturingReader(io.RawIOBase):
    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._source.read(len(buffer))
        except BaseException as exc:
            self.error = self.error or exc
            raise
        buffer[: len(data)] = data
        return len(data)


def decode_object(repo: Repository, obj: ArchivedWal, sink: BinaryIO) -> int:
    """Stream one archived file's plain bytes into ``sink``, proving them against the sha256 in its key.

    Returns the plain size. Raises ``IntegrityError`` for damage, ``DecryptionError`` without the key.
    """
    from backupctl.core import signals
    from backupctl.core.errors import DecryptionError, StorageError
    from backupctl.repo import crypto
    from backupctl.repo.codecs import codec

    identity = repo.pipeline.identity() if obj.encrypted else None
    decompressor = codec(obj.compression).decompressor()
    out = _PlainWriter(sink, decompressor)
    with repo.storage.get(obj.key) as raw:
        reader = _CapturingReader(raw)
        try:
            if identity is not None:
                crypto.decrypt_stream(reader, out, identity)  # type: ignore[arg-type]
            else:
                while chunk := raw.read(FETCH_CHUNK):
                    out.write(chunk)
        except (StorageError, DecryptionError):
            raise
        except Exception as exc:
            for stage in (reader, out):
                if stage.error is not None and isinstance(stage.error, BackupctlError | OSError):
                    raise stage.error from None
            signals.raise_pending()
            raise IntegrityError(f"{obj.key} cannot be decoded ({type(exc).__name__}: {exc})") from None
    if not decompressor.eof:
        raise IntegrityError(f"{obj.key} is truncated: its compressed stream has no end")
    digest = out.hash.hexdigest()
    if digest != obj.sha256:
        raise IntegrityError(f"{obj.key} is damaged: its content has sha256 {digest}, its name says {obj.sha256}")
    return out.size


def _pick(objects: list[ArchivedWal], name: str) -> ArchivedWal:
    if len({o.sha256 for o in objects}) > 1:
        shas = ", ".join(sorted({o.sha256 for o in objects}))
        raise IntegrityError(f"{name} is archived twice with different contents (sha256 {shas}): "
                             "remove the wrong one before restoring")
    return objects[0]


def _fetch_into(repo: Repository, source: str, name: str, sink: BinaryIO) -> bool:
    objects = find_archived(repo, source, name)
    if not objects:
        return False
    decode_object(repo, _pick(objects, name), sink)
    return True


def fetch(repo: Repository, source: str, name: str, dest: str | Path) -> bool:
    """Fetch archived file ``name`` into ``dest``: False when it is not archived.

    Writes a temp file beside ``dest``, checks the plaintext sha256 and, when ``dest`` lies in a data
    directory, the segment's system identifier (``check_restoring_system``), fsyncs and renames it into
    place, so ``dest`` appears complete and right or not at all. Raises on damage, another system's WAL
    and storage failures. "Not archived" means something only when the stream exists: see ``UnknownStream``.
    """
    dest = Path(dest)
    objects = find_archived(repo, source, name)
    if not objects:
        return False
    obj = _pick(objects, name)

    def produce(handle: BinaryIO) -> None:
        tap = _CountingSink(handle)
        decode_object(repo, obj, tap)  # type: ignore[arg-type]
        check_restoring_system(obj.name, tap.head, dest)

    write_atomically(dest, produce)
    return True


def check_restoring_system(name: WalName, head: bytes, dest: Path) -> None:
    """Refuse a segment of another system than the cluster it is fetched for (pgBackRest does the same).

    PostgreSQL takes a page header of another system for the end of valid WAL: it would end recovery
    there and promote. The restoring cluster is the data directory ``dest`` lies in (restore_command runs
    there with %p = ``pg_wal/RECOVERYXLOG``); where no pg_control is found (a fetch by hand, the pusher's
    staging directory) there is nothing to compare with. ``head``: the file's first bytes.
    """
    if name.kind not in ("segment", "partial"):
        return
    system = _pg_control_sysid(dest)
    if system is None:
        return
    header = read_header(head, name.name)
    if header.system_identifier != system:
        raise ForeignWal(
            f"{name.name} in the repository comes from system {header.system_identifier}, but the cluster "
            f"recovering in {_data_directory(dest)} is system {system}: restore_command names another "
            "source's WAL (check its --source and --config), or this data directory was not restored from it"
        )


def write_atomically(dest: Path, produce: Callable[[BinaryIO], Any]) -> None:
    """``produce`` writes into a temp file beside ``dest``, which is then fsynced and renamed over it."""
    temp = dest.with_name(f".{dest.name}.backupctl-{secrets.token_hex(4)}")
    try:
        with open(temp, "xb") as handle:
            produce(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(dest.parent)


# --- status and verify ---------------------------------------------------------------------------


def _gaps(segnos: list[int], timeline: int, size: int) -> list[dict[str, Any]]:
    gaps = []
    for before, after in itertools.pairwise(segnos):
        if after > before + 1:
            gaps.append({"from": segment_name(timeline, before + 1, size),
                         "to": segment_name(timeline, after - 1, size), "missing": after - before - 1})
    return gaps


def streams_of(repo: Repository, source: str) -> list[SourceIdentity]:
    """The source's history epochs, oldest first; before anything is registered, epoch 1 with no system."""
    from backupctl.wal import epochs

    return epochs.list_streams(repo, source) or [SourceIdentity("", 0, None, 1, source)]


def wal_status(repo: Repository, source: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per history epoch and timeline: the archived range, gaps inside it, the newest segment and its age.

    A stable JSON shape: a list of objects, each with an ``id`` (``<stream>/<timeline hex>``: epoch 1's
    stream is the source name, later ones ``<source>/epochs/<N>``) and its ``epoch``.
    """
    now = now or datetime.now(UTC)
    result = []
    for identity in streams_of(repo, source):
        result += _stream_status(repo, source, identity, now)
    return result


def _stream_status(repo: Repository, source: str, identity: SourceIdentity, now: datetime) -> list[dict[str, Any]]:
    stream = identity.stream
    size = identity.segment_size or DEFAULT_SEGMENT_SIZE
    objects = list_wal_objects(repo, stream)
    timelines = sorted({o.name.timeline for o in objects})
    result = []
    for tli in timelines:
        mine = [o for o in objects if o.name.timeline == tli]
        segments = sorted((o for o in mine if o.name.kind == "segment"), key=lambda o: o.name.name)
        segnos = sorted({o.name.segno(size) for o in segments})
        newest = max(segments, key=lambda o: o.modified, default=None)
        last = segments[-1] if segments else None
        counts = collections.Counter(o.name.name for o in segments)
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        result.append({
            "id": f"{stream}/{tli:08X}",
            "source": source,
            "epoch": identity.epoch,
            "system_identifier": identity.system_identifier or None,
            "pg_major": identity.major or None,
            "timeline": tli,
            "first": segments[0].name.name if segments else None,
            "last": last.name.name if last else None,
            "segments": len(segnos),
            "gaps": _gaps(segnos, tli, size),
            "duplicates": duplicates,
            "partial": sorted(o.name.name for o in mine if o.name.kind == "partial"),
            "backup_history": sorted(o.name.name for o in mine if o.name.kind == "backup"),
            "history_file": any(o.name.kind == "history" for o in mine),
            "stored_bytes": sum(o.stored_size for o in mine),
            "newest_segment": newest.name.name if newest else None,
            "newest_archived_at": newest.modified.astimezone(UTC).isoformat() if newest else None,
            "newest_age_seconds": round((now - newest.modified).total_seconds(), 1) if newest else None,
            "segment_size": size,
        })
    return result


@dataclass
class WalVerifyResult:
    """What ``verify_wal`` found; ``ok`` only when the chain is whole and every object decodes."""

    source: str
    mode: str  # "full": decoded and checksummed; "listing": names only (no identity)
    start: str | None = None
    end: str | None = None
    start_from: str = ""  # "backup <id>" or "oldest segment"
    timelines: list[int] = field(default_factory=list)
    checked: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    epoch: int = 1
    stream: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"id": self.stream or self.source, "source": self.source, "epoch": self.epoch, "ok": self.ok,
                "mode": self.mode, "start": self.start,
                "end": self.end, "start_from": self.start_from, "timelines": self.timelines,
                "checked": self.checked, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "problems": self.problems}


def _oldest_physical_start(repo: Repository, source: str, system: str) -> tuple[str, int, str] | None:
    """The oldest physical backup of ``system`` (an epoch's; "" for any): where its WAL must begin."""
    manifests, _damaged = repo.catalog.scan(source)
    physical = [m for m in manifests if m.type in ("full", "incr") and m.extra.get("start_wal")
                and (not system or str(m.extra.get("system_identifier")) == system)]
    if not physical:
        return None
    oldest = min(physical, key=lambda m: (m.started_at, m.id))
    start = str(oldest.extra["start_wal"])
    timeline = int(oldest.extra.get("timeline") or parse_wal_name(start).timeline)
    return start, timeline, oldest.id


def verify_epochs(repo: Repository, source: str, jobs: int = 4) -> list[WalVerifyResult]:
    """``verify_wal`` of every history epoch of the source, oldest first."""
    return [verify_wal(repo, source, jobs, identity=identity) for identity in streams_of(repo, source)]


def verify_wal(repo: Repository, source: str, jobs: int = 4, decode: bool | None = None,
               identity: SourceIdentity | None = None) -> WalVerifyResult:
    """Check one history epoch's archive (``identity``; default epoch 1) is continuous from the oldest
    physical backup of its system (else the oldest segment) to the newest segment, following timeline
    history, and decode every object on the way.

    Decoding (plaintext sha256 from the key, segment header against the registered identity) happens
    when the identity is available or the repository is not encrypted; otherwise only names are checked.
    """
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    if decode is None:
        decode = not repo.pipeline.encrypted or repo.pipeline.can_decrypt()
    if identity is None:
        identity = read_identity(repo, source)
    stream = identity.stream if identity else source
    result = WalVerifyResult(source, "full" if decode else "listing", epoch=identity.epoch if identity else 1,
                             stream=stream)
    size = (identity.segment_size if identity else None) or DEFAULT_SEGMENT_SIZE
    objects = list_wal_objects(repo, stream)
    by_name: dict[str, list[ArchivedWal]] = {}
    for obj in objects:
        by_name.setdefault(obj.name.name, []).append(obj)
    for name, found in by_name.items():
        if len({o.sha256 for o in found}) > 1:
            result.problems.append(f"{name} is archived {len(found)} times with different contents")
    segments = [o for o in objects if o.name.kind == "segment"]
    if not segments:
        epoch = f" in epoch {result.epoch} ({stream})" if result.epoch > 1 else ""
        result.problems.append(f"no WAL segment is archived for source {source}{epoch}")
        result.seconds = time.monotonic() - started
        return result
    # The most recently archived segment: the live timeline, not an abandoned branch with a higher number.
    newest = max(segments, key=lambda o: (o.modified, o.name.timeline, o.name.segno(size)))
    target = newest.name.timeline
    newest = max((o for o in segments if o.name.timeline == target), key=lambda o: o.name.segno(size))
    try:
        history = read_history(repo, stream, target)
    except ObjectNotFound as exc:
        result.problems.append(str(exc))
        history = []
    except IntegrityError as exc:
        result.problems.append(str(exc))
        history = []
    ranges = timeline_ranges(history, target, size)
    result.timelines = [tli for tli, _first, _last in ranges]
    chain = {tli for tli, _f, _l in ranges}

    backup_start = _oldest_physical_start(repo, source, identity.system_identifier if identity else "")
    if backup_start is not None:
        start_name, start_tli, backup_id = backup_start
        start_segno = parse_wal_name(start_name).segno(size)
        result.start_from = f"backup {backup_id}"
        if start_tli not in chain:
            result.problems.append(
                f"backup {backup_id} is on timeline {start_tli}, which is not an ancestor of timeline {target}"
            )
    else:
        on_chain = [o for o in segments if o.name.timeline in chain]
        start_segno = min(o.name.segno(size) for o in on_chain)
        result.start_from = "oldest segment"
    end_segno = newest.name.segno(size)

    def timeline_for(segno: int) -> int:
        chosen = ranges[0][0]
        for tli, first, _last in ranges:
            if segno >= first:
                chosen = tli
        return chosen

    expected: list[tuple[str, int]] = []
    for segno in range(start_segno, end_segno + 1):
        tli = timeline_for(segno)
        expected.append((segment_name(tli, segno, size), segno))
    result.start = expected[0][0] if expected else None
    result.end = newest.name.name
    missing: list[str] = [name for name, _segno in expected if name not in by_name]
    for run in _runs(missing, size):
        result.problems.append(run)
    to_check = [by_name[name][0] for name, _segno in expected if name in by_name]
    to_check += [by_name[history_name(tli)][0] for tli in chain if tli > 1 and history_name(tli) in by_name]
    if decode:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for problem, nbytes in pool.map(lambda o: check_object(repo, o, identity, size), to_check):
                result.bytes += nbytes
                if problem:
                    result.problems.append(problem)
    result.checked = len(to_check)
    result.seconds = time.monotonic() - started
    return result


def _runs(missing: list[str], size: int) -> list[str]:
    """Missing segments as ranges: "gap: 000000010000000000000005 .. 000000010000000000000007 (3)"."""
    problems: list[str] = []
    run: list[WalName] = []

    def flush() -> None:
        if run:
            span = run[0].name if len(run) == 1 else f"{run[0].name} .. {run[-1].name}"
            problems.append(f"gap: {span} missing ({len(run)} segment{'s' if len(run) > 1 else ''})")

    for name in missing:
        parsed = parse_wal_name(name)
        if run and (parsed.timeline != run[-1].timeline or parsed.segno(size) != run[-1].segno(size) + 1):
            flush()
            run = []
        run.append(parsed)
    flush()
    return problems


class _CountingSink(io.RawIOBase):
    """Counts the bytes written and keeps the first ones (a segment's long header); passes all on to ``sink``."""

    def __init__(self, sink: BinaryIO | None = None) -> None:
        self.head = b""
        self.size = 0
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(self.head) < LONG_HEADER.size:
            self.head += bytes(data[: LONG_HEADER.size - len(self.head)])
        if self._sink is not None:
            self._sink.write(data)
        self.size += len(data)
        return len(data)


def check_object(repo: Repository, obj: ArchivedWal, identity: SourceIdentity | None,
                 size: int) -> tuple[str | None, int]:
    """Decode one archived file against its checksum (and a segment's header against ``identity``):
    (the problem or None, plain bytes read)."""
    sink = _CountingSink()
    try:
        decode_object(repo, obj, sink)  # type: ignore[arg-type]
        if obj.name.kind == "segment":
            header = read_header(sink.head, obj.key)
            check_segment(obj.name, header, sink.size, obj.key)
            if identity is not None and header.system_identifier != identity.system_identifier:
                return (f"{obj.key} belongs to system {header.system_identifier}, the source is "
                        f"{identity.system_identifier}"), sink.size
    except BackupctlError as exc:
        return str(exc), sink.size
    return None, sink.size


# --- wal check -----------------------------------------------------------------------------------


def wal_check(repo: Repository, source: PostgresSource, timeout: float = 60.0) -> dict[str, Any]:
    """Switch to a new segment on the server and wait until the finished one is in the repository
    (in the stream of the server's history epoch; a system that is no epoch of the source is refused at once)."""
    from backupctl.postgres.connection import ConnParams
    from backupctl.wal import epochs

    params = ConnParams.from_source(source)
    with params.connect() as conn:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            raise BackupctlError(f"source {source.name} is in recovery: run wal check on the primary")
        sysid, version = conn.execute("SELECT system_identifier::text, current_setting('server_version_num')::int "
                                      "FROM pg_control_system()").fetchone()
        streams = epochs.list_streams(repo, source.name)
        identity = next((e for e in streams if e.system_identifier == sysid), None)
        if identity is None and streams:
            raise foreign_system(repo, source.name, f"the server of source {source.name}", sysid, version // 10000,
                                 streams[-1])
        stream = identity.stream if identity else source.name
        mode = conn.execute("SHOW archive_mode").fetchone()[0]
        if mode == "off":
            raise BackupctlError(
                f"archive_mode is off on source {source.name}: see `backupctl pg-settings {source.name}` "
                "(changing it needs a restart)"
            )
        # Something to switch: pg_switch_wal() does nothing when the current segment is empty.
        conn.execute("SELECT pg_logical_emit_message(false, 'backupctl', 'wal check')")
        lsn, name = conn.execute("SELECT s::text, pg_walfile_name(s) FROM pg_switch_wal() s").fetchone()
        started = time.monotonic()
        deadline = started + timeout
        while True:
            found = find_archived(repo, stream, name)
            if found:
                seconds = time.monotonic() - started
                return {"id": f"{stream}/{name}", "source": source.name, "epoch": identity.epoch if identity else 1,
                        "segment": name, "switch_lsn": lsn, "key": found[0].key, "seconds": round(seconds, 3)}
            if time.monotonic() > deadline:
                row = conn.execute(
                    "SELECT last_archived_wal, last_failed_wal, last_failed_time, failed_count "
                    "FROM pg_stat_archiver").fetchone()
                raise BackupctlError(
                    f"{name} did not reach the repository within {timeout:.0f}s (pg_stat_archiver: last "
                    f"archived {row[0]}, last failed {row[1]} at {row[2]}, {row[3]} failures): check "
                    "archive_command (`backupctl pg-settings`) and the server log"
                )
            time.sleep(0.1)
