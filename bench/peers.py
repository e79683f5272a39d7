"""Helpers for benchmarks against peer tools: measured children, SeaweedFS over TLS, pgBackRest.

Everything here runs real programs. ``run_tree`` measures a child: wall time, ``ru_maxrss`` from wait4
(the largest single process among the child and the descendants it waited for), and the whole process
tree's resident memory, sampled, because a peer that forks workers (pgBackRest with process-max=2) uses
more memory than its largest process shows. ``PeakRss`` watches the processes an archive_command starts
(they are the server's children, not ours), and ``CountingProxy`` counts the S3 requests a tool sends.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.s3_servers import (  # the test suite's starter and proxy: one copy for tests and benches
    FaultProxy,
    SeaweedFS,
)

MIB = 1024 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SERVER_USER = "postgres"


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


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_text(values: Any) -> str:
    """A load average triple as the reports print it: "1.9/2.6/2.5"."""
    return "/".join(f"{v:.1f}" for v in values)


def work_directory(stack: ExitStack, name: str, reap: bool = True) -> Path:
    """A fresh /tmp/backupctl-bench-NAME-* the server's user can enter, removed when ``stack`` unwinds.

    With ``reap``, whatever still runs from it (a pusher an archive_command started) is stopped first; a
    bench that must stop other things in between (SeaweedFS) registers ``reap_strays`` itself.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"backupctl-bench-{name}-", dir="/tmp"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    make_dir(workdir, mode=0o755)
    say(f"work directory {workdir}")
    if reap:
        stack.callback(reap_strays, str(workdir))
    return workdir


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

    def __init__(self, root: int, interval: float = 0.05, skip_root: bool = False) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.root = root
        self.skip_root = skip_root  # run_tree's launcher is not part of what is measured
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            table = _process_table()
            pids = [pid for pid in tree_pids(self.root, table) if not (self.skip_root and pid == self.root)]
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


# Linux carries a process's high-water RSS from before exec into its ru_maxrss, so a command forked from a
# large parent (a pytest session of a few hundred MiB) would report the parent's size. A small fresh
# process forks the command instead and reports the command's own figure on a pipe.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_tree(argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None,
             cwd: str | Path = "/", timeout: float = 3600) -> Measured:
    """Run a child to completion; its wall time, peak RSS and its tree's peak RSS; raise if it fails.

    Output goes to temp files, not pipes: a child that logs a lot must not block on a full pipe
    while we wait for it.
    """
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable  # one the server's user can run
    read_rss, write_rss = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        clock = time.monotonic()
        try:
            proc = subprocess.Popen([python, "-S", "-c", _LAUNCHER, str(write_rss), *argv], stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, env=env, cwd=cwd, pass_fds=[write_rss],
                                    **as_user(user))
        finally:
            os.close(write_rss)
        sampler = TreeSampler(proc.pid, skip_root=True)
        sampler.start()
        killer = threading.Timer(timeout, lambda: _kill_tree(proc.pid))
        killer.start()
        try:
            proc.wait()
        except BaseException:  # interrupted (SIGTERM, ^C): the measured tree must not outlive us
            _kill_tree(proc.pid)
            proc.wait()
            raise
        finally:
            killer.cancel()
            peak = sampler.finish()
            with os.fdopen(read_rss, "rb") as reported:
                maxrss_kib = int(reported.read() or 0)
        seconds = time.monotonic() - clock
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, stderr or stdout)
    return Measured(seconds, maxrss_kib / 1024, peak / MIB, stdout, stderr)


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


def pids_naming(marker: str) -> list[int]:
    """Processes (other than this one) whose command line contains ``marker``."""
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
    return found


def reap_strays(marker: str, grace: float = 5.0) -> list[int]:
    """End processes whose command line names ``marker`` (our work dir): daemons our runs left behind.

    archive_command may start resident helpers (pgBackRest's async archive-push, backupctl's pusher)
    that outlive the server briefly; they were started for this bench, and are ended by pid.
    """
    found = pids_naming(marker)
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in found):
        time.sleep(0.1)
    _signal(found, signal.SIGKILL)
    return found


