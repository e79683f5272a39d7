"""Prometheus metrics: the gathered facts (status.py) and the scheduler's job counters, in the text format.

They are written to a node-exporter textfile after each job and served on ``/metrics`` by the scheduler
([metrics] textfile, listen). Times are Unix timestamps (``*_timestamp_seconds``) rather than ages, so a
textfile written an hour ago still tells the truth: alert on ``time() - backupctl_backup_last_success_
timestamp_seconds``. A verify or drill that never ran is a fact too (result -1 at timestamp 0), so an alert
can fire on "never"; what could not be read is absent. The alert rules and the Grafana dashboard over these
names are in the repository's ``monitoring/`` (tests/integration/test_monitoring_files.py keeps them in step).
Job counters must survive the process that counted them (a systemd timer runs one job per process), so they
are read back from the textfile before it is rewritten, under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from backupctl import __version__
from backupctl.core.log import get_logger
from backupctl.repo.catalog import parse_iso

if TYPE_CHECKING:  # types only: the metrics endpoint need not load what gathering the facts needs
    from backupctl.monitoring.status import DrillSummary, SourceStatus, VerifySummary

log = get_logger(__name__)


def _ts(text: str | None) -> float | None:
    return parse_iso(text).timestamp() if text else None


@dataclass
class JobStats:
    """Runs and failures per (source, job), the last run's duration and time, the last success's time."""

    runs: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (source, job, status) -> count
    last: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)

    def record(self, source: str, job: str, ok: bool, duration: float, finished: float) -> None:
        key = (source, job, "success" if ok else "failure")
        self.runs[key] = self.runs.get(key, 0) + 1
        last = self.last.setdefault((source, job), {})
        last.update({"duration": duration, "run": finished})
        if ok:
            last["success"] = finished

    def failures(self, source: str, job: str) -> float:
        return self.runs.get((source, job, "failure"), 0)

    @classmethod
    def parse(cls, text: str) -> JobStats:
        """The counters of an earlier exposition (a textfile this module wrote)."""
        stats = cls()
        fields = {"backupctl_job_last_duration_seconds": "duration", "backupctl_job_last_run_timestamp_seconds": "run",
                  "backupctl_job_last_success_timestamp_seconds": "success"}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "backupctl_job_runs_total":
                    stats.runs[(labels["source"], labels["job"], labels["status"])] = sample.value
                elif sample.name in fields:
                    stats.last.setdefault((labels["source"], labels["job"]), {})[fields[sample.name]] = sample.value
        return stats

    def families(self) -> Iterator[Metric]:
        runs = CounterMetricFamily("backupctl_job_runs", "Jobs run by the scheduler, by outcome.",
                                   labels=["source", "job", "status"])
        failures = CounterMetricFamily("backupctl_job_failures", "Jobs that failed.", labels=["source", "job"])
        for (source, job, status), count in sorted(self.runs.items()):
            runs.add_metric([source, job, status], count)
        for source, job in sorted({(s, j) for s, j, _ in self.runs}):
            failures.add_metric([source, job], self.failures(source, job))
        yield runs
        yield failures
        gauges = [("duration", "backupctl_job_last_duration_seconds", "How long the last run of a job took."),
                  ("run", "backupctl_job_last_run_timestamp_seconds", "When the last run of a job ended."),
                  ("success", "backupctl_job_last_success_timestamp_seconds", "When a job last succeeded.")]
        for key, name, doc in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["source", "job"])
            for (source, job), last in sorted(self.last.items()):
                if key in last:
                    gauge.add_metric([source, job], last[key])
            yield gauge


class _Families:
    """Gauge families keyed by name, so each fact is one line of code below."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily] = {}

    def set(self, name: str, doc: str, labels: dict[str, str], value: float | None) -> None:
        if value is None:
            return
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = GaugeMetricFamily(name, doc, labels=list(labels))
        family.add_metric(list(labels.values()), float(value))


