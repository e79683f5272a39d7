"""expire, repo gc and pins against real repositories (local and S3), with real PostgreSQL clusters archiving
real WAL through backupctl's own archive_command, and the leases that keep backups, expires and readers
apart.

Daily backups are simulated: the backups are real, then their manifests get finish times spread over past
days (re-sealed with a valid checksum), which is all the policy looks at; the WAL stays what the server
archived. After each expire every retained physical backup is planned for restore with pitr.make_plan, and
a point-in-time restore inside the recovery window is started and its rows are read back.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backupctl.core.config import load_config
from backupctl.postgres.binaries import PgBinaries
from backupctl.repo import lease, pins
from backupctl.repo.catalog import iso
from backupctl.repo.repository import Repository, open_repository
from backupctl.services import pitr
from backupctl.services.expire import apply, gather
from backupctl.storage.local import TEMP_PREFIX
from backupctl.wal.listing import list_wal_objects
from backupctl.wal.names import parse_lsn, segment_name
from tests.support.backends import Backend, make_backend
from tests.support.cli import CliRunner, backup_id, cli_env, run_cli
from tests.support.config import make_config
from tests.support.pg_site import Site, batches, chown_to_postgres, restore_and_start

DAY = timedelta(days=1)


def _open(config: Path) -> Repository:
    return open_repository(load_config(config))


def _set_times(repo: Repository, finished: dict[str, datetime]) -> None:
    """Move backups into the past: rewrite their manifests with new times and a valid checksum (the stop
    times on the server's and the store's clocks too: retention's window judges by the store's)."""
    for backup, moment in finished.items():
        manifest = repo.catalog.find(backup)
        manifest.started_at, manifest.finished_at = iso(moment - timedelta(minutes=2)), iso(moment)
        manifest.extra.update(server_stop_time=iso(moment), store_stop_time=iso(moment))
        repo.storage.put(manifest.key, json.dumps(manifest.to_document(), indent=1, sort_keys=True).encode())


def _add_retention(config: Path, source: str, **rules: Any) -> None:
    lines = [f"\n[sources.{source}.retention]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in rules.items()]
    config.write_text(config.read_text() + "\n".join(lines) + "\n")


def _plan_rows(result: Any) -> list[dict[str, Any]]:
    assert result.code == 0, result.stderr
    return [{k: v for k, v in row.items() if k != "result"} for row in json.loads(result.stdout)]


def _wal_segnos(repo: Repository, source: str, size: int = 16 * 1024**2) -> dict[str, int]:
    """Archived per-segment files (segments, .partial, .backup) -> segment number."""
    return {o.key: o.name.segno(size) for o in list_wal_objects(repo, source) if o.name.kind != "history"}


def _assert_every_retained_backup_restores(repo: Repository, source: str, timeline: str = "latest") -> list[str]:
    """pitr plans a restore of every retained physical backup to the end of archived WAL (or refuses)."""
    manifests, _ = repo.catalog.scan(source)
    physical = [m.id for m in manifests if m.type in ("full", "incr")]
    for backup in physical:
        plan = pitr.make_plan(repo, source, pitr.Target("end", timeline=timeline), backup)
        assert plan.segments > 0
    return physical


# --- a real cluster, daily backups, WAL expiry --------------------------------------------------------------


def test_daily_backups_expire_by_policy_and_pitr_inside_the_window_works(
        site: Site, cli: CliRunner) -> None:
    assert cli(site.config, "init").code == 0
    site.sql("CREATE TABLE marks (id int PRIMARY KEY, batch text NOT NULL, at timestamptz DEFAULT now())")
    days = 7
    ids, lsn_after = [], {}
    for day in range(days):
        if day:
            site.sql(f"INSERT INTO marks (id, batch) VALUES ({day}, 'day{day}')")
            lsn_after[day] = site.sql("SELECT pg_current_wal_lsn()::text")[0][0]
            site.sql("SELECT pg_switch_wal()")
        ids.append(backup_id(cli(site.config, "backup", "main", "--type", "full", "-o", "json")))
    site.archived_now(cli)
    now = datetime.now(UTC)
    with _open(site.config) as repo:
        _set_times(repo, {ids[day]: now - (days - 1 - day) * DAY - timedelta(hours=1) for day in range(days)})
        before = _wal_segnos(repo, "main")
        window_start = parse_lsn(repo.catalog.find(ids[3]).extra["start_lsn"]) // (16 * 1024**2)
    chown_to_postgres(site.root)
    _add_retention(site.config, "main", keep_last=2, recovery_window="3d")

    dry = _plan_rows(cli(site.config, "expire", "main", "--dry-run", "-o", "json"))
    actions = {row["id"]: row["action"] for row in dry if row["item"] == "backup"}
    assert actions == {ids[d]: "keep" if d in (3, 5, 6) else "remove" for d in range(days)}
    rules = {row["id"]: row["rules"] for row in dry}
    assert rules[ids[3]] == ["recovery_window 3d (timeline 1)"]
    assert rules[ids[6]] == ["keep_last (1 of 2)", "newest full"]
    wal_rows = [row for row in dry if row["item"] == "wal"]
    assert [row["action"] for row in wal_rows] == ["remove", "keep"]
    assert wal_rows[0]["last"] < wal_rows[1]["first"] == segment_name(1, window_start, 16 * 1024**2)

    refused = cli(site.config, "expire", "main")
    assert refused.code == 2 and "would remove 4 of the 7 backups" in refused.error_line
    assert "--force" in refused.error_line
    assert len(json.loads(cli(site.config, "list", "main", "-o", "json").stdout)) == days

    real = cli(site.config, "expire", "main", "--force", "-o", "json")
    assert _plan_rows(real) == dry, "the real run executes exactly the dry run's plan"
    assert sum('"event": "backup expired"' in line for line in real.stderr.splitlines()) == 4
    listed = [row["id"] for row in json.loads(cli(site.config, "list", "main", "-o", "json").stdout)]
    assert listed == [ids[6], ids[5], ids[3]]
    assert not any((site.root / "repo" / "main" / "backups" / ids[d]).exists() for d in (0, 1, 2, 4))
    with _open(site.config) as repo:
        after = _wal_segnos(repo, "main")
        assert set(after) == {key for key, segno in before.items() if segno >= window_start}
        assert any(".backup-" in key for key in set(before) - set(after)), "backup history files go too"
        assert _assert_every_retained_backup_restores(repo, "main") == [ids[6], ids[5], ids[3]]

    # A restore to a moment whose own backup was expired replays the kept WAL from the window's backup.
    # It is promoted and archives into the same source: a branch, timeline 2, forking off timeline 1.
    restored, plan = restore_and_start(site, cli, "inside_window", "--target-lsn", lsn_after[4], archive=True)
    try:
        assert plan["backup"] == ids[3]
        assert batches(restored) == ["day1", "day2", "day3", "day4"]
        with restored.connect() as conn:
            conn.execute("INSERT INTO marks (id, batch) VALUES (100, 'branch')")
            conn.execute("SELECT pg_switch_wal()")
        restored.stop()  # a clean shutdown archives what is left
    finally:
        restored.remove()
    with _open(site.config) as repo:
        assert any(o.name.timeline == 2 and o.name.kind == "segment" for o in list_wal_objects(repo, "main"))

    again = _plan_rows(cli(site.config, "expire", "main", "-o", "json"))
    assert [row for row in again if row["action"] == "remove"] == [], "a second run removes nothing"
    branch = [row for row in again if row["item"] == "wal" and row["timeline"] == 2]
    assert branch and all(row["action"] == "keep" for row in branch)
    assert ids[3] in branch[0]["rules"][0], "the window's backup replays the branch from its fork"
    with _open(site.config) as repo:
        assert _assert_every_retained_backup_restores(repo, "main", "current") == [ids[6], ids[5], ids[3]]
        assert pitr.make_plan(repo, "main", pitr.Target("end"), ids[3]).timeline == 2
        assert any(o.name.kind == "history" for o in list_wal_objects(repo, "main"))


@pytest.fixture
def s3_site(site: Site, request: pytest.FixtureRequest) -> Site:
    """The same archiving cluster, with its repository in a bucket on moto's S3 server."""
    site.repository = make_backend("moto", site.root, request).repository
    site.write_config()
    return site


