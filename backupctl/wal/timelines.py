"""Which timeline production is on: the one judgement behind every default timeline.

The highest timeline is not always production's. A copy restored beside production and promoted, with
production's archive_command, pushes its timeline (history file and WAL) into the source while production
goes on archiving on the old one; after a real failover it is the other way round: the old primary stops
(perhaps a few segments past the fork, archived as it died) and the new timeline goes on. The repository
tells them apart by *where* and *when* each timeline was archived:

1. The tree. Each archived history file places its timeline under its parent at a fork LSN (the file's
   last entry). Timeline 1 is the root. A timeline whose history file is missing or unreadable cannot be
   placed ("unplaced").
2. Tips, the places where some server last wrote. A leaf of the tree is a tip; its activity is every object
   archived for it, its history file included. A timeline with children is a tip too when it went on past
   the fork of its latest child: a segment after the fork's segment, or the fork's segment itself archived
   after the child's history file. (A ``.partial`` segment is written by the server that promoted away from
   a timeline, so it never shows that the timeline went on.) A tip's *end* is its newest activity, by the
   store's Last-Modified.
3. Production is the tip with the newest end. Another tip is *abandoned* when production archived at least
   ``SETTLED`` objects after that tip's end: it stopped while production kept going (a side copy that was
   stopped, or a failover's old primary). Otherwise it is *live*: two tips archiving at once (a split
   brain, or a failover too fresh to tell). Then there is no default: restore refuses and names each live
   tip with its ``--target-timeline``. An unplaced timeline that archived after production's end makes the
   judgement ambiguous as well (nobody can say where it leads).
4. An abandoned tip off production's ancestry is a *branch*: its WAL is never replayed by a default restore,
   and `backupctl wal forget-timeline N` retires it (N being the branch's first timeline off production's
   path; its descendants go with it). An abandoned tip on production's ancestry (the old primary's last
   segments past a failover's fork) is only a note: forgetting it would forget production's past.

``judge`` is pure (no I/O); ``read`` gathers its facts from the repository, and
``services.forget_timeline`` carries out `wal forget-timeline` with it. ``pitr`` (the default timeline),
``status``/``check`` (the timelines section and its warning), drills (through the planner), retention
(which timeline is live) and ``wal forget-timeline`` (what may be removed) all ask this module, so they
cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backupctl.core.errors import DecryptionError, IntegrityError, ObjectNotFound
from backupctl.wal.fetch import read_history
from backupctl.wal.listing import ArchivedWal
from backupctl.wal.names import format_lsn, lsn_to_segno

if TYPE_CHECKING:
    from backupctl.repo.repository import Repository

SETTLED = 2  # objects production archived after another tip's end before that tip counts as stopped


@dataclass(frozen=True)
class Tip:
    """Where one server last wrote: a leaf timeline, or a parent's WAL past its latest child's fork."""

    timeline: int
    end: datetime  # the newest activity's Last-Modified
    newest: str  # the newest activity's file name
    objects: int  # how many archived objects show the activity
    past_fork: int | None = None  # a parent's continuation: the fork LSN it went past

    def where(self) -> str:
        """"timeline 2 (newest 000000020000000000000007 archived 2026-12-04 16:40:03 UTC)"."""
        past = f" past the fork at {format_lsn(self.past_fork)}" if self.past_fork is not None else ""
        return f"timeline {self.timeline}{past} (newest {self.newest} archived {self.end:%Y-%m-%d %H:%M:%S %Z})"

    def to_json(self) -> dict[str, Any]:
        return {"timeline": self.timeline, "end": self.end.astimezone(UTC).isoformat(), "newest": self.newest,
                "objects": self.objects, "past_fork": None if self.past_fork is None else format_lsn(self.past_fork)}


@dataclass
class Judgement:
    """The tree of timelines, its tips, and which one production is on (None when it cannot be told)."""

    histories: dict[int, list[tuple[int, int]] | None]  # timeline -> ancestry [(parent, switch)]; None: unreadable
    tips: list[Tip] = field(default_factory=list)  # newest end first
    production: int | None = None
    abandoned: list[Tip] = field(default_factory=list)
    live: list[Tip] = field(default_factory=list)  # other tips still archiving: no default when non-empty
    unplaced: list[int] = field(default_factory=list)
    unplaced_live: list[int] = field(default_factory=list)

    @property
    def ambiguous(self) -> bool:
        return bool(self.live or self.unplaced_live)

    def ancestry(self, timeline: int) -> list[int]:
        """``timeline`` and its ancestors, root first; [timeline] when its history is unknown."""
        history = [] if timeline == 1 else self.histories.get(timeline) or []
        return [parent for parent, _ in history] + [timeline]

    def descendants(self, timeline: int) -> list[int]:
        """Every placed timeline that branched (directly or not) from ``timeline``, lowest first."""
        return sorted(t for t in self.histories if t != timeline and timeline in self.ancestry(t)[:-1])

    def branches(self) -> list[int]:
        """The first timeline off production's path of each abandoned tip: what forget-timeline retires."""
        if self.production is None:
            return []
        path = set(self.ancestry(self.production))
        found = set()
        for tip in self.abandoned:
            chain = self.ancestry(tip.timeline)
            if tip.timeline in path:
                continue
            found.add(next(t for t in chain if t not in path))
        return sorted(found)

    def off_path(self) -> list[int]:
        """Every timeline off production's ancestry: what a default restore never replays ([] when undecided)."""
        if self.production is None:
            return []
        path = self.ancestry(self.production)
        return sorted(t for t in self.histories if t not in path)

    def highest(self) -> int | None:
        return max(self.histories, default=None)

    def tip(self, timeline: int) -> Tip | None:
        return next((t for t in self.tips if t.timeline == timeline), None)

    def reason(self) -> str:
        """Why production is on its timeline, in one sentence (or why nobody can tell)."""
        if self.ambiguous:
            return self.refusal()
        if self.production is None:
            return "no timeline has archived WAL"
        tip = self.tip(self.production)
        if len(self.tips) <= 1 or tip is None:
            return f"timeline {self.production} is the only line still archived"
        others = "; ".join(f"{t.where()} stopped" for t in self.abandoned)
        return f"{tip.where()} kept archiving after the others stopped: {others}"

    def refusal(self) -> str:
        """What an ambiguous judgement says, with the command that picks each candidate."""
        candidates = [t.where() + f": --target-timeline {t.timeline}" for t in self.tips[:1] + self.live]
        candidates += [f"timeline {t} (its history file is missing or unreadable): --target-timeline {t}"
                       for t in self.unplaced_live]
        return ("cannot tell which timeline production is on, more than one is still archiving (a split brain, "
                "or a failover too fresh to judge): " + "; ".join(candidates))

    def notes(self, chosen: int, source: str) -> list[str]:
        """What a restore plan on timeline ``chosen`` says about the other tips."""
        notes = []
        highest = self.highest()
        if self.production is not None and chosen != self.production:
            notes.append(f"timeline {chosen} was asked for, but production is on timeline {self.production}: "
                         f"{self.reason()}")
        elif self.production is not None and len(self.tips) > 1:
            notes.append(f"timeline {chosen} is production's: {self.reason()}")
        for tip in self.abandoned:
            if tip.timeline == chosen:
                continue
            if tip.timeline in self.ancestry(chosen):
                notes.append(f"{tip.where()} went on past the fork and stopped (a failover's old primary): those "
                             "segments are not replayed")
            else:
                notes.append(f"{tip.where()} is a branch production left behind (pass --target-timeline "
                             f"{tip.timeline} to restore it instead)")
        for branch in self.branches():
            below = self.descendants(branch)
            also = f" and its descendants {', '.join(map(str, below))}" if below else ""
            notes.append(f"retire the branch with `backupctl wal forget-timeline {branch} --source {source}` (removes "
                         f"timeline {branch}{also} from the archive)")
        if highest is not None and chosen != highest and highest not in self.ancestry(chosen):
            notes.append(f"recovery_target_timeline is set to {chosen}: PostgreSQL's 'latest' would follow timeline "
                         f"{highest}")
        return notes

    def fork(self, timeline: int, at: datetime | None) -> dict[str, Any] | None:
        """How ``timeline`` began, for `wal status`: its parent, the fork LSN, when its history file was archived
        (``at``, the promotion as the archive saw it) and the kind of fork: ``failover`` when production went on
        along it, ``branch`` when production left it behind, ``undecided`` while nobody can tell which timeline
        production is on. None for a root (timeline 1) or a timeline whose history file is unreadable."""
        history = self.histories.get(timeline) if timeline > 1 else None
        if not history:
            return None
        parent, lsn = history[-1]
        if self.production is None:
            kind = "undecided"
        else:
            kind = "failover" if timeline in self.ancestry(self.production) else "branch"
        return {"from_timeline": parent, "to_timeline": timeline, "lsn": format_lsn(lsn),
                "at": at.astimezone(UTC).isoformat() if at else None, "kind": kind}

    def to_json(self) -> dict[str, Any]:
        return {
            "production": self.production,
            "ambiguous": self.ambiguous,
            "reason": self.reason(),
            "highest": self.highest(),
            "tips": [t.to_json() for t in self.tips],
            "abandoned": [t.timeline for t in self.abandoned],
            "live": [t.timeline for t in self.live] + self.unplaced_live,
            "branches": self.branches(),
            "unplaced": self.unplaced,
            "tree": [{"timeline": t, "parent": h[-1][0] if h else None,
                      "fork": format_lsn(h[-1][1]) if h else None} for t, h in sorted(self.histories.items())],
        }


