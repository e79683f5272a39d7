"""WAL drain rate: how fast an archiver catches up with a backlog of ready segments.

One PostgreSQL 15 cluster (pgBackRest 2.45 from Debian supports up to 15) runs with ``archive_mode = on``
and an empty ``archive_command``, so finished segments pile up as ``.ready``. For each contestant the
bench writes a backlog of ``--segments`` full segments of fresh data (rows of hex text: compressible
about 2x, like real tables), then sets the contestant's archive_command, reloads, and times until
``pg_stat_archiver.last_archived_wal`` reaches the last segment of the backlog.

Contestants, all against the same machine and the same stores in one run:

- backupctl async (the resident pusher, ``[wal] push_jobs``) and sync (``async = false``): local directory
  and SeaweedFS (S3 over HTTPS with a self-signed certificate, the same endpoint pgBackRest uses);
- pgBackRest archive-push, async (``process-max=2``, the setting TESTBED.md quotes) and sync.

Both tools compress with zstd (pgBackRest level 3, backupctl its default level 1) and do not encrypt.
Run as root (servers run as ``postgres``)::

    .venv/bin/python -m bench.wal_drain [--segments 60] [--rounds 1] [--only backupctl-async-local,...]
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backupctl
from backupctl.postgres.binaries import find_binaries
from backupctl.postgres.cluster import ScratchCluster
from backupctl.wal.conf import archive_command, conf_quote

PG_MAJOR = 15
STANZA = "bench"
WEED_READY_TIMEOUT = 30.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_toml(path: Path, document: dict[str, Any]) -> None:
    lines: list[str] = []
    for section, table in document.items():
        if section == "sources":
            for name, source in table.items():
                lines.append(f"[sources.{name}]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in source.items())
        else:
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")


def chown_tree(path: Path) -> None:
    subprocess.run(["chown", "-R", "postgres:postgres", str(path)], check=True)


def as_postgres(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, user="postgres", group="postgres", extra_groups=[], cwd="/", text=True,
                          capture_output=True, **kwargs)


# --- SeaweedFS with HTTP and HTTPS -----------------------------------------------------------------


@dataclass
class Weed:
    http_url: str
    https_url: str
    access_key: str
    secret_key: str
    https_port: int

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.http_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")


def _free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


@contextlib.contextmanager
def seaweedfs(root: Path) -> Iterator[Weed]:
    """``weed mini`` serving S3 on HTTP and on HTTPS (self-signed), for pgBackRest's TLS-only driver."""
    directory = root / "weed"
    (directory / "data").mkdir(parents=True)
    (directory / "logs").mkdir()
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True)
    ports = {name: _free_port() for name in ("s3", "master", "volume", "filer", "admin")}
    https_port = _free_port()
    access, secret = "bench-access", f"bench-secret-{uuid.uuid4().hex}"
    weed = str(Path(sys.executable).parent / "weed")
    command = [
        weed, f"-logdir={directory / 'logs'}", "mini", f"-dir={directory / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", *(f"-{name}.port={port}" for name, port in ports.items()),
        f"-s3.port.https={https_port}", f"-s3.cert.file={cert}", f"-s3.key.file={key}",
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.localSocket={directory / 's3.sock'}", f"-filer.localSocket={directory / 'filer.sock'}",
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(directory), "AWS_ACCESS_KEY_ID": access,
           "AWS_SECRET_ACCESS_KEY": secret}
    with open(directory / "weed.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=directory)
    endpoint = Weed(f"http://127.0.0.1:{ports['s3']}", f"https://127.0.0.1:{https_port}", access, secret,
                    https_port)
    try:
        deadline = time.monotonic() + WEED_READY_TIMEOUT
        while True:
            try:
                endpoint.client().list_buckets()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("SeaweedFS did not start: " +
                                       (directory / "weed.log").read_text(errors="replace")[-2000:]) from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.kill()
        process.wait()
        for name, port in ports.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + 10000}.sock").unlink(missing_ok=True)


