"""Restore-and-verify drills: restore a backup into a scratch copy, start it, check it, time it, record it.

A physical drill plans and restores as `restore` does (the same planner, the same extraction that proves
every file against backup_manifest), into a scratch directory, then starts a server on that copy with a
configuration made for it, never production's: no archiving, no replication, no preloaded libraries, small
memory, its own socket directory, and production's ALTER SYSTEM settings turned into comments. Its
restore_command is the read-only wal-fetch; with archiving off it cannot push WAL or a new timeline into the
source. Recovery runs to the target (default: the end of archived WAL) and promotes there, so that amcheck
can be installed.

A logical drill restores every database of the dump into a fresh scratch server; a SQLite drill restores
the file into a scratch directory. Then the same checks run (``drill_checks``), and the scratch copy is
stopped and removed whatever happened (a failing check, an error, SIGTERM), unless ``--keep``.

Scratch servers are reached through their private socket directory only: TCP on 127.0.0.1 asks for a
password, so the copy of production is not open to every user of the machine while the drill runs.

The result goes to ``<source>/drills/<id>.json`` (``drill_results``: the result's type, its sealing in an
encrypted repository, and ``list_drills`` and ``latest_drill``, which read results back for `drill list`,
`status` and the metrics). Which steps a drill takes follows the backup's engine (``_DRILLS``), which
names the checks it runs (``Engine.drill_checks``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from backupctl import __version__
from backupctl.core.config import DrillConfig, PostgresSource, SourceConfig
from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.log import get_logger
from backupctl.core.progress import NO_PROGRESS, ProgressObserver
from backupctl.core.signals import shielded
from backupctl.core.units import human_size
from backupctl.engines import pg_logical
from backupctl.engines.registry import PHYSICAL, engine_of, source_kind
from backupctl.engines.sqlite import ensure_free_space
from backupctl.postgres.binaries import PgBinaries, find_binaries
from backupctl.postgres.cluster import DEFAULT_SERVER_USER, ScratchCluster, ServerError
from backupctl.postgres.connection import ConnParams
from backupctl.postgres.tools import run_tool
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest, iso, new_record_id, open_details
from backupctl.repo.repository import Repository
from backupctl.services import drill_checks, pitr, restore, restore_physical
from backupctl.services.drill_results import DrillCheck, DrillResult, Reached, RtoParts, record_result
from backupctl.wal.conf import conf_quote, restore_command

log = get_logger(__name__)

RTO_PARTS = ("plan", "download", "extract", "wal_replay")  # until the copy accepts connections
_REPLAYED_RE = re.compile(r'restored log file "([0-9A-F]{24})" from archive')
# pg_dumpall's tablespace statements: a drill must not create directories at production's locations.
_TABLESPACE_SQL = re.compile(r"^\s*((CREATE|ALTER|DROP|COMMENT ON|SECURITY LABEL ON) TABLESPACE "
                             r"|(GRANT|REVOKE) .* ON TABLESPACE )", re.IGNORECASE)

# The scratch server's settings, whatever production had: nothing may leave the copy (no archiving, no
# replication, no synchronous standby to wait for), nothing production-only is needed to start (no
# preloaded libraries, no SSL files), and it stays small. ScratchCluster adds listen_addresses =
# 127.0.0.1, a free port and the private socket directory. Without hot standby, `pg_ctl start` returns
# once recovery has reached the target and promoted.
SCRATCH_SETTINGS = {
    "cluster_name": "backupctl-drill",
    "archive_mode": "off",
    "primary_conninfo": "",
    "primary_slot_name": "",
    "synchronous_standby_names": "",
    "shared_preload_libraries": "",
    "hot_standby": "off",
    "ssl": "off",
    "shared_buffers": "32MB",
    "autovacuum": "off",
    "logging_collector": "off",
    "log_destination": "stderr",
}
# The socket directory is 0700 and belongs to the server's OS user: trust there; a password over TCP.
SCRATCH_HBA = ("# backupctl drill: the socket directory is private to the server's OS user\n"
               "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
SCRATCH_INITDB = ("--auth-local=trust", "--auth-host=scram-sha-256")
# pg_control records the primary's settings that recovery needs at least as high (prepared transactions
# to restore, lock table size): the copy takes them over.
_CONTROL_SETTINGS = {
    "max_connections setting": "max_connections",
    "max_worker_processes setting": "max_worker_processes",
    "max_wal_senders setting": "max_wal_senders",
    "max_prepared_xacts setting": "max_prepared_transactions",
    "max_locks_per_xact setting": "max_locks_per_transaction",
}


@dataclass(frozen=True)
class DrillRequest:
    """What `drill run` was asked: a backup (default: the newest), a target, whether to keep the copy."""

    backup_id: str | None = None
    target: pitr.Target = dataclasses.field(default_factory=lambda: pitr.Target("end"))
    keep: bool = False


class DrillServer(ScratchCluster):
    """A scratch server reached through its socket directory (see the module docstring), never over TCP."""

    maintenance_db = "postgres"  # the database to connect to: the source's dbname for a physical copy

    def conninfo(self, dbname: str | None = None) -> dict[str, str | int]:
        return {**super().conninfo(dbname or self.maintenance_db), "host": str(self.socket_dir)}

    def params(self) -> ConnParams:
        info = self.conninfo()
        return ConnParams(host=str(info["host"]), port=int(info["port"]), user=self.superuser,
                          dbname=self.maintenance_db)


class _Halted(Exception):
    """A step failed that later checks need: the rest are recorded as skipped."""


@dataclass
class _Check:
    name: str
    status: str = "skipped"  # "passed", "failed", "skipped"
    detail: str = ""


class _Drill:
    """One drill in progress: its id, clock, timed parts and checks, and what it restored."""

    def __init__(self, source: SourceConfig, request: DrillRequest, progress: ProgressObserver) -> None:
        self.source = source
        self.progress = progress  # of the restore, the part of a drill that moves the data
        self.config: DrillConfig = source.drill
        self.request = request
        self.started = datetime.now(UTC)
        self.clock = time.monotonic()
        self.id = new_record_id("D", self.started)
        self.checks: dict[str, _Check] = {}
        self.parts = dict.fromkeys((*RTO_PARTS, "checks"), 0.0)
        self.backup: Manifest | None = None
        self.reached: Reached | None = None
        self.segments_replayed = 0
        self.work: Path | None = None
        self.halted = False  # a step the copy needs failed: it never came up, so there is no RTO

    def plan_checks(self, names: list[str]) -> None:
        """The checks this kind of drill runs, in order: any that never runs is reported as skipped."""
        self.checks = {name: _Check(name) for name in names}

    def assertion_names(self) -> list[str]:
        return [f"assertion: {a.name}" for a in self.config.assertions]

    @contextlib.contextmanager
    def step(self, name: str, fatal: bool = False) -> Iterator[_Check]:
        """Run one check; its failure is recorded (and, when ``fatal``, ends the drill's checks)."""
        check = self.checks.setdefault(name, _Check(name))
        check.status = "passed"
        try:
            yield check
        except (BackupctlError, OSError, sqlite3.Error, psycopg.Error) as exc:
            check.status, check.detail = "failed", " ".join(str(exc).split())
            log.warning("drill check failed", drill_id=self.id, check=name, detail=check.detail)
            if fatal:
                self.halted = True
                raise _Halted from None  # not an error: the failure is on record in the check; this ends the steps

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        clock = time.monotonic()
        try:
            yield
        finally:
            self.parts[name] += time.monotonic() - clock

    def remaining(self) -> float:
        left = self.config.timeout - (time.monotonic() - self.clock)
        if left <= 0:
            raise BackupctlError(f"the drill used up its {self.config.timeout:.0f}s (drill.timeout in the config)")
        return left

    def workdir(self) -> Path:
        """The scratch directory: under drill.tmp_dir, else the source's tmp_dir, else the system's."""
        root = Path(self.config.tmp_dir or getattr(self.source, "tmp_dir", None) or tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="backupctl-drill-", dir=root))
        if os.geteuid() == 0 and source_kind(self.source).server:
            shutil.chown(self.work, DEFAULT_SERVER_USER, DEFAULT_SERVER_USER)  # the server lives below
        return self.work

    def cleanup(self, server: ScratchCluster | None) -> None:
        """Stop the scratch server, remove the scratch directory (unless --keep); runs shielded.

        The server's socket directory and log live apart, in a short path of the system's temp dir (a Unix
        socket path has at most 107 bytes); with --keep the log is copied beside the kept data.
        """
        with shielded():
            try:
                if server is not None:
                    server.stop()
            except ServerError as exc:
                log.error("scratch server did not stop: its directory is left in place", drill_id=self.id,
                          error=str(exc), directory=str(self.work))
                # On record too: a drill whose copy may still run has not cleaned up after itself.
                self.checks["cleanup"] = _Check("cleanup", "failed", f"the scratch server did not stop ({exc}); "
                                                f"stop it and remove {self.work} by hand")
                return
            if server is not None:
                if self.request.keep and self.work is not None and server.log_file.exists():
                    shutil.copy(server.log_file, self.work / "server.log")
                shutil.rmtree(server.base_dir, ignore_errors=True)
            if self.work is None:
                return
            if self.request.keep:
                log.info("scratch copy kept", drill_id=self.id, directory=str(self.work))
            else:
                shutil.rmtree(self.work, ignore_errors=True)

    def result(self, error: str | None = None) -> DrillResult:
        checks = list(self.checks.values())
        failed = [c for c in checks if c.status == "failed"]
        first = failed[0] if failed else None
        for check in checks:
            if check.status == "skipped" and not check.detail:
                check.detail = f"not run: {first.name} failed" if first else "not run"
        usable = not (error or self.halted) and self.backup is not None
        error = error or (f"{first.name}: {first.detail}" if first else None)
        return DrillResult(
            id=self.id,
            source=self.source.name,
            backup_id=self.backup.id if self.backup else self.request.backup_id,
            backup_type=self.backup.type if self.backup else None,
            kind=self.source.kind,
            status="failed" if error else "passed",
            started_at=iso(self.started),
            finished_at=iso(datetime.now(UTC)),
            duration_seconds=round(time.monotonic() - self.clock, 3),
            target=self.request.target,
            reached=self.reached,
            rto_seconds=round(sum(self.parts[p] for p in RTO_PARTS), 3) if usable else None,
            rto_parts=RtoParts(**{name: round(seconds, 3) for name, seconds in self.parts.items()}),
            wal_segments_replayed=self.segments_replayed,
            checks=tuple(DrillCheck(c.name, c.status, c.detail) for c in checks),
            error=error,
            kept=str(self.work) if self.request.keep and self.work else None,
            host=socket.gethostname(),
            tool_version=__version__,
        )


