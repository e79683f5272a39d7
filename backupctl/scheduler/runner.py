"""`backupctl scheduler`: run each source's scheduled jobs, unattended, for as long as the service runs.

Each job is a child process of backupctl itself (``python -m backupctl --config FILE backup SOURCE ...``):
its memory is returned when it ends, a crash takes nothing else down, and it unwinds on SIGTERM exactly as
a command run by hand does (signals.py), removing partial uploads and releasing its lease. The child
gets a job id in ``$BACKUPCTL_JOB_ID`` and puts it on every log line; the scheduler's own lines name it too.

Per source there are two lanes, each running one job at a time: backups and expire in one (two backups of a
source never overlap), verify and drills in the other (a long drill never delays a backup; they read under
a shared lease). A job whose lane is busy waits for it. apscheduler fires the cron schedules, with
``misfire_grace`` and ``coalesce`` from [scheduler]; and at start, a run that was due within the grace
period while the scheduler was down, and that the repository shows did not happen, is caught up on.

After each job: webhooks ([[webhooks]]), then the source's facts are gathered again and the metrics written
([metrics]). Under systemd (Type=notify) the scheduler reports READY, pings the watchdog while its loop is
alive, and STOPPING; on SIGTERM it forwards the signal to running jobs, waits for them to unwind, and exits 0.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
import tzlocal

from backupctl.core.config import Config, PostgresSource, SourceConfig
from backupctl.core.cron import cron_trigger
from backupctl.core.errors import ConfigError
from backupctl.core.log import JOB_ID_ENV, get_logger
from backupctl.engines.registry import ENGINES, source_kind
from backupctl.monitoring import notify
from backupctl.monitoring.metrics import Publisher
from backupctl.monitoring.status import SourceStatus, gather
from backupctl.repo.catalog import iso, parse_iso
from backupctl.scheduler import endpoint
from backupctl.scheduler.pusher import PusherSupervisor
from backupctl.scheduler.systemd import sd_notify, watchdog_interval

log = get_logger(__name__)

BACKUP_JOBS = tuple(job for engine in ENGINES for job in engine.schedule_jobs)  # full, incr, logical, backup
JOBS = (*BACKUP_JOBS, "expire", "verify", "drill")
STOP_TIMEOUT = 90.0  # seconds running jobs get to unwind after SIGTERM before they are killed
_ERROR_PREFIX = "backupctl: error: "


# --- jobs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """One kind of job of one source, with its schedule (None: run on demand only)."""

    source: str
    job: str  # one of JOBS
    cron: str | None = None
    backup_type: str | None = None  # the --type of a backup job

    @property
    def id(self) -> str:
        return f"{self.source}/{self.job}"

    @property
    def lane(self) -> str:
        """"backup" (backups and expire: never overlapping) or "check" (verify and drills)."""
        return "check" if self.job in ("verify", "drill") else "backup"

    def arguments(self) -> list[str]:
        """The backupctl command line of the job, after ``--config FILE``; JSON output becomes the result
        in the job's webhook event (expire prints its whole plan: its event carries none)."""
        if self.job in BACKUP_JOBS:
            typed = ["--type", self.backup_type] if self.backup_type else []
            return ["backup", self.source, *typed, "--output", "json"]
        if self.job == "verify":
            return ["verify", "--latest", self.source, "--output", "json"]
        if self.job == "drill":
            return ["drill", "run", self.source, "--output", "json"]
        return ["expire", self.source]


def job_spec(source: SourceConfig, job: str, cron: str | None = None) -> JobSpec:
    """The job ``job`` of ``source``; "backup" is the source's own kind of backup (SQLite: its only one;
    PostgreSQL: logical, as `backupctl backup` without --type)."""
    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r} (jobs: {', '.join(JOBS)})")
    kind = source_kind(source)
    backup_type = job if job in kind.backup_types else None
    if job in BACKUP_JOBS and job != "backup" and backup_type is None:
        raise ConfigError(f"source {source.name} is {kind.noun}: its backup job is 'backup', not {job!r}")
    if job == "backup" and len(kind.backup_types) > 1:
        backup_type = kind.default_type  # a kind with a choice of types names the default in the job
    return JobSpec(source.name, job, cron, backup_type)