# --- the cluster and its backlog -------------------------------------------------------------------


class Bench:
    def __init__(self, root: Path, segments: int, data: str) -> None:
        self.root = root
        self.segments = segments
        self.data = data
        binaries = find_binaries(PG_MAJOR, need="postgres")
        self.pgbench = binaries.path("pgbench")
        self.cluster = ScratchCluster(binaries, settings={
            # No archive_command here: -c options would override ALTER SYSTEM, which the bench uses.
            "wal_level": "replica", "archive_mode": "on", "max_wal_size": "8GB",
            "checkpoint_timeout": "1h", "shared_buffers": "256MB", "synchronous_commit": "off",
        })
        self.cluster.init()
        self.cluster.start()
        with self.cluster.connect() as conn:
            conn.execute("CREATE TABLE filler (id bigserial, a text, b text, c text)")

    def sql(self, query: str) -> Any:
        with self.cluster.connect() as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else None

    def backlog(self) -> str:
        """Write ``segments`` full segments of new data and close them; returns the last one's name."""
        with self.cluster.connect() as conn:
            first = conn.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
            start = int(first[8:16], 16) * 256 + int(first[16:], 16)
            while True:
                if self.data == "text":
                    conn.execute(
                        "INSERT INTO filler (a, b, c) SELECT md5(random()::text) || md5(g::text), "
                        "md5(random()::text) || md5(random()::text), md5(g::text) FROM generate_series(1, 40000) g"
                    )
                else:  # pgbench's own tables, rebuilt: COPY, index builds, vacuum (as `pgbench -i` writes them)
                    subprocess.run([self.pgbench, "-i", "-q", "-s", "5", "-h", "127.0.0.1", "-p",
                                    str(self.cluster.port), "-U", "postgres", "postgres"],
                                   check=True, capture_output=True)
                current = conn.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
                if int(current[8:16], 16) * 256 + int(current[16:], 16) - start >= self.segments:
                    break
            last = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        # Every segment up to ``last`` must be marked ready before the clock starts.
        status = self.cluster.datadir / "pg_wal" / "archive_status"
        deadline = time.monotonic() + 30
        while not (status / f"{last}.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return last

    def drain(self, command: str, last: str) -> tuple[float, int]:
        """Set ``command``, reload, and time until the archiver reports ``last`` archived."""
        before = self.sql("SELECT archived_count FROM pg_stat_archiver")[0][0]
        ready = len([p for p in (self.cluster.datadir / "pg_wal" / "archive_status").iterdir()
                     if p.name.endswith(".ready")])
        with self.cluster.connect() as conn:
            conn.execute(f"ALTER SYSTEM SET archive_command = {conf_quote(command)}")
            started = time.monotonic()
            conn.execute("SELECT pg_reload_conf()")
            deadline = started + 600
            while True:
                row = conn.execute("SELECT last_archived_wal, archived_count, failed_count, last_failed_wal "
                                   "FROM pg_stat_archiver").fetchone()
                if row[0] is not None and row[0] >= last and len(row[0]) == 24:
                    elapsed = time.monotonic() - started
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"archiving stalled: {row}; server log:\n{self.cluster._read_log()[-3000:]}")
                time.sleep(0.01)
            conn.execute("ALTER SYSTEM SET archive_command = ''")
            conn.execute("SELECT pg_reload_conf()")
            failed = row[2]
        archived = row[1] - before
        if failed:
            print(f"  note: {failed} archive_command failures so far (last {row[3]})", file=sys.stderr)
        return elapsed, max(archived, ready)

    def close(self) -> None:
        self.cluster.remove()


# --- contestants -------------------------------------------------------------------------------------


class Contestant:
    name = ""

    def setup(self, bench: Bench) -> str:
        """Prepare a fresh repository; returns the archive_command."""
        raise NotImplementedError

    def teardown(self) -> None:
        pass


