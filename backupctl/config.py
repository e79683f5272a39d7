"""The config file: one declared schema, checked whole at load.

The schema is the dataclasses below; ``_build`` walks their type hints, so an unknown key, a wrong type
or a missing value is reported as one line naming the dotted key and the file, before any work starts.
Relative paths in the file are taken relative to the file's own directory, so a config and the data it
names can move together.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backupctl.errors import ConfigError

DEFAULT_CONFIG = "/etc/backupctl/backupctl.toml"
CONFIG_ENV = "BACKUPCTL_CONFIG"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


class Size(int):
    """A byte count, written in the file as an integer or a string such as "16MiB"."""


class ConfigPath(str):
    """A filesystem path; relative ones are resolved against the config file's directory."""


def parse_size(text: str) -> int:
    """Parse "16MiB", "1.5GB", "4096" into bytes; raise ValueError with the accepted forms."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (use e.g. 16MiB, 512KiB, 1GB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class RepositoryConfig:
    """Where backups live: a local directory or an S3 bucket (any S3-compatible store)."""

    type: Literal["local", "s3"] = "local"
    path: ConfigPath | None = None
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    storage_class: str | None = None
    sse: Literal["AES256", "aws:kms", "aws:kms:dsse"] | None = None
    sse_kms_key_id: str | None = None
    profile: str | None = None
    credentials_file: ConfigPath | None = None
    # "when_required" for stores that reject the newer default CRC checksums on uploads.
    request_checksum: Literal["when_supported", "when_required"] = "when_supported"
    response_checksum: Literal["when_supported", "when_required"] = "when_supported"
    verify_tls: bool = True
    part_size: Size = 16 * 1024**2  # type: ignore[assignment]
    upload_jobs: int = 4
    max_attempts: int = 8


@dataclass(frozen=True)
class CompressionConfig:
    """How objects are compressed before they are encrypted."""

    algorithm: Literal["zstd", "lz4", "gzip", "none"] = "zstd"
    level: int | None = None
    threads: int = 0  # zstd worker threads; 0 lets backupctl choose from the CPU count


@dataclass(frozen=True)
class EncryptionConfig:
    """age encryption: recipients (public keys) to write, an identity (private key) only to read."""

    recipients: list[str] = field(default_factory=list)
    identity_file: ConfigPath | None = None


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite database file, backed up with SQLite's online backup API."""

    name: str
    kind: Literal["sqlite"]
    path: ConfigPath
    tmp_dir: ConfigPath | None = None  # where the consistent copy is staged before upload


@dataclass(frozen=True)
class PostgresSource:
    """A PostgreSQL server, reached with libpq-style settings (the PG* environment fills the gaps)."""

    name: str
    kind: Literal["postgres"]
    host: str | None = None  # a hostname, or the directory of the server's Unix socket
    port: int | None = None
    user: str | None = None
    dbname: str = "postgres"  # the database backupctl connects to for server-wide queries
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    passfile: ConfigPath | None = None  # a libpq .pgpass file
    password_file: ConfigPath | None = None  # a file holding only the password (else PGPASSWORD)
    connect_timeout: int = 10
    pgdata: ConfigPath | None = None  # the cluster's data directory (physical backups, restore)
    bindir: ConfigPath | None = None  # PostgreSQL client tools; found automatically when absent
    databases: list[str] = field(default_factory=list)  # logical backups: all connectable ones when empty
    role_passwords: bool = False  # include role password hashes in the globals dump (needs superuser)
    tmp_dir: ConfigPath | None = None  # staging: parallel logical restores, incremental chains
    checkpoint: Literal["fast", "spread"] = "fast"  # physical backups: a spread one can take minutes


SourceConfig = SqliteSource | PostgresSource


def _toml_name(f: dataclasses.Field[Any]) -> str:
    """The key a field has in the file: its name, unless a Python keyword forced another (``async_``)."""
    return f.metadata.get("toml", f.name)


@dataclass(frozen=True)
class WalConfig:
    """[wal]: continuous archiving (wal-push) and fetching during recovery (wal-fetch)."""

    async_: bool = field(default=True, metadata={"toml": "async"})  # hand segments to a resident pusher
    push_jobs: int = 4  # parallel uploads of the resident pusher
    prefetch: int = 8  # segments wal-fetch fetches ahead during recovery (0: none, no resident process)
    spool_dir: ConfigPath | None = None  # the pusher's socket, log and prefetched WAL (default: /tmp)
    timeout: float = 60.0  # seconds: each store request, and how long a silent pusher is trusted
    idle_exit: float = 300.0  # seconds without work after which the resident pusher exits


@dataclass(frozen=True)
class Config:
    """The whole file."""

    file: Path
    repository: RepositoryConfig
    compression: CompressionConfig = CompressionConfig()
    encryption: EncryptionConfig | None = None
    wal: WalConfig = WalConfig()
    sources: dict[str, SourceConfig] = field(default_factory=dict)

    def source(self, name: str) -> SourceConfig:
        """The named source, or a config error that lists the ones that exist."""
        if name not in self.sources:
            known = ", ".join(sorted(self.sources)) or "none"
            raise ConfigError(f"no source {name!r} in {self.file} (configured: {known})")
        return self.sources[name]


_SOURCE_KINDS: dict[str, type] = {"sqlite": SqliteSource, "postgres": PostgresSource}


