"""A replica built from the repository: ``restore SOURCE --pgdata DIR --standby [--primary-conninfo C [--slot S]]``.

Why: ``pg_basebackup`` reads the whole cluster from the primary (its disks, its network, a walsender for the
duration); the repository already holds a proven copy of the files and every WAL segment since. A replica
restored from there costs the primary nothing but the streaming connection at the end.

What a standby restore writes, besides what every physical restore writes (``restore_physical``):
``standby.signal``; ``restore_command`` (wal-fetch with prefetch, as restores use); ``recovery_target_timeline``
as ``Plan.timeline_setting`` says for a standby ('latest', so it follows production through its next
failover); ``primary_conninfo``, always, '' for an archive-only standby, so that a primary_conninfo the backup
carried (a backup taken from a standby, or an ALTER SYSTEM) never makes it stream from somewhere nobody asked;
and with a conninfo also ``primary_slot_name`` ('' without ``--slot``, for the same reason). No recovery target:
a target ends recovery, a standby has none.

Success of ``--start`` is the outcome: with a conninfo, the WAL receiver reports ``streaming`` in
``pg_stat_wal_receiver`` (the primary accepted it, through the slot when one is named); archive-only, replay
reached the end of the archive (``restore_start`` waits until it is inside the newest archived segment,
``wait_archive_end`` until that segment is replayed). A standby that does not stream in time is still a valid
standby replaying the archive, so it is left running, and the error says so and quotes the WAL receiver.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.services.pitr import Plan, Target
from backupctl.services.restore_start import read_from, server_conninfo
from backupctl.wal.names import parse_lsn, parse_wal_name

STREAM_WAIT_SECONDS = 120.0  # after the archive is replayed: how long the WAL receiver has to start streaming
_SETTLED = 2.0  # seconds without replay progress inside the newest archived segment: its end is reached
_SLOT_RE = re.compile(r"[a-z0-9_]{1,63}")  # PostgreSQL's rule for replication slot names (NAMEDATALEN - 1)
_TARGET_OPTIONS = {"time": "--target-time", "lsn": "--target-lsn", "xid": "--target-xid", "name": "--target-name",
                   "immediate": "--target immediate"}
# The WAL receiver's complaints, as the standby's log has them (PostgreSQL 15 to 18).
_RECEIVER_RE = re.compile(r"\b((?:FATAL|ERROR):\s+(?:could not (?:start WAL streaming|connect to the primary server|"
                          r"receive data from WAL stream)|database system identifier differs|highest timeline)"
                          r".*)")
# What no retry cures: waiting the full time for these would only hide the answer.
_PERMANENT = ("does not exist", "password authentication failed", "no pg_hba.conf entry", "identifier differs",
              "not permitted to log in", "permission denied to start WAL sender", "must be superuser or replication")


class NotStreaming(BackupctlError):
    """The standby started and replayed the archive but does not stream from the primary (it is left running)."""


@dataclass(frozen=True)
class StandbyRequest:
    """What ``--standby`` was given, checked: the primary to stream from (None: archive-only) and its slot."""

    primary_conninfo: str | None = None
    slot: str | None = None

    @property
    def streaming(self) -> bool:
        return self.primary_conninfo is not None

    def settings(self) -> dict[str, str]:
        """The standby's own lines of postgresql.auto.conf (restore_command and the timeline come from the plan)."""
        if self.primary_conninfo is None:
            return {"primary_conninfo": ""}
        return {"primary_conninfo": self.primary_conninfo, "primary_slot_name": self.slot or ""}

    def primary(self) -> str | None:
        """HOST:PORT of the primary as libpq will read the conninfo (its defaults when a part is absent)."""
        if self.primary_conninfo is None:
            return None
        parts = _parse(self.primary_conninfo)
        host = parts.get("host") or parts.get("hostaddr") or "local socket"
        return f"{host}:{parts.get('port') or 5432}"

    def to_json(self, recovery_target_timeline: str) -> dict[str, Any]:
        """The ``standby`` object of `restore --standby -o json`; a password in the conninfo is never shown."""
        shown = self.primary_conninfo
        if shown is not None and "password" in _parse(shown):
            from psycopg.conninfo import make_conninfo  # with psycopg, already imported by _parse

            shown = make_conninfo("", **{**_parse(shown), "password": "********"})
        return {"mode": "streaming" if self.streaming else "archive-only", "primary": self.primary(),
                "primary_conninfo": shown, "slot": self.slot,
                "recovery_target_timeline": recovery_target_timeline}


def _parse(conninfo: str) -> dict[str, Any]:
    """libpq's own reading of a connection string (keyword/value or URI), or a usage error naming the problem."""
    import psycopg  # ~120 ms: only a standby restore with a conninfo pays for it
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigError("--primary-conninfo is not a connection string libpq accepts: "
                          f"{' '.join(str(exc).split())}") from exc