def plan_jobs(config: Config) -> list[JobSpec]:
    """Every scheduled job of the config, in source order."""
    specs = []
    for source in config.sources.values():
        for job in JOBS:
            cron = getattr(source.schedule, job)
            if cron is not None:
                specs.append(job_spec(source, job, cron))
    return specs


def timezone_of(config: Config) -> Any:
    """The zone of the cron expressions: [scheduler] timezone, else the host's local time (as cron)."""
    if config.scheduler.timezone:
        return ZoneInfo(config.scheduler.timezone)
    return tzlocal.get_localzone()


def trigger_for(spec: JobSpec, config: Config) -> Any:
    assert spec.cron is not None, "only scheduled jobs have a trigger"
    return cron_trigger(spec.cron, timezone_of(config))


def next_runs(config: Config, now: datetime | None = None) -> list[dict[str, Any]]:
    """`scheduler jobs`: each scheduled job and when it runs next (a stable JSON shape)."""
    now = now or datetime.now(UTC)
    rows = []
    for spec in plan_jobs(config):
        upcoming = trigger_for(spec, config).get_next_fire_time(None, now)
        rows.append({"id": spec.id, "source": spec.source, "job": spec.job, "lane": spec.lane,
                     "schedule": spec.cron, "command": " ".join(spec.arguments()),
                     "next_run": iso(upcoming) if upcoming else None})
    return rows


@dataclass
class JobResult:
    """How one run of a job ended."""

    spec: JobSpec
    job_id: str
    ok: bool
    exit_code: int | None
    error: str | None
    started_at: datetime
    finished_at: datetime
    result: Any = None  # the child's JSON output, when it printed one

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def event(self) -> dict[str, Any]:
        return notify.job_event(job_id=self.job_id, source=self.spec.source, job=self.spec.job, ok=self.ok,
                                error=self.error, duration=self.duration, started_at=iso(self.started_at),
                                finished_at=iso(self.finished_at), exit_code=self.exit_code, result=self.result)


def new_job_id(spec: JobSpec, now: datetime | None = None) -> str:
    """Time-sortable and unique enough to grep the journal for: ``20261125T020000123Z-main-full-3f9a``."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{spec.source}-{spec.job}-{secrets.token_hex(2)}"


def child_environment(job_id: str) -> dict[str, str]:
    """Ours, with the job id, and without systemd's notification variables (only the scheduler talks)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env[JOB_ID_ENV] = job_id
    return env


class JobRunner:
    """Runs jobs as child processes and can forward SIGTERM to all of them at once."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self.terminating = False

    def command(self, spec: JobSpec) -> list[str]:
        return [sys.executable, "-m", "backupctl", "--config", str(self.config_file), *spec.arguments()]

    def run(self, spec: JobSpec) -> JobResult:
        """Run the job to its end; its log lines pass through, its last error line becomes the result's."""
        job_id = new_job_id(spec)
        started = datetime.now(UTC)
        with structlog.contextvars.bound_contextvars(job_id=job_id, source=spec.source, job=spec.job):
            log.info("job started", command=spec.arguments())
            try:
                proc = subprocess.Popen(self.command(spec), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=child_environment(job_id),
                                        start_new_session=True)  # a Ctrl-C reaches it only through us
            except OSError as exc:
                return self._finish(spec, job_id, started, None, f"cannot start the job: {exc.strerror}", b"")
            with self._lock:
                self._children[proc.pid] = proc
                if self.terminating:  # a stop that came while the child was being created
                    proc.send_signal(signal.SIGTERM)
            tail: collections.deque[str] = collections.deque(maxlen=20)
            pump = threading.Thread(target=self._pump, args=(proc, tail), daemon=True)
            pump.start()
            assert proc.stdout is not None
            output = proc.stdout.read()
            code = proc.wait()
            pump.join()
            with self._lock:
                self._children.pop(proc.pid, None)
            return self._finish(spec, job_id, started, code, _error_of(code, list(tail)), output)

    def _pump(self, proc: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
        """Pass the child's stderr (its JSON log lines, already carrying the job id) through as it comes."""
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            if line:
                tail.append(line)
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write(line + "\n")
                    sys.stderr.flush()

    def _finish(self, spec: JobSpec, job_id: str, started: datetime, code: int | None, error: str | None,
                output: bytes) -> JobResult:
        result = None
        with contextlib.suppress(ValueError):
            result = json.loads(output) if output.strip() else None
        done = JobResult(spec, job_id, code == 0, code, error, started, datetime.now(UTC), result)
        with structlog.contextvars.bound_contextvars(job_id=job_id, source=spec.source, job=spec.job):
            fields = {"exit_code": code, "seconds": round(done.duration, 3)}
            if done.ok:
                log.info("job finished", **fields)
            else:
                log.error("job failed", error=error, **fields)
        return done

    def terminate_all(self) -> int:
        """SIGTERM every running job (once); returns how many there were."""
        with self._lock:
            self.terminating = True
            children = list(self._children.values())
        for proc in children:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        return len(children)

    def kill_all(self) -> None:
        """SIGKILL what did not unwind in time, with anything it started (its own session)."""
        with self._lock:
            children = list(self._children.values())
        for proc in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def running(self) -> int:
        with self._lock:
            return len(self._children)


def _error_of(code: int | None, tail: list[str]) -> str | None:
    """The child's own one-line error, else what its exit says."""
    if code == 0:
        return None
    for line in reversed(tail):
        if line.startswith(_ERROR_PREFIX):
            return line[len(_ERROR_PREFIX):]
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}" + (f": {tail[-1]}" if tail else "")


