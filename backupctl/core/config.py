"""The config file: one declared schema, checked whole at load.

The schema is the dataclasses below, and each option is declared once, in its field: its type, its default,
its allowed range and a one-line doc (``option()``, whose metadata keys ``core/options.py`` lists). The
generic loader there walks the type hints and that metadata, so an unknown key, a wrong type, a value out of
range or a missing value is reported as one line naming the dotted key and the file, before any work starts;
the checks below are only the rules that span keys. The example config and the README's reference are
checked against this schema (``core/config_docs.py``). Relative paths in the file are taken relative to the
file's own directory, so a config and the data it names can move together.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backupctl.core.age_format import is_age_recipient
from backupctl.core.cron import cron_trigger
from backupctl.core.errors import ConfigError
from backupctl.core.options import FROM_LOADER, ConfigPath, Duration, Loader, Size, allowed, option

DEFAULT_CONFIG = "/etc/backupctl/backupctl.toml"
CONFIG_ENV = "BACKUPCTL_CONFIG"


def cron_problem(expression: str) -> str | None:
    """Why a five-field cron expression is invalid, or None; the scheduler's own parser decides."""
    if len(expression.split()) != 5:
        return f"{expression!r} is not a cron expression (five fields: minute hour day month weekday)"
    try:
        cron_trigger(expression)
    except ValueError as exc:
        return f"{expression!r} is not a valid cron expression: {exc}"
    return None