def check_request(standby: bool, primary_conninfo: str | None, slot: str | None,
                  target: Target) -> StandbyRequest | None:
    """The standby options checked together, before anything is planned or downloaded; None without --standby."""
    if not standby:
        if primary_conninfo is not None or slot is not None:
            raise ConfigError("--primary-conninfo and --slot are for a replica: add --standby")
        return None
    if target.kind != "end":
        raise ConfigError(f"--standby takes no recovery target ({_TARGET_OPTIONS[target.kind]}): a standby follows "
                          "the primary; restore to a target without --standby")
    if target.action is not None or not target.inclusive:
        raise ConfigError("--standby takes no --target-action or --exclusive: a standby has no recovery target")
    if slot is not None and primary_conninfo is None:
        raise ConfigError("--slot needs --primary-conninfo: a replication slot is used when streaming from a "
                          "primary")
    if primary_conninfo is not None:
        if not primary_conninfo.strip():
            raise ConfigError("--primary-conninfo is empty: leave it out for an archive-only standby")
        _parse(primary_conninfo)
    if slot is not None and not _SLOT_RE.fullmatch(slot):
        raise ConfigError(f"--slot {slot!r} is not a replication slot name: lower-case letters, digits and "
                          "underscores, at most 63")
    return StandbyRequest(primary_conninfo, slot)


def receiver_error(log_text: str) -> str | None:
    """The WAL receiver's newest complaint in a stretch of the server's log, as one line."""
    found = _RECEIVER_RE.findall(log_text)
    return " ".join(found[-1].split()) if found else None


def settle(pgdata: Path, user: str | None, recovery: dict[str, Any], plan: Plan,
           request: StandbyRequest) -> dict[str, Any]:
    """After ``restore_start.start_and_wait`` saw the standby replay into the newest archived segment: with a
    conninfo, wait until it streams (``recovery["streaming"]``); archive-only, until it replayed that segment
    to its end (``recovery["lsn"]``). ``recovery`` is returned, completed."""
    conninfo = server_conninfo(pgdata, user)
    if conninfo is None:
        raise BackupctlError(f"the standby on {pgdata} has no postmaster.pid any more: see {recovery['log']}")
    if request.streaming:
        recovery["streaming"] = wait_streaming(conninfo, Path(recovery["log"]), request, pgdata)
    else:
        recovery["lsn"] = wait_archive_end(conninfo, plan)
    return recovery


def wait_archive_end(conninfo: dict[str, Any], plan: Plan, timeout: float = STREAM_WAIT_SECONDS) -> str:
    """The replay LSN once the standby replayed the newest archived segment, already restored when this is
    called: its end (a segment closed by a switch replays up to there), or where replay stopped for
    ``_SETTLED`` seconds (its last record goes on in a segment not archived yet)."""
    import psycopg  # loaded already by restore_start's polling

    size = int(plan.backup.extra["wal_segment_size"])
    end = parse_wal_name(plan.wal_last).start_lsn(size) + size
    lsn, since, deadline = "", time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.OperationalError), \
                psycopg.connect(**conninfo, autocommit=True, connect_timeout=5) as conn:
            now = str(conn.execute("SELECT pg_last_wal_replay_lsn()").fetchone()[0])
            if parse_lsn(now) >= end:
                return now
            if now != lsn:
                lsn, since = now, time.monotonic()
        if lsn and time.monotonic() - since >= _SETTLED:
            break
        time.sleep(0.2)
    return lsn


def wait_streaming(conninfo: dict[str, Any], log_file: Path, request: StandbyRequest, pgdata: Path,
                   timeout: float = STREAM_WAIT_SECONDS) -> dict[str, Any]:
    """Until the started standby (``conninfo`` reaches it) streams from its primary; what it reached.

    The WAL receiver retries every wal_retrieve_retry_interval (5 s), so a complaint that no retry cures (a
    missing slot, a refused login, another system) shows in the log written from now on and ends the wait
    at once; anything else is waited out until ``timeout``, and then quoted.
    """
    import psycopg  # a standby restore with --start: psycopg is loaded already by restore_start

    offset = log_file.stat().st_size if log_file.exists() else 0
    clock = time.monotonic()
    complaint = None
    while True:
        row = None
        try:
            with psycopg.connect(**conninfo, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT status, sender_host, sender_port, slot_name, flushed_lsn::text, "
                                   "received_tli FROM pg_stat_wal_receiver").fetchone()
        except psycopg.OperationalError:
            pass
        if row is not None and row[0] == "streaming":
            return {"state": "streaming", "sender": f"{row[1]}:{row[2]}", "slot": row[3], "flushed_lsn": row[4],
                    "timeline": row[5], "seconds": round(time.monotonic() - clock, 3)}
        complaint = receiver_error(read_from(log_file, offset)) or complaint
        waited = time.monotonic() - clock
        if (complaint and any(sign in complaint for sign in _PERMANENT)) or waited > timeout:
            said = f": PostgreSQL said {complaint}" if complaint else f" within {timeout:.0f}s"
            raise NotStreaming(f"the standby does not stream from {request.primary()}{said}; it is left running "
                               f"on port {conninfo['port']}, replaying the archive and retrying (see {log_file}): "
                               f"fix the cause and it streams by itself, or stop it: pg_ctl stop -D {pgdata}")
        time.sleep(0.5)

