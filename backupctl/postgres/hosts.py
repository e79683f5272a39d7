"""Which server a physical backup is taken on: the source's primary or one of its standbys.

A source's own connection settings are its primary; ``[sources.NAME.standbys.HOSTNAME]`` tables name
standbys, each key left out being the source's. ``backup_from`` picks among them:

- ``primary``: the primary, always (nothing is probed: the backup's own connection reports a failure);
- ``standby``: the first standby, in config order, that answers and is in recovery; none: one line that
  names every standby tried and why it was passed over, and no backup is started;
- ``prefer-standby``: the first standby that answers, is in recovery and streams from its upstream (a
  standby replaying from the archive alone may be hours behind), else the primary, with the reason
  recorded in the manifest (``extra.server.fallback``) so that the operator sees it in ``list``/``show``.

``choose`` is pure given a ``probe`` function, so its rules are unit-tested without servers; ``probe_server``
is the real probe, also used by ``status`` for each standby's facts (up, in recovery, lag, replay delay).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from backupctl.core.config import PostgresSource
from backupctl.core.errors import BackupctlError
from backupctl.postgres.connection import ConnParams

PRIMARY = "primary"  # the name the primary has in manifests (standbys have their table's name)


@dataclass(frozen=True)
class Host:
    """One server of a source: its name, its role, how to reach it, and its data directory when local."""

    name: str
    role: Literal["primary", "standby"]
    params: ConnParams
    pgdata: str | None = None
    fallback: str | None = None  # prefer-standby took the primary: why no standby was taken

    def to_json(self) -> dict[str, Any]:
        """The manifest's ``extra.server``."""
        record: dict[str, Any] = {"name": self.name, "role": self.role, "address": self.params.address()}
        if self.fallback:
            record["fallback"] = self.fallback
        return record


@dataclass(frozen=True)
class Probe:
    """What one connection attempt learnt about a server (``error`` set when it did not answer)."""

    up: bool
    in_recovery: bool = False
    streaming: bool = False
    lag_bytes: int | None = None  # received but not yet replayed (a standby), from its own LSNs
    replay_delay: float | None = None  # seconds since the last replayed transaction's commit (0 when caught up)
    archiver: dict[str, Any] | None = None  # its own pg_stat_archiver, when it archives (archive_mode = always)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"up": self.up, "in_recovery": self.in_recovery, "streaming": self.streaming,
                "lag_bytes": self.lag_bytes, "replay_delay_seconds": self.replay_delay, "archiver": self.archiver,
                "error": self.error}


def primary(source: PostgresSource) -> Host:
    return Host(PRIMARY, "primary", ConnParams.from_source(source), source.pgdata)


def standbys(source: PostgresSource) -> list[Host]:
    """The source's standbys in config order; a key a standby leaves out is the source's."""
    base = ConnParams.from_source(source)
    return [Host(name, "standby", base.with_(host=s.host, port=s.port, user=s.user, dbname=s.dbname), s.pgdata)
            for name, s in source.standbys.items()]


# Replay delay: zero when the standby has replayed all it received (an idle primary writes no commits, and
# the last commit's age would grow forever); else the age of the last replayed commit.
_PROBE_SQL = """
SELECT pg_is_in_recovery(),
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'),
       pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) END,
       current_setting('archive_mode'), a.archived_count, a.last_archived_wal, a.last_archived_time,
       a.failed_count, a.last_failed_wal, a.last_failed_time
FROM pg_stat_archiver a
"""


def _archiver(row: tuple[Any, ...]) -> dict[str, Any]:
    """A standby's own archiving (archive_mode = always): counts, the newest success and failure, and whether
    it is failing now (its newest failure is newer than its newest success)."""
    archived, last_wal, last_time, failed, failed_wal, failed_time = row
    return {"archived_count": archived, "last_archived_wal": last_wal,
            "last_archived_time": last_time.isoformat() if last_time else None, "failed_count": failed,
            "last_failed_wal": failed_wal, "last_failed_time": failed_time.isoformat() if failed_time else None,
            "failing": bool(failed_time and (last_time is None or failed_time > last_time))}


def probe_server(params: ConnParams) -> Probe:
    """Connect once and read the server's recovery state; a server that does not answer is ``up=False``."""
    try:
        conn = params.connect()
    except BackupctlError as exc:
        return Probe(up=False, error=str(exc))
    try:
        with conn:
            in_recovery, streaming, lag, delay, archive_mode, *archiver = conn.execute(_PROBE_SQL).fetchone()
    except Exception as exc:  # psycopg's errors: it answered, but refused the query
        return Probe(up=True, error=" ".join(str(exc).split()))
    if not in_recovery:
        return Probe(up=True)
    return Probe(up=True, in_recovery=True, streaming=bool(streaming), lag_bytes=None if lag is None else int(lag),
                 replay_delay=None if delay is None else round(float(delay), 3),
                 archiver=_archiver(tuple(archiver)) if archive_mode == "always" else None)


def _why_not(probe: Probe, want_streaming: bool) -> str | None:
    """Why a standby cannot be backed up from (None: it can)."""
    if not probe.up:
        return "down"
    if not probe.in_recovery:
        return "not in recovery (promoted?)"
    if want_streaming and not probe.streaming:
        return "not streaming"
    return None


def choose(mode: str, primary_host: Host, standby_hosts: Sequence[Host],
           probe: Callable[[ConnParams], Probe], source: str = "") -> Host:
    """The server a backup is taken on, by ``backup_from`` (see the module docstring)."""
    if mode == "primary":
        return primary_host
    passed: list[str] = []
    for host in standby_hosts:
        why = _why_not(probe(host.params), want_streaming=mode == "prefer-standby")
        if why is None:
            return host
        passed.append(f"{host.name} ({host.params.address()}) {why}")
    if mode == "standby":
        tried = "; ".join(passed) or "none configured"
        raise BackupctlError(f"backup_from = standby on source {source}, but no standby is up and in recovery: "
                             f"{tried}")
    return Host(primary_host.name, primary_host.role, primary_host.params, primary_host.pgdata,
                fallback="no standby up and streaming: " + ("; ".join(passed) or "none configured"))


def backup_host(source: PostgresSource) -> Host:
    """The server a physical backup of ``source`` is taken on now."""
    return choose(source.backup_from, primary(source), standbys(source), probe_server, source.name)