# --- running a drill -----------------------------------------------------------------------------------


def run_drill(repo: Repository, source: SourceConfig, request: DrillRequest,
              progress: ProgressObserver = NO_PROGRESS) -> DrillResult:
    """Drill one backup of ``source``; the result is stored in the repository whether it passed or not.
    ``progress`` sees its restore (the stored bytes read).

    Usage errors (an unknown backup, a target on a logical backup) raise ``ConfigError`` before anything
    starts. An interrupted drill (SIGTERM) cleans up and records nothing: it proved nothing either way.
    """
    manifest = _chosen_backup(repo, source, request)
    drill = _Drill(source, request, progress)
    log.info("drill started", drill_id=drill.id, source=source.name,
             backup_id=manifest.id if manifest else "newest that reaches the target", target=request.target.kind)
    engine = PHYSICAL if manifest is None else engine_of(manifest.type)
    try:
        drill.plan_checks([*engine.drill_checks, *drill.assertion_names()])
        _DRILLS[engine.name](drill, repo, source, manifest)
    except _Halted:
        pass
    except Exception as exc:
        # A bug, not a finding: still on record as a failed drill, and raised for the traceback.
        record_result(repo, drill.result(f"unexpected {type(exc).__name__}: {exc}"))
        raise
    result = drill.result()
    record_result(repo, result)
    log.info("drill finished", drill_id=drill.id, source=source.name, status=result.status,
             rto_seconds=result.rto_seconds, seconds=result.duration_seconds)
    return result


