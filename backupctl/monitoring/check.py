"""`backupctl check`: judge the gathered facts (status.py) against each source's thresholds.

Monitoring-plugin semantics (Nagios, Icinga, Sensu, Zabbix's external checks): exit 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN, and one summary line first, with performance data after a ``|``. The overall state is
the worst finding, CRITICAL over WARNING over UNKNOWN over OK: a check that could not look at one thing
must not hide a real problem it saw in another.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from backupctl.core.config import CheckConfig, Config, SourceConfig
from backupctl.core.cron import cron_trigger
from backupctl.core.errors import CHECK_CRITICAL, CHECK_OK, CHECK_UNKNOWN, CHECK_WARNING
from backupctl.core.units import human_duration, human_size
from backupctl.engines.registry import ENGINES, PHYSICAL_TYPES, source_kind
from backupctl.repo.catalog import parse_iso

if TYPE_CHECKING:  # types only: judging facts needs none of what gathering them needs
    from backupctl.monitoring.status import SourceStatus, StandbyFacts

# A finding's state is the plugin's exit code: the states are the exit codes core.errors lists for check.
OK, WARNING, CRITICAL, UNKNOWN = CHECK_OK, CHECK_WARNING, CHECK_CRITICAL, CHECK_UNKNOWN
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_RANK = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}


@dataclass(frozen=True)
class Finding:
    """One judged fact of one source; ``value`` with its unit and thresholds becomes performance data."""

    source: str
    check: str
    state: int
    message: str
    value: float | None = None
    unit: str = ""  # "s", "B", "%" or "" (a count)
    warning: float | None = None
    critical: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": f"{self.source}/{self.check}", "source": self.source, "check": self.check,
                "state": STATE_NAMES[self.state], "message": self.message, "value": self.value, "unit": self.unit,
                "warning": self.warning, "critical": self.critical}

    def perfdata(self) -> str | None:
        if self.value is None:
            return None
        thresholds = ";".join("" if t is None else _number(t) for t in (self.warning, self.critical))
        return f"'{self.source}_{self.check}'={_number(self.value)}{self.unit};{thresholds}".rstrip(";")


def _number(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def worst(states: list[int]) -> int:
    return max(states, key=lambda s: _RANK[s], default=OK)


def _above(value: float, warning: float | None, critical: float | None) -> int:
    if critical is not None and value >= critical:
        return CRITICAL
    if warning is not None and value >= warning:
        return WARNING
    return OK


def _limit(state: int, warning: float | None, critical: float | None, show: Any) -> str:
    """" (warning 26.0h)" for a message; nothing when OK."""
    if state == OK:
        return ""
    limit = critical if state == CRITICAL else warning
    return f" ({STATE_NAMES[state].lower()} {show(limit)})"


def schedule_period(expressions: list[str], timezone: str | None, now: datetime) -> float:
    """The longest gap between two runs of cron schedules (together) over their next year, in seconds."""
    fires: set[datetime] = set()
    for expression in expressions:
        trigger = cron_trigger(expression, timezone or "UTC")
        previous, moment, found = None, now, 0
        while found < 400:
            nxt = trigger.get_next_fire_time(previous, moment)
            if nxt is None or (nxt - now).days >= 366:
                break
            fires.add(nxt)
            previous, moment, found = nxt, nxt, found + 1
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sorted(fires))]
    return max(gaps, default=86400.0)


def drill_thresholds(source: SourceConfig, timezone: str | None, now: datetime) -> tuple[float | None, float | None]:
    """The drill age thresholds: the configured ones, else derived from the drill schedule (one period and
    a day of grace for WARNING, two periods for CRITICAL); (None, None) when drills are not expected."""
    check = source.check
    if check.drill_age_warning is not None or check.drill_age_critical is not None:
        return check.drill_age_warning, check.drill_age_critical
    if source.schedule.drill is None:
        return None, None
    period = schedule_period([source.schedule.drill], timezone, now)
    return period + 86400.0, 2 * period + 86400.0


def evaluate(status: SourceStatus, source: SourceConfig, config: Config, now: datetime) -> list[Finding]:
    """Every finding for one source, in the order an operator reads them."""
    name = source.name
    if status.repository is None or not status.repository.reachable:
        error = status.repository.error if status.repository else None
        return [Finding(name, "repository", CRITICAL, f"repository unreachable: {error}")]
    findings = [Finding(name, "gather", UNKNOWN, error) for error in status.errors]
    findings += _backup_findings(status, source, config.scheduler.timezone, now)
    kind = source_kind(source)
    if kind.archives_wal:
        findings += _timeline_findings(status)
        findings += _wal_findings(status, source.check, now)
    if kind.server:
        findings += _server_findings(status, source.check)
        findings += _standby_findings(status, source)
    findings += _verify_findings(status)
    findings += _drill_findings(status, source, config.scheduler.timezone, now)
    return findings


def _standby_findings(status: SourceStatus, source: SourceConfig) -> list[Finding]:
    """The standbys backups come from (``backup_from`` standby or prefer-standby): each one down, not in
    recovery, or replaying too late. With ``standby`` and none usable, backups fail: CRITICAL; with
    ``prefer-standby`` they fall back to the primary: WARNING."""
    findings = [_standby_archiver_finding(source.name, s) for s in status.standbys if s.probe.archiver]
    mode = getattr(source, "backup_from", "primary")
    if mode == "primary" or not status.standbys:
        return findings
    usable = [s for s in status.standbys if s.probe.up and s.probe.in_recovery]
    for standby in status.standbys:
        probe, check = standby.probe, f"standby_{standby.name}"
        if not (probe.up and probe.in_recovery):
            state = CRITICAL if mode == "standby" and not usable else WARNING
            why = "is down" if not probe.up else "is not in recovery (promoted?)"
            fate = "backups from a standby fail" if state == CRITICAL else "backups come from elsewhere"
            findings.append(Finding(source.name, check, state, f"standby {standby.name} ({standby.address}) {why}: "
                                    f"{fate} (backup_from = {mode})"))
            continue
        delay = probe.replay_delay or 0.0
        warning, critical = source.check.standby_delay_warning, source.check.standby_delay_critical
        state = _above(delay, warning, critical)
        findings.append(Finding(source.name, check, state, f"standby {standby.name} replays "
                                f"{human_duration(delay)} behind{_limit(state, warning, critical, human_duration)}",
                                delay, "s", warning, critical))
    return findings


def _standby_archiver_finding(name: str, standby: StandbyFacts) -> Finding:
    """A standby that archives (archive_mode = always), whatever backups come from: its archive_command must
    work, or the archive has a hole the day the primary's archiver is the one that stops."""
    archiver = standby.probe.archiver or {}
    check = f"standby_{standby.name}_archiver"
    if archiver.get("failing"):
        return Finding(name, check, WARNING, f"standby {standby.name} ({standby.address}): archive_command failing: "
                       f"{archiver['last_failed_wal']} at {archiver['last_failed_time']} ({archiver['failed_count']} "
                       "failures)", archiver["failed_count"], "")
    last = archiver.get("last_archived_wal") or "nothing yet"
    return Finding(name, check, OK, f"standby {standby.name} archives (archive_mode = always; last: {last})",
                   archiver.get("failed_count"), "")


