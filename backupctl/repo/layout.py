"""The repository's key layout: the one module that spells a key.

The layout is the product's most durable contract: a repository written today must be read by every
later version, from any host. Every other module asks this one for a key (or a prefix to list) and never
joins path parts itself, so a reader can see the whole layout here, and a change to it is one diff.

Keys are ``/``-separated and relative to the repository root (the storage driver adds its own prefix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- The repository and its sources -------------------------------------------------------------------
#
# The root holds the format marker and one folder per source; folders whose name starts with a dot are
# backupctl's own scratch space (probes), never sources::
#
#     backupctl.json                       what made the repository, its format version, its recipients
#     .probe/<random>                      conditional-write probe of `init` (removed at once; gc collects)
#     <source>/source.json                 the source's identity (see ``stream_record_key``), written once

MARKER = "backupctl.json"
PROBE_PREFIX = ".probe/"


def conditional_write_probe_key(token: str) -> str:
    """The object `init` writes twice to prove the store honours If-None-Match (``token``: random)."""
    return f"{PROBE_PREFIX}{token}"


def is_source_folder(prefix: str) -> bool:
    """Whether one folder listed at the root (``list_prefixes("")``) is a source's, not a hidden one."""
    return not prefix.startswith(".")


def source_prefix(source: str) -> str:
    """Everything a source keeps (backups, WAL, leases, records) starts with this."""
    return f"{source}/"



# -- Backups and their manifests -----------------------------------------------------------------------
#
# A backup is a folder of objects, each stored through the pipeline, so each object's key is its name
# below plus the pipeline's compression and encryption extensions (``base/0000.tar.zst.age``)::
#
#     <source>/backups/<id>/manifest.json              written LAST: a backup without it does not exist
#     <source>/backups/<id>/expired.json               expire removed the manifest while a reader held it
#     <source>/backups/<id>/database.sqlite3           SQLite: the database; export/schema.sql and
#                                                      export/<NNNN>.jsonl with --export-json
#     <source>/backups/<id>/globals.sql                logical: roles and tablespaces; databases/<NNNN>.pgdump
#     <source>/backups/<id>/base/<NNNN>.tar            physical: tar parts (base.tar before parts existed);
#                                                      tablespaces/<oid>/<NNNN>.tar; backup_manifest;
#                                                      config/<name> (config files outside pgdata)
#     <source>/verifications/<id>.json                 one record per verified backup
#     <source>/drills/<id>.json                        one result per drill
#
# Objects are numbered, never named after databases or tables: names are data, and may be secret.

BACKUPS_FOLDER = "backups"
MANIFEST_NAME = "manifest.json"
EXPIRED_MARKER = "expired.json"
SQLITE_DATABASE = "database.sqlite3"
SQLITE_EXPORT_SCHEMA = "export/schema.sql"
PG_GLOBALS = "globals.sql"
PG_BACKUP_MANIFEST = "backup_manifest"
CONFIG_FILES = "config/"
BASE_ARCHIVE = "base"
VERIFICATIONS_FOLDER = "verifications"
DRILLS_FOLDER = "drills"
RECORD_SUFFIX = ".json"
# base.tar (one object) or base/0003.tar (parts); tablespaces/16384.tar or tablespaces/16384/0000.tar
_TAR_PART_RE = re.compile(r"^(?:base(?:\.tar|/\d+\.tar)|tablespaces/(?P<oid>\d+)(?:\.tar|/\d+\.tar))(?:\.|$)")


def backups_prefix(source: str) -> str:
    """Every backup folder of a source starts with this (one listing finds them all)."""
    return f"{source}/{BACKUPS_FOLDER}/"


def backup_prefix(source: str, backup_id: str) -> str:
    """The folder of one backup; its objects' keys are this plus their names."""
    return f"{backups_prefix(source)}{backup_id}/"


def backup_id_of(source: str, key: str) -> str | None:
    """The backup whose folder holds ``key`` (a key listed under ``backups_prefix``); None for others."""
    backup_id, sep, _rest = key.removeprefix(backups_prefix(source)).partition("/")
    return backup_id if sep and key.startswith(backups_prefix(source)) else None


def manifest_key(source: str, backup_id: str) -> str:
    return backup_prefix(source, backup_id) + MANIFEST_NAME


def is_manifest_key(key: str) -> bool:
    return key.endswith("/" + MANIFEST_NAME)


def expired_marker_key(source: str, backup_id: str) -> str:
    return backup_prefix(source, backup_id) + EXPIRED_MARKER


def is_expired_marker_key(key: str) -> bool:
    return key.endswith("/" + EXPIRED_MARKER)


