"""PostgreSQL physical backups: pg_basebackup's tar streams straight into the repository.

``pg_basebackup -D -`` refuses extra tablespaces, so backupctl runs ``pg_basebackup -Ft -D DIR`` with a
FIFO in DIR for every archive the server will send (one per tablespace, then ``base.tar``): a reader
thread per FIFO streams that archive through the pipeline as pg_basebackup writes it, and nothing but
the small ``backup_manifest`` ever lands on local disk. WAL comes from the archive (``-X none``), so the
server itself waits at backup stop until the WAL the backup needs is archived; meanwhile backupctl
watches pg_stat_archiver and stops with the failing segment and its error instead of hanging.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupctl.errors import BackupctlError
from backupctl.log import get_logger
from backupctl.pg import PgBinaries
from backupctl.pgconn import ConnParams
from backupctl.pipeline import StoredObject
from backupctl.tools import ToolProcess

log = get_logger(__name__)

ARCHIVER_GRACE_SECONDS = 30.0  # how long archiving may keep failing before the backup gives up


@dataclass
class ServerFacts:
    """What a physical backup records about the server before it starts."""

    version_num: int
    system_identifier: str
    segment_size: int
    data_directory: str
    config_files: dict[str, str]  # "postgresql.conf" -> path, for files kept outside the data directory
    tablespaces: dict[str, str]  # oid -> location
    databases: dict[str, int]  # name -> size
    archive_mode: str
    summarize_wal: bool

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_facts(params: ConnParams) -> ServerFacts:
    with params.connect() as conn:
        def show(name: str) -> str:
            return str(conn.execute(f"SHOW {name}").fetchone()[0])

        version_num = int(show("server_version_num"))
        data_directory = show("data_directory")
        config_files = {}
        for setting, name in (("config_file", "postgresql.conf"), ("hba_file", "pg_hba.conf"),
                              ("ident_file", "pg_ident.conf")):
            path = show(setting)
            if not path.startswith(data_directory.rstrip("/") + "/"):
                config_files[name] = path
        summarize = version_num >= 170000 and show("summarize_wal") == "on"
        identifier = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
        return ServerFacts(
            version_num=version_num,
            system_identifier=str(identifier),
            # In bytes since PostgreSQL 11 (the unit is "B").
            segment_size=int(conn.execute(
                "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()[0]),
            data_directory=data_directory,
            config_files=config_files,
            tablespaces={str(oid): loc for oid, loc in conn.execute(
                "SELECT oid, pg_tablespace_location(oid) FROM pg_tablespace "
                "WHERE spcname NOT IN ('pg_default', 'pg_global')")},
            databases={name: size for name, size in conn.execute(
                "SELECT datname, pg_database_size(oid) FROM pg_database WHERE datallowconn ORDER BY 1")},
            archive_mode=show("archive_mode"),
            summarize_wal=summarize,
        )


@dataclass
class WalRange:
    timeline: int
    start_lsn: str
    end_lsn: str


def lsn_to_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def wal_file_name(timeline: int, lsn: int, segment_size: int) -> str:
    """The name of the WAL segment holding ``lsn``."""
    segno = lsn // segment_size
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def manifest_wal_range(manifest: bytes) -> WalRange:
    """The WAL a backup needs, from PostgreSQL's backup_manifest (the last range is the backup's)."""
    try:
        document = json.loads(manifest)
        ranges = document["WAL-Ranges"]
        first, last = ranges[0], ranges[-1]
        return WalRange(int(last["Timeline"]), first["Start-LSN"], last["End-LSN"])
    except (ValueError, KeyError, IndexError) as exc:
        raise BackupctlError(f"cannot read the backup_manifest pg_basebackup wrote: {exc!r}") from None


@dataclass
class StreamedBackup:
    """The outcome of one pg_basebackup run: stored archives and the manifest's WAL range."""

    objects: list[StoredObject] = field(default_factory=list)
    tablespaces: dict[str, str] = field(default_factory=dict)
    wal: WalRange | None = None
    manifest: bytes = b""