DEFAULT_BACKUP_AGE = (26 * 3600.0, 50 * 3600.0)  # backup_age_* for a source whose backups run from cron or timers
SCHEDULE_GRACE_SECONDS = 2 * 3600.0  # a scheduled backup may finish this much after its next run was due


def family_thresholds(source: SourceConfig, timezone: str | None, now: datetime) -> dict[str, tuple[float, float]]:
    """Backup kind -> (warning, critical) for each kind the source's schedule runs.

    WARNING one period plus two hours after the newest backup of that kind, CRITICAL two periods plus two
    hours (26h and 50h for a daily job), so a weekly full is not stale on day two and a nightly pg_dump
    that stopped working cannot hide behind a physical backup that still runs.
    """
    limits = {}
    for engine in ENGINES:
        expressions = [e for e in (getattr(source.schedule, job) for job in engine.schedule_jobs) if e]
        if expressions:
            period = schedule_period(expressions, timezone, now)
            limits[engine.name] = (period + SCHEDULE_GRACE_SECONDS, 2 * period + SCHEDULE_GRACE_SECONDS)
    return limits


def _backup_findings(status: SourceStatus, source: SourceConfig, timezone: str | None,
                     now: datetime) -> list[Finding]:
    """Each scheduled kind of backup against its schedule; the newest of any kind against ``backup_age_*``
    when those are set or nothing is scheduled (backups run from cron or systemd timers)."""
    name, check = status.source, source.check
    found = []
    if status.damaged_manifests:
        found.append(Finding(name, "manifests", WARNING, f"{len(status.damaged_manifests)} damaged manifest(s), "
                             f"e.g. {status.damaged_manifests[0]}: run `backupctl verify --all`"))
    if not status.backups:
        return [*found, Finding(name, "backup_age", CRITICAL, "no backup at all")]
    families = family_thresholds(source, timezone, now)
    configured = (check.backup_age_warning, check.backup_age_critical)
    if configured != (None, None) or not families:
        warning, critical = configured if configured != (None, None) else DEFAULT_BACKUP_AGE
        newest = min(status.backups, key=lambda b: b.age_seconds)
        found.append(_age_finding(name, "backup_age", f"last backup ({newest.type})", newest.age_seconds,
                                  warning, critical))
    for family, (warning, critical) in families.items():
        types = next(e.backup_types for e in ENGINES if e.name == family)
        ages = [b.age_seconds for b in status.backups if b.type in types]
        if ages:
            found.append(_age_finding(name, f"{family}_backup_age", f"last {family} backup", min(ages),
                                      warning, critical))
        else:
            found.append(Finding(name, f"{family}_backup_age", WARNING,
                                 f"no {family} backup yet, though the schedule runs one"))
    window = status.window
    ambiguous = (status.timelines or {}).get("ambiguous")  # the timelines finding says why, and how
    if window and window.kind == "pitr" and window.earliest is None and not ambiguous:
        found.append(Finding(name, "window", CRITICAL,
                             f"no physical backup can be made consistent with the archived WAL: {window.problem}"))
    return found