@pytest.mark.parametrize("pg_binaries", [18], indirect=True, ids=["pg18"])
def test_incremental_chains_and_readers_on_s3(pg_binaries: PgBinaries, s3_site: Site, cli: CliRunner) -> None:
    """PostgreSQL 18 incrementals in S3: a kept incremental keeps its chain, a reader's backup stays, and the
    chain restores after expire."""
    site = s3_site
    site.sql("ALTER SYSTEM SET summarize_wal = on")
    site.sql("SELECT pg_reload_conf()")
    assert cli(site.config, "init").code == 0
    site.sql("CREATE TABLE marks (id int PRIMARY KEY, batch text NOT NULL, at timestamptz DEFAULT now())")
    ids = []
    for number, kind in enumerate(["full", "incr", "full", "incr", "incr"]):
        site.sql(f"INSERT INTO marks (id, batch) VALUES ({number}, 'b{number}')")
        ids.append(backup_id(cli(site.config, "backup", "main", "--type", kind, "-o", "json")))
    site.sql("INSERT INTO marks (id, batch) VALUES (9, 'after')")
    site.archived_now(cli)
    now = datetime.now(UTC)
    with _open(site.config) as repo:
        _set_times(repo, {backup: now - (4 - n) * DAY - timedelta(hours=1) for n, backup in enumerate(ids)})
        first_kept_segment = parse_lsn(repo.catalog.find(ids[2]).extra["start_lsn"]) // (16 * 1024**2)
        storage = repo.storage
        with lease.shared(storage, "main", operation="verify", backups=[ids[1]]):
            _add_retention(site.config, "main", keep_last=1)
            held = _plan_rows(cli(site.config, "expire", "main", "-o", "json"))
        rules = {row["id"]: row["rules"] for row in held}
        assert any(rule.startswith("read by verify on") for rule in rules[ids[1]])
        assert rules[ids[0]] == [f"parent of {ids[1]}"]
        assert rules[ids[2]] == ["newest full", f"parent of {ids[3]}"]
        assert rules[ids[3]] == [f"parent of {ids[4]}"]
        assert all(row["action"] == "keep" for row in held if row["item"] == "backup")
        oldest = parse_lsn(repo.catalog.find(ids[0]).extra["start_lsn"]) // (16 * 1024**2)
        assert min(_wal_segnos(repo, "main").values()) == oldest, "only WAL older than every backup went"

        released = _plan_rows(cli(site.config, "expire", "main", "-o", "json"))
        assert [row["id"] for row in released if row["action"] == "remove" and row["item"] == "backup"] == \
            [ids[1], ids[0]]
        assert not list(storage.list(f"main/backups/{ids[0]}/")) and not list(storage.list(f"main/backups/{ids[1]}/"))
        assert min(_wal_segnos(repo, "main").values()) == first_kept_segment
        assert _assert_every_retained_backup_restores(repo, "main") == [ids[4], ids[3], ids[2]]
    restored, plan = restore_and_start(site, cli, "chain")
    try:
        assert plan["backup"] == ids[4] and plan["backup_type"] == "incr"
        assert batches(restored) == ["after", "b0", "b1", "b2", "b3", "b4"]
    finally:
        restored.remove()