def timezone_problem(name: str) -> str | None:
    """Why a time zone name is unknown to this host's tz database, or None."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"{name!r} is not a time zone (use e.g. UTC, Europe/Paris)"
    return None


def _listen_problem(listen: str) -> str | None:
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{listen!r} must be HOST:PORT, e.g. \"127.0.0.1:9188\""
    return None


def _url_problem(url: str) -> str | None:
    return None if re.match(r"https?://[^/\s]+", url) else f"{url!r} must be an http:// or https:// URL"


@dataclass(frozen=True)
class RepositoryConfig:
    """[repository]: where backups live, a local directory or an S3 bucket (any S3-compatible store)."""

    type: Literal["local", "s3"] = option("local", doc="a local directory (or NFS...), or an S3 bucket")
    path: ConfigPath | None = option(None, doc="type \"local\": the repository's directory")
    bucket: str | None = option(None, doc="type \"s3\": the bucket")
    prefix: str = option("", doc="a folder inside the bucket; many hosts and sources can share one bucket")
    region: str | None = option(None, doc="the bucket's region")
    endpoint_url: str | None = option(None, doc="an S3-compatible store's URL; leave out for AWS")
    addressing_style: Literal["auto", "path", "virtual"] = option(
        "auto", doc="bucket in the path or the host name; most self-hosted stores want \"path\"")
    storage_class: str | None = option(None, doc="the uploads' storage class, e.g. STANDARD_IA")
    sse: Literal["AES256", "aws:kms", "aws:kms:dsse"] | None = option(None, doc="server-side encryption")
    sse_kms_key_id: str | None = option(None, doc="the KMS key of sse \"aws:kms\"")
    profile: str | None = option(None, doc="a profile of the AWS config files")
    credentials_file: ConfigPath | None = option(
        None, doc="an AWS credentials file (archive_command runs with no AWS_* variables)")
    request_checksum: Literal["when_supported", "when_required"] = option(
        "when_supported", doc="\"when_required\" for stores that reject the newer default CRC checksums on uploads")
    response_checksum: Literal["when_supported", "when_required"] = option(
        "when_supported", doc="whether downloads are checked against the store's checksums when it sends them")
    verify_tls: bool = option(True, doc="check the store's TLS certificate")
    # 8 MiB, the AWS CLI's default too: the part buffers (upload_jobs + 1 of them) are most of an S3 backup's
    # memory, and at 16 MiB its peak RSS passed 200 MB (207-212 MiB against 172 at 8 MiB, 1 GB cluster).
    part_size: Size = option(8 * 1024**2, min=5 * 1024**2, why="S3's smallest part",
                             doc="multipart part size (parts grow for very large objects)")
    upload_jobs: int = option(4, min=1, doc="parallel part uploads per object")
    max_attempts: int = option(8, min=1, doc="tries of each request, with backoff on throttling, 5xx and resets")
    lease_ttl: Duration = option(120.0, min=2, why="holders renew every quarter of it",
                                 doc="a lease not renewed for this long (its holder died) can be taken over")


@dataclass(frozen=True)
class CompressionConfig:
    """[compression]: how objects are compressed before they are encrypted."""

    algorithm: Literal["zstd", "lz4", "gzip", "none"] = option("zstd", doc="the compressor of every object")
    level: int | None = option(
        None, doc="the compressor's level; default per algorithm: zstd 1, lz4 0, gzip 6",
        range_by=("algorithm", {
            # zstd's 20-22 ("ultra") need a window of up to 128 MiB per worker and take minutes per GiB.
            "zstd": (1, 19, "20-22 need far more memory and time, and store little less"),
            "lz4": (0, 16, None), "gzip": (1, 9, None), "none": None}))
    threads: int = option(0, doc="zstd worker threads; 0 lets backupctl choose from the CPU count")


@dataclass(frozen=True)
class EncryptionConfig:
    """[encryption]: encryption with age: recipients (public keys) to write, an identity (private key) to read."""

    recipients: list[str] = option(factory=list, doc="age X25519 public keys (age1...); the repository's list")
    identity_file: ConfigPath | None = option(
        None, doc="the private key: needed only to restore, deep-verify and `show`")


@dataclass(frozen=True)
class RetentionConfig:
    """[sources.NAME.retention]: which backups expire keeps; a backup is kept when any rule keeps it.

    Absent rules keep nothing by themselves; the newest backup of each type, pinned backups and the parents
    of retained incrementals are always kept.
    """

    keep_last: int | None = option(None, min=0, doc="the newest N backups")
    keep_daily: int | None = option(None, min=0, doc="the newest backup of each of the last N days that have one")
    keep_weekly: int | None = option(None, min=0, doc="... of the last N ISO weeks that have one")
    keep_monthly: int | None = option(None, min=0, doc="... of the last N months that have one")
    keep_yearly: int | None = option(None, min=0, doc="... of the last N years that have one")
    keep_within: Duration | None = option(None, positive=True, why="e.g. 7d",
                                          doc="every backup that finished within this span of the newest one")
    recovery_window: Duration | None = option(
        None, positive=True, why="e.g. 7d", doc="PostgreSQL: point-in-time recovery to any moment of this span")
    timezone: str = option("UTC", check=timezone_problem, doc="day/week/month/year boundaries of the keep_* rules")


@dataclass(frozen=True)
class CheckConfig:
    """[sources.NAME.check]: thresholds of `backupctl check` (monitoring-plugin exit codes)."""

    # The newest backup of any kind. Unset, it is judged against 26h/50h when the source schedules no backups,
    # and not at all when it does: then each scheduled kind is judged against limits from its schedule.
    backup_age_warning: Duration | None = option(
        None, doc="age of the newest backup of any kind; unset: 26h with no backup scheduled, else unchecked")
    backup_age_critical: Duration | None = option(None, doc="unset: 50h with no backup scheduled, else unchecked")
    wal_age_warning: Duration = option(15 * 60.0, doc="age of the newest archived segment (archiving sources)")
    wal_age_critical: Duration = option(3600.0, doc="as wal_age_warning")
    ready_warning: int = option(16, doc=".ready files waiting in pg_wal/archive_status (local servers)")
    ready_critical: int = option(128, doc="as ready_warning")
    # How long the oldest .ready file has waited (data directory, else pg_ls_archive_statusdir()): catches an
    # archive_command that cannot run at all, which PostgreSQL does not count as a failure.
    ready_age_warning: Duration = option(
        10 * 60.0, doc="how long the oldest .ready file has waited: also an archive_command that cannot run")
    ready_age_critical: Duration = option(3600.0, doc="as ready_age_warning")
    pg_wal_warning: Size | None = option(None, doc="size of pg_wal (local servers); unchecked when unset")
    pg_wal_critical: Size | None = option(None, doc="as pg_wal_warning")
    disk_free_warning: float = option(10.0, doc="percent free on the data directory's filesystem (local servers)")
    disk_free_critical: float = option(5.0, doc="as disk_free_warning")
    drill_age_warning: Duration | None = option(
        None, doc="age of the newest drill; unset: one period and a day of a drill schedule, else unchecked")
    drill_age_critical: Duration | None = option(None, doc="unset: two periods and a day of a drill schedule")
    standby_delay_warning: Duration = option(
        5 * 60.0, doc="replay delay of the standby backups come from (backup_from standby or prefer-standby)")
    standby_delay_critical: Duration = option(3600.0, doc="as standby_delay_warning")


@dataclass(frozen=True)
class ScheduleConfig:
    """[sources.NAME.schedule]: cron expressions (minute hour day month weekday) for the scheduler."""

    full: str | None = option(None, check=cron_problem, doc="physical full backup (PostgreSQL)")
    incr: str | None = option(None, check=cron_problem, doc="physical incremental (PostgreSQL 17+)")
    logical: str | None = option(None, check=cron_problem, doc="pg_dump of every database (PostgreSQL)")
    backup: str | None = option(None, check=cron_problem, doc="the source's only kind of backup (SQLite)")
    expire: str | None = option(None, check=cron_problem, doc="`backupctl expire`: retention, then WAL")
    verify: str | None = option(None, check=cron_problem, doc="`backupctl verify --latest`")
    drill: str | None = option(None, check=cron_problem, doc="`backupctl drill run`: a restore-and-verify drill")


@dataclass(frozen=True)
class DrillAssertion:
    """[[sources.NAME.drill.assertions]]: a query that must return true in a drill's restored copy."""

    name: str = option(doc="the check's name in the drill's report; unique in the source")
    sql: str = option(doc="a query returning true, run read-only")
    database: str | None = option(None, doc="PostgreSQL: the database to run it in (default: the source's dbname)")


