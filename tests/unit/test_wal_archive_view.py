"""The resident pusher's ArchiveView: one folder listing answers "not archived yet" for many pushes (S3: one
PUT and no LIST per segment), is trusted only for that answer, and is listed again once it is too old."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from backupctl.repo import layout
from backupctl.storage.base import ObjectInfo
from backupctl.storage.memory import MemoryStorage
from backupctl.wal.names import parse_wal_name
from backupctl.wal.push import ArchiveView

STREAM = "main"
SHA = "ab" * 32


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.lists: list[str] = []

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self.lists.append(prefix)
        return super().list(prefix)


def _archive(storage: MemoryStorage, name: str) -> None:
    parsed = parse_wal_name(name)
    storage.put(layout.wal_object_prefix(STREAM, parsed.directory, name) + SHA + ".zst", b"x")


def _setup() -> tuple[CountingStorage, Any, ArchiveView, list[float]]:
    storage = CountingStorage()
    now = [100.0]
    return storage, SimpleNamespace(storage=storage), ArchiveView(ttl=5.0, clock=lambda: now[0]), now


def test_one_listing_answers_every_push_of_a_folder() -> None:
    storage, repo, view, _now = _setup()
    _archive(storage, "000000010000000000000010")
    names = [f"0000000100000000000000{n:02X}" for n in range(0x11, 0x11 + 50)]
    assert all(view.absent(repo, STREAM, parse_wal_name(name)) for name in names)
    assert storage.lists == [layout.wal_folder_prefix(STREAM, "0000000100000000")]


def test_a_name_the_view_has_seen_is_looked_up_afresh() -> None:
    storage, repo, view, _now = _setup()
    _archive(storage, "000000010000000000000010")
    assert not view.absent(repo, STREAM, parse_wal_name("000000010000000000000010"))
    name = parse_wal_name("000000010000000000000011")
    assert view.absent(repo, STREAM, name)
    view.stored(STREAM, name)
    assert not view.absent(repo, STREAM, name)
    assert len(storage.lists) == 1


def test_an_old_listing_is_taken_again() -> None:
    storage, repo, view, now = _setup()
    name = parse_wal_name("000000010000000000000011")
    assert view.absent(repo, STREAM, name)
    _archive(storage, name.name)  # another writer, after the listing
    now[0] += 4.0
    assert view.absent(repo, STREAM, name)  # within the ttl the listing still answers
    now[0] += 2.0
    assert not view.absent(repo, STREAM, name)
    assert len(storage.lists) == 2


def test_each_folder_and_stream_has_its_own_listing_and_history_files_none() -> None:
    storage, repo, view, _now = _setup()
    assert view.absent(repo, STREAM, parse_wal_name("0000000100000000000000FF"))
    assert view.absent(repo, STREAM, parse_wal_name("000000010000000100000000"))
    assert view.absent(repo, "main.2", parse_wal_name("000000010000000100000000"))
    assert not view.absent(repo, STREAM, parse_wal_name("00000002.history"))
    assert len(storage.lists) == 3


def test_a_folder_where_another_writers_create_won_is_contended_from_then_on() -> None:
    _storage, _repo, view, _now = _setup()
    name = parse_wal_name("000000010000000000000011")
    assert not view.contended(STREAM, name)
    view.lost(STREAM, name)
    assert view.contended(STREAM, parse_wal_name("000000010000000000000012"))  # the same folder
    assert not view.contended(STREAM, parse_wal_name("000000010000000100000000"))
    assert not view.contended("main.2", name)
