"""Results on stdout: one writer per format, one method per kind of result.

A command asks ``writer(output)`` for the writer of the format the user chose and hands it what the service
returned; it never branches on the format itself. ``JsonWriter`` prints the stable JSON that scripts read
(every listing is a list of objects with an ``id``; ``docs/json-output.md`` is the contract) and
``TableWriter`` draws the same data for people: rich tables, and plain lines where a line is the result.
For ``check`` the table format is the monitoring plugin's own output (one summary line, then one line per
finding). Sizes, durations and times are spelled by ``core.units``, as everywhere else.

Tables fit the terminal they are drawn on (80 columns included): an id column never wraps, so an id can be
copied with a double click, the other columns shrink and fold around it, and a column with nothing in it
is left out. Piped, a table is drawn as wide as its longest row, so no cell ever wraps for ``grep`` or ``awk``.
The format never depends on where stdout goes: ``--output`` (one option, ``cli.common.OUTPUT``) decides.
"""

from __future__ import annotations

import json
import os
import sys
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from backupctl.core.units import human_duration, human_seconds, human_size, short_time
from backupctl.monitoring import check as monitor
from backupctl.repo import layout

if TYPE_CHECKING:  # types only: the writers take what the services return
    from pathlib import Path

    from backupctl.monitoring.check import Finding
    from backupctl.monitoring.status import DrillSummary, RunningBackup, SourceStatus, VerifySummary, Window
    from backupctl.repo.catalog import Manifest
    from backupctl.services.delete import DeleteOutcome
    from backupctl.services.forget_timeline import Forgotten
    from backupctl.services.pitr import Plan
    from backupctl.services.verify import VerifyResult
    from backupctl.wal.epochs import EpochStart
    from backupctl.wal.streams import SourceIdentity
    from backupctl.wal.verify import WalVerifyResult


def writer(output: str) -> Writer:
    """The writer of a ``--output`` choice (``table`` or ``json``), wherever stdout goes."""
    return JsonWriter() if output == "json" else TableWriter()


class Writer(ABC):
    """One method per result; each format implements them all."""

    @abstractmethod
    def backup(self, manifest: Manifest) -> None:
        """`backup`: the backup just made."""

    @abstractmethod
    def backups(self, summaries: list[dict[str, Any]]) -> None:
        """`list`: backup summaries, newest first, each with its pin."""

    @abstractmethod
    def manifest(self, doc: dict[str, Any]) -> None:
        """`show`: one manifest, with its details when they could be opened."""

    @abstractmethod
    def verified(self, results: list[VerifyResult]) -> None:
        """`verify`: one result per backup read back."""

    @abstractmethod
    def plan(self, plan: Plan) -> None:
        """`restore --dry-run`: the plan of a point-in-time restore."""

    @abstractmethod
    def restored(self, result: dict[str, Any], backup_id: str) -> None:
        """`restore` (physical): what was written and, with --start, how recovery ended."""

    @abstractmethod
    def status(self, facts: list[SourceStatus]) -> None:
        """`status`: the gathered facts of each source."""

    @abstractmethod
    def checked(self, sources: list[str], findings: list[Finding]) -> None:
        """`check`: the findings of each source, judged against its thresholds."""

    @abstractmethod
    def jobs(self, rows: list[dict[str, Any]]) -> None:
        """`scheduler jobs`: the scheduled jobs and their next runs."""

    @abstractmethod
    def wal_status(self, source: str, rows: list[dict[str, Any]], streams: list[SourceIdentity]) -> None:
        """`wal status`: the archived ranges of each epoch and timeline."""

    @abstractmethod
    def wal_verified(self, results: list[WalVerifyResult]) -> None:
        """`wal verify`: one result per history epoch."""

    @abstractmethod
    def wal_checked(self, source: str, result: dict[str, Any]) -> None:
        """`wal check`: the segment switched to and how long it took to be archived."""

    @abstractmethod
    def epoch_started(self, result: EpochStart) -> None:
        """`wal new-epoch`: what was recorded, and what to do next."""

    @abstractmethod
    def timeline_forgotten(self, result: Forgotten) -> None:
        """`wal forget-timeline`: what was (or would be) removed."""

    @abstractmethod
    def drill(self, result: dict[str, Any]) -> None:
        """`drill run` and `drill show`: one drill's stored document."""

    @abstractmethod
    def drills(self, results: list[dict[str, Any]]) -> None:
        """`drill list`: drill documents, newest first."""

    @abstractmethod
    def expired(self, rows: list[dict[str, Any]], dry_run: bool) -> None:
        """`expire`: the fate of every backup and WAL range, and why."""

    @abstractmethod
    def key_made(self, recipient: str, identity_file: Path) -> None:
        """`keygen`: the recipient (public key) of the identity written to ``identity_file``."""

    @abstractmethod
    def deleted(self, outcome: DeleteOutcome) -> None:
        """`delete`: the backups it removes (or would), why, and what protects them."""

    @abstractmethod
    def collected(self, rows: list[dict[str, Any]], dry_run: bool) -> None:
        """`repo gc`: the debris found, and what became of it."""


