"""Physical backups side by side: backupctl against pgBackRest, on one PostgreSQL cluster and one store.

    .venv/bin/python -m bench.physical [--scale 50] [--text-mib 256] [--runs 3] [--store local|s3|both]
                                       [--json] [--pgbench-seconds 60] [--backlog 60] [--s3-http]

Builds one scratch cluster (Debian's PostgreSQL 15 by default: pgBackRest 2.45 supports up to 15) with
pgbench data (scale 50) plus a table of random text (pgbench data alone compresses 20x, which flatters
every tool), then, for each store (a local directory; SeaweedFS on 127.0.0.1 over HTTPS with a
self-signed certificate, which pgBackRest's S3 driver requires), measures both tools on that same
cluster and store:

  - full backup: wall time, bytes stored in the repository, peak RSS (wait4's ru_maxrss of the child,
    i.e. its largest process, and the sampled sum over its whole process tree);
      backupctl --config F backup main --type full
      pgbackrest --stanza=bench backup --type=full          (compress-type=zst, process-max=2)
  - restore into an empty directory: wall time;
      backupctl --config F restore main --pgdata DIR     (plan; parts fetched, decoded, written and checked
                                                         against backup_manifest in parallel; sync; recovery settings)
      pgbackrest --stanza=bench restore --pg1-path=DIR      (process-max=2)
  - WAL drain: archiving off while a backlog of --backlog segments builds up, then the real
    archive_command, timed until no .ready file is left (segments per second);
  - archiver lag under `pgbench -c 8 -T --pgbench-seconds`: the .ready backlog sampled every second
    (max and mean), and how long the archiver needs to catch up once pgbench stops;
  for backupctl (`backupctl --config F wal-push %p`, asynchronous by default), pgBackRest sync and
  pgBackRest archive-async=y with process-max=2 and a spool path.

Medians of --runs (peak RSS: the maximum), as a Markdown table with the ratios backupctl/pgBackRest and
the targets (backup <= 0.8x, restore <= 1.0x, drain >= 1.0x of pgBackRest async, peak RSS < 200 MB); with
--json the JSON document goes to stdout and the table to stderr. Everything lives in a fresh directory
in /tmp owned by the postgres user (the server and archive_command run as that user), and everything
the bench started is stopped and removed on every exit path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupctl.core.errors import BackupctlError
from backupctl.postgres.binaries import find_binaries
from backupctl.postgres.cluster import ScratchCluster
from bench.peers import (
    MIB,
    SERVER_USER,
    CommandFailed,
    PgBackRest,
    SeaweedFS,
    clean_env,
    make_dir,
    reap_strays,
    run,
    run_tree,
    seaweedfs,
    write_file,
)
from bench.pg_logical import make_database

STANZA = "bench"
SOURCE = "main"
FAILING_GRACE_SECONDS = 30.0  # an archive_command that keeps failing this long fails the step
TARGETS = {"backup": 0.8, "restore": 1.0, "drain": 1.0, "rss_bytes": 200_000_000}
WAL_TOOLS = ("backupctl", "backupctl_fast", "pgbackrest_sync", "pgbackrest_async")
WAL_LABELS = {
    "backupctl": "backupctl: `backupctl --config F wal-push %p` (async)",
    "backupctl_fast": "backupctl: `python -I -m backupctl.walpusher ...` (async; what pg-settings prints)",
    "pgbackrest_sync": "pgBackRest archive-push, sync",
    "pgbackrest_async": "pgBackRest archive-push, archive-async=y, process-max=2",
}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class StepFailed(RuntimeError):
    """A measured step could not be carried out; the message is what the report shows."""


# --- the server and its archiver ------------------------------------------------------------------------


class Server:
    """The scratch cluster both tools share, and what the bench does to its archiver."""

    def __init__(self, cluster: ScratchCluster) -> None:
        self.cluster = cluster
        self.conn = cluster.connect()
        self.command = ""

    @property
    def status_dir(self) -> Path:
        return self.cluster.datadir / "pg_wal" / "archive_status"

    def set_archive_command(self, command: str) -> None:
        """ALTER SYSTEM + reload (a reload wakes the archiver); '' stops archiving without failures."""
        from psycopg import sql

        self.conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
        self.conn.execute("SELECT pg_reload_conf()")
        self.command = command

    def use(self, command: str) -> None:
        """Switch archive_command once everything already waiting went out with the old one."""
        if command != self.command:
            self.wait_drained()
            self.set_archive_command(command)
        self.wait_drained()

    def ready(self) -> list[str]:
        """Segments waiting for the archiver (their .ready files), oldest first."""
        return sorted(name[:-6] for name in os.listdir(self.status_dir) if name.endswith(".ready"))

    def archiver(self) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, "
            "last_failed_time FROM pg_stat_archiver").fetchone()
        keys = ("archived_count", "last_archived_wal", "last_archived_time", "failed_count", "last_failed_wal",
                "last_failed_time")
        return dict(zip(keys, row, strict=True))

    def archive_errors(self, lines: int = 4) -> str:
        """What the server logged about failing archive commands: their own stderr is in there."""
        try:
            log = self.cluster.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        relevant = [line for line in log if "archive" in line.lower() or "error" in line.lower()]
        return " | ".join(line.strip() for line in relevant[-lines:])

    def wait_drained(self, timeout: float = 900, poll: float = 0.05) -> float:
        """Seconds until no segment waits; StepFailed when archiving keeps failing or takes too long."""
        clock = time.monotonic()
        failing_since: float | None = None
        failed_before = self.archiver()["failed_count"]
        checked = clock
        while self.ready():
            now = time.monotonic()
            if now - checked >= 1.0:
                checked = now
                stats = self.archiver()
                if stats["failed_count"] > failed_before:
                    failed_before = stats["failed_count"]
                    failing_since = failing_since or now
                elif stats["last_archived_time"] and failing_since and stats["last_failed_time"] and \
                        stats["last_archived_time"] > stats["last_failed_time"]:
                    failing_since = None
                if failing_since is not None and now - failing_since > FAILING_GRACE_SECONDS:
                    raise StepFailed(f"archive_command keeps failing ({stats['failed_count']} failures, last on "
                                     f"{stats['last_failed_wal']}): {self.archive_errors()}")
            if now - clock > timeout:
                raise StepFailed(f"the archiver did not catch up in {timeout:.0f}s: {len(self.ready())} segments "
                                 f"still wait ({self.archive_errors()})")
            time.sleep(poll)
        return time.monotonic() - clock

    def checkpoint(self) -> None:
        self.conn.execute("CHECKPOINT")

    def lsn(self) -> int:
        return int(self.conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])

    def make_backlog(self, count: int) -> list[str]:
        """Archiving off, then real WAL (pgbench rows updated in batches) until ``count`` segments wait."""
        self.set_archive_command("")
        time.sleep(0.5)  # the archiver applies the reload asynchronously
        with self.cluster.connect("bench") as conn:
            rows = int(conn.execute("SELECT max(aid) FROM pgbench_accounts").fetchone()[0])
            batch, low = 50_000, 1
            while len(self.ready()) < count - 1:
                conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid >= %s AND aid < %s",
                             (low, low + batch))
                low = low + batch if low + batch <= rows else 1
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 10
        while len(self.ready()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.ready()


# --- the two tools on one store --------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def _supports_wal_section() -> bool:
    from backupctl.core import config

    wal = getattr(config, "WalConfig", None)
    return wal is not None and any(f.name == "spool_dir" for f in dataclasses.fields(wal))


@dataclass
class Backupctl:
    """backupctl with one config file: a repository and the cluster as source ``main``."""

    binary: Path
    config: Path

    @classmethod
    def configure(cls, binary: Path, directory: Path, repository: dict[str, Any],
                  cluster: ScratchCluster) -> Backupctl:
        make_dir(directory)
        tmp = make_dir(directory / "tmp")
        lines = ["[repository]", *(f"{key} = {toml_value(value)}" for key, value in repository.items()), "",
                 "[compression]", 'algorithm = "zstd"', "level = 3", "",
                 f"[sources.{SOURCE}]", 'kind = "postgres"', 'host = "127.0.0.1"', f"port = {cluster.port}",
                 'user = "postgres"', f"pgdata = {toml_value(cluster.datadir)}",
                 f"bindir = {toml_value(cluster.binaries.bindir)}", f"tmp_dir = {toml_value(tmp)}", ""]
        if _supports_wal_section():  # the pusher's socket and log in our directory (default: /tmp)
            spool = make_dir(directory / "spool", mode=0o700)
            lines[lines.index("[compression]"):lines.index("[compression]")] = [
                "[wal]", f"spool_dir = {toml_value(spool)}", ""]
        config = write_file(directory / "backupctl.toml", "\n".join(lines), mode=0o644)
        return cls(binary, config)

    def argv(self, *args: str) -> list[str]:
        return [str(self.binary), "--config", str(self.config), *args]

    def init(self) -> None:
        # As the server's user: `init` does not drop privileges, and every later command (backup,
        # wal-push from archive_command) writes the repository as that user.
        run(self.argv("init"), user=SERVER_USER, env=clean_env(SERVER_USER), cwd=self.config.parent)

    def missing_wal_push(self) -> str | None:
        """None when `backupctl wal-push` exists, else what backupctl said about it."""
        try:
            run(self.argv("wal-push", "--help"), env=clean_env())
        except CommandFailed as exc:
            return f"`backupctl wal-push` does not exist in this checkout ({exc.last_line.strip()})"
        return None

    def archive_command(self) -> str:
        return f"{self.binary} --config {self.config} wal-push %p"

    def fast_archive_command(self) -> str | None:
        """The archive_command backupctl itself recommends (its WAL fast path), if this checkout has one."""
        try:
            from backupctl.wal.conf import archive_command
        except ImportError:
            return None
        return str(archive_command(self.config, SOURCE))


@dataclass
class Store:
    name: str  # "local" or "s3"
    description: str
    backupctl: Backupctl
    pgbackrest: PgBackRest
    backupctl_archive: str  # archive_command while backupctl takes a backup
    wal_push_missing: str | None

    def wal_commands(self) -> dict[str, str | None]:
        return {
            "backupctl": None if self.wal_push_missing else self.backupctl.archive_command(),
            "backupctl_fast": None if self.wal_push_missing else self.backupctl.fast_archive_command(),
            "pgbackrest_sync": self.pgbackrest.archive_command(asynchronous=False),
            "pgbackrest_async": self.pgbackrest.archive_command(asynchronous=True),
        }


def setup_store(name: str, workdir: Path, cluster: ScratchCluster, weed: SeaweedFS | None, s3_http: bool) -> Store:
    base = make_dir(workdir / name)
    if name == "local":
        repo_bctl: dict[str, Any] = {"type": "local", "path": str(make_dir(base / "backupctl-repo"))}
        repo_pgbr = {"repo1-type": "posix", "repo1-path": str(make_dir(base / "pgbackrest-repo"))}
        description = f"local directory ({base})"
    else:
        assert weed is not None
        credentials = write_file(
            base / "aws-credentials",
            f"[default]\naws_access_key_id = {weed.access_key}\naws_secret_access_key = {weed.secret_key}\n",
        )
        repo_bctl = {"type": "s3", "bucket": weed.create_bucket("backupctl-bench"), "prefix": "bench",
                     "region": weed.region, "endpoint_url": weed.http_url if s3_http else weed.https_url,
                     "addressing_style": "path", "credentials_file": str(credentials)}
        if not s3_http:
            repo_bctl["verify_tls"] = False
        repo_pgbr = {
            "repo1-type": "s3", "repo1-path": "/bench", "repo1-s3-bucket": weed.create_bucket("pgbackrest-bench"),
            "repo1-s3-endpoint": "127.0.0.1", "repo1-storage-port": str(weed.ports["s3.port.https"]),
            "repo1-s3-region": weed.region, "repo1-s3-key": weed.access_key,
            "repo1-s3-key-secret": weed.secret_key, "repo1-s3-uri-style": "path",
            "repo1-storage-verify-tls": "n",
        }
        transport = "plain HTTP" if s3_http else "HTTPS, verify_tls = false"
        description = (f"SeaweedFS S3 on 127.0.0.1 (pgBackRest: HTTPS, self-signed, verify-tls=n; "
                       f"backupctl: {transport})")
    bctl = Backupctl.configure(Path(sys.executable).parent / "backupctl", base / "backupctl", repo_bctl, cluster)
    bctl.init()
    pgbr = PgBackRest(base / "pgbackrest", cluster.datadir, int(cluster.port or 0), cluster.socket_dir, repo_pgbr,
                      stanza=STANZA)
    pgbr.run("stanza-create")
    missing = bctl.missing_wal_push()
    if missing:
        # backupctl's physical backups take their WAL from the archive (pg_basebackup -X none), so the
        # server must archive the backup's last segment: a plain cp stands in for wal-push meanwhile.
        fallback = make_dir(base / "fallback-archive")
        archive = f"cp %p {fallback}/%f"
    else:
        archive = bctl.archive_command()
    return Store(name, description, bctl, pgbr, archive, missing)


# --- the measurements ------------------------------------------------------------------------------------


def backup_backupctl(server: Server, store: Store) -> dict[str, Any]:
    server.use(store.backupctl_archive)
    server.checkpoint()
    measured = run_tree(store.backupctl.argv("backup", SOURCE, "--type", "full", "--output", "json"),
                        env=clean_env())
    summary = json.loads(measured.stdout)
    return {**measured.figures(), "stored_bytes": summary["stored_size"], "size_bytes": summary["size"],
            "id": summary["id"]}


def backup_pgbackrest(server: Server, store: Store) -> dict[str, Any]:
    server.use(store.pgbackrest.archive_command(asynchronous=False))
    server.checkpoint()
    measured = store.pgbackrest.measured("backup", "--type=full")
    info = store.pgbackrest.last_backup()
    return {**measured.figures(), "stored_bytes": info["info"]["repository"]["delta"],
            "size_bytes": info["info"]["size"], "id": info["label"]}


def _restore_target(workdir: Path, tool: str) -> Path:
    target = workdir / "restores" / tool
    if target.exists():
        shutil.rmtree(target)
    make_dir(target.parent, mode=0o755)
    return make_dir(target, mode=0o700)


def _tree_bytes(root: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(root) for f in files)


def restore_backupctl(workdir: Path, store: Store) -> dict[str, Any]:
    target = _restore_target(workdir, "backupctl")
    try:
        measured = run_tree(store.backupctl.argv("restore", SOURCE, "--pgdata", str(target), "--output", "json"),
                            env=clean_env())
        figures: dict[str, Any] = {**measured.figures(), "restored_bytes": _tree_bytes(target)}
        try:  # the phases backupctl reports (download+extract+check, sync)
            result = json.loads(measured.stdout)
            figures.update({k: v for k, v in result.items() if k.endswith("_seconds")})
        except ValueError:
            pass
        return figures
    finally:
        shutil.rmtree(target, ignore_errors=True)


def restore_pgbackrest(workdir: Path, store: Store) -> dict[str, Any]:
    target = _restore_target(workdir, "pgbackrest")
    try:
        measured = store.pgbackrest.measured("restore", f"--pg1-path={target}")
        return {**measured.figures(), "restored_bytes": _tree_bytes(target)}
    finally:
        shutil.rmtree(target, ignore_errors=True)


def drain(server: Server, command: str, backlog: int) -> dict[str, Any]:
    server.use(command)
    waiting = server.make_backlog(backlog)
    failed = server.archiver()["failed_count"]
    clock = time.monotonic()
    server.set_archive_command(command)
    server.wait_drained()
    seconds = time.monotonic() - clock
    # The archiver marks a segment done, then reports it to pg_stat_archiver: allow for that instant.
    deadline = time.monotonic() + 5
    while (stats := server.archiver())["last_archived_wal"] is None or stats["last_archived_wal"] < waiting[-1]:
        if time.monotonic() > deadline:
            raise StepFailed(f"pg_stat_archiver says {stats['last_archived_wal']} was archived last, "
                             f"not {waiting[-1]}")
        time.sleep(0.05)
    return {"segments": len(waiting), "seconds": round(seconds, 2),
            "segments_per_second": round(len(waiting) / seconds, 2), "failures": stats["failed_count"] - failed}


def lag(server: Server, command: str, seconds: int, clients: int) -> dict[str, Any]:
    server.use(command)
    with server.cluster.connect("bench") as conn:
        conn.execute("VACUUM")  # the drain test's updates leave dead rows; autovacuum is off
    server.wait_drained()
    server.checkpoint()  # every tool starts from the same point: full-page images for every first touch
    info = server.cluster.conninfo("bench")
    argv = [server.cluster.binaries.path("pgbench"), "-h", str(info["host"]), "-p", str(info["port"]),
            "-U", str(info["user"]), "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 2)),
            "-T", str(seconds), "-n", "bench"]
    before, lsn = server.archiver(), server.lsn()
    samples: list[int] = []
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=clean_env())
        try:
            while proc.poll() is None:
                samples.append(len(server.ready()))
                time.sleep(1.0)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        out.seek(0)
        output = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise StepFailed(f"pgbench exited {proc.returncode}: {output.strip().splitlines()[-1:]}")
    wal_bytes = server.lsn() - lsn
    catch_up = server.wait_drained()
    after = server.archiver()
    tps = next((float(line.split("=")[1].split()[0]) for line in output.splitlines() if line.startswith("tps =")),
               None)
    return {"max_backlog": max(samples, default=0), "mean_backlog": round(statistics.fmean(samples or [0]), 1),
            "catch_up_seconds": round(catch_up, 2), "wal_mib": round(wal_bytes / MIB, 1),
            "segments_archived": after["archived_count"] - before["archived_count"],
            "failures": after["failed_count"] - before["failed_count"], "tps": tps}


# --- bookkeeping and the report --------------------------------------------------------------------------


class Results:
    """Every run's figures and every step's failure, per store, step and tool."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
        self.errors: dict[str, dict[str, str]] = {}

    def failed(self, store: str, step: str, tool: str) -> str | None:
        return self.errors.get(store, {}).get(f"{step} {tool}")

    def fail(self, store: str, step: str, tool: str, message: str) -> None:
        self.errors.setdefault(store, {})[f"{step} {tool}"] = message
        say(f"{store}: {step} with {tool} FAILED: {message}")

    def attempt(self, store: str, step: str, tool: str, action: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement unless this step already failed for this tool (it would again)."""
        if self.failed(store, step, tool):
            return
        say(f"{store}: {step} with {tool} ...")
        try:
            figures = action()
        except (CommandFailed, StepFailed, BackupctlError) as exc:
            self.fail(store, step, tool, str(exc))
            return
        self.runs.setdefault(store, {}).setdefault(step, {}).setdefault(tool, []).append(figures)
        shown = {k: v for k, v in figures.items() if k != "id"}
        say(f"{store}: {step} with {tool}: {shown}")

    def summary(self, store: str) -> dict[str, dict[str, dict[str, float]]]:
        """Medians over the runs (peak memory: the maximum)."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for step, tools in self.runs.get(store, {}).items():
            for tool, runs in tools.items():
                keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
                out.setdefault(step, {})[tool] = {
                    k: (max if "peak" in k else statistics.median)(r[k] for r in runs if r.get(k) is not None)
                    for k in keys if any(r.get(k) is not None for r in runs)
                }
        return out


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours is not None and theirs else None


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _verdict(ratio: float | None, limit: float, higher_is_better: bool) -> str:
    if ratio is None:
        return "not measured"
    met = ratio >= limit if higher_is_better else ratio <= limit
    return "met" if met else "missed"


def store_table(name: str, description: str, summary: dict[str, Any], errors: dict[str, str],
                args: argparse.Namespace) -> list[str]:
    def get(step: str, tool: str, key: str, scale: float = 1.0) -> float | None:
        value = summary.get(step, {}).get(tool, {}).get(key)
        return None if value is None else value / scale

    lines = [f"### {name}: {description}"]

    def row(label: str, step: str, key: str, unit: str, scale: float = 1.0, digits: int = 2,
            target: tuple[float, bool] | None = None) -> None:
        ours, theirs = get(step, "backupctl", key, scale), get(step, "pgbackrest", key, scale)
        ratio = _ratio(ours, theirs)
        goal = "" if target is None else f"{'>=' if target[1] else '<='} {target[0]}x: {_verdict(ratio, *target)}"
        lines.append(f"| {label} | {_fmt(ours, unit, digits)} | {_fmt(theirs, unit, digits)} | "
                     f"{_fmt(ratio, 'x')} | {goal} |")

    if args.steps in ("all", "files"):
        lines += ["", "| | backupctl | pgBackRest | backupctl / pgBackRest | target |", "|---|--:|--:|--:|---|"]
        row("full backup, wall time", "backup", "seconds", " s", target=(TARGETS["backup"], False))
        row("backup stored in the repository", "backup", "stored_bytes", " MiB", MIB, 1)
        row("data backed up (before compression)", "backup", "size_bytes", " MiB", MIB, 1)
        rss = get("backup", "backupctl", "peak_rss_mib")
        rss_goal = "not measured" if rss is None else ("met" if rss * MIB < TARGETS["rss_bytes"] else "missed")
        peer_rss = get("backup", "pgbackrest", "peak_rss_mib")
        lines.append(f"| backup peak RSS, largest process (wait4) | {_fmt(rss, ' MiB', 1)} | "
                     f"{_fmt(peer_rss, ' MiB', 1)} | {_fmt(_ratio(rss, peer_rss), 'x')} | < 200 MB: {rss_goal} |")
        row("backup peak RSS, whole process tree (sampled)", "backup", "tree_peak_mib", " MiB", digits=1)
        row("restore into an empty directory, wall time", "restore", "seconds", " s",
            target=(TARGETS["restore"], False))
        row("restore peak RSS, largest process (wait4)", "restore", "peak_rss_mib", " MiB", digits=1)
    if args.steps != "files":
        lines += ["", f"WAL archiving: drain of a {args.backlog}-segment backlog; archiver backlog (.ready files, "
                  f"sampled each second) under pgbench -c {args.clients} -T {args.pgbench_seconds}", "",
                  "| archive_command | drain | vs pgBackRest async (target >= 1.0x) | backlog max / mean | "
                  "catch-up after pgbench | WAL written | pgbench tps |", "|---|--:|--:|--:|--:|--:|--:|"]
        peer = get("drain", "pgbackrest_async", "segments_per_second")
        for tool in WAL_TOOLS:
            rate = get("drain", tool, "segments_per_second")
            ratio = _ratio(rate, peer)
            versus = f"{_fmt(ratio, 'x')}: {_verdict(ratio, TARGETS['drain'], True)}" if tool.startswith("backupctl") \
                else _fmt(ratio, "x")
            backlog = (f"{_fmt(get('lag', tool, 'max_backlog'), '', 0)} / "
                       f"{_fmt(get('lag', tool, 'mean_backlog'), '', 1)} seg")
            drained = f"{_fmt(rate, ' seg/s')} ({_fmt(get('drain', tool, 'seconds'), ' s')})"
            lines.append(f"| {WAL_LABELS[tool]} | {drained} | "
                         f"{versus} | {backlog} | {_fmt(get('lag', tool, 'catch_up_seconds'), ' s')} | "
                         f"{_fmt(get('lag', tool, 'wal_mib'), ' MiB', 0)} | {_fmt(get('lag', tool, 'tps'), '', 0)} |")
    lines.append("")
    for step in ("backup", "restore"):
        phases = summary.get(step, {}).get("backupctl", {})
        extra = {k: v for k, v in phases.items() if k.endswith("_seconds")}
        if extra:
            lines.append(f"backupctl {step} phases (its own report): "
                         + ", ".join(f"{k} {v}" for k, v in extra.items()))
    for key, message in errors.items():
        lines.append(f"- **{key}** not measured: {message}")
    lines.append("")
    return lines


def _load(values: Any) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def report(document: dict[str, Any], args: argparse.Namespace) -> str:
    setup = document["setup"]
    lines = ["## backupctl vs pgBackRest: physical backups", "",
             f"PostgreSQL {setup['postgres']}, {setup['cluster_mib']} MiB cluster (pgbench scale {args.scale} + "
             f"{args.text_mib} MiB random text), {setup['cpus']} CPUs; {setup['pgbackrest']} "
             "(zst level 3, process-max=2); backupctl zstd level 3, its defaults otherwise. "
             f"Medians of {args.runs} run(s), the two tools interleaved on the same cluster and store (each run "
             "alternates which goes first), so that load from other work falls on both; peak RSS is the maximum. "
             "Load average (1, 5, 15 min) at start "
             f"{_load(setup['load_average_at_start'])}, at end {_load(setup['load_average_at_end'])}: on a 2-core "
             "machine other work shows in every figure.", ""]
    for name, store in document["stores"].items():
        lines += store_table(name, store["description"], store["summary"], store["errors"], args)
    return "\n".join(lines)


# --- the whole run ----------------------------------------------------------------------------------------


def measure_files(name: str, store: Store, server: Server, workdir: Path, results: Results,
                  args: argparse.Namespace) -> None:
    """Full backups and restores, alternating which tool goes first."""
    tools: list[tuple[str, Callable[[], dict[str, Any]], Callable[[], dict[str, Any]]]] = [
        ("pgbackrest", lambda: backup_pgbackrest(server, store), lambda: restore_pgbackrest(workdir, store)),
        ("backupctl", lambda: backup_backupctl(server, store), lambda: restore_backupctl(workdir, store)),
    ]
    for index in range(args.runs):
        for tool, backup, restore in tools if index % 2 == 0 else tools[::-1]:
            results.attempt(name, "backup", tool, backup)
            if results.failed(name, "backup", tool):
                results.errors[name].setdefault(f"restore {tool}", "skipped: no backup")
                continue
            results.attempt(name, "restore", tool, restore)
    server.use("true")


def measure_wal(name: str, store: Store, server: Server, results: Results, args: argparse.Namespace) -> None:
    """Drain rate from a backlog, then archiver lag under pgbench, for each archive_command."""
    commands = store.wal_commands()
    if store.wal_push_missing:
        for step in ("drain", "lag"):
            results.fail(name, step, "backupctl", store.wal_push_missing)
    elif commands["backupctl_fast"] is None:
        for step in ("drain", "lag"):
            results.fail(name, step, "backupctl_fast", "this checkout has no archive_command helper")
    for step in [kind for kind in ("drain", "lag") if args.steps in ("all", "wal", kind)]:
        for _ in range(args.runs):
            for tool in WAL_TOOLS:
                command = commands[tool]
                if command is None:
                    continue
                if step == "drain":
                    results.attempt(name, step, tool, lambda c=command: drain(server, c, args.backlog))  # type: ignore[misc]
                else:
                    results.attempt(name, step, tool,
                                    lambda c=command: lag(server, c, args.pgbench_seconds, args.clients))  # type: ignore[misc]
                if results.failed(name, step, tool):
                    server.set_archive_command("true")  # what this tool left behind is dropped
                    server.wait_drained()
    server.use("true")


def run_bench(args: argparse.Namespace, stack: ExitStack) -> dict[str, Any]:
    # Callbacks unwind in reverse: the server stops, then what its archive_command left running, then
    # SeaweedFS, and the work directory goes last.
    workdir = Path(tempfile.mkdtemp(prefix="backupctl-bench-physical-", dir="/tmp"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    make_dir(workdir, mode=0o755)
    say(f"work directory {workdir}")
    pgbackrest_version = run(["pgbackrest", "version"]).strip()
    binaries = find_binaries(args.major, need="postgres")
    weed: SeaweedFS | None = None
    stores = ["local", "s3"] if args.store == "both" else [args.store]
    if "s3" in stores:
        weed = seaweedfs(workdir / "seaweedfs")
        stack.callback(weed.stop)
        weed.start()
        say(f"SeaweedFS: {weed.https_url} (TLS) and {weed.http_url}")
    stack.callback(reap_strays, str(workdir))
    cluster = ScratchCluster(binaries, base_dir=workdir, settings={
        "archive_mode": "on", "max_wal_size": "4GB", "checkpoint_timeout": "30min", "wal_level": "replica",
        "autovacuum": "off",  # no vacuum WAL in one tool's measurement and not in another's: VACUUM is explicit
    })
    stack.callback(cluster.remove)
    cluster.init()
    cluster.start()
    server = Server(cluster)
    stack.callback(server.conn.close)
    server.set_archive_command("true")  # the load's WAL is thrown away
    say(f"PostgreSQL {binaries.version} on port {cluster.port}; loading pgbench scale {args.scale} + "
        f"{args.text_mib} MiB of random text ...")
    database = make_database(cluster, args.scale, args.text_mib)
    cluster_bytes = _tree_bytes(cluster.datadir / "base") + _tree_bytes(cluster.datadir / "global")
    server.wait_drained()
    say(f"database bench: {database / MIB:.0f} MiB; cluster data {cluster_bytes / MIB:.0f} MiB")
    results = Results()
    document: dict[str, Any] = {
        "setup": {"postgres": binaries.version, "database_mib": round(database / MIB, 1),
                  "cluster_mib": round(cluster_bytes / MIB, 1), "scale": args.scale, "text_mib": args.text_mib,
                  "runs": args.runs, "cpus": os.cpu_count(), "pgbackrest": pgbackrest_version,
                  "backlog_segments": args.backlog, "pgbench": f"-c {args.clients} -T {args.pgbench_seconds}",
                  "load_average_at_start": os.getloadavg()},
        "stores": {},
    }
    configured = {name: setup_store(name, workdir, cluster, weed, args.s3_http) for name in stores}
    # Backups and restores of every store first: the WAL tests update rows, and every store must see the
    # same data (the drain backlogs alone would double pgbench_accounts).
    for name, store in configured.items():
        say(f"store {name}: {store.description}")
        if args.steps in ("all", "files"):
            measure_files(name, store, server, workdir, results, args)
    for name, store in configured.items():
        if args.steps != "files":
            measure_wal(name, store, server, results, args)
    for name, store in configured.items():
        document["stores"][name] = {
            "description": store.description,
            "summary": results.summary(name),
            "errors": results.errors.get(name, {}),
            "runs": results.runs.get(name, {}),
        }
    server.set_archive_command("")
    document["setup"]["load_average_at_end"] = os.getloadavg()  # other work on the machine skews every figure
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale (50: about 750 MiB)")
    parser.add_argument("--text-mib", type=int, default=256, help="MiB of random text in table notes")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement; medians are reported")
    parser.add_argument("--store", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--major", type=int, default=15, help="PostgreSQL major (pgBackRest 2.45: up to 15)")
    parser.add_argument("--backlog", type=int, default=60, help="WAL segments in the drain test's backlog")
    parser.add_argument("--pgbench-seconds", type=int, default=60, help="length of the archiver-lag load")
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients of the archiver-lag load")
    parser.add_argument("--steps", choices=["all", "files", "wal", "drain", "lag"], default="all",
                        help="files: backups and restores only; wal: drain and archiver lag; drain or lag: that only")
    parser.add_argument("--s3-http", action="store_true",
                        help="backupctl talks plain HTTP to SeaweedFS (default: HTTPS like pgBackRest)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout (the Markdown table goes to stderr)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.physical runs as root: the server, pgBackRest and archive_command run as the postgres user")
    if shutil.which("pgbackrest") is None:
        sys.exit("pgBackRest is missing: apt-get install -y pgbackrest")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    with ExitStack() as stack:
        document = run_bench(args, stack)
    table = report(document, args)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(document, indent=2, default=str))
    else:
        print(table)


if __name__ == "__main__":
    main()
