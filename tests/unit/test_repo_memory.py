"""The repository layer on the in-memory driver: marker, sources, catalog, pins and gc, with the store's answers
lost and its clock moved at will, without a server, a process or a temp directory."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backupctl.core.config import parse_config
from backupctl.core.errors import BackupctlError, StorageError
from backupctl.repo import layout, pins
from backupctl.repo.catalog import Manifest, iso, new_backup_id
from backupctl.repo.repository import Repository, SourceMismatch, init_repository, open_repository
from backupctl.services import gc
from backupctl.storage.memory import MemoryStorage

# The [repository] table is required by the schema; the storage given to init/open replaces it.
CONFIG = parse_config({"repository": {"type": "local", "path": "/nonexistent/repo"},
                       "sources": {"devdb": {"kind": "sqlite", "path": "/nonexistent/dev.sqlite3"}}},
                      Path("/nonexistent/backupctl.toml"))


class Clock:
    """The store's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def repo(clock: Clock) -> Iterator[Repository]:
    made, created = init_repository(CONFIG, MemoryStorage(clock))
    assert created
    made.register_source("devdb", {"kind": "sqlite"})
    yield made
    made.close()


def publish(repo: Repository, data: bytes = b"SQLite format 3\0") -> Manifest:
    """A SQLite backup as a backup run publishes one: data first, the manifest last."""
    backup_id = new_backup_id("sqlite")
    stored = repo.pipeline.store(layout.backup_prefix("devdb", backup_id) + layout.SQLITE_DATABASE, io.BytesIO(data))
    now = iso(datetime.now(UTC))
    manifest = Manifest(backup_id, "devdb", "sqlite", "sqlite", now, now, [stored], None, details={})
    repo.catalog.write(manifest)
    return manifest


def test_init_keeps_the_marker_and_open_reads_it(repo: Repository) -> None:
    time.sleep(0.002)  # a marker written in the same millisecond has the same bytes: ``create`` says it is ours
    again, created = init_repository(CONFIG, repo.storage)
    assert not created and again.meta == repo.meta
    assert open_repository(CONFIG, repo.storage).meta["format"] == "backupctl-repository"
    assert repo.storage.head(layout.MARKER) is not None
    assert list(repo.storage.list(layout.PROBE_PREFIX)) == [], "the conditional-write probe is removed"


def test_a_source_keeps_its_kind(repo: Repository) -> None:
    with pytest.raises(SourceMismatch, match="source 'devdb' in memory://test has kind 'sqlite'"):
        repo.register_source("devdb", {"kind": "postgres"})


def test_published_backups_are_found_and_damaged_manifests_reported(repo: Repository) -> None:
    first, second = publish(repo), publish(repo, b"other")
    repo.storage.put(layout.manifest_key("devdb", new_backup_id("sqlite")), b"not json")
    manifests, damaged = repo.catalog.scan()
    assert {m.id for m in manifests} == {first.id, second.id}
    assert list(damaged.values()) == [f"{next(iter(damaged))} is not valid JSON: the manifest is damaged"]
    assert repo.catalog.find(first.id).objects == first.objects
    with pytest.raises(BackupctlError, match="is not a backup id"):
        repo.catalog.find("latest")


def test_a_manifest_whose_answer_was_lost_is_published(repo: Repository) -> None:
    assert isinstance(repo.storage, MemoryStorage)
    repo.storage.inject("put_if_absent", layout.backups_prefix("devdb"), answer_lost=True)
    manifest = publish(repo)
    assert [m.id for m in repo.catalog.scan()[0]] == [manifest.id]


def test_a_manifest_put_that_fails_publishes_nothing(repo: Repository) -> None:
    assert isinstance(repo.storage, MemoryStorage)
    repo.storage.inject("put_if_absent", layout.backups_prefix("devdb"))  # the read-back finds nothing: not ours
    with pytest.raises(StorageError, match="injected put_if_absent failure"):
        publish(repo)
    assert repo.catalog.scan() == ([], {})


def test_pins_are_listed_until_removed(repo: Repository) -> None:
    manifest = publish(repo)
    pinned = pins.pin(repo, manifest, "before the upgrade")
    assert pins.read_pins(repo.storage, "devdb") == {manifest.id: pinned}
    assert pins.unpin(repo.storage, manifest) and not pins.unpin(repo.storage, manifest)
    assert pins.read_pins(repo.storage, "devdb") == {}


def test_gc_removes_an_unpublished_backup_once_the_store_clock_passes_the_grace(repo: Repository,
                                                                               clock: Clock) -> None:
    published = publish(repo)
    debris = layout.backup_prefix("devdb", new_backup_id("sqlite")) + layout.SQLITE_DATABASE
    repo.storage.put(debris, b"half a backup")
    assert [item.action for item in gc.collect(repo, grace=3600) if item.item == "backup-debris"] == ["keep"]
    clock.now += timedelta(hours=2)
    removed = [item for item in gc.collect(repo, grace=3600) if item.item == "backup-debris"]
    assert [(item.action, item.keys) for item in removed] == [("remove", [debris])]
    assert repo.storage.head(debris) is None
    assert [m.id for m in repo.catalog.scan()[0]] == [published.id]
