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

from backupctl.core.errors import ConfigError

DEFAULT_CONFIG = "/etc/backupctl/backupctl.toml"
CONFIG_ENV = "BACKUPCTL_CONFIG"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


class Size(int):
    """A byte count, written in the file as an integer or a string such as "16MiB"."""


class ConfigPath(str):
    """A filesystem path; relative ones are resolved against the config file's directory."""


class Duration(float):
    """A span of time in seconds, written in the file as a string such as "90s", "15m", "26h", "7d", "2w"."""


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Parse "15m", "26h", "7d", "1d12h" into seconds; raise ValueError with the accepted forms."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    if not parts or re.sub(r"[\d.\s]+[smhdw]", "", text.strip().lower()):
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 15m, 26h, 7d, 2w)")
    return float(sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts))


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
    lease_ttl: Duration = 120.0  # a lease not renewed for this long (its holder died) can be taken over


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
class RetentionConfig:
    """[sources.NAME.retention]: which backups expire keeps; a backup is kept when any rule keeps it.

    Absent rules keep nothing by themselves; the newest backup of each type, pinned backups and the parents
    of retained incrementals are always kept.
    """

    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: Duration | None = None
    recovery_window: Duration | None = None  # PITR to any moment of this span stays possible
    timezone: str = "UTC"  # day/week/month/year boundaries of the keep_* rules


@dataclass(frozen=True)
class CheckConfig:
    """[sources.NAME.check]: thresholds of `backupctl check` (monitoring-plugin exit codes)."""

    # The newest backup of any kind. Unset, it is judged against 26h/50h when the source schedules no backups,
    # and not at all when it does: then each scheduled kind is judged against limits from its schedule.
    backup_age_warning: Duration | None = None
    backup_age_critical: Duration | None = None
    wal_age_warning: Duration = 15 * 60.0  # physical sources with archiving
    wal_age_critical: Duration = 3600.0
    ready_warning: int = 16  # .ready files waiting in pg_wal/archive_status (local servers)
    ready_critical: int = 128
    # How long the oldest .ready file has waited (data directory, else pg_ls_archive_statusdir()): catches an
    # archive_command that cannot run at all, which PostgreSQL does not count as a failure.
    ready_age_warning: Duration = 10 * 60.0
    ready_age_critical: Duration = 3600.0
    pg_wal_warning: Size | None = None  # size of pg_wal (local servers); unchecked when absent
    pg_wal_critical: Size | None = None
    disk_free_warning: float = 10.0  # percent free on the data directory's filesystem (local servers)
    disk_free_critical: float = 5.0
    drill_age_warning: Duration | None = None  # drills are checked when set or when a drill is scheduled
    drill_age_critical: Duration | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    """[sources.NAME.schedule]: cron expressions (minute hour day month weekday) for the scheduler."""

    full: str | None = None  # physical full backup (PostgreSQL)
    incr: str | None = None  # physical incremental (PostgreSQL 17+)
    logical: str | None = None  # pg_dump of every database (PostgreSQL)
    backup: str | None = None  # the source's only kind of backup (SQLite)
    expire: str | None = None
    verify: str | None = None
    drill: str | None = None


@dataclass(frozen=True)
class DrillAssertion:
    """One custom check of a drill: a query that must return true in the restored copy."""

    name: str
    sql: str
    database: str | None = None  # PostgreSQL: the database to run it in (default: the source's dbname)


@dataclass(frozen=True)
class DrillConfig:
    """[sources.NAME.drill]: how restore-and-verify drills run."""

    assertions: list[DrillAssertion] = field(default_factory=list)
    tmp_dir: ConfigPath | None = None  # where the scratch copy is restored (default: the system temp dir)
    timeout: Duration = 3600.0  # the whole drill, restore and WAL replay included
    amcheck: bool = True  # pg_amcheck every database (heap and btree)


@dataclass(frozen=True)
class SqliteSource:
    """A SQLite database file, backed up with SQLite's online backup API."""

    name: str
    kind: Literal["sqlite"]
    path: ConfigPath
    tmp_dir: ConfigPath | None = None  # where the consistent copy is staged before upload
    retention: RetentionConfig = RetentionConfig()
    check: CheckConfig = CheckConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    drill: DrillConfig = DrillConfig()


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
    # Physical backups: each archive is stored in parts of about this many bytes (whole files), which a
    # restore fetches, decompresses and writes in parallel.
    split_size: Size = 256 * 1024**2  # type: ignore[assignment]
    retention: RetentionConfig = RetentionConfig()
    check: CheckConfig = CheckConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    drill: DrillConfig = DrillConfig()


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
class MetricsConfig:
    """[metrics]: Prometheus text exposition after each job, and on /metrics from the scheduler."""

    textfile: ConfigPath | None = None  # e.g. /var/lib/prometheus/node-exporter/backupctl.prom
    listen: str | None = None  # "127.0.0.1:9188": the scheduler serves /metrics there
    refresh: Duration = 300.0  # the scheduler re-reads the repository's state this often between jobs


