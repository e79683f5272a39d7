"""Physical backups side by side: backupctl, pgBackRest and the floor, on one PostgreSQL cluster and one store.

    .venv/bin/python -m bench.physical [--scale 50] [--text-mib 256] [--runs 3] [--store local|s3|both]
                                       [--steps files,drain] [--backlog 50] [--json] [--s3-http]

Builds one scratch cluster (Debian's PostgreSQL 15 by default: pgBackRest 2.45 supports up to 15) with
pgbench data (scale 50) plus a table of random text (pgbench data alone compresses 20x, which flatters
every tool), then, for each store (a local directory; SeaweedFS on 127.0.0.1 over HTTPS with a
self-signed certificate, which pgBackRest's S3 driver requires), measures both tools and the floor on
that same cluster and store (issue 14's targets):

  - full backup (step files): wall time, throughput (data backed up / wall time), bytes stored in the
    repository, peak RSS (wait4's ru_maxrss of the child, i.e. its largest process, and the sampled sum
    over its whole process tree);
      backupctl --config F backup main --type full
      pgbackrest --stanza=bench backup --type=full          (compress-type=zst, process-max=2)
      floor: pg_basebackup -h ... -D - -Ft -X none -c fast > /dev/null   (archive_command = true)
  - restore into an empty directory: wall time, throughput;
      backupctl --config F restore main --pgdata DIR     (parts fetched, decoded, written and checked
                                                         against backup_manifest in parallel; sync)
      pgbackrest --stanza=bench restore --pg1-path=DIR      (process-max=2)
      floor (local store only): backupctl's stored parts of its latest backup, two at a time,
                                `zstd -d -c PART | tar -x -C DIR`, then one `sync`
  - WAL drain (step drain): archiving off while a backlog of --backlog segments builds up, then the
    real archive_command, timed until no .ready file is left (segments per second), and the peak RSS
    of the processes that command started; on S3, one more drain per backupctl command through a
    counting proxy (plain HTTP) gives the S3 requests per archived segment;
  - archiver lag (step lag, not in the default steps) under `pgbench -c 8 -T --pgbench-seconds`: the
    .ready backlog sampled every second (max and mean), and how long the archiver needs to catch up;
  for backupctl (`backupctl --config F wal-push %p` and the command `pg-settings` prints, asynchronous by
  default), pgBackRest sync and pgBackRest archive-async=y with process-max=2 and a spool path.

Each run alternates the order of the tools (and the floor). Medians of --runs (peak RSS: the maximum),
as a Markdown table with the ratios backupctl/floor and backupctl/pgBackRest against the targets in
TARGETS; with --json the JSON document goes to stdout and the table to stderr. Everything lives in a
fresh directory in /tmp owned by the postgres user (the server and archive_command run as that user);
free space is checked first; everything the bench started is stopped and removed on every exit path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
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
from backupctl.repo import layout
from bench.peers import (
    MIB,
    SERVER_USER,
    CommandFailed,
    CountingProxy,
    PeakRss,
    PgBackRest,
    SeaweedFS,
    clean_env,
    load_text,
    make_dir,
    reap_strays,
    run,
    run_and_print,
    run_tree,
    say,
    seaweedfs,
    work_directory,
    write_file,
)
from bench.pg_logical import make_database

STANZA = "bench"
SOURCE = "main"
FAILING_GRACE_SECONDS = 30.0  # an archive_command that keeps failing this long fails the step
# Issue 14's targets: backup / floor, restore / pgBackRest and restore / floor at most, drain / pgBackRest
# async at least, peak RSS of every process below; S3 requests per archived segment.
TARGETS = {"backup": 1.3, "restore": 0.8, "restore_floor": 1.3, "drain": 1.3, "rss_bytes": 200_000_000,
           "s3_puts_per_segment": 1, "s3_lists_per_segment": 0}
FLOOR_ARCHIVE_COMMAND = "true"  # pg_basebackup -X none waits until the backup's last segment is archived
STEPS = ("files", "drain", "lag")
STEP_GROUPS = {"all": STEPS, "wal": ("drain", "lag")}
REQUEST_KINDS = ("PUT", "LIST", "GET", "HEAD", "DELETE", "MULTIPART", "POST")
WAL_TOOLS = ("backupctl", "backupctl_fast", "pgbackrest_sync", "pgbackrest_async")
WAL_LABELS = {
    "backupctl": "backupctl: `backupctl --config F wal-push %p` (async)",
    "backupctl_fast": "backupctl: what `pg-settings` prints (async)",
    "pgbackrest_sync": "pgBackRest archive-push, sync",
    "pgbackrest_async": "pgBackRest archive-push, archive-async=y, process-max=2",
}


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
                 "[compression]", 'algorithm = "zstd"', "",
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
        """The archive_command that `backupctl pg-settings` prints, if this checkout has the command."""
        try:
            printed = run(self.argv("pg-settings"), env=clean_env())
        except CommandFailed:
            return None
        for line in printed.splitlines():
            if line.startswith("archive_command = '"):
                return line.split(" = ", 1)[1].strip()[1:-1].replace("''", "'")
        return None


@dataclass
class Store:
    name: str  # "local" or "s3"
    description: str
    backupctl: Backupctl
    pgbackrest: PgBackRest
    backupctl_archive: str  # archive_command while backupctl takes a backup
    wal_push_missing: str | None
    backupctl_repository: dict[str, Any] = dataclasses.field(default_factory=dict)  # its [repository]
    s3_upstream: str | None = None  # SeaweedFS's plain-HTTP endpoint, for the counting proxy

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
    return Store(name, description, bctl, pgbr, archive, missing, repo_bctl,
                 weed.http_url if weed is not None and name == "s3" else None)


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


def backup_floor(server: Server) -> dict[str, Any]:
    """Plain pg_basebackup of the same cluster to /dev/null: what streaming the data costs at least."""
    server.use(FLOOR_ARCHIVE_COMMAND)
    server.checkpoint()
    info = server.cluster.conninfo()
    argv = [str(server.cluster.binaries.path("pg_basebackup")), "-h", str(info["host"]), "-p", str(info["port"]),
            "-U", str(info["user"]), "-D", "-", "-Ft", "-X", "none", "-c", "fast"]
    measured = run_tree(["sh", "-c", f"exec {shlex.join(argv)} > /dev/null"], env=clean_env())
    return measured.figures()


def stored_parts(store: Store, backup_id: str) -> list[tuple[str, Path]]:
    """(archive, file) of each stored tar part of a backup in a local repository, in order."""
    folder = Path(store.backupctl_repository["path"]) / layout.backup_prefix(SOURCE, backup_id)
    parts = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and layout.is_tar_part(name):
            if not name.endswith(".zst"):
                raise StepFailed(f"stored part {name} is not plain zstd: the floor needs zstd without encryption")
            oid = layout.tar_part_tablespace(name)
            parts.append(("base" if oid is None else f"tablespaces/{oid}", path))
    if not parts:
        raise StepFailed(f"no stored tar parts under {folder}")
    return parts


def restore_floor(workdir: Path, store: Store, backup_id: str) -> dict[str, Any]:
    """backupctl's stored parts decompressed and written, two at a time, then one sync: no checks, no plan."""
    target = _restore_target(workdir, "floor")
    try:
        pairs: list[str] = []
        for archive, part in stored_parts(store, backup_id):
            pairs += [str(target if archive == "base" else make_dir(target / archive)), str(part)]
        # Prints when the unpacking ended and when the sync did, so that the two phases show (scale 500,
        # 2026-12-05, load ~4: unpack 20.2 s, sync 0.87 s: zstd | tar at ~370 MiB/s for two parts at a time
        # is the floor's cost, not its sync).
        script = ('start=$EPOCHREALTIME; printf "%s\\0" "$@" | xargs -0 -n 2 -P 2 bash -o pipefail -c '
                  '\'zstd -q -d -c "$1" | tar -x -C "$0"\' && unpacked=$EPOCHREALTIME && sync && '
                  'echo "$start $unpacked $EPOCHREALTIME"')
        measured = run_tree(["bash", "-o", "pipefail", "-c", script, "floor", *pairs], env=clean_env())
        start, unpacked, synced = (float(word) for word in measured.stdout.split())
        return {**measured.figures(), "restored_bytes": _tree_bytes(target), "parts": len(pairs) // 2,
                "unpack_seconds": round(unpacked - start, 3), "sync_seconds": round(synced - unpacked, 3)}
    finally:
        shutil.rmtree(target, ignore_errors=True)


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