def _chosen_backup(repo: Repository, source: SourceConfig, request: DrillRequest) -> Manifest | None:
    """The backup to drill; None lets the PITR planner pick the newest physical one that reaches the target."""
    target_given = request.target.kind != "end"
    if request.backup_id:
        manifest = repo.catalog.resolve(request.backup_id, source.name)
    elif target_given:
        if not source_kind(source).archives_wal:
            raise ConfigError("--target-* options apply to PostgreSQL physical backups")
        return None
    else:
        manifests, _damaged = repo.catalog.scan(source.name)
        if not manifests:
            raise BackupctlError(f"source {source.name} has no backup to drill: take one with "
                                 f"`backupctl backup {source.name}`")
        manifest = manifests[0]
    if target_given and not engine_of(manifest.type).uses_wal:
        raise ConfigError(f"backup {manifest.id} is a {manifest.type} backup: --target-* options apply to "
                          "physical backups")
    return manifest


def _drill_physical(drill: _Drill, repo: Repository, source: PostgresSource, chosen: Manifest | None) -> None:
    target = dataclasses.replace(drill.request.target, action="promote")  # amcheck needs a writable copy
    with drill.step("plan", fatal=True) as check, drill.part("plan"):
        plan = pitr.make_plan(repo, source.name, target, chosen.id if chosen else None)
        drill.backup = plan.backup
        check.detail = (f"backup {plan.backup.id} ({plan.backup.type}, finished {plan.backup.finished_at}) and "
                        f"{plan.segments} archived WAL segments {plan.wal_first}..{plan.wal_last} on timeline "
                        f"{plan.timeline}")
        if plan.timelines is not None and len(plan.timelines.tips) > 1:  # the judgement restore follows
            check.detail += f"; {plan.timelines.reason()}"
    server: DrillServer | None = None
    with contextlib.ExitStack() as held:
        try:
            with drill.step("restore", fatal=True) as check:
                chain = restore_physical.backup_chain(repo, plan.backup)
                held.enter_context(repo.reading("drill", chain))
                server, proven = _restore_physical(drill, repo, source, plan, drill.workdir())
                check.detail = f"{human_size(sum(m.size for m in chain))} from {len(chain)} backup(s); {proven}"
            with drill.step("recovery", fatal=True) as check, drill.part("wal_replay"):
                check.detail = _recover(drill, server, plan)
            details = open_details(plan.backup, repo.pipeline)
            _pg_checks(drill, server, sorted(details.get("databases", {})), details.get("row_estimates"), exact=False,
                       default_db=source.dbname)
        finally:
            drill.cleanup(server)