# --- after a job: webhooks and metrics -----------------------------------------------------------------


class Reporter:
    """What follows every job, whether the scheduler or a timer ran it: webhooks, then fresh metrics."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.publisher = Publisher(Path(config.metrics.textfile) if config.metrics.textfile else None)

    @property
    def metrics_wanted(self) -> bool:
        return bool(self.config.metrics.textfile or self.config.metrics.listen)

    def job_done(self, result: JobResult) -> None:
        if self.config.webhooks:
            notify.send(self.config.webhooks, result.event())
        if self.metrics_wanted:
            job = (result.spec.source, result.spec.job, result.ok, result.duration, result.finished_at.timestamp())
            # A fresh process (`run-job` from a timer) knows no other source yet: gather them all, or the
            # textfile it rewrites would drop every other source's metrics.
            self.refresh([result.spec.source] if self.publisher.statuses else None, job)

    def refresh(self, sources: list[str] | None = None, job: tuple[str, str, bool, float, float] | None = None,
                ) -> list[SourceStatus]:
        """Gather the facts of ``sources`` (all by default) and publish them."""
        statuses = gather(self.config, sources)
        self.publisher.publish(statuses, job)
        return statuses


def run_once(config: Config, config_file: Path, source: str, job: str) -> JobResult:
    """`scheduler run-job`: one job now, in the foreground, with its webhooks and metrics (timers, cron).

    SIGTERM and SIGINT are forwarded to the job, which unwinds; this process then reports and exits with
    the job's own exit code.
    """
    spec = job_spec(config.source(source), job)
    runner = JobRunner(config_file)
    with _forwarding_signals(lambda: runner.terminate_all()):
        result = runner.run(spec)
    Reporter(config).job_done(result)
    return result


@contextlib.contextmanager
def _forwarding_signals(on_signal: Callable[[], Any]) -> Iterator[None]:
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {signum: signal.getsignal(signum) for signum in handled}
    for signum in handled:
        signal.signal(signum, lambda *_: on_signal())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- the scheduler -------------------------------------------------------------------------------------------


class _ToStructlog(logging.Handler):
    """apscheduler logs through the standard library: route its lines into our JSON log."""

    def emit(self, record: logging.LogRecord) -> None:
        get_logger(record.name).log(record.levelno, record.getMessage())


class Scheduler:
    """The long-running scheduler; tests drive ``fire`` and ``schedule`` directly, with short triggers."""

    def __init__(self, config: Config, config_file: Path, runner: JobRunner | None = None) -> None:
        # apscheduler's scheduler costs ~17 ms beyond its triggers: only the resident loop needs it, not run-job
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self.config = config
        self.config_file = config_file
        self.runner = runner or JobRunner(config_file)
        self.reporter = Reporter(config)
        self.stopping = threading.Event()
        self.history: collections.deque[JobResult] = collections.deque(maxlen=200)
        self._lanes: dict[tuple[str, str], threading.Lock] = {}
        self._lanes_lock = threading.Lock()
        self.pushers: list[PusherSupervisor] = []
        self._http: Any = None
        # A job waits for its lane on a worker, and apscheduler drops a job that cannot get a worker within
        # misfire_grace: so one worker for every job (and its catch-up run) at once, plus the metrics refresh.
        workers = 2 * len(plan_jobs(config)) + 2
        self.aps = BackgroundScheduler(
            timezone=timezone_of(config),
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"misfire_grace_time": int(config.scheduler.misfire_grace),
                          "coalesce": config.scheduler.coalesce, "max_instances": 1},
        )

    def lane(self, source: str, lane: str) -> threading.Lock:
        with self._lanes_lock:
            return self._lanes.setdefault((source, lane), threading.Lock())

    def fire(self, spec: JobSpec) -> JobResult | None:
        """Run ``spec`` once its lane is free (what a trigger does); None when the scheduler stops first."""
        lane = self.lane(spec.source, spec.lane)
        waited = time.monotonic()
        while not lane.acquire(timeout=0.5):
            if self.stopping.is_set():
                return None
        try:
            if self.stopping.is_set():
                return None
            if time.monotonic() - waited > 1:
                log.info("job waited for its lane", source=spec.source, job=spec.job, lane=spec.lane,
                         seconds=round(time.monotonic() - waited, 1))
            result = self.runner.run(spec)
        finally:
            lane.release()
        self.history.append(result)
        try:
            self.reporter.job_done(result)
        except Exception as exc:  # reporting must never stop the scheduler
            log.error("job report failed", job_id=result.job_id, error=f"{type(exc).__name__}: {exc}")
        return result

    def schedule(self, spec: JobSpec, trigger: Any = None, **options: Any) -> None:
        """Add a job to apscheduler: its cron trigger, or the one given (tests use short intervals)."""
        self.aps.add_job(self.fire, trigger or trigger_for(spec, self.config), args=[spec], id=spec.id,
                         name=spec.id, replace_existing=True, **options)

    def missed_runs(self, statuses: list[SourceStatus], now: datetime) -> list[JobSpec]:
        """Jobs due within ``misfire_grace`` before ``now`` that the repository shows did not run then.

        What a scheduler that was down (a reboot, an upgrade) at 02:00 owes when it starts at 02:20. Backups
        are judged by the newest backup of their type, verify and drills by their last record; expire leaves
        no record and is not caught up (it runs again at its next time, with nothing lost).
        """
        by_source = {s.source: s for s in statuses}
        grace = timedelta(seconds=self.config.scheduler.misfire_grace)
        owed = []
        for spec in plan_jobs(self.config):
            status = by_source.get(spec.source)
            if spec.job == "expire" or status is None or not (status.repository and status.repository.reachable):
                continue  # no record to judge by, or no repository to read it from: wait for the schedule
            due = last_due(trigger_for(spec, self.config), now - grace, now)
            if due is None:
                continue
            last = _last_run(status, spec)
            if last is None or last < due:
                owed.append(spec)
        return owed

    def refresh_metrics(self) -> None:
        try:
            self.reporter.refresh()
        except Exception as exc:  # a refresh that fails is retried at the next one
            log.error("metrics refresh failed", error=f"{type(exc).__name__}: {exc}")

    def start(self) -> None:
        """Schedule every job, catch up on missed runs, start the pushers and the /metrics and /report endpoint."""
        specs = plan_jobs(self.config)
        for spec in specs:
            self.schedule(spec)
        now = datetime.now(UTC)
        statuses = gather(self.config, None, now)
        refuse_unsupported(specs, statuses)
        if self.reporter.metrics_wanted:
            self.reporter.publisher.publish(statuses)
            self.aps.add_job(self.refresh_metrics, "interval", seconds=self.config.metrics.refresh,
                             id="metrics-refresh", name="metrics refresh")
        for spec in self.missed_runs(statuses, now):
            log.info("catching up on a run missed while the scheduler was down", source=spec.source, job=spec.job)
            self.aps.add_job(self.fire, "date", run_date=now, args=[spec], id=f"{spec.id}/catch-up",
                             name=f"{spec.id} (catch-up)", misfire_grace_time=None)
        if self.config.metrics.listen:
            self._serve_metrics(self.config.metrics.listen)
        if self.config.scheduler.wal_pusher and self.config.wal.async_:
            for source in self.config.sources.values():
                if isinstance(source, PostgresSource) and source.pgdata and Path(source.pgdata).is_dir():
                    self.pushers.append(PusherSupervisor(self.config_file, source, self.stopping))
        if self.pushers and os.environ.get("NOTIFY_SOCKET") and not self.config.wal.spool_dir:
            log.warning("the WAL pusher's spool is in /tmp, which systemd's PrivateTmp hides from archive_command: "
                        "each would run its own pusher; set [wal] spool_dir (e.g. /var/spool/backupctl)")
        for pusher in self.pushers:
            pusher.start()
        aps_logger = logging.getLogger("apscheduler")
        aps_logger.handlers = [_ToStructlog()]
        aps_logger.setLevel(logging.WARNING)  # missed runs and job errors; our own lines tell the rest
        aps_logger.propagate = False
        self.aps.start()
        log.info("scheduler started", jobs=[s.id for s in specs], pushers=[p.source.name for p in self.pushers],
                 metrics=self.config.metrics.listen, textfile=self.config.metrics.textfile)

    def _serve_metrics(self, listen: str) -> None:
        self._http = endpoint.serve(listen, self.reporter.publisher.exposition.registry(), self.config)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop firing, forward SIGTERM to running jobs, wait for them to unwind (then kill), stop pushers."""
        self.stopping.set()
        self.aps.pause()
        running = self.runner.terminate_all()
        log.info("scheduler stopping", running_jobs=running)
        deadline = time.monotonic() + timeout
        while self.runner.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.runner.running():
            log.error("jobs did not stop in time: killed", jobs=self.runner.running(), seconds=timeout)
            self.runner.kill_all()
        self.aps.shutdown(wait=True)
        for pusher in self.pushers:
            pusher.stop(self.config.wal.timeout + 5)
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            thread.join(timeout=5)
        log.info("scheduler stopped")

    def serve(self) -> None:
        """Run until SIGTERM, SIGINT or SIGHUP; tell systemd how it goes."""
        with _forwarding_signals(self.stopping.set):
            self.start()
            sd_notify(f"READY=1\nSTATUS=scheduling {len(plan_jobs(self.config))} jobs")
            ping = watchdog_interval()
            while not self.stopping.wait(ping or 60):
                if ping and self.aps.running:
                    sd_notify("WATCHDOG=1")
            sd_notify("STOPPING=1\nSTATUS=waiting for running jobs to unwind")
            self.stop()


