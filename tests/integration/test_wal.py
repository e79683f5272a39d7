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
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backupctl.core.config import load_config, parse_config
from backupctl.postgres.cluster import PgBinaries, ScratchCluster
from backupctl.repo.repository import open_repository
from backupctl.storage import open_storage
from backupctl.wal import archive as wal
from tests.support.cli import Result, cli_env, run_cli
from tests.support.config import write_toml
from tests.support.pg_fixtures import require_binaries
from tests.support.s3_servers import FaultProxy, S3Endpoint, free_port

SOURCE = "main"
SEGMENT = 16 * 1024**2


# --- sites: a cluster archiving into a repository as the postgres user ------------------------------


def _chown_tree(path: Path) -> None:
    subprocess.run(["chown", "-R", "postgres:postgres", str(path)], check=True)


def as_postgres(argv: list[str], cwd: Path | str = "/", timeout: float = 120) -> Result:
    proc = subprocess.run(argv, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout,
                          user="postgres", group="postgres", extra_groups=[], check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Site:
    """A cluster, its config and repository; everything the server touches belongs to postgres."""

    root: Path
    config: Path
    repository: dict[str, Any]
    cluster: ScratchCluster
    extra: list[ScratchCluster] = field(default_factory=list)

    @property
    def spool(self) -> Path:
        return self.root / "spool" / SOURCE

    def storage(self) -> Any:
        return open_storage(parse_config({"repository": self.repository}, self.config).repository)

    def cli(self, *args: str, timeout: float = 120) -> Result:
        return run_cli(self.config, *args, timeout=timeout)

    def command(self, verb: str, *args: str) -> list[str]:
        """The fast-path command line as PostgreSQL runs it (what pg-settings prints)."""
        line = wal.archive_command(self.config, SOURCE) if verb == "push" else wal.restore_command(self.config, SOURCE)
        words = shlex.split(line)
        placeholders = [i for i, w in enumerate(words) if w in ("%p", "%f")]
        return words[: placeholders[0]] + list(args)

    def push(self, path: Path | str, cwd: Path | str = "/") -> Result:
        return as_postgres(self.command("push", str(path)), cwd=cwd)

    def fetch(self, name: str, dest: Path | str) -> Result:
        return as_postgres(self.command("fetch", name, str(dest)))

    def sql(self, query: str) -> Any:
        with self.cluster.connect() as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else None

    def switch(self, rows: int = 2000) -> str:
        """Write something, close the segment; returns its name."""
        with self.cluster.connect() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (id serial, payload text)")
            conn.execute(f"INSERT INTO t (payload) SELECT md5(g::text) FROM generate_series(1, {rows}) g")
            return conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]

    def wait_archived(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            last = self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            if last is not None and last[:24] >= name[:24] and len(last) == 24:
                return
            if time.monotonic() > deadline:
                stats = self.sql("SELECT * FROM pg_stat_archiver")
                pytest.fail(f"{name} not archived in {timeout}s: {stats}\n{self.cluster._read_log()[-3000:]}\n"
                            f"{self.pusher_log()[-3000:]}")
            time.sleep(0.05)

    def pusher_pid(self) -> int | None:
        try:
            return int((self.spool / "pusher.pid").read_text())
        except (OSError, ValueError):
            return None

    def pusher_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.spool / "pusher.log").read_text()
        return ""

    def wal_keys(self) -> dict[str, str]:
        """Archived file name -> key."""
        found = {}
        for info in self.storage().list(f"{SOURCE}/wal/"):
            parsed = wal.parse_key(SOURCE, info.key)
            if parsed is not None:
                found[parsed.name.name] = info.key
        return found

    def stop_pusher(self) -> None:
        pid = self.pusher_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)


def _repository(kind: str, root: Path, request: pytest.FixtureRequest, endpoint_url: str | None = None,
                max_attempts: int = 3) -> dict[str, Any]:
    if kind == "local":
        return {"type": "local", "path": str(root / "repo")}
    endpoint: S3Endpoint = request.getfixturevalue(f"{kind}_endpoint")
    credentials = root / "aws-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {endpoint.access_key}\n"
                           f"aws_secret_access_key = {endpoint.secret_key}\n")
    return {"type": "s3", "bucket": endpoint.new_bucket(), "prefix": "wal-tests", "region": endpoint.region,
            "endpoint_url": endpoint_url or endpoint.url, "addressing_style": "path",
            "credentials_file": str(credentials), "max_attempts": max_attempts}