def judge(histories: dict[int, list[tuple[int, int]] | None], objects: Iterable[ArchivedWal],
          segment_size: int) -> Judgement:
    """The judgement of the module docstring over one history epoch's archive.

    ``histories``: the ancestry read from each timeline's history file (None when missing or unreadable);
    ``objects``: every archived object of the epoch with its Last-Modified (history files included).
    """
    by_timeline: dict[int, list[ArchivedWal]] = {}
    for obj in objects:
        by_timeline.setdefault(obj.name.timeline, []).append(obj)
    known = {**{t: None for t in by_timeline if t > 1}, **histories}
    placed = {t: h for t, h in known.items() if t == 1 or h}
    if 1 in by_timeline:
        placed.setdefault(1, [])
    judgement = Judgement(placed, unplaced=sorted(t for t in known if t not in placed))
    children: dict[int, list[tuple[int, int]]] = {}
    for timeline, history in placed.items():
        if history:
            parent, fork = history[-1]
            children.setdefault(parent, []).append((timeline, fork))
    tips, activities = [], {}
    for timeline in sorted(placed):
        own = by_timeline.get(timeline, [])
        if timeline not in children:
            activity, past = own, None
        else:
            child, past = max(children[timeline], key=lambda c: (c[1], c[0]))
            activity = _past_fork(own, by_timeline.get(child, []), past, segment_size)
        if activity:
            activities[timeline] = [o.modified for o in activity]
            newest = max(activity, key=lambda o: (o.modified, o.name.name))
            tips.append(Tip(timeline, newest.modified, newest.name.name, len(activity), past))
    tips.sort(key=lambda t: (t.end, t.timeline), reverse=True)
    judgement.tips = tips
    if not tips:
        return judgement
    production = tips[0]
    for other in tips[1:]:
        settled = sum(1 for moment in activities[production.timeline] if moment > other.end) >= SETTLED
        (judgement.abandoned if settled else judgement.live).append(other)
    judgement.unplaced_live = [t for t in judgement.unplaced
                               if any(o.modified >= production.end for o in by_timeline.get(t, []))]
    judgement.production = None if judgement.ambiguous else production.timeline
    return judgement


