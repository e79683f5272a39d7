"""The repository under store faults: lost answers to conditional writes, and a backup whose lease lapsed.

Everything goes through ``FaultProxy`` in front of the real S3 servers (moto; SeaweedFS where cheap): the
store really acts on a request whose answer the proxy then drops, so botocore's retry meets the object its
first attempt stored. A backup paused past its lease (SIGSTOP, the real process) meets a `repo gc` that saw
its lease expire. The last part runs the S3 driver, a backup and gc through each of the proxy's faults.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupctl.core.errors import StorageError
from backupctl.repo import lease
from backupctl.repo.layout import PROBE_PREFIX
from tests.support.backends import Backend
from tests.support.cli import CliRunner, backup_id, cli_env
from tests.support.config import make_config
from tests.support.s3_servers import FaultProxy, Rule
from tests.support.store_faults import (
    DATA_PUT,
    assert_listed_backups_verify,
    behind_proxy,
    direct_storage,
    initialised,
    resumed,
    s3_storage,
    sqlite_rows,
    wait_lease_expired,
)

MANIFEST_PUT = r"/backups/[^/]+/manifest\.json$"
LEASE_PUT = r"/locks/backup\.\d+\.json$"


@pytest.fixture(params=["moto", "seaweedfs"])
def proxied(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, FaultProxy]]:
    """A repository on a real S3 server, reached through a fault proxy."""
    backend, proxy = behind_proxy(request.param, tmp_path, request)
    yield backend, proxy
    proxy.close()


# -- finding 1: a lost answer to a conditional write ------------------------------------------------------


def test_lost_answer_to_the_manifest_put_is_a_published_backup(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    """The manifest is stored, its answer lost; the retry's 412 is our own manifest, not a duplicate id."""
    backend, proxy = proxied
    config, rows = initialised(tmp_path, backend, cli)
    lost = proxy.add(Rule("drop-response", method="PUT", path=MANIFEST_PUT))

    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    assert lost.fired == 1
    assert assert_listed_backups_verify(cli, config) == [bid]
    target = tmp_path / "restored.sqlite3"
    restored = cli(config, "restore", bid, "--to", str(target))
    assert restored.code == 0, restored.stderr
    assert sqlite_rows(target) == rows


