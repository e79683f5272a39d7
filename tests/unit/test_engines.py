"""The engine registry and interface: every kind's engines answer the interface; unknown kinds fail in one line."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from backupctl.core.config import SOURCE_KINDS, ScheduleConfig, parse_config
from backupctl.core.errors import ConfigError
from backupctl.engines.base import BackupOptions, Engine
from backupctl.engines.registry import (
    BACKUP_TYPES,
    ENGINES,
    KINDS,
    LOGICAL,
    PHYSICAL,
    PHYSICAL_TYPES,
    SQLITE,
    default_type,
    engine_for,
    engine_of,
    source_kind,
)
from backupctl.scheduler.runner import BACKUP_JOBS, job_spec


def _source(kind: str, name: str = "db") -> SimpleNamespace:
    return SimpleNamespace(name=name, kind=kind)


def test_every_config_kind_has_engines() -> None:
    assert set(KINDS) == set(SOURCE_KINDS)
    for name, kind in KINDS.items():
        assert kind.kind == name and kind.engines
        assert all(engine.source_kind == name for engine in kind.engines)


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
def test_each_engine_answers_the_interface(engine: Engine) -> None:
    assert isinstance(engine, Engine)
    assert not inspect.isabstract(type(engine))
    assert engine.name and engine.source_kind in KINDS
    assert engine.backup_types and all(isinstance(t, str) for t in engine.backup_types)
    assert engine.drill_checks and engine.drill_checks[0] in ("plan", "restore")
    assert engine.schedule_jobs
    assert isinstance(engine.uses_wal, bool)
    engine.check_options(_source(engine.source_kind), BackupOptions())  # no option given: nothing to refuse
    assert engine.dump_archives({"databases": {}}) == {}
    assert engine in source_kind(engine.source_kind).engines


def test_each_backup_type_has_one_engine() -> None:
    assert len(BACKUP_TYPES) == len(set(BACKUP_TYPES)) == 4
    assert BACKUP_TYPES == ("full", "incr", "logical", "sqlite")  # the order of status's rows
    assert PHYSICAL_TYPES == ("full", "incr")
    for backup_type in BACKUP_TYPES:
        assert backup_type in engine_of(backup_type).backup_types
    assert (engine_of("sqlite"), engine_of("logical"), engine_of("incr")) == (SQLITE, LOGICAL, PHYSICAL)


def test_defaults_and_facts_of_the_kinds() -> None:
    sqlite, postgres = KINDS["sqlite"], KINDS["postgres"]
    assert (sqlite.default_type, sqlite.archives_wal, sqlite.server) == ("sqlite", False, False)
    assert (postgres.default_type, postgres.archives_wal, postgres.server) == ("logical", True, True)
    assert postgres.backup_types == ("logical", "full", "incr")


def test_engine_for_picks_the_default_and_the_asked_type() -> None:
    assert engine_for(_source("sqlite"), None) == (SQLITE, "sqlite")
    assert engine_for(_source("postgres"), None) == (LOGICAL, "logical")
    assert engine_for(_source("postgres"), "incr") == (PHYSICAL, "incr")


def test_backup_without_type_is_a_physical_full_when_the_source_has_pgdata() -> None:
    sources = {"phys": {"kind": "postgres", "pgdata": "/var/lib/postgresql/15/main"},
               "dumps": {"kind": "postgres", "host": "db.internal"},
               "app": {"kind": "sqlite", "path": "/srv/app.sqlite3"}}
    config = parse_config({"repository": {"type": "local", "path": "/srv/repo"}, "sources": sources},
                          Path("/etc/backupctl/backupctl.toml"))
    phys, dumps, app = (config.source(name) for name in ("phys", "dumps", "app"))
    assert default_type(phys) == ("full", "source phys has pgdata; --type logical for a dump")
    assert engine_for(phys, None) == (PHYSICAL, "full")
    assert default_type(phys, ("app",)) == ("logical", "--database names what to dump")
    assert engine_for(phys, None, ("app",)) == (LOGICAL, "logical")
    assert default_type(dumps) == ("logical", "source dumps has no pgdata")
    assert default_type(app) == ("sqlite", None)  # one type: nothing to choose, nothing said
    assert job_spec(phys, "backup").backup_type == "logical"  # a schedule's jobs name their type: unchanged


def test_a_type_the_kind_does_not_take_is_one_line() -> None:
    with pytest.raises(ConfigError) as sqlite_error:
        engine_for(_source("sqlite", "app"), "full")
    assert str(sqlite_error.value) == ("source app is a SQLite database: --type full does not apply "
                                       "(it takes --type sqlite, the default)")
    with pytest.raises(ConfigError) as pg_error:
        engine_for(_source("postgres", "pg"), "sqlite")
    assert str(pg_error.value) == ("source pg is a PostgreSQL server: --type sqlite does not apply "
                                   "(it takes --type logical, full or incr)")


def test_unknown_kinds_and_types_fail_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^unknown source kind 'mysql' \(kinds: sqlite, postgres\)$"):
        source_kind("mysql")
    with pytest.raises(ConfigError, match=r"^unknown source kind 'mysql'"):
        engine_for(_source("mysql"), None)
    with pytest.raises(ConfigError, match=r"^unknown backup type 'diff' \(types: full, incr, logical, sqlite\)$"):
        engine_of("diff")


def test_options_each_engine_refuses() -> None:
    with pytest.raises(ConfigError, match=r"^--database applies to PostgreSQL logical backups$"):
        SQLITE.check_options(_source("sqlite"), BackupOptions(databases=("x",)))
    with pytest.raises(ConfigError, match=r"^--export-json applies to SQLite backups$"):
        LOGICAL.check_options(_source("postgres"), BackupOptions(export_json=True))
    with pytest.raises(ConfigError, match=r"^--database applies to logical backups"):
        PHYSICAL.check_options(_source("postgres"), BackupOptions(databases=("x",)))
    LOGICAL.check_options(_source("postgres"), BackupOptions(databases=("x",)))
    SQLITE.check_options(_source("sqlite"), BackupOptions(export_json=True))


def test_logical_backups_list_their_dumps() -> None:
    details = {"databases": {"app": {"object": "src/backups/L1/databases/0000.pgdump"}}}
    assert LOGICAL.dump_archives(details) == {"src/backups/L1/databases/0000.pgdump": "app"}


def test_scheduled_jobs_are_the_config_schedules_and_the_scheduler_jobs() -> None:
    fields = {f.name for f in dataclasses.fields(ScheduleConfig)}
    assert all(job in fields for engine in ENGINES for job in engine.schedule_jobs)
    assert BACKUP_JOBS == ("full", "incr", "logical", "backup")


def test_job_spec_asks_the_kind() -> None:
    assert job_spec(_source("sqlite"), "backup").backup_type is None  # one type: no --type in the job
    assert job_spec(_source("postgres"), "backup").backup_type == "logical"
    assert job_spec(_source("postgres"), "incr").backup_type == "incr"
    with pytest.raises(ConfigError) as error:
        job_spec(_source("sqlite", "app"), "full")
    assert str(error.value) == "source app is a SQLite database: its backup job is 'backup', not 'full'"
