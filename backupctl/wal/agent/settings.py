"""The fast path's settings: ``[wal]`` and the source, read with tomllib alone (and cached).

archive_command runs once per segment, so each call must start in a few milliseconds: this module reads
the config file without the full loader (``core.config``: its imports alone cost more than a push). It
needs only the source's name, ``[wal]`` and the spool directory, and it gives up (None) on anything odd;
the caller then runs the full loader, which names the problem. ``WAL_OPTIONS`` repeats ``[wal]``'s
defaults and ranges from ``core.config.WalConfig`` for that reason; a parity test
(tests/unit/test_wal_agent.py) holds the two to the same values.

Standard library only: the archive_command fast path imports this module.
"""

from __future__ import annotations

import marshal
import os
import stat

TYPE_CHECKING = False  # not from typing: importing it costs ~4 ms on every archive_command
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONFIG = "/etc/backupctl/backupctl.toml"
CONFIG_ENV = "BACKUPCTL_CONFIG"
SETTINGS_CACHE = "settings"
MAX_STALL = 10.0  # a pusher silent this long (or [wal] timeout, if shorter) is taken for stuck
# [wal] as core.config.WalConfig declares it: key -> (type, default, min, max, must be positive).
WAL_OPTIONS: dict[str, tuple[type, Any, float | None, float | None, bool]] = {
    "async": (bool, True, None, None, False),
    "push_jobs": (int, 4, 1, 64, False),
    "prefetch": (int, 8, 0, 64, False),
    "spool_dir": (str, None, None, None, False),
    "timeout": (float, 60.0, None, None, True),
    "idle_exit": (float, 300.0, None, None, True),
}


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


def default_spool_root(uid: int | None = None) -> str:
    """/tmp/backupctl-UID: the spool root of a user (by default, this process's) without ``[wal] spool_dir``."""
    return f"/tmp/backupctl-{os.geteuid() if uid is None else uid}"


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
    import tomllib  # only on a cache miss: it and what it imports cost ~8 ms

    path = config_file_path(config_file)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
        print_ = fingerprint(path)
    except (OSError, ValueError):
        return None
    sources = raw.get("sources", {})
    table = raw.get("wal", {})
    if not isinstance(sources, dict) or not isinstance(table, dict):
        return None
    postgres = [n for n, t in sources.items() if isinstance(t, dict) and t.get("kind") == "postgres"]
    if source is None:
        if len(postgres) != 1:
            return None
        source = postgres[0]
    elif source not in postgres:
        return None
    wal = wal_options(table)
    if wal is None:
        return None
    spool_dir = wal["spool_dir"]
    if spool_dir is not None:
        spool_dir = os.path.expanduser(spool_dir)
        if not os.path.isabs(spool_dir):
            spool_dir = os.path.join(os.path.realpath(os.path.dirname(path)), spool_dir)
    return Settings(path, source, wal["async"], spool_for(spool_dir, source), float(wal["timeout"]), wal["prefetch"],
                    print_)


def wal_options(table: dict[str, Any]) -> dict[str, Any] | None:
    """``[wal]``'s options with their defaults, or None when one has a wrong type or is out of its range.

    The full loader (``core.config``) refuses exactly these values (a parity test holds the two to the same
    defaults and ranges), so a value refused here is reported by it, with its key, on the slow path.
    """
    values: dict[str, Any] = {}
    for key, (kind, default, low, high, positive) in WAL_OPTIONS.items():
        if key in table and not _acceptable(kind, table[key], low, high, positive):
            return None
        values[key] = table.get(key, default)
    return values


def _acceptable(kind: type, value: Any, low: float | None, high: float | None, positive: bool) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is str:
        return isinstance(value, str) and bool(value)
    if isinstance(value, bool) or not isinstance(value, int | float if kind is float else int):
        return False
    return not ((positive and value <= 0) or (low is not None and value < low) or (high is not None and value > high))


class SpoolError(Exception):
    """The spool directory cannot be made private to this OS user: work without the resident pusher."""


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
        raise SpoolError(f"cannot create spool directory {root}: {exc.strerror}") from exc
    for directory in (path,) if shared else (root, path):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {directory}: {exc.strerror}") from exc
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise SpoolError(
                f"spool directory {directory} must be a directory owned by uid {os.geteuid()} with mode 0700 "
                "(set [wal] spool_dir, or fix its owner and mode)"
            )
