"""History epochs: one source keeps its whole history across pg_upgrade.

pg_upgrade (or a dump into a fresh cluster) gives the server a new system identifier and usually a new
major: its WAL continues nothing in the archive, and its timelines and LSNs are its own. Rather than a
new source name (which splits the catalog, the retention policy and the monitoring in two), a source has
one *stream* of WAL per system, its history epochs, and one catalog of backups::

    <source>/source.json               epoch 1: the first system (its first backup or push registers it)
    <source>/wal/...                   epoch 1's WAL (the layout from before epochs existed)
    <source>/epochs/<N>/source.json    epoch N >= 2: system identifier, major, WAL segment size, when it
                                       started and the identity of the epoch before (written once)
    <source>/epochs/<N>/wal/...        epoch N's WAL
    <source>/backups/<id>/...          backups of every epoch; each manifest's system identifier says which

A stream is the string the WAL functions take for keys (``SourceIdentity.stream``, ``layout.epoch_stream``):
the source name for epoch 1, ``<source>/epochs/<N>`` after it. ``wal new-epoch SOURCE`` starts the next
epoch for the configured (upgraded) server with a conditional write, so two hosts racing to start it
cannot both win. wal-push puts each segment in the stream of the system its header names; restores
replay the stream of the backup they start from (restore_command gets ``--epoch N``); retention and
status walk every epoch with ``streams.list_streams``.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backupctl import __version__
from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.log import get_logger
from backupctl.postgres.connection import ConnParams
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest, iso
from backupctl.repo.repository import SourceMismatch
from backupctl.wal.identity import foreign_system
from backupctl.wal.listing import ArchivedWal, list_wal_objects
from backupctl.wal.names import is_valid_segment_size
from backupctl.wal.streams import SourceIdentity, list_streams, read_identity

if TYPE_CHECKING:
    from backupctl.core.config import PostgresSource
    from backupctl.repo.repository import Repository

log = get_logger(__name__)


def group_backups(source: str, streams: list[SourceIdentity],
                  manifests: list[Manifest]) -> list[tuple[SourceIdentity, list[Manifest]]]:
    """Each epoch (oldest first) with its backups, matched by the system identifier in their manifests.

    A backup whose system is no epoch (only possible when nothing is registered, or source.json was
    removed by hand) counts as epoch 1's, as before epochs existed.
    """
    groups = streams or [SourceIdentity("", 0, None, 1, source)]
    by_system = {e.system_identifier: e.epoch for e in groups}
    members: dict[int, list[Manifest]] = {e.epoch: [] for e in groups}
    for manifest in manifests:
        members[by_system.get(str(manifest.extra.get("system_identifier")), 1)].append(manifest)
    return [(e, members[e.epoch]) for e in groups]


def register_system(repo: Repository, source: str, system_identifier: str, major: int,
                    segment_size: int | None = None) -> SourceIdentity:
    """What a backup calls before it stores anything: the epoch of the server it backs up.

    The first backup (or push) of a source registers epoch 1; a server of any epoch is accepted (after a
    rolled-back upgrade the old one is backed up again); any other system is refused with the command
    that starts a new epoch. ``segment_size`` is recorded with a first registration when known.
    """
    try:
        doc = repo.register_source(source, {"kind": "postgres", "system_identifier": system_identifier,
                                            "major": major},
                                   recorded={"wal_segment_size": segment_size} if segment_size else None)
        return SourceIdentity(system_identifier, major, doc.get("wal_segment_size"), 1, source,
                              doc.get("registered_at"))
    except SourceMismatch as exc:
        if exc.field != "system_identifier":
            raise
    streams = list_streams(repo, source)
    known = next((e for e in streams if e.system_identifier == system_identifier), None)
    if known is None:
        raise foreign_system(repo, source, f"the server of source {source}", system_identifier, major,
                                 streams[-1] if streams else None)
    if known.major != major:
        raise BackupctlError(f"the server of source {source} is PostgreSQL {major}, but its system "
                             f"{system_identifier} is recorded as PostgreSQL {known.major}: check the config")
    return known


# --- wal new-epoch ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSystem:
    """What identifies a PostgreSQL cluster's WAL: system identifier, major version, WAL segment size."""

    system_identifier: str
    major: int
    segment_size: int

    def describe(self) -> str:
        return (f"PostgreSQL {self.major} system {self.system_identifier} "
                f"({self.segment_size // 1024**2} MiB WAL segments)")

    @classmethod
    def from_options(cls, system_identifier: str, major: int, segment_size: int) -> ServerSystem:
        """The values given by hand (``pg_controldata`` prints them), checked: they are written once."""
        if not system_identifier.isdigit() or not 0 < int(system_identifier) < 2**64:
            raise ConfigError(f"--system-identifier {system_identifier!r} is not a system identifier (the "
                              "'Database system identifier' line of pg_controldata, a number)")
        if not 9 < major < 100:
            raise ConfigError(f"--major {major} is not a PostgreSQL major version (10 or later)")
        if not is_valid_segment_size(segment_size):
            raise ConfigError(f"--segment-size {segment_size} is not a WAL segment size (a power of two from 1 MiB "
                              "to 1 GiB: the 'Bytes per WAL segment' line of pg_controldata)")
        return cls(str(int(system_identifier)), major, segment_size)


