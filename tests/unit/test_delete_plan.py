"""What `delete` refuses and what it takes with it, decided by the retention plan (no repository needed).

The catalog: a full backup F0 with a chain of incrementals I1 <- I2 on it, a later full F3, and an old
logical backup L4. Expected refusals are written from the issue's rules: the newest backup of a type, a
pinned one, one a reader holds, and a backup incrementals build on are protected; schedule rules are not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backupctl.core.config import RetentionConfig
from backupctl.core.errors import BackupctlError
from backupctl.repo.catalog import Manifest, iso
from backupctl.services.delete import plan_delete
from backupctl.services.expire import ExpireInputs
from backupctl.services.retention import descendants, protections
from tests.support import json_contract

START = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
LETTER = {"full": "F", "incr": "I", "logical": "L"}


def _manifest(number: int, backup_type: str, parent: str | None = None) -> Manifest:
    finished = START + timedelta(days=number)
    return Manifest(id=f"{finished:%Y%m%dT%H%M%S}000Z-{LETTER[backup_type]}-{number:03d}", source="main",
                    kind="postgres", type=backup_type, started_at=iso(finished - timedelta(minutes=1)),
                    finished_at=iso(finished), objects=[], encryption=None, parent=parent, extra={})


def _catalog() -> dict[str, Manifest]:
    l4 = _manifest(0, "logical")  # the oldest: logical backups are a family of their own
    f0 = _manifest(1, "full")
    i1 = _manifest(2, "incr", f0.id)
    i2 = _manifest(3, "incr", i1.id)
    f3 = _manifest(4, "full")
    l5 = _manifest(5, "logical")
    return {"F0": f0, "I1": i1, "I2": i2, "F3": f3, "L4": l4, "L5": l5}


def _inputs(policy: RetentionConfig | None = None, pins: dict[str, str] | None = None,
            held: dict[str, str] | None = None) -> ExpireInputs:
    catalog = _catalog()
    return ExpireInputs("main", policy or RetentionConfig(), START + timedelta(days=10), list(catalog.values()),
                        pins or {}, held or {}, [])


def test_descendants_are_every_incremental_built_on_a_backup_newest_first() -> None:
    c = _catalog()
    assert [m.id for m in descendants(c.values(), c["F0"].id)] == [c["I2"].id, c["I1"].id]
    assert [m.id for m in descendants(c.values(), c["I1"].id)] == [c["I2"].id]
    assert descendants(c.values(), c["I2"].id) == []
    assert descendants(c.values(), c["F3"].id) == []


def test_protections_keep_the_rules_that_need_a_decision_and_drop_the_schedules() -> None:
    rules = ["keep_last (1 of 3)", "keep_daily 2026-11-01", "keep_within 7d", "newest full", "pinned: audit",
             "read by restore on db1 pid 7", "parent of X1", "parent of X2", "recovery_window 7d (timeline 1)"]
    assert protections(rules) == rules[3:]
    assert protections(rules, going=["X1"]) == [*rules[3:6], "parent of X2", rules[8]]


def test_a_backup_nothing_protects_is_deleted_alone() -> None:
    outcome = plan_delete(_inputs(RetentionConfig(keep_last=5)), _catalog()["L4"].id, dry_run=True, force=False)
    assert outcome.refusal is None and outcome.proceeds
    assert [d.manifest.id for d in outcome.doomed] == [_catalog()["L4"].id]
    row, = outcome.rows()
    assert (row["action"], row["why"], row["protected_by"], row["result"]) == ("remove", "asked for", [], "planned")
    assert row["rules"] == ["keep_last (2 of 5)"]  # shown, but a schedule rule does not refuse


@pytest.mark.parametrize(("name", "pins", "held", "reason"), [
    ("F3", {}, {}, "newest full"),
    ("L5", {}, {}, "newest logical"),
    ("L4", {"L4": "legal hold"}, {}, "pinned: legal hold"),
    ("L4", {}, {"L4": "restore on db1 pid 7"}, "read by restore on db1 pid 7"),
])
def test_a_protected_backup_is_refused_with_its_reason_until_forced(name: str, pins: dict[str, str],
                                                                     held: dict[str, str], reason: str) -> None:
    c = _catalog()
    inputs = _inputs(pins={c[k].id: v for k, v in pins.items()}, held={c[k].id: v for k, v in held.items()})
    outcome = plan_delete(inputs, c[name].id, dry_run=True, force=False)
    assert outcome.doomed[0].protected_by == [reason]
    assert outcome.refusal is not None and f"{c[name].id} is protected ({reason})" in outcome.refusal
    assert "\n" not in outcome.refusal and "--force" in outcome.refusal
    assert not outcome.proceeds and outcome.rows()[0]["action"] == "refuse"
    assert plan_delete(inputs, c[name].id, dry_run=True, force=True).proceeds


def test_a_backup_incrementals_build_on_goes_only_with_force_and_takes_the_chain() -> None:
    c = _catalog()
    outcome = plan_delete(_inputs(), c["F0"].id, dry_run=True, force=False)
    assert [d.manifest.id for d in outcome.doomed] == [c["F0"].id, c["I2"].id, c["I1"].id]
    # F0 and I1 are only parents of backups that go too; I2 is the newest incremental.
    assert [d.protected_by for d in outcome.doomed] == [[], ["newest incr"], []]
    assert outcome.refusal is not None
    assert f"2 incremental backup(s) build on it and cannot be restored without it ({c['I2'].id}, {c['I1'].id})" \
        in outcome.refusal
    forced = plan_delete(_inputs(), c["F0"].id, dry_run=True, force=True)
    assert [r["action"] for r in forced.rows()] == ["remove"] * 3
    assert forced.rows()[1]["why"] == f"incremental built on {c['F0'].id}: cannot be restored without it"


def test_deleting_an_unknown_backup_of_the_source_fails() -> None:
    with pytest.raises(BackupctlError, match="no backup 20200101T000000000Z-F-zzz of main"):
        plan_delete(_inputs(), "20200101T000000000Z-F-zzz", dry_run=True, force=False)


def test_delete_rows_print_the_documented_fields() -> None:
    outcome = plan_delete(_inputs(), _catalog()["F0"].id, dry_run=False, force=True)
    assert json_contract.check("delete", outcome.rows()) == 3
