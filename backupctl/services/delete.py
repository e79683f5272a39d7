"""The delete verb: remove one backup now, unless the retention rules protect it, under the source's expire lease.

What protects a backup is the retention plan's business, not this module's: ``delete`` gathers the same
inputs as `expire` (``expire.gather``), asks ``retention.plan_retention`` for the backup's rules and keeps
those ``retention.protections`` names: the newest backup of its type, a pinned one, one a live reader holds,
the parent of a kept incremental, the base of the recovery window. The schedule rules (keep_last,
keep_daily, ...) only say that expire would not remove it yet; they are shown, and do not refuse.

An incremental restores only with its whole chain, so a backup that incrementals build on is never removed
alone: without --force it is refused, with --force its descendants go with it (each named in the output as
unrestorable without it). The removal is expire's own (``expire.remove_backups``): manifests first, newest
first, then data, so a kill -9 midway never leaves a listed backup with missing objects, and what it leaves
unlisted `repo gc` removes. WAL is not touched here: the next `expire` removes what no remaining backup
needs. Holding the expire lease keeps expire, pin and other deletes of the source out meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from backupctl.core.config import SourceConfig
from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.progress import NO_PROGRESS, ProgressObserver, metered
from backupctl.engines.registry import PHYSICAL_TYPES
from backupctl.repo import pins
from backupctl.repo.catalog import Manifest
from backupctl.repo.repository import Repository
from backupctl.services.expire import ExpireInputs, gather, remove_backups
from backupctl.services.retention import descendants, protections


@dataclass
class Doomed:
    """One backup a delete removes: the one asked for, or an incremental built on it."""

    manifest: Manifest
    why: str  # why it goes
    protected_by: list[str]  # the retention rules that refuse it without --force
    rules: list[str]  # every rule of the retention plan that keeps it (the schedule's too)


@dataclass
class DeleteOutcome:
    """What a delete removes (or would), why, and what would refuse it without --force."""

    backup_id: str
    source: str
    doomed: list[Doomed]
    protected: str | None  # what refuses the run without --force; None: nothing protects these backups
    dry_run: bool
    force: bool
    results: dict[str, str] = field(default_factory=dict)

    @property
    def proceeds(self) -> bool:
        return self.protected is None or self.force

    @property
    def refusal(self) -> str | None:
        """The one line a refused real run fails with."""
        if self.protected is None:
            return None
        return (f"delete of {self.backup_id} refused: {self.protected}: check with `backupctl delete "
                f"{self.backup_id} --dry-run`, then run again with --force")

    @property
    def leaves_wal(self) -> bool:
        """Whether archived WAL that only these backups needed stays until the next `expire`."""
        return self.proceeds and any(d.manifest.type in PHYSICAL_TYPES for d in self.doomed)

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for d in self.doomed:
            m = d.manifest
            default = "planned" if self.dry_run else "removed"
            rows.append({"id": m.id, "item": "backup", "source": m.source, "type": m.type,
                         "finished_at": m.finished_at, "action": "remove" if self.proceeds else "refuse",
                         "why": d.why, "protected_by": d.protected_by, "rules": d.rules,
                         "stored_size": m.stored_size,
                         "result": self.results.get(m.id, default if self.proceeds else "refused")})
        return rows


def plan_delete(inputs: ExpireInputs, backup_id: str, *, dry_run: bool, force: bool) -> DeleteOutcome:
    """What deleting ``backup_id`` removes and whether the retention plan made from ``inputs`` protects it."""
    by_id = {m.id: m for m in inputs.manifests}
    if backup_id not in by_id:
        raise BackupctlError(f"no backup {backup_id} of {inputs.source} in the repository (see `backupctl list "
                             f"{inputs.source}`)")
    rules = {d.manifest.id: d.rules for d in inputs.plan().decisions}
    built_on = descendants(inputs.manifests, backup_id)
    going = [backup_id, *(m.id for m in built_on)]
    doomed = [Doomed(by_id[backup_id], "asked for", [], rules[backup_id])]
    doomed += [Doomed(m, f"incremental built on {backup_id}: cannot be restored without it", [], rules[m.id])
               for m in built_on]
    for d in doomed:
        d.protected_by = protections(d.rules, going)
    return DeleteOutcome(backup_id, inputs.source, doomed, _protected(doomed), dry_run, force)


def _protected(doomed: list[Doomed]) -> str | None:
    """What protects the backups, in words (None: nothing)."""
    reasons = [f"{d.manifest.id} is protected ({'; '.join(d.protected_by)})" for d in doomed if d.protected_by]
    if len(doomed) > 1:
        reasons.append(f"{len(doomed) - 1} incremental backup(s) build on it and cannot be restored without it "
                       f"({', '.join(d.manifest.id for d in doomed[1:])}); --force deletes them too")
    return "; ".join(reasons) or None


def delete(repo: Repository, source: SourceConfig, backup_id: str, *, dry_run: bool = False, force: bool = False,
           now: datetime | None = None, progress: ProgressObserver = NO_PROGRESS) -> DeleteOutcome:
    """Plan and (unless ``dry_run``) remove ``backup_id`` of ``source`` and the incrementals built on it;
    ``progress`` counts the objects removed (manifests and data)."""
    if dry_run:
        return plan_delete(gather(repo, source, now, verb="delete"), backup_id, dry_run=True, force=force)
    with repo.exclusive_lease(source.name, "expire", f"delete {backup_id}") as held:
        inputs = gather(repo, source, now, verb="delete")
        outcome = plan_delete(inputs, backup_id, dry_run=False, force=force)
        if not outcome.proceeds:
            assert outcome.refusal is not None
            raise ConfigError(outcome.refusal)
        manifests = [d.manifest for d in outcome.doomed]
        total = sum(len(m.objects) + 1 for m in manifests)
        with metered(progress, f"delete {backup_id}", total, "objects") as meter:
            remove_backups(repo, source.name, manifests, held, outcome.results, "delete", meter)
        for m in manifests:  # the pin of a backup that is gone: last, once its data is gone too
            if m.id in inputs.pins:
                pins.unpin(repo.storage, m)
    return outcome