def _age_finding(source: str, check: str, what: str, age: float, warning: float | None,
                 critical: float | None) -> Finding:
    state = _above(age, warning, critical)
    return Finding(source, check, state,
                   f"{what} {human_duration(age)} old" + _limit(state, warning, critical, human_duration),
                   age, "s", warning, critical)


def _timeline_findings(status: SourceStatus) -> list[Finding]:
    """The judgement of which timeline production is on (``timelines``): CRITICAL when nobody can tell (the
    default restore refuses), WARNING when a branch production left behind is still in the archive (then the
    highest timeline is not production's, and PostgreSQL's own 'latest' would follow the branch)."""
    judged = status.timelines
    if not judged:
        return []
    name = status.source
    disagreement = _live_server_disagrees(status, judged)
    if disagreement:
        return [disagreement]
    if judged["ambiguous"]:
        return [Finding(name, "timelines", CRITICAL, f"{judged['reason']} (a restore needs --target-timeline)")]
    production, branches = judged["production"], judged["branches"]
    if branches:
        commands = ", ".join(f"`backupctl wal forget-timeline {b} --source {name}`" for b in branches)
        return [Finding(name, "timelines", WARNING, f"timeline(s) {', '.join(map(str, branches))} left behind by "
                        f"production (timeline {production}, highest {judged['highest']}); restores follow timeline "
                        f"{production}; retire them with {commands}")]
    return [Finding(name, "timelines", OK, f"production on timeline {production}")]


def _live_server_disagrees(status: SourceStatus, judged: dict[str, Any]) -> Finding | None:
    """The source's server, when it answers as a primary, is the ground truth the archive's judgement can
    only infer: a copy that archived its timeline a moment ago, while production had nothing to archive
    yet, looks like production to the archive alone. CRITICAL when the server writes another timeline than
    the one restores would follow (with the branch to retire); WARNING when the server's own timeline is
    not in the archive yet (its history file is not archived)."""
    server = status.server or {}
    current = server.get("current_wal")
    if not (server.get("reachable") and not server.get("in_recovery") and current):
        return None
    live = int(current[:8], 16)
    if live == judged["production"]:
        return None
    name = status.source
    parents = {row["timeline"]: row["parent"] for row in judged["tree"]}
    if live not in parents:
        return Finding(name, "timelines", WARNING, f"the server writes timeline {live}, which the archive does not "
                       f"have yet (no {live:08X}.history archived): check archive_command and `backupctl wal check "
                       f"{name}`")

    def ancestry(timeline: int | None) -> list[int]:
        line = []
        while timeline is not None:
            line.append(timeline)
            timeline = parents.get(timeline)
        return line[::-1]

    if judged["production"] is None:
        return Finding(name, "timelines", CRITICAL, f"{judged['reason']}; the server writes timeline {live} now: "
                       f"restore with --target-timeline {live}, and retire the other line with `backupctl wal "
                       f"forget-timeline N --source {name}`")
    branch = next((t for t in ancestry(judged["production"]) if t not in ancestry(live)), None)
    retire = (f"if the server is production, retire the branch with `backupctl wal forget-timeline {branch} "
              f"--source {name}`" if branch else f"restore with --target-timeline {live}")
    return Finding(name, "timelines", CRITICAL, f"the server writes timeline {live}, but restores would follow "
                   f"timeline {judged['production']} ({judged['reason']}); {retire}")