def status_families(statuses: Iterable[SourceStatus]) -> list[Metric]:
    """The facts of each source as gauges (and pg_stat_archiver's failure counter)."""
    out = _Families()
    archive_failures = CounterMetricFamily("backupctl_wal_archive_failures",
                                           "Failed archive_command runs (pg_stat_archiver.failed_count).",
                                           labels=["source"])
    for status in statuses:
        src = {"source": status.source}
        repository = status.repository
        reachable = repository is not None and repository.reachable
        out.set("backupctl_status_timestamp_seconds", "When these facts were gathered.", src,
                _ts(status.checked_at))
        out.set("backupctl_repository_up", "1 when the repository answered.", src, 1 if reachable else 0)
        out.set("backupctl_repository_stored_bytes", "Bytes the source occupies in the repository.", src,
                repository.stored_bytes if repository is not None and reachable else None)
        for backup in status.backups:
            typ = {**src, "type": backup.type}
            out.set("backupctl_backups", "Complete backups in the repository.", typ, backup.count)
            out.set("backupctl_backup_last_success_timestamp_seconds", "When the newest backup finished.", typ,
                    _ts(backup.finished_at))
            out.set("backupctl_backup_last_duration_seconds", "How long the newest backup took.", typ,
                    backup.duration_seconds)
            out.set("backupctl_backup_last_size_bytes", "Bytes read by the newest backup.", typ, backup.size)
            out.set("backupctl_backup_last_stored_bytes", "Bytes the newest backup stored (compressed).", typ,
                    backup.stored_size)
            if backup.server:
                out.set("backupctl_backup_last_server_info", "The server the newest backup of a type was copied "
                        "from (1).", {**typ, "server": backup.server["name"], "role": backup.server["role"]}, 1)
        _standbys(out, status)
        wal = status.wal
        out.set("backupctl_wal_last_archived_timestamp_seconds", "When the newest WAL segment was archived.", src,
                _ts(wal.newest_archived_at if wal else None))
        out.set("backupctl_wal_archive_age_seconds", "Age of the newest archived WAL segment when gathered.", src,
                wal.age_seconds if wal else None)
        server = status.server or {}
        if server.get("reachable"):
            archive_failures.add_metric([status.source], server["failed_count"])
            out.set("backupctl_wal_archive_failing", "1 while archive_command fails (newest failure after the "
                    "newest success).", src, 1 if server["failing"] else 0)
        out.set("backupctl_wal_ready_segments", "Segments waiting in pg_wal/archive_status.", src, server.get("ready"))
        out.set("backupctl_wal_oldest_ready_age_seconds", "How long the oldest segment waiting in "
                "pg_wal/archive_status has waited (0 when none waits).", src,
                (server["oldest_ready_age_seconds"] or 0.0) if "oldest_ready_age_seconds" in server else None)
        out.set("backupctl_pg_wal_bytes", "Size of pg_wal.", src, server.get("pg_wal_bytes"))
        out.set("backupctl_data_directory_free_ratio", "Free space on the data directory's filesystem (0-1).", src,
                server["disk_free_percent"] / 100 if server.get("disk_free_percent") is not None else None)
        window = status.window
        if window is not None and window.seconds is not None:
            kind = {**src, "kind": window.kind}
            out.set("backupctl_recoverable_window_seconds", "Span between the earliest and latest point a restore "
                    "can reach.", kind, window.seconds)
            out.set("backupctl_recoverable_window_start_timestamp_seconds", "The earliest point a restore can "
                    "reach.", kind, _ts(window.earliest))
            out.set("backupctl_recoverable_window_end_timestamp_seconds", "The latest point a restore can reach.",
                    kind, _ts(window.latest))
        records: tuple[tuple[str, str, VerifySummary | DrillSummary | None], ...] = (
            ("verify", "last verify", status.last_verify), ("drill", "last drill", status.last_drill))
        for what, part, record in records:
            if record:
                success, finished = (1 if record.status == "passed" else 0), _ts(record.finished_at)
            elif reachable and not status.failed(part):
                # Known to have none yet: "never" (-1, at time 0) rather than absent, so an alert can fire on it.
                success, finished = -1, 0.0
            else:  # not known (the repository or its records could not be read): absent, as every unread fact
                continue
            out.set(f"backupctl_{what}_last_success", f"1 when the last {what} passed, 0 when it failed, -1 when "
                    "none has run yet.", src, success)
            out.set(f"backupctl_{what}_last_timestamp_seconds", f"When the last {what} finished (0 when none has "
                    "run yet).", src, finished)
        out.set("backupctl_drill_last_rto_seconds", "Restore time measured by the last drill.", src,
                status.last_drill.rto_seconds if status.last_drill else None)
        _running_backup(out, status)
        out.set("backupctl_drill_scheduled", "1 when the source's schedule runs drills ([sources.NAME.schedule] "
                "drill).", src, 1 if status.drills_scheduled else 0)
    return [*out.families.values(), archive_failures]


