"""One streaming pass per byte: read -> compress -> encrypt -> sha256 -> store, and back.

Nothing is staged: the compressor pulls from the source, age pulls from the compressor and pushes into a
hashing writer that feeds the store's streaming writer (which uploads parts in its own threads). Memory
stays at a few buffers whatever the object's size. On the way back the stored bytes are hashed as they
arrive and the decompressor checks its frame end, so corruption and truncation are both caught.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from backupctl.core import signals
from backupctl.core.config import Config
from backupctl.core.errors import BackupctlError, DecryptionError, IntegrityError, StorageError
from backupctl.core.progress import Meter, ProgressObserver, metered
from backupctl.repo import crypto
from backupctl.repo.codecs import Codec, Decompressor, codec
from backupctl.storage import Storage
from backupctl.storage.local import warn_if_readable_by_others

CHUNK = 1024 * 1024


class SinkError(BackupctlError):
    """Writing decoded data out failed (a full disk, a closed pipe): not a fault of the backup."""


@dataclass(frozen=True)
class StoredObject:
    """A manifest's record of one object: enough to find, check and decode it."""

    key: str
    size: int  # bytes before compression
    stored_size: int  # bytes in the repository
    sha256: str  # of the stored bytes
    compression: str
    encryption: str | None  # "age" or None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredObject:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class _Stage(io.RawIOBase):
    """A pipeline stage that remembers the first exception raised through it.

    pyrage turns any exception raised in a read or write callback into its own generic error; the
    pipeline re-raises the remembered original, so a storage failure or a signal keeps its meaning.
    """

    error: BaseException | None = None

    def readinto(self, buffer: Any) -> int:
        try:
            return self._readinto(buffer)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def write(self, data: Any) -> int:
        try:
            return self._write(data)
        except BaseException as exc:
            self.error = self.error or exc
            raise

    def _readinto(self, buffer: Any) -> int:
        raise io.UnsupportedOperation("read")

    def _write(self, data: Any) -> int:
        raise io.UnsupportedOperation("write")


def _raise_captured(*stages: _Stage) -> None:
    """Re-raise what really went wrong inside pyrage's callbacks (or the signal that arrived)."""
    for stage in stages:
        if stage.error is not None:
            raise stage.error
    signals.raise_pending()


class _CompressingReader(_Stage):
    """Pulls raw bytes from a source and hands out compressed bytes; counts what it read.

    A source that has ``readinto`` fills a fresh buffer: a producer such as a tar splitter then copies
    its bytes once, into that buffer, and the compressor takes them from there (``read`` would copy
    them again). Fresh, not reused: a compressor may keep what it was given until ``flush``.
    """

    def __init__(self, source: BinaryIO, codec_: Codec, meter: Meter | None) -> None:
        self._source = source
        self._compressor = codec_.compressor()
        self._pending = memoryview(b"")
        self._done = False
        self._source_readinto = getattr(source, "readinto", None)
        self._count = meter.add if meter is not None else None
        self.size = 0

    def readable(self) -> bool:
        return True

    def _readinto(self, buffer: Any) -> int:
        while not self._pending and not self._done:
            chunk = self._read()
            if chunk:
                self.size += len(chunk)
                if self._count is not None:
                    self._count(len(chunk))
                self._pending = memoryview(self._compressor.compress(chunk))
            else:
                self._pending = memoryview(self._compressor.flush())
                self._done = True
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _read(self) -> Any:
        if self._source_readinto is None:
            return self._source.read(CHUNK)
        chunk = bytearray(CHUNK)
        got = self._source_readinto(chunk)
        return chunk if got == CHUNK else memoryview(chunk)[:got]


