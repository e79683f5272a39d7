"""The in-memory driver's own tools: faults at one key, a store clock of its own, a record of requests.
(Its contract is proven by the storage conformance suite, tests/integration/test_storage.py.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from backupctl.core.errors import ObjectNotFound, StorageError
from backupctl.repo import lease
from backupctl.storage.memory import MemoryStorage


def test_a_fault_before_the_store_acts_leaves_nothing() -> None:
    storage = MemoryStorage()
    storage.inject("write", "src/backups/")
    with pytest.raises(StorageError, match="injected write failure at src/backups/ in memory://test"):
        storage.put("src/backups/b1/data", b"x")
    assert storage.head("src/backups/b1/data") is None
    storage.put("src/backups/b1/data", b"x")  # armed once: the next write goes through
    assert storage.get_bytes("src/backups/b1/data") == b"x"


def test_a_lost_answer_after_the_store_acted_is_still_ours_for_create() -> None:
    storage = MemoryStorage()
    storage.inject("put_if_absent", "src/locks/backup.", answer_lost=True, times=2)
    with pytest.raises(StorageError):
        storage.put_if_absent("src/locks/backup.000000000001.json", b"mine")
    assert storage.get_bytes("src/locks/backup.000000000001.json") == b"mine"
    # ``create`` reads back what a lost answer may have stored: our bytes, so the lease is ours.
    assert storage.create("src/locks/backup.000000000002.json", b"mine") is True
    assert storage.create("src/locks/backup.000000000002.json", b"theirs") is False


def test_a_delay_holds_the_operation() -> None:
    storage = MemoryStorage()
    storage.put("a", b"1")
    storage.inject("get", "a", delay=0.2)
    started = time.monotonic()
    assert storage.get_bytes("a") == b"1"
    assert time.monotonic() - started >= 0.2


def test_faults_match_their_operation_and_key_only() -> None:
    storage = MemoryStorage()
    storage.inject("delete", "keep/", error=ObjectNotFound("boom"))
    storage.put("other", b"x")
    storage.delete(["other"])
    with pytest.raises(ObjectNotFound, match="boom"):
        storage.delete(["keep/me"])
    with pytest.raises(ValueError, match="unknown operation 'put'"):
        storage.inject("put")


def test_requests_are_recorded() -> None:
    storage = MemoryStorage()
    storage.put("src/backups/b1/manifest.json", b"{}")
    list(storage.list("src/backups/"))
    storage.head("src/backups/b1/manifest.json")
    assert storage.requests == [("write", "src/backups/b1/manifest.json"), ("list", "src/backups/"),
                                ("head", "src/backups/b1/manifest.json")]


def test_the_store_clock_decides_when_a_lease_expires() -> None:
    """A lease is judged by the store's clock, not the host's: moving the store's clock is enough."""
    now = datetime.now(UTC)
    storage = MemoryStorage(clock=lambda: now)
    dead = lease._take_exclusive(storage, "main", "backup", lease._body("killed job", 60), 60)
    assert lease.live_exclusive(storage, "main", "backup") is not None
    now += timedelta(seconds=61)
    assert lease.live_exclusive(storage, "main", "backup") is None
    assert lease.store_now(storage, "main") == now
    with lease.exclusive(storage, "main", "backup", operation="next") as taker:
        assert taker.generation == dead.generation + 1
