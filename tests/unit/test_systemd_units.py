"""The units in systemd/ say what the issue asks: every unit present, Type=notify and hardening for the scheduler,
Persistent timers with a randomized delay. (systemd-analyze and the jobs themselves: integration/test_systemd.py.)"""

from __future__ import annotations

import pytest

from tests.support.systemd_units import JOBS, UNITS, unit_settings


def test_every_unit_is_present() -> None:
    names = {p.name for p in UNITS.glob("backupctl-*")}
    assert names == {"backupctl-scheduler.service"} | {f"backupctl-{j}@.{k}" for j in JOBS
                                                         for k in ("service", "timer")}


def test_the_scheduler_unit_is_a_hardened_notify_service() -> None:
    service = unit_settings(UNITS / "backupctl-scheduler.service")["Service"]
    expected = {"Type": "notify", "NotifyAccess": "main", "User": "postgres", "KillMode": "mixed",
                "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
                "PrivateDevices": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": ""}
    assert {k: service[k][0] for k in expected} == expected
    writable = " ".join(service["ReadWritePaths"]).split()
    assert {"-/var/lib/backupctl", "-/var/spool/backupctl", "-/var/lib/postgresql"} <= set(writable)
    assert service["WatchdogSec"] and service["ExecStart"][0].endswith(" scheduler")


@pytest.mark.parametrize("job", JOBS)
def test_timers_are_persistent_with_a_randomized_delay(job: str) -> None:
    timer = unit_settings(UNITS / f"backupctl-{job}@.timer")["Timer"]
    assert timer["Persistent"] == ["true"] and timer["RandomizedDelaySec"]
    calendar = timer["OnCalendar"][0]
    assert {"verify": calendar.startswith("Wed "), "drill": calendar.startswith("*-*-01 ")}.get(job, True)
    service = unit_settings(UNITS / f"backupctl-{job}@.service")
    assert service["Service"]["Type"] == ["oneshot"] and service["Service"]["User"] == ["postgres"]
    assert service["Service"]["ProtectSystem"] == ["strict"] and service["Service"]["NoNewPrivileges"] == ["yes"]
    assert "timers.target" in unit_settings(UNITS / f"backupctl-{job}@.timer")["Install"]["WantedBy"]
