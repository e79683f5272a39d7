"""The report as one self-contained HTML page: inline CSS and inline SVG, no script, nothing fetched.

A DBA opens it from a mail, a ticket or the scheduler's ``/report`` on a host without network: so nothing
may come from elsewhere, and it reads the same with JavaScript off (hovering a mark shows its SVG
``<title>``; the tables below each timeline hold every fact the marks stand for). Source names, labels,
errors and ids are user input or come from the repository: every text goes through ``html.escape``, here
and nowhere else. Times are UTC, as everywhere in backupctl; sizes and durations are ``core.units``'.

Each source gets one timeline, from the report's start (or its first event) to the moment it was made:
backups per type (a bar from start to finish, its height growing with the size), archived WAL per
timeline with its gaps in red, the recoverable window, drills with their RTO, and verifications.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from backupctl.core.units import human_duration, human_seconds, human_size
from backupctl.monitoring.check import STATE_NAMES, worst
from backupctl.monitoring.report import Report, SourceReport
from backupctl.monitoring.status import DrillSummary, VerifySummary
from backupctl.repo.catalog import Manifest, parse_iso

WIDTH = 1160  # the SVG's user units; it scales to the page
LABEL_WIDTH = 120  # the lanes' names on the left
PLOT_LEFT, PLOT_RIGHT = LABEL_WIDTH + 10, WIDTH - 20
LANE = 34  # one row's height
MIN_MARK = 3.0  # a backup of a second is still visible
MIN_SPAN = 10.0  # seconds: a source whose whole history is one backup still has an axis

TYPE_COLOURS = {"full": "#1f6feb", "incr": "#79b8ff", "logical": "#8957e5", "sqlite": "#0e8a8a"}
OK_COLOUR, BAD_COLOUR, WAL_COLOUR, WINDOW_COLOUR = "#1a7f37", "#cf222e", "#2da44e", "#9be9a8"
STATE_COLOURS = {"OK": "#1a7f37", "WARNING": "#9a6700", "CRITICAL": "#cf222e", "UNKNOWN": "#6e7781"}
# (step in seconds, strftime of a tick's label); the first step that gives at most ~10 ticks is used
TICK_STEPS = [(s, "%H:%M:%S") for s in (1, 2, 5, 10, 15, 30)] + \
    [(m * 60, "%H:%M") for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720)] + \
    [(d * 86400, "%m-%d") for d in (1, 2, 7, 14, 28, 56, 91, 182, 364)]

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1f2328;
background:#f6f8fa}
header{background:#24292f;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#d0d7de}main{padding:8px 24px 32px;max-width:1240px}
section.source{background:#fff;border:1px solid #d0d7de;border-radius:8px;margin:16px 0;padding:12px 18px}
h2{margin:0 0 6px;font-size:18px}h2 small{color:#57606a;font-weight:normal}h3{font-size:15px;margin:14px 0 4px}
.badge{display:inline-block;border-radius:10px;color:#fff;padding:0 9px;font-size:12px;margin-left:8px;
vertical-align:middle}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}dl.facts dt{color:#57606a}
dl.facts dd{margin:0}ul.findings{margin:4px 0;padding-left:20px}.bad{color:#cf222e}.ok{color:#1a7f37}
.warn{color:#9a6700}svg.timeline{width:100%;height:auto;display:block;margin:8px 0}
table{border-collapse:collapse;width:100%;margin:4px 0 8px;font-size:13px}
th,td{border-bottom:1px solid #eaeef2;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.num{text-align:right;white-space:nowrap}
code,.id{font-family:ui-monospace,SFMono-Regular,"DejaVu Sans Mono",Menlo,monospace;font-size:12px}
.id{white-space:nowrap}.legend span{margin-right:14px;white-space:nowrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
"""


def esc(value: object) -> str:
    """The one way text enters the page."""
    return html.escape("" if value is None else str(value), quote=True)


