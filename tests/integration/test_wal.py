"""Continuous WAL archiving on real servers: archive_command and restore_command are backupctl's own.

Each site is a scratch cluster whose archive_command is exactly what ``backupctl pg-settings`` prints,
run by PostgreSQL as the ``postgres`` OS user with the postmaster's environment; its config, repository
and spool live in a fresh postgres-owned directory in /tmp. Faults are real: a proxy in front of moto
that holds or drops uploads, SIGKILL and SIGSTOP of the real processes (found by their id).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backupctl.core.config import load_config
from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.cluster import ScratchCluster
from backupctl.repo.repository import open_repository
from backupctl.wal.conf import archive_command, conf_quote, restore_command
from backupctl.wal.names import (
    parse_history,
)
from tests.support.config import write_toml
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import (
    QUICK_WAL,
    SOURCE,
    Site,
    alive,
    archiving_site,
    as_postgres,
    chown_to_postgres,
    wal_push_processes,
)
from tests.support.s3_servers import FaultProxy, S3Endpoint, free_port

SEGMENT = 16 * 1024**2


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- archiving -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("async_", [True, False], ids=["async", "sync"])
def test_archives_from_the_first_segment(pg_binaries: PgBinaries, request: pytest.FixtureRequest,
                                         async_: bool) -> None:
    # Synchronous, and without prefetch: no resident process at all, every fetch in-process.
    wal = {**QUICK_WAL, "async": async_, **({} if async_ else {"prefetch": 0})}
    with archiving_site(pg_binaries, request, wal=wal) as site:
        names = [site.switch() for _ in range(3)]
        assert names[0] == "000000010000000000000001"
        site.wait_archived(names[-1])
        keys = site.wal_keys()
        for name in names:
            local = site.cluster.datadir / "pg_wal" / name
            assert keys[name].endswith(f"{name}-{sha256_file(local)}.zst"), keys[name]
        sysid = str(site.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
        registered = json.loads(site.storage().get_bytes(f"{SOURCE}/source.json"))
        assert registered["system_identifier"] == sysid and registered["major"] == pg_binaries.major
        assert registered["wal_segment_size"] == SEGMENT and registered["kind"] == "postgres"
        assert (site.pusher_pid() is not None) == async_
        status = json.loads(site.cli("wal", "status", "-o", "json").stdout)
        assert status[0]["id"] == f"{SOURCE}/00000001" and status[0]["first"] == names[0]
        assert status[0]["last"] == names[-1] and status[0]["gaps"] == []
        # A fetch through the same path PostgreSQL's restore_command takes: plaintext identical.
        dest = site.root / "fetched"
        dest.mkdir()
        chown_to_postgres(dest)
        got = site.fetch(names[1], dest / "RECOVERYXLOG")
        assert got.code == 0, got.stderr
        assert sha256_file(dest / "RECOVERYXLOG") == sha256_file(site.cluster.datadir / "pg_wal" / names[1])
        assert (site.pusher_pid() is not None) == async_


@pytest.mark.parametrize(("store", "async_"), [("seaweedfs", True), ("moto", False)],
                         ids=["seaweedfs-async", "moto-sync"])
def test_archives_to_s3(request: pytest.FixtureRequest, store: str, async_: bool) -> None:
    encrypted = store == "seaweedfs"
    with archiving_site(require_binaries(15), request, store=store, wal={**QUICK_WAL, "async": async_},
                        encrypted=encrypted) as site:
        if store == "moto":
            # Registered first by a backup, which records no segment size: the first push adds it beside the WAL.
            sysid = str(site.sql("SELECT system_identifier FROM pg_control_system()")[0][0])
            with open_repository(load_config(site.config)) as repo:
                repo.register_source(SOURCE, {"kind": "postgres", "system_identifier": sysid, "major": 15})
        names = [site.switch() for _ in range(3)]
        site.wait_archived(names[-1])
        assert set(names) <= set(site.wal_keys())
        if store == "moto":
            recorded = json.loads(site.storage().get_bytes(f"{SOURCE}/wal/segment_size.json"))
            assert recorded == {"wal_segment_size": SEGMENT}
            assert "wal_segment_size" not in json.loads(site.storage().get_bytes(f"{SOURCE}/source.json"))
        verify = site.cli("wal", "verify", "-o", "json")
        assert verify.code == 0, verify.stderr
        assert json.loads(verify.stdout)[0]["mode"] == "full"
        if encrypted:
            assert all(key.endswith(".zst.age") for key in site.wal_keys().values())
            dest = site.root / "fetched"
            dest.mkdir()
            chown_to_postgres(dest)
            got = site.fetch(names[0], dest / "RECOVERYXLOG")
            assert got.code == 0, got.stderr
            assert sha256_file(dest / "RECOVERYXLOG") == sha256_file(site.cluster.datadir / "pg_wal" / names[0])


def test_non_default_segment_size(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request, initdb_args=("--wal-segsize=1",)) as site:
        names = [site.switch(rows=10) for _ in range(3)]
        site.wait_archived(names[-1])
        registered = json.loads(site.storage().get_bytes(f"{SOURCE}/source.json"))
        assert registered["wal_segment_size"] == 1024**2
        verify = site.cli("wal", "verify")
        assert verify.code == 0, verify.stderr + verify.stdout


def test_pushes_are_idempotent_and_conflicts_named(pg_cluster: ScratchCluster,
                                                   request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        name = site.switch()
        site.wait_archived(name)
        copy = site.segment_copy(name)
        again = site.push(copy)
        assert again.code == 0, again.stderr

        original = sha256_file(copy)
        data = bytearray(copy.read_bytes())
        data[5000] ^= 0xFF
        copy.write_bytes(bytes(data))
        changed = sha256_file(copy)
        refused = site.push(copy)
        assert refused.code == 1
        assert original in refused.error_line and changed in refused.error_line

        # A segment of another system (the session's cluster: another initdb, maybe another major).
        with pg_cluster.connect() as conn:
            conn.execute("SELECT pg_logical_emit_message(false, 'test', 'x')")
            other = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        foreign = site.root / "foreign" / other
        foreign.parent.mkdir()
        shutil.copy(pg_cluster.datadir / "pg_wal" / other, foreign)
        chown_to_postgres(foreign.parent)
        alien = site.push(foreign)
        assert alien.code == 1 and "system" in alien.error_line
        assert f"wal new-epoch {SOURCE}" in alien.error_line

        for bad in ("notwal", "000000000000000000000001", "00000001000000000000001g", "000000010000000000000001.x"):
            path = site.root / "copies" / bad
            path.write_bytes(b"x" * 100)
            started = time.monotonic()
            result = site.push(path)
            assert result.code == 1, result
            assert "refusing" in result.error_line or "not a WAL file name" in result.error_line
            assert time.monotonic() - started < 5
        assert set(site.wal_keys()) == {name}


# --- faults: killed commands, killed and stuck pushers ------------------------------------------------


class GateProxy(FaultProxy):
    """Holds uploads of WAL objects while the gate is closed; on release, drops them (never forwarded)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()

    def relay(self, handler: Any) -> None:
        if handler.command == "PUT" and "/wal/" in handler.path and not self.gate.is_set():
            self.held.set()
            self.gate.wait(120)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.close()
            return
        super().relay(handler)