def _restore_physical(drill: _Drill, repo: Repository, source: PostgresSource, plan: pitr.Plan,
                      work: Path) -> tuple[DrillServer, str]:
    """The backup's files in ``work/data`` (tablespaces inside), proven against the backup's manifest by the
    restore code, and configured for the scratch server; with how they were proven."""
    details = open_details(plan.backup, repo.pipeline)
    pgdata = work / "data"
    tablespaces = {oid: str(work / "tablespaces" / oid) for oid in plan.backup.extra.get("tablespaces", [])}
    ensure_free_space(work, plan.backup.size + 256 * 1024**2, f"the drill's copy of {plan.backup.id}")
    clock = time.monotonic()
    restore_physical.prepare_pgdata(pgdata, force=False)
    jobs = restore_physical.default_jobs()
    timings = restore_physical.restore_files(repo, plan, pgdata, jobs, tablespaces, source.bindir, work,
                                             progress=drill.progress)
    # One pass fetches, unpacks and proves each file: that is the download; the flush to disk (and for a
    # chain, pg_verifybackup) counts as extraction.
    drill.parts["download"] += timings["download_extract_seconds"]
    drill.parts["extract"] += time.monotonic() - clock - timings["download_extract_seconds"]
    with drill.part("extract"):
        binaries = restore_physical.server_binaries(plan.backup.extra["pg_major"], source.bindir, "postgres")
        _write_scratch_config(pgdata, binaries, drill.id)
        restore_physical.write_recovery(plan, pgdata, restore_command(repo.config.file, source.name, plan.epoch),
                            standby=False)
        server = DrillServer.adopt(binaries, pgdata, remove_datadir=True,
                                   superuser=details.get("superuser") or source.user or DEFAULT_SERVER_USER)
    server.maintenance_db = source.dbname
    if "verified_files" in timings:
        return server, f"{timings['verified_files']} files proven against backup_manifest as they were written"
    return server, "the combined files checked by pg_verifybackup against backup_manifest"