ELSEWHERE_GRACE_SECONDS = 60.0  # a segment the server archived this long ago must be listed by now


def _wal_findings(status: SourceStatus, check: CheckConfig, now: datetime) -> list[Finding]:
    """WAL archive age: only where archiving is expected (physical backups, or archive_mode on)."""
    name = status.source
    server = status.server or {}
    physical = any(b.type in PHYSICAL_TYPES for b in status.backups)
    archiving = server.get("archive_mode") in ("on", "always")
    wal = status.wal
    if server.get("reachable") and physical and not archiving:
        return [Finding(name, "wal_age", CRITICAL, "archive_mode is off: physical backups cannot be restored to "
                        f"any later point (run `backupctl pg-settings {name}`)")]
    if not (physical or archiving or wal):
        return []
    if not wal or wal.age_seconds is None:
        return [Finding(name, "wal_age", CRITICAL, "no WAL archived (run `backupctl wal check`)")]
    age = wal.age_seconds
    last, newest = (server.get("last_archived_wal") or "")[:24], (wal.newest_segment or "")[:24]
    archived_at = server.get("last_archived_time")
    if (len(last) == 24 and newest and last > newest and archived_at
            and (now - parse_iso(archived_at)).total_seconds() > ELSEWHERE_GRACE_SECONDS):
        # archive_command succeeds but stores WAL somewhere else: no backup can be recovered past `newest`.
        return [Finding(name, "wal_age", CRITICAL, f"the server archived {last} at {archived_at}, but the "
                        f"repository's newest segment is {newest}: archive_command stores WAL elsewhere (run "
                        f"`backupctl pg-settings {name}`)", age, "s", check.wal_age_warning, check.wal_age_critical)]
    if server.get("ready") == 0 and not server.get("failing"):
        # Nothing waits to be archived: an old newest segment only means a quiet server.
        return [Finding(name, "wal_age", OK, f"WAL archive current (newest segment {human_duration(age)} old, "
                        "nothing waiting)", age, "s", check.wal_age_warning, check.wal_age_critical)]
    return [_age_finding(name, "wal_age", "newest archived WAL segment", age, check.wal_age_warning,
                         check.wal_age_critical)]


def _server_findings(status: SourceStatus, check: CheckConfig) -> list[Finding]:
    name = status.source
    server = status.server or {}
    found = []
    if not server.get("reachable"):
        found.append(Finding(name, "server", WARNING, f"server not reachable: {server.get('error')}"))
    if server.get("failing"):
        found.append(Finding(name, "archiver", WARNING, f"archive_command failing: {server['last_failed_wal']} at "
                             f"{server['last_failed_time']} ({server['failed_count']} failures since "
                             f"{server['stats_reset'] or 'the server started'})", server["failed_count"], ""))
    if server.get("ready") is not None:
        ready = server["ready"]
        state = _above(ready, check.ready_warning, check.ready_critical)
        found.append(Finding(name, "ready", state, f"{ready} WAL segment(s) waiting to be archived"
                             + _limit(state, check.ready_warning, check.ready_critical, str),
                             ready, "", check.ready_warning, check.ready_critical))
    if "oldest_ready_age_seconds" in server:
        found.append(_ready_age_finding(name, server, check))
    if server.get("pg_wal_bytes") is not None and (check.pg_wal_warning or check.pg_wal_critical):
        size = server["pg_wal_bytes"]
        state = _above(size, check.pg_wal_warning, check.pg_wal_critical)
        found.append(Finding(name, "pg_wal", state, f"pg_wal holds {human_size(size)}"
                             + _limit(state, check.pg_wal_warning, check.pg_wal_critical, human_size),
                             size, "B", check.pg_wal_warning, check.pg_wal_critical))
    if server.get("disk_free_percent") is not None:
        free = server["disk_free_percent"]
        state = (CRITICAL if free <= check.disk_free_critical else WARNING if free <= check.disk_free_warning
                 else OK)
        found.append(Finding(name, "disk_free", state, f"{free:.1f}% free on the data directory's filesystem"
                             + _limit(state, check.disk_free_warning, check.disk_free_critical, lambda p: f"{p}%"),
                             free, "%", check.disk_free_warning, check.disk_free_critical))
    if server.get("local_error"):
        found.append(Finding(name, "local", UNKNOWN, server["local_error"]))
    return found