def _standbys(out: _Families, status: SourceStatus) -> None:
    """Each configured standby: up, and how far behind it is (absent when down or not in recovery)."""
    for standby in status.standbys:
        labels = {"source": status.source, "standby": standby.name}
        probe = standby.probe
        out.set("backupctl_standby_up", "1 when the standby answered and is in recovery.", labels,
                1 if probe.up and probe.in_recovery else 0)
        out.set("backupctl_standby_lag_bytes", "WAL the standby received but has not replayed.", labels,
                probe.lag_bytes)
        out.set("backupctl_standby_replay_delay_seconds", "Age of the standby's last replayed commit (0 when it "
                "replayed all it received).", labels, probe.replay_delay)
        if probe.archiver is not None:
            out.set("backupctl_standby_archive_failing", "1 when the standby's own archive_command (archive_mode = "
                    "always) is failing now.", labels, 1 if probe.archiver["failing"] else 0)


def _running_backup(out: _Families, status: SourceStatus) -> None:
    """The backup running now (its lease): 0 or 1 whenever the repository answered, and how long and how far."""
    if status.repository is None or not status.repository.reachable:
        return
    src = {"source": status.source}
    running = status.running_backup
    out.set("backupctl_backup_running", "1 while a backup of the source runs (its lease is held).", src,
            1 if running else 0)
    if running is None:
        return
    out.set("backupctl_backup_running_seconds", "How long the running backup had run when gathered.", src,
            running.running_seconds)
    out.set("backupctl_backup_running_start_timestamp_seconds", "When the running backup started.", src,
            _ts(running.started_at))
    out.set("backupctl_backup_running_bytes", "Bytes the running backup had read at its last lease renewal.", src,
            running.bytes_done)
    out.set("backupctl_backup_running_total_bytes", "The running backup's estimate of the bytes it will read.", src,
            running.bytes_total)


def build_info() -> Metric:
    """``backupctl_build_info{version, python} 1``: which backupctl wrote these metrics, and on what Python."""
    info = GaugeMetricFamily("backupctl_build_info", "The backupctl and Python versions that wrote these metrics.",
                             labels=["version", "python"])
    info.add_metric([__version__, platform.python_version()], 1)
    return info


class Exposition(Collector):
    """The current snapshot of every family, swapped whole; a registry collects it on each scrape."""

    def __init__(self) -> None:
        self._families: list[Metric] = []
        self._lock = threading.Lock()

    def update(self, statuses: Iterable[SourceStatus], jobs: JobStats | None) -> None:
        families = [build_info(), *status_families(statuses), *(jobs.families() if jobs else ())]
        with self._lock:
            self._families = families

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            return iter(list(self._families))

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def text(self) -> str:
        return generate_latest(self.registry()).decode()


@contextlib.contextmanager
def _locked_counters(path: Path) -> Iterator[JobStats]:
    """Serialise writers of one textfile (a scheduler and timers may share it); yields its job counters."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            jobs = JobStats.parse(path.read_text())
        except FileNotFoundError:
            jobs = JobStats()
        except ValueError as exc:
            log.warning("metrics textfile unreadable: job counters start again", file=str(path), error=str(exc))
            jobs = JobStats()
        yield jobs


class Publisher:
    """The facts of every source and the job counters, exposed on /metrics and written to the textfile.

    A failure to write the textfile is logged, never raised: metrics must not fail the job they describe.
    """

    def __init__(self, textfile: Path | None) -> None:
        self.textfile = textfile
        self.jobs = JobStats()
        self.statuses: dict[str, SourceStatus] = {}
        self.exposition = Exposition()
        self._lock = threading.Lock()

    def publish(self, statuses: Iterable[SourceStatus] = (),
                job: tuple[str, str, bool, float, float] | None = None) -> None:
        """Take new facts and/or one finished job (source, job, ok, seconds, finished timestamp); write."""
        with self._lock:
            self.statuses.update({s.source: s for s in statuses})
            if self.textfile is not None:
                try:
                    with _locked_counters(self.textfile) as on_disk:
                        if job:
                            on_disk.record(*job)
                        self.jobs, job = on_disk, None
                        self.exposition.update(self.statuses.values(), self.jobs)
                        write_to_textfile(os.fspath(self.textfile), self.exposition.registry())
                        # node-exporter runs as another user, and the units' UMask=0077 made it 0600.
                        os.chmod(self.textfile, 0o644)
                        return
                except OSError as exc:
                    log.warning("metrics textfile not written", file=str(self.textfile), error=str(exc))
            if job:
                self.jobs.record(*job)
            self.exposition.update(self.statuses.values(), self.jobs)
