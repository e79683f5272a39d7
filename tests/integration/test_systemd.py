"""The units in systemd/: `systemd-analyze verify` accepts each of them, and the command line of each timer's
service runs its job against a real SQLite source and repository. (What the units say: unit/test_systemd_units.py.)"""

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
from tests.support.systemd_units import INSTALLED, JOBS, UNITS, unit_settings


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("systemd-analyze is required in CI (Debian package systemd; .ci/run installs it)")
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return found


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


def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    units = _installed_copy(tmp_path, str(Path(sys.executable).parent / "backupctl"))
    result = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    for job in JOBS:
        calendar = unit_settings(UNITS / f"backupctl-{job}@.timer")["Timer"]["OnCalendar"][0]
        parsed = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True, check=False)
        assert parsed.returncode == 0 and "Next elapse" in parsed.stdout, parsed.stderr


def test_each_timer_service_runs_its_job(tmp_path: Path) -> None:
    """ExecStart= as systemd would run it for instance devdb (%i, ${BACKUPCTL_JOB} expanded)."""
    site = sqlite_site(tmp_path, {"sources": {"devdb": {"retention": {"keep_last": 2}}}})
    backupctl = str(Path(sys.executable).parent / "backupctl")
    for job in JOBS:
        service = unit_settings(UNITS / f"backupctl-{job}@.service")["Service"]
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
