"""Scratch clusters: initdb in a temp dir, a server on a free port of 127.0.0.1, stopped and removed.

They serve the tests, the demo and restore drills. PostgreSQL refuses to run as root, so as root the
server runs as the ``postgres`` OS user, which must own everything the server writes (the binaries it
runs come from ``postgres.binaries``). Scratch clusters trust every connection from this machine
(``--auth=trust``, listening on 127.0.0.1 only): they are for throwaway data, never for a real database.
"""

from __future__ import annotations

import functools
import math
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from backupctl.core.errors import BackupctlError
from backupctl.postgres.binaries import PgBinaries, as_user, binaries_for_user, chown

if TYPE_CHECKING:
    import psycopg

DEFAULT_SERVER_USER = "postgres"
LOG_TAIL_LINES = 15
PORT_ATTEMPTS = 3  # a free port can be taken by someone else between probing it and the server binding it

_SEVERITY_RE = re.compile(r"\b(?:FATAL|PANIC|ERROR):.*")


class ServerError(BackupctlError):
    """A step of running a scratch server (initdb, start, stop) failed.

    The message is one line, as the CLI prints it; ``log_tail`` holds the last lines of the server log
    (or of the tool's output) for tests and ``--debug`` to show.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail




def _server_user(requested: str | None) -> str | None:
    """The OS user that runs initdb, pg_ctl and the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        if requested not in (None, me):
            raise BackupctlError(
                f"cannot run the server as OS user {requested} while running as {me}: only root can "
                "switch users; leave os_user unset or run as root"
            )
        return None
    user = requested or DEFAULT_SERVER_USER
    try:
        pwd.getpwnam(user)
    except KeyError as exc:
        raise BackupctlError(
            f"PostgreSQL refuses to run as root and OS user {user} does not exist; create it "
            f"(adduser --system --group {user}) or pass another os_user"
        ) from exc
    return user