def drain(server: Server, command: str, backlog: int, marker: str | None = None) -> dict[str, Any]:
    """Segments per second from a backlog; with ``marker`` (a path in the command's processes' command
    lines) also the peak RSS of the largest of them."""
    server.use(command)
    waiting = server.make_backlog(backlog)
    failed = server.archiver()["failed_count"]
    sampler = PeakRss(marker) if marker else None
    if sampler:
        sampler.start()
    clock = time.monotonic()
    try:
        server.set_archive_command(command)
        server.wait_drained()
        seconds = time.monotonic() - clock
    finally:
        peak_mib = sampler.finish() if sampler else None
    # The archiver marks a segment done, then reports it to pg_stat_archiver: allow for that instant.
    deadline = time.monotonic() + 5
    while (stats := server.archiver())["last_archived_wal"] is None or stats["last_archived_wal"] < waiting[-1]:
        if time.monotonic() > deadline:
            raise StepFailed(f"pg_stat_archiver says {stats['last_archived_wal']} was archived last, "
                             f"not {waiting[-1]}")
        time.sleep(0.05)
    figures = {"segments": len(waiting), "seconds": round(seconds, 2),
               "segments_per_second": round(len(waiting) / seconds, 2), "failures": stats["failed_count"] - failed}
    return figures if peak_mib is None else {**figures, "peak_rss_mib": round(peak_mib, 1)}


