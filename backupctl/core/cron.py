"""Cron expressions read the way cron reads them, as apscheduler triggers.

apscheduler 3's own ``CronTrigger.from_crontab`` differs from cron in two ways that would move backups to
the wrong day: its numeric weekdays start at Monday (cron's ``0 2 * * 0`` is Sunday, apscheduler's is
Monday; cron's ``7`` is refused), and it requires both day-of-month and day-of-week to match where cron
runs when either does (``0 3 1 * 1``: the 1st and every Monday). Here the weekday field is translated
into day names and the two day fields are combined with an ``OrTrigger`` when both are set.
"""

from __future__ import annotations

from typing import Any

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day(text: str) -> int:
    """A weekday as cron writes it: 0-7 (0 and 7 are Sunday) or a three-letter name."""
    name = text.lower()
    if name in _DAYS:
        return _DAYS.index(name)
    if name.isdigit() and 0 <= int(name) <= 7:
        return int(name)
    raise ValueError(f"weekday {text!r} is not 0-7 or sun..sat")


def weekdays(field: str) -> str:
    """The weekday field as apscheduler day names: ``1-5`` -> ``mon,tue,wed,thu,fri``."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        base, slash, step_text = part.partition("/")
        step = int(step_text) if slash and step_text.isdigit() else 1
        if slash and (not step_text.isdigit() or step < 1):
            raise ValueError(f"weekday step {part!r} is not a positive number")
        if base == "*":
            low, high = 0, 6
        elif "-" in base:
            first, last = base.split("-", 1)
            low, high = _day(first), _day(last)
        else:
            low = _day(base)
            high = 6 if slash else low  # "1/2": from Monday on, every other day
        if high < low:
            raise ValueError(f"weekday range {part!r} runs backwards")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_DAYS[day] for day in sorted(days))


def cron_trigger(expression: str, timezone: Any = "UTC") -> Any:
    """A trigger that fires when cron would; ``ValueError`` says what is wrong with the expression."""
    # apscheduler costs ~80 ms and core.config imports this module: only a config with schedules pays it
    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) != 5:
        raise ValueError("five fields are needed: minute hour day month weekday")
    minute, hour, day, month, weekday = fields

    def build(day_field: str, weekday_field: str) -> CronTrigger:
        return CronTrigger(minute=minute, hour=hour, day=day_field, month=month, day_of_week=weekday_field,
                           timezone=timezone)

    # Vixie cron ORs the two day fields only when neither starts with "*" ("*/2" counts as unrestricted).
    if not day.startswith(("*", "?")) and not weekday.startswith(("*", "?")):
        return OrTrigger([build(day, "*"), build("*", weekdays(weekday))])
    return build("*" if day == "?" else day, weekdays(weekday))