@functools.cache
def _utf8_locale() -> str | None:
    """C.UTF-8 when the C library has it: UTF-8 character classes, code-point order, no language pack."""
    try:
        output = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    names = {name.lower().replace("-", "") for name in output.split()}
    return "C.UTF-8" if "c.utf8" in names else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _complaint(text: str) -> str:
    """The server's own words from a log or tool output: its last FATAL/PANIC/ERROR line, else the last."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _SEVERITY_RE.search(line)
        if match:
            return " ".join(match.group(0).split())
    return lines[-1] if lines else "no output"


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


# --- scratch clusters --------------------------------------------------------------------------------


class ScratchCluster:
    """initdb in a temp dir, start on a free port on 127.0.0.1, stop, remove.

    Everything lives in one directory made under ``base_dir`` (default: the temp dir, which must be
    traversable by the server's user, so not pytest's 0700 ``tmp_path``): ``data/``, ``socket/`` and
    ``server.log``. Clients connect over TCP to 127.0.0.1 (``conninfo``), as backupctl's own tools do.
    ``port`` is None until the first start; ``os_user`` is the user the server runs as (None: ourselves).
    """

    def __init__(
        self,
        binaries: PgBinaries,
        *,
        base_dir: Path | None = None,
        settings: dict[str, str] | None = None,
        os_user: str | None = None,
        superuser: str = "postgres",
        initdb_args: Sequence[str] = (),
    ) -> None:
        self.os_user = _server_user(os_user)
        self.binaries = binaries if self.os_user is None else binaries_for_user(binaries, self.os_user)
        self.settings = dict(settings or {})
        self.superuser = superuser
        self.initdb_args = tuple(initdb_args)
        self.port: int | None = None
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"backupctl-pg{binaries.major}-", dir=base_dir))
        self.datadir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "server.log"
        self._remove_datadir = True
        try:
            self.socket_dir.mkdir(mode=0o700)
            chown(self.base_dir, self.os_user)
            chown(self.socket_dir, self.os_user)
            self._check_writable(self.base_dir)
        except BaseException:
            shutil.rmtree(self.base_dir)
            raise

    @classmethod
    def adopt(
        cls,
        binaries: PgBinaries,
        datadir: Path,
        *,
        remove_datadir: bool = False,
        base_dir: Path | None = None,
        settings: dict[str, str] | None = None,
        os_user: str | None = None,
        superuser: str = "postgres",
    ) -> ScratchCluster:
        """A cluster on an existing data directory (a restore): no initdb, only start, stop and remove.

        As root the directory is handed to the server's user (PostgreSQL refuses a data directory it
        does not own). ``remove()`` deletes it only with ``remove_datadir``: it was not made here.
        """
        datadir = Path(datadir).absolute()
        try:
            data_major = int((datadir / "PG_VERSION").read_text().strip())
        except (OSError, ValueError) as exc:
            raise BackupctlError(f"{datadir} is not a PostgreSQL data directory (no PG_VERSION)") from exc
        if data_major != binaries.major:
            raise BackupctlError(
                f"{datadir} holds PostgreSQL {data_major} data, which PostgreSQL {binaries.version} cannot "
                f"start; use the binaries of PostgreSQL {data_major}"
            )
        cluster = cls(binaries, base_dir=base_dir, settings=settings, os_user=os_user, superuser=superuser)
        cluster.datadir = datadir
        try:
            if cluster.os_user is not None:
                chown(datadir, cluster.os_user)
                for directory, dirnames, filenames in os.walk(datadir):
                    for name in (*dirnames, *filenames):
                        chown(Path(directory, name), cluster.os_user)
            os.chmod(datadir, 0o700)
            cluster._check_writable(datadir)
        except BaseException:
            shutil.rmtree(cluster.base_dir)
            raise
        cluster._remove_datadir = remove_datadir
        return cluster

    def __repr__(self) -> str:
        return f"ScratchCluster(PostgreSQL {self.binaries.version}, {self.datadir}, port {self.port})"

    def _run(self, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        # PG* variables of the caller must not redirect the tools; LC_ALL=C keeps their messages
        # in English and free of warnings about locales this machine lacks. The server's user gets its
        # own HOME, as under systemd: archive_command and restore_command inherit this environment.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.os_user is not None:
            env["HOME"] = pwd.getpwnam(self.os_user).pw_dir
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env,
            cwd="/", **as_user(self.os_user),  # type: ignore[arg-type]
        )

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        argv = [self.binaries.path("pg_ctl"), "-D", str(self.datadir), *args]
        try:
            return self._run(argv, timeout + 30)  # pg_ctl has its own -t; this only guards a hang
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"pg_ctl {args[0]} hung for {timeout + 30:.0f}s in {self.datadir}") from exc

    def _check_writable(self, path: Path) -> None:
        if self.os_user is None:
            return
        probe = subprocess.run(["test", "-w", str(path)], check=False, cwd="/", **as_user(self.os_user))  # type: ignore[arg-type]
        if probe.returncode != 0:
            raise BackupctlError(
                f"OS user {self.os_user} cannot write {path}: put scratch clusters under a directory "
                "every user can traverse (e.g. /tmp or /var/tmp), not under a 0700 one like pytest's tmp_path"
            )

    def init(self) -> None:
        """initdb: UTF-8, data checksums on, trust for local connections only.

        ``--no-sync``: scratch data need not survive a crash of the machine, and it saves seconds.
        """
        locale = _utf8_locale()
        argv = [
            self.binaries.path("initdb"), "-D", str(self.datadir), "-U", self.superuser, "-E", "UTF8",
            f"--locale={locale}" if locale else "--no-locale", "--auth=trust", "--data-checksums",
            "--no-sync", *self.initdb_args,
        ]
        step = f"initdb of PostgreSQL {self.binaries.version} in {self.datadir}"
        try:
            result = self._run(argv, timeout=300)
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{step} hung for 300s") from exc
        if result.returncode != 0:
            output = result.stdout + result.stderr
            raise ServerError(f"{step} failed: {_complaint(output)}", _tail(output))

    def is_running(self) -> bool:
        if not self.datadir.is_dir():
            return False
        return self._pg_ctl("status", timeout=30).returncode == 0

    def start(self, timeout: float = 60) -> None:
        """pg_ctl start -w, then wait until a client connects over TCP.

        The port is chosen on the first start and kept across restarts; if something else took it
        meanwhile, another free one is tried.
        """
        deadline = time.monotonic() + timeout
        if self.port is None:
            self.port = free_port()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            result = self._pg_ctl(
                "start", "-w", "-t", str(math.ceil(timeout)), "-l", str(self.log_file),
                "-o", self._server_options(), timeout=timeout,
            )
            if result.returncode == 0:
                break
            log = self._read_log(log_offset) or result.stdout + result.stderr
            if self.is_running():  # pg_ctl gave up waiting: do not leave a server behind
                self.stop("immediate")
            if "Address already in use" in log and attempt < PORT_ATTEMPTS:
                self.port = free_port()
                continue
            raise ServerError(
                f"pg_ctl start of PostgreSQL {self.binaries.version} failed for {self.datadir} "
                f"(port {self.port}): {_complaint(log)}",
                _tail(log),
            )
        self._wait_connectable(deadline)

    def _server_options(self) -> str:
        # Ours win over ``settings``: conninfo() depends on them. pg_ctl hands -o to /bin/sh.
        options = {
            **self.settings,
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }
        return " ".join(f"-c {shlex.quote(f'{name}={value}')}" for name, value in options.items())

    def _read_log(self, offset: int = 0) -> str:
        try:
            with open(self.log_file, encoding="utf-8", errors="replace") as handle:
                handle.seek(offset)
                return handle.read()
        except FileNotFoundError:
            return ""

    def _wait_connectable(self, deadline: float) -> None:
        import psycopg  # ~120 ms: see connect()

        while True:
            try:
                with psycopg.connect(**self.conninfo(), connect_timeout=5):
                    return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"PostgreSQL {self.binaries.version} started in {self.datadir} but does not accept "
                        f"connections on 127.0.0.1:{self.port}: {error}".replace("\n", " "),
                        _tail(self._read_log()),
                    ) from error
            time.sleep(0.1)

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server: ``mode`` first, then immediate if that does not finish; nothing if stopped."""
        if not self.is_running():
            return
        wait = ("-w", "-t", str(math.ceil(timeout)))
        result = self._pg_ctl("stop", "-m", mode, *wait, timeout=timeout)
        if result.returncode != 0 and mode != "immediate":
            result = self._pg_ctl("stop", "-m", "immediate", *wait, timeout=timeout)
        if result.returncode != 0 and self.is_running():
            output = result.stdout + result.stderr
            raise ServerError(
                f"pg_ctl stop failed for {self.datadir}: {_complaint(output)}", _tail(self._read_log())
            )

    def remove(self) -> None:
        """Stop the server and delete what this cluster made (an adopted data directory only if asked)."""
        self.stop()
        if self._remove_datadir and self.datadir.exists():
            shutil.rmtree(self.datadir)
        if self.base_dir.exists():
            shutil.rmtree(self.base_dir)

    def conninfo(self, dbname: str = "postgres") -> dict[str, str | int]:
        """psycopg/libpq keywords for a TCP connection as the superuser."""
        if self.port is None:
            raise BackupctlError(f"scratch cluster in {self.datadir} has not been started")
        return {"host": "127.0.0.1", "port": self.port, "user": self.superuser, "dbname": dbname}

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        # psycopg is imported here, not at the top: the module also serves callers that only find
        # binaries (wal-push must stay cheap to start).
        import psycopg

        return psycopg.connect(**self.conninfo(dbname), autocommit=autocommit, connect_timeout=10)

    def __enter__(self) -> ScratchCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