def counted_drain(server: Server, store: Store, tool: str, backlog: int) -> dict[str, Any]:
    """A drain with backupctl's S3 requests going through a counting proxy: requests per archived segment.

    A second config names the proxy as the endpoint (the same bucket and prefix), so that its pusher is
    a fresh one whose every request, from its start, is counted; the timed drains stay unproxied.
    """
    assert store.s3_upstream is not None
    with ExitStack() as cleanup:
        proxy = CountingProxy(store.s3_upstream)
        cleanup.callback(proxy.close)
        repository = {k: v for k, v in store.backupctl_repository.items() if k != "verify_tls"}
        counted = Backupctl.configure(store.backupctl.binary, store.backupctl.config.parent.parent / "counted",
                                      {**repository, "endpoint_url": proxy.url}, server.cluster)
        cleanup.callback(reap_strays, str(counted.config))  # its pusher, before the proxy goes
        cleanup.callback(server.set_archive_command, "true")  # and first, nothing calls it any more
        command = counted.archive_command() if tool == "backupctl" else counted.fast_archive_command()
        assert command is not None
        proxy.take()
        figures = drain(server, command, backlog)
        time.sleep(0.5)  # a pusher's last answers after the archiver's last call
        counts, examples = proxy.take()
    segments = figures["segments"]
    return {"segments": segments, "segments_per_second": figures["segments_per_second"],
            **{f"{kind.lower()}_requests": counts.get(kind, 0) for kind in REQUEST_KINDS},
            **{f"{kind.lower()}_per_segment": round(counts.get(kind, 0) / segments, 3) for kind in REQUEST_KINDS},
            "requests_per_segment": round(sum(counts.values()) / segments, 3), "examples": examples}


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


def _goal(ratio: float | None, limit: float, higher_is_better: bool, versus: str) -> str:
    return f"{'>=' if higher_is_better else '<='} {limit}x {versus}: {_verdict(ratio, limit, higher_is_better)}"


def _rss_goal(mib: float | None) -> str:
    if mib is None:
        return "not measured"
    return f"< 200 MB: {'met' if mib * MIB < TARGETS['rss_bytes'] else 'missed'}"


