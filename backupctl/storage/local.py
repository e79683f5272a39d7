"""A repository in a local directory (or any mounted filesystem).

Every write goes to a hidden temp file in the final directory, is fsynced, renamed into place and the
directory fsynced: after ``commit`` returns the object survives a power cut, and before it nothing is
visible under the key. ``put_if_absent`` uses ``link(2)``, which fails atomically when the name exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from backupctl.errors import ObjectNotFound, StorageError
from backupctl.storage.base import ObjectInfo, ObjectWriter, Storage

TEMP_PREFIX = ".tmp-"
_PRUNE_RACE_ATTEMPTS = 20


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"{what}: no space left on the repository's filesystem")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"{what}: permission denied ({exc.strerror}); check the repository's owner")
    return StorageError(f"{what}: {exc.strerror or exc}")


class _LocalWriter(ObjectWriter):
    def __init__(self, storage: LocalStorage, key: str) -> None:
        self._final = storage.path_for(key)
        self._key = key
        self._temp = self._final.parent / f"{TEMP_PREFIX}{self._final.name}.{secrets.token_hex(6)}"
        self._file: BinaryIO | None = self._open_temp()

    def _open_temp(self) -> BinaryIO:
        """Make the directory and open the temp file in it.

        A concurrent delete prunes directories it leaves empty, so the one just made can vanish before
        the temp file is in it (open fails ENOENT, or mkdir sees EEXIST and then no directory): try
        again. Once the temp file exists the directory is not empty and no prune can remove it.
        """
        attempts_left = _PRUNE_RACE_ATTEMPTS
        while True:
            attempts_left -= 1
            try:
                self._final.parent.mkdir(parents=True, exist_ok=True)
                return open(self._temp, "xb")
            except (FileNotFoundError, FileExistsError) as exc:
                if not attempts_left:
                    raise _storage_error(exc, f"cannot write {self._key}") from None
            except OSError as exc:
                raise _storage_error(exc, f"cannot write {self._key}") from None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self._file is not None, "write after commit or abort"
        try:
            return self._file.write(data)
        except OSError as exc:
            raise _storage_error(exc, f"cannot write {self._key}") from None

    def _finish_temp(self) -> None:
        """Flush and fsync the temp file, so the rename that follows publishes complete data."""
        assert self._file is not None, "commit after commit or abort"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def commit(self) -> None:
        try:
            self._finish_temp()
            os.replace(self._temp, self._final)
            fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise _storage_error(exc, f"cannot store {self._key}") from None

    def commit_if_absent(self) -> bool:
        """Publish only if the key is free: link(2) refuses an existing name atomically."""
        try:
            self._finish_temp()
            os.link(self._temp, self._final)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _storage_error(exc, f"cannot store {self._key}") from None
        finally:
            self.abort()
        fsync_dir(self._final.parent)
        return True

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


class LocalStorage(Storage):
    """Objects are files below ``root``; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def path_for(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(TEMP_PREFIX) for p in parts):
            raise StorageError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def open_write(self, key: str) -> ObjectWriter:
        return _LocalWriter(self, key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        writer = _LocalWriter(self, key)
        writer.write(data)
        return writer.commit_if_absent()

    def get(self, key: str) -> BinaryIO:
        try:
            return open(self.path_for(key), "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{key} does not exist in {self.location}") from None
        except OSError as exc:
            raise _storage_error(exc, f"cannot read {key}") from None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self.path_for(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names, not the whole repository.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base.split("/")) if base else self.root
        yield from self._walk(start, f"{base}/" if base else "", prefix)

    def _walk(self, directory: Path, rel: str, prefix: str) -> Iterator[ObjectInfo]:
        """Depth-first in key order: a directory sorts as its name plus "/", as its keys do."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        ordered = sorted(entries, key=lambda e: e.name + "/" if e.is_dir() else e.name)
        for entry in ordered:
            key = rel + entry.name
            if entry.is_dir():
                if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                    yield from self._walk(Path(entry.path), key + "/", prefix)
            elif not entry.name.startswith(TEMP_PREFIX) and key.startswith(prefix):
                st = entry.stat()
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list_prefixes(self, prefix: str) -> list[str]:
        directory = self.root.joinpath(*prefix.strip("/").split("/")) if prefix.strip("/") else self.root
        if not directory.is_dir():
            return []
        return sorted(f"{prefix}{e.name}/" for e in os.scandir(directory) if e.is_dir())

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self.path_for(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _storage_error(exc, f"cannot delete {key}") from None
            self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, directory: Path) -> None:
        """Remove directories left empty by a delete, so listings stay cheap."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent
