"""Which server a physical backup is taken on (``postgres.hosts.choose``), and the config that names standbys."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backupctl.core.config import PostgresSource, parse_config
from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.engines.pg_physical import wait_until_stored
from backupctl.postgres import hosts
from backupctl.postgres.connection import ConnParams

FILE = Path("/etc/backupctl/backupctl.toml")
REPO: dict[str, Any] = {"type": "local", "path": "/srv/repo"}


def source(**table: Any) -> PostgresSource:
    raw = {"repository": REPO, "sources": {"main": {"kind": "postgres", "host": "db1", "port": 5432,
                                                     "user": "backup", **table}}}
    found = parse_config(raw, FILE).source("main")
    assert isinstance(found, PostgresSource)
    return found


TWO = {"standbys": {"replica1": {"host": "db2"}, "replica2": {"host": "db3", "port": 5433}}}


def prober(states: dict[str, hosts.Probe]) -> Any:
    return lambda params: states[params.host]


UP_STREAMING = hosts.Probe(up=True, in_recovery=True, streaming=True, lag_bytes=0, replay_delay=0.0)
UP_ARCHIVE_ONLY = hosts.Probe(up=True, in_recovery=True, streaming=False)
DOWN = hosts.Probe(up=False, error="cannot connect")
PROMOTED = hosts.Probe(up=True)


def test_a_standby_inherits_what_it_leaves_out_from_the_source() -> None:
    config = source(**TWO, backup_from="standby")
    first, second = hosts.standbys(config)
    assert (first.name, first.role, first.params.host, first.params.port, first.params.user) == \
        ("replica1", "standby", "db2", 5432, "backup")
    assert second.params.address() == "db3:5433"
    assert hosts.primary(config).params.address() == "db1:5432"


def test_backup_from_primary_takes_the_primary_without_probing_anyone() -> None:
    config = source(**TWO)

    def no_probe(params: ConnParams) -> hosts.Probe:
        raise AssertionError("backup_from = primary probes no standby")

    chosen = hosts.choose("primary", hosts.primary(config), hosts.standbys(config), no_probe)
    assert chosen.to_json() == {"name": "primary", "role": "primary", "address": "db1:5432"}


def test_backup_from_standby_takes_the_first_standby_up_and_in_recovery() -> None:
    config = source(**TWO, backup_from="standby")
    chosen = hosts.choose("standby", hosts.primary(config), hosts.standbys(config),
                          prober({"db2": DOWN, "db3": UP_ARCHIVE_ONLY}))
    assert chosen.to_json() == {"name": "replica2", "role": "standby", "address": "db3:5433"}


def test_backup_from_standby_with_none_usable_fails_naming_each_standby_and_why() -> None:
    config = source(**TWO, backup_from="standby")
    with pytest.raises(BackupctlError) as failed:
        hosts.choose("standby", hosts.primary(config), hosts.standbys(config),
                     prober({"db2": DOWN, "db3": PROMOTED}), "main")
    message = str(failed.value)
    assert "\n" not in message
    assert "replica1 (db2:5432) down" in message
    assert "replica2 (db3:5433) not in recovery" in message


def test_prefer_standby_wants_a_streaming_standby_and_else_records_why_it_took_the_primary() -> None:
    config = source(**TWO, backup_from="prefer-standby")
    streaming = hosts.choose("prefer-standby", hosts.primary(config), hosts.standbys(config),
                             prober({"db2": UP_ARCHIVE_ONLY, "db3": UP_STREAMING}))
    assert streaming.name == "replica2"
    fallback = hosts.choose("prefer-standby", hosts.primary(config), hosts.standbys(config),
                            prober({"db2": UP_ARCHIVE_ONLY, "db3": DOWN}))
    record = fallback.to_json()
    assert (record["name"], record["role"]) == ("primary", "primary")
    assert "replica1 (db2:5432) not streaming" in record["fallback"]
    assert "replica2 (db3:5433) down" in record["fallback"]


def test_backup_from_a_standby_needs_a_standby_and_a_standby_needs_an_address() -> None:
    with pytest.raises(ConfigError, match="backup_from is 'standby' but the source has no standbys"):
        source(backup_from="standby")
    with pytest.raises(ConfigError, match=r"sources\.main\.standbys\.replica1\.host is required"):
        source(standbys={"replica1": {"user": "x"}})
    with pytest.raises(ConfigError, match=r"sources\.main\.standbys\.replica1\.hots is not a known setting"):
        source(standbys={"replica1": {"hots": "db2"}})
    with pytest.raises(ConfigError, match=r"standby_delay_warning must not exceed"):
        source(check={"standby_delay_warning": "2h", "standby_delay_critical": "1h"})
    assert source(wal_wait_timeout="5s").wal_wait_timeout == 5.0


def test_a_standby_backups_wal_wait_gives_up_after_its_timeout_saying_nobody_archives() -> None:
    """``wait_until_stored`` with a timeout (backups from a standby): a segment that never arrives fails the
    backup with the question an operator must answer, instead of waiting forever."""
    segments = ["000000010000000000000003", "000000010000000000000004"]
    watch: Any = SimpleNamespace(problem=None)
    started = time.monotonic()
    with pytest.raises(BackupctlError) as failed:
        wait_until_stored(segments, lambda wanted: {segments[0]}, lambda: None, watch, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5
    assert str(failed.value).startswith("WAL segment 000000010000000000000004 of this backup not archived after ")
    assert "is archive_command set on the primary, or archive_mode=always on the standby?" in str(failed.value)
    assert wait_until_stored(segments, lambda wanted: set(wanted), lambda: None, watch, timeout=0.5) < 0.5