def utc(text: str | None) -> str:
    """An ISO time as the page shows it: 2026-12-05 14:03:07 UTC."""
    return "-" if not text else parse_iso(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(report: Report) -> str:
    """The whole page."""
    sources = "\n".join(_source(s, report) for s in report.sources) or "<p>No source is configured.</p>"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>backupctl report: {esc(report.repository)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>backupctl report</h1><p>Repository <code>{esc(report.repository)}</code> · generated "
        f"{esc(utc(report.generated_at))} · showing from {esc(utc(report.since))} · backupctl "
        f"{esc(report.tool_version)}</p></header>\n<main>\n{_legend()}\n{sources}\n</main>\n</body>\n</html>\n"
    )


def _legend() -> str:
    items = [(colour, f"{kind} backup") for kind, colour in TYPE_COLOURS.items()] + [
        (WAL_COLOUR, "archived WAL"), (BAD_COLOUR, "WAL gap / failed"), (WINDOW_COLOUR, "recoverable window"),
        (OK_COLOUR, "drill / verify passed")]
    spans = "".join(f'<span><i class="swatch" style="background:{c}"></i>{esc(t)}</span>' for c, t in items)
    return f'<p class="legend">{spans} · hover a mark for its details; all times UTC</p>'


# --- one source ----------------------------------------------------------------------------------------


def _source(source: SourceReport, report: Report) -> str:
    status = source.status
    state = STATE_NAMES[worst([f.state for f in source.findings])]
    parts = [
        f'<section class="source" id="source-{esc(source.name)}">',
        f'<h2>{esc(source.name)} <small>{esc(status.kind)}</small><span class="badge" '
        f'style="background:{STATE_COLOURS[state]}">{esc(state)}</span></h2>',
        _facts(source),
        _findings(source),
        _timeline(source, report),
        _backup_table(source),
        _gap_table(source),
        _drill_table(source),
        _verify_table(source),
        "</section>",
    ]
    return "\n".join(p for p in parts if p)


def _facts(source: SourceReport) -> str:
    status = source.status
    rows: list[tuple[str, str]] = [("Recoverable window", _window_text(source))]
    for b in status.backups:
        rows.append((f"Newest {b.type}", f'{_id(b.id)}, {esc(human_duration(b.age_seconds))} '
                     f"ago, {esc(human_size(b.size))} ({b.count} {esc(b.type)} backups)"))
    if not status.backups:
        rows.append(("Backups", '<span class="bad">none</span>'))
    if status.wal is not None:
        wal = status.wal
        gaps = f'<span class="bad">{wal.gaps} gap(s)</span>' if wal.gaps else '<span class="ok">no gaps</span>'
        rows.append(("WAL archive", f"newest <code>{esc(wal.newest_segment)}</code>, "
                     f"{esc(human_duration(wal.age_seconds))} ago; {wal.segments} segments, {gaps}"))
    rows.append(("Last verify", _record_text(status.last_verify)))
    drill = status.last_drill
    text = _record_text(drill)
    if drill is not None and drill.rto_seconds is not None:
        text += f", RTO {esc(human_seconds(drill.rto_seconds))}"
    rows.append(("Last drill", text))
    body = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<dl class="facts">{body}</dl>'


def _window_text(source: SourceReport) -> str:
    window = source.status.window
    if window is None:
        return '<span class="bad">nothing to restore yet</span>'
    if window.earliest is None:
        return f'<span class="bad">no point in time is recoverable: {esc(window.problem)}</span>'
    span = (f"{esc(utc(window.earliest))} → {esc(utc(window.latest))} ({esc(human_duration(window.seconds))})")
    if window.kind == "snapshots":
        return f"{span}: {window.points} restorable backup(s), no point in time between them"
    text = f'point in time {span}, from {_id(window.from_backup)} on timeline {window.timeline}'
    if window.problem:
        text += f'; <span class="warn">{esc(window.problem)}</span>'
    return text


def _record_text(record: VerifySummary | DrillSummary | None) -> str:
    """The newest verify or drill: its verdict, how long ago, of which backup."""
    if record is None:
        return '<span class="warn">never</span>'
    return f"{_state(record.status)} {esc(human_duration(record.age_seconds))} ago, backup {_id(record.backup_id)}"


def _findings(source: SourceReport) -> str:
    lines = [(STATE_NAMES[f.state], f.message) for f in source.findings if STATE_NAMES[f.state] != "OK"]
    lines += [("ERROR", e) for e in source.errors]
    if not lines:
        return ""
    css = {"WARNING": "warn", "OK": "ok"}
    items = "".join(f'<li class="{css.get(s, "bad")}">{esc(s)}: {esc(m)}</li>' for s, m in lines)
    return f'<ul class="findings">{items}</ul>'


# --- the timeline --------------------------------------------------------------------------------------


class _Axis:
    """Times to x: from the start to the end of the source's picture."""

    def __init__(self, start: datetime, end: datetime) -> None:
        if (end - start).total_seconds() < MIN_SPAN:
            start = end - timedelta(seconds=MIN_SPAN)
        pad = (end - start) * 0.02
        self.start, self.end = start - pad, end + pad
        self.span = (self.end - self.start).total_seconds()

    def x(self, moment: datetime | str) -> float:
        when = parse_iso(moment) if isinstance(moment, str) else moment
        seconds = min(max((when - self.start).total_seconds(), 0.0), self.span)
        return PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * seconds / self.span

    def ticks(self) -> Iterable[tuple[float, str, str | None]]:
        """(x, time label, date label when the day changes) of each tick."""
        step, fmt = next(((s, f) for s, f in TICK_STEPS if self.span / s <= 10), TICK_STEPS[-1])
        first = (int(self.start.timestamp()) // step + 1) * step
        day = None
        for stamp in range(first, int(self.end.timestamp()) + 1, step):
            moment = datetime.fromtimestamp(stamp, UTC)
            date = moment.strftime("%Y-%m-%d")
            yield self.x(moment), moment.strftime(fmt), (date if date != day and step < 86400 else None)
            day = date


def _events(source: SourceReport) -> list[datetime]:
    times = [parse_iso(t) for b in source.backups for t in (b.started_at, b.finished_at)]
    times += [parse_iso(t) for r in source.wal_runs for t in (r.first_archived_at, r.last_archived_at)]
    times += [parse_iso(m.finished_at) for m in (*source.drills, *source.verifications) if m.finished_at]
    window = source.status.window
    if window is not None and window.earliest:
        times.append(parse_iso(window.earliest))
    return times


def _timeline(source: SourceReport, report: Report) -> str:
    end = parse_iso(report.generated_at)
    events = _events(source)
    start = max(min(events, default=end), parse_iso(report.since))
    axis = _Axis(start, end)
    lanes: list[tuple[str, list[str]]] = []
    for kind in TYPE_COLOURS:
        backups = [b for b in source.backups if b.type == kind]
        if backups:
            lanes.append((f"{kind} backups", _backup_marks(backups, axis)))
    for timeline in sorted({r.timeline for r in source.wal_runs}):
        lanes.append((f"WAL, timeline {timeline}", _wal_marks(source, timeline, axis)))
    lanes.append(("recoverable", _window_marks(source, axis)))
    lanes.append(("drills", _drill_marks(source, axis)))
    lanes.append(("verifications", _verify_marks(source, axis)))
    height = 24 + LANE * len(lanes) + 34
    out = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'aria-label="timeline of {esc(source.name)}" font-family="sans-serif" font-size="11">']
    top = 10
    for index, (name, marks) in enumerate(lanes):
        y = top + index * LANE
        if index % 2 == 0:
            out.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{LANE}" fill="#f6f8fa"/>')
        out.append(f'<text x="6" y="{y + LANE / 2 + 4}" fill="#57606a">{esc(name)}</text>')
        out.append(f'<g transform="translate(0 {y})">{"".join(marks)}</g>')
    bottom = top + LANE * len(lanes)
    for x, label, date in axis.ticks():
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom + 4}" stroke="#d0d7de"/>'
                   f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" fill="#57606a">{esc(label)}</text>')
        if date:
            out.append(f'<text x="{x:.1f}" y="{bottom + 29}" text-anchor="middle" fill="#8c959f">{esc(date)}</text>')
    now = axis.x(end)
    out.append(f'<line x1="{now:.1f}" x2="{now:.1f}" y1="{top}" y2="{bottom}" stroke="#24292f" '
               f'stroke-dasharray="4 3"><title>report generated {esc(utc(report.generated_at))}</title></line>')
    out.append("</svg>")
    return "\n".join(out)