def _past_fork(own: list[ArchivedWal], child: list[ArchivedWal], fork: int, segment_size: int) -> list[ArchivedWal]:
    """A parent's objects that show it went on after its child forked at ``fork``."""
    fork_segno = lsn_to_segno(fork, segment_size)
    born_from = [o.modified for o in child if o.name.kind == "history"] or [o.modified for o in child]
    born = min(born_from) if born_from else None
    found = []
    for obj in own:
        if obj.name.kind in ("history", "partial"):
            continue
        segno = obj.name.segno(segment_size)
        if segno > fork_segno or (segno == fork_segno and born is not None and obj.modified > born):
            found.append(obj)
    return found



def read(repo: Repository, stream: str, objects: list[ArchivedWal], segment_size: int) -> Judgement:
    """The judgement of one history epoch's WAL ``stream`` from its listing ``objects``: reads the history
    file of each timeline after the first (a missing or unreadable one leaves that timeline unplaced)."""
    histories: dict[int, list[tuple[int, int]] | None] = {}
    for timeline in sorted({o.name.timeline for o in objects if o.name.timeline > 1}):
        try:
            histories[timeline] = read_history(repo, stream, timeline)
        except (ObjectNotFound, IntegrityError, DecryptionError):
            histories[timeline] = None
    return judge(histories, objects, segment_size)
