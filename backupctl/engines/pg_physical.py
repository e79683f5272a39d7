"""PostgreSQL physical backups: pg_basebackup's tar streams straight into the repository.

``pg_basebackup -D -`` refuses extra tablespaces, so backupctl runs ``pg_basebackup -Ft -D DIR`` with a
FIFO in DIR for every archive the server will send (one per tablespace, then ``base.tar``): a reader
thread per FIFO streams that archive through the pipeline as pg_basebackup writes it, and nothing but
the small ``backup_manifest`` ever lands on local disk. Each archive is stored in parts of whole files
(``store_archive``), so a restore can write them in parallel. WAL comes from the archive: a temporary
replication slot holds the backup's WAL while ``-X fetch`` lets the server finish without waiting for
the archiver, and backupctl waits itself until every segment from the backup's start to its stop is in
the repository (with ``-X none``, when no slot can be had, the server waits for the archiver first; the
repository is checked all the same); meanwhile it watches pg_stat_archiver and stops with the failing
segment and its error instead of hanging.

A backup taken on a standby (``postgres.hosts``) cannot wait for the server it copies: a standby cannot
switch WAL segments, and unless it runs ``archive_mode = always`` it archives nothing. So the backup asks
the primary for ``pg_switch_wal()`` once it has stopped (which completes the segment holding its stop
point), watches the archiver that stores the segments (``StandbyWal``) and gives up after
``wal_wait_timeout`` with an error that says nobody archives, rather than waiting forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from backupctl.core.errors import BackupctlError
from backupctl.core.log import get_logger
from backupctl.core.units import format_duration
from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.connection import ConnParams
from backupctl.postgres.tarstream import FILE, Member, TarPart, TarSplitter
from backupctl.postgres.tools import ToolProcess
from backupctl.repo import layout
from backupctl.repo.pipeline import StoredObject
from backupctl.wal.names import lsn_to_segno, parse_lsn, segment_name

log = get_logger(__name__)

ARCHIVER_GRACE_SECONDS = 30.0  # how long archiving may keep failing before the backup gives up
STORED_ELSEWHERE_SECONDS = 10.0  # a segment the server archived may take this long to show in the repository
GAP_GRACE_SECONDS = 60.0  # a segment may stay missing this long while later ones of the range are stored
PART_BYTES = 256 * 1024**2  # default size of one stored part of an archive (sources.NAME.split_size)
PARALLEL_COMMITS = 2  # parts that may finish in the background while the next one streams


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
    catalog_version: int  # names a tablespace's directory: PG_<major>_<catalog_version>
    data_size: int | None = None  # every database's pg_database_size, templates too: a full copy's estimate

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
        identifier, catalog_version = conn.execute(
            "SELECT system_identifier, catalog_version_no FROM pg_control_system()").fetchone()
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
            catalog_version=int(catalog_version),
            data_size=int(conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database").fetchone()[0]),
        )


@dataclass
class WalRange:
    timeline: int
    start_lsn: str
    end_lsn: str

    def segments(self, segment_size: int) -> list[str]:
        """The segments from the one holding ``start_lsn`` to the one holding the last byte before ``end_lsn``:
        the WAL that makes the backup's files consistent (a restore replays no less)."""
        first = lsn_to_segno(parse_lsn(self.start_lsn), segment_size)
        last = lsn_to_segno(parse_lsn(self.end_lsn) - 1, segment_size)
        return [segment_name(self.timeline, segno, segment_size) for segno in range(first, last + 1)]


def manifest_wal_range(manifest: bytes) -> WalRange:
    """The WAL a backup needs, from PostgreSQL's backup_manifest (the last range is the backup's)."""
    try:
        document = json.loads(manifest)
        ranges = document["WAL-Ranges"]
        first, last = ranges[0], ranges[-1]
        return WalRange(int(last["Timeline"]), first["Start-LSN"], last["End-LSN"])
    except (ValueError, KeyError, IndexError) as exc:
        raise BackupctlError(f"cannot read the backup_manifest pg_basebackup wrote: {exc!r}") from exc