# --- SQLite: readers, the guard, gc, pins -------------------------------------------------------------------


def _sqlite_db(path: Path, blob_mib: int = 0) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x BLOB)")
        for _ in range(blob_mib):
            conn.execute("INSERT INTO t VALUES (randomblob(1024 * 1024))")
        conn.execute("INSERT INTO t VALUES (1)")
    return path


def _sqlite_site(tmp_path: Path, backend: Backend, backups: int = 0, blob_mib: int = 0,
                 ttl: str | None = None) -> tuple[Path, list[str]]:
    db = _sqlite_db(tmp_path / "dev.sqlite3", blob_mib)
    (tmp_path / "stage").mkdir()
    config = make_config(tmp_path, backend, db=db, tmp_dir=tmp_path / "stage")
    if ttl:
        config.write_text(config.read_text().replace("[repository]\n", f"[repository]\nlease_ttl = \"{ttl}\"\n"))
    assert run_cli(config, "init").code == 0
    ids = [backup_id(run_cli(config, "backup", "devdb", "-o", "json")) for _ in range(backups)]
    return config, ids


@pytest.mark.parametrize("name", ["local", "moto"])
def test_a_reader_that_starts_during_expire_keeps_the_data_until_gc(name: str, tmp_path: Path,
                                                                    request: pytest.FixtureRequest) -> None:
    backend = make_backend(name, tmp_path, request)
    config, ids = _sqlite_site(tmp_path, backend, backups=4)
    _add_retention(config, "devdb", keep_last=2)
    cfg = load_config(config)
    with open_repository(cfg) as repo:
        inputs = gather(repo, cfg.source("devdb"))
        plan = inputs.plan()
        assert [m.id for m in plan.removed] == [ids[1], ids[0]]
        # A restore of ids[0] writes its lease after expire planned, before the manifests go.
        with lease.shared(repo.storage, "devdb", operation="restore", backups=[ids[0]]):
            with repo.exclusive_lease("devdb", "expire", "expire") as held:
                outcome = apply(repo, inputs, plan, held)
            assert "data left for `repo gc`" in outcome.results[ids[0]]
            assert repo.storage.head(f"devdb/backups/{ids[0]}/manifest.json") is None
            left = sorted(info.key.rsplit("/", 1)[1] for info in repo.storage.list(f"devdb/backups/{ids[0]}/"))
            assert left == ["database.sqlite3.zst", "expired.json"]
            assert not list(repo.storage.list(f"devdb/backups/{ids[1]}/"))
            busy = json.loads(run_cli(config, "repo", "gc", "--grace", "0s", "-o", "json").stdout)
            (row,) = [r for r in busy if r["id"] == ids[0]]
            assert row["action"] == "keep" and row["rules"][0].startswith("read by restore on")
            assert len(list(repo.storage.list(f"devdb/backups/{ids[0]}/"))) == 2
        # Once the reader is gone, gc removes the expired backup's data at once, whatever the grace period.
        done = json.loads(run_cli(config, "repo", "gc", "-o", "json").stdout)
        (row,) = [r for r in done if r["id"] == ids[0]]
        assert (row["item"], row["action"], row["result"], row["objects"]) == ("expired-backup", "remove", "removed", 2)
        assert not list(repo.storage.list(f"devdb/backups/{ids[0]}/"))
    listed = [row["id"] for row in json.loads(run_cli(config, "list", "-o", "json").stdout)]
    assert listed == [ids[3], ids[2]]