def test_lost_answer_to_a_lease_put_is_our_lease(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    """The backup lease is stored, its answer lost: "locked by" ourselves is ours; it is released after."""
    backend, proxy = proxied
    config, _ = initialised(tmp_path, backend, cli)
    lost = proxy.add(Rule("drop-response", method="PUT", path=LEASE_PUT))

    first = cli(config, "backup", "devdb", "-o", "json")
    assert lost.fired == 1 and first.code == 0, first.stderr
    assert lease.live_exclusive(direct_storage(backend), "devdb", "backup") is None  # released, not leaked
    second = cli(config, "backup", "devdb", "-o", "json")  # nothing holds the source
    assert second.code == 0, second.stderr
    assert sorted(assert_listed_backups_verify(cli, config)) == sorted([backup_id(first), backup_id(second)])


def test_a_publish_that_cannot_be_confirmed_keeps_the_backup_whole(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    """Every answer to the manifest PUT is lost and reading it back fails: the backup cannot know it is
    published, so it fails; but the manifest is there, and the failure must not take its data with it."""
    backend, proxy = proxied
    config, rows = initialised(tmp_path, backend, cli, max_attempts=2)
    proxy.add(Rule("drop-response", method="PUT", path=MANIFEST_PUT, times=None))
    proxy.add(Rule("status", method="GET", path=MANIFEST_PUT, times=None, arg=500))

    failed = cli(config, "backup", "devdb")
    assert failed.code == 1 and "manifest.json" in failed.error_line
    proxy.rules.clear()
    [bid] = assert_listed_backups_verify(cli, config)
    target = tmp_path / "restored.sqlite3"
    assert cli(config, "restore", bid, "--to", str(target)).code == 0
    assert sqlite_rows(target) == rows


# -- finding 2: a backup whose lease lapsed before it published ---------------------------------------------

LEASE_TTL = 4  # seconds; holders renew every quarter of it


def _stopped_backup(config: Path, proxy: FaultProxy, backend: Backend) -> subprocess.Popen[str]:
    """A backup started and then stopped (SIGSTOP) while the store takes its data object; returned once the
    object is stored."""
    proc: subprocess.Popen[str] | None = None

    def stop() -> None:
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)

    stopped = proxy.add(Rule("delay", method="PUT", path=DATA_PUT, arg=0, then=stop))
    proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(config), "backup", "devdb"],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    storage = direct_storage(backend)
    while not (stopped.fired and list(storage.list("devdb/backups/"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the backup never uploaded its data"
        time.sleep(0.05)
    return proc


def test_a_backup_stopped_past_its_lease_does_not_publish_what_gc_removed(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    backend, proxy = proxied
    config, _ = initialised(tmp_path, backend, cli, lease_ttl=f"{LEASE_TTL}s")
    proc = _stopped_backup(config, proxy, backend)
    try:
        wait_lease_expired(backend, "devdb")
        collected = cli(config, "repo", "gc", "--grace", "0s", "-o", "json")
        assert collected.code == 0, collected.stderr
        assert any(item["item"] == "backup-debris" and item["result"] == "removed"
                   for item in json.loads(collected.stdout)), collected.stdout
    finally:
        code, err = resumed(proc)
    assert code == 1, err
    error = [line for line in err.splitlines() if line.startswith("backupctl: error:")]
    assert len(error) == 1 and "lapsed" in error[0] and "nothing was published" in error[0], err
    assert assert_listed_backups_verify(cli, config) == []
    assert list(direct_storage(backend).list("devdb/backups/")) == []


def test_a_backup_whose_data_the_store_lost_does_not_publish(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    """The store acknowledges the data object but never stores it: the listing before publishing sees it."""
    backend, proxy = proxied
    config, _ = initialised(tmp_path, backend, cli)
    lost = proxy.add(Rule("status", method="PUT", path=DATA_PUT, arg=200))
    failed = cli(config, "backup", "devdb")
    assert lost.fired == 1 and failed.code == 1, failed.stderr
    assert "lost 1 of its 1 objects before it was published" in failed.error_line
    assert assert_listed_backups_verify(cli, config) == []


def test_a_backup_stopped_past_its_lease_yields_to_the_backup_that_took_it_over(
    tmp_path: Path, request: pytest.FixtureRequest, cli: CliRunner
) -> None:
    backend, proxy = behind_proxy("moto", tmp_path, request)
    request.addfinalizer(proxy.close)
    config, rows = initialised(tmp_path, backend, cli, lease_ttl=f"{LEASE_TTL}s")
    proc = _stopped_backup(config, proxy, backend)
    try:
        wait_lease_expired(backend, "devdb")
        second = backup_id(cli(config, "backup", "devdb", "-o", "json"))  # takes the expired lease over
    finally:
        code, err = resumed(proc)
    assert code == 1, err
    error = [line for line in err.splitlines() if line.startswith("backupctl: error:")]
    assert len(error) == 1 and "nothing was published" in error[0], err
    assert assert_listed_backups_verify(cli, config) == [second]
    assert {info.key.split("/")[2] for info in direct_storage(backend).list("devdb/backups/")} == {second}
    target = tmp_path / "restored.sqlite3"
    assert cli(config, "restore", second, "--to", str(target)).code == 0
    assert sqlite_rows(target) == rows


# -- the driver under each fault of the proxy ---------------------------------------------------------------


def test_the_driver_rides_out_bursts_delays_and_lost_answers(proxied: tuple[Backend, FaultProxy]) -> None:
    backend, proxy = proxied
    storage = s3_storage(backend, read_timeout=1)
    burst = proxy.add(Rule("status", method="PUT", times=2, arg=500))
    storage.put("src/a", b"a")
    slow = proxy.add(Rule("delay", method="PUT", arg=2))  # the client gives up after 1 s and sends it again
    storage.put("src/b", b"b")
    lost_delete = proxy.add(Rule("drop-response", method="POST", path=r"\?delete"))
    storage.delete(["src/a"])
    lost_create = proxy.add(Rule("drop-response", method="PUT", path=r"/src/c$"))
    assert storage.create("src/c", b"mine")
    assert not storage.create("src/c", b"someone else's")
    assert [r.fired for r in (burst, slow, lost_delete, lost_create)] == [2, 1, 1, 1]
    assert storage.head("src/a") is None
    assert storage.get_bytes("src/b") == b"b" and storage.get_bytes("src/c") == b"mine"


def test_a_lost_answer_to_complete_multipart_upload(proxied: tuple[Backend, FaultProxy]) -> None:
    """The store assembled the object and the answer was lost: the retried complete is answered (moto and
    SeaweedFS, like S3, accept completing an upload again), and the object is whole."""
    backend, proxy = proxied
    storage = s3_storage(backend)
    data = os.urandom(12 << 20)  # three 5 MiB parts
    lost = proxy.add(Rule("drop-response", method="POST", path=r"uploadId="))
    storage.put("src/big", data)
    assert lost.fired == 1 and storage.get_bytes("src/big") == data


def test_an_etag_that_changes_during_a_ranged_read_is_an_error(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A read broken after 1 MiB resumes with a ranged GET; the store (ignoring If-Match) serves another
    object there: the read fails instead of splicing two objects together. (moto only: a store that
    checks signatures refuses the rerouted request.)"""
    backend, proxy = behind_proxy("moto", tmp_path, request)
    request.addfinalizer(proxy.close)
    storage = s3_storage(backend)
    storage.put("src/one", os.urandom(3 << 20))
    storage.put("src/two", os.urandom(3 << 20))
    other = f"/{backend.repository['bucket']}/{backend.repository['prefix']}/src/two"
    proxy.add(Rule("truncate", method="GET", path=r"/src/one$", arg=1 << 20))
    swapped = proxy.add(Rule("reroute", method="GET", path=r"/src/one$", nth=2, arg=other))
    proxy.add(Rule("drop-header", method="GET", path=r"/src/one$", nth=2, arg="if-match"))
    with pytest.raises(StorageError, match=r"src/one .* was replaced while it was being read"):
        storage.get_bytes("src/one")
    assert swapped.fired == 1


def test_an_empty_listing_before_publishing_fails_the_backup(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    """The check that every object is stored is a listing: one that comes back empty fails safe."""
    backend, proxy = proxied
    config, _ = initialised(tmp_path, backend, cli)
    empty = proxy.add(Rule("empty-list", method="GET", path=r"list-type=2&prefix=.*/backups/[^/]+/&"))
    failed = cli(config, "backup", "devdb")
    assert empty.fired == 1 and failed.code == 1 and "nothing was published" in failed.error_line
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    assert assert_listed_backups_verify(cli, config) == [bid]


def test_gc_with_a_stale_listing_keeps_a_published_backup(
    tmp_path: Path, request: pytest.FixtureRequest, cli: CliRunner
) -> None:
    """gc's listing predates the manifest (the folder looks like debris): it checks for the manifest again."""
    backend, proxy = behind_proxy("moto", tmp_path, request)
    request.addfinalizer(proxy.close)
    config, rows = initialised(tmp_path, backend, cli)
    proc = _stopped_backup(config, proxy, backend)
    try:
        planned = cli(config, "repo", "gc", "--grace", "0s", "--dry-run", "-o", "json")  # lists the folder
    finally:
        code, err = resumed(proc)
    assert code == 0, err
    assert [item["action"] for item in json.loads(planned.stdout) if item["item"] == "backup-debris"] == ["keep"]
    stale = proxy.add(Rule("stale-list", method="GET", path=r"list-type=2&prefix=.*devdb/backups/&", times=None))
    collected = cli(config, "repo", "gc", "--grace", "0s", "-o", "json")
    assert collected.code == 0 and stale.fired >= 1, collected.stderr
    debris = [item["result"] for item in json.loads(collected.stdout) if item["item"] == "backup-debris"]
    assert debris == ["kept: its backup published meanwhile"]  # the stale listing showed no manifest
    proxy.rules.remove(stale)
    [bid] = assert_listed_backups_verify(cli, config)
    target = tmp_path / "restored.sqlite3"
    assert cli(config, "restore", bid, "--to", str(target)).code == 0
    assert sqlite_rows(target) == rows


def test_init_whose_answer_was_lost_says_it_created_the_repository(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    backend, proxy = proxied
    config = make_config(tmp_path, backend)
    lost = proxy.add(Rule("drop-response", method="PUT", path=r"/backupctl\.json$"))
    probe = proxy.add(Rule("drop-response", method="PUT", path=re.escape(PROBE_PREFIX)))  # the write probe
    created = cli(config, "init")
    assert lost.fired == 1 and probe.fired == 1 and created.code == 0, created.stderr
    assert "created" in created.stdout and "already exists" not in created.stdout, created.stdout
    assert "already exists" in cli(config, "init").stdout
