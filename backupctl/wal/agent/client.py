"""The fast path's client: archive_command (wal-push) and restore_command (wal-fetch), one call each.

Per call, this module reads the config with tomllib (``settings``, cached) and hands the file over a Unix
socket to a resident pusher (one per source, in a spool directory only the server's OS user can enter:
``daemon``). A call exits 0 only when the pusher reports ITS file durable in the repository (or fetched
into place), and for the very file PostgreSQL named (inode, size and mtime are compared).

Durability never depends on the pusher: when it dies mid-request, fails for a reason a retry may fix, or
cannot be started within ``STARTUP_WAIT``, the call pushes its own segment itself, synchronously, and
starts a new pusher in the background. When it is silent for ``min(timeout, 10)`` seconds (it sends a
heartbeat every second while it works, and stops once a job overruns what a healthy one takes: stopped,
hung), the call kills it by the pid it recorded with its lock and hands its segment to a new one, so the
stall is paid once, not by every later segment. New pushers are started in the background (detached:
its own session, stdin from /dev/null, output to ``pusher.log`` in the spool directory). When no pusher
runs at all, the call starts one and hands it its segment if it comes up in time: two cold starts (each
imports the storage stack) would only compete for the CPU. Refusals that a retry cannot fix (another
system's WAL, a conflicting checksum, a name PostgreSQL never archives) fail at once with exit 1.

wal-fetch asks the same resident process (when ``[wal] prefetch`` > 0). A file that is not archived exits 1
at once, but only when the repository knows the source (its source.json: a wrong --source, --epoch or
config would otherwise end recovery early); a segment whose system identifier is not the one in the
restoring cluster's pg_control is refused before it reaches %p; these and any other failure (an
unreachable store after retries, damage, a bad config) exit 128, which makes PostgreSQL stop recovery
rather than take the failure for the end of the archive.

Standard library only until a call must work in-process (``run_service`` loads the venv first): the
archive_command fast path imports this module.
"""

from __future__ import annotations

import _socket  # the C module: ``socket`` would import enum and selectors (~5 ms per call)
import os
import sys
import time

from backupctl.wal.agent.protocol import (
    LOCK_NAME,
    LOG_NAME,
    PROTOCOL,
    SOCKET_NAME,
    frame,
    pid_file,
    plausible_name,
    read_frames,
)
from backupctl.wal.agent.settings import Settings, SpoolError, client_settings, ensure_private_dir

TYPE_CHECKING = False  # not from typing: importing it costs ~4 ms on every archive_command
if TYPE_CHECKING:
    from typing import Any

STARTUP_WAIT = 3.0  # how long a client waits for a pusher that is starting (its lock is held)
NOT_RUNNING = "no pusher is running"
KILL_WAIT = 5.0  # how long a client waits for a pusher it killed to let go of its lock
MAX_SOCKET_PATH = 107

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_FETCH_FATAL = 128  # restore_command: > 125 makes PostgreSQL abort recovery instead of ending it


class Unavailable(Exception):
    """The resident pusher cannot serve this request: push (or fetch) in this process instead."""


class Unresponsive(Unavailable):
    """A pusher holds the socket but stays silent (stopped, hung, or past a job's deadline): replace it."""


def say(message: str, level: str = "error") -> None:
    sys.stderr.write(f"backupctl: {level}: {message}\n")
    sys.stderr.flush()


def ask(settings: Settings, request: dict[str, Any], connect_wait: float = 0.0) -> dict[str, Any]:
    """Send one request and wait for its final answer (heartbeats keep the wait alive)."""
    path = os.path.join(settings.spool, SOCKET_NAME)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(settings.stall)
        deadline = time.monotonic() + connect_wait
        while True:
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() >= deadline:
                    raise Unavailable(NOT_RUNNING) from exc
                time.sleep(0.05)
            except (TimeoutError, BlockingIOError) as exc:  # its backlog is full: nobody accepts
                raise Unresponsive(f"the pusher accepts no connection ({exc})") from exc
            except OSError as exc:
                raise Unavailable(f"cannot reach the pusher: {exc.strerror or exc}") from exc
        message = {**request, "version": PROTOCOL, "fingerprint": settings.fingerprint}
        try:
            sock.sendall(frame(message))
            for reply in read_frames(sock):
                if reply.get("status") != "wait":
                    return reply
        except TimeoutError as exc:
            raise Unresponsive(f"the pusher sent nothing for {settings.stall:.0f}s") from exc
        except (OSError, ValueError) as exc:
            raise Unavailable(f"lost the pusher mid-request ({exc})") from exc
        raise Unavailable("the pusher closed the connection mid-request (did it die?)")
    finally:
        sock.close()


