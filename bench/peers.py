"""Helpers for benchmarks against peer tools: measured children, SeaweedFS over TLS, pgBackRest.

Everything here runs real programs. ``run_tree`` measures a child the way bench/memory.py does (wall time,
``ru_maxrss`` from wait4: the largest single process among the child and the descendants it waited for)
and also samples the whole process tree's resident memory, because a peer that forks workers
(pgBackRest with process-max=2) uses more memory than its largest process shows.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SERVER_USER = "postgres"
GRPC_PORT_OFFSET = 10_000  # SeaweedFS listens for gRPC on each HTTP port + 10000
SEAWEEDFS_START_TIMEOUT = 60.0


class CommandFailed(RuntimeError):
    """A measured command exited non-zero; the message ends with the tail of its stderr."""

    def __init__(self, argv: list[str], code: int, stderr: str) -> None:
        lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
        meaningful = [line for line in lines if not _NOISE.search(line)]
        self.tail = "\n".join(lines[-6:])
        self.last_line = (meaningful or lines or [""])[-1]
        super().__init__(f"`{short_command(argv)}` exited {code}: {self.last_line[-1500:]}")
        self.argv = argv
        self.code = code


_NOISE = re.compile(r"Warning:|warnings\.warn\(")


def short_command(argv: list[str]) -> str:
    """The command as a reader wants it: program name and arguments, without config paths."""
    words, skip = [Path(argv[0]).name], False
    for word in argv[1:]:
        if skip:
            skip = False
        elif word == "--config":
            skip = True
        elif not word.startswith("--config="):
            words.append(word)
    return " ".join(words)


# --- running things as the server's user, measured -----------------------------------------------------


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments that run a program as ``user`` (we are root), with that user's group only."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def chown(path: Path, user: str = SERVER_USER) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def make_dir(path: Path, user: str = SERVER_USER, mode: int = 0o750) -> Path:
    """A directory owned by ``user`` (as the server's user must write repositories, spools, restores)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    chown(path, user)
    path.chmod(mode)
    return path


def write_file(path: Path, text: str, user: str = SERVER_USER, mode: int = 0o640) -> Path:
    path.write_text(text)
    chown(path, user)
    path.chmod(mode)
    return path


def clean_env(user: str | None = None) -> dict[str, str]:
    """The bare environment archive_command and cron give: no AWS_*, no PG*, no BACKUPCTL_CONFIG."""
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "TMPDIR")}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = pwd.getpwnam(user).pw_dir if user else os.environ.get("HOME", "/root")
    return env


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident bytes) for every process we can read."""
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
            with open(f"/proc/{name}/statm", "rb") as handle:
                resident = int(handle.read().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        table[int(name)] = (int(fields[1]), resident)
    return table


def tree_pids(root: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """``root`` and all its descendants."""
    table = _process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants; keeps the peak."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.root = root
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            table = _process_table()
            pids = tree_pids(self.root, table)
            total = sum(table[pid][1] for pid in pids)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(pids)
            self.halt.wait(self.interval)

    def finish(self) -> int:
        self.halt.set()
        self.join()
        return self.peak


@dataclass
class Measured:
    seconds: float
    peak_rss_mib: float  # wait4's ru_maxrss: the largest single process of the tree that was waited for
    tree_peak_mib: float  # sampled sum of the tree's RSS every 50 ms (shared pages counted per process)
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)

    def figures(self) -> dict[str, float]:
        return {"seconds": round(self.seconds, 2), "peak_rss_mib": round(self.peak_rss_mib, 1),
                "tree_peak_mib": round(self.tree_peak_mib, 1)}


def run_tree(argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None,
             cwd: str | Path = "/", timeout: float = 3600) -> Measured:
    """Run a child to completion; its wall time, peak RSS and its tree's peak RSS; raise if it fails.

    Output goes to temp files, not pipes: a child that logs a lot must not block on a full pipe
    while we sit in wait4.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        clock = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                **as_user(user))
        sampler = TreeSampler(proc.pid)
        sampler.start()
        killer = threading.Timer(timeout, lambda: _kill_tree(proc.pid))
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted (SIGTERM, ^C): the measured tree must not outlive us
            _kill_tree(proc.pid)
            proc.wait()
            raise
        finally:
            killer.cancel()
            peak = sampler.finish()
        seconds = time.monotonic() - clock
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, stderr or stdout)
    return Measured(seconds, usage.ru_maxrss / 1024, peak / MIB, stdout, stderr)


def run(argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None,
        cwd: str | Path = "/", timeout: float = 600) -> str:
    """Run a setup command; its stdout, or CommandFailed."""
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
                            check=False, **as_user(user))
    if result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stderr or result.stdout)
    return result.stdout


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _kill_tree(root: int) -> None:
    _signal(tree_pids(root), signal.SIGKILL)


def reap_strays(marker: str, grace: float = 5.0) -> list[int]:
    """End processes whose command line names ``marker`` (our work dir): daemons our runs left behind.

    archive_command may start resident helpers (pgBackRest's async archive-push, backupctl's pusher)
    that outlive the server briefly; they were started for this bench, and are ended by pid.
    """
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(name))
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in found):
        time.sleep(0.1)
    _signal(found, signal.SIGKILL)
    return found


