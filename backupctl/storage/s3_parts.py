"""The part buffers of an S3 storage's writers, and request bodies read from them without a copy.

Kept apart from ``s3``, the driver, because it needs nothing of boto3: only the memory bound that every
writer of one storage shares (``PartBuffers``), the part sizes of a multipart upload (``part_size``), and
the seekable body botocore sends from the buffers (``RequestBody``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import threading
from typing import Any

log = logging.getLogger(__name__)

MAX_PART_SIZE = 5 * 1024**3  # S3's limit for one part and for one PutObject
PARTS_PER_SIZE_STEP = 1000  # the part size doubles after every this many parts
BUDGET_WAIT = 60.0  # seconds a writer waits for a part buffer before it takes one beyond the budget


def part_size(base: int, number: int) -> int:
    """Size of part ``number`` (from 1): doubling every 1000 parts keeps a huge stream within 10,000."""
    return min(base << ((number - 1) // PARTS_PER_SIZE_STEP), MAX_PART_SIZE)


class PartBuffers:
    """Part buffers of one storage: at most ``budget`` in use (being filled or uploaded), and reused.

    The budget is what bounds an S3 writer's memory, for all writers of the storage together. Buffers
    are anonymous mappings, so only the bytes a part really fills become resident, and reuse keeps
    memory flat however many objects a process writes (freeing and allocating 16 MiB blocks from
    several threads fragments the heap and ratchets RSS up). A writer that would wait for a buffer
    longer than ``BUDGET_WAIT`` (writers that hold buffers and wait for each other's data) takes one
    beyond the budget, with a warning: more memory rather than a hang.
    """

    def __init__(self, budget: int) -> None:
        self._free: dict[int, list[mmap.mmap]] = {}
        self._budget = threading.Semaphore(budget)
        self._keep = budget
        self._over: set[int] = set()  # buffers handed out beyond the budget
        self._lock = threading.Lock()

    def take(self, size: int, block: bool = True) -> mmap.mmap | None:
        """A buffer of ``size`` bytes; None when ``block`` is false and the budget is spent."""
        within = self._budget.acquire(timeout=BUDGET_WAIT) if block else self._budget.acquire(blocking=False)
        if not within and not block:
            return None
        if not within:
            log.warning("S3 part buffers: all of the budget stayed in use for %.0fs; taking one more", BUDGET_WAIT)
        with self._lock:
            free = self._free.get(size)
            buffer = free.pop() if free else mmap.mmap(-1, size)
            if not within:
                self._over.add(id(buffer))
        return buffer

    def give_back(self, buffer: mmap.mmap) -> None:
        with self._lock:
            within = id(buffer) not in self._over
            self._over.discard(id(buffer))
            free = self._free.setdefault(len(buffer), [])
            if len(free) < self._keep:
                free.append(buffer)
            else:
                unmap(buffer)
        if within:
            self._budget.release()

    def close(self) -> None:
        with self._lock:
            for free in self._free.values():
                for buffer in free:
                    unmap(buffer)
            self._free.clear()


def unmap(buffer: mmap.mmap) -> None:
    """Unmap ``buffer`` now, or when the last view of it goes if a view is still alive.

    A request interrupted by a signal leaves its frames, and the views of its body that botocore read,
    alive in the traceback of the ``Interrupted`` on its way up, which is exactly when writers abort and
    the storage closes: closing the mapping then raises BufferError and hides the interruption. The
    views keep the mmap object alive, and its mapping is freed with the last of them.
    """
    with contextlib.suppress(BufferError):
        buffer.close()


class RequestBody(io.RawIOBase):
    """The bytes of one request (a part, or a whole small object) read from part buffers without a copy.

    Seekable, so botocore can checksum it, sign it and rewind it for a retry.
    """

    def __init__(self, views: list[memoryview]) -> None:
        super().__init__()
        self._views = [v for v in views if len(v)]
        self._size = sum(len(v) for v in self._views)
        self._pos = 0

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + offset))
        return self._pos

    def read(self, size: int | None = -1) -> Any:
        """The next bytes: a read-only view of the buffer itself when they lie in one buffer (botocore
        checksums, signs and sends it without a copy), joined into bytes only across two."""
        if size is None or size < 0:
            size = self._size - self._pos
        pieces = []
        position = 0
        for view in self._views:
            if size <= 0:
                break
            end = position + len(view)
            if self._pos < end:
                start = self._pos - position
                piece = view[start:start + size]
                pieces.append(piece)
                self._pos += len(piece)
                size -= len(piece)
            position = end
        if len(pieces) == 1:
            return pieces[0].toreadonly()
        return b"".join(pieces)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)