class _ArchiverWatch(threading.Thread):
    """Polls pg_stat_archiver while the backup runs; trips when archiving keeps failing."""

    def __init__(self, params: ConnParams, since: datetime) -> None:
        super().__init__(name="archiver-watch", daemon=True)
        self.params = params
        self.since = since
        self.stop = threading.Event()
        self.problem: str | None = None

    def run(self) -> None:
        failing_since: float | None = None
        try:
            with self.params.connect() as conn:
                while not self.stop.wait(1.0):
                    archived_at, failed_wal, failed_at, failures = conn.execute(
                        "SELECT last_archived_time, last_failed_wal, last_failed_time, failed_count "
                        "FROM pg_stat_archiver").fetchone()
                    failing = failed_at is not None and failed_at > self.since and (
                        archived_at is None or archived_at < failed_at)
                    if not failing:
                        failing_since = None
                        continue
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > ARCHIVER_GRACE_SECONDS:
                        self.problem = (
                            f"WAL archiving is failing: segment {failed_wal} failed {failures} times, "
                            f"last at {failed_at:%Y-%m-%d %H:%M:%S %Z}; the backup cannot complete until it "
                            "is archived (fix archive_command: see the server log and `backupctl wal check`)"
                        )
                        return
        except BackupctlError as exc:
            log.warning("cannot watch pg_stat_archiver", error=str(exc))


class TarMemberTap(io.RawIOBase):
    """Passes a tar stream through unchanged and keeps a copy of one member's content.

    With ``-D -`` pg_basebackup appends its backup_manifest to base.tar; the tap hands it over without
    a second read of the stream. It parses only the 512-byte headers as they go by.
    """

    def __init__(self, source: Any, wanted: str) -> None:
        self._source = source
        self._wanted = wanted.encode()
        self._offset = 0  # stream position of the next byte read
        self._header_at = 0  # stream position of the next header
        self._header = bytearray()
        self._capture: tuple[int, int] | None = None  # stream range of the wanted member's data
        self._ended = False
        self.content = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._source.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._inspect(memoryview(data))
        return n

    def _inspect(self, data: memoryview) -> None:
        start, end = self._offset, self._offset + len(data)
        self._offset = end
        if self._capture is not None:
            low, high = max(start, self._capture[0]), min(end, self._capture[1])
            if low < high:
                self.content += data[low - start:high - start]
        while not self._ended and self._header_at < end:
            take_from = max(self._header_at + len(self._header), start)
            need = 512 - len(self._header)
            self._header += data[take_from - start:take_from - start + need]
            if len(self._header) < 512:
                return
            self._parse_header(bytes(self._header), data, start, end)
            self._header.clear()

    def _parse_header(self, header: bytes, data: memoryview, start: int, end: int) -> None:
        if header == bytes(512):
            self._ended = True
            return
        name = header[:100].split(b"\0", 1)[0]
        size_field = header[124:136]
        if size_field[0] & 0x80:  # base-256, for members of 8 GiB and more
            size = int.from_bytes(size_field[1:], "big")
        else:
            size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
        data_at = self._header_at + 512
        self._header_at = data_at + (size + 511) // 512 * 512
        if name == self._wanted:
            self._capture = (data_at, data_at + size)
            low, high = max(start, data_at), min(end, data_at + size)
            if low < high:
                self.content += data[low - start:high - start]


def stream_basebackup(binaries: PgBinaries, params: ConnParams, facts: ServerFacts, label: str,
                      fast_checkpoint: bool, store: Callable[[str, Any, Any], StoredObject],
                      tmp_root: Path, parent_manifest: Path | None = None) -> StreamedBackup:
    """Run pg_basebackup, storing each tar archive as it streams by; see the module docstring.

    Without extra tablespaces (the common case) base.tar comes on pg_basebackup's stdout. With them,
    pg_basebackup must write a directory, which it insists be empty when it starts: backupctl gives it
    a fresh path and, as soon as pg_basebackup has made it, puts a FIFO there for every archive, long
    before the server sends the first one (it has to connect and checkpoint first). Should a FIFO lose
    that race, pg_basebackup writes a plain file, which is stored afterwards: slower, never wrong.
    """
    argv = [binaries.path("pg_basebackup"), "--format=tar", "--wal-method=none", "--verbose",
            f"--checkpoint={'fast' if fast_checkpoint else 'spread'}", f"--label={label}",
            "--manifest-checksums=CRC32C", "--no-password"]
    if parent_manifest is not None:
        argv.append(f"--incremental={parent_manifest}")
    env = params.env() | {"LC_MESSAGES": "C"}
    result = StreamedBackup(tablespaces=dict(facts.tablespaces))
    watch = _ArchiverWatch(params, datetime.now(UTC))
    watch.start()
    try:
        if not facts.tablespaces:
            with ToolProcess([*argv, "--pgdata=-"], env, "pg_basebackup") as tool:
                tap = TarMemberTap(tool.stdout, "backup_manifest")
                result.objects.append(store("base.tar", tap, lambda: _finish(tool, watch)))
            manifest = bytes(tap.content)
        else:
            manifest = _stream_to_fifos(argv, env, facts, store, tmp_root, watch, result)
    finally:
        watch.stop.set()
    result.manifest = manifest
    result.wal = manifest_wal_range(manifest)
    return result