class Backupctl(Contestant):
    def __init__(self, async_: bool, store: str, weed: Weed | None, root: Path, jobs: int) -> None:
        self.async_ = async_
        self.store = store
        self.weed = weed
        self.root = root
        self.jobs = jobs
        self.name = f"backupctl {'async' if async_ else 'sync'} ({store})"
        self.dir: Path | None = None

    def setup(self, bench: Bench) -> str:
        self.dir = Path(tempfile.mkdtemp(prefix="backupctl-", dir=self.root))
        config = self.dir / "backupctl.toml"
        if self.store == "local":
            repository: dict[str, Any] = {"type": "local", "path": str(self.dir / "repo")}
        else:
            assert self.weed is not None
            bucket = f"backupctl-{uuid.uuid4().hex[:12]}"
            self.weed.client().create_bucket(Bucket=bucket)
            credentials = self.dir / "aws-credentials"
            credentials.write_text(f"[default]\naws_access_key_id = {self.weed.access_key}\n"
                                   f"aws_secret_access_key = {self.weed.secret_key}\n")
            repository = {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": self.weed.https_url,
                          "addressing_style": "path", "credentials_file": str(credentials), "verify_tls": False}
        write_toml(config, {
            "repository": repository,
            "compression": {"algorithm": "zstd"},
            "wal": {"async": self.async_, "push_jobs": self.jobs, "spool_dir": str(self.dir / "spool")},
            "sources": {"main": {"kind": "postgres", "host": "127.0.0.1", "port": bench.cluster.port,
                                 "user": "postgres"}},
        })
        os.chmod(self.dir, 0o755)
        chown_tree(self.dir)
        result = as_postgres([sys.executable, "-m", "backupctl", "--config", str(config), "init"])
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return archive_command(config, "main")

    def teardown(self) -> None:
        assert self.dir is not None
        pid_file = self.dir / "spool" / "main" / "pusher.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        time.sleep(0.2)
        shutil.rmtree(self.dir, ignore_errors=True)


