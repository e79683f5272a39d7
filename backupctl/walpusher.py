"""The archive_command / restore_command fast path, and the resident pusher that keeps up with a busy server.

    python -I -S /path/to/backupctl/walpusher.py [--config FILE] [--debug] wal-push [--source NAME] PATH
    python -I -S /path/to/backupctl/walpusher.py [--config FILE] [--debug] wal-fetch [--source NAME] [--epoch N]
                                                                                     NAME DEST

(``backupctl pg-settings`` prints these with the right paths; ``python -m backupctl.walpusher`` and
``backupctl wal-push`` / ``backupctl wal-fetch`` run the same code, only with a slower start.)

PostgreSQL runs archive_command once per segment, one at a time, and marks the segment archived when
it exits 0. Per call, this module imports only the standard library (about 25 ms with the interpreter's
start), reads the config with tomllib and hands the segment over a Unix socket to a resident pusher
(one per source, in a spool directory only the server's OS user can enter). The pusher uploads in
parallel (``[wal] push_jobs``): the segment asked for first, then every other ``.ready`` segment it sees
in ``pg_wal/archive_status``, so the next calls usually find their segment already stored and return
at once. A call exits 0 only when the pusher reports ITS segment durable in the repository, and for the
very file PostgreSQL named (inode, size and mtime are compared).

Durability never depends on the pusher: when it dies mid-request, fails for a reason a retry may fix, or
cannot be started within ``STARTUP_WAIT``, the call pushes its own segment itself, synchronously, and
starts a new pusher in the background. When it is silent for ``min(timeout, 10)`` seconds (it sends a
heartbeat every second while it works, and stops once a job overruns what a healthy one takes: stopped,
hung), the call kills it by the pid it recorded with its lock and hands its segment to a new one, so the
stall is paid once, not by every later segment. New pushers are started in the background (detached:
its own session, stdin from /dev/null, output to ``pusher.log`` in the spool directory; it exits after
``[wal] idle_exit`` seconds without work, when its socket or spool directory disappears, or when the
config file changes). When no pusher runs at all, the call starts one and hands it its segment if it
comes up in time: two cold starts (each imports the storage stack) would only compete for the CPU.
Refusals that a retry cannot fix (another system's WAL, a conflicting checksum, a name PostgreSQL never
archives) fail at once with exit 1.

wal-fetch asks the same resident process (when ``[wal] prefetch`` > 0): it fetches the segment asked for
and the next ``prefetch`` ones in parallel into the spool directory, and moves each into place when
PostgreSQL asks for it. A file that is not archived exits 1 at once, but only when the repository knows the
source (its source.json: a wrong --source, --epoch or config would otherwise end recovery early); a
segment whose system identifier is not the one in the restoring cluster's pg_control is refused before
it reaches %p; these and any other failure (an unreachable store after retries, damage, a bad config)
exit 128, which makes PostgreSQL stop recovery rather than take the failure for the end of the archive.
``--epoch N`` fetches from history epoch N of the source (a cluster restored from a backup taken after
pg_upgrade: see ``backupctl.wal.epochs``); without it, epoch 1.
"""

from __future__ import annotations

import _socket  # the C module: ``socket`` would import enum and selectors (~5 ms per call)
import marshal
import os
import stat
import sys
import time

TYPE_CHECKING = False  # not from typing: importing it costs ~4 ms on every archive_command
if TYPE_CHECKING:
    import socket
    from typing import Any