def _finish(tool: ToolProcess, watch: _ArchiverWatch) -> None:
    """After the last byte: pg_basebackup's verdict, or the archiver's when that is what went wrong."""
    try:
        tool.wait()
    except BackupctlError as exc:
        if watch.problem:
            raise BackupctlError(watch.problem) from None
        if "WAL summar" in str(exc):
            raise BackupctlError(
                f"{exc}; the server no longer has the WAL summaries this incremental backup needs (summarize_wal "
                "turned on after the parent, summaries expired by wal_summary_keep_time, or a timeline switch): "
                "take a full backup (--type full)"
            ) from None
        raise


def _stream_to_fifos(argv: list[str], env: dict[str, str], facts: ServerFacts,
                     store: Callable[[str, Any, Any], StoredObject], tmp_root: Path, watch: _ArchiverWatch,
                     result: StreamedBackup) -> bytes:
    parent = Path(tempfile.mkdtemp(prefix="backupctl-basebackup-", dir=tmp_root))
    workdir = parent / "out"
    archives = [f"{oid}.tar" for oid in facts.tablespaces] + ["base.tar"]
    failures: list[BaseException] = []
    stored: dict[str, StoredObject] = {}

    def reader(name: str) -> None:
        try:
            with open(workdir / name, "rb") as fifo:
                key = "base.tar" if name == "base.tar" else f"tablespaces/{name}"
                stored[name] = store(key, fifo, None)
        except BaseException as exc:
            failures.append(exc)

    threads: list[threading.Thread] = []
    try:
        with ToolProcess([*argv, f"--pgdata={workdir}"], env, "pg_basebackup") as tool:
            deadline = time.monotonic() + 30
            while not workdir.is_dir() and tool.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0005)
            for name in archives:
                try:
                    os.mkfifo(workdir / name, 0o600)
                except FileExistsError:
                    log.warning("archive not streamed: pg_basebackup opened it first", archive=name)
                    continue
                thread = threading.Thread(target=reader, args=(name,), name=f"read-{name}", daemon=True)
                thread.start()
                threads.append(thread)
            while tool.proc.poll() is None and not (watch.problem or failures):
                time.sleep(0.1)
            if watch.problem or failures:
                tool.proc.terminate()
            _release_unopened(workdir, threads)
            for thread in threads:
                thread.join()
            if failures:
                raise failures[0]
            _finish(tool, watch)
        result.objects.extend(stored[name] for name in archives if name in stored)
        _store_plain_files(workdir, stored, store, result)
        return (workdir / "backup_manifest").read_bytes()
    finally:
        _release_unopened(workdir, threads)
        shutil.rmtree(parent, ignore_errors=True)


def _release_unopened(workdir: Path, threads: list[threading.Thread]) -> None:
    """Unblock readers whose FIFO pg_basebackup never opened (a tablespace dropped meanwhile)."""
    for thread in threads:
        if thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(os.open(workdir / thread.name.removeprefix("read-"), os.O_WRONLY | os.O_NONBLOCK))


def _store_plain_files(workdir: Path, stored: dict[str, StoredObject],
                       store: Callable[[str, Any, Any], StoredObject], result: StreamedBackup) -> None:
    """Archives that arrived as plain files (a lost FIFO race, a tablespace created meanwhile)."""
    for path in sorted(workdir.iterdir()):
        if path.name in stored or path.name == "backup_manifest" or not stat.S_ISREG(path.stat().st_mode):
            continue
        key = "base.tar" if path.name == "base.tar" else f"tablespaces/{path.name}"
        with open(path, "rb") as plain:
            result.objects.append(store(key, plain, None))
        if path.name != "base.tar":
            result.tablespaces.setdefault(path.name.removesuffix(".tar"), "")
        path.unlink()