@dataclass
class StreamedBackup:
    """The outcome of one pg_basebackup run: stored archives and the manifest's WAL range."""

    objects: list[StoredObject] = field(default_factory=list)
    tablespaces: dict[str, str] = field(default_factory=dict)
    wal: WalRange | None = None
    manifest: bytes = b""
    wal_wait_seconds: float | None = None  # waited for the range's WAL to be in the repository (None: no check)


@dataclass(frozen=True)
class StandbyWal:
    """How the WAL of a backup taken on a standby reaches the repository (see the module docstring).

    ``archiver`` is the server whose archiver stores the segments: the primary, or the standby itself when
    it runs ``archive_mode = always``; ``timeout`` is the source's ``wal_wait_timeout``.
    """

    primary: ConnParams
    archiver: ConnParams
    timeout: float

    def switch(self) -> None:
        """``pg_switch_wal()`` on the primary, so that the segment holding the backup's stop is completed and
        archived now rather than when it fills; a primary that cannot be reached leaves the wait to time out."""
        try:
            with self.primary.connect() as conn:
                conn.execute("SELECT pg_switch_wal()")
        except Exception as exc:  # psycopg's errors too: not a superuser, the primary in recovery
            log.warning("cannot switch WAL on the primary: the backup's last segment is archived only when it fills",
                        primary=self.primary.address(), error=" ".join(str(exc).split()))


class ArchiverWatch(threading.Thread):
    """Polls pg_stat_archiver while the backup runs; trips when archiving keeps failing.

    Failures count from when the watch connected, on the server's clock (pg_stat_archiver's times are
    the server's): a backup host whose clock is off neither misses a failure nor blames an old one.
    """

    def __init__(self, params: ConnParams) -> None:
        super().__init__(name="archiver-watch", daemon=True)
        self.params = params
        self.stop = threading.Event()
        self.problem: str | None = None

    def run(self) -> None:
        failing_since: float | None = None
        try:
            with self.params.connect() as conn:
                since: datetime = conn.execute("SELECT clock_timestamp()").fetchone()[0]
                while not self.stop.wait(1.0):
                    archived_at, failed_wal, failed_at, failures = conn.execute(
                        "SELECT last_archived_time, last_failed_wal, last_failed_time, failed_count "
                        "FROM pg_stat_archiver").fetchone()
                    failing = failed_at is not None and failed_at > since and (
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


Store = Callable[[str, Any, Any], StoredObject]  # (name, stream, finalize) -> the stored object


def _is_wal_file(member: Member) -> bool:
    """pg_basebackup's copy of WAL (``-X fetch``): the archive has it, so it is not stored twice."""
    return member.kind == FILE and member.name.startswith(b"pg_wal/")


def store_archive(stream: BinaryIO, name: str, store: Store, part_bytes: int,
                  finalize: Callable[[], None] | None = None, abort: Callable[[], None] = lambda: None,
                  commits: int = PARALLEL_COMMITS) -> tuple[list[StoredObject], bytes]:
    """Store one tar archive as parts of whole members, ``<name>/0000.tar`` and on; returns them and the
    captured backup_manifest (pg_basebackup appends it to base.tar on stdout).

    One thread streams the current part while up to ``commits`` earlier parts finish in the background
    (the last compressed frame, the last uploads, an fsync), so pg_basebackup never waits for a commit.
    ``finalize`` runs after the stream's end and before the last part is committed; ``abort`` stops the
    producer when something fails, so that no thread is left waiting for its data.
    """
    splitter = TarSplitter(stream, part_bytes, skip=_is_wal_file, capture=b"backup_manifest")
    futures: list[Future[StoredObject]] = []

    def store_part(index: int, part: TarPart, released: threading.Event) -> StoredObject:
        def end_of_part() -> None:
            released.set()  # the stream is free for the next part while this one commits
            if part.last and finalize is not None:
                finalize()

        try:
            return store(layout.tar_part(name, index), part, end_of_part)
        finally:
            released.set()

    with ThreadPoolExecutor(commits + 1, thread_name_prefix=f"store-{name}") as pool:
        try:
            for index, part in enumerate(splitter.parts()):
                released = threading.Event()
                futures.append(pool.submit(store_part, index, part, released))
                released.wait()
                if not part.finished:
                    futures[-1].result()  # the part failed before its end: its error
                    raise BackupctlError(f"storing {name} stopped before the end of part {index}")
            if not futures and finalize is not None:
                finalize()  # nothing came: the producer's own verdict says why
            stored = [future.result() for future in futures]
        except BaseException:
            abort()
            raise
    return stored, bytes(splitter.captured)


class _WalReservation:
    """A temporary replication slot that keeps the backup's WAL on the server until pg_basebackup has it.

    With it, pg_basebackup runs with ``-X fetch``, which tells the server not to wait for the archiver at
    backup stop (with ``-X none`` it sleeps in whole seconds until the last segment is archived);
    backupctl then waits for the backup's segments itself, watching the repository. The WAL that comes along is
    dropped from the stored archive: the repository's WAL archive holds it. The slot is temporary, so the
    server drops it when this session ends, whatever happens to backupctl.
    """

    def __init__(self, params: ConnParams) -> None:
        self.conn = params.connect()
        name = f"backupctl_{os.getpid()}_{secrets.token_hex(4)}"
        try:
            self.conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (name,))
        except Exception:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()