def _bar(x0: float, x1: float, y: float, height: float, colour: str, title: str, extra: str = "") -> str:
    width = max(x1 - x0, MIN_MARK)
    return (f'<rect x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" fill="{colour}" rx="1"'
            f'{extra}><title>{esc(title)}</title></rect>')


def _label(x: float, gap: float, text: str, colour: str) -> str:
    """A mark's label on its right, or on its left when the right edge is near."""
    if x + gap + 70 > PLOT_RIGHT:
        return f'<text x="{x - gap:.1f}" y="21" text-anchor="end" fill="{colour}">{esc(text)}</text>'
    return f'<text x="{x + gap:.1f}" y="21" fill="{colour}">{esc(text)}</text>'


def _backup_marks(backups: list[Manifest], axis: _Axis) -> list[str]:
    largest = max(b.size for b in backups) or 1
    marks = []
    for b in backups:
        height = 8 + 18 * (b.size / largest) ** 0.5
        title = (f"{b.id} ({b.type}{', parent ' + b.parent if b.parent else ''}): {utc(b.started_at)} → "
                 f"{utc(b.finished_at)}, {human_seconds(b.duration)}, {human_size(b.size)} "
                 f"({human_size(b.stored_size)} stored)"
                 + "".join(f", {k}={v}" for k, v in sorted(b.labels.items())))
        marks.append(_bar(axis.x(b.started_at), axis.x(b.finished_at), LANE - 4 - height, height,
                          TYPE_COLOURS.get(b.type, "#6e7781"), title))
    return marks


