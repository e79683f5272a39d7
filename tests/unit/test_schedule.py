"""Schedules: cron expressions mean what cron means, a bad one is one line at load, and the next runs and their
commands come from the config and an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from backupctl.core.config import parse_config
from backupctl.core.cron import cron_trigger
from backupctl.scheduler.runner import job_spec, next_runs

CONFIG = Path("/nonexistent/backupctl.toml")  # named in messages, never read
WEDNESDAY = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(("expression", "expected"), [
    ("0 2 * * 0", "2026-11-29 02:00 Sunday"),  # apscheduler's from_crontab would say Monday
    ("0 2 * * 7", "2026-11-29 02:00 Sunday"),
    ("0 2 * * 1-6", "2026-11-26 02:00 Thursday"),
    ("0 4 * * 3", "2026-11-25 04:00 Wednesday"),
    ("0 6 1 * *", "2026-12-01 06:00 Tuesday"),
    ("0 3 1 * 1", "2026-11-30 03:00 Monday"),  # the 1st OR a Monday, as cron does
    ("0 3 */2 * 1", "2026-12-07 03:00 Monday"),  # a day field starting with "*" is ANDed, as cron does
    ("0 2 * * sun", "2026-11-29 02:00 Sunday"),
])
def test_cron_fields_mean_what_cron_means(expression: str, expected: str) -> None:
    fire = cron_trigger(expression).get_next_fire_time(None, WEDNESDAY)
    assert fire.strftime("%Y-%m-%d %H:%M %A") == expected


def test_bad_cron_is_one_line_at_load() -> None:
    for expression, problem in (("0 2 * * 8", "weekday '8'"), ("0 2 * * 5-1", "runs backwards"),
                                ("61 2 * * *", "61"), ("0 2 * *", "five fields")):
        with pytest.raises(Exception, match=problem) as raised:
            parse_config({"repository": {"path": "/r"}, "sources": {"db": {
                "kind": "sqlite", "path": "/db", "schedule": {"backup": expression}}}}, CONFIG)
        assert "sources.db.schedule.backup" in str(raised.value)


def test_next_runs_and_commands_with_an_injected_clock() -> None:
    config = parse_config({"repository": {"path": "/r"}, "scheduler": {"timezone": "Europe/Paris"}, "sources": {
        "main": {"kind": "postgres", "schedule": {"full": "0 2 * * 0", "incr": "0 2 * * 1-6", "logical": "30 3 * * *",
                                                  "expire": "0 5 * * *", "verify": "0 4 * * 3", "drill": "0 6 1 * *"}},
        "devdb": {"kind": "sqlite", "path": "/db", "schedule": {"backup": "15 * * * *"}},
    }}, CONFIG)
    rows = {r["id"]: r for r in next_runs(config, WEDNESDAY)}  # 04:00 in Paris
    assert {k: v["next_run"] for k, v in rows.items()} == {
        "main/full": "2026-11-29T01:00:00.000Z",  # Sunday 02:00 in Paris is 01:00 UTC
        "main/incr": "2026-11-26T01:00:00.000Z",
        "main/logical": "2026-11-26T02:30:00.000Z",  # 03:30 in Paris has passed today
        "main/expire": "2026-11-25T04:00:00.000Z",
        "main/verify": "2026-11-25T03:00:00.000Z",  # Wednesday 04:00 in Paris: now
        "main/drill": "2026-12-01T05:00:00.000Z",
        "devdb/backup": "2026-11-25T03:15:00.000Z",
    }
    assert rows["main/full"]["command"] == "backup main --type full --output json"
    assert rows["main/verify"]["command"] == "verify --latest main --output json"
    assert rows["main/drill"]["command"] == "drill run main --output json"
    assert rows["devdb/backup"]["command"] == "backup devdb --output json"
    assert {r["lane"] for k, r in rows.items() if k.endswith(("full", "incr", "logical", "expire", "backup"))} \
        == {"backup"}
    assert rows["main/verify"]["lane"] == rows["main/drill"]["lane"] == "check"
    assert job_spec(config.source("main"), "backup").backup_type == "logical"
    with pytest.raises(Exception, match="SQLite database: its backup job is 'backup'"):
        job_spec(config.source("devdb"), "full")
