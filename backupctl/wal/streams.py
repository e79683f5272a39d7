"""The streams of a PostgreSQL source: which systems (history epochs) the repository records, and where.

A source keeps one *stream* of WAL per PostgreSQL system it has had (see ``backupctl.wal.epochs`` for
why); each stream's ``source.json`` records its system identifier, major and WAL segment size. This module
only reads those records (the push, the fetch, status, verify and retention all need them), so that
reading them depends on nothing that starts epochs: ``epochs`` builds on it, never the other way round.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backupctl.core.errors import BackupctlError, IntegrityError, ObjectNotFound
from backupctl.repo import layout

if TYPE_CHECKING:
    from backupctl.repo.repository import Repository


@dataclass
class SourceIdentity:
    """A PostgreSQL system registered for a source: epoch 1 is the source's first system, each
    ``wal new-epoch`` (after pg_upgrade) adds the next one (see ``backupctl.wal.epochs``).

    ``stream`` is what the WAL functions take as their stream for this system's WAL: the source name for
    epoch 1, ``<source>/epochs/<N>`` after it (``layout.epoch_stream``).
    """

    system_identifier: str
    major: int
    segment_size: int | None
    epoch: int = 1
    stream: str = ""
    started_at: str | None = None

    def describe(self) -> str:
        return f"PostgreSQL {self.major} system {self.system_identifier}"

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "stream": self.stream, "system_identifier": self.system_identifier,
                "pg_major": self.major, "wal_segment_size": self.segment_size, "started_at": self.started_at}


def read_identity(repo: Repository, stream: str) -> SourceIdentity | None:
    """What the repository records about one stream of a PostgreSQL source (None before its first backup
    or push); ``stream`` is the source name for epoch 1."""
    key = layout.stream_record_key(stream)
    try:
        doc = json.loads(repo.storage.get_bytes(key))
    except ObjectNotFound:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{key} is damaged: it is not JSON") from exc
    if doc.get("kind") != "postgres":
        raise BackupctlError(
            f"source {stream!r} in {repo.storage.location} is a {doc.get('kind')} source, not PostgreSQL: "
            "use another source name"
        )
    size = doc.get("wal_segment_size")
    if size is None:
        with contextlib.suppress(ObjectNotFound):
            size = json.loads(repo.storage.get_bytes(layout.wal_segment_size_key(stream)))["wal_segment_size"]
    return SourceIdentity(str(doc.get("system_identifier")), int(doc.get("major", 0)), size,
                          int(doc.get("epoch", 1)), stream, doc.get("started_at") or doc.get("registered_at"))


def segment_size(repo: Repository, stream: str) -> int | None:
    """The stream's WAL segment size as registered, or None when nothing registered it yet."""
    identity = read_identity(repo, stream)
    return identity.segment_size if identity else None


def list_streams(repo: Repository, source: str) -> list[SourceIdentity]:
    """Every history epoch of a PostgreSQL source, oldest first; [] before anything registered it.

    One GET of source.json for epoch 1, a delimiter listing of the epochs folder and one GET per later
    epoch: never a listing of WAL.
    """
    first = read_identity(repo, source)
    if first is None:
        return []
    found = [first]
    numbers = sorted(n for n in (layout.epoch_of_prefix(source, p)
                                 for p in repo.storage.list_prefixes(layout.epochs_prefix(source))) if n)
    for number in numbers:
        identity = read_identity(repo, layout.epoch_stream(source, number))
        if identity is None:
            continue  # a folder without its source.json: nothing can have been archived into it
        if identity.epoch != number:
            raise IntegrityError(f"{layout.stream_record_key(identity.stream)} says it is epoch {identity.epoch}: "
                                 "it was moved or edited; put it back where it was written")
        found.append(identity)
    return found


def streams_of(repo: Repository, source: str) -> list[SourceIdentity]:
    """The source's history epochs, oldest first; before anything is registered, epoch 1 with no system."""
    return list_streams(repo, source) or [SourceIdentity("", 0, None, 1, source)]


def stream_for_system(repo: Repository, source: str, system_identifier: str) -> SourceIdentity | None:
    """The epoch of ``source`` whose server is ``system_identifier``, if any."""
    return next((e for e in list_streams(repo, source) if e.system_identifier == system_identifier), None)


def current_stream(repo: Repository, source: str) -> SourceIdentity | None:
    """The newest epoch: the live server's, once ``wal new-epoch`` has run after its upgrade."""
    streams = list_streams(repo, source)
    return streams[-1] if streams else None
