"""A repository in a local directory (or any mounted filesystem).

Every write goes to a hidden temp file in the final directory, is fsynced, renamed into place and the
directory fsynced: after ``commit`` returns the object survives a power cut, and before it nothing is
visible under the key. ``put_if_absent`` uses ``link(2)``, which fails atomically when the name exists.
A directory made for a key is fsynced in its parent, and a delete fsyncs the directories it changed, so
neither a new object nor a removal can be undone by a power cut.

Files are created 0600 and directories 0700 whatever the umask: an unencrypted repository holds the
database in clear. The same helpers serve other secrets backupctl writes (``create_private``) and
read (``warn_if_readable_by_others``).
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

from backupctl.core.errors import ObjectNotFound, StorageError
from backupctl.core.log import get_logger
from backupctl.storage.base import ObjectInfo, ObjectWriter, Storage, check_key

TEMP_PREFIX = ".tmp-"
_PRUNE_RACE_ATTEMPTS = 20
_warned: set[Path] = set()


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path) -> BinaryIO:
    """A new file that only its owner can read (0600 whatever the umask); fails if ``path`` exists."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb")


def make_private_dirs(directory: Path) -> None:
    """``directory`` and its missing parents, 0700, each made durable in its parent (fsync)."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another writer: synced all the same
            os.mkdir(new, 0o700)  # the umask can only take bits away: never more than 0700
        fsync_dir(new.parent)


def warn_if_readable_by_others(path: Path, what: str) -> None:
    """One warning line per process when ``path`` (a secret) can be read by every local user."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o007 and path not in _warned:
        _warned.add(path)
        get_logger(__name__).warning(f"{what} {path} is readable by other users: chmod o-rwx {path}",
                                     mode=oct(mode & 0o777))


def _storage_error(exc: OSError, what: str, path: Path, root: Path) -> StorageError:
    """One line for an OSError on ``path`` below the repository ``root``: the absolute path, and for a
    refused permission the effective user (and why root became it) and the ``chown`` that fixes it."""
    failed = exc.filename if isinstance(exc.filename, str) else ""
    where = Path(failed if failed and not Path(failed).name.startswith(TEMP_PREFIX) else path).absolute()
    if exc.errno == errno.ENOSPC:
        return StorageError(f"{what} {where}: no space left on the repository's filesystem")
    if exc.errno == errno.EROFS:
        return StorageError(f"{what} {where}: the repository's filesystem is read-only")
    if exc.errno in (errno.EACCES, errno.EPERM):
        from backupctl.core.privileges import effective_user, switched_from_root  # the error path only

        user = effective_user()
        why = switched_from_root()
        return StorageError(f"{what} {where}: permission denied for user {user}{f' ({why})' if why else ''}; "
                            f"every writer of the repository runs as its owner: chown -R {user}: {root.absolute()}")
    return StorageError(f"{what} {where}: {exc.strerror or exc}")


class _LocalWriter(ObjectWriter):
    def __init__(self, storage: LocalStorage, key: str) -> None:
        self._final = storage.path_for(key)
        self._root = storage.root
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
                make_private_dirs(self._final.parent)
                return create_private(self._temp)
            except (FileNotFoundError, FileExistsError) as exc:
                if not attempts_left:
                    raise _storage_error(exc, "cannot write", self._final, self._root) from exc
            except OSError as exc:
                raise _storage_error(exc, "cannot write", self._final, self._root) from exc

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self._file is not None, "write after commit or abort"
        try:
            return self._file.write(data)
        except OSError as exc:
            raise _storage_error(exc, "cannot write", self._final, self._root) from exc

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
            raise _storage_error(exc, "cannot store", self._final, self._root) from exc

    def commit_if_absent(self) -> bool:
        """Publish only if the key is free: link(2) refuses an existing name atomically."""
        try:
            self._finish_temp()
            os.link(self._temp, self._final)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _storage_error(exc, "cannot store", self._final, self._root) from exc
        finally:
            self.abort()
        fsync_dir(self._final.parent)
        return True

    def abort(self) -> None:
        """Drop the temp file. Closing flushes what is still buffered, which fails again on a full disk (the
        descriptor is closed all the same): that error must not keep the temp file, nor replace the first one."""
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


class LocalStorage(Storage):
    """Objects are files below ``root``; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def path_for(self, key: str) -> Path:
        check_key(key)
        parts = key.split("/")
        if any(p.startswith(TEMP_PREFIX) for p in parts):  # the driver's own temp files are no objects
            raise StorageError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def open_write(self, key: str) -> ObjectWriter:
        return _LocalWriter(self, key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """A failed write (a full disk) drops its temp file: nothing is left for ``repo gc`` to find."""
        writer = _LocalWriter(self, key)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        return writer.commit_if_absent()

    def get(self, key: str) -> BinaryIO:
        try:
            return open(self.path_for(key), "rb")
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"{key} does not exist in {self.location}") from exc
        except OSError as exc:
            raise _storage_error(exc, "cannot read", self.path_for(key), self.root) from exc

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
        except OSError as exc:
            raise _storage_error(exc, "cannot list", directory, self.root) from exc
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
        try:
            return sorted(f"{prefix}{e.name}/" for e in os.scandir(directory) if e.is_dir())
        except OSError as exc:
            raise _storage_error(exc, "cannot list", directory, self.root) from exc

    def delete(self, keys: Iterable[str]) -> None:
        """Remove ``keys``; durable on return: every directory changed is fsynced once, at the end."""
        changed: set[Path] = set()
        for key in keys:
            path = self.path_for(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _storage_error(exc, "cannot delete", path, self.root) from exc
            changed.add(self._prune_empty_dirs(path.parent))
        for directory in sorted(changed, reverse=True):
            try:
                fsync_dir(directory)
            except FileNotFoundError:
                continue  # emptied and pruned by a later key: its parent is in ``changed``
            except OSError as exc:
                raise _storage_error(exc, "cannot delete from", directory, self.root) from exc

    def stale_temp_files(self, older_than: datetime) -> list[tuple[str, int]]:
        """The hidden temp files a killed writer left behind (listings never show them), judged by their
        mtime: the filesystem's clock, the same as the objects' ``modified``."""
        found = []
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    path = os.path.join(directory, name)
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(path)
                        if datetime.fromtimestamp(st.st_mtime, UTC) < older_than:
                            found.append((path, st.st_size))
        return found

    def remove_temp_files(self, paths: Iterable[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _prune_empty_dirs(self, directory: Path) -> Path:
        """Remove directories left empty by a delete, so listings stay cheap; returns the first one kept."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                break
            directory = directory.parent
        return directory