@dataclass(frozen=True)
class DrillConfig:
    """[sources.NAME.drill]: how restore-and-verify drills run."""

    assertions: list[DrillAssertion] = field(default_factory=list)
    tmp_dir: ConfigPath | None = option(
        None, doc="where the scratch copy is restored (default: the source's tmp_dir, else the system's)")
    timeout: Duration = option(3600.0, positive=True, why="e.g. 1h",
                               doc="server start and recovery, and each assertion, must end within this")
    amcheck: bool = option(True, doc="pg_amcheck every database (heap and btree)")


@dataclass(frozen=True)
class StandbyConfig:
    """[sources.NAME.standbys.HOSTNAME]: a streaming standby of the source that backups may come from.

    The source's own connection settings stay the primary's; a key left out here is the source's.
    """

    host: str | None = option(None, doc="the standby's hostname, or the directory of its Unix socket")
    port: int | None = option(None, doc="the standby's port (default: the source's)")
    user: str | None = option(None, doc="the role backupctl connects as (default: the source's)")
    dbname: str | None = option(None, doc="the database for server-wide queries (default: the source's)")
    pgdata: ConfigPath | None = option(
        None, doc="the standby's data directory, only where backupctl runs on the standby's host (direct copy)")


@dataclass(frozen=True)
class SqliteSource:
    """[sources.NAME] with kind = "sqlite": a database file, backed up with SQLite's online backup API."""

    name: str = field(metadata=FROM_LOADER)
    kind: Literal["sqlite"] = option(doc="the kind of source")
    path: ConfigPath = option(doc="the database file")
    tmp_dir: ConfigPath | None = option(None, doc="where the consistent copy is staged before upload")
    retention: RetentionConfig = RetentionConfig()
    check: CheckConfig = CheckConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    drill: DrillConfig = DrillConfig()


@dataclass(frozen=True)
class PostgresSource:
    """[sources.NAME] with kind = "postgres": a server, reached with libpq-style settings (PG* fill the gaps)."""

    name: str = field(metadata=FROM_LOADER)
    kind: Literal["postgres"] = option(doc="the kind of source")
    host: str | None = option(None, doc="a hostname, or the directory of the server's Unix socket")
    port: int | None = option(None, doc="the server's port")
    user: str | None = option(None, doc="the role backupctl connects as")
    dbname: str = option("postgres", doc="the database backupctl connects to for server-wide queries")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = option(
        None, doc="libpq's sslmode")
    passfile: ConfigPath | None = option(None, doc="a libpq .pgpass file")
    password_file: ConfigPath | None = option(None, doc="a file holding only the password (else PGPASSWORD)")
    connect_timeout: int = option(10, doc="seconds to wait for a connection")
    pgdata: ConfigPath | None = option(None, doc="the cluster's data directory (physical backups, restore)")
    bindir: ConfigPath | None = option(None, doc="PostgreSQL client tools; found automatically when unset")
    databases: list[str] = option(factory=list, doc="logical backups: all connectable databases when empty")
    role_passwords: bool = option(False, doc="include role password hashes in the globals dump (needs superuser)")
    tmp_dir: ConfigPath | None = option(None, doc="staging: parallel logical restores, incremental chains")
    checkpoint: Literal["fast", "spread"] = option("fast", doc="physical backups: a spread one can take minutes")
    copy: Literal["auto", "pg_basebackup"] = option(
        "auto", doc="full physical backups: auto reads pgdata directly when it is the server's, on this host "
                    "(else pg_basebackup)")
    # Physical backups: each archive is stored in parts of about this many bytes (whole files), which a
    # restore fetches, decompresses and writes in parallel.
    split_size: Size = option(256 * 1024**2, min=1024**2,
                              doc="physical backups: a stored tar part about every this many bytes (whole files)")
    backup_from: Literal["primary", "standby", "prefer-standby"] = option(
        "primary", doc="physical backups: the server they are taken on (standbys: [sources.NAME.standbys.HOSTNAME])")
    wal_wait_timeout: Duration = option(
        300.0, positive=True, why="e.g. 5m",
        doc="a backup from a standby fails when its last WAL segment is not archived within this")
    standbys: dict[str, StandbyConfig] = field(default_factory=dict)
    retention: RetentionConfig = RetentionConfig()
    check: CheckConfig = CheckConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    drill: DrillConfig = DrillConfig()