def _ready_age_finding(name: str, server: dict[str, Any], check: CheckConfig) -> Finding:
    """How long the oldest .ready file has waited. An archive_command that cannot run at all (exit 126 or
    127: not executable, not found; > 128: killed by a signal) makes PostgreSQL restart the archiver without
    counting a failure in pg_stat_archiver, so only the waiting file shows it; said so when nothing failed."""
    warning, critical = check.ready_age_warning, check.ready_age_critical
    age = server["oldest_ready_age_seconds"]
    if age is None:
        return Finding(name, "ready_age", OK, "no WAL file waiting to be archived", 0.0, "s", warning, critical)
    state = _above(age, warning, critical)
    message = (f"{server['oldest_ready']} has waited {human_duration(age)} to be archived"
               + _limit(state, warning, critical, human_duration))
    if state != OK and not server.get("failing"):
        message += ("; pg_stat_archiver counts no failure, so archive_command may not run at all (exit 126/127: "
                    "not executable or not found; or killed by a signal): see the server log and compare "
                    f"archive_command with `backupctl pg-settings {name}`")
    return Finding(name, "ready_age", state, message, age, "s", warning, critical)


def _verify_findings(status: SourceStatus) -> list[Finding]:
    record = status.last_verify
    if not record or record.status != "failed":
        return []
    return [Finding(status.source, "verify", CRITICAL, f"the last verify found damage in backup "
                    f"{record.backup_id} at {record.finished_at}: {record.error}")]


def _drill_findings(status: SourceStatus, source: SourceConfig, timezone: str | None,
                    now: datetime) -> list[Finding]:
    warning, critical = drill_thresholds(source, timezone, now)
    if warning is None and critical is None:
        return []
    name = status.source
    drill = status.last_drill
    if not drill:
        return [Finding(name, "drill_age", WARNING, "no restore drill has run yet (`backupctl drill run "
                        f"{name}`)")]
    if drill.status != "passed":
        return [Finding(name, "drill", CRITICAL, f"the last drill ({drill.id}, backup {drill.backup_id}) "
                        f"failed: {drill.error or 'see its checks'}")]
    age = drill.age_seconds or 0.0
    state = _above(age, warning, critical)
    rto = drill.rto_seconds
    rto_text = f", RTO {human_duration(rto)}" if rto is not None else ""
    return [Finding(name, "drill_age", state, f"last drill passed {human_duration(age)} ago{rto_text}"
                    + _limit(state, warning, critical, human_duration), age, "s", warning, critical)]


def summary(findings: list[Finding], sources: list[str]) -> str:
    """The plugin's one line: state, the problems (or what is fine), then performance data."""
    state = worst([f.state for f in findings])
    problems = sorted((f for f in findings if f.state != OK), key=lambda f: -_RANK[f.state])
    if problems:
        text = "; ".join(f"{f.source}: {f.message}" for f in problems)
    else:
        ages = {}
        for f in findings:
            if f.check.endswith("backup_age"):
                ages.setdefault(f.source, f.message)
        text = f"{len(sources)} source(s) protected: " + ", ".join(f"{s} ({ages.get(s, 'ok')})" for s in sources)
    perf = " ".join(p for p in (f.perfdata() for f in findings) if p)
    return f"BACKUPCTL {STATE_NAMES[state]} - {text}" + (f" | {perf}" if perf else "")