def _reserve_wal(params: ConnParams) -> _WalReservation | None:
    try:
        return _WalReservation(params)
    except Exception as exc:  # psycopg's errors: no free slot, no REPLICATION privilege
        log.warning("cannot hold the backup's WAL with a temporary replication slot: the server will wait "
                    "for the archiver at backup stop instead (about a second longer)",
                    error=" ".join(str(exc).split()))
        return None


def wait_until_stored(segments: list[str], present: Callable[[list[str]], set[str]],
                      last_archived: Callable[[], str | None], watch: ArchiverWatch,
                      timeout: float | None = None) -> float:
    """Wait until every WAL segment of ``segments`` (a backup's range, in order) is in the repository;
    returns the seconds waited.

    The last segment being stored proves nothing about the earlier ones: the async pusher uploads out of
    order. So each poll asks ``present`` (one listing) which of them the repository holds, and the wait
    follows the earliest missing one. It fails, naming that segment, when archive_command keeps failing
    (``watch``); when the server reports it archived (``last_archived`` at or past it) and the repository
    still lacks it ``STORED_ELSEWHERE_SECONDS`` later (archive_command stores WAL somewhere else, or the
    object was removed): this repository could never restore the backup; or when later segments of the
    range are stored and it stays missing for ``GAP_GRACE_SECONDS`` (its upload failed or hangs); and, with
    ``timeout`` (a backup from a standby), when it is still missing after that many seconds.
    """
    clock = time.monotonic()
    pause, told = 0.02, clock
    archived_since: dict[str, float] = {}
    gap_since: dict[str, float] = {}
    while True:
        stored = present(segments)
        missing = [segment for segment in segments if segment not in stored]
        if not missing:
            return time.monotonic() - clock
        if watch.problem:
            raise BackupctlError(watch.problem)
        now, first = time.monotonic(), missing[0]
        last = last_archived() or ""
        archived = len(last) >= 24 and last[:8] == first[:8] and last[:24] >= first
        overtaken = any(segment in stored for segment in segments[segments.index(first) + 1:])
        if archived and now - archived_since.setdefault(first, now) > STORED_ELSEWHERE_SECONDS:
            raise BackupctlError(
                f"the server archived WAL segment {first} of this backup, but it is not in the repository: "
                "archive_command stores WAL elsewhere (set it to what `backupctl pg-settings` prints) or the "
                "segment was removed; the backup is not published"
            )
        if overtaken and now - gap_since.setdefault(first, now) > GAP_GRACE_SECONDS:
            raise BackupctlError(
                f"WAL segment {first} of this backup is not in the repository {GAP_GRACE_SECONDS:.0f}s after "
                "later segments were stored: its upload failed or hangs (see pusher.log in the WAL spool "
                "directory and `backupctl wal check`); the backup is not published"
            )
        if timeout is not None and now - clock > timeout:
            raise BackupctlError(
                f"WAL segment {first} of this backup not archived after {format_duration(timeout)}: is archive_command "
                "set on the primary, or archive_mode=always on the standby? (wal_wait_timeout; `backupctl wal check`); "
                "the backup is not published"
            )
        if now - told > 60:
            told = now
            log.info("waiting for the backup's WAL to be archived", segment=first, missing=len(missing),
                     seconds=round(now - clock))
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)


