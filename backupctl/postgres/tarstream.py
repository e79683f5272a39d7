"""Tar streams as pg_basebackup writes them: cut into parts of whole members, and extracted again.

pg_basebackup ``-Ft`` writes ustar archives (PostgreSQL's src/port/tar.c): 512-byte headers with a
checksum, names of at most 99 bytes, base-256 sizes from 8 GiB, regular files, directories and (in
``pg_tblspc``) symbolic links. A backup is stored as several parts, each a complete tar archive of whole
members (``zstd -d < part | tar x`` restores it), so that a restore can fetch, decompress and write the
parts in parallel. Splitting costs no copy: the parts hand out pg_basebackup's bytes through the
caller's own buffer, and only the 512-byte headers are looked at.

Extraction is a sink for ``Pipeline.read``: it writes each member as its bytes arrive, in the large
pieces the decompressor produces, and hands every regular file's bytes to a checker as they pass, so
checksums are proven without reading anything back. Writeback of each file starts as it is written
(every ``WRITEBACK_STEP`` and at its end), so the caller's final sync finds little left to write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from backupctl.core.errors import BackupctlError, IntegrityError
from backupctl.repo.pipeline import SinkError

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
END = bytes(2 * BLOCK)  # the end-of-archive marker
FILE, HARDLINK, SYMLINK, DIRECTORY = b"0", b"1", b"2", b"5"
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
WRITEBACK_STEP = 8 * 1024 * 1024  # a file's written bytes handed to the disk in pieces of this size


def _sync_file_range() -> Callable[[int, int, int], None]:
    """Linux's ``sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)``, or a no-op where there is none.

    It starts writeback of a range of a file and returns without waiting (ctypes lets go of the GIL
    meanwhile); it proves nothing about durability, and the restore still syncs before it reports
    success. The os module does not offer it.
    """
    try:
        call = ctypes.CDLL(None).sync_file_range  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):
        return lambda fd, offset, length: None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    sync_file_range_write = 2

    def start(fd: int, offset: int, length: int) -> None:
        call(fd, offset, length, sync_file_range_write)  # a failure only means the final sync does the work

    return start


start_writeback = _sync_file_range()


class ExtractionStopped(SinkError):
    """Another part of the same restore failed: this one stops (its bytes say nothing about the backup)."""


class TarFormatError(IntegrityError):
    """A tar stream is not what pg_basebackup writes: a damaged or foreign archive."""


@dataclass(frozen=True)
class Member:
    """One tar header: what follows it and where it goes."""

    name: bytes  # relative path, no trailing slash
    kind: bytes  # FILE, DIRECTORY or SYMLINK
    size: int
    mode: int
    mtime: int
    linkname: bytes

    @property
    def stored_size(self) -> int:
        """Bytes that follow the header: the data padded to whole blocks."""
        return -(-self.size // BLOCK) * BLOCK


def _number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256, for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def parse_header(block: bytes) -> Member | None:
    """The member a header describes; None for the zero block that ends an archive."""
    if block == ZERO_BLOCK:
        return None
    stored = _number(block[148:156])
    if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise TarFormatError("tar header checksum mismatch: the archive is damaged or not a tar stream")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    while name.startswith(b"./"):  # pg_basebackup writes "./pg_wal/archive_status/" so
        name = name[2:]
    kind = block[156:157]
    kind = FILE if kind in (b"\0", b"7") else kind
    return Member(name.rstrip(b"/"), kind, _number(block[124:136]), _number(block[100:108]) & 0o7777,
                  _number(block[136:148]), block[157:257].split(b"\0", 1)[0])


def _octal(value: int, width: int) -> bytes:
    """A ustar number field: octal digits and a NUL; base-256 (GNU) when the digits do not fit."""
    digits = b"%o" % value
    if len(digits) < width:
        return digits.rjust(width - 1, b"0") + b"\0"
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def tar_header(member: Member) -> bytes:
    """The 512-byte ustar header of ``member``, as ``parse_header`` reads it back (and ``tar`` does).

    Names longer than 99 bytes go into the prefix field, split at a slash, as ustar allows; the data
    directory holds none that long, so that is only for tablespaces with deep relative names.
    """
    name, prefix = member.name + (b"/" if member.kind == DIRECTORY else b""), b""
    if len(name) > 99:
        cut = name.rfind(b"/", 0, 156)
        while cut > 0 and len(name) - cut - 1 > 99:
            cut = name.rfind(b"/", 0, cut)
        if cut <= 0:
            raise BackupctlError(f"{_shown(member.name)!r} is too long for a tar archive")
        prefix, name = name[:cut], name[cut + 1:]
    block = bytearray(BLOCK)
    block[0:len(name)] = name
    block[100:108] = _octal(member.mode & 0o7777, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(member.size if member.kind == FILE else 0, 12)
    block[136:148] = _octal(member.mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = member.kind
    block[157:157 + len(member.linkname)] = member.linkname
    block[257:265] = b"ustar\x0000"
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _read_exactly(source: BinaryIO, view: memoryview) -> int:
    """Fill ``view``; fewer bytes only at the end of the stream."""
    done = 0
    while done < len(view):
        got = source.readinto(view[done:])
        if not got:
            break
        done += got
    return done


class TarSplitter:
    """Cuts one tar stream into parts of whole members, each a complete tar archive.

    A part ends at the first member boundary after ``part_bytes``; members that ``skip`` picks are left
    out (pg_basebackup's copy of WAL, which the archive holds already). Parts are read one after
    another: ``parts()`` yields the next one only after the previous one was read to its end. The
    content of the member named ``capture`` is kept in ``captured`` on the way (the backup_manifest
    that pg_basebackup appends to its stdout).
    """

    def __init__(self, source: BinaryIO, part_bytes: int, skip: Callable[[Member], bool] = lambda m: False,
                 capture: bytes | None = None) -> None:
        self.source = source
        self.part_bytes = part_bytes
        self.skip = skip
        self.capture = capture
        self.captured = bytearray()
        self.bytes_in = 0  # of the stream, skipped members included
        self.ended = False
        self._pending: bytes | None = None  # a header already read, which starts the next part
        self._scratch: bytearray | None = None

    def parts(self) -> Iterator[TarPart]:
        """The parts, in order; none for an empty stream (a FIFO that pg_basebackup never opened)."""
        first = bytearray(BLOCK)
        got = self.read_into(memoryview(first), whole=True)
        if not got:
            return
        if got < BLOCK:
            raise TarFormatError("the tar stream ended inside a header")
        self.push_back(bytes(first))
        while not self.ended:
            part = TarPart(self)
            yield part
            if not part.finished:
                raise BackupctlError("internal error: a tar part was abandoned before its end")

    def read_header(self) -> bytes:
        if self._pending is not None:
            header, self._pending = self._pending, None
            return header
        block = bytearray(BLOCK)
        if self.read_into(memoryview(block), whole=True) < BLOCK:
            raise TarFormatError("the tar stream ended inside a header: pg_basebackup stopped early")
        return bytes(block)

    def push_back(self, header: bytes) -> None:
        self._pending = header

    def read_into(self, view: memoryview, whole: bool = False) -> int:
        """Bytes from the stream into ``view``: some (at least one unless at its end), or all with ``whole``."""
        done = 0
        while done < len(view):
            got = self.source.readinto(view[done:])
            if not got:
                break
            done += got
            if not whole:
                break
        self.bytes_in += done
        return done

    def discard(self, count: int) -> int:
        """Read and drop up to ``count`` bytes (a skipped member); how many were there."""
        if self._scratch is None:
            self._scratch = bytearray(1024 * 1024)
        return self.read_into(memoryview(self._scratch)[:min(count, len(self._scratch))])

    def finish(self) -> None:
        """After the end marker: only zero padding may follow; read it, so the writer can exit."""
        while got := self.discard(1024 * 1024):
            if any(memoryview(self._scratch or b"")[:got]):
                raise TarFormatError("data after the end of the tar archive")
        self.ended = True


class TarPart(io.RawIOBase):
    """One part of a split tar stream, read like a file; see ``TarSplitter``."""

    def __init__(self, splitter: TarSplitter) -> None:
        self._splitter = splitter
        self._out = memoryview(b"")  # a header or the end marker, still to hand out
        self._data_left = 0  # of the current member's data
        self._pad_left = 0  # the zero padding after it
        self._skipping = False
        self._capturing = False
        self._closing = False
        self.finished = False  # read to its end
        self.last = False  # and the stream ended with it
        self.members = 0
        self.size = 0  # bytes handed out

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            if self._out:
                n = min(len(self._out), len(view) - filled)
                view[filled:filled + n] = self._out[:n]
                self._out = self._out[n:]
                filled += n
                self.size += n
            elif self._closing:
                self.finished = True
                break
            elif self._data_left or self._pad_left:
                got = self._pass(view[filled:])
                filled += got
                self.size += got
            else:
                self._next_member()
        return filled

    def _pass(self, view: memoryview) -> int:
        """The current member's data and padding, read straight into the caller's buffer (or dropped)."""
        splitter = self._splitter
        want = self._data_left + self._pad_left
        got = splitter.discard(want) if self._skipping else splitter.read_into(view[:want])
        if not got:
            raise TarFormatError("the tar stream ended inside a member: pg_basebackup stopped early")
        in_data = min(got, self._data_left)
        if self._capturing:
            splitter.captured += view[:in_data]
        self._data_left -= in_data
        self._pad_left -= got - in_data
        return 0 if self._skipping else got

    def _next_member(self) -> None:
        """Read the next header: start its member, or end the part (at a boundary or the stream's end)."""
        splitter = self._splitter
        header = splitter.read_header()
        member = parse_header(header)
        if member is None:
            splitter.finish()
            self.last = True
            self._close()
            return
        if self.members and self.size >= splitter.part_bytes:
            splitter.push_back(header)
            self._close()
            return
        self._data_left, self._pad_left = member.size, member.stored_size - member.size
        self._skipping = splitter.skip(member)
        self._capturing = member.name == splitter.capture and not self._skipping
        if not self._skipping:
            self.members += 1
            self._out = memoryview(header)

    def _close(self) -> None:
        self._closing = True
        self._out = memoryview(END)


class FileChecks(Protocol):
    """What an extraction asks about each regular file, and tells once its bytes have passed."""

    def begin(self, name: bytes, size: int) -> Any:
        """A hasher (``update``, ``hexdigest``) when the file is to be written, None to leave it alone."""

    def end(self, name: bytes, size: int, hasher: Any) -> None:
        """The file is written: raise when it is not what it should be."""


class TarExtractor(io.RawIOBase):
    """Writes a tar stream into ``root`` as it arrives: a sink for ``Pipeline.read``.

    Nothing lands outside ``root``, whatever the archive says: names are relative and without ``..``,
    symbolic links are refused (pg_basebackup's tar format lists tablespaces in ``tablespace_map``, and the
    restore makes the ``pg_tblspc`` links itself), and every path is walked one directory at a time with
    ``O_NOFOLLOW``, so no symlink in the target is followed either, except a ``pg_wal`` link at the top of
    the data directory (WAL on its own disk; ``keep_link`` says which). What is in the way of a member (a
    file where a directory goes) is replaced, so the same code serves a restore into an empty directory
    and a delta restore over an old copy. Modes keep at most the owner's and the group's read and write
    bits (and search on directories): a forged archive makes no set-id or world-writable file.
    """

    def __init__(self, root: Path, checks: FileChecks, keep_link: Callable[[bytes], bool] = lambda n: False,
                 stop: threading.Event | None = None) -> None:
        self._root = os.fsencode(root)
        self._root_fd = os.open(self._root, _DIRECTORY_FLAGS & ~os.O_NOFOLLOW)  # the target itself is trusted
        self._parent: tuple[bytes, int] | None = None  # the last parent directory walked to, and its fd
        self._checks = checks
        self._keep_link = keep_link
        self._stop = stop
        self._header = bytearray()
        self._member: Member | None = None
        self._fd = -1
        self._hasher: Any = None
        self._data_left = 0
        self._pad_left = 0
        self._written = 0  # bytes of the current file written
        self._queued = 0  # and of those, how many have been handed to the disk (``start_writeback``)
        self._ended = False
        self.directories: list[bytes] = []  # names, in archive order
        self.files = 0
        self.bytes_written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._stop is not None and self._stop.is_set():
            raise ExtractionStopped("extraction stopped: another part of the restore failed")
        view = memoryview(data).cast("B")
        taken = len(view)
        while view:
            if self._data_left or self._pad_left:
                view = self._data(view)
            elif self._ended:
                if any(view):
                    raise TarFormatError("data after the end of the tar archive")
                break
            else:
                need = BLOCK - len(self._header)
                self._header += view[:need]
                view = view[need:]
                if len(self._header) == BLOCK:
                    self._start(bytes(self._header))
                    self._header.clear()
        return taken

    def finish(self) -> None:
        """The stream is over: it must have ended with the end marker, after a complete member."""
        if not self._ended or self._member is not None:
            raise TarFormatError("the tar archive is truncated: it has no end marker")

    def close(self) -> None:
        for fd in (self._fd, self._parent[1] if self._parent else -1, self._root_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._root_fd = -1
        self._parent = None
        super().close()

    def _start(self, header: bytes) -> None:
        member = parse_header(header)
        if member is None:
            self._ended = True
            return
        parts = member.name.split(b"/")
        if not member.name or member.name.startswith(b"/") or b".." in parts:
            raise TarFormatError(f"tar member {_shown(member.name)!r} would land outside the data directory: "
                                 "the backup is damaged or forged")
        if member.kind == DIRECTORY:
            self._make_directory(member.name, member.mode & 0o750 or 0o700)
            self.directories.append(member.name)
        elif member.kind == FILE:
            self._member = member
            self._data_left, self._pad_left = member.size, member.stored_size - member.size
            self._written = self._queued = 0
            self._hasher = self._checks.begin(member.name, member.size)
            if self._hasher is not None:
                self._fd = self._create(member.name, member.mode & 0o640 or 0o600)
            if not member.size:
                self._end_file()
        elif member.kind == SYMLINK:
            raise TarFormatError(f"tar member {_shown(member.name)!r} is a symbolic link (to "
                                 f"{_shown(member.linkname)!r}), which a backup never holds: it is damaged or forged")
        else:
            raise TarFormatError(f"unexpected tar member {_shown(member.name)!r} "
                                 f"of type {member.kind.decode(errors='replace')!r}")

    def _data(self, view: memoryview) -> memoryview:
        take = min(len(view), self._data_left)
        if take:
            chunk = view[:take]
            if self._fd >= 0:
                self._hasher.update(chunk)
                while chunk:
                    chunk = chunk[os.write(self._fd, chunk):]
                self.bytes_written += take
                self._written += take
            self._data_left -= take
            if not self._data_left:
                self._end_file()
            elif self._written - self._queued >= WRITEBACK_STEP:
                start_writeback(self._fd, self._queued, self._written - self._queued)
                self._queued = self._written
            return view[take:]
        pad = min(len(view), self._pad_left)
        self._pad_left -= pad
        return view[pad:]

    def _end_file(self) -> None:
        member = self._member
        assert member is not None
        if self._fd >= 0:
            start_writeback(self._fd, self._queued, 0)  # the rest of the file (0: to its end)
            os.utime(self._fd, (member.mtime, member.mtime))
            os.close(self._fd)
            self._fd = -1
            self.files += 1
            self._checks.end(member.name, member.size, self._hasher)
        self._member = self._hasher = None

    def _parent_fd(self, name: bytes) -> tuple[int, bytes]:
        """The directory that holds ``name`` (made if missing, never through a symlink) and its last component.

        Members come grouped by directory, so the last directory walked to is kept open.
        """
        parent, _, base = name.rpartition(b"/")
        if self._parent is not None and self._parent[0] == parent:
            return self._parent[1], base
        fd = os.dup(self._root_fd)
        try:
            walked = b""
            for component in parent.split(b"/") if parent else []:
                walked = walked + b"/" + component if walked else component
                inner = self._open_directory(fd, component, walked, 0o700)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        if self._parent is not None:
            os.close(self._parent[1])
        self._parent = (parent, fd)
        return fd, base

    def _open_directory(self, dir_fd: int, component: bytes, name: bytes, mode: int) -> int:
        """``component`` of ``dir_fd`` as a directory: opened, or made first; a file in the way is replaced."""
        for _ in range(4):  # replace what is in the way, make, open
            try:
                return os.open(component, _DIRECTORY_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # another part of the restore made it meanwhile
                    os.mkdir(component, mode, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if stat.S_ISLNK(os.lstat(component, dir_fd=dir_fd).st_mode):
                    if self._keep_link(name):
                        return os.open(component, _DIRECTORY_FLAGS & ~os.O_NOFOLLOW, dir_fd=dir_fd)
                    raise TarFormatError(f"{_shown(os.path.join(self._root, name))} is a symbolic link: a restore "
                                         "writes only inside the data directory; remove the link") from exc
                os.unlink(component, dir_fd=dir_fd)
        raise TarFormatError(f"cannot make directory {_shown(os.path.join(self._root, name))}: it keeps changing")

    def _make_directory(self, name: bytes, mode: int) -> None:
        parent_fd, base = self._parent_fd(name)
        fd = self._open_directory(parent_fd, base, name, mode)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _create(self, name: bytes, mode: int) -> int:
        """Open ``name`` to be written from scratch; a directory or symlink in the way is removed first."""
        parent_fd, base = self._parent_fd(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        for attempt in range(2):
            try:
                fd = os.open(base, flags, mode, dir_fd=parent_fd)
                break
            except OSError as exc:
                if exc.errno not in (errno.EISDIR, errno.ELOOP) or attempt:
                    raise
                if stat.S_ISDIR(os.lstat(base, dir_fd=parent_fd).st_mode):
                    shutil.rmtree(base, dir_fd=parent_fd)
                else:
                    os.unlink(base, dir_fd=parent_fd)
        os.fchmod(fd, mode)
        return fd


def _shown(name: bytes) -> str:
    return name.decode(errors="replace")


def remove_path(path: bytes) -> None:
    """Whatever is at ``path``: gone (a directory with its contents)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