def refuse_unsupported(specs: list[JobSpec], statuses: list[SourceStatus]) -> None:
    """Refuse to start with a schedule the server cannot serve, rather than fail it every night."""
    majors = {s.source: (s.server or {}).get("major") for s in statuses}
    for spec in specs:
        major = majors.get(spec.source)
        if spec.job == "incr" and major is not None and major < 17:
            raise ConfigError(
                f"sources.{spec.source}.schedule.incr: incremental backups need PostgreSQL 17 or newer and "
                f"{spec.source} runs {major}: remove the incr schedule (full backups and archived WAL cover the "
                "days between)"
            )


def last_due(trigger: Any, since: datetime, now: datetime) -> datetime | None:
    """The latest time ``trigger`` fired in (since, now], or None."""
    due, fire = None, trigger.get_next_fire_time(None, since)
    while fire is not None and fire <= now:
        due, fire = fire, trigger.get_next_fire_time(fire, fire)
    return due


def _last_run(status: SourceStatus, spec: JobSpec) -> datetime | None:
    """When the repository says ``spec`` last ran (finished), from the gathered facts."""
    if spec.job in BACKUP_JOBS:
        typ = spec.backup_type or source_kind(status.kind).default_type
        times = [b.finished_at for b in status.backups if b.type == typ]
    else:
        record = status.last_verify if spec.job == "verify" else status.last_drill
        times = [record.finished_at] if record and record.finished_at else []
    return parse_iso(max(times)) if times else None