@contextlib.contextmanager
def make_site(binaries: PgBinaries, request: pytest.FixtureRequest, *, store: str = "local",
              async_: bool = True, wal_extra: dict[str, Any] | None = None, initdb_args: tuple[str, ...] = (),
              endpoint_url: str | None = None, encrypted: bool = False) -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="backupctl-wal-", dir="/tmp"))
    os.chmod(root, 0o755)
    config = root / "backupctl.toml"
    cluster = ScratchCluster(binaries, initdb_args=initdb_args, settings={
        "wal_level": "replica", "archive_mode": "on", "archive_command": wal.archive_command(config, SOURCE),
    })
    site = Site(root, config, {}, cluster)
    try:
        site.repository = _repository(store, root, request, endpoint_url)
        cluster.init()
        cluster.start()
        encryption = {}
        if encrypted:
            key = root / "age.key"
            recipient = run_cli(None, "keygen", "--output", str(key)).stdout.strip()
            encryption = {"encryption": {"recipients": [recipient], "identity_file": str(key)}}
        write_toml(config, {
            "repository": site.repository,
            **encryption,
            "wal": {"async": async_, "spool_dir": str(root / "spool"), "timeout": 10, "idle_exit": 60,
                    **(wal_extra or {})},
            "sources": {SOURCE: {"kind": "postgres", "host": "127.0.0.1", "port": cluster.port,
                                 "user": "postgres", "pgdata": str(cluster.datadir),
                                 "bindir": str(cluster.binaries.bindir)}},
        })
        _chown_tree(root)
        init = run_cli(config, "init")
        assert init.code == 0, init.stderr
        _chown_tree(root)
        yield site
    finally:
        site.stop_pusher()
        for other in [cluster, *site.extra]:
            other.remove()
        shutil.rmtree(root, ignore_errors=True)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pg_wal_copy(site: Site, name: str) -> Path:
    """A postgres-owned copy of an archived segment, to push by hand."""
    folder = site.root / "copies"
    folder.mkdir(exist_ok=True)
    copy = folder / name
    shutil.copy(site.cluster.datadir / "pg_wal" / name, copy)
    _chown_tree(folder)
    return copy


# --- names, positions, history files ---------------------------------------------------------------


def test_names_and_positions() -> None:
    name = wal.parse_wal_name("0000000200000001000000A3")
    assert (name.timeline, name.log, name.seg, name.kind) == (2, 1, 0xA3, "segment")
    assert name.segno(SEGMENT) == 0x1A3 and name.directory == "0000000200000001"
    assert wal.segment_name(2, 0x1A3, SEGMENT) == "0000000200000001000000A3"
    assert wal.segment_name(1, 0x1001, 1024**2) == "000000010000000100000001"  # 4096 segments per log
    assert wal.parse_lsn("1/A3000028") == 0x1A3000028 and wal.format_lsn(0x1A3000028) == "1/A3000028"
    assert wal.segment_of_lsn(3, wal.parse_lsn("0/5000000"), SEGMENT) == "000000030000000000000005"
    assert wal.lsn_to_segno(wal.segno_to_lsn(77, SEGMENT) + 5, SEGMENT) == 77
    assert wal.parse_wal_name("00000003.history").kind == "history"
    assert wal.parse_wal_name("000000010000000000000002.00000028.backup").offset == 0x28
    assert wal.parse_wal_name("000000010000000000000002.partial").segment == "000000010000000000000002"
    for bad in ("foo", "000000000000000000000001", "00000001000000000000000g", "00000000.history",
                "000000010000000000001000", "000000010000000000000001.gz", "../000000010000000000000001"):
        with pytest.raises(wal.WalNameError):
            wal.parse_wal_name(bad)


def test_history_and_keys() -> None:
    text = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n"
    history = wal.parse_history(text, 3)
    assert history == [(1, 0x3000158), (2, 0x5000000)]
    assert wal.timeline_ranges(history, 3, SEGMENT) == [(1, 0, 2), (2, 3, 4), (3, 5, None)]
    key = "main/wal/0000000100000000/000000010000000000000003-" + "ab" * 32 + ".zst.age"
    parsed = wal.parse_key("main", key)
    assert parsed is not None and parsed.compression == "zstd" and parsed.encrypted
    assert parsed.name.name == "000000010000000000000003" and parsed.sha256 == "ab" * 32
    assert wal.parse_key("main", "main/wal/00000002.history-" + "cd" * 32) is not None
    assert wal.parse_key("main", "main/wal/0000000100000000/00000002.history-" + "cd" * 32) is None
    assert wal.parse_key("main", "main/wal/segment_size.json") is None


