"""Sizes and durations as text: the one home of every formatter, for people and for the config file.

Two spellings exist on purpose. For people (tables, check messages, drill details) a value is rounded to
one decimal in the largest unit it reaches: ``1.5 MiB``, ``2.3h``. For the config file (retention rules,
``gc --grace``, the generated example) a value is spelled exactly, in the largest whole unit, so that
``core.options``' parsers (``parse_size``, ``parse_duration``) read it back to the same number:
``16MiB``, ``14d``. Parsing stays with the config's options; this module only writes.
"""

from __future__ import annotations

from datetime import UTC, datetime

_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_DURATION_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def human_size(size: float) -> str:
    """A byte count for people: whole bytes below 1 KiB, else one decimal: 512 B, 1.5 MiB, 2.0 TiB."""
    value = float(size)
    for unit in _SIZE_UNITS:
        if value < 1024 or unit == _SIZE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """A span (an age, an RTO) for people: 45s, 1.5m, 2.3h, 7.0d; ``-`` when unknown."""
    if seconds is None:
        return "-"
    for unit, length in _DURATION_UNITS:
        if seconds >= length:
            return f"{seconds / length:.1f}{unit}"
    return f"{seconds:.0f}s"


def human_seconds(seconds: float | None, digits: int = 1) -> str:
    """A short measured time in seconds: 1.2s (how long a backup or a drill's part took); ``-`` when unknown."""
    return "-" if seconds is None else f"{seconds:.{digits}f}s"


def short_time(stamp: str | None, now: datetime | None = None) -> str:
    """An ISO 8601 time for a table, to the minute in UTC (as backup ids are): ``12-05 14:09`` this year,
    ``2025-12-05 14:09`` before; ``-`` when unknown. JSON keeps the full time."""
    if not stamp:
        return "-"
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    moment = moment.astimezone(UTC) if moment.tzinfo else moment
    year = (now or datetime.now(UTC)).year
    return moment.strftime("%m-%d %H:%M" if moment.year == year else "%Y-%m-%d %H:%M")


def format_duration(seconds: float) -> str:
    """A duration as the config spells it, the shortest whole unit ``parse_duration`` reads back: 14d, 36h, 90s."""
    for unit, length in _DURATION_UNITS:
        if seconds >= length and seconds % length == 0:
            return f"{int(seconds // length)}{unit}"
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds}s"  # never 1e+06s: unparsable


def format_size(size: int) -> str:
    """A size as the config spells it, the largest binary unit that divides it: 16777216 -> 16MiB."""
    for unit, length in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= length and size % length == 0:
            return f"{size // length}{unit}"
    return str(size)
