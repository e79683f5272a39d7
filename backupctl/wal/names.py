"""WAL file names, LSNs and timeline histories: PostgreSQL's arithmetic, and its only home in backupctl.

Everything here is pure (no I/O) and imports only the standard library and ``core.errors`` (itself
import-free), so that the restore planner, retention, the archive and the tests all share one copy: two
copies once validated differently, and a typo'd ``--target-lsn`` met a bare ``ValueError``. A malformed
name or LSN is a ``BackupctlError`` with one line saying what was wrong.

- ``parse_wal_name(name) -> WalName`` and ``WalName.segno(size)``, ``segment_name(tli, segno, size)``
- ``parse_lsn("0/3000028") -> int``, ``format_lsn(int) -> str``, ``lsn_to_segno(lsn, size)``,
  ``segno_to_lsn(segno, size)``, ``segment_of_lsn(tli, lsn, size) -> name``
- ``parse_history(text)``: a timeline history file's (parent timeline, switch LSN) entries;
  ``timeline_path`` and ``timeline_ranges``: the way recovery walks them
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from backupctl.core.errors import BackupctlError, IntegrityError

MIN_SEGMENT_SIZE = 1024**2
MAX_SEGMENT_SIZE = 1024**3
DEFAULT_SEGMENT_SIZE = 16 * 1024**2

_SEGMENT = r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})"
_NAME_RES = {
    "segment": re.compile(rf"^{_SEGMENT}$"),
    "partial": re.compile(rf"^{_SEGMENT}\.partial$"),
    "backup": re.compile(rf"^{_SEGMENT}\.([0-9A-F]{{8}})\.backup$"),
    "history": re.compile(r"^([0-9A-F]{8})\.history$"),
}
_LSN_RE = re.compile(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*")


class WalNameError(BackupctlError):
    """A file name PostgreSQL never archives: refused at once, never retried."""


class LsnError(BackupctlError):
    """Text that is not an LSN (``16/B374D848``)."""


@dataclass(frozen=True, order=True)
class WalName:
    """A parsed archive file name: a segment, a .partial segment, a backup history or timeline history file.

    ``log`` and ``seg`` are the two halves of the segment part of the name; ``offset`` is the start
    offset of a backup history file. History files have only a timeline.
    """

    timeline: int
    log: int
    seg: int
    kind: str  # "segment" | "partial" | "backup" | "history"
    name: str
    offset: int = 0

    def segno(self, segment_size: int) -> int:
        """The segment number (LSN // segment_size) of a segment-like name."""
        return self.log * segments_per_log(segment_size) + self.seg

    def start_lsn(self, segment_size: int) -> int:
        return segno_to_lsn(self.segno(segment_size), segment_size)

    @property
    def directory(self) -> str:
        """The 16-hex folder (timeline and log) that holds this file; "" for history files."""
        return "" if self.kind == "history" else self.name[:16]

    @property
    def segment(self) -> str:
        """The plain segment name this file belongs to (itself for a segment)."""
        return self.name[:24]


def parse_wal_name(name: str) -> WalName:
    """Parse a name PostgreSQL archives; ``WalNameError`` for anything else (with what was wrong)."""
    for kind, pattern in _NAME_RES.items():
        match = pattern.match(name)
        if match is None:
            continue
        timeline = int(match.group(1), 16)
        if timeline == 0:
            raise WalNameError(f"{name!r} is not a WAL file name: timeline 0 does not exist")
        if kind == "history":
            # PostgreSQL probes 00000001.history too (at promotion): a name to answer "not archived" for.
            return WalName(timeline, 0, 0, kind, name)
        log, seg = int(match.group(2), 16), int(match.group(3), 16)
        if seg >= segments_per_log(MIN_SEGMENT_SIZE):
            raise WalNameError(
                f"{name!r} is not a WAL file name: segment part {match.group(3)} is beyond any segment size"
            )
        offset = int(match.group(4), 16) if kind == "backup" else 0
        return WalName(timeline, log, seg, kind, name, offset)
    raise WalNameError(
        f"{name!r} is not a file PostgreSQL archives (a 24-hex-digit segment, optionally .partial, "
        "a TLI.history or a SEGMENT.OFFSET.backup file, upper-case hex): refusing it"
    )


def is_valid_segment_size(size: int) -> bool:
    return MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and size & (size - 1) == 0


def segments_per_log(segment_size: int) -> int:
    return 0x1_0000_0000 // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """``XLogFileName``: the name of segment ``segno`` on ``timeline``."""
    per_log = segments_per_log(segment_size)
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` to an integer; ``LsnError`` (one line) for anything else."""
    match = _LSN_RE.fullmatch(text)
    if match is None:
        raise LsnError(f"{text!r} is not an LSN (like 0/3000028, as pg_current_wal_lsn() shows it)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_to_segno(lsn: int, segment_size: int) -> int:
    """``XLByteToSeg``: the segment that holds the byte at ``lsn``."""
    return lsn // segment_size


def segno_to_lsn(segno: int, segment_size: int) -> int:
    return segno * segment_size


def segment_of_lsn(timeline: int, lsn: int, segment_size: int) -> str:
    """The segment file on ``timeline`` that holds ``lsn``."""
    return segment_name(timeline, lsn_to_segno(lsn, segment_size), segment_size)


# --- timeline history ------------------------------------------------------------------------------


def parse_history(text: str, timeline: int | None = None) -> list[tuple[int, int]]:
    """Parse a .history file: lines ``parentTLI<TAB>switchpoint<TAB>reason``, '#' comments."""
    entries: list[tuple[int, int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(None, 2)
        try:
            parent, switch = int(fields[0]), parse_lsn(fields[1])
        except (IndexError, ValueError, LsnError) as exc:
            where = f"history of timeline {timeline}" if timeline else "history file"
            raise IntegrityError(f"{where}, line {number}: {line!r} is not 'TLI<TAB>LSN<TAB>reason'") from exc
        if entries and (parent <= entries[-1][0] or switch < entries[-1][1]):
            raise IntegrityError(f"history of timeline {timeline}: timelines or LSNs go backwards at line {number}")
        entries.append((parent, switch))
    return entries


def timeline_path(history: list[tuple[int, int]], timeline: int) -> list[tuple[int, int, int | None]]:
    """The ancestry of ``timeline`` from its history: (timeline, begins at LSN, switches away at LSN or None
    for ``timeline`` itself), from timeline 1 on. Restore planning and retention walk the same path."""
    path: list[tuple[int, int, int | None]] = []
    begin = 0
    for parent, switch in history:
        path.append((parent, begin, switch))
        begin = switch
    path.append((timeline, begin, None))
    return path


def timeline_ranges(history: list[tuple[int, int]], timeline: int, segment_size: int,
                    ) -> list[tuple[int, int, int | None]]:
    """(timeline, first segno, last segno or None for open-ended) in the order recovery walks them.

    A timeline that switched at LSN S is read up to the segment before S's; the next one from S's
    segment on (PostgreSQL reads the segment holding the switch point from the new timeline).
    """
    ranges: list[tuple[int, int, int | None]] = []
    begin = 0
    for parent, switch in history:
        switch_seg = lsn_to_segno(switch, segment_size)
        ranges.append((parent, begin, switch_seg - 1))
        begin = switch_seg
    ranges.append((timeline, begin, None))
    return ranges
