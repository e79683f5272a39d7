"""Clock skew under faults: gc, backup and expire whose clocks are days off, and a store whose clock is.

A host's wrong clock is libfaketime's (the Debian package `faketime`) on that one process, through
``LD_PRELOAD`` so that the process keeps its pid (SIGSTOP reaches it); the store's wrong clock is
``FaultProxy``'s ``shift-clock``, which moves every Last-Modified and listed time the processes see. The
promise: leases and debris are judged by the store's clock alone, so no skew makes gc remove what a running
or published backup needs, makes a live lease look expired, or keeps an expired one from being taken over
once. Every case asserts outcomes (what is listed, what verify says, what gc removed), never durations.
The repositories are on moto: a store that checks signatures (SeaweedFS, S3) refuses a client whose clock is
days off (RequestTimeTooSkewed) before anything can go wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupctl.repo import lease
from backupctl.repo.catalog import new_backup_id
from tests.support.backends import Backend
from tests.support.cli import CliRunner, Result, backup_id, cli_env
from tests.support.pg_site import Site, init_and_backup
from tests.support.s3_servers import FaultProxy, Rule
from tests.support.store_faults import (
    DATA_PUT,
    assert_listed_backups_verify,
    behind_proxy,
    direct_storage,
    initialised,
    resumed,
    sqlite_rows,
    wait_lease_expired,
)

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
pytestmark = pytest.mark.skipif(not LIBFAKETIME.exists() or shutil.which("faketime") is None,
                                reason="needs the faketime package")

DAYS = 86400
OFFSETS = ["+3d", "-3d"]
LONG_TTL = 30  # seconds: a lease that stays live for the whole case unless a test stops renewing it
SHORT_TTL = 3  # seconds: a lease a test lets expire
TRIALS: Counter[str] = Counter()  # per case: skewed processes run (or skewed proxies), for the closing note


@pytest.fixture(scope="module", autouse=True)
def _report_trials() -> Iterator[None]:
    yield
    print("\nclock-skew trials per case: " + ", ".join(f"{case} {count}" for case, count in sorted(TRIALS.items())))


def _faked_env(offset: str | None) -> dict[str, str]:
    env = cli_env()
    if offset is not None:
        env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=offset, FAKETIME_DONT_FAKE_MONOTONIC="1")
    return env


def faked(offset: str, config: Path, *args: str, case: str) -> Result:
    """backupctl whose own clock is ``offset`` away from the real one (e.g. "+3d")."""
    TRIALS[case] += 1
    proc = subprocess.run([sys.executable, "-m", "backupctl", "--config", str(config), *args], capture_output=True,
                          text=True, env=_faked_env(offset), timeout=120, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _gc(run: Result) -> dict[str, list[tuple[str, str]]]:
    """gc's JSON by item kind: (id, result) of each."""
    assert run.code == 0, run.stderr
    found: dict[str, list[tuple[str, str]]] = {}
    for item in json.loads(run.stdout):
        found.setdefault(item["item"], []).append((item["id"], item["result"]))
    return found