def config_path(explicit: str | None) -> Path:
    """The file to read: --config, then $BACKUPCTL_CONFIG, then the system default."""
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: Path) -> Config:
    """Read and validate the config file; every problem is a one-line ``ConfigError``."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist (pass --config FILE or set {CONFIG_ENV})"
        ) from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document (tests and the demo build configs in memory)."""
    loader = _Loader(path)
    if "file" in raw:
        raise loader.error("file", f"is not a known setting (allowed: {_allowed(Config)})")
    sources_raw = raw.get("sources", {})
    if not isinstance(sources_raw, dict):
        raise loader.error("sources", "must be a table of [sources.NAME] sections")
    sources: dict[str, SourceConfig] = {}
    for name, table in sources_raw.items():
        key = f"sources.{name}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise loader.error(key, "source names use letters, digits, '_', '.', '-' (at most 64)")
        if not isinstance(table, dict):
            raise loader.error(key, "must be a table")
        if "name" in table:
            raise loader.error(f"{key}.name", "is not a known setting (the section name is the source name)")
        kind = table.get("kind")
        if kind not in _SOURCE_KINDS:
            choices = ", ".join(repr(k) for k in _SOURCE_KINDS)
            raise loader.error(f"{key}.kind", f"must be one of {choices}, not {kind!r}")
        sources[name] = loader.build(_SOURCE_KINDS[kind], {**table, "name": name}, key)
    top = {k: v for k, v in raw.items() if k != "sources"}
    if "repository" not in top:
        raise loader.error("repository", "is required: add a [repository] section")
    config = loader.build(Config, {**top, "file": path}, "")
    config = dataclasses.replace(config, sources=sources)
    _check_repository(config.repository, loader)
    _check_wal(config.wal, loader)
    if config.encryption is not None:
        if not config.encryption.recipients:
            raise loader.error("encryption.recipients", "needs at least one age recipient (age1...)")
        from backupctl.crypto import parse_recipients

        parse_recipients(config.encryption.recipients, f"{path}: encryption.recipients")
    return config


def _check_repository(repo: RepositoryConfig, loader: _Loader) -> None:
    """Rules that span keys: each repository type needs its own location key."""
    if repo.type == "local" and repo.path is None:
        raise loader.error("repository.path", "is required when repository.type is 'local'")
    if repo.type == "s3" and not repo.bucket:
        raise loader.error("repository.bucket", "is required when repository.type is 's3'")
    if repo.part_size < 5 * 1024**2:
        raise loader.error("repository.part_size", "must be at least 5MiB (S3's smallest part)")
    if repo.upload_jobs < 1 or repo.max_attempts < 1:
        raise loader.error("repository", "upload_jobs and max_attempts must be at least 1")


def _check_wal(wal: WalConfig, loader: _Loader) -> None:
    if wal.push_jobs < 1 or wal.push_jobs > 64:
        raise loader.error("wal.push_jobs", "must be between 1 and 64")
    if wal.prefetch < 0 or wal.prefetch > 64:
        raise loader.error("wal.prefetch", "must be between 0 and 64")
    if wal.timeout <= 0 or wal.idle_exit <= 0:
        raise loader.error("wal", "timeout and idle_exit must be positive numbers of seconds")


class _Loader:
    """Turns TOML tables into the frozen dataclasses above, naming the exact key on any mismatch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key} {problem}")

    def build(self, cls: type, table: dict[str, Any], where: str) -> Any:
        hints = typing.get_type_hints(cls)
        names = {_toml_name(f) for f in dataclasses.fields(cls)}
        for key in table:
            if key not in names:
                raise self.error(_join(where, key), f"is not a known setting (allowed: {_allowed(cls)})")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _join(where, _toml_name(f))
            if _toml_name(f) in table:
                values[f.name] = self.convert(hints[f.name], table[_toml_name(f)], key)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise self.error(key, "is required")
        return cls(**values)

    def convert(self, hint: Any, value: Any, key: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            (inner,) = [a for a in args if a is not type(None)]
            return self.convert(inner, value, key)
        if origin is Literal:
            if value not in args:
                raise self.error(key, f"must be one of {', '.join(repr(a) for a in args)}, not {value!r}")
            return value
        if origin is list:
            if not isinstance(value, list):
                raise self.error(key, f"must be a list, not {_kind(value)}")
            return [self.convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise self.error(key, f"must be a table, not {_kind(value)}")
            return self.build(hint, value, key)
        return self.scalar(hint, value, key)

    def scalar(self, hint: Any, value: Any, key: str) -> Any:
        if hint is Path:
            return value
        if hint is Size:
            if isinstance(value, int) and not isinstance(value, bool):
                return Size(value)
            if isinstance(value, str):
                try:
                    return Size(parse_size(value))
                except ValueError as exc:
                    raise self.error(key, str(exc)) from None
            raise self.error(key, f"must be a size such as \"16MiB\", not {_kind(value)}")
        if hint is ConfigPath:
            if not isinstance(value, str) or not value:
                raise self.error(key, f"must be a path string, not {_kind(value)}")
            resolved = Path(value).expanduser()
            if not resolved.is_absolute():
                resolved = self.path.parent.resolve() / resolved
            return ConfigPath(resolved)
        expected = {str: "a string", int: "an integer", bool: "true or false", float: "a number"}[hint]
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise self.error(key, f"must be {expected}, not {_kind(value)}")
        return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _allowed(cls: type) -> str:
    hidden = {"file", "name", "kind"} if cls is not Config else {"file"}
    return ", ".join(_toml_name(f) for f in dataclasses.fields(cls) if f.name not in hidden)


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)