class PeakRss(threading.Thread):
    """The largest peak RSS (VmHWM) of any process whose command line names ``marker``, while it runs.

    archive_command's processes are the server's children and a resident pusher is detached, so neither
    can be waited for: they are found by the config path their command lines carry. VmHWM is each
    process's own high-water mark, so a resident process's peak is exact; a short-lived one that starts
    and ends between two samples is missed (archive_command calls are small and short).
    """

    def __init__(self, marker: str, interval: float = 0.1) -> None:
        super().__init__(name="peak-rss", daemon=True)
        self.marker = marker
        self.interval = interval
        self.peak_kib = 0
        self.halt = threading.Event()

    def sample(self) -> None:
        for pid in pids_naming(self.marker):
            try:
                with open(f"/proc/{pid}/status", "rb") as handle:
                    line = next((line for line in handle if line.startswith(b"VmHWM:")), b"VmHWM: 0 kB")
            except OSError:
                continue
            self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(self.interval)

    def finish(self) -> float:
        """Stop sampling (one last sample first); the peak in MiB."""
        self.halt.set()
        self.join()
        self.sample()
        return self.peak_kib / 1024


class CountingProxy(FaultProxy):
    """The test suite's S3 proxy (plain HTTP in front of SeaweedFS), counting requests by kind.

    Kinds: PUT (an object in one request), LIST (ListObjectsV2 and other bucket listings), GET, HEAD,
    DELETE, MULTIPART (create, upload part, complete, abort) and POST (batch delete and the rest).
    """

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.counts: dict[str, int] = {}
        self.examples: dict[str, str] = {}  # the first request of each kind: method and path

    @staticmethod
    def kind(method: str, path: str) -> str:
        target = urlsplit(path)
        query = target.query
        if "uploadId=" in query or "uploads" in query.split("&"):
            return "MULTIPART"
        if method == "GET" and (not target.path.strip("/").count("/") or "list-type=" in query):
            return "LIST"  # a GET of the bucket itself (path-style: /bucket?prefix=...) lists it
        return method if method in ("PUT", "GET", "HEAD", "DELETE") else "POST"

    def relay(self, handler: BaseHTTPRequestHandler) -> None:
        kind = self.kind(handler.command, handler.path)
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.examples.setdefault(kind, f"{handler.command} {handler.path}")
        super().relay(handler)

    def take(self) -> tuple[dict[str, int], dict[str, str]]:
        """The counts and examples since the last call, and start again from zero."""
        with self._lock:
            taken = self.counts, self.examples
            self.counts, self.examples = {}, {}
        return taken


# --- SeaweedFS with TLS --------------------------------------------------------------------------------


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (pgBackRest's S3 driver speaks only TLS); returns (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
    return cert, key


def seaweedfs(directory: Path) -> SeaweedFS:
    """The test suite's SeaweedFS (tests/support/s3_servers.py), serving S3 over HTTP and HTTPS; not started yet."""
    weed = str(Path(sys.executable).parent / "weed")
    return SeaweedFS(weed, directory, "bench-access", tls=self_signed_certificate(directory / "tls"))


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


def run_and_print(run_bench: Callable[[ExitStack], dict[str, Any]], report: Callable[[dict[str, Any]], str],
                  as_json: bool) -> None:
    """Run one bench with SIGTERM and SIGHUP turned into a clean exit (its ExitStack stops what it started),
    then print its Markdown table; with ``as_json`` the JSON document goes to stdout and the table to stderr."""
    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    with ExitStack() as stack:
        document = run_bench(stack)
    table = report(document)
    if as_json:
        print(table, file=sys.stderr)
        print(json.dumps(document, indent=2, default=str))
    else:
        print(table)
