"""Leases on every driver: one holder at a time, takeover after expiry, readers listed, no double winners."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from backupctl.core.errors import StorageError
from backupctl.repo import lease
from tests.support.backends import Backend
from tests.support.cli import run_cli
from tests.support.config import make_config


def _dead_holder(storage, source: str | None, name: str, ttl: float) -> lease.ExclusiveLease:
    """A lease taken and never renewed or released: what a SIGKILLed process leaves behind."""
    return lease._take_exclusive(storage, source, name, lease._body("killed job", ttl), ttl)


def test_one_holder_at_a_time_and_release_frees(store_backend: Backend) -> None:
    storage = store_backend.storage()
    with lease.exclusive(storage, "main", "backup", operation="full backup", details={"backup_id": "x"}):
        with pytest.raises(lease.LeaseHeld, match=r"main backup is locked by .+ pid \d+ \(full backup\) since"):
            lease.exclusive(storage, "main", "backup", operation="second").__enter__()
        holder = lease.live_exclusive(storage, "main", "backup")
        assert holder is not None and holder.details == {"backup_id": "x"}
        # Another name or another source is another lease.
        with lease.exclusive(storage, "main", "expire", operation="expire"), \
                lease.exclusive(storage, "other", "backup", operation="backup"):
            pass
    assert lease.live_exclusive(storage, "main", "backup") is None
    with lease.exclusive(storage, "main", "backup", operation="again") as again:
        assert again.generation == 2
    keys = [info.key for info in storage.list("main/locks/backup.")]
    assert keys == ["main/locks/backup.000000000002.json"], "older generations are cleaned up"


def test_expired_lease_is_taken_over_and_the_old_holder_learns_it(store_backend: Backend) -> None:
    storage = store_backend.storage()
    dead = _dead_holder(storage, None, "gc", ttl=2)
    with pytest.raises(lease.LeaseHeld, match="gc is locked by"):
        lease.exclusive(storage, None, "gc", operation="gc", ttl=2).__enter__()
    time.sleep(3.2)  # S3's Last-Modified has whole seconds
    assert lease.live_exclusive(storage, None, "gc") is None
    with lease.exclusive(storage, None, "gc", operation="gc", ttl=2) as taker:
        assert taker.generation == dead.generation + 1
        with pytest.raises(lease.LeaseLost, match="taken over by"):
            dead.ensure_held()
        taker.ensure_held()


def test_renewal_keeps_a_lease_alive_past_its_ttl(local_backend: Backend) -> None:
    storage = local_backend.storage()
    with lease.exclusive(storage, "main", "backup", operation="long backup", ttl=2) as held:
        time.sleep(3)
        with pytest.raises(lease.LeaseHeld):
            lease.exclusive(storage, "main", "backup", operation="second", ttl=2).__enter__()
        held.ensure_held()


def test_racing_takers_of_an_expired_lease_have_one_winner(store_backend: Backend) -> None:
    storage = store_backend.storage()
    _dead_holder(storage, "main", "backup", ttl=2)
    time.sleep(3.2)
    winners: list[lease.ExclusiveLease] = []
    losers: list[str] = []
    start = threading.Barrier(6)

    def take() -> None:
        start.wait()
        try:
            winners.append(lease._take_exclusive(storage, "main", "backup", lease._body("racer", 60), 60))
        except lease.LeaseHeld as exc:
            losers.append(str(exc))

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1, losers
    assert len(losers) == 5


def test_a_stale_taker_that_recreates_a_cleaned_generation_backs_off(local_backend: Backend) -> None:
    storage = local_backend.storage()
    with lease.exclusive(storage, "main", "backup", operation="first"):
        pass
    with lease.exclusive(storage, "main", "backup", operation="second"):
        # A taker working from a listing made before generation 2 existed recreates generation 1.
        stale = lease.ExclusiveLease(storage, "main/locks/backup.", 1, lease._body("stale", 60), 60)
        assert storage.put_if_absent(stale.key, b'{"host": "h", "pid": 1, "operation": "stale",'
                                                b' "started_at": "2026-01-01T00:00:00+00:00", "ttl": 60}')
        with pytest.raises(lease.LeaseLost):
            stale.ensure_held()
        # The recreated generation is debris that gc collects; the live one is not.
        assert [info.key for info in lease.superseded(storage, "main")] == [stale.key]
    storage.put("main/locks/expire.000000000007.json", b"{}")  # a lone generation supersedes nothing
    storage.put("locks/gc.000000000001.json", b"{}")
    storage.put("locks/gc.000000000002.json", b"{}")
    assert [info.key for info in lease.superseded(storage, None)] == ["locks/gc.000000000001.json"]


def test_readers_are_listed_until_they_finish(store_backend: Backend) -> None:
    storage = store_backend.storage()
    assert lease.live_readers(storage, "main") == []
    with lease.shared(storage, "main", operation="restore", backups=["b1", "b2"]), \
            lease.shared(storage, "main", operation="verify", backups=["b3"]):
        readers = lease.live_readers(storage, "main")
        assert sorted(r.operation for r in readers) == ["restore", "verify"]
        assert sorted(b for r in readers for b in r.backups) == ["b1", "b2", "b3"]
        # Readers never block the exclusive leases.
        with lease.exclusive(storage, "main", "expire", operation="expire"):
            pass
    assert lease.live_readers(storage, "main") == []


def test_an_expired_reader_no_longer_protects(local_backend: Backend) -> None:
    storage = local_backend.storage()
    storage.put("main/locks/readers/gone.json", b'{"host": "h", "pid": 1, "operation": "drill",'
                                                b' "started_at": "2026-01-01T00:00:00+00:00", "ttl": 2,'
                                                b' "backups": ["b1"]}')
    assert [r.backups for r in lease.live_readers(storage, "main")] == [["b1"]]
    time.sleep(2.5)
    assert lease.live_readers(storage, "main") == []


def test_a_foreign_object_in_the_locks_folder_is_named(local_backend: Backend) -> None:
    storage = local_backend.storage()
    storage.put("main/locks/backup.000000000001.json", b"not json")
    with pytest.raises(StorageError, match=r"main/locks/backup.000000000001.json is not a backupctl lease"):
        lease.live_exclusive(storage, "main", "backup")


def test_backup_cli_refuses_while_another_backup_holds_the_lease(local_backend: Backend, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "dev.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    config = make_config(tmp_path, local_backend, db=db)
    assert run_cli(config, "init").code == 0
    storage = local_backend.storage()
    with lease.exclusive(storage, "devdb", "backup", operation="sqlite backup"):
        result = run_cli(config, "backup", "devdb")
        assert result.code == 1
        assert "devdb backup is locked by" in result.error_line and "(sqlite backup)" in result.error_line
    assert not list(storage.list("devdb/backups/")), "the refused backup stored nothing"
    result = run_cli(config, "backup", "devdb")
    assert result.code == 0, result.stderr
    assert [info.key for info in storage.list("devdb/locks/")] == ["devdb/locks/backup.000000000002.json"]
    assert lease.live_exclusive(storage, "devdb", "backup") is None
