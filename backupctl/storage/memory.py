"""A repository in this process's memory: for fast unit tests, and for faults played at one key.

The contract is the other drivers': an object appears whole on ``commit`` or not at all, ``put_if_absent``
has one winner among any number of threads, listings are in key order, keys are checked as everywhere.
Unfinished writes leave nothing behind (the buffer dies with the writer), like a store that keeps none.

Two things the real stores cannot be made to do on demand:

- The store's clock is ``clock`` (its objects' ``modified``, the clock of leases and ``expire``), so a test
  can run it days ahead of or behind the host's.
- ``inject`` arms a fault for the next matching operations: raise an error before the store acts, after it
  acted (the answer lost on the way back, as when a connection drops), or wait first. ``requests`` records
  every operation, so a test can count what a command costs.

Not selectable from the config: tests construct it directly (``MemoryStorage()``).
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from backupctl.core.errors import ObjectNotFound, StorageError
from backupctl.storage.base import ObjectInfo, ObjectWriter, Storage, check_key

OPERATIONS = ("write", "put_if_absent", "get", "head", "list", "list_prefixes", "delete")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Fault:
    """What ``inject`` armed: the next ``times`` operations named ``operation`` on a key starting with ``key``
    wait ``delay`` seconds, then fail with ``error`` before the store acts, or after it when ``answer_lost``."""

    operation: str
    key: str
    error: BaseException | None
    delay: float
    answer_lost: bool
    times: int

    def matches(self, operation: str, key: str) -> bool:
        return self.times > 0 and self.operation == operation and key.startswith(self.key)


@dataclass(frozen=True)
class _Object:
    data: bytes
    modified: datetime
    etag: str


class _MemoryWriter(ObjectWriter):
    def __init__(self, storage: MemoryStorage, key: str) -> None:
        check_key(key)
        self._storage = storage
        self._key = key
        self._buffer: bytearray | None = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self._buffer is not None, "write after commit or abort"
        self._buffer += data
        return len(memoryview(data).cast("B"))

    def commit(self) -> None:
        assert self._buffer is not None, "commit after commit or abort"
        data, self._buffer = bytes(self._buffer), None
        self._storage._store("write", self._key, data, replace=True)

    def abort(self) -> None:
        self._buffer = None


class MemoryStorage(Storage):
    """Objects in a dict, guarded by one lock; see the module docstring."""

    def __init__(self, clock: Callable[[], datetime] = _now, name: str = "test") -> None:
        self.clock = clock
        self.location = f"memory://{name}"
        self.requests: list[tuple[str, str]] = []
        self._objects: dict[str, _Object] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    # -- faults -----------------------------------------------------------------------------------------

    def inject(self, operation: str, key: str = "", *, error: BaseException | None = None, delay: float = 0.0,
               answer_lost: bool = False, times: int = 1) -> Fault:
        """Arm a fault for the next ``times`` ``operation``s (one of ``OPERATIONS``) on keys under ``key``.

        ``error`` defaults to a ``StorageError`` naming the injection; with ``answer_lost`` the operation
        takes effect and then the error is raised, as if the store's answer never arrived.
        """
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}: one of {', '.join(OPERATIONS)}")
        if error is None and not delay:
            error = StorageError(f"injected {operation} failure at {key or '/'} in {self.location}")
        fault = Fault(operation, key, error, delay, answer_lost, times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def _begin(self, operation: str, key: str) -> Fault | None:
        """Record the request and play the fault armed for it, if any, up to the store's action."""
        with self._lock:
            self.requests.append((operation, key))
            fault = next((f for f in self._faults if f.matches(operation, key)), None)
            if fault is not None:
                fault.times -= 1
        if fault is None:
            return None
        if fault.delay:
            time.sleep(fault.delay)
        if fault.error is not None and not fault.answer_lost:
            raise fault.error
        return fault

    @staticmethod
    def _end(fault: Fault | None) -> None:
        """The store acted; an answer-lost fault fails the call now."""
        if fault is not None and fault.answer_lost and fault.error is not None:
            raise fault.error

    # -- the interface ----------------------------------------------------------------------------------

    def _store(self, operation: str, key: str, data: bytes, replace: bool) -> bool:
        fault = self._begin(operation, key)
        with self._lock:
            stored = replace or key not in self._objects
            if stored:
                self._objects[key] = _Object(data, self.clock(), hashlib.md5(data).hexdigest())  # an etag, as S3 has
        self._end(fault)
        return stored

    def open_write(self, key: str) -> ObjectWriter:
        return _MemoryWriter(self, key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        check_key(key)
        return self._store("put_if_absent", key, bytes(data), replace=False)

    def _object(self, operation: str, key: str) -> _Object | None:
        check_key(key)
        fault = self._begin(operation, key)
        with self._lock:
            found = self._objects.get(key)
        self._end(fault)
        return found

    def get(self, key: str) -> BinaryIO:
        found = self._object("get", key)
        if found is None:
            raise ObjectNotFound(f"{key} does not exist in {self.location}")
        return io.BytesIO(found.data)

    def head(self, key: str) -> ObjectInfo | None:
        found = self._object("head", key)
        return None if found is None else ObjectInfo(key, len(found.data), found.modified, found.etag)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        fault = self._begin("list", prefix)
        with self._lock:
            listed = sorted((k, o) for k, o in self._objects.items() if k.startswith(prefix))
        self._end(fault)
        for key, found in listed:
            yield ObjectInfo(key, len(found.data), found.modified, found.etag)

    def list_prefixes(self, prefix: str) -> list[str]:
        fault = self._begin("list_prefixes", prefix)
        with self._lock:
            below = [k[len(prefix):] for k in self._objects if k.startswith(prefix)]
        self._end(fault)
        return sorted({f"{prefix}{rest.split('/', 1)[0]}/" for rest in below if "/" in rest})

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            check_key(key)
            fault = self._begin("delete", key)
            with self._lock:
                self._objects.pop(key, None)
            self._end(fault)
