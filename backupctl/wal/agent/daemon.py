"""The resident pusher: one process per source that keeps up with a busy server, and reads ahead in recovery.

archive_command hands it each segment over a Unix socket (``client``); it uploads in parallel
(``[wal] push_jobs``): the segment asked for first, then every other ``.ready`` segment it sees in
``pg_wal/archive_status``, so the next calls usually find their segment already stored and return at once.
A call's answer is "ok" only for the very file PostgreSQL named (inode, size and mtime are compared).
restore_command asks it too (when ``[wal] prefetch`` > 0): it fetches the segment asked for and the next
``prefetch`` ones in parallel into the spool directory, and moves each into place when PostgreSQL asks.

It exits after ``[wal] idle_exit`` seconds without work, when its socket or spool directory disappears,
or when the config file changes. It is started detached by a client (``client.spawn_pusher``) or by the
scheduler, with the venv loaded (``client.full_environment``) before this module is imported: unlike the
client, it may import the whole WAL archive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import queue
import shutil
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from backupctl.core import log
from backupctl.core.config import config_path, load_wal_config
from backupctl.core.errors import BackupctlError
from backupctl.storage.local import fsync_dir
from backupctl.wal.agent.client import EXIT_OK, Unavailable, ask
from backupctl.wal.agent.logfile import LogFile
from backupctl.wal.agent.protocol import (
    HEARTBEAT,
    LOCK_NAME,
    LOG_NAME,
    PREFETCH_DIR,
    PROTOCOL,
    SOCKET_NAME,
    WAIT,
    archived_dir,
    frame,
    pending_dir,
    pid_file,
    plausible_name,
    read_frames,
)
from backupctl.wal.agent.settings import config_file_path, ensure_private_dir, fingerprint, quick_settings, spool_for
from backupctl.wal.fetch import UnknownStream, check_restoring_system, fetch_from_epoch, write_atomically
from backupctl.wal.identity import LONG_HEADER, ForeignWal, IdentityGuard, WalRefused
from backupctl.wal.names import WalNameError, parse_wal_name, segment_name
from backupctl.wal.opening import open_wal_repository, select_source
from backupctl.wal.push import ArchiveView, push_file

START_LOCK_WAIT = 30.0  # a new pusher waits this long for an old one (restarting) to let go
JOB_MEMORY = 600.0  # seconds a finished job is remembered
MAX_READ_AHEAD = 1024  # queued read-ahead pushes at most


class Job:
    """One push or fetch of one file by the resident pusher."""

    __slots__ = ("done", "epoch", "finished_at", "name", "op", "path", "priority", "result", "stat", "state")

    def __init__(self, op: str, name: str, path: str, priority: int, epoch: int = 1) -> None:
        self.op = op
        self.name = name
        self.epoch = epoch  # fetch: the history epoch whose stream holds the file
        self.path = path  # push: the file to archive; fetch: where it is staged
        self.priority = priority
        self.state = "queued"  # queued -> running -> done
        self.result: dict[str, Any] | None = None
        self.stat: list[int] | None = None
        self.finished_at = 0.0
        self.done = threading.Event()


class Pusher:
    """The resident process: a Unix socket, a queue of pushes and one of fetches, worker threads."""

    def __init__(self, config: Any, source: str, spool: str, print_: list[Any]) -> None:
        self.log = log.get_logger("backupctl.walpusher")
        self.config = config
        self.source = source
        self.spool = spool
        self.fingerprint = print_
        self.lock = threading.Lock()
        self.repo_lock = threading.Lock()
        self.pushes: dict[str, Job] = {}
        self.fetches: dict[tuple[int, str], Job] = {}  # by (history epoch, name): epochs reuse names
        self.push_queue: queue.PriorityQueue[tuple[int, int, Job]] = queue.PriorityQueue()
        self.fetch_queue: queue.PriorityQueue[tuple[int, int, Job]] = queue.PriorityQueue()
        self.seq = itertools.count()
        self.stopping = threading.Event()
        self.last_activity = time.monotonic()
        self.running = 0
        self.segment_sizes: dict[int, int] = {}  # per history epoch, learnt from fetched segments
        self.known_streams: set[str] = set()  # streams whose source.json was found: "missing" is then true
        self._repo: Any = None
        self._guard: Any = None
        self.archived = ArchiveView()  # one folder listing answers many pushes (S3: a PUT per segment)
        self.socket_path = os.path.join(spool, SOCKET_NAME)
        self.prefetch_dir = os.path.join(spool, PREFETCH_DIR)
        self.archived_dir = archived_dir(spool)
        self.pending_dir = pending_dir(spool)
        self.markers = True  # false once pg_wal turned out to be on another filesystem than the spool
        self.socket_ino = 0
        # No healthy push or fetch takes longer than a few store timeouts (each request is bounded).
        self.job_deadline = 3 * config.wal.timeout + 30
        self.log_file: LogFile | None = None  # rotated by size while running (daemon_command sets it)

    # -- the repository, opened on first use and kept (an S3 client costs ~100 ms to make) --

    def repo(self) -> tuple[Any, Any]:
        with self.repo_lock:
            if self._repo is None:
                self._repo = open_wal_repository(self.config)
                self._guard = IdentityGuard(self._repo, self.source)
            return self._repo, self._guard

    # -- jobs --

    def _enqueue(self, job: Job) -> None:
        if job.op == "push" and self.markers:
            self._mark_pending(job.name)
        queue_ = self.push_queue if job.op == "push" else self.fetch_queue
        queue_.put((job.priority, next(self.seq), job))

    def _mark_pending(self, name: str) -> None:
        """Tell archive_command's shell to wait for this file's marker rather than start an interpreter."""
        with contextlib.suppress(OSError):
            os.close(os.open(os.path.join(self.pending_dir, name), os.O_WRONLY | os.O_CREAT, 0o600))

    def _bump(self, job: Job) -> None:
        if job.state == "queued" and job.priority > 0:
            job.priority = 0
            self._enqueue(job)

    def _worker(self, queue_: Any, run: Any) -> None:
        while not self.stopping.is_set():
            try:
                _priority, _seq, job = queue_.get(timeout=0.5)
            except queue.Empty:
                continue
            with self.lock:
                if job.state != "queued":
                    continue  # a stale entry of a job that was bumped to the front
                job.state = "running"
                self.running += 1
            result = {"status": "error", "definitive": False, "message": f"the pusher's {job.op} of {job.name} failed"}
            try:
                result = run(job)
            except BaseException as exc:  # every failure is reported to the client
                result = self._failure(exc, job)
            finally:  # whatever happened, the job ends: a client waiting on it would otherwise wait for good
                self._finish([job], "running", result)
                if job.op == "push":
                    _unlink(os.path.join(self.pending_dir, job.name))

    def _finish(self, jobs: list[Job], state: str, result: dict[str, Any]) -> None:
        """End those of ``jobs`` still in ``state`` with ``result``, and wake their clients."""
        with self.lock:
            now = time.monotonic()
            ending = [job for job in jobs if job.state == state]
            for job in ending:
                job.result = result
                job.state = "done"
                job.finished_at = now
            self.running -= len(ending) if state == "running" else 0
            self.last_activity = now
        for job in ending:
            job.done.set()

    def _failure(self, exc: BaseException, job: Job) -> dict[str, Any]:
        definitive = isinstance(exc, WalRefused | WalNameError | UnknownStream)
        message = str(exc) if isinstance(exc, BackupctlError) else f"unexpected {type(exc).__name__}: {exc}"
        self.log.warning(f"{job.op} failed", name=job.name, error=message, definitive=definitive)
        return {"status": "error", "definitive": definitive, "message": message}

    def _run_push(self, job: Job) -> dict[str, Any]:
        repo, guard = self.repo()
        result = push_file(repo, self.source, job.path, guard, self.archived)
        job.stat = list(result.stat)
        self._mark_archived(job)
        self.log.info("pushed", name=job.name, result=result.status, seconds=round(result.seconds, 3),
                      priority=job.priority)
        return {"status": "ok", "key": result.key, "result": result.status}

    def _mark_archived(self, job: Job) -> None:
        """Leave the marker that lets archive_command's shell test answer for this file (``archived_dir``).

        The hard link is made from the path, then proven to be the inode (and size and mtime) that was read
        and pushed; anything else, or a link the filesystem refuses, leaves no marker: the call then asks.
        """
        if not self.markers or job.stat is None or not os.path.exists(_ready_file(job.path)):
            return
        staging = os.path.join(self.archived_dir, f".{job.name}.{threading.get_ident()}")
        try:
            os.link(job.path, staging)
            st = os.stat(staging)
            if [st.st_ino, st.st_size, st.st_mtime_ns] == job.stat:
                os.rename(staging, os.path.join(self.archived_dir, job.name))
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                self.markers = False
                self.log.info("no markers: archive_command asks the pusher for every file", error=exc.strerror,
                              spool=self.spool, wal=os.path.dirname(job.path))
        finally:
            _unlink(staging)

    def _prune_markers(self) -> None:
        """Drop the markers of files PostgreSQL no longer holds ready (archived, or gone), or that changed."""
        try:
            names = os.listdir(self.archived_dir)
        except OSError:
            return
        with self.lock:
            pushed = {name: (job.path, job.stat) for name, job in self.pushes.items() if job.op == "push"}
        for name in names:
            if name.startswith("."):
                continue  # a link being made (``_mark_archived``)
            path, stat_ = pushed.get(name, ("", None))
            try:
                st = os.stat(os.path.join(self.archived_dir, name))
                keep = (stat_ == [st.st_ino, st.st_size, st.st_mtime_ns] and os.path.exists(_ready_file(path)))
            except OSError:
                keep = False
            if not keep:
                _unlink(os.path.join(self.archived_dir, name))

    def _run_fetch(self, job: Job) -> dict[str, Any]:
        repo, _guard = self.repo()
        if not fetch_from_epoch(repo, self.source, job.epoch, job.name, job.path, self.known_streams):
            return {"status": "missing"}
        if parse_wal_name(job.name).kind == "segment":
            self.segment_sizes[job.epoch] = os.stat(job.path).st_size
        self.log.info("fetched", name=job.name, priority=job.priority)
        return {"status": "ok"}

    # -- requests --

    def want_push(self, name: str, path: str, stat_: list[int]) -> Job:
        with self.lock:
            job = self.pushes.get(name)
            if job is not None and job.path == path:
                if job.state != "done":
                    self._bump(job)
                    return job
                if job.result and job.result["status"] == "ok" and job.stat == stat_:
                    return job
            job = Job("push", name, path, 0)
            self.pushes[name] = job
            self._enqueue(job)
            return job

    def read_ahead(self, pg_wal: str) -> None:
        """Queue every other segment PostgreSQL has marked ready, history files first."""
        try:
            entries = os.listdir(os.path.join(pg_wal, "archive_status"))
        except OSError:
            return
        ready = sorted((e[:-6] for e in entries if e.endswith(".ready")),
                       key=lambda n: (not n.endswith(".history"), n))
        with self.lock:
            queued = sum(1 for j in self.pushes.values() if j.state == "queued")
            for name in ready:
                if queued >= MAX_READ_AHEAD:
                    break
                if name in self.pushes or not plausible_name(name):
                    continue
                job = Job("push", name, os.path.join(pg_wal, name), 1 if name.endswith(".history") else 2)
                self.pushes[name] = job
                self._enqueue(job)
                queued += 1

    def _new_fetch(self, epoch: int, name: str, priority: int) -> Job:
        """A fetch job, staged as ``<epoch>.<name>`` (epochs reuse names); call with the lock held."""
        job = Job("fetch", name, os.path.join(self.prefetch_dir, f"{epoch}.{name}"), priority, epoch)
        self.fetches[(epoch, name)] = job
        self._enqueue(job)
        return job

    def want_fetch(self, name: str, epoch: int = 1) -> Job:
        with self.lock:
            job = self.fetches.get((epoch, name))
            if job is not None:
                if job.state != "done":
                    self._bump(job)
                    return job
                if job.result and job.result["status"] == "ok" and os.path.exists(job.path):
                    return job
            return self._new_fetch(epoch, name, 0)

    def prefetch_after(self, name: str, epoch: int = 1) -> None:
        """After ``name`` was fetched: drop staged files behind it, queue the next ``prefetch`` ones."""
        count = self.config.wal.prefetch
        size = self.segment_sizes.get(epoch)
        parsed = parse_wal_name(name)
        if parsed.kind != "segment" or not size or count <= 0:
            return
        segno = parsed.segno(size)
        with self.lock:
            for key, job in list(self.fetches.items()):
                other_epoch, other = key
                other_parsed = parse_wal_name(other)
                if other_epoch == epoch and other_parsed.kind == "segment" and other_parsed.segno(size) <= segno \
                        and job.state == "done":
                    self.fetches.pop(key)
                    _unlink(job.path)
            for ahead in range(1, count + 1):
                next_name = segment_name(parsed.timeline, segno + ahead, size)
                if (epoch, next_name) not in self.fetches:
                    self._new_fetch(epoch, next_name, ahead)

    def deliver(self, job: Job, dest: str) -> None:
        """Move a staged file into PostgreSQL's destination (rename on one filesystem, else copy), once its
        system identifier is the restoring cluster's (``ForeignWal`` otherwise: nothing reaches ``dest``)."""
        with self.lock:
            if self.fetches.get((job.epoch, job.name)) is job:
                self.fetches.pop((job.epoch, job.name))
        target = Path(dest)
        with open(job.path, "rb") as staged:
            head = staged.read(LONG_HEADER.size)
        try:
            check_restoring_system(parse_wal_name(job.name), head, target)
        except ForeignWal:
            _unlink(job.path)
            raise
        try:
            os.rename(job.path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with open(job.path, "rb") as staged:
                write_atomically(target, lambda handle: shutil.copyfileobj(staged, handle, 1024**2))
            _unlink(job.path)
            return
        fsync_dir(target.parent)

    # -- the socket --

    def serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(10)
                self._check_peer(conn)
                request = next(read_frames(conn))
                with self.lock:
                    self.last_activity = time.monotonic()
                try:
                    reply = self._answer(conn, request)
                except (KeyError, TypeError, ValueError) as exc:
                    reply = {"status": "error", "definitive": False, "message": f"bad request: {exc!r}"}
                conn.sendall(frame(reply))
            except (OSError, StopIteration, ValueError):
                return  # the client went away; its job (if any) carries on

    def _check_peer(self, conn: socket.socket) -> None:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (os.geteuid(), 0):
            raise OSError(f"refusing a request from uid {uid}")

    def _answer(self, conn: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("version") != PROTOCOL or request.get("fingerprint") != self.fingerprint:
            self.log.info("config or protocol changed: exiting so that a new pusher takes over")
            self.stopping.set()
            return {"status": "restart"}
        op = request.get("op")
        if op == "ping":
            return {"status": "ok", "pid": os.getpid()}
        if op == "push":
            return self._answer_push(conn, request)
        if op == "fetch":
            return self._answer_fetch(conn, request)
        return {"status": "error", "definitive": False, "message": f"unknown request {op!r}"}

    def _wait(self, conn: socket.socket, job: Job) -> dict[str, Any]:
        """Heartbeats while the job is healthy; silence after ``job_deadline``, so that the client gives
        up on this pusher (a request stuck in a hung filesystem, say) and does the work itself."""
        deadline = time.monotonic() + self.job_deadline
        while not job.done.wait(HEARTBEAT):
            if time.monotonic() < deadline:
                conn.sendall(WAIT)
        assert job.result is not None
        return job.result

    def _answer_push(self, conn: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
        name, path, stat_ = request["name"], request["path"], list(request["stat"])
        job = self.want_push(name, path, stat_)
        self.read_ahead(os.path.dirname(path))
        result = self._wait(conn, job)
        if result["status"] == "ok" and job.stat != stat_:
            # Pushed ahead from a file that has since been replaced: push the file PostgreSQL names now.
            job = self.want_push(name, path, stat_)
            result = self._wait(conn, job)
        if result["status"] == "ok" and job.stat != stat_:
            return {"status": "error", "definitive": False, "message": f"{path} keeps changing"}
        return result

    def _answer_fetch(self, conn: socket.socket, request: dict[str, Any]) -> dict[str, Any]:
        name, dest, epoch = request["name"], request["dest"], int(request["epoch"])
        job = self.want_fetch(name, epoch)
        result = self._wait(conn, job)
        if result["status"] != "ok":
            return result
        try:
            self.deliver(job, dest)
        except ForeignWal as exc:
            return self._failure(exc, job)
        except OSError as exc:
            return {"status": "error", "definitive": False, "message": f"cannot write {dest}: {exc.strerror}"}
        self.prefetch_after(name, epoch)
        return {"status": "ok"}

    # -- the main loop --

    def run(self, pg_wal: str | None = None) -> None:
        for private in (self.prefetch_dir, self.archived_dir, self.pending_dir):
            shutil.rmtree(private, ignore_errors=True)
            os.mkdir(private, 0o700)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        self.socket_ino = os.stat(self.socket_path).st_ino
        listener.listen(64)
        listener.settimeout(1.0)
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.stopping.set())
        wal_config = self.config.wal
        workers = [threading.Thread(target=self._worker, args=(self.push_queue, self._run_push), daemon=True)
                   for _ in range(wal_config.push_jobs)]
        workers += [threading.Thread(target=self._worker, args=(self.fetch_queue, self._run_fetch), daemon=True)
                    for _ in range(max(1, min(wal_config.prefetch, 8)))]
        for worker in workers:
            worker.start()
        self.log.info("pusher started", pid=os.getpid(), source=self.source, push_jobs=wal_config.push_jobs,
                      prefetch=wal_config.prefetch)
        if pg_wal:
            self.read_ahead(pg_wal)
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    self._housekeeping()
                    continue
                threading.Thread(target=self.serve, args=(conn,), daemon=True).start()
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == self.socket_ino:
                    os.unlink(self.socket_path)
            self.stopping.set()
            # No worker takes a queued job any more: their clients push (or fetch) themselves now, rather than
            # get heartbeats until the running jobs end.
            with self.lock:
                jobs = [*self.pushes.values(), *self.fetches.values()]
            self._finish(jobs, "queued", {"status": "error", "definitive": False, "message": "the pusher is stopping"})
            deadline = time.monotonic() + wal_config.timeout
            while self.running and time.monotonic() < deadline:
                time.sleep(0.05)
            # Markers vouch for this pusher's config: a changed one may name another repository.
            shutil.rmtree(self.archived_dir, ignore_errors=True)
            shutil.rmtree(self.pending_dir, ignore_errors=True)
            shutil.rmtree(self.prefetch_dir, ignore_errors=True)
            self.log.info("pusher stopped", pid=os.getpid())

    def _housekeeping(self) -> None:
        now = time.monotonic()
        try:
            gone = os.stat(self.socket_path).st_ino != self.socket_ino
        except OSError:
            gone = True
        try:
            changed = fingerprint(self.fingerprint[0]) != self.fingerprint
        except OSError:
            changed = True
        with self.lock:
            idle = (not self.running and not any(j.state == "queued" for j in self.pushes.values())
                    and not any(j.state == "queued" for j in self.fetches.values())
                    and now - self.last_activity > self.config.wal.idle_exit)
            for jobs in (self.pushes, self.fetches):
                for name, job in list(jobs.items()):
                    if job.state == "done" and now - job.finished_at > JOB_MEMORY:
                        jobs.pop(name)
                        if job.op == "fetch":
                            _unlink(job.path)
        self._prune_markers()
        if self.log_file is not None:
            self.log_file.rotate()
        if gone or changed or idle:
            reason = "socket removed" if gone else "config changed" if changed else "idle"
            self.log.info("pusher exiting", reason=reason)
            self.stopping.set()


def _ready_file(path: str) -> str:
    """The archive_status file that says PostgreSQL waits for the file at ``path`` to be archived."""
    return os.path.join(os.path.dirname(path), "archive_status", os.path.basename(path) + ".ready")


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def daemon_command(config_file: str | None, source: str | None, debug: bool = False,
                   pg_wal: str | None = None) -> int:
    """The resident pusher's entry: one per source; exits at once if another one serves."""
    os.umask(0o077)
    config = load_wal_config(config_path(config_file), source)
    name = select_source(config, source).name
    settings = quick_settings(config_file, name)
    spool = settings.spool if settings else spool_for(config.wal.spool_dir, name)
    ensure_private_dir(spool)
    lock_fd = os.open(os.path.join(spool, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + START_LOCK_WAIT
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if settings is not None:
                try:
                    if ask(settings, {"op": "ping", "name": "-"}).get("status") == "ok":
                        return EXIT_OK  # another pusher serves this config
                except Unavailable:
                    pass
            if time.monotonic() > deadline:
                return EXIT_OK
            time.sleep(0.2)
    log_file = LogFile(os.path.join(spool, LOG_NAME))
    log_file.rotate()
    log_file.redirect_output()
    log.configure(debug=debug, stream=log_file)
    try:  # recorded with the lock: a client that finds this pusher silent kills it by this pid
        with open(pid_file(spool), "w") as handle:
            handle.write(f"{os.getpid()}\n")
    except OSError as exc:
        log.get_logger("backupctl.walpusher").warning("cannot record the pusher's pid: if it gets stuck, clients "
                                                     "cannot replace it", error=exc.strerror)
    print_ = fingerprint(config_file_path(config_file))
    try:
        pusher = Pusher(config, name, spool, print_)
        pusher.log_file = log_file
        pusher.run(pg_wal)
    finally:
        _unlink(pid_file(spool))
    return EXIT_OK
