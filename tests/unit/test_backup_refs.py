"""Every form a command accepts for a backup (full id, unique prefix, latest, oldest, SOURCE:latest) resolves
in one place, ``Catalog.resolve``; whatever does not name exactly one backup is one usage error naming a few
candidates."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupctl.core.config import parse_config
from backupctl.core.errors import EXIT_USAGE, ConfigError
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest
from backupctl.repo.repository import Repository, init_repository
from backupctl.storage.memory import MemoryStorage

CONFIG = parse_config({"repository": {"type": "local", "path": "/nonexistent/repo"},
                       "sources": {"devdb": {"kind": "sqlite", "path": "/nonexistent/dev.sqlite3"},
                                   "shop": {"kind": "sqlite", "path": "/nonexistent/shop.sqlite3"}}},
                      Path("/nonexistent/backupctl.toml"))
# Finished in this order; the third started first (ids sort by start time, `latest` goes by finish time).
DEVDB = ["20261205T140000000Z-S-aaa", "20261205T150000000Z-S-bbb", "20261205T130000000Z-S-ccc"]
SHOP = "20261206T090000000Z-S-ddd"


def publish(repo: Repository, source: str, backup_id: str, finished_at: str) -> Manifest:
    stored = repo.pipeline.store(layout.backup_prefix(source, backup_id) + layout.SQLITE_DATABASE,
                                 io.BytesIO(b"SQLite format 3\0"))
    manifest = Manifest(backup_id, source, "sqlite", "sqlite", finished_at, finished_at, [stored], None, details={})
    repo.catalog.write(manifest)
    return manifest


@pytest.fixture
def repo() -> Iterator[Repository]:
    made, _created = init_repository(CONFIG, MemoryStorage())
    for name in ("devdb", "shop"):
        made.register_source(name, {"kind": "sqlite"})
    for hour, backup_id in zip((14, 15, 16), DEVDB, strict=True):
        publish(made, "devdb", backup_id, f"2026-12-05T{hour}:30:00.000Z")
    yield made
    made.close()


def error_of(repo: Repository, ref: str, source: str | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        repo.catalog.resolve(ref, source)
    assert caught.value.exit_code == EXIT_USAGE and "\n" not in str(caught.value)
    return str(caught.value)


def test_a_full_id_and_a_unique_prefix_in_any_case_name_the_backup(repo: Repository) -> None:
    assert repo.catalog.resolve(DEVDB[1]).id == DEVDB[1]
    assert repo.catalog.resolve("20261205T15").id == DEVDB[1]
    assert repo.catalog.resolve("20261205t13").id == DEVDB[2]
    assert repo.catalog.resolve(DEVDB[0][:-1] + "A").id == DEVDB[0]


def test_latest_and_oldest_go_by_finish_time_within_one_source(repo: Repository) -> None:
    assert repo.catalog.resolve("latest").id == DEVDB[2]
    assert repo.catalog.resolve("OLDEST").id == DEVDB[0]
    assert repo.catalog.resolve("devdb:latest").id == DEVDB[2]
    assert repo.catalog.resolve("latest", "devdb").id == DEVDB[2]


def test_an_ambiguous_prefix_names_a_few_candidates(repo: Repository) -> None:
    for hour in range(17, 21):
        publish(repo, "devdb", f"20261205T{hour}0000000Z-S-xyz", f"2026-12-05T{hour}:30:00.000Z")
    message = error_of(repo, "20261205")
    assert message.startswith("'20261205' matches 7 backups: 20261205T200000000Z-S-xyz, ")
    assert message.endswith(" and 3 more; give more of the id")


def test_unknown_ids_and_non_ids_are_usage_errors(repo: Repository) -> None:
    assert "no backup has an id starting with '2025'" in error_of(repo, "2025")
    assert "no backup 20261125T021500123Z-S-k3x in the repository" in error_of(repo, "20261125T021500123Z-S-k3x")
    for nonsense in ("nonsense", "", "20261205X", "-S-aaa", DEVDB[0] + "x"):
        assert "is not a backup id" in error_of(repo, nonsense)


def test_latest_of_a_repository_with_several_sources_asks_which(repo: Repository) -> None:
    publish(repo, "shop", SHOP, "2026-12-06T09:30:00.000Z")
    assert error_of(repo, "latest") == ("'latest' is ambiguous: the repository holds backups of devdb, shop; "
                                        "say devdb:latest")
    assert repo.catalog.resolve("shop:latest").id == SHOP
    assert repo.catalog.resolve("20261206").id == SHOP  # prefixes are looked up across the whole repository


def test_a_source_narrows_every_form(repo: Repository) -> None:
    publish(repo, "shop", SHOP, "2026-12-06T09:30:00.000Z")
    publish(repo, "shop", "20261205T150000000Z-S-eee", "2026-12-06T10:30:00.000Z")
    assert "'20261205T15' matches 2 backups: " in error_of(repo, "20261205T15")
    assert repo.catalog.resolve("20261205T15", "devdb").id == DEVDB[1]
    assert "belongs to source shop, not devdb" in error_of(repo, SHOP, "devdb")
    assert "no backup of source devdb has an id starting with '20261206'" in error_of(repo, "20261206", "devdb")
    assert "names source shop, but this command is about source devdb" in error_of(repo, "shop:latest", "devdb")


def test_an_empty_source_has_no_latest(repo: Repository) -> None:
    assert "source shop has no backup yet: there is no latest" in error_of(repo, "shop:latest")