def throughputs(summary: dict[str, Any], floor_summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """MiB/s of backup and restore per tool: the data backupctl's backup reports (before compression) over
    each wall time, one data size for every tool, so that runs at other scales compare."""
    data = summary.get("backup", {}).get("backupctl", {}).get("size_bytes")
    rates: dict[str, dict[str, float]] = {}
    for step in ("backup", "restore"):
        for tool in ("backupctl", "pgbackrest", "floor"):
            source = floor_summary if tool == "floor" and step == "restore" else summary
            seconds = source.get(step, {}).get(tool, {}).get("seconds")
            if data and seconds:
                rates.setdefault(step, {})[tool] = round(data / MIB / seconds, 1)
    return rates


def files_table(summary: dict[str, Any], floor_summary: dict[str, Any], floor_note: str) -> list[str]:
    """Backups and restores: the three columns, both ratios, the targets and throughput."""
    def get(step: str, tool: str, key: str, scale: float = 1.0) -> float | None:
        source = floor_summary if tool == "floor" and step == "restore" else summary
        value = source.get(step, {}).get(tool, {}).get(key)
        return None if value is None else value / scale

    lines = ["", "| | backupctl | pgBackRest | floor | backupctl / pgBackRest | backupctl / floor | target |",
             "|---|--:|--:|--:|--:|--:|---|"]

    def row(label: str, step: str, key: str, unit: str, scale: float = 1.0, digits: int = 2,
            goals: Callable[[float | None, float | None], str] = lambda _peer, _floor: "") -> None:
        ours, peer, floor = (get(step, tool, key, scale) for tool in ("backupctl", "pgbackrest", "floor"))
        lines.append(f"| {label} | {_fmt(ours, unit, digits)} | {_fmt(peer, unit, digits)} | "
                     f"{_fmt(floor, unit, digits)} | {_fmt(_ratio(ours, peer), 'x')} | "
                     f"{_fmt(_ratio(ours, floor), 'x')} | {goals(_ratio(ours, peer), _ratio(ours, floor))} |")

    def throughput(label: str, step: str) -> None:
        rates = throughputs(summary, floor_summary).get(step, {})
        cells = [_fmt(rates.get(tool), " MiB/s", 0) for tool in ("backupctl", "pgbackrest", "floor")]
        lines.append(f"| {label} | {' | '.join(cells)} | | | |")

    row("full backup, wall time", "backup", "seconds", " s",
        goals=lambda _peer, floor: _goal(floor, TARGETS["backup"], False, "floor"))
    throughput("full backup, throughput", "backup")
    row("restore into an empty directory, wall time", "restore", "seconds", " s",
        goals=lambda peer, floor: f"{_goal(peer, TARGETS['restore'], False, 'pgBackRest')}; "
                                  f"{_goal(floor, TARGETS['restore_floor'], False, 'floor' + floor_note)}")
    throughput("restore, throughput", "restore")
    row("backup stored in the repository", "backup", "stored_bytes", " MiB", MIB, 1)
    row("data backed up (before compression)", "backup", "size_bytes", " MiB", MIB, 1)
    row("backup peak RSS, largest process (wait4)", "backup", "peak_rss_mib", " MiB", digits=1,
        goals=lambda _peer, _floor: _rss_goal(get("backup", "backupctl", "peak_rss_mib")))
    row("backup peak RSS, whole process tree (sampled)", "backup", "tree_peak_mib", " MiB", digits=1)
    row("restore peak RSS, largest process (wait4)", "restore", "peak_rss_mib", " MiB", digits=1,
        goals=lambda _peer, _floor: _rss_goal(get("restore", "backupctl", "peak_rss_mib")))
    return lines


def wal_tables(summary: dict[str, Any], steps: tuple[str, ...], args: argparse.Namespace) -> list[str]:
    """The drain (and archiver lag) per archive_command; on S3 the requests per archived segment."""
    def get(step: str, tool: str, key: str) -> float | None:
        return summary.get(step, {}).get(tool, {}).get(key)

    lines: list[str] = []
    peer = get("drain", "pgbackrest_async", "segments_per_second")
    if "drain" in steps:
        lines += ["", f"WAL drain of a {args.backlog}-segment backlog", "",
                  f"| archive_command | drain | vs pgBackRest async (target >= {TARGETS['drain']}x) | "
                  "peak RSS, largest process (sampled VmHWM) |", "|---|--:|--:|--:|"]
        for tool in WAL_TOOLS:
            rate = get("drain", tool, "segments_per_second")
            ratio = _ratio(rate, peer)
            rss = get("drain", tool, "peak_rss_mib")
            versus = f"{_fmt(ratio, 'x')}: {_verdict(ratio, TARGETS['drain'], True)}" \
                if tool.startswith("backupctl") else _fmt(ratio, "x")
            lines.append(f"| {WAL_LABELS[tool]} | {_fmt(rate, ' seg/s')} ({_fmt(get('drain', tool, 'seconds'), ' s')}) "
                         f"| {versus} | {_fmt(rss, ' MiB', 1)}"
                         f"{': ' + _rss_goal(rss) if tool.startswith('backupctl') else ''} |")
    if summary.get("requests"):
        lines += ["", "S3 requests per archived segment, backupctl through a counting proxy (plain HTTP to "
                  "SeaweedFS; one drain each, not timed against the others; pgBackRest's need TLS: not counted)", "",
                  "| archive_command | PUT | LIST | GET | HEAD | DELETE | multipart | other | "
                  "target (1 PUT, 0 LIST) | drain through the proxy |", "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
        for tool in ("backupctl", "backupctl_fast"):
            figures = summary["requests"].get(tool)
            if not figures:
                continue
            puts, lists = figures.get("put_per_segment"), figures.get("list_per_segment")
            met = puts is not None and lists is not None and puts <= TARGETS["s3_puts_per_segment"] \
                and lists <= TARGETS["s3_lists_per_segment"]
            cells = [_fmt(figures.get(f"{kind.lower()}_per_segment"), "", 2) for kind in REQUEST_KINDS]
            lines.append(f"| {WAL_LABELS[tool]} | {' | '.join(cells)} | {'met' if met else 'missed'} | "
                         f"{_fmt(figures.get('segments_per_second'), ' seg/s')} |")
    if "lag" in steps:
        lines += ["", f"Archiver backlog (.ready files, sampled each second) under pgbench -c {args.clients} "
                  f"-T {args.pgbench_seconds}", "",
                  "| archive_command | backlog max / mean | catch-up after pgbench | WAL written | pgbench tps |",
                  "|---|--:|--:|--:|--:|"]
        for tool in WAL_TOOLS:
            lines.append(f"| {WAL_LABELS[tool]} | {_fmt(get('lag', tool, 'max_backlog'), '', 0)} / "
                         f"{_fmt(get('lag', tool, 'mean_backlog'), '', 1)} seg | "
                         f"{_fmt(get('lag', tool, 'catch_up_seconds'), ' s')} | "
                         f"{_fmt(get('lag', tool, 'wal_mib'), ' MiB', 0)} | {_fmt(get('lag', tool, 'tps'), '', 0)} |")
    return lines


def store_table(name: str, description: str, summary: dict[str, Any], errors: dict[str, str],
                args: argparse.Namespace, floor_summary: dict[str, Any] | None = None) -> list[str]:
    """One store's tables; ``floor_summary``: whose restore floor to quote (the local store's for S3)."""
    steps = wanted_steps(args)
    lines = [f"### {name}: {description}"]
    if "files" in steps:
        quoted = summary if floor_summary is None else floor_summary
        lines += files_table(summary, quoted, "" if floor_summary is None else " (the local store's)")
    lines += wal_tables(summary, steps, args)
    lines.append("")
    parts = summary.get("restore", {}).get("floor", {}).get("parts")
    if parts:  # two at a time: the last of an odd number of parts is unpacked alone
        lines.append(f"The restore floor unpacked {parts:.0f} stored part(s), two at a time.")
    for step, tool, whose in (("backup", "backupctl", "its own report"), ("restore", "backupctl", "its own report"),
                              ("restore", "floor", "timed in its script")):
        phases = summary.get(step, {}).get(tool, {})
        extra = {k: v for k, v in phases.items() if k.endswith("_seconds")}
        if extra:
            lines.append(f"{tool} {step} phases ({whose}): "
                         + ", ".join(f"{k} {round(v, 3)}" for k, v in extra.items()))
    for key, message in errors.items():
        lines.append(f"- **{key}** not measured: {message}")
    lines.append("")
    return lines


def report(document: dict[str, Any], args: argparse.Namespace) -> str:
    setup = document["setup"]
    lines = ["## backupctl vs pgBackRest and the floor: physical backups", "",
             f"{setup.get('date', '')}: PostgreSQL {setup['postgres']}, {setup['cluster_mib']} MiB cluster "
             f"(pgbench scale {args.scale} + {args.text_mib} MiB random text), {setup['cpus']} CPUs; "
             f"{setup['pgbackrest']} (zst level 3, process-max=2); backupctl with its defaults (zstd level 1). "
             f"Medians of {args.runs} run(s), the tools and the floor interleaved on the same cluster and store "
             "(each run reverses the order of the last), so that load from other work falls on all; peak RSS is "
             "the maximum. Load average (1, 5, 15 min) at start "
             f"{load_text(setup['load_average_at_start'])}, at end {load_text(setup['load_average_at_end'])}: on a "
             "2-core machine other work shows in every figure.", "",
             "Floors: backup = `pg_basebackup -D - -Ft -X none -c fast > /dev/null` of the same cluster, with "
             f"archive_command = `{FLOOR_ARCHIVE_COMMAND}` (with -X none the server waits until the backup's last "
             "segment is archived, and it checks once a second: up to 1 s of this floor is that wait; on an empty "
             "cluster here -X none took 1.1 s, -X fetch 0.13 s); restore = backupctl's stored parts of its latest "
             "backup, two at a time `zstd -d -c PART | tar -x -C DIR`, then one `sync`, into an empty directory "
             "(no checks), measured on "
             "the local store: on S3 the local store's restore floor is quoted. Throughput = the data backupctl's "
             "backup reports (before compression) / wall time, the same data size for every column.", ""]
    local = document["stores"].get("local", {}).get("summary")
    for name, store in document["stores"].items():
        lines += store_table(name, store["description"], store["summary"], store["errors"], args,
                             floor_summary=None if name == "local" else (local or {}))
    return "\n".join(lines)


# --- the whole run ----------------------------------------------------------------------------------------


def wanted_steps(args: argparse.Namespace) -> tuple[str, ...]:
    """The steps ``--steps`` asks for: a comma-separated list of STEPS, or a group ("all", "wal")."""
    steps: list[str] = []
    for word in str(args.steps).split(","):
        for step in STEP_GROUPS.get(word.strip(), (word.strip(),)):
            if step not in STEPS:
                raise argparse.ArgumentTypeError(f"unknown step {step!r}: choose from {', '.join(STEPS)}, all, wal")
            if step not in steps:
                steps.append(step)
    return tuple(steps)


def measure_files(name: str, store: Store, server: Server, workdir: Path, results: Results,
                  args: argparse.Namespace) -> None:
    """Full backups and restores of both tools and the floor, each run in the reverse order of the last.

    The restore floor unpacks the stored parts of backupctl's latest backup (from this run, or from the
    previous one when the floor goes first), so it is measured on the local store only.
    """
    def restore_floor_latest() -> dict[str, Any]:
        backups = results.runs.get(name, {}).get("backup", {}).get("backupctl")
        if not backups:
            raise StepFailed("no backupctl backup to unpack")
        return restore_floor(workdir, store, backups[-1]["id"])

    tools: list[tuple[str, Callable[[], dict[str, Any]], Callable[[], dict[str, Any]] | None]] = [
        ("pgbackrest", lambda: backup_pgbackrest(server, store), lambda: restore_pgbackrest(workdir, store)),
        ("backupctl", lambda: backup_backupctl(server, store), lambda: restore_backupctl(workdir, store)),
        ("floor", lambda: backup_floor(server), restore_floor_latest if name == "local" else None),
    ]
    for index in range(args.runs):
        for tool, backup, restore in tools if index % 2 == 0 else tools[::-1]:
            results.attempt(name, "backup", tool, backup)
            if restore is None:
                continue
            if results.failed(name, "backup", tool):
                results.errors[name].setdefault(f"restore {tool}", "skipped: no backup")
                continue
            results.attempt(name, "restore", tool, restore)
    server.use("true")


def measure_wal(name: str, store: Store, server: Server, results: Results, args: argparse.Namespace) -> None:
    """Drain rate from a backlog, then archiver lag under pgbench, for each archive_command, each run in the
    reverse order of the last; on S3, backupctl's requests per segment through a counting proxy."""
    commands = store.wal_commands()
    markers = {"backupctl": str(store.backupctl.config), "backupctl_fast": str(store.backupctl.config),
               "pgbackrest_sync": str(store.pgbackrest.config_file),
               "pgbackrest_async": str(store.pgbackrest.config_file)}
    if store.wal_push_missing:
        for step in ("drain", "lag"):
            results.fail(name, step, "backupctl", store.wal_push_missing)
    elif commands["backupctl_fast"] is None:
        for step in ("drain", "lag"):
            results.fail(name, step, "backupctl_fast", "this checkout has no archive_command helper")

    def attempt(step: str, tool: str, action: Callable[[], dict[str, Any]]) -> None:
        results.attempt(name, step, tool, action)
        if results.failed(name, step, tool):
            server.set_archive_command("true")  # what this tool left behind is dropped
            server.wait_drained()

    for step in [step for step in ("drain", "lag") if step in wanted_steps(args)]:
        for index in range(args.runs):
            for tool in WAL_TOOLS if index % 2 == 0 else WAL_TOOLS[::-1]:
                command = commands[tool]
                if command is None:
                    continue
                if step == "drain":
                    attempt(step, tool, lambda c=command, t=tool: drain(server, c, args.backlog, markers[t]))  # type: ignore[misc]
                else:
                    attempt(step, tool, lambda c=command: lag(server, c, args.pgbench_seconds, args.clients))  # type: ignore[misc]
        if step == "drain" and store.s3_upstream is not None:
            for tool in ("backupctl", "backupctl_fast"):
                if commands[tool] is not None:
                    attempt("requests", tool, lambda t=tool: counted_drain(server, store, t, args.backlog))  # type: ignore[misc]
    server.use("true")


def check_free_space(args: argparse.Namespace, where: str = "/tmp") -> None:
    """Exit with one line when ``where`` cannot hold the run: the cluster, one restore beside it, the WAL
    max_wal_size allows, and every backup of every tool and store (all are kept)."""
    cluster = args.scale * 16 * MIB + args.text_mib * 13 // 10 * MIB + 64 * MIB
    stores = 2 if args.store == "both" else 1
    stored = cluster // 5  # zstd: pgbench pages ~20x, the random text ~2x; generous
    need = 2 * cluster + 4 * 1024 * MIB + args.runs * stores * 2 * stored + 1024 * MIB
    free = shutil.disk_usage(where).free
    if free < need:
        sys.exit(f"bench.physical needs about {need / 1024**3:.1f} GiB free in {where} for scale {args.scale} "
                 f"(cluster, a restore, WAL, {args.runs} run(s) of backups on {stores} store(s)); it has "
                 f"{free / 1024**3:.1f} GiB")


def run_bench(args: argparse.Namespace, stack: ExitStack) -> dict[str, Any]:
    check_free_space(args)
    steps = wanted_steps(args)
    started, load_at_start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    # Callbacks unwind in reverse: the server stops, then what its archive_command left running, then
    # SeaweedFS, and the work directory goes last.
    workdir = work_directory(stack, "physical", reap=False)
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
                  "load_average_at_start": load_at_start, "date": started, "steps": list(steps)},
        "stores": {},
    }
    configured = {name: setup_store(name, workdir, cluster, weed, args.s3_http) for name in stores}
    # Backups and restores of every store first: the WAL tests update rows, and every store must see the
    # same data (the drain backlogs alone would double pgbench_accounts).
    for name, store in configured.items():
        say(f"store {name}: {store.description}")
        if "files" in steps:
            measure_files(name, store, server, workdir, results, args)
    for name, store in configured.items():
        if "drain" in steps or "lag" in steps:
            measure_wal(name, store, server, results, args)
    for name, store in configured.items():
        summary = results.summary(name)
        document["stores"][name] = {
            "description": store.description,
            "summary": summary,
            "throughput_mib_s": throughputs(summary, results.summary("local") if name != "local" else summary),
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
    parser.add_argument("--backlog", type=int, default=50,
                        help="WAL segments in the drain test's backlog (issue 14: 50)")
    parser.add_argument("--pgbench-seconds", type=int, default=60, help="length of the archiver-lag load")
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients of the archiver-lag load")
    parser.add_argument("--steps", default="files,drain",
                        help="comma-separated: files (backups and restores), drain, lag (archiver lag under "
                             "pgbench); all = files,drain,lag; wal = drain,lag")
    parser.add_argument("--s3-http", action="store_true",
                        help="backupctl talks plain HTTP to SeaweedFS (default: HTTPS like pgBackRest)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout (the Markdown table goes to stderr)")
    args = parser.parse_args()
    try:
        wanted_steps(args)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if os.geteuid() != 0:
        sys.exit("bench.physical runs as root: the server, pgBackRest and archive_command run as the postgres user")
    if shutil.which("pgbackrest") is None:
        sys.exit("pgBackRest is missing: apt-get install -y pgbackrest")
    run_and_print(lambda stack: run_bench(args, stack), lambda document: report(document, args), args.json)


if __name__ == "__main__":
    main()