# --- SeaweedFS with TLS --------------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """Ports below the usual ephemeral range whose gRPC twins (port + 10000) are free as well."""
    import random

    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, 30_000)
        if port not in ports and _port_is_free(port) and _port_is_free(port + GRPC_PORT_OFFSET):
            ports.append(port)
    return ports


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (pgBackRest's S3 driver speaks only TLS); returns (cert, key)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
    return cert, key


class SeaweedFS:
    """``weed mini`` on 127.0.0.1 serving S3 over HTTPS (self-signed) and plain HTTP at once."""

    def __init__(self, weed: str, directory: Path) -> None:
        self.weed = weed
        self.directory = directory
        self.access_key = "bench-access"
        self.secret_key = f"bench-secret-{uuid.uuid4().hex}"
        self.region = "us-east-1"
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['s3.port.https']}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        cert, key = self_signed_certificate(self.directory)
        names = ("s3", "master", "volume", "filer", "admin", "s3.port.https")
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        command = [
            self.weed, f"-logdir={self.directory / 'logs'}", "mini", f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" for name, port in self.ports.items() if name != "s3.port.https"),
            f"-s3.port.https={self.ports['s3.port.https']}", f"-s3.cert.file={cert}", f"-s3.key.file={key}",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
            f"-s3.localSocket={self.directory / 's3.sock'}", f"-filer.localSocket={self.directory / 'filer.sock'}",
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.directory),
               "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        with open(self.directory / "weed.log", "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.directory, start_new_session=True)
        self._wait_ready()

    def client(self, url: str | None = None) -> Any:
        import boto3
        import botocore.config
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # our own self-signed certificate

        return boto3.client(
            "s3", endpoint_url=url or self.http_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region, verify=False,
            config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=2,
                                          read_timeout=5, s3={"addressing_style": "path"}),
        )

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + SEAWEEDFS_START_TIMEOUT
        clients = [self.client(self.http_url), self.client(self.https_url)]
        while True:
            try:
                for client in clients:
                    client.list_buckets()
                return
            except Exception as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.directory / "weed.log").read_text(errors="replace").splitlines()[-20:]
                    raise RuntimeError(f"SeaweedFS did not answer ({exc}); exit code {self.process.poll()}; "
                                       "its log ends:\n" + "\n".join(log)) from None
            time.sleep(0.2)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stored_bytes(self, bucket: str, prefix: str = "") -> int:
        paginator = self.client().get_paginator("list_objects_v2")
        return sum(obj["Size"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                   for obj in page.get("Contents", []))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # Killed, not terminated: its data is thrown away, and a clean shutdown costs seconds.
            self.process.kill()
            self.process.wait()
        for name, port in self.ports.items():  # its gRPC sockets go to /tmp whatever TMPDIR says
            Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port + GRPC_PORT_OFFSET}.sock").unlink(missing_ok=True)


# --- pgBackRest ----------------------------------------------------------------------------------------


@dataclass
class PgBackRest:
    """One pgBackRest stanza on one repository (local directory or S3), configured in its own file.

    It runs as the server's OS user, like the archive_command that calls it.
    """

    directory: Path  # config, logs, locks, spool
    pgdata: Path
    port: int
    socket_dir: Path
    repo: dict[str, str]  # repo1-* options
    stanza: str = "bench"
    process_max: int = 2
    binary: str = "pgbackrest"

    def __post_init__(self) -> None:
        found = shutil.which(self.binary)
        if found is None:
            raise RuntimeError("pgbackrest is not installed: apt-get install -y pgbackrest")
        self.binary = found
        make_dir(self.directory)
        for sub in ("log", "lock", "spool"):
            make_dir(self.directory / sub)
        config = configparser.ConfigParser(interpolation=None)
        config.optionxform = str  # type: ignore[assignment,method-assign]
        config["global"] = {
            **self.repo,
            "repo1-retention-full": "1000",  # every measured backup is kept; expire still runs, as in use
            "compress-type": "zst",  # level 3 by default, as backupctl's zstd
            "process-max": str(self.process_max),
            "start-fast": "y",
            "log-path": str(self.directory / "log"),
            "lock-path": str(self.directory / "lock"),
            "spool-path": str(self.directory / "spool"),
            "log-level-console": "warn",
            "log-level-stderr": "warn",
            "log-level-file": "info",
        }
        config[self.stanza] = {
            "pg1-path": str(self.pgdata),
            "pg1-port": str(self.port),
            "pg1-socket-path": str(self.socket_dir),
            "pg1-user": "postgres",
        }
        with open(self.config_file, "w") as handle:
            config.write(handle)
        chown(self.config_file)

    @property
    def config_file(self) -> Path:
        return self.directory / "pgbackrest.conf"

    def argv(self, command: str, *options: str) -> list[str]:
        return [self.binary, f"--config={self.config_file}", f"--stanza={self.stanza}", *options, command]

    def run(self, command: str, *options: str) -> str:
        return run(self.argv(command, *options), user=SERVER_USER, env=clean_env(SERVER_USER),
                   cwd=self.directory)

    def measured(self, command: str, *options: str) -> Measured:
        return run_tree(self.argv(command, *options), user=SERVER_USER, env=clean_env(SERVER_USER),
                        cwd=self.directory)

    def archive_command(self, asynchronous: bool) -> str:
        mode = " --archive-async" if asynchronous else ""
        return f"{self.binary} --config={self.config_file} --stanza={self.stanza}{mode} archive-push %p"

    def info(self) -> dict[str, Any]:
        import json

        stanzas = json.loads(self.run("info", "--output=json"))
        return next(s for s in stanzas if s["name"] == self.stanza)

    def last_backup(self) -> dict[str, Any]:
        return self.info()["backup"][-1]