def test_pin_waits_for_a_running_expire(local_backend: Backend, tmp_path: Path) -> None:
    """Expire decides from the pins it read under its lease; a pin written meanwhile could be lost, so pin
    takes the same lease and is refused (and changes nothing) while expire holds it."""
    config, ids = _sqlite_site(tmp_path, local_backend, backups=4)
    _add_retention(config, "devdb", keep_last=2)
    cfg = load_config(config)
    with open_repository(cfg) as repo:
        with repo.exclusive_lease("devdb", "expire", "expire") as held:
            inputs = gather(repo, cfg.source("devdb"))
            plan = inputs.plan()
            assert [m.id for m in plan.removed] == [ids[1], ids[0]]
            refused = run_cli(config, "pin", ids[1], "--reason", "legal hold")
            assert refused.code != 0
            assert f"cannot pin {ids[1]} now: devdb expire is locked by" in refused.stderr
            assert "pin it again when that run has finished" in refused.stderr
            assert pins.read_pins(repo.storage, "devdb") == {}
            apply(repo, inputs, plan, held)
        manifests, _ = repo.catalog.scan("devdb")
        assert [m.id for m in manifests] == [ids[3], ids[2]]
        gone = run_cli(config, "pin", ids[1], "--reason", "legal hold")
        assert gone.code != 0 and ids[1] in gone.stderr
        assert run_cli(config, "pin", ids[2], "--reason", "legal hold").code == 0
        assert list(pins.read_pins(repo.storage, "devdb")) == [ids[2]]


