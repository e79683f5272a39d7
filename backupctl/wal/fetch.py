"""Fetching archived files back: decoded, proven against the checksum in their key, written atomically.

restore_command (and the resident pusher's read-ahead) fetch segments with ``fetch``; verify and the
backup's WAL check decode them with ``decode_object``; the planner reads timeline histories with
``read_history``. A file reaches its destination complete and right or not at all, and a segment of
another system than the restoring cluster's is refused before it reaches %p (``check_restoring_system``).
"Not archived" ends recovery, so it is answered only for a stream the repository knows (``UnknownStream``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from backupctl.core import signals
from backupctl.core.errors import BackupctlError, DecryptionError, IntegrityError, ObjectNotFound, StorageError
from backupctl.repo import crypto, layout
from backupctl.repo.codecs import codec
from backupctl.storage.local import fsync_dir
from backupctl.wal.identity import LONG_HEADER, ForeignWal, data_directory, pg_control_sysid, read_header
from backupctl.wal.listing import ArchivedWal, find_archived
from backupctl.wal.names import WalName, history_name, parse_history
from backupctl.wal.streams import read_identity

if TYPE_CHECKING:
    from backupctl.repo.repository import Repository

FETCH_CHUNK = 1024 * 1024


class UnknownStream(BackupctlError):
    """restore_command names a source (or history epoch) the repository has no identity for: nothing was ever
    archived there, so "not archived" (which ends recovery) would be a guess. Retrying will not help."""


class _PlainWriter(io.RawIOBase):
    """Decompresses what age (or the store) hands it, hashes and writes the plain bytes."""

    def __init__(self, sink: BinaryIO, decompressor: Any) -> None:
        self._sink = sink
        self._decompressor = decompressor
        self.hash = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            out = self._decompressor.decompress(bytes(data))
            if out:
                self.hash.update(out)
                self._sink.write(out)
                self.size += len(out)
            return len(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise


class _CapturingReader(io.RawIOBase):
    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._source.read(len(buffer))
        except BaseException as exc:
            self.error = self.error or exc
            raise
        buffer[: len(data)] = data
        return len(data)


def decode_object(repo: Repository, obj: ArchivedWal, sink: BinaryIO) -> int:
    """Stream one archived file's plain bytes into ``sink``, proving them against the sha256 in its key.

    Returns the plain size. Raises ``IntegrityError`` for damage, ``DecryptionError`` without the key.
    """
    identity = repo.pipeline.identity() if obj.encrypted else None
    decompressor = codec(obj.compression).decompressor()
    out = _PlainWriter(sink, decompressor)
    with repo.storage.get(obj.key) as raw:
        reader = _CapturingReader(raw)
        try:
            if identity is not None:
                crypto.decrypt_stream(reader, out, identity)  # type: ignore[arg-type]
            else:
                while chunk := raw.read(FETCH_CHUNK):
                    out.write(chunk)
        except (StorageError, DecryptionError):
            raise
        except Exception as exc:
            for stage in (reader, out):
                if stage.error is not None and isinstance(stage.error, BackupctlError | OSError):
                    raise stage.error from None  # the stage's own error is the cause; the decoder's is its echo
            signals.raise_pending()
            raise IntegrityError(f"{obj.key} cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if not decompressor.eof:
        raise IntegrityError(f"{obj.key} is truncated: its compressed stream has no end")
    digest = out.hash.hexdigest()
    if digest != obj.sha256:
        raise IntegrityError(f"{obj.key} is damaged: its content has sha256 {digest}, its name says {obj.sha256}")
    return out.size


def _pick(objects: list[ArchivedWal], name: str) -> ArchivedWal:
    if len({o.sha256 for o in objects}) > 1:
        shas = ", ".join(sorted({o.sha256 for o in objects}))
        raise IntegrityError(f"{name} is archived twice with different contents (sha256 {shas}): "
                             "remove the wrong one before restoring")
    return objects[0]


def _fetch_into(repo: Repository, source: str, name: str, sink: BinaryIO) -> bool:
    objects = find_archived(repo, source, name)
    if not objects:
        return False
    decode_object(repo, _pick(objects, name), sink)
    return True


def fetch(repo: Repository, source: str, name: str, dest: str | Path) -> bool:
    """Fetch archived file ``name`` into ``dest``: False when it is not archived.

    Writes a temp file beside ``dest``, checks the plaintext sha256 and, when ``dest`` lies in a data
    directory, the segment's system identifier (``check_restoring_system``), fsyncs and renames it into
    place, so ``dest`` appears complete and right or not at all. Raises on damage, another system's WAL
    and storage failures. "Not archived" means something only when the stream exists: see ``UnknownStream``.
    """
    dest = Path(dest)
    objects = find_archived(repo, source, name)
    if not objects:
        return False
    obj = _pick(objects, name)

    def produce(handle: BinaryIO) -> None:
        tap = CountingSink(handle)
        decode_object(repo, obj, tap)  # type: ignore[arg-type]
        check_restoring_system(obj.name, tap.head, dest)

    write_atomically(dest, produce)
    return True


def check_restoring_system(name: WalName, head: bytes, dest: Path) -> None:
    """Refuse a segment of another system than the cluster it is fetched for (pgBackRest does the same).

    PostgreSQL takes a page header of another system for the end of valid WAL: it would end recovery
    there and promote. The restoring cluster is the data directory ``dest`` lies in (restore_command runs
    there with %p = ``pg_wal/RECOVERYXLOG``); where no pg_control is found (a fetch by hand, the pusher's
    staging directory) there is nothing to compare with. ``head``: the file's first bytes.
    """
    if name.kind not in ("segment", "partial"):
        return
    system = pg_control_sysid(dest)
    if system is None:
        return
    header = read_header(head, name.name)
    if header.system_identifier != system:
        raise ForeignWal(
            f"{name.name} in the repository comes from system {header.system_identifier}, but the cluster "
            f"recovering in {data_directory(dest)} is system {system}: restore_command names another "
            "source's WAL (check its --source and --config), or this data directory was not restored from it"
        )


def write_atomically(dest: Path, produce: Callable[[BinaryIO], Any]) -> None:
    """``produce`` writes into a temp file beside ``dest``, which is then fsynced and renamed over it."""
    temp = dest.with_name(f".{dest.name}.backupctl-{secrets.token_hex(4)}")
    try:
        with open(temp, "xb") as handle:
            produce(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(dest.parent)


def read_history(repo: Repository, source: str, timeline: int) -> list[tuple[int, int]]:
    """The ancestry of ``timeline`` from its archived history file: [(parent timeline, switch LSN)].

    The list is oldest first, as PostgreSQL writes it: each entry says that ``parent`` ended (and the
    next timeline began) at the switch LSN. Timeline 1 has no history: []. A missing history file of a
    later timeline raises ``ObjectNotFound``.
    """
    if timeline == 1:
        return []
    buffer = io.BytesIO()
    if not _fetch_into(repo, source, history_name(timeline), buffer):
        raise ObjectNotFound(f"the history file of timeline {timeline} ({history_name(timeline)}) is not "
                             f"archived for source {source}")
    return parse_history(buffer.getvalue().decode("utf-8", errors="replace"), timeline)


def fetch_from_epoch(repo: Repository, source: str, epoch: int, name: str, dest: str,
                     known: set[str] | None = None) -> bool:
    """``fetch`` from history epoch ``epoch``'s stream: False ("not archived", which ends recovery) only
    when the repository knows the stream (its source.json); a source or epoch it lacks (a wrong --source,
    --epoch or config) raises ``UnknownStream`` (exit 128: recovery stops). ``known``: streams already
    found, so that a resident pusher asks the repository once."""
    stream = layout.epoch_stream(source, epoch)
    if fetch(repo, stream, name, dest):
        return True
    if known is None or stream not in known:
        if read_identity(repo, stream) is None:
            where = f"in {repo.storage.location} ({layout.stream_record_key(stream)} is missing)"
            if epoch > 1:
                raise UnknownStream(
                    f"source {source!r} has no history epoch {epoch} {where}: restore_command names the wrong "
                    f"--epoch (`backupctl pg-settings {source}` prints the right one)")
            raise UnknownStream(
                f"source {source!r} has nothing archived {where}: restore_command names a source or repository "
                "this server never archived into: fix its --source or --config (`backupctl pg-settings SOURCE` "
                "prints the right one) rather than end recovery here")
        if known is not None:
            known.add(stream)
    return False


class CountingSink(io.RawIOBase):
    """Counts the bytes written and keeps the first ones (a segment's long header); passes all on to ``sink``."""

    def __init__(self, sink: BinaryIO | None = None) -> None:
        self.head = b""
        self.size = 0
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(self.head) < LONG_HEADER.size:
            self.head += bytes(data[: LONG_HEADER.size - len(self.head)])
        if self._sink is not None:
            self._sink.write(data)
        self.size += len(data)
        return len(data)