def lock_held(settings: Settings) -> bool:
    """Whether a pusher holds its lock (running, or starting)."""
    import fcntl  # fast path: imported only by the calls that need it

    try:
        fd = os.open(os.path.join(settings.spool, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _kill_unresponsive(settings: Settings) -> int | None:
    """SIGKILL the pusher that holds this spool's lock but stopped answering; its pid, or None if none was killed.

    The pid is the one the pusher recorded after taking its lock (``pusher.pid``), and counts only while
    /proc/locks shows that very process holding the flock on this ``pusher.lock`` and its command line is a
    walpusher daemon: a stale file or a reused pid is left alone. Killing loses nothing: every object write
    is atomic, and each client still waiting gets its connection closed and does its own file. Returns once
    the lock is free (or after ``KILL_WAIT``), so that a new pusher can start at once.
    """
    import signal  # fast path: only to kill a stuck pusher (enum costs ms)

    try:
        with open(pid_file(settings.spool)) as handle:
            pid = int(handle.read())
        lock = os.stat(os.path.join(settings.spool, LOCK_NAME))
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
        with open("/proc/locks") as handle:
            locks = [line.split() for line in handle]
    except (OSError, ValueError):
        return None
    inode = f"{os.major(lock.st_dev):02x}:{os.minor(lock.st_dev):02x}:{lock.st_ino}"
    holder = ["FLOCK", "ADVISORY", "WRITE", str(pid), inode]  # "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF"
    if holder not in (fields[1:6] for fields in locks) or b"daemon" not in argv \
            or not any(b"backupctl.walpusher" in arg for arg in argv):
        return None
    try:
        os.kill(pid, signal.SIGKILL)  # a stopped process dies too
    except OSError:
        return None
    deadline = time.monotonic() + KILL_WAIT
    while lock_held(settings) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pid


def bootstrap() -> list[str]:
    """This interpreter running walpusher's ``main`` with the fewest imports (see ``wal.conf.invocation``).

    ``-I``: no PYTHON* variables, no cwd (the data directory) on the path; ``-S``: no ``site`` (loaded
    later only by the paths that need the venv's packages); the package's own parent directory goes
    first on the path, so walpusher is imported as a module, from its compiled cache.
    """
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # holds backupctl/
    literal = '"' + root.replace("\\", "\\\\").replace('"', '\\"') + '"'
    code = f"import sys; sys.path.insert(0, {literal}); from backupctl.walpusher import main; sys.exit(main())"
    return [sys.executable, "-I", "-S", "-c", code]


def spawn_pusher(settings: Settings, pg_wal: str | None = None) -> None:
    """Start a resident pusher in the background, detached from PostgreSQL's process.

    With ``pg_wal`` it starts pushing that directory's ready segments as soon as it is up, while the
    call that started it pushes its own segment.
    """
    import subprocess  # fast path: only to start a pusher

    if lock_held(settings):
        return
    log_path = os.path.join(settings.spool, LOG_NAME)
    try:
        with open(log_path, "ab") as log:
            subprocess.Popen(
                [*bootstrap(), "--config", settings.config_file, "daemon", "--source", settings.source,
                 *([pg_wal] if pg_wal else [])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                cwd=settings.spool,
            )
    except OSError as exc:
        say(f"cannot start the WAL pusher: {exc}", "warning")


def _via_pusher(settings: Settings | None, request: dict[str, Any], pg_wal: str | None = None,
                ) -> dict[str, Any] | None:
    """The pusher's final answer, or None after saying why this process must do the work itself."""
    if settings is None:
        return None
    if len(os.path.join(settings.spool, SOCKET_NAME)) > MAX_SOCKET_PATH:
        say(f"spool directory {settings.spool} is too long for a Unix socket: set a shorter [wal] spool_dir",
             "warning")
        return None
    try:
        ensure_private_dir(settings.spool)
    except SpoolError as exc:
        say(f"{exc}; working without the resident pusher", "warning")
        return None
    held = lock_held(settings)  # a pusher runs, or is starting
    try:
        reply = ask(settings, request, connect_wait=STARTUP_WAIT if held else 0.0)
    except Unavailable as exc:
        # A silent pusher is killed by its pid: left alone, it would keep its lock and cost every later call
        # the whole stall (a stopped process, a job past its deadline).
        killed = _kill_unresponsive(settings) if isinstance(exc, Unresponsive) else None
        spawn_pusher(settings, pg_wal)  # nothing happens while another one holds the lock
        if killed is not None:
            say(f"{exc}: killed the unresponsive pusher (pid {killed}); a new one takes over", "warning")
        elif held or str(exc) != NOT_RUNNING:
            say(f"{exc}; doing {request['name']} in this process", "warning")
            return None
        # None is running now: hand this file to the one just started, if it comes up in time. Doing the work
        # here as well would only make two cold starts compete for the CPU.
        try:
            reply = ask(settings, request, connect_wait=STARTUP_WAIT)
        except Unavailable as again:
            say(f"the pusher did not start ({again}); doing {request['name']} in this process", "warning")
            return None
    if reply.get("status") == "restart":
        spawn_pusher(settings, pg_wal)
        return None
    return reply


def push_command(config_file: str | None, source: str | None, path: str, debug: bool = False) -> int:
    """archive_command: exit 0 only once ``path`` is durable in the repository."""
    name = os.path.basename(path)
    if not plausible_name(name):
        full_environment()
        from backupctl.wal.names import WalNameError, parse_wal_name  # the slow path: loaded only here

        try:
            parse_wal_name(name)
        except WalNameError as exc:
            say(str(exc))
            return EXIT_FAILED
    try:
        st = os.stat(path)
    except OSError as exc:
        say(f"cannot archive {path}: {exc.strerror} (archive_command's %p is relative to the data directory)")
        return EXIT_FAILED
    settings = client_settings(config_file, source)
    if settings is not None and settings.async_:
        absolute = os.path.abspath(path)
        request = {"op": "push", "name": name, "path": absolute, "stat": [st.st_ino, st.st_size, st.st_mtime_ns]}
        reply = _via_pusher(settings, request, os.path.dirname(absolute))
        if reply is not None:
            if reply.get("status") == "ok":
                return EXIT_OK
            if reply.get("definitive"):
                say(str(reply.get("message")))
                return EXIT_FAILED
            say(f"the pusher failed {name} ({reply.get('message')}); trying in this process", "warning")
    return _sync_push(config_file, source, path, debug)


def full_environment() -> None:
    """Load what ``-S`` skipped (the venv's site-packages and .pth files) before heavy imports."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site  # what -S skipped, loaded only for in-process work

        site.main()


def run_service(debug: bool, work: Any, fatal_exit: int | None = None) -> int:
    """Run ``work()`` with the CLI's error conventions: one line, the documented exit codes."""
    import traceback  # in-process work only

    full_environment()
    from backupctl.core import log, signals  # the slow path: never imported by a call the pusher serves
    from backupctl.core.errors import BackupctlError, Interrupted

    signals.install()
    log.configure(debug=debug)
    try:
        return int(work())
    except Interrupted as exc:
        if debug:
            traceback.print_exc()
        say(f"interrupted by signal {exc.signum}: nothing was reported as done")
        return exc.exit_code
    except BackupctlError as exc:
        if debug:
            traceback.print_exc()
        say(str(exc))
        return fatal_exit if fatal_exit is not None else exc.exit_code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        say(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return fatal_exit if fatal_exit is not None else EXIT_FAILED


def _sync_push(config_file: str | None, source: str | None, path: str, debug: bool) -> int:
    def work() -> int:
        # In-process work (run_service loaded the venv): imported here, never on the fast path.
        from backupctl.core.config import config_path, load_wal_config
        from backupctl.wal.names import parse_wal_name
        from backupctl.wal.opening import open_wal_repository, select_source
        from backupctl.wal.push import push_file

        parse_wal_name(os.path.basename(path))
        config = load_wal_config(config_path(config_file), source)
        name = select_source(config, source).name
        with open_wal_repository(config) as repo:
            push_file(repo, name, path)
        return EXIT_OK

    return run_service(debug, work)


def fetch_command(config_file: str | None, source: str | None, name: str, dest: str, debug: bool = False,
                  epoch: int = 1) -> int:
    """restore_command: 0 with ``dest`` in place, 1 when ``name`` is not archived, 128 on any failure."""
    if not plausible_name(name):
        say(f"{name!r} is not a WAL file name PostgreSQL asks for: nothing to fetch")
        return EXIT_FAILED
    settings = client_settings(config_file, source)
    if settings is not None and settings.prefetch > 0:
        reply = _via_pusher(settings, {"op": "fetch", "name": name, "dest": os.path.abspath(dest), "epoch": epoch})
        if reply is not None:
            if reply.get("status") == "ok":
                return EXIT_OK
            if reply.get("status") == "missing":
                return EXIT_FAILED
            if reply.get("definitive"):
                say(str(reply.get("message")))
                return EXIT_FETCH_FATAL
            say(f"the pusher could not fetch {name} ({reply.get('message')}); trying in this process", "warning")
    return _sync_fetch(config_file, source, name, dest, debug, epoch)


def _sync_fetch(config_file: str | None, source: str | None, name: str, dest: str, debug: bool, epoch: int) -> int:
    def work() -> int:
        # In-process work (run_service loaded the venv): imported here, never on the fast path.
        from backupctl.core.config import config_path, load_wal_config
        from backupctl.wal.fetch import fetch_from_epoch
        from backupctl.wal.opening import open_wal_repository, select_source

        config = load_wal_config(config_path(config_file), source)
        src = select_source(config, source).name
        with open_wal_repository(config) as repo:
            return EXIT_OK if fetch_from_epoch(repo, src, epoch, name, dest) else EXIT_FAILED

    return run_service(debug, work, fatal_exit=EXIT_FETCH_FATAL)