@pytest.fixture
def gate(moto_endpoint: S3Endpoint) -> Iterator[GateProxy]:
    proxy = GateProxy(moto_endpoint.url)
    yield proxy
    proxy.gate.set()
    proxy.close()


def _ready(site: Site, name: str) -> bool:
    return (site.cluster.datadir / "pg_wal" / "archive_status" / f"{name}.ready").exists()


def test_killed_wal_push_never_reports_success(request: pytest.FixtureRequest, gate: GateProxy) -> None:
    with archiving_site(require_binaries(15), request, store="moto", wal={**QUICK_WAL, "async": False},
                        endpoint_url=gate.url) as site:
        gate.gate.clear()
        name = site.switch()
        assert gate.held.wait(60), site.cluster._read_log()[-2000:]
        pids = wal_push_processes(site.config)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        assert site.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] != name
        assert _ready(site, name) and name not in site.wal_keys()
        gate.gate.set()  # the held upload is dropped; PostgreSQL's retry must store the segment
        site.wait_archived(name, timeout=90)
        key = site.wal_keys()[name]
        assert sha256_file(site.cluster.datadir / "pg_wal" / name) in key


def test_pusher_killed_or_stuck_the_command_archives_itself(request: pytest.FixtureRequest,
                                                            gate: GateProxy) -> None:
    with archiving_site(require_binaries(15), request, store="moto", endpoint_url=gate.url,
                        wal={**QUICK_WAL, "timeout": 3}) as site:
        first = site.switch()
        site.wait_archived(first)
        pusher = site.pusher_pid()
        assert pusher is not None

        # Killed mid-upload: the waiting command notices, stores its own segment, starts a new pusher.
        gate.gate.clear()
        gate.held.clear()
        name = site.switch()
        assert gate.held.wait(60)
        os.kill(pusher, signal.SIGKILL)
        time.sleep(0.5)
        gate.gate.set()
        site.wait_archived(name, timeout=60)
        assert name in site.wal_keys()
        assert "doing " in site.cluster._read_log() and "in this process" in site.cluster._read_log()
        deadline = time.monotonic() + 20
        while site.pusher_pid() in (None, pusher) and time.monotonic() < deadline:
            time.sleep(0.1)
        restarted = site.pusher_pid()
        assert restarted not in (None, pusher)

        # Stuck (stopped): after [wal] timeout without a heartbeat, the command kills it by its pid and a new
        # pusher serves (test_faults_pusher.py checks the replacement itself).
        site.switch()  # let the new pusher serve once
        os.kill(restarted, signal.SIGSTOP)
        try:
            started = time.monotonic()
            name = site.switch()
            site.wait_archived(name, timeout=60)
            assert time.monotonic() - started < 30
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(restarted, signal.SIGCONT)
        assert name in site.wal_keys()

        # Absent and cannot start (its lock is held): after a short wait the command pushes by itself.
        restarted = site.pusher_pid()
        assert restarted is not None
        os.kill(restarted, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(restarted) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(restarted)
        lock = os.open(site.spool / "pusher.lock", os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            name = site.switch()
            site.wait_archived(name, timeout=60)
            assert name in site.wal_keys() and site.pusher_pid() in (None, restarted)
        finally:
            os.close(lock)


# --- fetching and recovery -------------------------------------------------------------------------------


def test_recovery_fetches_through_restore_command(pg_binaries: PgBinaries, request: pytest.FixtureRequest) -> None:
    with archiving_site(pg_binaries, request) as site:
        site.sql("CREATE TABLE marks (batch text)")
        site.sql("INSERT INTO marks VALUES ('before')")
        base = site.root / "restored"
        subprocess.run([pg_binaries.path("pg_basebackup"), "-h", "127.0.0.1", "-p", str(site.cluster.port), "-U",
                        "postgres", "-D", str(base), "-X", "none", "-c", "fast"], check=True, capture_output=True)
        site.sql("INSERT INTO marks VALUES ('after')")
        for _ in range(4):
            last = site.switch(rows=20000)
        site.wait_archived(last)
        (base / "recovery.signal").touch()
        restored = ScratchCluster.adopt(site.cluster.binaries, base, settings={
            "restore_command": restore_command(site.config, SOURCE), "archive_mode": "on",
            "archive_command": archive_command(site.config, SOURCE), "wal_level": "replica",
        })
        site.extra.append(restored)
        restored.start(timeout=120)
        deadline = time.monotonic() + 60
        with restored.connect() as conn:
            while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert [r[0] for r in conn.execute("SELECT batch FROM marks ORDER BY 1")] == ["after", "before"]
            timeline = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
            conn.execute("INSERT INTO marks VALUES ('timeline 2')")
            on_tli2 = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        assert timeline == 2 and on_tli2.startswith("00000002")
        assert "restored log file" in restored._read_log()
        # Recovery asked for segments one by one; the pusher had fetched the following ones ahead.
        fetched = [json.loads(line) for line in site.pusher_log().splitlines() if '"fetched"' in line]
        assert any(event["priority"] > 0 for event in fetched), site.pusher_log()
        # The promoted copy archives timeline 2 into the same source: its history file comes back whole.
        deadline = time.monotonic() + 60
        while not {"00000002.history", on_tli2} <= set(site.wal_keys()) and time.monotonic() < deadline:
            time.sleep(0.2)
        verify = site.cli("wal", "verify", "-o", "json")
        assert verify.code == 0, verify.stdout + verify.stderr
        report = json.loads(verify.stdout)[0]
        assert report["timelines"] == [1, 2] and report["end"] == on_tli2
        dest = site.root / "fetched"
        dest.mkdir()
        chown_to_postgres(dest)
        got = site.fetch("00000002.history", dest / "RECOVERYHISTORY")
        assert got.code == 0, got.stderr
        assert (dest / "RECOVERYHISTORY").read_bytes() == (base / "pg_wal" / "00000002.history").read_bytes()
        assert parse_history((dest / "RECOVERYHISTORY").read_text(), 2)[0][0] == 1


def test_fetch_missing_exits_1_at_once_and_unreachable_above_125(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        name = site.switch()
        site.wait_archived(name)
        dest = site.root / "fetched"
        dest.mkdir()
        chown_to_postgres(dest)
        for missing in ("0000000100000000000000F0", "00000009.history"):
            started = time.monotonic()
            result = site.fetch(missing, dest / "x")
            assert result.code == 1, result.stderr
            assert time.monotonic() - started < 3
            assert not (dest / "x").exists()

        dead = site.root / "dead.toml"
        write_toml(dead, {
            "repository": {"type": "s3", "bucket": "nowhere", "endpoint_url": f"http://127.0.0.1:{free_port()}",
                           "region": "us-east-1", "addressing_style": "path", "max_attempts": 2,
                           "credentials_file": str(site.root / "dead-credentials")},
            "wal": {"spool_dir": str(site.root / "dead-spool"), "timeout": 2},
            "sources": {SOURCE: {"kind": "postgres"}},
        })
        (site.root / "dead-credentials").write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
        chown_to_postgres(site.root)
        command = site.command("fetch", name, str(dest / "y"))
        command[command.index("--config") + 1] = str(dead)
        unreachable = as_postgres(command)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((site.root / "dead-spool" / SOURCE / "pusher.pid").read_text()), signal.SIGTERM)
        assert unreachable.code > 125, unreachable.stderr
        assert "cannot reach" in unreachable.stderr
        assert not (dest / "y").exists()


# --- status, verify, check, pg-settings ----------------------------------------------------------------------


def test_status_and_verify_report_a_gap(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        first = site.switch()
        site.wait_archived(first)
        ok = site.cli("wal", "verify")
        assert ok.code == 0 and "from the oldest segment" in ok.stdout, ok.stderr + ok.stdout
        backup = site.cli("backup", SOURCE, "--type", "full", "-o", "json")
        assert backup.code == 0, backup.stderr
        start = json.loads(site.cli("show", json.loads(backup.stdout)["id"], "-o", "json").stdout)["extra"]["start_wal"]
        names = [site.switch() for _ in range(5)]
        site.wait_archived(names[-1])
        ok = site.cli("wal", "verify", "-o", "json")
        assert ok.code == 0, ok.stderr + ok.stdout
        report = json.loads(ok.stdout)[0]
        assert report["mode"] == "full" and report["start"] == start and report["end"] == names[-1]
        assert report["start_from"] == f"backup {json.loads(backup.stdout)['id']}"

        victim = names[2]
        site.storage().delete([site.wal_keys()[victim]])
        status = json.loads(site.cli("wal", "status", "-o", "json").stdout)
        assert status[0]["gaps"] == [{"from": victim, "to": victim, "missing": 1}]
        assert status[0]["newest_age_seconds"] is not None and status[0]["newest_age_seconds"] < 600
        table = site.cli("wal", "status")
        assert victim in table.stdout and names[-1] in table.stdout
        broken = site.cli("wal", "verify", "-o", "json")
        assert broken.code == 1 and victim in broken.error_line
        assert any(victim in p for p in json.loads(broken.stdout)[0]["problems"])


def test_wal_check_and_pg_settings(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(18), request) as site:
        check = site.cli("wal", "check", "-o", "json")
        assert check.code == 0, check.stderr
        result = json.loads(check.stdout)[0]
        assert result["segment"] in site.wal_keys() and result["seconds"] < 60

        settings = site.cli("pg-settings")
        assert settings.code == 0, settings.stderr
        lines = dict(line.split(" = ", 1) for line in settings.stdout.splitlines() if " = " in line
                     and not line.startswith("#"))
        assert lines["archive_mode"] == "on"
        assert lines["wal_level"].startswith("replica")
        assert lines["archive_command"] == conf_quote(archive_command(site.config, SOURCE, str(site.spool)))
        assert lines["restore_command"] == conf_quote(restore_command(site.config, SOURCE))
        assert "archive_timeout" in lines
        command = shlex.split(archive_command(site.config, SOURCE))
        assert os.path.isabs(command[0]) and str(site.config) in command and "--source" in command
        assert "WARNING" not in settings.stdout  # pg-settings ran the command as postgres: it works

        # A config the server's user cannot read: pg-settings tries the command as that user and says so.
        before = site.config.stat()
        os.chown(site.config, 0, 0)
        site.config.chmod(0o600)
        try:
            unreadable = site.cli("pg-settings")
        finally:
            os.chown(site.config, before.st_uid, before.st_gid)
            site.config.chmod(before.st_mode)
        assert f"# WARNING: the server's OS user postgres cannot read {site.config}" in unreadable.stdout