def test_pins_survive_expire_and_show_in_list(local_backend: Backend, tmp_path: Path) -> None:
    config, ids = _sqlite_site(tmp_path, local_backend, backups=3)
    _add_retention(config, "devdb", keep_last=1)
    assert run_cli(config, "pin", ids[0], "--reason", "before the 17 upgrade").code == 0
    listed = json.loads(run_cli(config, "list", "-o", "json").stdout)
    assert [row["pinned"]["reason"] if row["pinned"] else None for row in listed] == \
        [None, None, "before the 17 upgrade"]
    assert "before the 17 upgrade" in run_cli(config, "list").stdout
    rows = _plan_rows(run_cli(config, "expire", "devdb", "-o", "json"))
    assert [row["action"] for row in rows] == ["keep", "remove", "keep"]
    assert rows[2]["rules"][0].startswith("pinned: before the 17 upgrade (")
    assert run_cli(config, "unpin", ids[0]).stdout.strip() == f"unpinned {ids[0]}"
    assert run_cli(config, "unpin", ids[0]).stdout.strip() == f"{ids[0]} was not pinned"
    rows = _plan_rows(run_cli(config, "expire", "devdb", "-o", "json"))
    assert [row["id"] for row in rows if row["action"] == "remove"] == [ids[0]]
    missing = run_cli(config, "pin", "20261125T021500123Z-S-zzz", "--reason", "x")
    assert missing.code == 2 and "no backup 20261125T021500123Z-S-zzz" in missing.error_line
    blank = run_cli(config, "pin", ids[2], "--reason", "  ")
    assert blank.code == 2 and "--reason must say why" in blank.error_line
    assert run_cli(config, "pin", ids[2]).code == 2  # --reason is required


def test_expire_refuses_without_a_policy_or_while_another_expire_runs(local_backend: Backend, tmp_path: Path) -> None:
    config, _ids = _sqlite_site(tmp_path, local_backend, backups=1)
    refused = run_cli(config, "expire", "devdb")
    assert refused.code == 2 and "has no retention policy" in refused.error_line
    _add_retention(config, "devdb", keep_last=3)
    with lease.exclusive(local_backend.storage(), "devdb", "expire", operation="expire"):
        locked = run_cli(config, "expire", "devdb")
    assert locked.code == 1 and "devdb expire is locked by" in locked.error_line
    assert run_cli(config, "expire", "devdb").code == 0
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(config.read_text().replace("keep_last = 3", 'recovery_window = "7d"'))
    bad = run_cli(wrong, "expire", "devdb")
    assert bad.code == 2 and "recovery_window applies to PostgreSQL sources" in bad.error_line


@pytest.mark.parametrize("name", ["local", "seaweedfs"])
def test_gc_removes_debris_but_not_a_running_backup(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    backend = make_backend(name, tmp_path, request)
    config, ids = _sqlite_site(tmp_path, backend, backups=1)
    storage = backend.storage()
    dead, running = "20261125T010000000Z-S-ded", "20261125T020000000Z-S-run"
    for debris in (dead, running):
        storage.put(f"devdb/backups/{debris}/database.sqlite3.zst", b"x" * 100)
        storage.put(f"devdb/backups/{debris}/export/0000.jsonl.zst", b"y" * 10)
    upload = None
    if backend.endpoint is not None:
        client, bucket = backend.raw_client(), backend.repository["bucket"]
        upload = client.create_multipart_upload(Bucket=bucket, Key=f"{backend.repository['prefix']}/devdb/backups/"
                                                f"{dead}/big.zst")["UploadId"]
        client.upload_part(Bucket=bucket, Key=f"{backend.repository['prefix']}/devdb/backups/{dead}/big.zst",
                           UploadId=upload, PartNumber=1, Body=b"z" * 1024)
    else:
        stale = tmp_path / "repo" / "devdb" / "backups" / dead / f"{TEMP_PREFIX}big.zst.0123456789ab"
        stale.write_bytes(b"partial")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))

    for generation in (1, 2):  # a taker killed before it cleaned up generation 1
        storage.put(f"devdb/locks/expire.00000000000{generation}.json", json.dumps(
            {"host": "h", "pid": 1, "operation": "expire", "started_at": "2026-11-25T00:00:00+00:00", "ttl": 60,
             "released": generation == 2}).encode())
    young = json.loads(run_cli(config, "repo", "gc", "--dry-run", "-o", "json").stdout)
    assert {r["id"]: r["action"] for r in young if r["item"] == "backup-debris"} == {dead: "keep", running: "keep"}
    assert all(r["result"] == "planned" for r in young)
    with lease.exclusive(storage, "devdb", "backup", operation="sqlite backup", details={"backup_id": running}):
        first = json.loads(run_cli(config, "repo", "gc", "--grace", "0s", "-o", "json").stdout)
        by_id = {r["id"]: r for r in first}
        assert by_id[dead]["action"] == "remove" and by_id[dead]["objects"] == 2
        assert by_id[running]["action"] == "keep" and "a running backup writes it" in by_id[running]["rules"][0]
        assert not list(storage.list(f"devdb/backups/{dead}/"))
        assert len(list(storage.list(f"devdb/backups/{running}/"))) == 2
        if upload:  # the running backup moves the cutoff back: a fresh upload is spared
            assert client.list_multipart_uploads(Bucket=bucket).get("Uploads")
        else:
            assert by_id["partial-writes"]["objects"] == 1 and not stale.exists()
    assert [info.key for info in storage.list("devdb/locks/expire.")] == ["devdb/locks/expire.000000000002.json"]
    second = json.loads(run_cli(config, "repo", "gc", "--grace", "0s", "-o", "json").stdout)
    assert {r["id"]: r["action"] for r in second if r["item"] == "backup-debris"} == {running: "remove"}
    if upload:
        (row,) = [r for r in second if r["item"] == "multipart-uploads"]
        assert row["result"] == "aborted 1"
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert {info.key.split("/")[2] for info in storage.list("devdb/backups/")} == {ids[0]}
    assert json.loads(run_cli(config, "list", "-o", "json").stdout)[0]["id"] == ids[0]