def _stopped_backup(config: Path, proxy: FaultProxy, backend: Backend, offset: str | None) -> subprocess.Popen[str]:
    """A backup (its clock at ``offset``) stopped by SIGSTOP once the store holds its data object."""
    proc: subprocess.Popen[str] | None = None

    def stop() -> None:
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)

    stopped = proxy.add(Rule("delay", method="PUT", path=DATA_PUT, arg=0, then=stop))
    proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(config), "backup", "devdb", "-o",
                             "json"], env=_faked_env(offset), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    storage = direct_storage(backend)
    while not (stopped.fired and list(storage.list("devdb/backups/"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the backup never uploaded its data"
        time.sleep(0.05)
    return proc


def _finished(proc: subprocess.Popen[str]) -> Result:
    out, err = proc.communicate(timeout=120)
    return Result(proc.returncode, out, err)


def _folders(backend: Backend) -> set[str]:
    return {info.key.split("/")[2] for info in direct_storage(backend).list("devdb/backups/")}


@pytest.fixture
def moto_proxied(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Backend, FaultProxy]]:
    backend, proxy = behind_proxy("moto", tmp_path, request)
    yield backend, proxy
    proxy.close()


def _assert_both_whole(cli: CliRunner, config: Path, published: str, running: str, rows: list,
                       tmp_path: Path) -> None:
    """The backup published before and the one resumed after the fault are both listed and verify, and the
    resumed one restores the source's rows."""
    assert sorted(assert_listed_backups_verify(cli, config)) == sorted([published, running])
    target = tmp_path / "restored.sqlite3"
    assert cli(config, "restore", running, "--to", str(target)).code == 0
    assert sqlite_rows(target) == rows


# -- (1) repo gc whose clock is days off ------------------------------------------------------------------


@pytest.mark.parametrize("offset", OFFSETS)
def test_gc_with_a_clock_days_off_spares_a_stopped_backup_and_a_published_one(
    tmp_path: Path, moto_proxied: tuple[Backend, FaultProxy], cli: CliRunner, offset: str
) -> None:
    backend, proxy = moto_proxied
    config, rows = initialised(tmp_path, backend, cli, lease_ttl=f"{LONG_TTL}s")
    published = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    proc = _stopped_backup(config, proxy, backend, None)
    try:
        [running] = _folders(backend) - {published}
        debris = _gc(faked(offset, config, "repo", "gc", "--grace", "0s", "-o", "json", case="gc-stopped-backup"))
        assert [(item, result.split(":")[0]) for item, result in debris["backup-debris"]] == [(running, "kept")]
        assert _folders(backend) == {published, running}
    finally:
        code, out = resumed(proc)
    assert code == 0, out
    _assert_both_whole(cli, config, published, running, rows, tmp_path)


@pytest.mark.parametrize("offset", OFFSETS)
def test_gc_with_a_clock_days_off_removes_debris_only_once_its_lease_expired_on_the_store(
    tmp_path: Path, moto_proxied: tuple[Backend, FaultProxy], cli: CliRunner, offset: str
) -> None:
    """Debris under a backup lease another process holds: kept while the lease lives, whatever gc's clock
    says; once it expired on the store's clock, removed with --grace 0s, and kept by the 24h grace (it was
    written seconds ago on the store's clock, not days)."""
    backend, _proxy = moto_proxied
    config, _ = initialised(tmp_path, backend, cli)
    published = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    storage = direct_storage(backend)
    killed = new_backup_id("sqlite")
    storage.put(f"devdb/backups/{killed}/database.sqlite3.zst", b"half a backup")
    case = "gc-leased-debris"
    with lease.exclusive(storage, "devdb", "backup", operation="backup", details={"backup_id": killed},
                         ttl=SHORT_TTL) as held:
        debris = _gc(faked(offset, config, "repo", "gc", "--grace", "0s", "-o", "json", case=case))
        assert debris["backup-debris"] == [(killed, "kept")]
        held.stop_renewing()
        wait_lease_expired(backend, "devdb")
        debris = _gc(faked(offset, config, "repo", "gc", "-o", "json", case=case))  # the default grace: 24h
        assert debris["backup-debris"] == [(killed, "kept")]
        assert _folders(backend) == {published, killed}
        debris = _gc(faked(offset, config, "repo", "gc", "--grace", "0s", "-o", "json", case=case))
        assert debris["backup-debris"] == [(killed, "removed")]
    assert _folders(backend) == {published}
    assert assert_listed_backups_verify(cli, config) == [published]


# -- (2) a store whose clock is days off, seen through the proxy ------------------------------------------


@pytest.mark.parametrize("offset", OFFSETS)
def test_a_store_clock_days_off_neither_expires_a_live_lease_nor_keeps_an_expired_one(
    tmp_path: Path, moto_proxied: tuple[Backend, FaultProxy], cli: CliRunner, offset: str
) -> None:
    backend, proxy = moto_proxied
    shift = proxy.add(Rule("shift-clock", times=None, arg=int(offset[:-1]) * DAYS))
    TRIALS["store-clock-leases"] += 1
    config, _ = initialised(tmp_path, backend, cli)
    storage = direct_storage(backend)
    with lease.exclusive(storage, "devdb", "backup", operation="backup", ttl=LONG_TTL):
        refused = cli(config, "backup", "devdb")
        assert refused.code == 1 and "devdb backup is locked by" in refused.error_line
    assert assert_listed_backups_verify(cli, config) == []
    # A holder that died: its generation is never renewed nor released, and expires.
    dead = lease._take_exclusive(storage, "devdb", "backup", lease._body("backup", SHORT_TTL), SHORT_TTL)
    wait_lease_expired(backend, "devdb")
    racers = [subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(config), "backup", "devdb",
                                "-o", "json"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    results = [_finished(racer) for racer in racers]
    won = [backup_id(r) for r in results if r.code == 0]
    lost = [r for r in results if r.code != 0]
    assert won, [r.stderr for r in results]  # the expired lease was taken over
    assert all(r.code == 1 and "locked by" in r.error_line for r in lost), [r.stderr for r in lost]
    # Each winner took exactly the next generation (no two took over the same one), and cleaned the older.
    assert [info.key for info in storage.list("devdb/locks/backup.")] == \
        [f"devdb/locks/backup.{dead.generation + len(won):012d}.json"]
    assert sorted(assert_listed_backups_verify(cli, config)) == sorted(won)
    assert shift.fired > 0


@pytest.mark.parametrize("offset", OFFSETS)
def test_expire_through_a_store_clock_days_off_spares_what_a_live_reader_holds(
    tmp_path: Path, moto_proxied: tuple[Backend, FaultProxy], cli: CliRunner, offset: str
) -> None:
    """keep_last = 1 over two backups: the older stays while a live reader lease holds it, and goes once that
    lease expired on the store's clock, whichever way that clock is off."""
    backend, proxy = moto_proxied
    proxy.add(Rule("shift-clock", times=None, arg=int(offset[:-1]) * DAYS))
    TRIALS["store-clock-expire"] += 1
    config, _ = initialised(tmp_path, backend, cli)
    older = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    newer = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    with open(config, "a") as text:
        text.write("\n[sources.devdb.retention]\nkeep_last = 1\n")
    with lease.shared(direct_storage(backend), "devdb", operation="restore", backups=[older], ttl=SHORT_TTL) as reader:
        assert cli(config, "expire", "devdb").code == 0
        assert sorted(assert_listed_backups_verify(cli, config)) == sorted([older, newer])
        reader.stop_renewing()
        while lease.live_readers(direct_storage(backend), "devdb"):
            time.sleep(0.2)
        expired = cli(config, "expire", "devdb", "-o", "json")
        assert expired.code == 0, expired.stderr
    assert assert_listed_backups_verify(cli, config) == [newer]
    assert _folders(backend) == {newer}


@pytest.fixture
def site_on_skewed_store(request: pytest.FixtureRequest, site: Site) -> Iterator[Site]:
    """The archiving cluster with its repository on moto, seen through a proxy that shifts the store's clock:
    3 days ahead with PostgreSQL 15, behind with 18 (each direction once, not four slow runs)."""
    endpoint = request.getfixturevalue("moto_endpoint")
    proxy = FaultProxy(endpoint.url)
    proxy.add(Rule("shift-clock", times=None, arg=(3 if site.cluster.binaries.major == 15 else -3) * DAYS))
    TRIALS["store-clock-recovery-window"] += 1
    credentials = site.root / "aws-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {endpoint.access_key}\n"
                           f"aws_secret_access_key = {endpoint.secret_key}\n")
    site.repository = {"type": "s3", "bucket": endpoint.new_bucket(), "region": endpoint.region,
                       "endpoint_url": proxy.url, "addressing_style": "path", "credentials_file": str(credentials)}
    site.write_config()
    yield site
    proxy.close()


def test_expire_through_a_store_clock_days_off_keeps_the_backups_of_the_recovery_window(
    site_on_skewed_store: Site, cli: CliRunner
) -> None:
    at = site_on_skewed_store
    older = init_and_backup(at, cli)
    at.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    at.archived_now(cli)
    newer = backup_id(cli(at.config, "backup", "main", "--type", "full", "-o", "json"))
    with open(at.config, "a") as config:
        config.write('\n[sources.main.retention]\nkeep_last = 1\nrecovery_window = "1d"\n')
    expired = cli(at.config, "expire", "main", "-o", "json")
    assert expired.code == 0, expired.stderr
    rules = {row["id"]: row["rules"] for row in json.loads(expired.stdout)}
    assert any(rule.startswith("recovery_window") for rule in rules[older]), rules
    listed = cli(at.config, "list", "main", "-o", "json")
    assert {row["id"] for row in json.loads(listed.stdout)} == {older, newer}
    verified = cli(at.config, "verify", "--all", "-o", "json")
    assert verified.code == 0 and all(report["ok"] for report in json.loads(verified.stdout)), verified.stdout


# -- (3) a backup whose clock is days off, holding its lease ----------------------------------------------


@pytest.mark.parametrize("offset", OFFSETS)
def test_the_lease_of_a_backup_with_a_clock_days_off_is_live_to_others(
    tmp_path: Path, moto_proxied: tuple[Backend, FaultProxy], cli: CliRunner, offset: str
) -> None:
    """The backup (clock off, stopped mid-way) holds its lease: another backup is refused, gc and expire on
    the right clock keep its objects, and once resumed it publishes a backup that verifies."""
    backend, proxy = moto_proxied
    config, rows = initialised(tmp_path, backend, cli, lease_ttl=f"{LONG_TTL}s")
    published = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    with open(config, "a") as text:
        text.write("\n[sources.devdb.retention]\nkeep_last = 1\n")
    TRIALS["skewed-backup-lease"] += 1
    proc = _stopped_backup(config, proxy, backend, offset)
    try:
        [running] = _folders(backend) - {published}
        refused = cli(config, "backup", "devdb")
        assert refused.code == 1 and "devdb backup is locked by" in refused.error_line
        debris = _gc(cli(config, "repo", "gc", "--grace", "0s", "-o", "json"))
        assert [(item, result.split(":")[0]) for item, result in debris["backup-debris"]] == [(running, "kept")]
        assert cli(config, "expire", "devdb").code == 0  # one backup published: keep_last = 1 keeps it
        assert _folders(backend) == {published, running}
    finally:
        code, out = resumed(proc)
    assert code == 0, out
    _assert_both_whole(cli, config, published, running, rows, tmp_path)


# -- (1b) the unfinished uploads of a running backup ------------------------------------------------------


@pytest.mark.parametrize("server", ["seaweedfs"])  # moto lists every upload as initiated in 2010
def test_gc_spares_the_unfinished_upload_of_a_running_backup_when_the_store_clock_is_behind(
    tmp_path: Path, request: pytest.FixtureRequest, cli: CliRunner, server: str
) -> None:
    """A backup stopped between two parts of its multipart upload, gc with --grace 0s, the store's clock 3
    days behind the hosts' (which are right): the upload began after the backup's lease, so gc must not
    abort it, and the backup, resumed, publishes."""
    backend, proxy = behind_proxy(server, tmp_path, request)
    request.addfinalizer(proxy.close)
    proxy.add(Rule("shift-clock", times=None, arg=-3 * DAYS))
    TRIALS["gc-running-upload"] += 1
    config, _ = initialised(tmp_path, backend, cli, lease_ttl=f"{LONG_TTL}s")
    with sqlite3.connect(tmp_path / "dev.sqlite3") as db:  # 12 MiB that do not compress: three 5 MiB parts
        db.executemany("INSERT INTO t (payload) VALUES (?)", ((os.urandom(4096),) for _ in range(3 << 10)))
    rows = sqlite_rows(tmp_path / "dev.sqlite3")
    proc: subprocess.Popen[str] | None = None

    def stop() -> None:
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)

    second_part = proxy.add(Rule("delay", method="PUT", path=r"partNumber=2", arg=0, then=stop))
    proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(config), "backup", "devdb", "-o",
                             "json"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not second_part.fired:
        assert proc.poll() is None and time.monotonic() < deadline, "the backup never uploaded a second part"
        time.sleep(0.05)
    try:
        collected = _gc(cli(config, "repo", "gc", "--grace", "0s", "-o", "json"))
    finally:
        code, out = resumed(proc)
    assert collected["multipart-uploads"] == [("multipart-uploads", "aborted 0")]
    assert code == 0, out
    [bid] = assert_listed_backups_verify(cli, config)
    target = tmp_path / "restored.sqlite3"
    assert cli(config, "restore", bid, "--to", str(target)).code == 0
    assert sqlite_rows(target) == rows
