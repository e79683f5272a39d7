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

A stream is the string the functions of ``wal`` take as ``source`` for keys (``SourceIdentity.stream``):
the source name for epoch 1, ``<source>/epochs/<N>`` after it. ``wal new-epoch SOURCE`` starts the next
epoch for the configured (upgraded) server with a conditional write, so two hosts racing to start it
cannot both win. wal-push puts each segment in the stream of the system its header names; restores
replay the stream of the backup they start from (restore_command gets ``--epoch N``); retention and
status walk every epoch with ``list_streams``.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backupctl import __version__
from backupctl.core.errors import BackupctlError, ConfigError, IntegrityError
from backupctl.core.log import get_logger
from backupctl.repo.catalog import Manifest, iso
from backupctl.wal import archive as wal
from backupctl.wal.archive import SourceIdentity

if TYPE_CHECKING:
    from backupctl.core.config import PostgresSource
    from backupctl.repo.repository import Repository

log = get_logger(__name__)

EPOCHS_FOLDER = "epochs"


def stream_name(source: str, epoch: int) -> str:
    """Where epoch ``epoch`` of ``source`` keeps its WAL and identity: the source itself for epoch 1."""
    return source if epoch == 1 else f"{source}/{EPOCHS_FOLDER}/{epoch}"


def list_streams(repo: Repository, source: str) -> list[SourceIdentity]:
    """Every history epoch of a PostgreSQL source, oldest first; [] before anything registered it.

    One GET of source.json for epoch 1, a delimiter listing of ``<source>/epochs/`` and one GET per later
    epoch: never a listing of WAL.
    """
    first = wal.read_identity(repo, source)
    if first is None:
        return []
    found = [first]
    folder = f"{source}/{EPOCHS_FOLDER}/"
    numbers = sorted(int(name) for name in (p[len(folder):].rstrip("/") for p in repo.storage.list_prefixes(folder))
                     if name.isdigit() and int(name) >= 2)
    for number in numbers:
        identity = wal.read_identity(repo, stream_name(source, number))
        if identity is None:
            continue  # a folder without its source.json: nothing can have been archived into it
        if identity.epoch != number:
            raise IntegrityError(f"{identity.stream}/source.json says it is epoch {identity.epoch}: it was "
                                 "moved or edited; put it back where it was written")
        found.append(identity)
    return found


def stream_for_system(repo: Repository, source: str, system_identifier: str) -> SourceIdentity | None:
    """The epoch of ``source`` whose server is ``system_identifier``, if any."""
    return next((e for e in list_streams(repo, source) if e.system_identifier == system_identifier), None)


def current_stream(repo: Repository, source: str) -> SourceIdentity | None:
    """The newest epoch: the live server's, once ``wal new-epoch`` has run after its upgrade."""
    streams = list_streams(repo, source)
    return streams[-1] if streams else None


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
    from backupctl.repo.repository import SourceMismatch

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
        raise wal.foreign_system(repo, source, f"the server of source {source}", system_identifier, major,
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
        if not wal.is_valid_segment_size(segment_size):
            raise ConfigError(f"--segment-size {segment_size} is not a WAL segment size (a power of two from 1 MiB "
                              "to 1 GiB: the 'Bytes per WAL segment' line of pg_controldata)")
        return cls(str(int(system_identifier)), major, segment_size)


def server_system(source: PostgresSource) -> ServerSystem:
    """The configured server's system, asked over SQL (pg_control_system(), wal_segment_size)."""
    from backupctl.engines.pg_physical import server_facts
    from backupctl.postgres.connection import ConnParams

    try:
        facts = server_facts(ConnParams.from_source(source))
    except BackupctlError as exc:
        raise BackupctlError(f"{exc}; to start the epoch without the server, give --system-identifier, --major "
                             "and --segment-size (`pg_controldata DATADIR` shows them)") from None
    return ServerSystem(facts.system_identifier, facts.major, facts.segment_size)


@dataclass
class EpochStart:
    """What ``start_epoch`` did: ``started`` a new epoch, found the system is already the ``current`` one,
    or ``registered`` it as the source's first system (epoch 1)."""

    source: str
    action: str
    epoch: SourceIdentity
    previous: SourceIdentity | None = None
    previous_last_segment: wal.ArchivedWal | None = None
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
    stream = stream_name(source, number)
    document = {
        "source": source, "epoch": number, "kind": "postgres", "system_identifier": system.system_identifier,
        "major": system.major, "wal_segment_size": system.segment_size, "started_at": iso(datetime.now(UTC)),
        "started_by": f"backupctl {__version__} on {socket.gethostname()}", "previous": current.to_json(),
    }
    if not repo.storage.put_if_absent(f"{stream}/source.json", json.dumps(document, indent=1).encode()):
        winner = wal.read_identity(repo, stream)
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
    started = wal.read_identity(repo, stream)
    assert started is not None
    return EpochStart(source, "started", started, current, _last_segment(repo, current))


def _check_same(source: str, known: SourceIdentity, system: ServerSystem) -> None:
    if known.major != system.major or (known.segment_size and known.segment_size != system.segment_size):
        raise BackupctlError(
            f"system {system.system_identifier} is epoch {known.epoch} of source {source} as {known.describe()} "
            f"with {known.segment_size}-byte WAL segments, but the server says {system.describe()}: check the "
            "config (or the values given)"
        )


def _last_segment(repo: Repository, identity: SourceIdentity) -> wal.ArchivedWal | None:
    """The most recently archived segment of an epoch: the old cluster's last WAL, to show the user."""
    objects = [o for o in wal.list_wal_objects(repo, identity.stream) if o.name.kind in ("segment", "partial")]
    return max(objects, key=lambda o: (o.modified, o.name.name), default=None)