def server_system(source: PostgresSource) -> ServerSystem:
    """The configured server's system, asked over SQL (``query_system``)."""
    try:
        with ConnParams.from_source(source).connect() as conn:
            return query_system(conn)
    except BackupctlError as exc:
        raise BackupctlError(f"{exc}; to start the epoch without the server, give --system-identifier, --major "
                             "and --segment-size (`pg_controldata DATADIR` shows them)") from exc


def query_system(conn: Any) -> ServerSystem:
    """The system of the server on ``conn``: pg_control_system(), server_version_num, wal_segment_size (in
    bytes since PostgreSQL 11)."""
    sysid, version, size = conn.execute(
        "SELECT system_identifier::text, current_setting('server_version_num')::int, "
        "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') FROM pg_control_system()"
    ).fetchone()
    return ServerSystem(str(sysid), int(version) // 10000, int(size))


@dataclass
class EpochStart:
    """What ``start_epoch`` did: ``started`` a new epoch, found the system is already the ``current`` one,
    or ``registered`` it as the source's first system (epoch 1)."""

    source: str
    action: str
    epoch: SourceIdentity
    previous: SourceIdentity | None = None
    previous_last_segment: ArchivedWal | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        last = self.previous_last_segment
        return {
            "id": self.epoch.stream, "source": self.source, "action": self.action, **self.epoch.to_json(),
            "previous": self.previous.to_json() if self.previous else None,
            "previous_last_segment": last.name.name if last else None,
            "previous_last_archived_at": iso(last.modified) if last else None,
            "note": self.note or None,
        }


def start_epoch(repo: Repository, source: str, system: ServerSystem) -> EpochStart:
    """Make ``system`` the current epoch of ``source`` (``wal new-epoch``); safe to run again.

    Refuses a system that is an older epoch: epochs only go forward (the older one's WAL is still
    archived into its own stream, so a rolled-back upgrade keeps working without this command).
    """
    streams = list_streams(repo, source)
    if not streams:
        identity = register_system(repo, source, system.system_identifier, system.major, system.segment_size)
        return EpochStart(source, "registered", identity, note="the source had no history yet")
    current = streams[-1]
    known = next((e for e in streams if e.system_identifier == system.system_identifier), None)
    if known is not None:
        _check_same(source, known, system)
        if known is not current:
            raise BackupctlError(
                f"{system.describe()} is epoch {known.epoch} of source {source}, older than the current epoch "
                f"{current.epoch} ({current.describe()}): epochs only go forward; its WAL is still archived "
                f"into epoch {known.epoch}, and `backupctl restore {source} --backup ID` restores its backups"
            )
        previous = streams[-2] if len(streams) > 1 else None
        return EpochStart(source, "current", known, previous, note="nothing to do")
    number = current.epoch + 1
    stream = layout.epoch_stream(source, number)
    document = {
        "source": source, "epoch": number, "kind": "postgres", "system_identifier": system.system_identifier,
        "major": system.major, "wal_segment_size": system.segment_size, "started_at": iso(datetime.now(UTC)),
        "started_by": f"backupctl {__version__} on {socket.gethostname()}", "previous": current.to_json(),
    }
    if not repo.storage.put_if_absent(layout.stream_record_key(stream), json.dumps(document, indent=1).encode()):
        winner = read_identity(repo, stream)
        if winner is None or winner.system_identifier != system.system_identifier:
            who = winner.describe() if winner else "another system"
            raise BackupctlError(
                f"epoch {number} of source {source} was started for {who} while this command ran (another "
                f"host?): if {system.describe()} should follow it, run `backupctl wal new-epoch {source}` again"
            )
        return EpochStart(source, "current", winner, current,
                          note=f"another process started it at {winner.started_at}")
    log.info("history epoch started", source=source, epoch=number, system_identifier=system.system_identifier,
             major=system.major, previous_system=current.system_identifier)
    started = read_identity(repo, stream)
    assert started is not None
    return EpochStart(source, "started", started, current, _last_segment(repo, current))


def _check_same(source: str, known: SourceIdentity, system: ServerSystem) -> None:
    if known.major != system.major or (known.segment_size and known.segment_size != system.segment_size):
        raise BackupctlError(
            f"system {system.system_identifier} is epoch {known.epoch} of source {source} as {known.describe()} "
            f"with {known.segment_size}-byte WAL segments, but the server says {system.describe()}: check the "
            "config (or the values given)"
        )


def _last_segment(repo: Repository, identity: SourceIdentity) -> ArchivedWal | None:
    """The most recently archived segment of an epoch: the old cluster's last WAL, to show the user."""
    objects = [o for o in list_wal_objects(repo, identity.stream) if o.name.kind in ("segment", "partial")]
    return max(objects, key=lambda o: (o.modified, o.name.name), default=None)