class JsonWriter(Writer):
    """Stable JSON for programs: consumers ignore fields they do not know, so fields may be added, never changed."""

    def emit(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")

    def backup(self, manifest: Manifest) -> None:
        self.emit(manifest.summary())

    def backups(self, summaries: list[dict[str, Any]]) -> None:
        self.emit(summaries)

    def manifest(self, doc: dict[str, Any]) -> None:
        self.emit(doc)

    def verified(self, results: list[VerifyResult]) -> None:
        self.emit([r.to_json() for r in results])

    def plan(self, plan: Plan) -> None:
        self.emit(plan.to_json())

    def restored(self, result: dict[str, Any], backup_id: str) -> None:
        self.emit(result)

    def status(self, facts: list[SourceStatus]) -> None:
        self.emit([s.to_json() for s in facts])

    def checked(self, sources: list[str], findings: list[Finding]) -> None:
        self.emit([{"id": name, "source": name,
                    "state": monitor.STATE_NAMES[monitor.worst([f.state for f in findings if f.source == name])],
                    "findings": [f.to_json() for f in findings if f.source == name]} for name in sources])

    def jobs(self, rows: list[dict[str, Any]]) -> None:
        self.emit(rows)

    def wal_status(self, source: str, rows: list[dict[str, Any]], streams: list[SourceIdentity]) -> None:
        self.emit(rows)

    def wal_verified(self, results: list[WalVerifyResult]) -> None:
        self.emit([result.to_json() for result in results])

    def wal_checked(self, source: str, result: dict[str, Any]) -> None:
        self.emit([result])

    def epoch_started(self, result: EpochStart) -> None:
        self.emit([result.to_json()])

    def timeline_forgotten(self, result: Forgotten) -> None:
        self.emit([result.to_json()])

    def drill(self, result: dict[str, Any]) -> None:
        self.emit(result)

    def drills(self, results: list[dict[str, Any]]) -> None:
        self.emit(results)

    def expired(self, rows: list[dict[str, Any]], dry_run: bool) -> None:
        self.emit(rows)

    def key_made(self, recipient: str, identity_file: Path) -> None:
        self.emit({"recipient": recipient, "identity_file": str(identity_file)})

    def deleted(self, outcome: DeleteOutcome) -> None:
        self.emit(outcome.rows())

    def collected(self, rows: list[dict[str, Any]], dry_run: bool) -> None:
        self.emit(rows)


_PIPED_WIDTH = 4096  # piped: wider than any row, so rich never folds a cell


def _console() -> Console:
    """Stdout console: the terminal's width (``$COLUMNS`` first, as rich reads it), or unbounded when piped."""
    width = None if sys.stdout.isatty() else _PIPED_WIDTH
    return Console(file=sys.stdout, no_color="NO_COLOR" in os.environ, width=width)


_EMPTY = ("", "-")
_FOLD_MIN = 10  # a free-text column is given at least this many characters before others are dropped


def _server_line(server: dict[str, Any]) -> str:
    """"replica1 (standby, 10.0.0.2:5432)", with why the primary was taken when no standby could be."""
    fallback = f"; fell back: {server['fallback']}" if server.get("fallback") else ""
    return f"{server['name']} ({server['role']}, {server['address']}){fallback}"


def _standby_status_line(name: str, address: str, probe: Any) -> str:
    """A standby as status saw it: "replica1 (127.0.0.1:5433): streaming, lag 0 B, replay delay 0s"."""
    if not probe.up:
        return f"{name} ({address}): DOWN: {probe.error}"
    if not probe.in_recovery:
        return f"{name} ({address}): NOT IN RECOVERY (promoted?)"
    lag = human_size(probe.lag_bytes) if probe.lag_bytes is not None else "unknown"
    delay = human_duration(probe.replay_delay) if probe.replay_delay is not None else "unknown"
    return f"{name} ({address}): {'streaming' if probe.streaming else 'NOT STREAMING'}, lag {lag}, replay delay {delay}"


def _server_cell(server: dict[str, Any] | None) -> str:
    """``list``'s SERVER: the server a physical backup was copied from, "primary*" when no standby could be."""
    if not server:
        return ""
    return f"{server['name']}{'*' if server.get('fallback') else ''}"


def _table(title: str | None, columns: list[str], rows: list[list[str]], ids: tuple[str, ...] = (),
           fold: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> None:
    """A table without box art (columns two spaces apart, as ``kubectl`` and ``docker`` print them).

    Short values (ids, sizes, times, types) never wrap; only the ``fold`` columns (free text: reasons,
    labels, problems) do. A column whose every cell is empty (or ``-``) is left out, and while the table does
    not fit the terminal the ``drop`` columns are left out in their order (JSON and ``show`` keep them). If
    it still does not fit, the short columns may fold too, but the ``ids`` columns never do.
    """
    out = _console()
    shown = [i for i, name in enumerate(columns) if not rows or any(row[i] not in _EMPTY for row in rows)]

    def natural(i: int) -> int:
        return max([len(columns[i]), *(len(row[i]) for row in rows)])

    def needed(indexes: list[int]) -> int:
        return sum(min(natural(i), _FOLD_MIN) if columns[i] in fold else natural(i) for i in indexes) + \
            2 * (len(indexes) - 1)

    for name in drop:
        if needed(shown) <= out.width:
            break
        shown = [i for i in shown if columns[i] != name]
    squeezed = needed(shown) > out.width
    view = Table(title=title, box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for i in shown:
        if columns[i] in fold or (squeezed and columns[i] not in ids):
            view.add_column(columns[i], overflow="fold")
        else:
            view.add_column(columns[i], no_wrap=True, min_width=natural(i))
    for row in rows:
        view.add_row(*(row[i] for i in shown))
    out.print(view)


class TableWriter(Writer):
    """Tables and lines for people; the same data as the JSON, in the order an operator reads it."""

    def backup(self, manifest: Manifest) -> None:
        click.echo(f"backup {manifest.id} of {manifest.source}: {human_size(manifest.size)} -> "
                   f"{human_size(manifest.stored_size)} stored in {human_seconds(manifest.duration)}")

    def backups(self, summaries: list[dict[str, Any]]) -> None:
        if not summaries:
            _console().print("no backups")
            return
        _table(None, ["ID", "SOURCE", "TYPE", "SERVER", "FINISHED", "TOOK", "SIZE", "STORED", "ENCRYPTED", "PINNED",
                      "LABELS"], [
            [s["id"], s["source"], s["type"], _server_cell(s.get("server")), short_time(s["finished_at"]),
             human_seconds(s["duration_seconds"]),
             human_size(s["size"]), human_size(s["stored_size"]), "yes" if s["encrypted"] else "",
             s["pinned"]["reason"] if s.get("pinned") else "",
             ", ".join(f"{k}={v}" for k, v in (s.get("labels") or {}).items())]
            for s in summaries
        ], ids=("ID",), fold=("PINNED", "LABELS"), drop=("TOOK", "SIZE", "STORED", "SOURCE", "SERVER"))

    def manifest(self, doc: dict[str, Any]) -> None:
        """``show`` for people: the facts, the objects and, when readable, what the data holds."""
        out = _console()
        for key in ("id", "source", "kind", "type", "parent", "started_at", "finished_at", "host",
                    "tool_version"):
            out.print(f"{key + ':':<14}{doc.get(key)}")
        server = doc.get("extra", {}).get("server")
        if server:
            out.print(f"{'server:':<14}{_server_line(server)}", markup=False)
        totals = doc["totals"]
        out.print(f"{'size:':<14}{human_size(totals['size'])} ({human_size(totals['stored_size'])} stored)")
        enc = doc.get("encryption")
        out.print(f"{'encryption:':<14}{'age to ' + ', '.join(enc['recipients']) if enc else 'none'}")
        if doc.get("labels"):
            out.print(f"{'labels:':<14}{', '.join(f'{k}={v}' for k, v in doc['labels'].items())}")
        _table("objects", ["KEY", "SIZE", "STORED", "COMPRESSION", "SHA256"], [
            [o["key"], human_size(o["size"]), human_size(o["stored_size"]), o["compression"], o["sha256"][:16]]
            for o in doc["objects"]
        ], fold=("KEY",))
        details = doc.get("details")
        if details is None:
            out.print("details:      sealed (set encryption.identity_file to read them)")
            return
        _details_view(out, doc["type"], doc.get("extra", {}), details)

    def verified(self, results: list[VerifyResult]) -> None:
        _table(None, ["ID", "SOURCE", "RESULT", "MODE", "OBJECTS", "BYTES", "SECONDS", "PROBLEM"], [
            [r["id"], r["source"], "ok" if r["ok"] else "DAMAGED", r["mode"], str(r["objects"]),
             human_size(r["bytes"]), f"{r['seconds']:.2f}", "; ".join(r["problems"])]
            for r in (result.to_json() for result in results)
        ], ids=("ID",), fold=("PROBLEM",), drop=("SECONDS", "OBJECTS", "MODE"))

    def plan(self, plan: Plan) -> None:
        _plan_view(plan.to_json())

    def restored(self, result: dict[str, Any], backup_id: str) -> None:
        _plan_view(result)
        recovery = result.get("recovery")
        if "standby" in result:
            click.echo(_replica_line(result["standby"], (recovery or {}).get("streaming")))
        if not recovery:
            click.echo(f"restored {backup_id} into {result['pgdata']}: start the server to recover")
            return
        for note in recovery["notes"]:
            click.echo(f"note: {note}")
        promoted = (f", promoted to timeline {recovery['promoted_timeline']}"
                    if "promoted_timeline" in recovery else "")
        commit = recovery["last_replayed_commit"] or "unknown"
        click.echo(f"restored {backup_id} into {result['pgdata']}; server {recovery['state']} at "
                   f"{recovery['lsn']} on timeline {recovery['timeline']}{promoted}, port {recovery['port']}; "
                   f"last replayed commit {commit}")
        if "psql" in recovery:
            click.echo(f"connect: {recovery['psql']}")

    def status(self, facts: list[SourceStatus]) -> None:
        """Two tables: every source at a glance, then its newest backup of each type."""
        rows = []
        for s in facts:
            newest = min(s.backups, key=lambda b: b.age_seconds, default=None)
            rows.append([
                s.source, s.kind,
                f"{newest.type}, {human_duration(newest.age_seconds)} ago" if newest else "NONE",
                _wal_cell(s), _window_cell(s.window),
                human_size(s.repository.stored_bytes) if s.repository and s.repository.reachable else "UNREACHABLE",
                _record_cell(s.last_verify), _drill_cell(s.last_drill),
            ])
        _table(None, ["SOURCE", "KIND", "LAST BACKUP", "WAL ARCHIVE", "RECOVERABLE WINDOW", "STORED", "LAST VERIFY",
                      "LAST DRILL"], rows,
               fold=("LAST BACKUP", "WAL ARCHIVE", "RECOVERABLE WINDOW", "LAST VERIFY", "LAST DRILL"))
        backups = [[s.source, b.type, b.id, human_duration(b.age_seconds), human_size(b.size),
                    human_size(b.stored_size), human_seconds(b.duration_seconds), str(b.count)]
                   for s in facts for b in s.backups]
        if backups:
            _table(None, ["SOURCE", "TYPE", "NEWEST", "AGE", "SIZE", "STORED", "TOOK", "COUNT"], backups,
                   ids=("NEWEST",), drop=("TOOK", "SIZE"))
        for s in facts:
            if s.running_backup is not None:
                _console().print(f"{s.source}: {_running_line(s.running_backup)}", markup=False)
            for b in s.backups:  # where backups may come from a standby: which server took the newest
                if b.server and (s.standbys or b.server["role"] != "primary" or b.server.get("fallback")):
                    _console().print(f"{s.source}: newest {b.type} backup taken on {_server_line(b.server)}",
                                     markup=False)
            for standby in s.standbys:
                line = _standby_status_line(standby.name, standby.address, standby.probe)
                _console().print(f"{s.source}: standby {line}", markup=False)
            if s.timelines and len(s.timelines["tips"]) > 1:
                _console().print(f"{s.source}: timelines: {s.timelines['reason']}")
            for error in s.errors:
                _console().print(f"{s.source}: {error}")

    def checked(self, sources: list[str], findings: list[Finding]) -> None:
        click.echo(monitor.summary(findings, sources))
        for finding in findings:  # the plugin's long output, after the summary line
            click.echo(f"{monitor.STATE_NAMES[finding.state]}: {finding.source}: {finding.message}")

    def jobs(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no scheduled jobs: add [sources.NAME.schedule] tables to the config")
            return
        _table(None, ["JOB", "LANE", "SCHEDULE", "NEXT RUN", "COMMAND"],
               [[r["id"], r["lane"], r["schedule"], short_time(r["next_run"]), r["command"]] for r in rows],
               ids=("JOB",), fold=("COMMAND",))

    def wal_status(self, source: str, rows: list[dict[str, Any]], streams: list[SourceIdentity]) -> None:
        if len(streams) > 1:
            for identity in streams:
                empty = "" if any(r["epoch"] == identity.epoch for r in rows) else ": nothing archived yet"
                _console().print(f"epoch {identity.epoch}: {identity.describe()}, since {identity.started_at or '-'}, "
                                 f"WAL in {layout.wal_prefix(identity.stream)}{empty}")
        if not rows:
            _console().print(f"no WAL archived for {source}")
            return
        _table(None, ["EPOCH", "TIMELINE", "FIRST", "LAST", "SEGMENTS", "GAPS", "STORED", "NEWEST", "AGE"], [
            [
                str(r["epoch"]), f"{r['timeline']}", r["first"] or "-", r["last"] or "-", str(r["segments"]),
                ", ".join(f"{g['from']}..{g['to']} ({g['missing']})" for g in r["gaps"]) or "none",
                human_size(r["stored_bytes"]), short_time(r["newest_archived_at"]),
                human_duration(r["newest_age_seconds"]),
            ]
            for r in rows
        ], fold=("GAPS",))
        newest = max((r for r in rows if r["newest_archived_at"]), key=lambda r: r["newest_archived_at"], default=None)
        if newest is not None:
            _console().print(f"newest segment {newest['newest_segment']} archived "
                             f"{human_duration(newest['newest_age_seconds'])} ago")
        for r in rows:
            if fork := r.get("fork"):
                epoch = f"epoch {r['epoch']} " if len(streams) > 1 else ""
                _console().print(f"{epoch}{fork['kind']}: timeline {fork['from_timeline']} -> {fork['to_timeline']} at "
                                 f"{fork['lsn']}, history archived {short_time(fork['at'])}"
                                 f"{'; production on timeline ' + str(r['timeline']) if r['production'] else ''}")

    def wal_verified(self, results: list[WalVerifyResult]) -> None:
        out = _console()
        for result in results:
            verdict = "ok" if result.ok else "PROBLEMS"
            epoch = f" epoch {result.epoch}" if len(results) > 1 else ""
            if result.end is None:
                out.print(f"WAL of {result.source}{epoch}: {verdict} ({result.mode}); nothing to check")
            else:
                out.print(f"WAL of {result.source}{epoch}: {verdict} ({result.mode}); {result.start} .. {result.end} "
                          f"from the {result.start_from}, timelines {', '.join(map(str, result.timelines)) or '-'}; "
                          f"{result.checked} objects, {human_size(result.bytes)} read in "
                          f"{human_seconds(result.seconds, 2)}")
            for problem in result.problems:
                out.print(f"  {problem}")

    def wal_checked(self, source: str, result: dict[str, Any]) -> None:
        epoch = f" (history epoch {result['epoch']})" if result["epoch"] > 1 else ""
        click.echo(f"{result['segment']} of {source}{epoch} archived {human_seconds(result['seconds'], 2)} after the "
                   f"switch (at {result['switch_lsn']})")

    def epoch_started(self, result: EpochStart) -> None:
        """What ``wal new-epoch`` did and what to do next."""
        out = _console()
        identity, source = result.epoch, result.source
        if result.action == "registered":
            out.print(f"registered {identity.describe()} as history epoch 1 of source {source} ({result.note})")
            return
        if result.action == "current":
            out.print(f"{identity.describe()} is already the current history epoch of source {source} (epoch "
                      f"{identity.epoch}): {result.note}")
            return
        previous = result.previous
        out.print(f"started history epoch {identity.epoch} of source {source}: {identity.describe()}, "
                  f"{identity.segment_size // 1024**2} MiB WAL segments; its WAL goes to "
                  f"{layout.wal_prefix(identity.stream)}")
        last = result.previous_last_segment
        archived = (f"its last archived segment is {last.name.name} ({last.modified:%Y-%m-%d %H:%M:%S %Z})" if last
                    else "it has no archived WAL")
        out.print(f"epoch {previous.epoch} ({previous.describe()}) keeps its backups and WAL, restorable as before; "
                  f"{archived}")
        out.print("next steps:")
        out.print(f"  1. backupctl wal check {source}     # archives a segment of the upgraded server (and any "
                  "refused so far)")
        out.print(f"  2. backupctl backup {source} --type full     # until then no restore can reach a time after the "
                  "upgrade")
        out.print(f"  3. backupctl pg-settings {source}     # restore_command for standbys of the upgraded server "
                  f"(--epoch {identity.epoch})")

    def timeline_forgotten(self, result: Forgotten) -> None:
        """What ``wal forget-timeline`` removed, or would remove."""
        out = _console()
        verb = "would remove" if result.dry_run else "removed"
        names = ", ".join(map(str, result.timelines))
        descendants = ", ".join(map(str, result.timelines[1:]))
        below = f" (with {descendants}, which branched from it)" if descendants else ""
        out.print(f"{verb} timeline {result.timelines[0]}{below} of {result.source}: {len(result.wal_files)} WAL "
                  f"file(s)" + (f" {result.wal_files[0]}..{result.wal_files[-1]}" if result.wal_files else "")
                  + f", history file(s) {', '.join(result.history_files) or 'none'}, "
                  f"{human_size(result.stored_bytes)}")
        if result.backups:
            out.print(f"{verb} the backups taken on timeline(s) {names}: {', '.join(result.backups)}")
        if result.production is not None:
            out.print(f"production is on timeline {result.production}; restores follow it")

    def drill(self, result: dict[str, Any]) -> None:
        out = _console()
        out.print(f"drill {result['id']} of {result['source']}: {result['status'].upper()} (backup "
                  f"{result['backup_id'] or '-'}, {result['backup_type'] or '-'}), {result['finished_at']} on "
                  f"{result['host']}")
        target = result["target"]
        asked = ("end of archived WAL" if target["kind"] == "end"
                 else f"{target['kind']} {target['value'] or ''}".strip())
        reached = result.get("reached")
        if reached:
            when = f" (last transaction {reached['time']})" if reached.get("time") else ""
            out.print(f"target: {asked}; reached {reached['lsn']}{when} on timeline {reached['timeline']}, "
                      f"{result['wal_segments_replayed']} WAL segments replayed")
        elif result["kind"] == "postgres" and result["backup_type"] in ("full", "incr", None):
            out.print(f"target: {asked}; not reached")
        parts = result["rto_parts"]
        out.print(f"RTO: {human_seconds(result['rto_seconds'])} (plan {human_seconds(parts['plan'])}, download "
                  f"{human_seconds(parts['download'])}, extract {human_seconds(parts['extract'])}, WAL replay "
                  f"{human_seconds(parts['wal_replay'])}); checks {human_seconds(parts['checks'])}")
        if result.get("kept"):
            out.print(f"scratch copy kept (stopped) in {result['kept']}")
        _table(None, ["CHECK", "RESULT", "DETAIL"], [[c["name"], c["status"], c["detail"]] for c in result["checks"]],
               fold=("DETAIL",))

    def drills(self, results: list[dict[str, Any]]) -> None:
        if not results:
            _console().print("no drills")
            return
        # The drill's id says when it ran, and `drill show` has the rest: two ids must fit 80 columns.
        _table(None, ["ID", "SOURCE", "BACKUP", "STATUS", "RTO", "CHECKS", "ERROR"], [
            [r["id"], r["source"], r["backup_id"] or "-", r["status"], human_seconds(r["rto_seconds"]),
             f"{sum(c['status'] == 'passed' for c in r['checks'])}/{len(r['checks'])}", r["error"] or ""]
            for r in results
        ], ids=("ID", "BACKUP"), fold=("ERROR",), drop=("RTO", "SOURCE"))

    def expired(self, rows: list[dict[str, Any]], dry_run: bool) -> None:
        backups = [r for r in rows if r["item"] == "backup"]
        wal = [r for r in rows if r["item"] == "wal"]
        result = [] if dry_run else ["RESULT"]
        if backups:
            _table(None, ["ID", "TYPE", "FINISHED", "ACTION", "RULES", *result], [
                [r["id"], r["type"], short_time(r["finished_at"]), r["action"], "; ".join(r["rules"]),
                 *([] if dry_run else [r["result"]])]
                for r in backups
            ], ids=("ID",), fold=("RULES", "RESULT"))
        if wal:
            _table("WAL", ["TIMELINE", "FIRST", "LAST", "SEGMENTS", "STORED", "ACTION", "WHY", *result], [
                [str(r["timeline"]) if r["stream"] == r["source"] else f"{r['stream']}: {r['timeline']}",
                 r["first"], r["last"], str(r["segments"]), human_size(r["stored_size"]),
                 r["action"], r["rules"][0], *([] if dry_run else [r["result"]])]
                for r in wal
            ], fold=("WHY", "RESULT"))
        gone = [r for r in backups if r["action"] == "remove"]
        gone_wal = [r for r in wal if r["action"] == "remove"]
        verb = "would remove" if dry_run else "removed"
        _console().print(f"{verb} {len(gone)} of {len(backups)} backups "
                         f"({human_size(sum(r['stored_size'] for r in gone))}) and "
                         f"{sum(r['segments'] for r in gone_wal)} WAL segments "
                         f"({human_size(sum(r['stored_size'] for r in gone_wal))})")

    def key_made(self, recipient: str, identity_file: Path) -> None:
        click.echo(recipient)  # alone on its line: scripts take it with $(backupctl keygen --to FILE)

    def deleted(self, outcome: DeleteOutcome) -> None:
        rows, dry_run = outcome.rows(), outcome.dry_run
        result = [] if dry_run else ["RESULT"]
        _table(None, ["ID", "TYPE", "FINISHED", "ACTION", "WHY", "PROTECTED BY", "OTHER RULES", *result], [
            [r["id"], r["type"], r["finished_at"], r["action"], r["why"], "; ".join(r["protected_by"]) or "-",
             "; ".join(rule for rule in r["rules"] if rule not in r["protected_by"]) or "-",
             *([] if dry_run else [r["result"]])]
            for r in rows
        ])
        gone = [r for r in rows if r["action"] == "remove"]
        if not gone:
            _console().print("refused: nothing is removed without --force")
            return
        wal = "; the WAL only they needed goes at the next `backupctl expire`" if outcome.leaves_wal else ""
        _console().print(f"{'would remove' if dry_run else 'removed'} {len(gone)} backup(s) "
                         f"({human_size(sum(r['stored_size'] for r in gone))}){wal}")

    def collected(self, rows: list[dict[str, Any]], dry_run: bool) -> None:
        if not rows:
            _console().print("nothing to collect")
            return
        _table(None, ["ID", "ITEM", "SOURCE", "ACTION", "OBJECTS", "STORED", "WHY", "RESULT"], [
            [r["id"], r["item"], r["source"] or "-", r["action"], str(r["objects"]), human_size(r["stored_size"]),
             r["rules"][0], r["result"]]
            for r in rows
        ], fold=("ID", "WHY", "RESULT"))
        gone = [r for r in rows if r["action"] == "remove"]
        verb = "would remove" if dry_run else "removed"
        _console().print(f"{verb} {sum(r['objects'] for r in gone)} objects "
                         f"({human_size(sum(r['stored_size'] for r in gone))})")


def _details_view(out: Console, backup_type: str, extra: dict[str, Any], details: dict[str, Any]) -> None:
    """What a backup's data holds (``show``), when the identity can open its sealed details."""
    if backup_type in ("full", "incr"):
        out.print(f"PostgreSQL {extra['pg_major']}, timeline {extra['timeline']}, WAL {extra['start_lsn']} "
                  f"({extra['start_wal']}) to {extra['stop_lsn']} ({extra['stop_wal']}), system identifier "
                  f"{extra['system_identifier']}")
        _table("databases", ["DATABASE", "SIZE"],
               [[name, human_size(size)] for name, size in sorted(details["databases"].items())])
    if backup_type == "logical":
        out.print(f"server {details['server_version']}, dumped with pg_dump {details['pg_dump_version']}")
        _table("databases", ["DATABASE", "SIZE", "ENCODING", "LOCALE", "TABLES", "ROWS"], [
            [name, human_size(d["size"]), d["encoding"], d["locale"] or d["collate"], str(len(d["tables"])),
             str(sum(d["tables"].values()))]
            for name, d in sorted(details["databases"].items())
        ])
    if "tables" in details:
        _table("tables", ["TABLE", "ROWS"], [[n, str(c)] for n, c in sorted(details["tables"].items())])
    if "page_size" in details:
        out.print(
            f"pages: {details['page_count']} x {details['page_size']} B, journal_mode "
            f"{details['journal_mode']}, schema sha256 {details['schema_sha256'][:16]}"
        )


def _plan_view(plan: dict[str, Any]) -> None:
    """A restore plan, as a DBA reads it before anything is downloaded."""
    out = _console()
    target = plan["target"]
    out.print(f"source:       {plan['source']}")
    out.print(f"backup:       {plan['backup']} ({plan['backup_type']}, finished {plan['backup_finished_at']}, "
              f"WAL {plan['backup_start_lsn']} to {plan['backup_stop_lsn']})")
    out.print(f"target:       {target['kind']}{' ' + str(target['value']) if target['value'] else ''}, "
              f"action {target['action']}")
    path = " -> ".join(f"{p['timeline']}" + (f" (until {p['until']})" if p["until"] else "")
                       for p in plan["timeline_path"])
    out.print(f"timeline:     {plan['timeline']} (path {path})")
    out.print(f"WAL:          {plan['wal_segments']} segments, {plan['wal_first']} to {plan['wal_last']}")
    out.print(f"download:     {human_size(plan['download_bytes'])}")
    if plan.get("archiving"):
        out.print(f"archiving:    {plan['archiving']['state']} ({plan['archiving']['reason']})")
    for note in plan["notes"]:
        out.print(f"note:         {note}")


def _replica_line(standby: dict[str, Any], streaming: dict[str, Any] | None) -> str:
    """`restore --standby`: what the replica follows, and with --start what it reached."""
    timeline = f"recovery_target_timeline = '{standby['recovery_target_timeline']}'"
    if standby["mode"] == "archive-only":
        return f"standby:      archive-only standby (restore_command from the repository, {timeline})"
    slot = f" through slot {standby['slot']}" if standby["slot"] else " (no slot)"
    if streaming:
        return (f"standby:      streaming from {streaming['sender']}{slot} on timeline {streaming['timeline']}, "
                f"flushed up to {streaming['flushed_lsn']} ({streaming['seconds']}s after the archive was replayed)")
    return f"standby:      streaming from {standby['primary']}{slot} once started ({timeline})"


def _running_line(running: RunningBackup) -> str:
    """A running backup as `status` shows it: what, where, since when, and how far at its last lease renewal."""
    what = f"backup {running.backup_id}" if running.backup_id else running.operation
    line = (f"{what} running on {running.host} (pid {running.pid}) since {running.started_at} "
            f"({human_duration(running.running_seconds)})")
    if running.bytes_done is not None:
        line += f", {human_size(running.bytes_done)} read"
        if running.bytes_total:
            line += f" of about {human_size(running.bytes_total)}"
    return line


def _wal_cell(status: SourceStatus) -> str:
    wal, server = status.wal, status.server or {}
    if status.kind != "postgres":
        return "-"
    parts = [f"newest {human_duration(wal.age_seconds)} ago, {wal.gaps} gaps" if wal else "none archived"]
    if server.get("reachable"):
        parts.append(f"{server['failed_count']} failures" + (" (FAILING)" if server["failing"] else ""))
    if server.get("ready") is not None:
        parts.append(f"{server['ready']} ready")
    if server and not server.get("reachable"):
        parts.append("server unreachable")
    return ", ".join(parts)


def _window_cell(window: Window | None) -> str:
    if not window:
        return "-"
    if window.earliest is None:
        return f"NONE: {window.problem}"
    kind = "PITR" if window.kind == "pitr" else f"{window.points} backups"
    on = f" on timeline {window.timeline}" if window.timeline else ""
    return f"{kind} {short_time(window.earliest)} .. {short_time(window.latest)} ({human_duration(window.seconds)}){on}"


def _record_cell(record: VerifySummary | DrillSummary | None) -> str:
    if not record:
        return "never"
    return f"{record.status}, {human_duration(record.age_seconds)} ago"


def _drill_cell(record: DrillSummary | None) -> str:
    if not record:
        return "never"
    rto = f", RTO {human_duration(record.rto_seconds)}" if record.rto_seconds is not None else ""
    return _record_cell(record) + rto
