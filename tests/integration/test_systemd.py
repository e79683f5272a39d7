"""The units in systemd/: `systemd-analyze verify` accepts each of them, they say what the issue asks
(Type=notify and hardening for the scheduler, Persistent timers with a randomized delay), and the command
line of each timer's service runs its job against a real SQLite source and repository."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import cli_env
from tests.support.ops_helpers import sqlite_site

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED = "/opt/backupctl/.venv/bin/backupctl"
JOBS = ("backup", "expire", "verify", "drill")


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("systemd-analyze is required in CI (Debian package systemd; .ci/run installs it)")
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return found


def _settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def _installed_copy(directory: Path, backupctl: str) -> list[Path]:
    """The units as an installation has them (our backupctl), templates instantiated for source devdb."""
    paths = []
    for unit in sorted(UNITS.glob("backupctl-*")):
        (directory / unit.name).write_text(unit.read_text().replace(INSTALLED, backupctl))
        if "@." in unit.name:
            instance = directory / unit.name.replace("@.", "@devdb.")
            instance.symlink_to(unit.name)
            paths.append(instance)
        else:
            paths.append(directory / unit.name)
    return paths


def test_every_unit_is_present() -> None:
    names = {p.name for p in UNITS.glob("backupctl-*")}
    assert names == {"backupctl-scheduler.service"} | {f"backupctl-{j}@.{k}" for j in JOBS
                                                         for k in ("service", "timer")}


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    units = _installed_copy(tmp_path, str(Path(sys.executable).parent / "backupctl"))
    result = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    for job in JOBS:
        calendar = _settings(UNITS / f"backupctl-{job}@.timer")["Timer"]["OnCalendar"][0]
        parsed = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True, check=False)
        assert parsed.returncode == 0 and "Next elapse" in parsed.stdout, parsed.stderr


def test_the_scheduler_unit_is_a_hardened_notify_service() -> None:
    service = _settings(UNITS / "backupctl-scheduler.service")["Service"]
    expected = {"Type": "notify", "NotifyAccess": "main", "User": "postgres", "KillMode": "mixed",
                "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
                "PrivateDevices": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": ""}
    assert {k: service[k][0] for k in expected} == expected
    writable = " ".join(service["ReadWritePaths"]).split()
    assert {"-/var/lib/backupctl", "-/var/spool/backupctl", "-/var/lib/postgresql"} <= set(writable)
    assert service["WatchdogSec"] and service["ExecStart"][0].endswith(" scheduler")


@pytest.mark.parametrize("job", JOBS)
def test_timers_are_persistent_with_a_randomized_delay(job: str) -> None:
    timer = _settings(UNITS / f"backupctl-{job}@.timer")["Timer"]
    assert timer["Persistent"] == ["true"] and timer["RandomizedDelaySec"]
    calendar = timer["OnCalendar"][0]
    assert {"verify": calendar.startswith("Wed "), "drill": calendar.startswith("*-*-01 ")}.get(job, True)
    service = _settings(UNITS / f"backupctl-{job}@.service")
    assert service["Service"]["Type"] == ["oneshot"] and service["Service"]["User"] == ["postgres"]
    assert service["Service"]["ProtectSystem"] == ["strict"] and service["Service"]["NoNewPrivileges"] == ["yes"]
    assert "timers.target" in _settings(UNITS / f"backupctl-{job}@.timer")["Install"]["WantedBy"]


def test_each_timer_service_runs_its_job(tmp_path: Path) -> None:
    """ExecStart= as systemd would run it for instance devdb (%i, ${BACKUPCTL_JOB} expanded)."""
    site = sqlite_site(tmp_path, {"sources": {"devdb": {"retention": {"keep_last": 2}}}})
    backupctl = str(Path(sys.executable).parent / "backupctl")
    for job in JOBS:
        service = _settings(UNITS / f"backupctl-{job}@.service")["Service"]
        environment = dict(e.split("=", 1) for e in service.get("Environment", []))
        line = service["ExecStart"][0].replace("%i", "devdb").replace("${BACKUPCTL_JOB}",
                                                                       environment.get("BACKUPCTL_JOB", ""))
        argv = shlex.split(line)
        assert argv[0] == INSTALLED and argv[1:3] == ["--config", "/etc/backupctl/backupctl.toml"]
        result = subprocess.run([backupctl, "--config", str(site.config), *argv[3:]], capture_output=True,
                                text=True, env=cli_env(), timeout=300, check=False)
        assert result.returncode == 0, f"{job}: {result.stderr}"
    facts = site.cli("status", "-o", "json")
    assert '"status": "passed"' in facts.stdout  # the verify and the drill left their records
