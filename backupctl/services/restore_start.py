"""`restore --start`: start the restored server and report only what really happened.

Neither "the postmaster exited" nor "it accepts connections" is success. Recovery succeeded when the
server reached the plan's end (the target; for a restore to the end of archived WAL, the newest archived
segment) and is in the state asked for: promoted, paused at the target, or shut down at the target
(pg_controldata says "shut down in recovery" and the postmaster logged "shutdown at recovery target").
Anything else is a failure that quotes PostgreSQL's own FATAL line; the server is stopped, so the
directory stays a data directory that the same restore with ``--delta`` can redo.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.cluster import free_port
from backupctl.postgres.tools import run_tool
from backupctl.services import pitr, restore_physical
from backupctl.wal.names import parse_lsn

_SEVERE_RE = re.compile(r"\b(?:FATAL|PANIC):\s+(.*)")
# What PostgreSQL tells clients (our own polling among them) while it starts, recovers or stops: never the
# reason recovery failed.
_CLIENT_FATALS = ("the database system is starting up", "the database system is not yet accepting connections",
                  "the database system is shutting down", "the database system is in recovery mode",
                  "the database system is not accepting connections",
                  "terminating connection due to administrator command")
# A stopped server answers no query: its last replayed commit is what the log says, when it says it (as DETAIL
# of a restartpoint, or the commit recovery stopped after).
_LAST_COMMIT_RE = re.compile(r"(?:last completed transaction was at log time|recovery stopping after commit of "
                             r"transaction \d+, time) (.+?)\.?$", re.MULTILINE | re.IGNORECASE)


class RecoveryFailed(BackupctlError):
    """The restored server did not reach the plan's end in the state asked for (it has been stopped)."""


def _as_server_user(argv: list[str]) -> list[str]:
    """PostgreSQL's server programs refuse root: run them as postgres then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def control_data(binaries: PgBinaries, pgdata: Path) -> dict[str, str]:
    """pg_controldata of a stopped data directory, label to value."""
    output = run_tool([binaries.path("pg_controldata"), str(pgdata)], {**os.environ, "LC_ALL": "C"},
                      f"pg_controldata {pgdata}")
    values = {}
    for line in output.splitlines():
        label, _, value = line.partition(":")
        values[label.strip()] = value.strip()
    return values


def port_in_use(port: int) -> bool:
    """Something listens on ``port`` (any address, IPv4 or IPv6): a server started there would fail."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the postmaster does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def check_port(port: int | None) -> None:
    """An explicit ``--port`` that is taken is refused before anything is downloaded: the user chose it."""
    if port is not None and port_in_use(port):
        raise ConfigError(f"--port {port} is in use: pick a free port for the restored server (or leave --port out "
                          "and a free one is chosen when the configured port is taken)")


def _choose_port(binaries: PgBinaries, pgdata: Path, asked: int | None) -> tuple[int, str | None]:
    """``--port``, else the restored configuration's port; when that is taken (production's own, on the same
    host), a free one, with a note: a restored copy must never fail, or worse answer, on production's port."""
    if asked is not None:
        return asked, None
    text = run_tool(_as_server_user([binaries.path("postgres"), "-C", "port", "-D", str(pgdata)]),
                    {**os.environ, "LC_ALL": "C"}, "reading the restored server's port")
    configured = int(text.strip())
    if not port_in_use(configured):
        return configured, None
    free = free_port()
    return free, f"port {configured} of the restored configuration is in use: the server was started on {free}"


@dataclass
class _Seen:
    """The restored server's state as observed: promoted, paused, standby (following the archive) or stopped."""

    state: str
    lsn: str | None = None
    last_commit: datetime | None = None
    promoted_timeline: int | None = None
    host: str | None = None


def server_conninfo(pgdata: Path, user: str | None) -> dict[str, Any] | None:
    """How to reach the server running on ``pgdata`` (from its postmaster.pid); None before it wrote one."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        conninfo: dict[str, Any] = {"host": lines[4] or "127.0.0.1", "port": int(lines[3]), "dbname": "postgres"}
    except (OSError, IndexError, ValueError):
        return None  # not written yet
    if user:
        conninfo["user"] = user
    return conninfo


def _observe(pgdata: Path, plan: pitr.Plan, standby: bool, user: str | None) -> _Seen | None:
    """The server's state once it is final for our purpose; None while recovery is still on its way."""
    import psycopg  # ~120 ms: a restore without --start (or a dry run) imports this module, never connects

    if restore_physical.live_postmaster(pgdata) is None:
        return _Seen("stopped")
    conninfo = server_conninfo(pgdata, user)
    if conninfo is None:
        return None
    try:
        with psycopg.connect(**conninfo, autocommit=True, connect_timeout=5) as conn:
            in_recovery, lsn, at = conn.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
            ).fetchone()
            if not in_recovery:
                walfile = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
                return _Seen("promoted", lsn, at, int(walfile[:8], 16), conninfo["host"])
            if conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused":
                return _Seen("paused", lsn, at, host=conninfo["host"])
            if standby and plan.target.kind == "end" and lsn and restore_physical.short_of_end(plan, lsn) is None:
                return _Seen("standby", lsn, at, host=conninfo["host"])
    except psycopg.OperationalError:
        pass
    return None


def _expected(plan: pitr.Plan, standby: bool) -> str:
    if plan.target.kind == "end":
        return "standby" if standby else "promoted"  # no target: PostgreSQL promotes at the end of the WAL
    return {"promote": "promoted", "shutdown": "stopped"}.get(plan.target.action or "pause", "paused")


