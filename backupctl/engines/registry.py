"""Which engine backs up which source, and wrote which backup: the one table of source kinds and engines.

``source_kind`` answers for a config source (or its kind's name), ``engine_for`` for a source and a
requested --type, ``engine_of`` for a stored backup (its manifest's type). Unknown kinds and types fail
with one line naming the known ones.
"""

from __future__ import annotations

from backupctl.core.config import PostgresSource, SourceConfig
from backupctl.core.errors import ConfigError
from backupctl.engines.base import Engine, SourceKind
from backupctl.engines.pg_logical import LogicalEngine
from backupctl.engines.physical import PhysicalEngine
from backupctl.engines.sqlite import SqliteEngine

SQLITE = SqliteEngine()
LOGICAL = LogicalEngine()
PHYSICAL = PhysicalEngine()

KINDS: dict[str, SourceKind] = {
    "sqlite": SourceKind("sqlite", "a SQLite database", (SQLITE,)),
    "postgres": SourceKind("postgres", "a PostgreSQL server", (LOGICAL, PHYSICAL), server=True),
}

# This order is the order of status's rows, check's findings and retention's rules.
ENGINES: tuple[Engine, ...] = (PHYSICAL, LOGICAL, SQLITE)
BACKUP_TYPES: tuple[str, ...] = tuple(t for engine in ENGINES for t in engine.backup_types)
PHYSICAL_TYPES: tuple[str, ...] = tuple(t for engine in ENGINES if engine.uses_wal for t in engine.backup_types)


def source_kind(source: SourceConfig | str) -> SourceKind:
    """The kind of a config source (or of a kind's name)."""
    kind = source if isinstance(source, str) else source.kind
    if kind not in KINDS:
        raise ConfigError(f"unknown source kind {kind!r} (kinds: {', '.join(KINDS)})")
    return KINDS[kind]


def engine_of(backup_type: str) -> Engine:
    """The engine that writes backups of ``backup_type`` (a manifest's type)."""
    for engine in ENGINES:
        if backup_type in engine.backup_types:
            return engine
    raise ConfigError(f"unknown backup type {backup_type!r} (types: {', '.join(BACKUP_TYPES)})")


def default_type(source: SourceConfig, databases: tuple[str, ...] = ()) -> tuple[str, str | None]:
    """The type of ``backup SOURCE`` without --type, and why when the source's kind has a choice (the CLI
    says which it chose).

    A PostgreSQL source with ``pgdata`` is set up for physical backups, and a DBA used to pgBackRest or Barman
    expects their ``backup``: a physical full. Without ``pgdata`` (a server elsewhere, dumps only), or with
    ``--database`` naming what to dump, it is the kind's default (logical; SQLite's only type). Scheduled jobs
    name their type (``full``, ``incr``, ``logical``, SQLite's ``backup``) and are not affected.
    """
    kind = source_kind(source)
    if len(kind.backup_types) == 1:
        return kind.default_type, None
    if isinstance(source, PostgresSource) and source.pgdata and not databases:
        return "full", f"source {source.name} has pgdata; --type logical for a dump"
    why = "--database names what to dump" if databases else f"source {source.name} has no pgdata"
    return kind.default_type, why


def engine_for(source: SourceConfig, backup_type: str | None, databases: tuple[str, ...] = ()) -> tuple[Engine, str]:
    """The engine and type of a backup of ``source`` asked for with ``--type backup_type`` (None: the
    default, ``default_type``); a type the source's kind does not take is a usage error."""
    kind = source_kind(source)
    wanted = backup_type or default_type(source, databases)[0]
    for engine in kind.engines:
        if wanted in engine.backup_types:
            return engine, wanted
    types = kind.backup_types
    takes = f"{types[0]}, the default" if len(types) == 1 else f"{', '.join(types[:-1])} or {types[-1]}"
    raise ConfigError(f"source {source.name} is {kind.noun}: --type {backup_type} does not apply "
                      f"(it takes --type {takes})")
