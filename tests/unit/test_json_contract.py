"""docs/json-output.md against the code: every command with ``-o json`` is documented, and the typed results,
built directly, print exactly the documented fields (the CLI's own output is checked in
tests/integration/test_json_contract_cli.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from backupctl.cli.app import cli as cli_group
from backupctl.core.config import parse_config
from backupctl.monitoring.status import (
    DrillSummary,
    NewestBackup,
    RepositoryFacts,
    RunningBackup,
    SourceStatus,
    VerifySummary,
    WalFacts,
    Window,
)
from backupctl.repo.catalog import Manifest, StoredObject
from backupctl.scheduler.runner import next_runs
from backupctl.services.drill_results import DrillCheck, DrillResult, Reached, RtoParts
from backupctl.services.expire import ExpireOutcome
from backupctl.services.gc import GcItem
from backupctl.services.pitr import Plan, Target
from backupctl.services.retention import Decision, RetentionPlan, WalRange
from backupctl.services.verify import VerifyResult
from tests.support import json_contract

NOW = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
# `drill list` and `drill show` print stored drill results: `drill run`'s shape plus the sealed part's fields.
STORED_DRILL = "drill run"


def _json_commands(command: click.Command, path: list[str]) -> list[str]:
    """The commands whose --output offers json, by their words."""
    found = []
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            found += _json_commands(command.get_command(click.Context(command), name), [*path, name])
    elif any(isinstance(p.type, click.Choice) and "json" in p.type.choices
             for p in command.params if p.name == "output"):
        found.append(" ".join(path))
    return found


def test_every_command_with_json_output_is_documented() -> None:
    documented = {table.command for table in json_contract.tables().values()}
    commands = set(_json_commands(cli_group, []))
    expected = {STORED_DRILL if c in ("drill list", "drill show") else c for c in commands} | {"restore --plan"}
    assert commands >= {"status", "check", "list", "verify", "drill run", "restore", "wal status"}
    assert expected - documented == set(), "commands with -o json missing from docs/json-output.md"
    assert documented - expected == {"drill record"}, "docs/json-output.md documents a command that does not exist"


def _manifest(backup_type: str = "full") -> Manifest:
    obj = StoredObject(key="main/backups/20261204T120000000Z-F-abc/base.tar.zst", size=100, stored_size=40,
                       sha256="0" * 64, compression="zstd", encryption=None)
    return Manifest(id="20261204T120000000Z-F-abc", source="main", kind="postgres", type=backup_type,
                    started_at="2026-12-04T11:59:00Z", finished_at="2026-12-04T12:00:00Z", objects=[obj],
                    encryption=None, extra={"start_lsn": "0/2000028", "stop_lsn": "0/2000100"})


def test_status_prints_the_documented_fields_in_every_shape() -> None:
    backups = (NewestBackup("full", "20261204T120000000Z-F-abc", "2026-12-04T12:00:00Z", 54000.0, 100, 40, 60.0, 3),)
    wal = WalFacts("000000010000000000000005", "2026-12-05T02:59:00Z", 60.0, (1,), 5, 0, 80)
    verify = VerifySummary.from_record({"id": "V1", "backup_id": "B1", "status": "passed", "started_at": "t",
                                        "finished_at": "2026-12-05T01:00:00Z", "mode": "full", "bytes": 40,
                                        "error": None, "objects": 1}, NOW)
    drill = DrillSummary.from_record({"id": "D1", "backup_id": "B1", "status": "failed", "started_at": "t",
                                      "finished_at": "2026-12-05T02:00:00Z", "rto_seconds": None, "error": "x",
                                      "checks": [{"name": "amcheck", "status": "failed"}]}, NOW)
    usage = RepositoryFacts(reachable=True, location="/repo", stored_bytes=120, objects=4, backup_bytes=40,
                            wal_bytes=80)
    windows = [Window("pitr", "2026-12-04T12:00:00Z", "2026-12-05T02:59:00Z", 53940.0, None,
                      from_backup="20261204T120000000Z-F-abc", timeline=1, wal_last="000000010000000000000005"),
               Window("pitr", None, None, None, "from B1: segment missing"),
               Window("snapshots", "2026-12-04T12:00:00Z", "2026-12-04T12:00:00Z", 0.0, None, points=1)]
    running = RunningBackup("20261205T025900000Z-F-abc", "full backup", "db1", 4242, "2026-12-05T02:59:00Z", 60.0,
                            1000, 5000)
    statuses = [SourceStatus("main", "postgres", "2026-12-05T03:00:00Z", True, repository=usage, backups=backups,
                             backup_count=3, wal=wal, window=window, last_verify=verify, last_drill=drill,
                             errors=("timelines: unreadable",), running_backup=running)
                for window in windows]
    statuses.append(SourceStatus("main", "postgres", "2026-12-05T03:00:00Z", False,
                                 repository=RepositoryFacts(reachable=False, error="refused"),
                                 errors=("repository: refused",)))
    # 4 sources; 7 parts of each reachable one (server and timelines are null here); the unreachable repository
    assert json_contract.check("status", [s.to_json() for s in statuses]) == 4 + 3 * 7 + 1
    assert statuses[0].to_json()["last_drill"]["failed_checks"] == ["amcheck"]


def test_a_drill_result_prints_the_documented_fields() -> None:
    result = DrillResult(
        id="20261205T030000000Z-D-abc", source="main", backup_id="20261204T120000000Z-F-abc", backup_type="full",
        kind="postgres", status="passed", started_at="2026-12-05T03:00:00Z", finished_at="2026-12-05T03:01:00Z",
        duration_seconds=60.0, target=Target("end"), reached=Reached("0/3000000", None, 1, 2), rto_seconds=50.0,
        rto_parts=RtoParts(1.0, 20.0, 9.0, 20.0, 10.0), wal_segments_replayed=2,
        checks=(DrillCheck("plan", "passed", "backup ..."), DrillCheck("amcheck", "skipped", "not run")),
        error=None, kept=None, host="h", tool_version="0.1.0")
    assert json_contract.check("drill run", result.to_json()) == 1 + 1 + 1 + 1 + 2


def test_a_plan_prints_the_documented_fields() -> None:
    plan = Plan("main", _manifest(), Target("time", "2026-12-05T01:00:00+00:00"), 2,
                [(1, 0, 0x5000000), (2, 0x5000000, None)], "000000010000000000000002", "000000020000000000000006",
                5, ("target action: pause",))
    assert json_contract.check("restore --plan", plan.to_json()) == 1 + 1 + 2


def test_verify_results_print_the_documented_fields() -> None:
    results = [VerifyResult("B1", "main", "full", 1, 40, 0.5, (), ("WAL ...: 1 of 1 segments decoded",)),
               VerifyResult("B2", "main", "manifest", problems=("damaged",), record_error="refused")]
    assert json_contract.check("verify", [r.to_json() for r in results]) == 2


def test_expire_and_gc_rows_print_the_documented_fields() -> None:
    wal = WalRange("main", "main", 1, "000000010000000000000001", "000000010000000000000004", 4, 64, False,
                   "before the oldest backup kept", [])
    plan = RetentionPlan("main", NOW, [Decision(_manifest(), ["keep_last (1 of 1)"]), Decision(_manifest("incr"))],
                         [wal])
    assert json_contract.check("expire", ExpireOutcome(plan, dry_run=True).rows()) == 3
    item = GcItem("main/backups/x/", "backup-debris", "main", "remove", "no manifest", ["main/backups/x/a"], 10)
    assert json_contract.check("repo gc", [item.to_json(dry_run=True)]) == 1


def test_scheduler_jobs_print_the_documented_fields() -> None:
    config = parse_config({"repository": {"path": "/r"}, "scheduler": {"timezone": "UTC"},
                           "sources": {"devdb": {"kind": "sqlite", "path": "/db", "schedule": {
                               "backup": "0 2 * * *", "verify": "0 4 * * *"}}}}, None)
    assert json_contract.check("scheduler jobs", next_runs(config, NOW)) == 2