# --- leases between concurrent backups ----------------------------------------------------------------------


def _start_backup(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(config), "backup", "devdb", "-o",
                             "json"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _error_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith("backupctl: error:")]
    return line


@pytest.mark.parametrize("name", ["local", "seaweedfs"])
def test_two_concurrent_backups_one_wins_the_other_is_told_who_holds_the_lease(
        name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    backend = make_backend(name, tmp_path, request)
    config, _ = _sqlite_site(tmp_path, backend, blob_mib=96)
    first, second = _start_backup(config), _start_backup(config)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    results = [(p.returncode, out, err) for p, (out, err) in zip((first, second), outputs, strict=True)]
    codes = sorted(code for code, _out, _err in results)
    assert codes == [0, 1], results
    loser = next(err for code, _out, err in results if code == 1)
    line = _error_line(loser)
    assert "devdb backup is locked by" in line or "devdb backup was just locked by" in line
    assert " pid " in line and "(sqlite backup)" in line
    assert len(json.loads(run_cli(config, "list", "-o", "json").stdout)) == 1


@pytest.mark.parametrize("name", ["local", "seaweedfs"])
def test_a_killed_backups_lease_is_taken_over_after_it_expires(name: str, tmp_path: Path,
                                                             request: pytest.FixtureRequest) -> None:
    backend = make_backend(name, tmp_path, request)
    config, _ = _sqlite_site(tmp_path, backend, blob_mib=160, ttl="10s")
    storage = backend.storage()
    killed = _start_backup(config)
    deadline = time.monotonic() + 60

    def writing() -> bool:
        if backend.endpoint is not None:
            return bool(backend.raw_client().list_multipart_uploads(Bucket=backend.repository["bucket"]).get("Uploads"))
        return any(p.name.startswith(TEMP_PREFIX) for p in (tmp_path / "repo" / "devdb" / "backups").rglob("*"))

    while not writing():
        assert killed.poll() is None and time.monotonic() < deadline, "the backup finished before it could be killed"
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    holder = lease.live_exclusive(storage, "devdb", "backup")
    assert holder is not None and holder.pid == killed.pid
    refused = run_cli(config, "backup", "devdb")
    assert refused.code == 1
    line = refused.error_line
    assert f"devdb backup is locked by {holder.host} pid {killed.pid} (sqlite backup) since" in line
    assert "(expires " in line
    while lease.live_exclusive(storage, "devdb", "backup") is not None:
        assert time.monotonic() < deadline + 30, "the dead holder's lease never expired"
        time.sleep(0.5)
    taken = backup_id(run_cli(config, "backup", "devdb", "-o", "json"))
    collected = json.loads(run_cli(config, "repo", "gc", "--grace", "0s", "-o", "json").stdout)
    assert any(r["action"] in ("remove", "abort") and r["result"] != "aborted 0" and r["item"] in
               ("partial-writes", "multipart-uploads", "backup-debris") for r in collected), collected
    assert not writing(), "gc leaves no unfinished write of the killed backup"
    assert {info.key.split("/")[2] for info in storage.list("devdb/backups/")} == {taken}
    assert run_cli(config, "verify", taken).code == 0