def name_in_backup(source: str, backup_id: str, key: str) -> str:
    """An object's name within its backup folder (``key`` without the folder), extensions included."""
    return key.removeprefix(backup_prefix(source, backup_id))


def sqlite_table_export(index: int) -> str:
    """The JSON-lines export of the ``index``-th table (sorted by name) of a SQLite backup."""
    return f"export/{index:04d}.jsonl"


def pg_database_dump(index: int) -> str:
    """The pg_dump archive of the ``index``-th database of a logical backup."""
    return f"databases/{index:04d}.pgdump"


def config_file(name: str) -> str:
    """A server config file kept outside the data directory (Debian's postgresql.conf, pg_hba.conf)."""
    return f"{CONFIG_FILES}{name}"


def tar_archive(tar_name: str) -> str:
    """``base.tar`` -> ``base``, ``16384.tar`` -> ``tablespaces/16384``: the prefix of its parts' names."""
    stem = tar_name.removesuffix(".tar")
    return stem if tar_name == "base.tar" else f"tablespaces/{stem}"


def tar_part(archive: str, index: int) -> str:
    """The ``index``-th part of the tar stream ``archive`` (``tar_archive``)."""
    return f"{archive}/{index:04d}.tar"


def is_tar_part(name: str) -> bool:
    """Whether a ``name_in_backup`` is part of a physical backup's tar archives (of any layout version)."""
    return _TAR_PART_RE.match(name) is not None


def tar_part_tablespace(name: str) -> str | None:
    """The tablespace oid of a tar part's name; None for the data directory's (``base``) parts."""
    match = _TAR_PART_RE.match(name)
    return match.group("oid") if match else None


def verifications_prefix(source: str) -> str:
    return f"{source}/{VERIFICATIONS_FOLDER}/"


def verification_key(source: str, verification_id: str) -> str:
    return f"{verifications_prefix(source)}{verification_id}{RECORD_SUFFIX}"


def drills_prefix(source: str) -> str:
    return f"{source}/{DRILLS_FOLDER}/"


def drill_key(source: str, drill_id: str) -> str:
    return f"{drills_prefix(source)}{drill_id}{RECORD_SUFFIX}"


def is_record_key(key: str) -> bool:
    """Whether a key listed under ``verifications_prefix`` or ``drills_prefix`` is a record (not a stray)."""
    return key.endswith(RECORD_SUFFIX)



# -- Leases, pins and the store's clock ---------------------------------------------------------------
#
# Leases (see ``backupctl.repo.lease``) live in ``locks/`` folders, a source's or the repository's (gc,
# recipients); pins (``backupctl.repo.pins``) in the source's ``pins/``::
#
#     [<source>/]locks/<name>.<generation, 12 digits>.json     exclusive leases (backup, expire, gc, ...)
#     <source>/locks/readers/<host>-<pid>-<random>.json        reader leases (restore, verify, drill)
#     [<source>/]locks/clock/<host>-<pid>-<random>             store-clock probes (removed at once)
#     <source>/pins/<id>.json                                  a pinned backup, and why

LOCKS_FOLDER = "locks"
LEASE_SUFFIX = ".json"


def locks_prefix(source: str | None) -> str:
    """The lease folder of ``source``, or the repository's own when None."""
    return f"{source}/{LOCKS_FOLDER}/" if source else f"{LOCKS_FOLDER}/"


def lease_prefix(source: str | None, name: str) -> str:
    """Every generation of the exclusive lease ``name`` starts with this."""
    return f"{locks_prefix(source)}{name}."


def lease_generation_key(prefix: str, generation: int) -> str:
    """Generation ``generation`` of the lease whose ``lease_prefix`` is ``prefix``."""
    return f"{prefix}{generation:012d}{LEASE_SUFFIX}"


def lease_generation(prefix: str, key: str) -> int | None:
    """The generation of a key listed under ``prefix`` (a ``lease_prefix``); None for other keys."""
    number = key[len(prefix):].removesuffix(LEASE_SUFFIX)
    return int(number) if number.isdigit() else None


def lease_name_and_generation(source: str | None, key: str) -> tuple[str, int] | None:
    """The lease name and generation of a key listed under ``locks_prefix(source)``; None for the keys of
    readers, clock probes and strays."""
    if not key.endswith(LEASE_SUFFIX):
        return None
    name, dot, number = key[len(locks_prefix(source)):].removesuffix(LEASE_SUFFIX).rpartition(".")
    return (name, int(number)) if dot and "/" not in name and number.isdigit() else None


def reader_leases_prefix(source: str) -> str:
    return f"{locks_prefix(source)}readers/"