@dataclass(frozen=True)
class Webhook:
    """[[webhooks]]: a URL that gets a JSON event (source, job, status, error, duration, host) per job."""

    url: str
    on_success: bool = False  # failures are always sent
    timeout: Duration = 10.0


@dataclass(frozen=True)
class SchedulerConfig:
    """[scheduler]: the long-running `backupctl scheduler`."""

    misfire_grace: Duration = 3600.0  # a job that missed its time by more than this is skipped
    coalesce: bool = True  # several missed runs of one job run once
    wal_pusher: bool = True  # run the asynchronous WAL pusher inside the scheduler
    timezone: str | None = None  # of the cron expressions; default: the host's local time, as cron


@dataclass(frozen=True)
class Config:
    """The whole file."""

    file: Path
    repository: RepositoryConfig
    compression: CompressionConfig = CompressionConfig()
    encryption: EncryptionConfig | None = None
    wal: WalConfig = WalConfig()
    metrics: MetricsConfig = MetricsConfig()
    webhooks: list[Webhook] = field(default_factory=list)
    scheduler: SchedulerConfig = SchedulerConfig()
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
    return parse_config(_read(path), path)


# What archive_command and restore_command read: a mistake anywhere else must not stop WAL archiving.
WAL_SECTIONS = ("repository", "compression", "encryption", "wal")
# The tables of a source that only scheduled jobs, check and drills read.
_SOURCE_OPERATIONS = ("retention", "check", "schedule", "drill")


def load_wal_config(path: Path, source: str | None) -> Config:
    """The WAL path's view of the config file (wal-push, wal-fetch, the resident pusher), validated alone.

    Only ``[repository]``, ``[compression]``, ``[encryption]``, ``[wal]`` and the source are read: the named
    one, or every PostgreSQL source when none is named (``wal.select_source`` then wants exactly one), without
    its retention, check, schedule and drill tables. A typo in ``[[webhooks]]``, ``[metrics]``, another source or
    a schedule would otherwise fail every archive_command until pg_wal fills; ``check``, ``pg-settings`` and
    the scheduler load the whole file and report it. The sections left out keep their defaults here.
    """
    raw = _read(path)
    tables = raw.get("sources", {})
    if isinstance(tables, dict):
        picked = {source} & set(tables) or {
            name for name, table in tables.items() if isinstance(table, dict) and table.get("kind") == "postgres"}
        tables = {name: {key: value for key, value in table.items() if key not in _SOURCE_OPERATIONS}
                  if isinstance(table, dict) else table for name, table in tables.items() if name in picked}
    return parse_config({**{key: raw[key] for key in WAL_SECTIONS if key in raw}, "sources": tables}, path)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist (pass --config FILE or set {CONFIG_ENV})"
        ) from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


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
        _check_source(sources[name], loader, key)
    top = {k: v for k, v in raw.items() if k != "sources"}
    if "repository" not in top:
        raise loader.error("repository", "is required: add a [repository] section")
    config = loader.build(Config, {**top, "file": path}, "")
    config = dataclasses.replace(config, sources=sources)
    _check_repository(config.repository, loader)
    _check_wal(config.wal, loader)
    _check_operations(config, loader)
    if config.encryption is not None:
        if not config.encryption.recipients:
            raise loader.error("encryption.recipients", "needs at least one age recipient (age1...)")
        from backupctl.repo.crypto import parse_recipients

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
    if repo.lease_ttl < 2:
        raise loader.error("repository.lease_ttl", "must be at least 2s (holders renew every quarter of it)")


