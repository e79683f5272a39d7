"""Opening the repository for WAL: bounded requests and a codec made for many small objects at once.

archive_command must fail in bounded time rather than hold the archiver, so the S3 client gets
``read_timeout = [wal] timeout``; and segments are compressed in parallel with each other
(``[wal] push_jobs``), so zstd runs in one shot without worker threads (``serial_codec``). Both are given
to ``repo.repository.open_repository``; nothing else differs from opening the repository for a backup.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zstandard

from backupctl.core.config import PostgresSource
from backupctl.core.errors import ConfigError
from backupctl.repo.codecs import Codec, codec
from backupctl.repo.repository import open_repository
from backupctl.storage import open_storage

if TYPE_CHECKING:
    from backupctl.core.config import Config
    from backupctl.repo.repository import Repository

IN_MEMORY_LIMIT = 64 * 1024**2  # segments up to this size are read once into memory; larger ones twice


def open_wal_repository(config: Config) -> Repository:
    """The repository, with every store request bounded by ``[wal] timeout`` and the WAL's codec.

    Like ``open_repository``; for S3 the client gets ``read_timeout = wal.timeout`` so that a store
    that stops answering fails a push in bounded time instead of holding the archiver.
    """
    if config.repository.type == "s3" and not config.repository.verify_tls:
        # The user chose an unverified certificate; one warning per request would flood the server log.
        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    storage = open_storage(config.repository, read_timeout=config.wal.timeout)
    compression = config.compression
    return open_repository(config, storage, serial_codec(codec(compression.algorithm, compression.level,
                                                               compression.threads)))


def serial_codec(base: Codec) -> Codec:
    """The same codec, but zstd in one shot and without worker threads (see ``_OneShotZstd``).

    Segments are compressed in parallel with each other (``push_jobs``), so a worker thread per object
    only adds work: on 16 MiB of pgbench WAL, zstd level 3 costs 12 ms of CPU without one and 20 ms with
    one; and only one-shot compression lets those threads run at once.
    """
    return SerialCodec(base.name, base.extension, base.level, base.threads) if base.name == "zstd" else base


@dataclass(frozen=True)
class SerialCodec(Codec):
    """zstd in one shot, without worker threads (``serial_codec``): ``push`` hands it slices of one buffer."""

    def compressor(self) -> Any:
        return _OneShotZstd(self.level)


class _OneShotZstd:
    """zstd for WAL: one-shot compression of the whole object in ``flush``, without worker threads.

    python-zstandard releases the GIL only in its one-shot ``compress()``, not in ``compressobj``, so
    pushes in parallel threads only scale this way. Objects above ``IN_MEMORY_LIMIT`` (segments of 128
    MiB and more) switch to streaming. Either way the output is one standard zstd frame with a checksum.
    """

    def __init__(self, level: int) -> None:
        self._compressor = zstandard.ZstdCompressor(level=level, threads=0, write_checksum=True)
        self._chunks: list[bytes] = []
        self._size = 0
        self._stream: Any = None

    def compress(self, data: bytes) -> bytes:
        if self._stream is not None:
            return self._stream.compress(data)
        self._chunks.append(data)
        self._size += len(data)
        if self._size <= IN_MEMORY_LIMIT:
            return b""
        self._stream = self._compressor.compressobj()
        out = b"".join(self._stream.compress(chunk) for chunk in self._chunks)
        self._chunks = []
        return out

    def flush(self) -> bytes:
        if self._stream is not None:
            return self._stream.flush()
        chunks, self._chunks = self._chunks, []
        if chunks and all(isinstance(c, memoryview) and c.obj is chunks[0].obj for c in chunks) \
                and self._size == len(chunks[0].obj):
            # Every slice of one buffer, in order (what _ViewReader hands out): compress it without a copy.
            return self._compressor.compress(chunks[0].obj)
        return self._compressor.compress(b"".join(chunks))


def select_source(config: Config, name: str | None) -> PostgresSource:
    """``--source NAME``, or the only PostgreSQL source of the config."""
    if name:
        source = config.source(name)
        if not isinstance(source, PostgresSource):
            raise ConfigError(f"source {name!r} is a {source.kind} source: WAL belongs to PostgreSQL sources")
        return source
    candidates = [s for s in config.sources.values() if isinstance(s, PostgresSource)]
    if len(candidates) != 1:
        names = ", ".join(sorted(s.name for s in candidates)) or "none"
        raise ConfigError(f"pass --source NAME: {config.file} has {len(candidates)} PostgreSQL sources ({names})")
    return candidates[0]