def reader_lease_key(source: str, token: str) -> str:
    """One reader's lease; ``token`` (host, pid, random) makes it this process's alone."""
    return f"{reader_leases_prefix(source)}{token}{LEASE_SUFFIX}"


def clock_probes_prefix(source: str | None) -> str:
    return f"{locks_prefix(source)}clock/"


def clock_probe_key(source: str | None, token: str) -> str:
    """An empty object written to read the store's clock from its Last-Modified (``lease.store_now``)."""
    return f"{clock_probes_prefix(source)}{token}"


def pins_prefix(source: str) -> str:
    return f"{source}/pins/"


def pin_key(source: str, backup_id: str) -> str:
    return f"{pins_prefix(source)}{backup_id}.json"



# -- The WAL archive: segments, history files, epochs and timelines -----------------------------------
#
# A *stream* is one PostgreSQL system's WAL (see ``backupctl.wal.epochs``): the source name for history
# epoch 1, ``<source>/epochs/<N>`` for epoch N >= 2. Each archived file is stored through the pipeline,
# so its key ends with the pipeline's compression and encryption extensions (e.g. ``.zst.age``)::
#
#     <stream>/source.json                                            the stream's system (written once)
#     <stream>/wal/<TLI+log, 16 hex>/<segment>-<sha256 of the plain segment>      WAL segments
#     <stream>/wal/<TLI+log, 16 hex>/<segment>.partial-<sha256>                   last segment of a timeline
#     <stream>/wal/<TLI+log, 16 hex>/<segment>.<offset>.backup-<sha256>           backup history files
#     <stream>/wal/<TLI>.history-<sha256>                                         timeline history files
#     <stream>/wal/segment_size.json     the WAL segment size, when a logical backup registered the source

EPOCHS_FOLDER = "epochs"
_WAL_KEY_RE = re.compile(
    r"^(?P<name>[0-9A-F]{8}(?:[0-9A-F]{16}(?:\.partial|\.[0-9A-F]{8}\.backup)?|\.history))"
    r"-(?P<sha>[0-9a-f]{64})(?P<comp>\.zst|\.lz4|\.gz)?(?P<age>\.age)?$"
)


def epoch_stream(source: str, epoch: int) -> str:
    """Where history epoch ``epoch`` of ``source`` keeps its WAL and identity: the source itself for epoch 1."""
    return source if epoch == 1 else f"{source}/{EPOCHS_FOLDER}/{epoch}"


def epochs_prefix(source: str) -> str:
    """The folder of a source's later epochs (list it with delimiter: one prefix per epoch)."""
    return f"{source}/{EPOCHS_FOLDER}/"


def epoch_of_prefix(source: str, prefix: str) -> int | None:
    """The epoch number (>= 2) of one listed ``epochs_prefix`` folder; None for anything else."""
    name = prefix[len(epochs_prefix(source)):].rstrip("/")
    return int(name) if name.isdigit() and int(name) >= 2 else None


def stream_record_key(stream: str) -> str:
    """The ``source.json`` of a stream: its system identifier, major and segment size (epoch 1's is the
    source's own record)."""
    return f"{stream}/source.json"


def wal_prefix(stream: str) -> str:
    """Every WAL object of a stream starts with this."""
    return f"{stream}/wal/"


def wal_folder_prefix(stream: str, folder: str) -> str:
    """One 16-hex (timeline and log) folder of segments."""
    return f"{wal_prefix(stream)}{folder}/"


def wal_object_prefix(stream: str, folder: str, name: str) -> str:
    """Every object archived for file ``name`` starts with this, then the plaintext sha256 (``folder`` is ""
    for history files, which lie beside the folders)."""
    return f"{wal_folder_prefix(stream, folder) if folder else wal_prefix(stream)}{name}-"


def wal_segment_size_key(stream: str) -> str:
    return f"{wal_prefix(stream)}segment_size.json"


@dataclass(frozen=True)
class WalKey:
    """The parts of a WAL object's key (``split_wal_key``): the name is not checked against WAL names."""

    folder: str
    name: str
    sha256: str
    compression_extension: str | None  # ".zst", ".lz4", ".gz" or None
    encrypted: bool


def split_wal_key(stream: str, key: str) -> WalKey | None:
    """The parts of a key under ``wal_prefix(stream)``; None for keys of another shape."""
    prefix = wal_prefix(stream)
    if not key.startswith(prefix):
        return None
    folder, _, base = key[len(prefix):].rpartition("/")
    match = _WAL_KEY_RE.match(base)
    if match is None:
        return None
    return WalKey(folder, match.group("name"), match.group("sha"), match.group("comp"), match.group("age") is not None)