def wait_for_backup_wal(conn: Any, wal: WalRange, segment_size: int, present: Callable[[list[str]], set[str]],
                        watch: ArchiverWatch) -> float:
    """``wait_until_stored`` for a backup's WAL range, reading pg_stat_archiver on ``conn``; the seconds waited."""
    def last_archived() -> str | None:
        return conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]

    return round(wait_until_stored(wal.segments(segment_size), present, last_archived, watch), 3)


def wait_for_standby_wal(standby: StandbyWal, wal: WalRange, segment_size: int,
                         present: Callable[[list[str]], set[str]], watch: ArchiverWatch) -> float:
    """A standby backup's ``wait_for_backup_wal``: switch WAL on the primary, then wait at most the timeout,
    reading the archiver's progress where the segments are archived; the seconds waited."""
    standby.switch()
    with contextlib.ExitStack() as stack:
        try:
            conn = stack.enter_context(standby.archiver.connect())
        except BackupctlError as exc:
            log.warning("cannot read the archiver's progress", server=standby.archiver.address(), error=str(exc))
            conn = None

        def last_archived() -> str | None:
            if conn is None:
                return None
            return conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]

        return round(wait_until_stored(wal.segments(segment_size), present, last_archived, watch,
                                       timeout=standby.timeout), 3)


def stream_basebackup(binaries: PgBinaries, params: ConnParams, facts: ServerFacts, label: str,
                      fast_checkpoint: bool, store: Store, tmp_root: Path, parent_manifest: Path | None = None,
                      wal_present: Callable[[list[str]], set[str]] | None = None,
                      part_bytes: int = PART_BYTES, standby: StandbyWal | None = None) -> StreamedBackup:
    """Run pg_basebackup, storing each tar archive as it streams by; see the module docstring.

    Without extra tablespaces (the common case) base.tar comes on pg_basebackup's stdout. With them,
    pg_basebackup must write a directory, which it insists be empty when it starts: backupctl gives it
    a fresh path and, as soon as pg_basebackup has made it, puts a FIFO there for every archive, long
    before the server sends the first one (it has to connect and checkpoint first). Should a FIFO lose
    that race, pg_basebackup writes a plain file, which is stored afterwards: slower, never wrong.

    ``wal_present(segments)`` says which of some WAL segments the repository holds; with it, the backup
    returns only once every segment of its range is there (``wait_until_stored``), and with a
    replication slot to spare the server does not wait for the archiver (see ``_WalReservation``).
    ``standby``: the backup is taken on a standby, whose WAL is waited for as ``wait_for_standby_wal`` says.
    """
    reservation = _reserve_wal(params) if wal_present is not None else None
    argv = [binaries.path("pg_basebackup"), "--format=tar", f"--wal-method={'fetch' if reservation else 'none'}",
            "--verbose", f"--checkpoint={'fast' if fast_checkpoint else 'spread'}", f"--label={label}",
            "--manifest-checksums=CRC32C", "--no-password"]
    if parent_manifest is not None:
        argv.append(f"--incremental={parent_manifest}")
    env = params.env() | {"LC_MESSAGES": "C"}
    result = StreamedBackup(tablespaces=dict(facts.tablespaces))
    watch = ArchiverWatch(standby.archiver if standby else params)
    watch.start()
    try:
        if not facts.tablespaces:
            with ToolProcess([*argv, "--pgdata=-"], env, "pg_basebackup") as tool:
                _widen_pipe(tool.stdout)
                objects, manifest = store_archive(tool.stdout, layout.BASE_ARCHIVE, store, part_bytes,
                                                  lambda: _finish(tool, watch), tool.proc.kill)
            result.objects.extend(objects)
        else:
            manifest = _stream_to_fifos(argv, env, facts, store, tmp_root, watch, result, part_bytes)
        result.manifest = manifest
        result.wal = manifest_wal_range(manifest)
        if wal_present is not None and standby is not None:
            result.wal_wait_seconds = wait_for_standby_wal(standby, result.wal, facts.segment_size, wal_present,
                                                           watch)
        elif wal_present is not None:
            with contextlib.ExitStack() as stack:
                conn = reservation.conn if reservation else stack.enter_context(params.connect())
                result.wal_wait_seconds = wait_for_backup_wal(conn, result.wal, facts.segment_size, wal_present,
                                                              watch)
    finally:
        watch.stop.set()
        if reservation is not None:
            reservation.close()
    return result