def _fatal_line(log_text: str) -> str | None:
    """PostgreSQL's first FATAL or PANIC about recovery itself (not one sent to a connecting client)."""
    for match in _SEVERE_RE.finditer(log_text):
        if not match.group(1).strip().startswith(_CLIENT_FATALS):
            return " ".join(match.group(0).split())
    return None


def read_from(path: Path, offset: int) -> str:
    """The text of ``path`` from ``offset`` on (a log written by this run of the server); empty when absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return ""


def _stop(binaries: PgBinaries, pgdata: Path) -> None:
    """Stop a server that did not do what was asked: a retry needs the directory without a postmaster."""
    for mode in ("fast", "immediate"):
        if restore_physical.live_postmaster(pgdata) is None:
            return
        try:
            run_tool(_as_server_user([binaries.path("pg_ctl"), "stop", "--pgdata", str(pgdata), "-m", mode, "--wait"]),
                     dict(os.environ), "stopping the restored server")
        except BackupctlError:
            continue


def timeline_at(plan: pitr.Plan, lsn: str) -> int:
    """The timeline of the plan's path that holds ``lsn``: where recovery was when it ended."""
    position = parse_lsn(lsn)
    for timeline, _begin, switch in plan.path:
        if switch is None or position <= switch:
            return timeline
    return plan.timeline


def start_and_wait(pgdata: Path, plan: pitr.Plan, bindir: str | None, user: str | None, port: int | None,
                   standby: bool = False, timeout: float = 3600) -> dict[str, Any]:
    """`restore --start`: start the restored server, wait for recovery's outcome, and report it when it is
    the one asked for; otherwise stop the server and raise ``RecoveryFailed`` quoting PostgreSQL."""
    binaries = restore_physical.server_binaries(plan.backup.extra["pg_major"], bindir, "pg_ctl")
    chosen, note = _choose_port(binaries, pgdata, port)
    log_file = pgdata.parent / f"{pgdata.name}.recovery.log"
    offset = log_file.stat().st_size if log_file.exists() else 0
    # The logging collector would take the server's messages (the FATAL that says why recovery failed) away
    # from the log file read here: off for this run of the server (a restart brings the configured one back).
    argv = _as_server_user([binaries.path("pg_ctl"), "start", "--pgdata", str(pgdata), "--log", str(log_file),
                            "--wait", f"--timeout={int(timeout)}", "-o", f"-p {chosen} -c logging_collector=off"])
    clock = time.monotonic()
    started = ""
    try:  # pg_ctl's exit is no verdict (a server that shuts down at its target makes it fail): the state is
        run_tool(argv, dict(os.environ), "pg_ctl start")
    except BackupctlError as exc:
        started = str(exc)
    seen = _observe(pgdata, plan, standby, user)
    while seen is None:
        if time.monotonic() - clock > timeout:
            _stop(binaries, pgdata)
            raise RecoveryFailed(f"recovery did not reach its target within {timeout:.0f}s; the server was stopped "
                                 f"(see {log_file})")
        time.sleep(0.5)
        seen = _observe(pgdata, plan, standby, user)
    log_text = read_from(log_file, offset)
    fatal = _fatal_line(log_text)

    def fail(problem: str) -> RecoveryFailed:
        _stop(binaries, pgdata)
        return RecoveryFailed(f"{problem} (see {log_file}); the server is stopped and {pgdata} stays a data "
                              "directory")

    expected = _expected(plan, standby)
    if seen.state == "stopped":
        if fatal:
            raise fail(f"recovery failed: PostgreSQL said {fatal}")
        control = control_data(binaries, pgdata)
        cluster_state = control.get("Database cluster state", "unknown")
        # Asked to pause with hot_standby off, PostgreSQL shuts down at the target instead.
        if expected not in ("stopped", "paused") or cluster_state != "shut down in recovery" \
                or "shutdown at recovery target" not in log_text:
            raise fail(f"the restored server stopped before reaching the target (pg_controldata: {cluster_state})"
                       + (f"; {started}" if started else ""))
        reached = max((control.get(label, "0/0") for label in ("Minimum recovery ending location",
                                                                "Latest checkpoint location")), key=parse_lsn)
        commits = _LAST_COMMIT_RE.findall(log_text)
        seen = _Seen("shut down at the target", reached, None)
        last_commit = commits[-1].strip() if commits else None
    else:
        if seen.state != expected:
            raise fail(f"the restored server is {seen.state}, not {expected} as asked"
                       + (f"; PostgreSQL said {fatal}" if fatal else ""))
        last_commit = seen.last_commit.isoformat() if seen.last_commit else None
    problem = None
    if seen.lsn is None:
        problem = "recovery replayed no WAL"
    elif plan.target.kind == "end":
        problem = restore_physical.short_of_end(plan, seen.lsn)
    elif plan.target.kind == "lsn" and plan.target.inclusive and seen.state != "shut down at the target" \
            and parse_lsn(seen.lsn) < parse_lsn(str(plan.target.value)):
        problem = f"recovery ended at {seen.lsn}, before the target LSN {plan.target.value}"
    if problem:
        raise fail(problem)
    result: dict[str, Any] = {
        "state": {"promoted": "promoted", "paused": "paused at the target",
                  "standby": "running as a standby"}.get(seen.state, seen.state),
        "port": chosen, "lsn": seen.lsn, "timeline": timeline_at(plan, seen.lsn or "0/0"),
        "last_replayed_commit": last_commit, "start_seconds": round(time.monotonic() - clock, 3),
        "log": str(log_file), "notes": [note] if note else [],
    }
    if seen.promoted_timeline is not None:
        result["promoted_timeline"] = seen.promoted_timeline
    if seen.host is not None:
        result["psql"] = shlex.join(["psql", "-h", seen.host, "-p", str(chosen), *(["-U", user] if user else []),
                                     "-d", "postgres"])
    return result
