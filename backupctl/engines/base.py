"""The engine interface: what the services ask of each kind of backup, so that they never switch on a kind.

An engine is one way of backing a source up into the repository: ``sqlite`` (SQLite's online backup API),
``logical`` (pg_dumpall and pg_dump) and ``physical`` (pg_basebackup, full or incremental, restored with
archived WAL). A source kind of the config (``kind = "sqlite"`` or ``"postgres"``) offers one or more
engines (``SourceKind``); ``engines.registry`` maps kinds, backup types and manifests to them. Adding a kind
of backup touches this package (and the config schema), not the services that use it.

The services keep what all engines share: the backup service holds the lease and publishes the manifest
(``BackupRun``), verify reads every object, a drill restores into scratch space and records its checks.
An engine says what differs: how it fills a backup run, which options apply, whether its backups need
archived WAL, which checks its drill runs, which scheduled jobs run it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from backupctl.core.config import SourceConfig
from backupctl.repo.catalog import Manifest
from backupctl.repo.pipeline import StoredObject
from backupctl.repo.repository import Repository


@dataclass(frozen=True)
class BackupOptions:
    """What the command line may add to a backup."""

    export_json: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    databases: tuple[str, ...] = ()


class BackupRun(Protocol):
    """One backup in progress, as the backup service runs it: an id, the objects stored so far, a lease.

    ``cleanup_on_failure`` holds the source's backup lease and removes the run's objects if the block fails;
    ``publish`` writes the manifest (last), which makes the backup exist; ``expect``, inside the block, gives
    the run's progress its total.
    """

    id: str
    objects: list[StoredObject]

    def store(self, name: str, stream: Any, finalize: Any = None) -> StoredObject: ...

    def expect(self, total_bytes: int | None) -> None:
        """The bytes the engine expects to store (before compression), for progress: an estimate is fine."""

    def cleanup_on_failure(self) -> AbstractContextManager[None]: ...

    def publish(self, kind: str, details: dict[str, Any], extra: dict[str, Any], options: BackupOptions,
                parent: str | None = None) -> Manifest: ...


StartRun = Callable[[str], BackupRun]
"""Starts the run of a backup of the given type (the backup service's): called once the engine has checked
what it can before a lease is taken."""


class Engine(ABC):
    """One kind of backup. The class attributes are facts the services read; the methods are its work.

    ``backup_types`` are the manifest types the engine writes (``Manifest.type``), the first its default.
    ``uses_wal``: its backups are restored with archived WAL, so verify reads their WAL range, expire keeps
    the WAL they need, status and drills offer point-in-time targets. ``drill_checks`` are the checks a
    drill of one of its backups runs, in order, before the config's assertions. ``schedule_jobs`` are the
    keys of ``[sources.NAME.schedule]`` that run its backups.
    """

    name: ClassVar[str]
    source_kind: ClassVar[str]
    backup_types: ClassVar[tuple[str, ...]]
    uses_wal: ClassVar[bool] = False
    drill_checks: ClassVar[tuple[str, ...]]
    schedule_jobs: ClassVar[tuple[str, ...]]

    @abstractmethod
    def check_options(self, source: SourceConfig, options: BackupOptions) -> None:
        """Raise a one-line ``ConfigError`` for an option that does not apply to this engine's backups."""

    @abstractmethod
    def backup(self, repo: Repository, source: Any, backup_type: str, options: BackupOptions,
               start: StartRun) -> Manifest:
        """Back ``source`` up as ``backup_type`` (one of ``backup_types``) through the run ``start`` gives,
        and return the published manifest; anything that fails before the run starts leaves no trace.

        ``source`` is the config source of ``source_kind`` (each engine names its own source class)."""

    def dump_archives(self, details: dict[str, Any]) -> dict[str, str]:
        """The objects of a backup (by its opened details) that are pg_dump archives, key -> database: verify
        reads them through ``pg_restore --list`` rather than checksums alone."""
        return {}


@dataclass(frozen=True)
class SourceKind:
    """A source kind of the config (``kind = ...``) and the engines that back it up.

    ``noun`` names a source of the kind in messages ("source db is a SQLite database"). ``engines`` come
    default first: `backup` without --type, and the scheduler's ``backup`` job, use it. ``server``: the
    source is a running server whose files belong to its OS user (restores, drills and WAL run as that
    user) and which reports facts of its own (archiver, pg_wal).
    """

    kind: str
    noun: str
    engines: tuple[Engine, ...]
    server: bool = False

    @property
    def backup_types(self) -> tuple[str, ...]:
        """Every --type the kind takes, default first."""
        return tuple(t for engine in self.engines for t in engine.backup_types)

    @property
    def default_type(self) -> str:
        return self.engines[0].backup_types[0]

    @property
    def archives_wal(self) -> bool:
        """Whether any of the kind's backups are restored with archived WAL (point-in-time recovery)."""
        return any(engine.uses_wal for engine in self.engines)