def _wal_marks(source: SourceReport, timeline: int, axis: _Axis) -> list[str]:
    marks = []
    for r in source.wal_runs:
        if r.timeline == timeline:
            marks.append(_bar(axis.x(r.first_archived_at), axis.x(r.last_archived_at), 11, 12, WAL_COLOUR,
                              f"epoch {r.epoch}, timeline {r.timeline}: {r.segments} segments {r.first} .. {r.last}, "
                              f"archived {utc(r.first_archived_at)} → {utc(r.last_archived_at)}"))
    for g in source.wal_gaps:
        if g.timeline == timeline:
            x0, x1 = axis.x(g.after), axis.x(g.before)
            marks.append(_bar(x0, x1, 5, 24, BAD_COLOUR,
                              f"WAL gap: {g.missing} segment(s) missing, {g.first_missing} .. {g.last_missing} "
                              f"(between {utc(g.after)} and {utc(g.before)}): no restore replays across it"))
            if x1 - x0 >= 40:  # named inside the mark when it has room; its title and the table always do
                marks.append(f'<text x="{(x0 + x1) / 2:.1f}" y="21" text-anchor="middle" fill="#fff">gap</text>')
    return marks


def _window_marks(source: SourceReport, axis: _Axis) -> list[str]:
    window = source.status.window
    if window is None or window.earliest is None or window.latest is None:
        reason = "nothing to restore yet" if window is None else f"no recoverable point: {window.problem}"
        return [f'<text x="{PLOT_LEFT}" y="21" fill="{BAD_COLOUR}">{esc(reason)}</text>']
    if window.kind == "snapshots":
        return [f'<circle cx="{axis.x(b.finished_at):.1f}" cy="17" r="4" fill="{OK_COLOUR}"><title>'
                f"{esc('restorable: ' + b.id + ' as of ' + utc(b.finished_at))}</title></circle>"
                for b in source.backups]
    x0, x1 = axis.x(window.earliest), axis.x(window.latest)
    title = (f"point-in-time recovery from {utc(window.earliest)} to {utc(window.latest)} "
             f"({human_duration(window.seconds)}), from backup {window.from_backup}, timeline {window.timeline}")
    return [_bar(x0, x1, 8, 18, WINDOW_COLOUR, title, ' stroke="#1a7f37"'),
            _label(x1, 4, f"PITR {human_duration(window.seconds)}", "#1a7f37")]