def _check_source(source: SourceConfig, loader: _Loader, key: str) -> None:
    """Rules of the retention, schedule and check tables that a type hint cannot say."""
    retention = source.retention
    if isinstance(source, PostgresSource) and source.split_size < 1024**2:
        raise loader.error(f"{key}.split_size", "must be at least 1MiB")
    for rule in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"):
        if (getattr(retention, rule) or 0) < 0:
            raise loader.error(f"{key}.retention.{rule}", "must be 0 or more")
    for rule in ("keep_within", "recovery_window"):
        if getattr(retention, rule) is not None and getattr(retention, rule) <= 0:
            raise loader.error(f"{key}.retention.{rule}", "must be a positive duration (e.g. 7d)")
    if retention.recovery_window is not None and source.kind != "postgres":
        raise loader.error(f"{key}.retention.recovery_window", "applies to PostgreSQL sources (point-in-time "
                           "recovery); use keep_within for a SQLite source")
    try:
        import zoneinfo

        zoneinfo.ZoneInfo(retention.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise loader.error(f"{key}.retention.timezone",
                           f"{retention.timezone!r} is not a time zone (use e.g. UTC, Europe/Paris)") from None
    for job, expression in dataclasses.asdict(source.schedule).items():
        if expression is not None:
            problem = cron_problem(expression)
            if problem:
                raise loader.error(f"{key}.schedule.{job}", problem)
    wrong_kind = {"sqlite": ("full", "incr", "logical"), "postgres": ("backup",)}[source.kind]
    for job in wrong_kind:
        if getattr(source.schedule, job) is not None:
            raise loader.error(f"{key}.schedule.{job}", f"does not apply to a {source.kind} source")
    check = source.check
    pairs = [("backup_age", check.backup_age_warning, check.backup_age_critical),
             ("wal_age", check.wal_age_warning, check.wal_age_critical),
             ("ready", check.ready_warning, check.ready_critical),
             ("ready_age", check.ready_age_warning, check.ready_age_critical),
             ("pg_wal", check.pg_wal_warning, check.pg_wal_critical),
             ("drill_age", check.drill_age_warning, check.drill_age_critical)]
    for name, warning, critical in pairs:
        if warning is not None and critical is not None and warning > critical:
            raise loader.error(f"{key}.check.{name}_warning", f"must not exceed {name}_critical")
    if check.disk_free_warning < check.disk_free_critical:
        raise loader.error(f"{key}.check.disk_free_warning", "must be at least disk_free_critical (percent free)")
    _check_drill(source, loader, f"{key}.drill")


def _check_drill(source: SourceConfig, loader: _Loader, key: str) -> None:
    """Assertions must be named once each and say something; a SQLite file has no databases to pick."""
    if source.drill.timeout <= 0:
        raise loader.error(f"{key}.timeout", "must be a positive duration (e.g. 1h)")
    seen: set[str] = set()
    for i, assertion in enumerate(source.drill.assertions):
        where = f"{key}.assertions[{i}]"
        if not assertion.name.strip() or assertion.name in seen:
            raise loader.error(f"{where}.name", f"{assertion.name!r} must be a name no other assertion has")
        seen.add(assertion.name)
        if not assertion.sql.strip():
            raise loader.error(f"{where}.sql", "must be a query that returns true, e.g. SELECT count(*) > 0 FROM t")
        if assertion.database is not None and source.kind == "sqlite":
            raise loader.error(f"{where}.database", "does not apply to a SQLite source (its file is the database)")


def cron_problem(expression: str) -> str | None:
    """Why a five-field cron expression is invalid, or None; the scheduler's own parser decides."""
    if len(expression.split()) != 5:
        return f"{expression!r} is not a cron expression (five fields: minute hour day month weekday)"
    from backupctl.core.cron import cron_trigger

    try:
        cron_trigger(expression)
    except ValueError as exc:
        return f"{expression!r} is not a valid cron expression: {exc}"
    return None


def _check_operations(config: Config, loader: _Loader) -> None:
    """[metrics], [[webhooks]] and [scheduler]: mistakes here would only show at 2 a.m., so refuse them now."""
    listen = config.metrics.listen
    if listen is not None:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise loader.error("metrics.listen", f"{listen!r} must be HOST:PORT, e.g. \"127.0.0.1:9188\"")
    if config.metrics.refresh < 10:
        raise loader.error("metrics.refresh", "must be at least 10s")
    for index, hook in enumerate(config.webhooks):
        if not re.match(r"https?://[^/\s]+", hook.url):
            raise loader.error(f"webhooks[{index}].url", f"{hook.url!r} must be an http:// or https:// URL")
        if hook.timeout <= 0:
            raise loader.error(f"webhooks[{index}].timeout", "must be positive")
    if config.scheduler.timezone is not None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(config.scheduler.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise loader.error("scheduler.timezone", f"{config.scheduler.timezone!r} is not a time zone "
                               "(use e.g. UTC, Europe/Paris)") from None


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
        if hint is Duration:
            if not isinstance(value, str):
                raise self.error(key, f"must be a duration such as \"26h\", not {_kind(value)}")
            try:
                return Duration(parse_duration(value))
            except ValueError as exc:
                raise self.error(key, str(exc)) from None
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