SourceConfig = SqliteSource | PostgresSource


@dataclass(frozen=True)
class WalConfig:
    """[wal]: continuous archiving (wal-push) and fetching during recovery (wal-fetch).

    The WAL fast path (``backupctl.walpusher``) reads this table with tomllib alone; a parity test holds its
    reader to these names, defaults and ranges.
    """

    async_: bool = option(True, toml="async", doc="wal-push hands segments to a resident pusher (one per source)")
    push_jobs: int = option(4, min=1, max=64, doc="parallel uploads of the resident pusher")
    prefetch: int = option(8, min=0, max=64,
                           doc="segments wal-fetch fetches ahead during recovery (0: none, no resident process)")
    spool_dir: ConfigPath | None = option(
        None, doc="the pusher's socket, log and prefetched WAL (default: /tmp/backupctl-UID/SOURCE)")
    timeout: float = option(60.0, positive=True,
                            doc="seconds: each store request, and how long a silent pusher is trusted")
    idle_exit: float = option(300.0, positive=True, doc="seconds without work after which the resident pusher exits")


@dataclass(frozen=True)
class MetricsConfig:
    """[metrics]: Prometheus text exposition after each job, and on /metrics from the scheduler."""

    textfile: ConfigPath | None = option(None, doc="a file for node-exporter's textfile collector")
    listen: str | None = option(None, check=_listen_problem, doc="HOST:PORT where the scheduler serves /metrics")
    refresh: Duration = option(300.0, min=10, doc="the scheduler re-reads the repository's state this often")


@dataclass(frozen=True)
class Webhook:
    """[[webhooks]]: a URL that gets a JSON event (source, job, status, error, duration, host) per job."""

    url: str = option(check=_url_problem, doc="an http:// or https:// URL")
    on_success: bool = option(False, doc="send successes too (failures are always sent)")
    timeout: Duration = option(10.0, positive=True, doc="of each request; a webhook never fails the job")


@dataclass(frozen=True)
class SchedulerConfig:
    """[scheduler]: the long-running `backupctl scheduler`."""

    misfire_grace: Duration = option(3600.0, doc="a job that missed its time by more than this is skipped")
    coalesce: bool = option(True, doc="several missed runs of one job run once")
    wal_pusher: bool = option(True, doc="run the resident WAL pusher of each local PostgreSQL source")
    timezone: str | None = option(None, check=timezone_problem,
                                  doc="of the cron expressions; default: the host's local time, as cron")


@dataclass(frozen=True)
class Config:
    """The whole file."""

    file: Path = field(metadata=FROM_LOADER)
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