PROTOCOL = 2  # 2: fetch requests name the history epoch
DEFAULT_CONFIG = "/etc/backupctl/backupctl.toml"
CONFIG_ENV = "BACKUPCTL_CONFIG"
SOCKET_NAME = "pusher.sock"
LOCK_NAME = "pusher.lock"
PID_NAME = "pusher.pid"
LOG_NAME = "pusher.log"
PREFETCH_DIR = "prefetch"
HEARTBEAT = 1.0  # seconds between "still working" messages to a waiting client
MAX_STALL = 10.0  # a pusher silent this long (or [wal] timeout, if shorter) is taken for stuck
STARTUP_WAIT = 3.0  # how long a client waits for a pusher that is starting (its lock is held)
NOT_RUNNING = "no pusher is running"
START_LOCK_WAIT = 30.0  # a new pusher waits this long for an old one (restarting) to let go
KILL_WAIT = 5.0  # how long a client waits for a pusher it killed to let go of its lock
JOB_MEMORY = 600.0  # seconds a finished job is remembered
MAX_READ_AHEAD = 1024  # queued read-ahead pushes at most
LOG_ROTATE_BYTES = 16 * 1024**2
MAX_SOCKET_PATH = 107
SETTINGS_CACHE = "settings"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_FETCH_FATAL = 128  # restore_command: > 125 makes PostgreSQL abort recovery instead of ending it

_HEX = frozenset("0123456789ABCDEF")
FRAME_LIMIT = 1024**2
USAGE = (
    "usage: python -m backupctl.walpusher [--config FILE] [--debug] wal-push [--source NAME] PATH\n"
    "       python -m backupctl.walpusher [--config FILE] [--debug] wal-fetch [--source NAME] [--epoch N] NAME DEST"
)


class Unavailable(Exception):
    """The resident pusher cannot serve this request: push (or fetch) in this process instead."""


class Unresponsive(Unavailable):
    """A pusher holds the socket but stays silent (stopped, hung, or past a job's deadline): replace it."""


class _UsageError(Exception):
    pass


def plausible_name(name: str) -> bool:
    """The shapes of the names PostgreSQL archives (wal.parse_wal_name checks the rest); no ``re`` here."""
    def hex_(text: str) -> bool:
        return bool(text) and _HEX.issuperset(text)

    if len(name) == 24:
        return hex_(name)
    if len(name) == 32 and name.endswith(".partial"):
        return hex_(name[:24])
    if len(name) == 16 and name.endswith(".history"):
        return hex_(name[:8])
    if len(name) == 40 and name.endswith(".backup") and name[24] == ".":
        return hex_(name[:24]) and hex_(name[25:33])
    return False


def frame(message: dict[str, Any]) -> bytes:
    """One protocol message: a 4-byte length and a marshal'd dict (marshal is built in: no import cost)."""
    data = marshal.dumps(message)
    return len(data).to_bytes(4, "big") + data


def read_frames(sock: socket.socket) -> Any:
    """The messages on a socket, until it closes."""
    buffer = b""
    while True:
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if size > FRAME_LIMIT:
                raise ValueError(f"a {size}-byte message")
            if len(buffer) < 4 + size:
                break
            message = marshal.loads(buffer[4:4 + size])
            buffer = buffer[4 + size:]
            if not isinstance(message, dict):
                raise ValueError("not a message")
            yield message
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk


_WAIT = frame({"status": "wait"})


def _say(message: str, level: str = "error") -> None:
    sys.stderr.write(f"backupctl: {level}: {message}\n")
    sys.stderr.flush()


# --- settings, read cheaply ----------------------------------------------------------------------


class Settings:
    """What the fast path needs from the config file, read with tomllib alone."""

    __slots__ = ("async_", "config_file", "fingerprint", "prefetch", "source", "spool", "timeout")

    def __init__(self, config_file: str, source: str, async_: bool, spool: str, timeout: float,
                 prefetch: int, fingerprint: list[Any]) -> None:
        self.config_file = config_file
        self.source = source
        self.async_ = async_
        self.spool = spool  # this source's own directory
        self.timeout = timeout
        self.prefetch = prefetch
        self.fingerprint = fingerprint

    @property
    def stall(self) -> float:
        return min(MAX_STALL, self.timeout)