class PgBackRest(Contestant):
    def __init__(self, async_: bool, store: str, weed: Weed | None, root: Path, process_max: int) -> None:
        self.async_ = async_
        self.store = store
        self.weed = weed
        self.root = root
        self.process_max = process_max
        self.name = f"pgBackRest {'async' if async_ else 'sync'} ({store})"
        self.dir: Path | None = None

    def setup(self, bench: Bench) -> str:
        self.dir = Path(tempfile.mkdtemp(prefix="pgbackrest-", dir=self.root))
        config = self.dir / "pgbackrest.conf"
        lines = [
            "[global]",
            f"spool-path={self.dir / 'spool'}",
            f"lock-path={self.dir / 'lock'}",
            f"log-path={self.dir / 'log'}",
            "log-level-console=warn",
            "log-level-file=info",
            f"archive-async={'y' if self.async_ else 'n'}",
            f"process-max={self.process_max}",
            "compress-type=zst",
            "compress-level=3",
        ]
        if self.store == "local":
            lines.append(f"repo1-path={self.dir / 'repo'}")
        else:
            assert self.weed is not None
            bucket = f"pgbackrest-{uuid.uuid4().hex[:12]}"
            self.weed.client().create_bucket(Bucket=bucket)
            lines += [
                "repo1-type=s3", "repo1-path=/repo", f"repo1-s3-bucket={bucket}", "repo1-s3-endpoint=127.0.0.1",
                f"repo1-storage-port={self.weed.https_port}", "repo1-s3-region=us-east-1",
                f"repo1-s3-key={self.weed.access_key}", f"repo1-s3-key-secret={self.weed.secret_key}",
                "repo1-s3-uri-style=path", "repo1-storage-verify-tls=n",
            ]
        cluster = bench.cluster
        lines += [f"[{STANZA}]", f"pg1-path={cluster.datadir}", f"pg1-port={cluster.port}",
                  f"pg1-socket-path={cluster.socket_dir}", "pg1-user=postgres"]
        config.write_text("\n".join(lines) + "\n")
        os.chmod(self.dir, 0o755)
        chown_tree(self.dir)
        result = as_postgres(["pgbackrest", f"--config={config}", f"--stanza={STANZA}", "stanza-create"])
        if result.returncode != 0:
            raise RuntimeError(f"pgbackrest stanza-create failed: {result.stdout}{result.stderr}")
        return f"pgbackrest --config={config} --stanza={STANZA} archive-push %p"

    def teardown(self) -> None:
        assert self.dir is not None
        time.sleep(0.5)  # let the async process notice the empty queue and exit
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=60)
    parser.add_argument("--data", choices=["pgbench", "text"], default="pgbench",
                        help="pgbench: `pgbench -i` tables (WAL compresses ~10x); text: rows of random hex "
                             "(~2x, so zstd dominates every contestant's CPU)")
    parser.add_argument("--rounds", type=int, default=1, help="backlogs per contestant (the median is shown)")
    parser.add_argument("--push-jobs", type=int, default=4)
    parser.add_argument("--process-max", type=int, default=2, help="pgBackRest async processes")
    parser.add_argument("--only", default="", help="comma-separated contestant names (substring match)")
    parser.add_argument("--no-s3", action="store_true", help="skip SeaweedFS")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("run as root: the PostgreSQL server runs as the postgres user")
    # As `pip install` does: the server's user cannot write __pycache__ here, and a stale cache would make
    # every archive_command compile backupctl's modules again (PYTHONDONTWRITEBYTECODE is common in dev).
    compileall.compile_dir(Path(backupctl.__file__).parent, quiet=1)
    root = Path(tempfile.mkdtemp(prefix="bench-wal-drain-", dir="/tmp"))
    os.chmod(root, 0o755)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        weed = None if args.no_s3 else stack.enter_context(seaweedfs(root))
        bench = Bench(root, args.segments, args.data)
        stack.callback(bench.close)
        stores = ["local"] + ([] if weed is None else ["seaweedfs"])
        contestants: list[Contestant] = []
        for store in stores:
            contestants += [
                Backupctl(True, store, weed, root, args.push_jobs),
                Backupctl(False, store, weed, root, args.push_jobs),
                PgBackRest(True, store, weed, root, args.process_max),
                PgBackRest(False, store, weed, root, args.process_max),
            ]
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        contestants = [c for c in contestants if not wanted or any(w in c.name for w in wanted)]
        bench.drain(":", bench.backlog())  # warm up: the first segments, caches, the archiver
        rates: dict[str, list[float]] = {c.name: [] for c in contestants}
        # Round-robin, so that load from elsewhere on the machine falls on every contestant alike.
        for _round in range(args.rounds):
            for contestant in contestants:
                last = bench.backlog()
                command = contestant.setup(bench)
                try:
                    seconds, count = bench.drain(command, last)
                finally:
                    contestant.teardown()
                rates[contestant.name].append(count / seconds)
                print(f"{contestant.name:32} {count} segments in {seconds:6.2f}s = {count / seconds:6.1f} seg/s",
                      file=sys.stderr)
        results = [(c.name, rates[c.name], args.segments) for c in contestants]
    print(f"\nWAL drain from a backlog of {args.segments} segments of {args.data} data (PostgreSQL {PG_MAJOR}, "
          f"{os.cpu_count()} cores; median of {args.rounds}):\n")
    print(f"| {'archiver':32} | seg/s (median) | all rounds |")
    print(f"|{'-' * 34}|----------------|------------|")
    for name, values, _count in results:
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"| {name:32} | {statistics.median(values):14.1f} | {runs} |")


if __name__ == "__main__":
    main()