SOURCE_KINDS: dict[str, type] = {"sqlite": SqliteSource, "postgres": PostgresSource}


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
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file {path} does not exist (pass --config FILE or set {CONFIG_ENV})"
        ) from exc
    except PermissionError as exc:
        raise ConfigError(f"config file {path} is not readable by this user") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {path} is a directory: pass the file in it, e.g. --config "
                          f"{path / 'backupctl.toml'}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x})"
                          ": pass the TOML config file, not a binary or another encoding") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def parse_config(raw: dict[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document (tests and the demo build configs in memory)."""
    loader = Loader(path)
    if "file" in raw:
        raise loader.error("file", f"is not a known setting (allowed: {allowed(Config)})")
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
        if kind not in SOURCE_KINDS:
            choices = ", ".join(repr(k) for k in SOURCE_KINDS)
            raise loader.error(f"{key}.kind", f"must be one of {choices}, not {kind!r}")
        sources[name] = loader.build(SOURCE_KINDS[kind], {**table, "name": name}, key)
        _check_source(sources[name], loader, key)
    top = {k: v for k, v in raw.items() if k != "sources"}
    if "repository" not in top:
        raise loader.error("repository", "is required: add a [repository] section")
    config = loader.build(Config, {**top, "file": path}, "")
    config = dataclasses.replace(config, sources=sources)
    _check_repository(config.repository, loader)
    if config.encryption is not None:
        _check_encryption(config.encryption, loader)
    return config


def _check_repository(repo: RepositoryConfig, loader: Loader) -> None:
    """Each repository type needs its own location key."""
    if repo.type == "local" and repo.path is None:
        raise loader.error("repository.path", "is required when repository.type is 'local'")
    if repo.type == "s3" and not repo.bucket:
        raise loader.error("repository.bucket", "is required when repository.type is 's3'")


def _check_encryption(encryption: EncryptionConfig, loader: Loader) -> None:
    """At least one recipient, each one well formed, so that a typo fails before any data moves."""
    if not encryption.recipients:
        raise loader.error("encryption.recipients", "needs at least one age recipient (age1...)")
    for text in encryption.recipients:
        if not is_age_recipient(text):
            raise ConfigError(f"{loader.path}: encryption.recipients: {text!r} is not an age X25519 recipient "
                              "(age1...)")


def _check_source(source: SourceConfig, loader: Loader, key: str) -> None:
    """The rules of a source's tables that span keys: what applies to which kind, warning below critical."""
    if source.retention.recovery_window is not None and source.kind != "postgres":
        raise loader.error(f"{key}.retention.recovery_window", "applies to PostgreSQL sources (point-in-time "
                           "recovery); use keep_within for a SQLite source")
    wrong_kind = {"sqlite": ("full", "incr", "logical"), "postgres": ("backup",)}[source.kind]
    for job in wrong_kind:
        if getattr(source.schedule, job) is not None:
            raise loader.error(f"{key}.schedule.{job}", f"does not apply to a {source.kind} source")
    _check_thresholds(source.check, loader, f"{key}.check")
    if isinstance(source, PostgresSource):
        _check_standbys(source, loader, key)
    _check_drill(source, loader, f"{key}.drill")


def _check_thresholds(check: CheckConfig, loader: Loader, key: str) -> None:
    """Each warning comes before its critical (for free disk space: above it)."""
    pairs = [("backup_age", check.backup_age_warning, check.backup_age_critical),
             ("wal_age", check.wal_age_warning, check.wal_age_critical),
             ("ready", check.ready_warning, check.ready_critical),
             ("ready_age", check.ready_age_warning, check.ready_age_critical),
             ("pg_wal", check.pg_wal_warning, check.pg_wal_critical),
             ("drill_age", check.drill_age_warning, check.drill_age_critical),
             ("standby_delay", check.standby_delay_warning, check.standby_delay_critical)]
    for name, warning, critical in pairs:
        if warning is not None and critical is not None and warning > critical:
            raise loader.error(f"{key}.{name}_warning", f"must not exceed {name}_critical")
    if check.disk_free_warning < check.disk_free_critical:
        raise loader.error(f"{key}.disk_free_warning", "must be at least disk_free_critical (percent free)")


def _check_standbys(source: PostgresSource, loader: Loader, key: str) -> None:
    """A standby needs an address, and backups from a standby need a standby to come from."""
    for name, standby in source.standbys.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise loader.error(f"{key}.standbys.{name}",
                               "standby names use letters, digits, '_', '.', '-' (at most 64)")
        if standby.host is None and standby.port is None:
            raise loader.error(f"{key}.standbys.{name}.host", "is required (with port, or port alone for the "
                               "source's host): the standby needs an address of its own")
    if source.backup_from != "primary" and not source.standbys:
        raise loader.error(f"{key}.backup_from", f"is {source.backup_from!r} but the source has no standbys: add a "
                           f"[{key}.standbys.HOSTNAME] table with the standby's host and port")


def _check_drill(source: SourceConfig, loader: Loader, key: str) -> None:
    """Assertions must be named once each and say something; a SQLite file has no databases to pick."""
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