class _HashingWriter(_Stage):
    """Hashes and counts the exact bytes that go to the store."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def _write(self, data: Any) -> int:
        self.hash.update(data)
        self.size += len(data)
        self._sink.write(data)
        return len(data)


class _HashingReader(_Stage):
    """Hashes and counts the stored bytes as they are read back.

    A source with ``readinto`` (a local file, the S3 reader) fills the caller's buffer directly: no copy.
    """

    def __init__(self, source: BinaryIO, meter: Meter | None) -> None:
        self._source = source
        self._source_readinto = getattr(source, "readinto", None)
        self._count = meter.add if meter is not None else None
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def _readinto(self, buffer: Any) -> int:
        if self._source_readinto is None:
            data = self._source.read(len(buffer))
            n = len(data)
            buffer[:n] = data
        else:
            n = self._source_readinto(buffer) or 0
        self.hash.update(memoryview(buffer)[:n])
        self.size += n
        if self._count is not None:
            self._count(n)
        return n

    def finish(self) -> None:
        """Read what the decoder left (trailing bytes), so the hash covers the whole object."""
        while chunk := self._source.read(CHUNK):
            self.hash.update(chunk)
            self.size += len(chunk)
            if self._count is not None:
                self._count(len(chunk))


class _DecompressingWriter(_Stage):
    """Takes stored (decrypted) bytes, writes the original bytes to ``sink``."""

    def __init__(self, sink: BinaryIO, decompressor: Decompressor) -> None:
        self._sink = sink
        self._decompressor = decompressor
        self.size = 0

    def writable(self) -> bool:
        return True

    def _write(self, data: Any) -> int:
        self._emit(self._decompressor.decompress(bytes(data)))
        return len(data)

    def _emit(self, out: Any) -> None:
        if out:
            try:
                self._sink.write(out)
            except OSError as exc:
                raise SinkError(f"cannot write the restored data: {exc.strerror or exc}") from exc
            self.size += len(out)

    def finish(self) -> bool:
        """Whether the compressed stream came to its end."""
        return bool(self._decompressor.eof)


class _ZstdWriter(_DecompressingWriter):
    """zstd through python-zstandard's stream writer: each decoded block goes straight to the sink.

    Its ``decompressobj`` gathers a call's output and joins it, a copy that costs more than the
    decompression itself on well-compressed data. The writer cannot say whether the frame ended; the
    sha256 of the stored bytes and the decoded size, both checked against the manifest, prove that.
    """

    def __init__(self, sink: BinaryIO) -> None:
        super().__init__(sink, codec("none").decompressor())
        self._zstd = zstandard.ZstdDecompressor().stream_writer(
            _Emitter(self._emit), write_size=CHUNK, closefd=False)  # type: ignore[arg-type]

    def _write(self, data: Any) -> int:
        self._zstd.write(data)
        return len(data)

    def finish(self) -> bool:
        self._zstd.flush()
        return True


class _Emitter(io.RawIOBase):
    def __init__(self, emit: Callable[[Any], None]) -> None:
        self._emit = emit

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._emit(data)
        return len(data)


class _NullSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


class Pipeline:
    """Stores and reads objects for one repository with the config's compression and encryption."""

    def __init__(self, storage: Storage, config: Config, codec_: Codec | None = None) -> None:
        """``codec_``: in place of the config's compression (the WAL's one-shot zstd, ``wal.opening``)."""
        self.storage = storage
        self.codec = codec_ or codec(config.compression.algorithm, config.compression.level,
                                     config.compression.threads)
        enc = config.encryption
        self.recipients = (
            crypto.parse_recipients(enc.recipients, f"{config.file}: encryption.recipients") if enc else []
        )
        self.recipient_names = [str(r) for r in self.recipients]
        self._recipients_setting = f"{config.file}: encryption.recipients"
        # The recipients the repository's marker lists, set when the repository is opened: new data is
        # encrypted to exactly those (``require_repository_recipients``).
        self.repository_recipients: list[str] | None = None
        self._identity_file = Path(enc.identity_file) if enc and enc.identity_file else None
        self._identity: Any = None
        self._meter: Meter | None = None

    @contextlib.contextmanager
    def metering(self, meter: Meter) -> Iterator[Meter]:
        """Count into ``meter``, for the ``with`` block, the source bytes every ``store`` reads and the stored
        bytes every ``read`` reads (from any thread): a service's progress without a parameter on each call."""
        previous, self._meter = self._meter, meter
        try:
            yield meter
        finally:
            self._meter = previous

    @contextlib.contextmanager
    def reading_progress(self, progress: ProgressObserver, task: str,
                         objects: Iterable[StoredObject]) -> Iterator[Meter]:
        """Report to ``progress`` the reading of ``objects`` in the ``with`` block: their stored sizes are the
        exact total, the stored bytes ``read`` reads the count."""
        with metered(progress, task, sum(o.stored_size for o in objects)) as meter, self.metering(meter):
            yield meter

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)

    def encryption_record(self) -> dict[str, Any] | None:
        """How new objects are encrypted, as manifests and the repository marker record it."""
        return {"method": "age", "recipients": self.recipient_names} if self.encrypted else None

    def identity(self) -> Any:
        """The private key, loaded on first need: backups never need it."""
        if self._identity is None:
            if self._identity_file is None:
                raise DecryptionError(
                    "this needs the private key: set encryption.identity_file in the config "
                    "(the file written by `backupctl keygen`)"
                )
            self._identity = crypto.load_identity(self._identity_file)
            warn_if_readable_by_others(self._identity_file, "identity file")
        return self._identity

    def can_decrypt(self) -> bool:
        return self._identity_file is not None

    def check_recipient(self, recipients: list[str], what: str) -> None:
        """Fail before any download when our identity is not one that ``what`` was encrypted to."""
        mine = crypto.public_key(self.identity())
        if mine not in recipients:
            raise DecryptionError(
                f"the identity in {self._identity_file} ({mine}) cannot open {what}: "
                f"it was encrypted to {', '.join(recipients)}"
            )

    def require_repository_recipients(self) -> None:
        """Refuse to encrypt new data to other recipients than the repository lists (a typo'd, old or
        tampered config would write backups the real identity cannot open); readers are never refused."""
        if self.encrypted and self.repository_recipients is not None:
            crypto.check_recipients(self.recipient_names, self.repository_recipients, self.storage.location,
                                    self._recipients_setting)

    def object_key(self, key: str) -> str:
        """The key ``store`` writes for ``key``: with the codec's extension and ``.age`` when encrypted."""
        return key + self.codec.extension + (".age" if self.encrypted else "")

    def store(self, key: str, source: BinaryIO, finalize: Callable[[], None] | None = None) -> StoredObject:
        """Stream ``source`` into the repository under ``key`` plus the codec's extensions.

        ``finalize`` runs after the source's end and before the object is committed: a producer (a
        pg_dump child) that ends with an error then leaves no object behind.
        """
        self.require_repository_recipients()
        full_key = self.object_key(key)
        with self.storage.open_write(full_key) as writer:
            stored = self._encode(full_key, source, writer)
            if finalize is not None:
                finalize()
        return stored

    def store_if_absent(self, key: str, source: BinaryIO) -> StoredObject | None:
        """``store`` for a small object (a WAL segment, at most ``opening.IN_MEMORY_LIMIT``) that is created
        only when nothing is stored under its key yet: None when another writer got there first.

        The object is encoded into memory and handed to ``Storage.put_if_absent`` (S3: one PutObject with
        If-None-Match; local: link(2)), so two writers that race with the same content-addressed key store it
        once, whichever wins; the loser learns it from the store's refusal, not from a listing.
        """
        self.require_repository_recipients()
        full_key = self.object_key(key)
        buffer = io.BytesIO()
        stored = self._encode(full_key, source, buffer)
        with buffer.getbuffer() as encoded:  # no copy: a segment's bytes are held once
            if not self.storage.put_if_absent(full_key, encoded):  # type: ignore[arg-type]
                return None
        return stored

    def _encode(self, full_key: str, source: BinaryIO, sink: BinaryIO) -> StoredObject:
        """Compress (and encrypt) ``source`` into ``sink``: what is stored under ``full_key``, and its digest."""
        reader = _CompressingReader(source, self.codec, self._meter)
        hashing = _HashingWriter(sink)
        if self.encrypted:
            try:
                crypto.encrypt_stream(reader, hashing, self.recipients)
            except Exception:
                _raise_captured(reader, hashing)
                raise
        else:
            shutil.copyfileobj(reader, hashing, CHUNK)
        return StoredObject(key=full_key, size=reader.size, stored_size=hashing.size,
                            sha256=hashing.hash.hexdigest(), compression=self.codec.name,
                            encryption="age" if self.encrypted else None)

    def read(self, obj: StoredObject, sink: BinaryIO, decode: bool = True) -> None:
        """Stream one object back into ``sink``, proving it whole on the way.

        With ``decode`` false only the stored bytes are checked (size and sha256): what a host without
        the private key can do. With it, the object is decrypted and decompressed as well, which also
        checks age's authentication tags and the compressed frame's end.
        """
        identity = self.identity() if decode and obj.encryption else None
        with self.storage.get(obj.key) as raw:
            reader = _HashingReader(raw, self._meter)
            try:
                if decode:
                    self._decode(obj, reader, sink, identity)
            except (StorageError, SinkError):
                raise  # the store or the sink failed us: no verdict on the data
            except Exception as exc:  # zstd, lz4, zlib and age each raise their own types for bad data
                # Damage to the stored bytes explains any decoding failure, so it is reported first.
                reader.finish()
                self._check_stored(obj, reader)
                raise self._decode_failure(obj, exc, identity) from exc
            reader.finish()
        self._check_stored(obj, reader)

    def _decode(self, obj: StoredObject, reader: _HashingReader, sink: BinaryIO, identity: Any) -> None:
        out = _ZstdWriter(sink) if obj.compression == "zstd" else _DecompressingWriter(
            sink, codec(obj.compression).decompressor())
        if identity is not None:
            try:
                crypto.decrypt_stream(reader, out, identity)
            except Exception:
                _raise_captured(reader, out)
                raise
        else:
            buffer = memoryview(bytearray(CHUNK))  # one buffer, reused: each stage is done with it on return
            while got := reader.readinto(buffer):
                out.write(buffer[:got])
        if not out.finish():
            raise IntegrityError(f"{obj.key} is truncated: its compressed stream has no end")
        if out.size != obj.size:
            raise IntegrityError(f"{obj.key} decodes to {out.size} bytes, the manifest says {obj.size}")

    def _decode_failure(self, obj: StoredObject, exc: Exception, identity: Any) -> BackupctlError:
        """The error to report when intact stored bytes still do not decode."""
        if isinstance(exc, DecryptionError):
            return DecryptionError(
                f"cannot decrypt {obj.key} with identity {self._identity_file} "
                f"({crypto.public_key(identity)}): {exc}; is it the key this backup was encrypted to?"
            )
        if isinstance(exc, BackupctlError):
            return exc
        return IntegrityError(
            f"{obj.key} cannot be decoded ({type(exc).__name__}: {exc}) although its checksum matches"
        )

    @staticmethod
    def _check_stored(obj: StoredObject, reader: _HashingReader) -> None:
        digest = reader.hash.hexdigest()
        if reader.size != obj.stored_size or digest != obj.sha256:
            raise IntegrityError(
                f"{obj.key} is damaged: {reader.size} bytes with sha256 {digest[:16]}..., "
                f"the manifest recorded {obj.stored_size} bytes with sha256 {obj.sha256[:16]}..."
            )

    def check(self, obj: StoredObject, decode: bool) -> None:
        """Read an object to nowhere; raises on any damage (see ``read``)."""
        self.read(obj, _NullSink(), decode=decode)  # type: ignore[arg-type]

    def seal(self, data: bytes) -> bytes:
        """Encrypt a small private document (a manifest's description of the data)."""
        self.require_repository_recipients()
        return crypto.encrypt_bytes(data, self.recipients)

    def unseal(self, data: bytes) -> bytes:
        return crypto.decrypt_bytes(data, self.identity())


def iter_reader(chunks: Iterator[bytes]) -> BinaryIO:
    """A file-like reader over generated chunks (e.g. JSON lines), for ``Pipeline.store``."""

    class _Reader(io.RawIOBase):
        def __init__(self) -> None:
            self._pending = b""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            while not self._pending:
                try:
                    self._pending = next(chunks)
                except StopIteration:
                    return 0
            n = min(len(buffer), len(self._pending))
            buffer[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n

    return io.BufferedReader(_Reader(), CHUNK)  # type: ignore[return-value]