def config_file_path(explicit: str | None) -> str:
    return os.path.abspath(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def fingerprint(path: str) -> list[Any]:
    """Identifies one version of the config file: a pusher serves only the config it loaded."""
    st = os.stat(path)
    return [os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns]


def default_spool_root() -> str:
    return f"/tmp/backupctl-{os.geteuid()}"


def spool_for(spool_dir: str | None, source: str) -> str:
    """The spool directory of one source: ``[wal] spool_dir`` (or /tmp/backupctl-UID) / source."""
    return os.path.join(spool_dir or default_spool_root(), source)


def _cache_file(config_path: str, source: str | None) -> str | None:
    name = f"{config_path}#{source or ''}".replace("%", "%25").replace("/", "%2F")
    return None if len(name) > 240 else os.path.join(default_spool_root(), SETTINGS_CACHE, name)


def cached_settings(config_file: str | None, source: str | None) -> Settings | None:
    """The settings ``quick_settings`` found for this very version of the config file, if any.

    The cache (marshal, in the private /tmp/backupctl-UID/settings) spares each call tomllib and the
    modules it pulls in (~8 ms); any change to the config file (inode, size, mtime) invalidates it.
    """
    path = config_file_path(config_file)
    cache = _cache_file(path, source)
    if cache is None:
        return None
    try:
        root = os.lstat(default_spool_root())
        if not stat.S_ISDIR(root.st_mode) or root.st_uid != os.geteuid() or root.st_mode & 0o077:
            return None
        with open(cache, "rb") as handle:
            if os.fstat(handle.fileno()).st_uid != os.geteuid():
                return None
            data = marshal.loads(handle.read())
        print_ = fingerprint(path)
        if not isinstance(data, dict) or data.get("fingerprint") != print_:
            return None
        return Settings(path, data["source"], data["async"], data["spool"], data["timeout"], data["prefetch"],
                        print_)
    except (OSError, ValueError, EOFError, TypeError, KeyError):
        return None


def _store_cache(settings: Settings, source: str | None) -> None:
    cache = _cache_file(settings.config_file, source)
    if cache is None:
        return
    try:
        ensure_private_dir(os.path.dirname(cache))
        temp = f"{cache}.{os.getpid()}"
        with open(temp, "wb") as handle:
            handle.write(marshal.dumps({
                "fingerprint": settings.fingerprint, "source": settings.source, "async": settings.async_,
                "spool": settings.spool, "timeout": settings.timeout, "prefetch": settings.prefetch,
            }))
        os.replace(temp, cache)
    except (OSError, SpoolError):
        pass  # only a cache


def client_settings(config_file: str | None, source: str | None) -> Settings | None:
    """Settings for the fast path: cached, else read with tomllib; None when the file needs the full loader."""
    settings = cached_settings(config_file, source)
    if settings is None:
        settings = quick_settings(config_file, source)
        if settings is not None:
            _store_cache(settings, source)
    return settings


def quick_settings(config_file: str | None, source: str | None) -> Settings | None:
    """Settings from the TOML alone; None when anything is odd (the full loader then says what)."""
    import tomllib

    path = config_file_path(config_file)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
        print_ = fingerprint(path)
    except (OSError, ValueError):
        return None
    sources = raw.get("sources", {})
    wal = raw.get("wal", {})
    if not isinstance(sources, dict) or not isinstance(wal, dict):
        return None
    postgres = [n for n, t in sources.items() if isinstance(t, dict) and t.get("kind") == "postgres"]
    if source is None:
        if len(postgres) != 1:
            return None
        source = postgres[0]
    elif source not in postgres:
        return None
    async_ = wal.get("async", True)
    timeout = wal.get("timeout", 60.0)
    prefetch = wal.get("prefetch", 8)
    spool_dir = wal.get("spool_dir")
    if (not isinstance(async_, bool) or isinstance(timeout, bool) or not isinstance(timeout, int | float)
            or timeout <= 0 or isinstance(prefetch, bool) or not isinstance(prefetch, int)
            or not (spool_dir is None or (isinstance(spool_dir, str) and spool_dir))):
        return None
    if spool_dir is not None:
        spool_dir = os.path.expanduser(spool_dir)
        if not os.path.isabs(spool_dir):
            spool_dir = os.path.join(os.path.realpath(os.path.dirname(path)), spool_dir)
    return Settings(path, source, async_, spool_for(spool_dir, source), float(timeout), prefetch, print_)


class SpoolError(Exception):
    pass


def ensure_private_dir(path: str) -> None:
    """Create a source's spool directory (0700) and insist that only this OS user can enter it.

    The default root (/tmp/backupctl-UID) must be private too; a configured ``spool_dir`` is created
    when missing but may be shared (e.g. /var/spool/backupctl, group-readable) as long as each source's
    directory in it is private.
    """
    root = os.path.dirname(path)
    shared = root != default_spool_root()
    try:
        if shared:
            os.makedirs(root, 0o700, exist_ok=True)
    except OSError as exc:
        raise SpoolError(f"cannot create spool directory {root}: {exc.strerror}") from None
    for directory in (path,) if shared else (root, path):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {directory}: {exc.strerror}") from None
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise SpoolError(
                f"spool directory {directory} must be a directory owned by uid {os.geteuid()} with mode 0700 "
                "(set [wal] spool_dir, or fix its owner and mode)"
            )


# --- talking to the pusher -----------------------------------------------------------------------


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


def _lock_held(settings: Settings) -> bool:
    """Whether a pusher holds its lock (running, or starting)."""
    import fcntl

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
    import signal

    try:
        with open(os.path.join(settings.spool, PID_NAME)) as handle:
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
    while _lock_held(settings) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pid


def bootstrap() -> list[str]:
    """This interpreter running walpusher's ``main`` with the fewest imports (see ``wal.invocation``).

    ``-I``: no PYTHON* variables, no cwd (the data directory) on the path; ``-S``: no ``site`` (loaded
    later only by the paths that need the venv's packages); the package's own parent directory goes
    first on the path, so walpusher is imported as a module, from its compiled cache.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    literal = '"' + root.replace("\\", "\\\\").replace('"', '\\"') + '"'
    code = f"import sys; sys.path.insert(0, {literal}); from backupctl.walpusher import main; sys.exit(main())"
    return [sys.executable, "-I", "-S", "-c", code]


def spawn_pusher(settings: Settings, pg_wal: str | None = None) -> None:
    """Start a resident pusher in the background, detached from PostgreSQL's process.

    With ``pg_wal`` it starts pushing that directory's ready segments as soon as it is up, while the
    call that started it pushes its own segment.
    """
    import subprocess

    if _lock_held(settings):
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
        _say(f"cannot start the WAL pusher: {exc}", "warning")


def _via_pusher(settings: Settings | None, request: dict[str, Any], pg_wal: str | None = None,
                ) -> dict[str, Any] | None:
    """The pusher's final answer, or None after saying why this process must do the work itself."""
    if settings is None:
        return None
    if len(os.path.join(settings.spool, SOCKET_NAME)) > MAX_SOCKET_PATH:
        _say(f"spool directory {settings.spool} is too long for a Unix socket: set a shorter [wal] spool_dir",
             "warning")
        return None
    try:
        ensure_private_dir(settings.spool)
    except SpoolError as exc:
        _say(f"{exc}; working without the resident pusher", "warning")
        return None
    held = _lock_held(settings)  # a pusher runs, or is starting
    try:
        reply = ask(settings, request, connect_wait=STARTUP_WAIT if held else 0.0)
    except Unavailable as exc:
        # A silent pusher is killed by its pid: left alone, it would keep its lock and cost every later call
        # the whole stall (a stopped process, a job past its deadline).
        killed = _kill_unresponsive(settings) if isinstance(exc, Unresponsive) else None
        spawn_pusher(settings, pg_wal)  # nothing happens while another one holds the lock
        if killed is not None:
            _say(f"{exc}: killed the unresponsive pusher (pid {killed}); a new one takes over", "warning")
        elif held or str(exc) != NOT_RUNNING:
            _say(f"{exc}; doing {request['name']} in this process", "warning")
            return None
        # None is running now: hand this file to the one just started, if it comes up in time. Doing the work
        # here as well would only make two cold starts compete for the CPU.
        try:
            reply = ask(settings, request, connect_wait=STARTUP_WAIT)
        except Unavailable as again:
            _say(f"the pusher did not start ({again}); doing {request['name']} in this process", "warning")
            return None
    if reply.get("status") == "restart":
        spawn_pusher(settings, pg_wal)
        return None
    return reply


# --- wal-push ------------------------------------------------------------------------------------


def push_command(config_file: str | None, source: str | None, path: str, debug: bool = False) -> int:
    """archive_command: exit 0 only once ``path`` is durable in the repository."""
    name = os.path.basename(path)
    if not plausible_name(name):
        full_environment()
        from backupctl.wal.archive import WalNameError, parse_wal_name

        try:
            parse_wal_name(name)
        except WalNameError as exc:
            _say(str(exc))
            return EXIT_FAILED
    try:
        st = os.stat(path)
    except OSError as exc:
        _say(f"cannot archive {path}: {exc.strerror} (archive_command's %p is relative to the data directory)")
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
                _say(str(reply.get("message")))
                return EXIT_FAILED
            _say(f"the pusher failed {name} ({reply.get('message')}); trying in this process", "warning")
    return _sync_push(config_file, source, path, debug)


def full_environment() -> None:
    """Load what ``-S`` skipped (the venv's site-packages and .pth files) before heavy imports."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


def _run_service(debug: bool, work: Any, fatal_exit: int | None = None) -> int:
    """Run ``work()`` with the CLI's error conventions: one line, the documented exit codes."""
    import traceback

    full_environment()
    from backupctl.core import log, signals
    from backupctl.core.errors import BackupctlError, Interrupted

    signals.install()
    log.configure(debug=debug)
    try:
        return int(work())
    except Interrupted as exc:
        if debug:
            traceback.print_exc()
        _say(f"interrupted by signal {exc.signum}: nothing was reported as done")
        return 128 + exc.signum
    except BackupctlError as exc:
        if debug:
            traceback.print_exc()
        _say(str(exc))
        return fatal_exit if fatal_exit is not None else exc.exit_code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        _say(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return fatal_exit if fatal_exit is not None else EXIT_FAILED


def _sync_push(config_file: str | None, source: str | None, path: str, debug: bool) -> int:
    def work() -> int:
        from backupctl.core.config import config_path, load_wal_config
        from backupctl.wal import archive as wal

        wal.parse_wal_name(os.path.basename(path))
        config = load_wal_config(config_path(config_file), source)
        name = wal.select_source(config, source).name
        with wal.open_wal_repository(config) as repo:
            wal.push_file(repo, name, path)
        return EXIT_OK

    return _run_service(debug, work)


# --- wal-fetch -----------------------------------------------------------------------------------


def fetch_command(config_file: str | None, source: str | None, name: str, dest: str, debug: bool = False,
                  epoch: int = 1) -> int:
    """restore_command: 0 with ``dest`` in place, 1 when ``name`` is not archived, 128 on any failure."""
    if not plausible_name(name):
        _say(f"{name!r} is not a WAL file name PostgreSQL asks for: nothing to fetch")
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
                _say(str(reply.get("message")))
                return EXIT_FETCH_FATAL
            _say(f"the pusher could not fetch {name} ({reply.get('message')}); trying in this process", "warning")
    return _sync_fetch(config_file, source, name, dest, debug, epoch)


def _sync_fetch(config_file: str | None, source: str | None, name: str, dest: str, debug: bool, epoch: int) -> int:
    def work() -> int:
        from backupctl.core.config import config_path, load_wal_config
        from backupctl.wal import archive as wal

        config = load_wal_config(config_path(config_file), source)
        src = wal.select_source(config, source).name
        with wal.open_wal_repository(config) as repo:
            return EXIT_OK if fetch_from_epoch(repo, src, epoch, name, dest) else EXIT_FAILED

    return _run_service(debug, work, fatal_exit=EXIT_FETCH_FATAL)


def fetch_from_epoch(repo: Any, source: str, epoch: int, name: str, dest: str, known: set[str] | None = None) -> bool:
    """``wal.fetch`` from history epoch ``epoch``'s stream: False ("not archived", which ends recovery) only
    when the repository knows the stream (its source.json); a source or epoch it lacks (a wrong --source,
    --epoch or config) raises ``wal.UnknownStream`` (exit 128: recovery stops). ``known``: streams already
    found, so that a resident pusher asks the repository once."""
    from backupctl.wal import archive as wal
    from backupctl.wal import epochs

    stream = epochs.stream_name(source, epoch)
    if wal.fetch(repo, stream, name, dest):
        return True
    if known is None or stream not in known:
        if wal.read_identity(repo, stream) is None:
            location = repo.storage.location
            if epoch > 1:
                raise wal.UnknownStream(
                    f"source {source!r} has no history epoch {epoch} in {location} ({stream}/source.json is "
                    f"missing): restore_command names the wrong --epoch (`backupctl pg-settings {source}` prints "
                    "the right one)")
            raise wal.UnknownStream(
                f"source {source!r} has nothing archived in {location} ({stream}/source.json is missing): "
                "restore_command names a source or repository this server never archived into: fix its --source "
                "or --config (`backupctl pg-settings SOURCE` prints the right one) rather than end recovery here")
        if known is not None:
            known.add(stream)
    return False


# --- the resident pusher -------------------------------------------------------------------------


class Job:
    """One push or fetch of one file by the resident pusher."""

    __slots__ = ("done", "epoch", "finished_at", "name", "op", "path", "priority", "result", "stat", "state")

    def __init__(self, op: str, name: str, path: str, priority: int, epoch: int = 1) -> None:
        import threading

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
        import itertools
        import queue
        import threading

        from backupctl.core import log

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
        self.socket_path = os.path.join(spool, SOCKET_NAME)
        self.prefetch_dir = os.path.join(spool, PREFETCH_DIR)
        self.socket_ino = 0
        # No healthy push or fetch takes longer than a few store timeouts (each request is bounded).
        self.job_deadline = 3 * config.wal.timeout + 30
        self.log_file: LogFile | None = None  # rotated by size while running (daemon_command sets it)

    # -- the repository, opened on first use and kept (an S3 client costs ~100 ms to make) --

    def repo(self) -> tuple[Any, Any]:
        from backupctl.wal import archive as wal

        with self.repo_lock:
            if self._repo is None:
                self._repo = wal.open_wal_repository(self.config)
                self._guard = wal.IdentityGuard(self._repo, self.source)
            return self._repo, self._guard

    # -- jobs --

    def _enqueue(self, job: Job) -> None:
        queue_ = self.push_queue if job.op == "push" else self.fetch_queue
        queue_.put((job.priority, next(self.seq), job))

    def _bump(self, job: Job) -> None:
        if job.state == "queued" and job.priority > 0:
            job.priority = 0
            self._enqueue(job)

    def _worker(self, queue_: Any, run: Any) -> None:
        import queue

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
        from backupctl.core.errors import BackupctlError
        from backupctl.wal.archive import UnknownStream, WalNameError, WalRefused

        definitive = isinstance(exc, WalRefused | WalNameError | UnknownStream)
        message = str(exc) if isinstance(exc, BackupctlError) else f"unexpected {type(exc).__name__}: {exc}"
        self.log.warning(f"{job.op} failed", name=job.name, error=message, definitive=definitive)
        return {"status": "error", "definitive": definitive, "message": message}

    def _run_push(self, job: Job) -> dict[str, Any]:
        from backupctl.wal import archive as wal

        repo, guard = self.repo()
        result = wal.push_file(repo, self.source, job.path, guard)
        job.stat = list(result.stat)
        self.log.info("pushed", name=job.name, result=result.status, seconds=round(result.seconds, 3),
                      priority=job.priority)
        return {"status": "ok", "key": result.key, "result": result.status}

    def _run_fetch(self, job: Job) -> dict[str, Any]:
        from backupctl.wal import archive as wal

        repo, _guard = self.repo()
        if not fetch_from_epoch(repo, self.source, job.epoch, job.name, job.path, self.known_streams):
            return {"status": "missing"}
        if wal.parse_wal_name(job.name).kind == "segment":
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
        from backupctl.wal import archive as wal

        count = self.config.wal.prefetch
        size = self.segment_sizes.get(epoch)
        parsed = wal.parse_wal_name(name)
        if parsed.kind != "segment" or not size or count <= 0:
            return
        segno = parsed.segno(size)
        with self.lock:
            for key, job in list(self.fetches.items()):
                other_epoch, other = key
                other_parsed = wal.parse_wal_name(other)
                if other_epoch == epoch and other_parsed.kind == "segment" and other_parsed.segno(size) <= segno \
                        and job.state == "done":
                    self.fetches.pop(key)
                    _unlink(job.path)
            for ahead in range(1, count + 1):
                next_name = wal.segment_name(parsed.timeline, segno + ahead, size)
                if (epoch, next_name) not in self.fetches:
                    self._new_fetch(epoch, next_name, ahead)

    def deliver(self, job: Job, dest: str) -> None:
        """Move a staged file into PostgreSQL's destination (rename on one filesystem, else copy), once its
        system identifier is the restoring cluster's (``wal.ForeignWal`` otherwise: nothing reaches ``dest``)."""
        import errno
        import shutil
        from pathlib import Path

        from backupctl.wal import archive as wal

        with self.lock:
            if self.fetches.get((job.epoch, job.name)) is job:
                self.fetches.pop((job.epoch, job.name))
        target = Path(dest)
        with open(job.path, "rb") as staged:
            head = staged.read(wal.LONG_HEADER.size)
        try:
            wal.check_restoring_system(wal.parse_wal_name(job.name), head, target)
        except wal.ForeignWal:
            _unlink(job.path)
            raise
        try:
            os.rename(job.path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with open(job.path, "rb") as staged:
                wal.write_atomically(target, lambda handle: shutil.copyfileobj(staged, handle, 1024**2))
            _unlink(job.path)
            return
        wal.fsync_dir(target.parent)

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
        import socket
        import struct

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
                conn.sendall(_WAIT)
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
        from backupctl.wal.archive import ForeignWal

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
        import contextlib
        import shutil
        import signal
        import socket
        import threading

        shutil.rmtree(self.prefetch_dir, ignore_errors=True)
        os.mkdir(self.prefetch_dir, 0o700)
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
        if self.log_file is not None:
            self.log_file.rotate()
        if gone or changed or idle:
            reason = "socket removed" if gone else "config changed" if changed else "idle"
            self.log.info("pusher exiting", reason=reason)
            self.stopping.set()


def _unlink(path: str) -> None:
    import contextlib

    with contextlib.suppress(OSError):
        os.unlink(path)


class LogFile:
    """``pusher.log``: structlog's stream, and fds 1 and 2 (tracebacks); writing to it never raises.

    A worker logs after each push: if a full disk (or a quota) made that raise, the worker died, its job
    never finished, its client waited for the job's deadline, and the pusher kept its lock. Here a line that
    cannot be written is dropped and counted, and the next line that gets through says how many were lost.
    structlog prints a line and flushes it under its lock: ``flush`` makes it one ``write`` (O_APPEND).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.pending: list[str] = []
        self.dropped = 0
        self.cut = False  # the last write ended mid-line

    def write(self, text: str) -> int:
        self.pending.append(text)
        return len(text)

    def flush(self) -> None:
        text = "".join(self.pending)
        self.pending.clear()
        if not text:
            return
        if self.dropped:
            notice = f'{{"event": "log lines dropped", "count": {self.dropped}, "level": "warning"}}\n'
            text = ("\n" if self.cut else "") + notice + text
        data = text.encode(errors="replace")
        try:
            written = os.write(self.fd, data)
        except OSError:
            self.dropped += 1
            return
        self.cut = written < len(data)
        self.dropped = int(self.cut)

    def fileno(self) -> int:
        return self.fd

    def redirect_output(self) -> None:
        """Tracebacks and stray prints (fds 1 and 2) go to this log too."""
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)

    def rotate(self) -> None:
        """A busy server keeps its pusher alive for good: past ``LOG_ROTATE_BYTES``, the file becomes
        ``pusher.log.1`` and a new one takes the same descriptor number, so every writer follows at once."""
        try:
            if os.fstat(self.fd).st_size <= LOG_ROTATE_BYTES:
                return
            os.replace(self.path, self.path + ".1")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # logging on in the old file beats not running
        os.dup2(fd, self.fd, inheritable=False)
        os.close(fd)
        self.redirect_output()


def daemon_command(config_file: str | None, source: str | None, debug: bool = False,
                   pg_wal: str | None = None) -> int:
    """The resident pusher's entry: one per source; exits at once if another one serves."""
    import fcntl

    full_environment()
    from backupctl.core import log
    from backupctl.core.config import config_path, load_wal_config
    from backupctl.wal import archive as wal

    os.umask(0o077)
    config = load_wal_config(config_path(config_file), source)
    name = wal.select_source(config, source).name
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
        with open(os.path.join(spool, PID_NAME), "w") as handle:
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
        _unlink(os.path.join(spool, PID_NAME))
    return EXIT_OK


# --- the entry point -----------------------------------------------------------------------------


def _epoch(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise _UsageError(f"--epoch {text!r} is not a history epoch (1, 2, ...)")
    return int(text)


def _parse(argv: list[str]) -> tuple[str | None, bool, str, str | None, int | None, list[str]]:
    config_file: str | None = None
    debug = False
    args = list(argv)
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option == "--debug":
            debug = True
        elif option == "--config" and args:
            config_file = args.pop(0)
        elif option.startswith("--config="):
            config_file = option.split("=", 1)[1]
        else:
            raise _UsageError(f"unknown option {option}")
    if not args:
        raise _UsageError("missing command")
    verb = args.pop(0)
    source: str | None = None
    epoch: int | None = None
    positional: list[str] = []
    while args:
        arg = args.pop(0)
        if arg == "--source" and args:
            source = args.pop(0)
        elif arg.startswith("--source="):
            source = arg.split("=", 1)[1]
        elif arg == "--epoch" and args:
            epoch = _epoch(args.pop(0))
        elif arg.startswith("--epoch="):
            epoch = _epoch(arg.split("=", 1)[1])
        elif arg == "--debug":
            debug = True
        elif arg == "--":
            positional.extend(args)
            break
        else:
            positional.append(arg)
    return config_file, debug, verb, source, epoch, positional


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        config_file, debug, verb, source, epoch, positional = _parse(args)
        if verb == "wal-fetch" and len(positional) == 2:
            return fetch_command(config_file, source, positional[0], positional[1], debug, epoch or 1)
        if epoch is not None:
            raise _UsageError(f"--epoch is an option of wal-fetch, not of {verb} (wal-push finds the epoch itself)")
        if verb == "wal-push" and len(positional) == 1:
            return push_command(config_file, source, positional[0], debug)
        if verb == "daemon" and len(positional) <= 1:
            return daemon_command(config_file, source, debug, *positional)
        raise _UsageError(f"wrong arguments for {verb}")
    except _UsageError as exc:
        _say(f"{exc}\n{USAGE}")
        # For restore_command every code from 1 to 125 means "not archived": a typo must not end recovery.
        return EXIT_FETCH_FATAL if "wal-fetch" in args else EXIT_USAGE


if __name__ == "__main__":
    # Run as a script (python -I -S .../backupctl/walpusher.py): the package's parent is not on the path.
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if _root not in sys.path:
        sys.path.insert(0, _root)
    sys.exit(main())
