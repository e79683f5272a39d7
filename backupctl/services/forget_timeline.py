"""``wal forget-timeline``: retire a branch of timelines that production left behind.

Which timeline is production's, and which tips are abandoned branches, is ``wal.timelines``'s judgement;
this service acts on it under the source's expire lease, with the checks that keep production's past
and the backups someone still reads, so it sits above both the WAL archive and expire's readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.engines.registry import PHYSICAL_TYPES
from backupctl.repo.layout import backup_prefix
from backupctl.repo.pins import read_pins
from backupctl.services.expire import readers_by_backup
from backupctl.wal import timelines
from backupctl.wal.listing import list_wal_objects
from backupctl.wal.names import DEFAULT_SEGMENT_SIZE
from backupctl.wal.streams import list_streams

if TYPE_CHECKING:
    from backupctl.repo.repository import Repository


@dataclass
class Forgotten:
    """What `wal forget-timeline` removed (or, with ``dry_run``, would remove)."""

    source: str
    epoch: int
    stream: str
    timelines: list[int]  # the timeline asked for and its descendants
    production: int | None
    dry_run: bool
    history_files: list[str] = field(default_factory=list)
    wal_files: list[str] = field(default_factory=list)  # segments, .partial and backup history files
    stored_bytes: int = 0
    backups: list[str] = field(default_factory=list)  # backups taken on the branch (removed with --force)

    def to_json(self) -> dict[str, Any]:
        return {"id": f"{self.stream}/{self.timelines[0]}", "source": self.source, "epoch": self.epoch,
                "timelines": self.timelines, "production": self.production, "dry_run": self.dry_run,
                "history_files": self.history_files, "wal_files": len(self.wal_files),
                "first": self.wal_files[0] if self.wal_files else None,
                "last": self.wal_files[-1] if self.wal_files else None,
                "stored_bytes": self.stored_bytes, "backups": self.backups}


def forget(repo: Repository, source: str, timeline: int, *, dry_run: bool = False, force: bool = False,
           epoch: int | None = None) -> Forgotten:
    """Remove ``timeline`` (a branch production left behind) and its descendants from the archive.

    Runs under the source's expire lease (expire, pin and another forget wait). Refused for production's
    timeline and its ancestors, always; for a timeline that may still be archiving (the judgement is
    ambiguous, or it is a live tip) unless ``force``; for a timeline with backups on it unless ``force``,
    which removes those backups too (never a pinned one or one a restore, verify or drill is reading).
    WAL goes first and history files last, so an interrupted run leaves a branch that a second run finds.
    """
    streams = list_streams(repo, source)
    if not streams:
        raise ConfigError(f"source {source} has no WAL archive in the repository")
    chosen = streams[-1] if epoch is None else next((s for s in streams if s.epoch == epoch), None)
    if chosen is None:
        raise ConfigError(f"source {source} has no history epoch {epoch} (epochs: "
                          f"{', '.join(str(s.epoch) for s in streams)})")
    with repo.exclusive_lease(source, "expire", "forget-timeline") as held:
        objects = list_wal_objects(repo, chosen.stream)
        judged = timelines.read(repo, chosen.stream, objects, chosen.segment_size or DEFAULT_SEGMENT_SIZE)
        present = sorted({o.name.timeline for o in objects})
        if timeline not in present:
            raise ConfigError(f"timeline {timeline} has nothing archived for {source} (timelines: "
                              f"{', '.join(map(str, present)) or 'none'})")
        gone = [timeline, *(t for t in judged.descendants(timeline) if t in present)]
        _refuse_production(judged, timeline, gone, source)
        if not force and (judged.ambiguous or any(t.timeline in gone for t in judged.live)):
            raise BackupctlError(f"timeline {timeline} may still be archiving: {judged.reason()}; stop the server "
                                 f"that archives it (or fix its archive_command), let production archive more "
                                 f"(`backupctl wal check {source}`), or pass --force if you know it stopped")
        manifests, _ = repo.catalog.scan(source)
        system = chosen.system_identifier or None
        on_branch = [m for m in manifests if m.type in PHYSICAL_TYPES and int(m.extra["timeline"]) in gone
                     and system in (None, str(m.extra.get("system_identifier")))]
        result = Forgotten(source, chosen.epoch, chosen.stream, gone, judged.production, dry_run,
                           backups=[m.id for m in on_branch])
        if on_branch and not force:
            raise BackupctlError(f"backups {', '.join(result.backups)} were taken on timeline(s) "
                                 f"{', '.join(map(str, gone))}: pass --force to remove them with the branch, or "
                                 "restore from them first if they hold something worth keeping")
        if on_branch:
            pinned, readers = read_pins(repo.storage, source), readers_by_backup(repo, source)
            kept = [f"{m.id} ({'pinned' if m.id in pinned else readers[m.id]})" for m in on_branch
                    if m.id in pinned or m.id in readers]
            if kept:
                raise BackupctlError(f"backups on the branch are in use: {', '.join(kept)}; unpin them or let "
                                     "the reader finish, then run again")
        doomed = sorted((o for o in objects if o.name.timeline in gone), key=lambda o: (o.name.kind == "history",
                                                                                         o.name.name, o.key))
        result.history_files = [o.name.name for o in doomed if o.name.kind == "history"]
        result.wal_files = [o.name.name for o in doomed if o.name.kind != "history"]
        result.stored_bytes = sum(o.stored_size for o in doomed)
        if dry_run:
            return result
        for m in on_branch:
            held.ensure_held()
            repo.storage.delete([m.key])
            repo.storage.delete([info.key for info in repo.storage.list(backup_prefix(source, m.id))])
        wal_keys = [o.key for o in doomed if o.name.kind != "history"]
        for start in range(0, len(wal_keys), 1000):
            held.ensure_held()
            repo.storage.delete(wal_keys[start:start + 1000])
        held.ensure_held()
        repo.storage.delete([o.key for o in doomed if o.name.kind == "history"])
    return result


def _refuse_production(judged: timelines.Judgement, timeline: int, gone: list[int], source: str) -> None:
    """Production's timeline and its ancestors are never forgotten (nor while nobody can tell which it is)."""
    if timeline == 1:
        raise ConfigError(f"timeline 1 is the root every timeline of {source} grew from: it cannot be forgotten")
    path = judged.ancestry(judged.production) if judged.production else []
    if set(path) & set(gone):
        what = ("production's timeline" if timeline == judged.production
                else f"an ancestor of production's timeline {judged.production}")
        raise ConfigError(f"timeline {timeline} is {what} ({judged.reason()}): it cannot be forgotten; "
                          + (f"the branches production left behind are {', '.join(map(str, judged.branches()))}"
                             if judged.branches() else "no branch is left behind"))