# --- archiving -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("async_", [True, False], ids=["async", "sync"])
def test_archives_from_the_first_segment(pg_binaries: PgBinaries, request: pytest.FixtureRequest,
                                         async_: bool) -> None:
    # Synchronous, and without prefetch: no resident process at all, every fetch in-process.
    with make_site(pg_binaries, request, async_=async_, wal_extra={} if async_ else {"prefetch": 0}) as site:
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
        _chown_tree(dest)
        got = site.fetch(names[1], dest / "RECOVERYXLOG")
        assert got.code == 0, got.stderr
        assert sha256_file(dest / "RECOVERYXLOG") == sha256_file(site.cluster.datadir / "pg_wal" / names[1])
        assert (site.pusher_pid() is not None) == async_


@pytest.mark.parametrize(("store", "async_"), [("seaweedfs", True), ("moto", False)],
                         ids=["seaweedfs-async", "moto-sync"])
def test_archives_to_s3(request: pytest.FixtureRequest, store: str, async_: bool) -> None:
    encrypted = store == "seaweedfs"
    with make_site(require_binaries(15), request, store=store, async_=async_, encrypted=encrypted) as site:
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
            _chown_tree(dest)
            got = site.fetch(names[0], dest / "RECOVERYXLOG")
            assert got.code == 0, got.stderr
            assert sha256_file(dest / "RECOVERYXLOG") == sha256_file(site.cluster.datadir / "pg_wal" / names[0])


def test_non_default_segment_size(request: pytest.FixtureRequest) -> None:
    with make_site(require_binaries(15), request, initdb_args=("--wal-segsize=1",)) as site:
        names = [site.switch(rows=10) for _ in range(3)]
        site.wait_archived(names[-1])
        registered = json.loads(site.storage().get_bytes(f"{SOURCE}/source.json"))
        assert registered["wal_segment_size"] == 1024**2
        verify = site.cli("wal", "verify")
        assert verify.code == 0, verify.stderr + verify.stdout


def test_pushes_are_idempotent_and_conflicts_named(pg_cluster: ScratchCluster,
                                                   request: pytest.FixtureRequest) -> None:
    with make_site(require_binaries(15), request) as site:
        name = site.switch()
        site.wait_archived(name)
        copy = _pg_wal_copy(site, name)
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
        _chown_tree(foreign.parent)
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


def _wal_push_processes(config: Path) -> list[int]:
    """Pids of the archive_command processes of this site: this interpreter running wal-push with its config.

    (The postmaster's own command line holds the archive_command too: argv is matched word by word.)
    """
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if argv[0] == sys.executable and "wal-push" in argv and str(config) in argv:
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def gate(moto_endpoint: S3Endpoint) -> Iterator[GateProxy]:
    proxy = GateProxy(moto_endpoint.url)
    yield proxy
    proxy.gate.set()
    proxy.close()


def _ready(site: Site, name: str) -> bool:
    return (site.cluster.datadir / "pg_wal" / "archive_status" / f"{name}.ready").exists()


def test_killed_wal_push_never_reports_success(request: pytest.FixtureRequest, gate: GateProxy) -> None:
    with make_site(require_binaries(15), request, store="moto", async_=False, endpoint_url=gate.url) as site:
        gate.gate.clear()
        name = site.switch()
        assert gate.held.wait(60), site.cluster._read_log()[-2000:]
        pids = _wal_push_processes(site.config)
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
    with make_site(require_binaries(15), request, store="moto", endpoint_url=gate.url,
                   wal_extra={"timeout": 3}) as site:
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
        while _alive(restarted) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(restarted)
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
    with make_site(pg_binaries, request) as site:
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
            "restore_command": wal.restore_command(site.config, SOURCE), "archive_mode": "on",
            "archive_command": wal.archive_command(site.config, SOURCE), "wal_level": "replica",
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
        _chown_tree(dest)
        got = site.fetch("00000002.history", dest / "RECOVERYHISTORY")
        assert got.code == 0, got.stderr
        assert (dest / "RECOVERYHISTORY").read_bytes() == (base / "pg_wal" / "00000002.history").read_bytes()
        assert wal.parse_history((dest / "RECOVERYHISTORY").read_text(), 2)[0][0] == 1


def test_fetch_missing_exits_1_at_once_and_unreachable_above_125(request: pytest.FixtureRequest) -> None:
    with make_site(require_binaries(15), request) as site:
        name = site.switch()
        site.wait_archived(name)
        dest = site.root / "fetched"
        dest.mkdir()
        _chown_tree(dest)
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
        _chown_tree(site.root)
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
    with make_site(require_binaries(15), request) as site:
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
    with make_site(require_binaries(18), request) as site:
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
        assert lines["archive_command"] == wal.conf_quote(wal.archive_command(site.config, SOURCE))
        assert lines["restore_command"] == wal.conf_quote(wal.restore_command(site.config, SOURCE))
        assert "archive_timeout" in lines
        command = shlex.split(wal.archive_command(site.config, SOURCE))
        assert os.path.isabs(command[0]) and str(site.config) in command and "--source" in command