def _widen_pipe(stream: Any) -> None:
    """A 1 MiB pipe (Linux): fewer, larger reads, and pg_basebackup blocks less often on a full pipe."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1024 * 1024)


def _finish(tool: ToolProcess, watch: ArchiverWatch) -> None:
    """After the last byte: pg_basebackup's verdict, or the archiver's when that is what went wrong."""
    try:
        tool.wait()
    except BackupctlError as exc:
        if watch.problem:
            raise BackupctlError(watch.problem) from exc
        if "WAL summar" in str(exc):
            raise BackupctlError(
                f"{exc}; the server no longer has the WAL summaries this incremental backup needs (summarize_wal "
                "turned on after the parent, summaries expired by wal_summary_keep_time, or a timeline switch): "
                "take a full backup (--type full)"
            ) from exc
        raise


def _stream_to_fifos(argv: list[str], env: dict[str, str], facts: ServerFacts, store: Store, tmp_root: Path,
                     watch: ArchiverWatch, result: StreamedBackup, part_bytes: int) -> bytes:
    parent = Path(tempfile.mkdtemp(prefix="backupctl-basebackup-", dir=tmp_root))
    workdir = parent / "out"
    archives = [f"{oid}.tar" for oid in facts.tablespaces] + ["base.tar"]
    failures: list[BaseException] = []
    stored: dict[str, list[StoredObject]] = {}

    def reader(name: str, tool: ToolProcess) -> None:
        try:
            with open(workdir / name, "rb") as fifo:
                stored[name], _ = store_archive(fifo, layout.tar_archive(name), store, part_bytes,
                                                abort=tool.proc.terminate)
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
                thread = threading.Thread(target=reader, args=(name, tool), name=f"read-{name}", daemon=True)
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
        for name in archives:
            result.objects.extend(stored.get(name, []))
        _store_plain_files(workdir, stored, store, result, part_bytes)
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


def _store_plain_files(workdir: Path, stored: dict[str, list[StoredObject]], store: Store,
                       result: StreamedBackup, part_bytes: int) -> None:
    """Archives that arrived as plain files (a lost FIFO race, a tablespace created meanwhile)."""
    for path in sorted(workdir.iterdir()):
        if path.name in stored or path.name == "backup_manifest" or not stat.S_ISREG(path.stat().st_mode):
            continue
        with open(path, "rb") as plain:
            objects, _ = store_archive(plain, layout.tar_archive(path.name), store, part_bytes)
        result.objects.extend(objects)
        if path.name != "base.tar":
            result.tablespaces.setdefault(path.name.removesuffix(".tar"), "")
        path.unlink()