def _drill_marks(source: SourceReport, axis: _Axis) -> list[str]:
    marks, labelled = [], -1e9
    for d in source.drills:
        x = axis.x(d.finished_at or d.started_at or "")
        ok = d.status == "passed"
        rto = f"RTO {human_seconds(d.rto_seconds)}" if d.rto_seconds is not None else "no RTO"
        why = "" if ok else f": {d.error or ', '.join(d.failed_checks)}"
        title = f"drill {d.id} {d.status} at {utc(d.finished_at)} on backup {d.backup_id}, {rto}{why}"
        marks.append(f'<circle cx="{x:.1f}" cy="17" r="6" fill="{OK_COLOUR if ok else BAD_COLOUR}"><title>'
                     f"{esc(title)}</title></circle>")
        if x - labelled > 70:
            marks.append(_label(x, 9, rto, "#57606a"))
            labelled = x
    return marks


def _verify_marks(source: SourceReport, axis: _Axis) -> list[str]:
    marks = []
    for v in source.verifications:
        x = axis.x(v.finished_at or v.started_at or "")
        ok = v.status == "passed"
        title = f"verify {v.id} {v.status} at {utc(v.finished_at)}: backup {v.backup_id}" + (
            "" if ok else f": {v.error}")
        marks.append(f'<path d="M{x:.1f} 10 l6 7 l-6 7 l-6 -7 z" fill="{OK_COLOUR if ok else BAD_COLOUR}"><title>'
                     f"{esc(title)}</title></path>")
    return marks


# --- the tables ----------------------------------------------------------------------------------------


def _table(title: str, headers: list[str], rows: list[list[str]], empty: str, numeric: tuple[int, ...] = ()) -> str:
    """A table of cells that are HTML already (each escaped where it was made); ``numeric`` columns align right."""
    if not rows:
        return f"<h3>{esc(title)}</h3><p>{esc(empty)}</p>" if empty else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<h3>{esc(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _id(text: str | None) -> str:
    return f'<span class="id">{esc(text)}</span>'


def _state(state: str | None) -> str:
    return f'<span class="{"ok" if state == "passed" else "bad"}">{esc(state)}</span>'


def _backup_table(source: SourceReport) -> str:
    rows = [[_id(b.id), esc(b.type), esc(utc(b.started_at)), esc(human_seconds(b.duration)), esc(human_size(b.size)),
             esc(human_size(b.stored_size)), esc(", ".join(f"{k}={v}" for k, v in sorted(b.labels.items())))]
            for b in reversed(source.backups)]
    return _table("Backups", ["id", "type", "started", "duration", "size", "stored", "labels"], rows,
                  "No backup in this period.", numeric=(3, 4, 5))


def _gap_table(source: SourceReport) -> str:
    rows = [[esc(g.timeline), f"<code>{esc(g.first_missing)}</code> .. <code>{esc(g.last_missing)}</code>",
             esc(g.missing), esc(f"{utc(g.after)} → {utc(g.before)}")] for g in source.wal_gaps]
    return _table("WAL gaps", ["timeline", "missing segments", "count", "between"], rows, "", numeric=(0, 2))


def _drill_table(source: SourceReport) -> str:
    rows = [[_id(d.id), _state(d.status), esc(utc(d.finished_at)), _id(d.backup_id), esc(human_seconds(d.rto_seconds)),
             esc(d.error or ", ".join(d.failed_checks))] for d in reversed(source.drills)]
    return _table("Drills", ["id", "result", "finished", "backup", "RTO", "problem"], rows, "No drill in this period.",
                  numeric=(4,))


def _verify_table(source: SourceReport) -> str:
    rows = [[_id(v.id), _state(v.status), esc(utc(v.finished_at)), _id(v.backup_id), esc(v.mode),
             esc(human_size(v.bytes or 0)), esc(v.error)] for v in reversed(source.verifications)]
    return _table("Verifications", ["id", "result", "finished", "backup", "mode", "read", "problem"], rows,
                  "No verification in this period.", numeric=(5,))