def _write_scratch_config(pgdata: Path, binaries: PgBinaries, drill_id: str) -> None:
    """Production's configuration out, the drill's in (see SCRATCH_SETTINGS)."""
    settings = {**SCRATCH_SETTINGS, **_control_settings(binaries, pgdata)}
    header = f"# backupctl drill {drill_id}: a scratch copy's own settings; production's are not used\n"
    (pgdata / "postgresql.conf").write_text(
        header + "".join(f"{name} = {conf_quote(value)}\n" for name, value in settings.items()))
    (pgdata / "pg_hba.conf").write_text(SCRATCH_HBA)
    (pgdata / "pg_ident.conf").write_text("")
    auto = pgdata / "postgresql.auto.conf"
    if auto.exists():  # ALTER SYSTEM settings would override the file above: kept, as comments
        lines = auto.read_text().splitlines()
        auto.write_text(f"# backupctl drill {drill_id}: production's ALTER SYSTEM settings, not used here\n"
                        + "".join(f"# {line}\n" if line.strip() and not line.startswith("#") else f"{line}\n"
                                  for line in lines))
    with contextlib.suppress(FileNotFoundError):
        (pgdata / "standby.signal").unlink()  # a standby would wait for more WAL forever


def _control_settings(binaries: PgBinaries, pgdata: Path) -> dict[str, str]:
    output = run_tool([binaries.path("pg_controldata"), str(pgdata)], {**os.environ, "LC_ALL": "C"},
                      "pg_controldata of the restored copy")
    settings = {}
    for line in output.splitlines():
        label, _, value = line.partition(":")
        if label.strip() in _CONTROL_SETTINGS and value.strip().isdigit():
            settings[_CONTROL_SETTINGS[label.strip()]] = value.strip()
    return settings


def _recover(drill: _Drill, server: DrillServer, plan: pitr.Plan) -> str:
    """Start the copy, let recovery reach the target and promote; say where it got to."""
    server.start(timeout=drill.remaining())
    replayed = _REPLAYED_RE.findall(server.log_file.read_text(errors="replace"))
    drill.segments_replayed = len(set(replayed))
    with server.connect() as conn:
        lsn, at, walfile = conn.execute(
            "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
            "pg_walfile_name(pg_current_wal_lsn())").fetchone()
    promoted = int(walfile[:8], 16)
    drill.reached = Reached(lsn, iso(at) if at else None, plan.timeline, promoted)
    short = restore_physical.short_of_end(plan, lsn) if plan.target.kind == "end" and lsn is not None else None
    if short:
        raise drill_checks.CheckFailed(f"{short} (see the server log with --keep)")
    last = f" (last transaction {drill.reached.time})" if at else ""
    return (f"reached {lsn}{last} on timeline {plan.timeline} after replaying {drill.segments_replayed} archived "
            f"WAL segments; promoted to timeline {promoted}")


def _drill_logical(drill: _Drill, repo: Repository, source: PostgresSource, manifest: Manifest) -> None:
    drill.backup = manifest
    server: DrillServer | None = None
    with contextlib.ExitStack() as held:
        try:
            with drill.step("restore", fatal=True) as check:
                held.enter_context(repo.reading("drill", [manifest]))
                details = open_details(manifest, repo.pipeline)
                databases = sorted(details["databases"])
                work = drill.workdir()
                size = sum(d["size"] for d in details["databases"].values())
                ensure_free_space(work, int(size * 1.2) + 256 * 1024**2, f"the drill's copy of {manifest.id}")
                with drill.part("extract"):
                    binaries = find_binaries(min_major=manifest.extra["pg_major"], need="postgres")
                    server = DrillServer(binaries, settings=SCRATCH_SETTINGS, initdb_args=SCRATCH_INITDB)
                    server.datadir = work / "data"  # the data where drill.tmp_dir says, the socket in a short path
                    server.init()
                    server.start(timeout=drill.remaining())
                    tools = restore.restore_binaries(manifest, source.bindir)
                    _apply_roles(repo, manifest, tools, server.params())
                with drill.part("download"):
                    for name in databases:
                        restore.restore_logical(repo, manifest, restore.LogicalRestore(name, name), server.params(),
                                                tools, work, drill.progress)
                check.detail = (f"{len(databases)} databases restored with pg_restore {tools.version} into "
                                f"PostgreSQL {binaries.version}")
            counts = {name: d["tables"] for name, d in details["databases"].items()}
            _pg_checks(drill, server, databases, counts, exact=True, default_db=source.dbname)
        finally:
            drill.cleanup(server)


