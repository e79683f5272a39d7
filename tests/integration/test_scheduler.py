"""The scheduler: jobs as real child processes in two lanes per source, catch-up after downtime, SIGTERM that
leaves no lease and no manifest, webhooks, metrics, sd_notify. (Cron read as cron reads it, and the next runs:
unit/test_schedule.py.)

Jobs are real `backupctl` children against a local repository of a real SQLite database; triggers are
short intervals so that schedules fire within seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client.parser import text_string_to_metric_families

from backupctl.core.config import load_config, parse_config
from backupctl.core.cron import cron_trigger
from backupctl.monitoring.status import NewestBackup, RepositoryFacts, SourceStatus
from backupctl.repo import lease
from backupctl.scheduler.runner import JobSpec, Scheduler, last_due
from tests.support.cli import cli_env
from tests.support.ops_helpers import NotifySocket, json_lines, sqlite_site, webhook_receiver
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import archiving_site
from tests.support.s3_servers import free_port


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# --- catch-up after downtime ---------------------------------------------------------------------------


def test_missed_runs_are_caught_up_from_what_the_repository_shows(tmp_path: Path) -> None:
    config = parse_config({"repository": {"path": "/r"}, "scheduler": {"timezone": "UTC", "misfire_grace": "1h"},
                           "sources": {"devdb": {"kind": "sqlite", "path": "/db", "schedule": {
                               "backup": "0 2 * * *", "verify": "0 4 * * *", "expire": "0 2 * * *"}}}},
                          tmp_path / "b.toml")
    scheduler = Scheduler(config, tmp_path / "b.toml")
    trigger = cron_trigger("0 2 * * *")
    assert last_due(trigger, datetime(2026, 11, 25, 1, 50, tzinfo=UTC), datetime(2026, 11, 25, 2, 20, tzinfo=UTC)) \
        == datetime(2026, 11, 25, 2, 0, tzinfo=UTC)

    def status(backup_finished: str | None, reachable: bool = True) -> list[SourceStatus]:
        backups = (NewestBackup("sqlite", "b", backup_finished, 0.0, 1, 1, 1.0, 1),) if backup_finished else ()
        return [SourceStatus("devdb", "sqlite", "2026-11-25T02:20:00Z", False,
                             repository=RepositoryFacts(reachable=reachable), backups=backups)]

    at_0220 = datetime(2026, 11, 25, 2, 20, tzinfo=UTC)
    assert [s.job for s in scheduler.missed_runs(status("2026-11-24T02:01:00Z"), at_0220)] == ["backup"]
    assert scheduler.missed_runs(status("2026-11-25T02:05:00Z"), at_0220) == []  # it ran
    assert scheduler.missed_runs(status(None), datetime(2026, 11, 25, 3, 30, tzinfo=UTC)) == []  # past the grace
    assert scheduler.missed_runs(status(None, reachable=False), at_0220) == []  # nothing to judge by


# --- jobs and lanes, in process ----------------------------------------------------------------------------


def test_schedules_fire_jobs_metrics_and_the_endpoint(tmp_path: Path) -> None:
    port = free_port()
    site = sqlite_site(tmp_path, {"metrics": {"textfile": str(tmp_path / "backupctl.prom"),
                                              "listen": f"127.0.0.1:{port}"}})
    config = load_config(site.config)
    scheduler = Scheduler(config, site.config)
    backup, verify = JobSpec("devdb", "backup"), JobSpec("devdb", "verify")
    scheduler.schedule(backup, IntervalTrigger(seconds=1))
    scheduler.schedule(verify, IntervalTrigger(seconds=1, start_date=datetime.now(UTC) + timedelta(seconds=1.5)))
    scheduler.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = [r.spec.job for r in scheduler.history]
            if jobs.count("backup") >= 2 and jobs.count("verify") >= 1:
                break
            time.sleep(0.2)
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        stopping = datetime.now(UTC)
        scheduler.stop()
    results = [r for r in scheduler.history if r.finished_at < stopping]
    assert sum(r.spec.job == "backup" for r in results) >= 2, [(r.spec.job, r.error) for r in results]
    assert all(r.ok for r in results), [r.error for r in results]
    stopped = [r for r in scheduler.history if r.finished_at >= stopping]  # a job that stop() interrupted
    assert all("SIGTERM" in (r.error or "") for r in stopped if not r.ok), [r.error for r in stopped]
    backups = [r.result["id"] for r in results if r.spec.job == "backup"]
    listed = {b["id"] for b in json.loads(site.cli("list", "devdb", "-o", "json").stdout)}
    assert set(backups) <= listed, "each backup job's result is a backup in the catalog"
    verified = [json.loads(site.storage().get_bytes(k)) for k in site.keys("devdb/verifications/")]
    assert verified and all(v["status"] == "passed" and v["backup_id"] in listed for v in verified)

    # The textfile is written after stop(): a backup that stop() interrupted counts there as a failure.
    interrupted = sum(r.spec.job == "backup" and not r.ok for r in stopped)
    for text, failures in ((scraped, 0), ((tmp_path / "backupctl.prom").read_text(), interrupted)):
        samples = _samples(text)
        runs = samples[("backupctl_job_runs_total", (("job", "backup"), ("source", "devdb"), ("status", "success")))]
        assert runs >= 2
        assert samples[("backupctl_job_failures_total", (("job", "backup"), ("source", "devdb")))] == failures
        last = samples[("backupctl_backup_last_success_timestamp_seconds", (("source", "devdb"), ("type", "sqlite")))]
        assert abs(last - time.time()) < 120
        assert samples[("backupctl_backups", (("source", "devdb"), ("type", "sqlite")))] >= 2
        assert samples[("backupctl_repository_up", (("source", "devdb"),))] == 1
        assert samples[("backupctl_verify_last_success", (("source", "devdb"),))] == 1


def test_a_backup_waits_for_its_lane_and_never_for_the_check_lane(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path)
    scheduler = Scheduler(load_config(site.config), site.config)
    assert site.cli("backup", "devdb").code == 0
    backup, verify = JobSpec("devdb", "backup"), JobSpec("devdb", "verify")

    # A long drill holds the check lane: a backup still runs at once.
    with scheduler.lane("devdb", "check"):
        result = scheduler.fire(backup)
        assert result is not None and result.ok, result and result.error

    # A running backup holds the backup lane: the next backup waits, verify does not.
    done: list = []
    with scheduler.lane("devdb", "backup"):
        waiting = threading.Thread(target=lambda: done.append(scheduler.fire(backup)))
        waiting.start()
        verified = scheduler.fire(verify)
        assert verified is not None and verified.ok, verified and verified.error
        time.sleep(1)
        assert done == [] and scheduler.runner.running() == 0, "the second backup must not have started"
    waiting.join(60)
    assert done and done[0].ok
    assert len(json.loads(site.cli("list", "devdb", "-o", "json").stdout)) == 3


def test_backups_of_one_source_never_overlap(tmp_path: Path) -> None:
    """Fired together, they run one after the other (overlapping, the second would fail on the lease)."""
    site = sqlite_site(tmp_path, {"compression": {"level": 19}}, blob_mib=4)
    scheduler = Scheduler(load_config(site.config), site.config)
    threads = [threading.Thread(target=scheduler.fire, args=(JobSpec("devdb", "backup"),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    results = sorted(scheduler.history, key=lambda r: r.started_at)
    assert len(results) == 3 and all(r.ok for r in results), [r.error for r in results]
    for before, after in itertools.pairwise(results):
        assert before.finished_at <= after.started_at, "two backups of devdb ran at the same time"


# --- the real service: SIGTERM, sd_notify, webhooks ----------------------------------------------------------


def test_sigterm_during_a_job_leaves_no_lease_and_no_manifest(tmp_path: Path) -> None:
    """`backupctl scheduler` as systemd runs it: READY, WATCHDOG, a catch-up backup, SIGTERM mid-backup."""
    with webhook_receiver() as hook:
        site = sqlite_site(tmp_path, {
            "compression": {"level": 19},  # ~3 MiB/s on random bytes: a backup that takes seconds
            "scheduler": {"wal_pusher": False},
            "webhooks": [{"url": hook.url, "timeout": "5s"}],
            "sources": {"devdb": {"schedule": {"backup": "* * * * *"}}},  # due within the last minute
        }, blob_mib=24)
        notify = NotifySocket(tmp_path / "notify.sock")
        env = {**cli_env(), "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
        proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(site.config), "scheduler"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        storage = site.storage()
        try:
            deadline = time.monotonic() + 60
            while lease.live_exclusive(storage, "devdb", "backup") is None:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
                time.sleep(0.1)
            holder = lease.live_exclusive(storage, "devdb", "backup")
            time.sleep(1)  # let it upload a part of the data
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        messages = notify.drain()
        notify.close()
    assert proc.returncode == 0, stderr
    assert lease.live_exclusive(storage, "devdb", "backup") is None, "the lease was released"
    assert site.keys("devdb/backups/") == [], "no manifest and no data object of the interrupted backup"
    assert holder.details["backup_id"] and holder.pid != proc.pid  # the child held it, not the scheduler
    assert messages[0].startswith("READY=1") and "WATCHDOG=1" in messages
    assert messages[-1].startswith("STOPPING=1")

    lines = json_lines(stderr)
    started = [line for line in lines if line["event"] == "job started"]
    assert len(started) == 1
    job_id = started[0]["job_id"]
    child = [line for line in lines if line.get("logger_name", "").startswith("backupctl.services.backup")]
    assert child and all(line["job_id"] == job_id for line in child), "every line of the job names it"
    failed = [line for line in lines if line["event"] == "job failed"]
    assert failed and "interrupted by SIGTERM" in failed[0]["error"] and failed[0]["job_id"] == job_id
    assert [(e["status"], e["job"], e["id"]) for e in hook.events] == [("failure", "backup", job_id)]
    assert "interrupted by SIGTERM" in hook.events[0]["error"]


def test_run_job_forwards_sigterm_to_its_job(tmp_path: Path) -> None:
    """What `systemctl stop backupctl-backup@devdb` does (KillMode=mixed: SIGTERM to backupctl only)."""
    site = sqlite_site(tmp_path, {"compression": {"level": 19}}, blob_mib=24)
    proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(site.config), "scheduler", "run-job",
                             "devdb", "backup"], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    storage = site.storage()
    try:
        deadline = time.monotonic() + 60
        while lease.live_exclusive(storage, "devdb", "backup") is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert lease.live_exclusive(storage, "devdb", "backup") is None
    assert site.keys("devdb/backups/") == []
    assert "interrupted by SIGTERM" in json_lines(stderr)[-1]["error"]


def test_run_job_reports_to_webhooks_and_the_textfile(tmp_path: Path) -> None:
    textfile = tmp_path / "backupctl.prom"
    with webhook_receiver() as failures_only, webhook_receiver() as everything, webhook_receiver(500) as broken, \
            webhook_receiver(0) as babbling:
        site = sqlite_site(tmp_path, {"metrics": {"textfile": str(textfile)}, "webhooks": [
            {"url": failures_only.url}, {"url": everything.url, "on_success": True},
            {"url": broken.url, "on_success": True, "timeout": "2s"},
            {"url": babbling.url, "on_success": True, "timeout": "2s"},
            {"url": f"http://127.0.0.1:{free_port()}/nobody", "on_success": True, "timeout": "2s"}],
            "sources": {"other": {"kind": "sqlite", "path": str(tmp_path / "other.sqlite3")}}})
        previous_umask = os.umask(0o077)  # the units' UMask
        try:
            ok = site.cli("scheduler", "run-job", "devdb", "backup")
            assert ok.code == 0, ok.stderr
            site.db.rename(site.db.with_suffix(".gone"))
            failed = site.cli("scheduler", "run-job", "devdb", "backup")
        finally:
            os.umask(previous_umask)
    assert failed.code == 1
    assert [e["status"] for e in everything.events] == ["success", "failure"]
    assert [e["status"] for e in failures_only.events] == ["failure"]
    assert len(broken.events) == 2, "a refusing hook is tried and only logged"
    assert len(babbling.events) == 2, "a hook that does not speak HTTP is only logged"
    event = failures_only.events[0]
    assert event["source"] == "devdb" and event["job"] == "backup" and event["host"] and event["exit_code"] == 1
    assert "dev.sqlite3" in event["error"] and event["duration_seconds"] > 0
    assert everything.events[0]["result"]["id"] in site.cli("list", "devdb").stdout
    assert failures_only.headers[0]["Content-Type"] == "application/json"
    warnings = [line for line in json_lines(failed.stderr) if line["event"].startswith("webhook")]
    assert {w["event"] for w in warnings} == {"webhook refused the event", "webhook not delivered"}
    assert all("secret-token" not in json.dumps(w) for w in warnings), "webhook URLs may carry tokens"

    assert textfile.stat().st_mode & 0o777 == 0o644, "node-exporter reads it as another user"
    samples = _samples(textfile.read_text())
    assert any(("source", "other") in labels for _, labels in samples), "a timer's job keeps the other sources"
    labels = (("job", "backup"), ("source", "devdb"))
    assert samples[("backupctl_job_runs_total", (*labels, ("status", "success")))] == 1
    assert samples[("backupctl_job_runs_total", (*labels, ("status", "failure")))] == 1
    assert samples[("backupctl_job_failures_total", labels)] == 1, "counters survive across processes"
    assert samples[("backupctl_job_last_success_timestamp_seconds", labels)] < \
        samples[("backupctl_job_last_run_timestamp_seconds", labels)]


def test_wal_pusher_runs_inside_the_scheduler(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        site.stop_pusher()
        deadline = time.monotonic() + 30
        while site.pusher_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(site.config), "scheduler"],
                                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while (pid := site.pusher_pid()) is None or _parent(pid) != proc.pid:
                assert proc.poll() is None and time.monotonic() < deadline, "the scheduler started no pusher"
                if pid is not None and _parent(pid) not in (None, proc.pid):
                    site.stop_pusher()  # one that archive_command started meanwhile: ours takes over
                time.sleep(0.1)
            owner = os.stat(f"/proc/{pid}").st_uid
            name = site.switch()
            site.wait_archived(name)
            assert name in site.wal_keys()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert owner == site.cluster.datadir.stat().st_uid, "the pusher runs as the server's OS user"
        deadline = time.monotonic() + 30
        while site.pusher_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert site.pusher_pid() is None, "the scheduler stops its pusher"
        assert any(line["event"] == "WAL pusher started" for line in json_lines(stderr))


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None