def _apply_roles(repo: Repository, manifest: Manifest, tools: PgBinaries, params: ConnParams) -> None:
    """The backup's roles (pg_restore sets owners and grants), without its tablespaces: those name
    production's directories, which a drill must never create."""
    script = restore.restore_globals(repo, manifest, None, False, None, None) or ""
    kept = "".join(line + "\n" for line in script.splitlines() if not _TABLESPACE_SQL.match(line))
    run_tool(pg_logical.apply_sql_argv(tools, params.dbname), params.env(), "psql applying the backup's roles",
             stdin=kept.encode())


def _pg_checks(drill: _Drill, server: DrillServer, databases: list[str],
               recorded: dict[str, dict[str, int | None]] | None, exact: bool, default_db: str) -> None:
    """connect, amcheck, row_counts and the assertions, on a running scratch server."""
    params = server.params()
    with drill.part("checks"):
        with drill.step("connect") as check:
            check.detail = drill_checks.connect_all(params, databases)
        if drill.config.amcheck:
            with drill.step("amcheck") as check:
                check.detail = drill_checks.amcheck(server.binaries, params, len(databases), drill.remaining())
        else:
            drill.checks["amcheck"].detail = "turned off (drill.amcheck = false)"
        if recorded is None:
            drill.checks["row_counts"].detail = "the backup recorded no row counts (it predates them)"
        else:
            with drill.step("row_counts") as check:
                check.detail = drill_checks.pg_row_counts(params, recorded, exact, drill.remaining())
        for assertion, name in zip(drill.config.assertions, drill.assertion_names(), strict=True):
            with drill.step(name) as check:
                check.detail = drill_checks.pg_assertion(params, assertion, default_db, drill.remaining())


def _drill_sqlite(drill: _Drill, repo: Repository, source: SourceConfig, manifest: Manifest) -> None:
    drill.backup = manifest
    with contextlib.ExitStack() as held:
        try:
            with drill.step("restore", fatal=True) as check:
                held.enter_context(repo.reading("drill", [manifest]))
                details = open_details(manifest, repo.pipeline)
                database = manifest.object(layout.SQLITE_DATABASE)
                work = drill.workdir()
                ensure_free_space(work, database.size + 1024**2, f"the drill's copy of {manifest.id}")
                path = work / "restored.sqlite3"
                with (drill.part("download"), open(path, "xb") as out,
                      repo.pipeline.reading_progress(drill.progress, f"drill {manifest.id}", [database])):
                    repo.pipeline.read(database, out)
                check.detail = f"{human_size(database.size)} restored, every checksum verified"
            with drill.part("checks"):
                with drill.step("integrity_check") as check:
                    check.detail = drill_checks.sqlite_integrity(path)
                with drill.step("row_counts") as check:
                    check.detail = drill_checks.sqlite_row_counts(path, details.get("tables", {}))
                for assertion, name in zip(drill.config.assertions, drill.assertion_names(), strict=True):
                    with drill.step(name) as check:
                        check.detail = drill_checks.sqlite_assertion(path, assertion)
        finally:
            drill.cleanup(None)


# How each engine's backups are drilled (engine name -> steps); the checks each runs are the engine's.
_DRILLS: dict[str, Callable[[_Drill, Repository, Any, Any], None]] = {
    "physical": _drill_physical,
    "logical": _drill_logical,
    "sqlite": _drill_sqlite,
}
