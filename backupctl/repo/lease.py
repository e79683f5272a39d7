"""Leases: who may back up, expire or collect garbage in a shared repository, and what readers hold.

The store is the only coordinator (many hosts share one bucket, no server of our own), so a lease is an
object written with a conditional write (``put_if_absent``), renewed by its holder and judged by the store's
own clock (the objects' Last-Modified), never by the clocks of the hosts that look at it.

Exclusive leases are a sequence of generations, ``<source>/locks/<name>.<generation>.json``. Taking the lease
means creating generation N+1 when generation N is released or expired: two takers race for the same key and
the store lets one win. The newest generation is never deleted (release overwrites it with a "released"
body), so a taker working from a stale listing that recreates an old, already-cleaned generation sees a newer
one when it lists again and backs off. Renewal overwrites the holder's own object, which moves its
Last-Modified forward.

Shared (reader) leases are one object per reader under ``<source>/locks/readers/``; they never conflict,
they tell expire and gc which backups a restore, verify or drill is reading right now.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backupctl.core.errors import BackupctlError, ObjectNotFound, StorageError
from backupctl.core.log import get_logger
from backupctl.core.signals import shielded
from backupctl.repo import layout
from backupctl.storage.base import ObjectInfo, Storage

log = get_logger(__name__)

DEFAULT_TTL = 120.0
STORE_CLOCK_STEP = 1.0  # S3 keeps Last-Modified in whole seconds: a lease may look expired a second early


class LeaseHeld(BackupctlError):
    """Another live process holds the lease: the message names it and when its lease expires."""


class LeaseLost(BackupctlError):
    """This process's lease expired and was taken over: it must not publish anything."""


@dataclass(frozen=True)
class LeaseInfo:
    """One lease as stored, with its expiry on the store's clock.

    ``started_at`` is the holder's clock, which may be off by days; ``store_started_at`` is the same moment on
    the store's clock, for comparing with the store's times (Last-Modified, multipart Initiated): the holder
    records its clock at each write (``written_at``), and the store's Last-Modified of that write gives the
    difference. A slow write makes it a little late (the write's duration), rounding a second early.
    """

    key: str
    host: str
    pid: int
    operation: str
    started_at: datetime
    store_started_at: datetime
    expires_at: datetime
    backups: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    released: bool = False
    progress: dict[str, Any] | None = None  # the holder's counts at its latest write (``Lease.progress``)

    def describe(self) -> str:
        return (f"{self.host} pid {self.pid} ({self.operation}) since {_iso(self.started_at)} "
                f"(expires {_iso(self.expires_at)})")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def store_now(storage: Storage, source: str | None) -> datetime:
    """The store's current time: the Last-Modified of a probe object written and removed for the purpose."""
    key = layout.clock_probe_key(source, f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
    storage.put(key, b"")
    try:
        info = storage.head(key)
    finally:
        with shielded():
            storage.delete([key])
    if info is None:
        raise StorageError(f"the store lost the clock probe {key} right after writing it")
    return info.modified


def _read(storage: Storage, info: ObjectInfo) -> LeaseInfo | None:
    """Parse a lease object; None when it vanished meanwhile. Foreign or damaged bodies are errors."""
    try:
        body = json.loads(storage.get_bytes(info.key))
        started_at = datetime.fromisoformat(body["started_at"])
        written_at = body.get("written_at")  # absent in leases of older versions: take their clock as right
        skew = info.modified - datetime.fromisoformat(written_at) if written_at else timedelta(0)
        return LeaseInfo(
            key=info.key, host=body["host"], pid=int(body["pid"]), operation=body["operation"],
            started_at=started_at, store_started_at=started_at + skew,
            expires_at=info.modified + timedelta(seconds=float(body["ttl"])),
            backups=list(body.get("backups", [])), details=dict(body.get("details", {})),
            released=bool(body.get("released", False)), progress=body.get("progress"),
        )
    except ObjectNotFound:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"lease object {info.key} is not a backupctl lease ({exc}); "
                           "remove it if nothing else writes there") from exc


class Lease:
    """A lease this process holds; a daemon thread renews it until ``release``.

    Others judge it by the store's Last-Modified of its latest write, which is no earlier than the moment
    that write was sent, less the store's rounding (``STORE_CLOCK_STEP``): so it is surely held for ``ttl``
    minus that after the start of each successful write. Two successful writes that started further apart
    (the process was stopped, or the store was unreachable) leave a gap in which others may have seen it
    expired and acted (gc removing what it protects, another process taking it over); ``renew`` reports
    such a lapse, even once renewal resumed.
    """

    def __init__(self, storage: Storage, key: str, body: dict[str, Any], ttl: float) -> None:
        self.storage = storage
        self.key = key
        self.body = body
        self.ttl = ttl
        self._renewed = time.monotonic()  # made just before its first write, so never later than it
        self._lapse: float | None = None  # the first gap between successful writes that others may see
        self._lock = threading.Lock()
        # How far the holder is (``core.progress.Meter.snapshot``), written with each renewal: `status` on
        # any host shows it, as fresh as the last renewal (every quarter of the ttl).
        self.progress: Callable[[], dict[str, Any]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {key}", daemon=True)

    def _write(self) -> None:
        started = time.monotonic()
        self.body["written_at"] = datetime.now(UTC).isoformat()
        body = {**self.body, "progress": self.progress()} if self.progress is not None else self.body
        self.storage.put(self.key, json.dumps(body, sort_keys=True).encode())
        with self._lock:
            if self._lapse is None and started - self._renewed > self.ttl - STORE_CLOCK_STEP:
                self._lapse = started - self._renewed
            self._renewed = max(self._renewed, started)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._write()
            except (StorageError, OSError) as exc:
                # The next tick tries again; the lease only lapses after a whole ttl of failures.
                log.warning("lease renewal failed", key=self.key, error=str(exc))

    def start(self) -> Lease:
        self._thread.start()
        return self

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def ensure_held(self) -> None:
        """Raise ``LeaseLost`` when the lease was taken over; a reader's lease conflicts with nobody."""

    def renew(self) -> None:
        """Renew now, and raise ``LeaseLost`` unless the lease was held without a gap since it was taken.

        For the step that must only happen under the lease (publishing a backup): after this, the lease
        is surely held for another ``ttl`` less ``STORE_CLOCK_STEP``.
        """
        self._write()
        if self._lapse is not None:
            raise LeaseLost(f"lease {self.key} lapsed: {self._lapse:.1f}s without renewal, long enough for "
                            f"others to see it expire (lease_ttl {self.ttl:g}s; was this process stopped, or the "
                            "store unreachable?); what it protects may have been removed, so nothing was published")
        self.ensure_held()

    def release(self) -> None:
        """Stop renewing and give the lease back."""
        self.stop_renewing()
        self.storage.delete([self.key])


class ExclusiveLease(Lease):
    """One generation of an exclusive lease."""

    def __init__(self, storage: Storage, prefix: str, generation: int, body: dict[str, Any], ttl: float) -> None:
        super().__init__(storage, layout.lease_generation_key(prefix, generation), body, ttl)
        self.prefix = prefix
        self.generation = generation

    def ensure_held(self) -> None:
        generations = _generations(self.storage, self.prefix)
        newest = max(generations, default=0)
        if newest != self.generation:
            holder = _read(self.storage, generations[newest])
            who = holder.describe() if holder else "another process"
            raise LeaseLost(f"lease {self.key} expired and was taken over by {who}; nothing was published")

    def release(self) -> None:
        """Overwrite the generation with a released body: the newest generation must never vanish."""
        self.stop_renewing()
        self.body["released"] = True
        self._write()


def _generations(storage: Storage, prefix: str) -> dict[int, ObjectInfo]:
    found: dict[int, ObjectInfo] = {}
    for info in storage.list(prefix):
        generation = layout.lease_generation(prefix, info.key)
        if generation is not None:
            found[generation] = info
    return found


def superseded(storage: Storage, source: str | None) -> list[ObjectInfo]:
    """Exclusive-lease generations older than the newest of their name: a taker that won deletes them, but
    one killed before it could, or a stale taker that recreated an old generation and backed off, leaves
    them. Only the newest generation ever decides anything, so these can go at any time."""
    by_name: dict[str, list[tuple[int, ObjectInfo]]] = {}
    for info in storage.list(layout.locks_prefix(source)):
        parsed = layout.lease_name_and_generation(source, info.key)
        if parsed is not None:
            by_name.setdefault(parsed[0], []).append((parsed[1], info))
    return [info for generations in by_name.values() for _number, info in sorted(generations)[:-1]]


def _body(operation: str, ttl: float, **extra: Any) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {"host": socket.gethostname(), "pid": os.getpid(), "operation": operation,
            "started_at": now, "written_at": now, "ttl": ttl, **extra}


def _take_exclusive(storage: Storage, source: str | None, name: str, body: dict[str, Any],
                    ttl: float) -> ExclusiveLease:
    """Create the next generation if the newest one is released or expired; else raise ``LeaseHeld``."""
    prefix = layout.lease_prefix(source, name)
    what = f"{source} {name}" if source else name
    generations = _generations(storage, prefix)
    newest = max(generations, default=0)
    if newest:
        holder = _read(storage, generations[newest])
        if holder is not None and not holder.released and holder.expires_at > store_now(storage, source):
            raise LeaseHeld(f"{what} is locked by {holder.describe()}; if that process is gone, "
                            "the lease can be taken over once it expires")
    lease = ExclusiveLease(storage, prefix, newest + 1, body, ttl)
    if not storage.create(lease.key, json.dumps(body, sort_keys=True).encode()):
        info = storage.head(lease.key)
        winner = _read(storage, info) if info else None
        who = winner.describe() if winner else "another process"
        raise LeaseHeld(f"{what} was just locked by {who}")
    try:
        lease.ensure_held()
    except LeaseLost as exc:
        # A newer generation exists: our key was a stale one recreated after cleanup. Leave it to gc.
        raise LeaseHeld(f"{what} is locked by a newer lease; try again") from exc
    stale = [info.key for number, info in generations.items() if number < lease.generation]
    storage.delete(stale)
    log.debug("lease taken", key=lease.key, operation=body["operation"])
    return lease


@contextmanager
def exclusive(storage: Storage, source: str | None, name: str, *, operation: str,
              details: dict[str, Any] | None = None, ttl: float = DEFAULT_TTL) -> Iterator[Lease]:
    """Hold the exclusive lease ``name`` of ``source`` (repo-wide when None) for the ``with`` block."""
    lease = _take_exclusive(storage, source, name, _body(operation, ttl, details=details or {}), ttl).start()
    try:
        yield lease
    finally:
        with shielded():
            _release(lease)


@contextmanager
def shared(storage: Storage, source: str, *, operation: str, backups: list[str],
           ttl: float = DEFAULT_TTL) -> Iterator[Lease]:
    """Announce that this process reads ``backups`` of ``source``, so expire and gc leave them alone."""
    key = layout.reader_lease_key(source, f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
    lease = Lease(storage, key, _body(operation, ttl, backups=backups), ttl)
    lease._write()
    lease.start()
    try:
        yield lease
    finally:
        with shielded():
            _release(lease)


def _release(lease: Lease) -> None:
    try:
        lease.release()
    except (StorageError, OSError) as exc:
        log.warning("could not release lease; it lapses when its ttl runs out", key=lease.key, error=str(exc))


def live_readers(storage: Storage, source: str) -> list[LeaseInfo]:
    """Unexpired reader leases of ``source`` (their ``backups`` must not be removed)."""
    infos = list(storage.list(layout.reader_leases_prefix(source)))
    if not infos:
        return []
    now = store_now(storage, source)
    leases = (_read(storage, info) for info in infos)
    return [lease for lease in leases if lease is not None and lease.expires_at > now]


def newest_holder(storage: Storage, source: str | None, name: str) -> LeaseInfo | None:
    """The newest generation of an exclusive lease unless it was released, expired or not: reading only (a
    monitoring host may not write), so the caller judges its expiry."""
    generations = _generations(storage, layout.lease_prefix(source, name))
    if not generations:
        return None
    holder = _read(storage, generations[max(generations)])
    return None if holder is None or holder.released else holder


def live_exclusive(storage: Storage, source: str | None, name: str) -> LeaseInfo | None:
    """The current holder of an exclusive lease, or None when it is free, released or expired."""
    holder = newest_holder(storage, source, name)
    if holder is None or holder.expires_at <= store_now(storage, source):
        return None
    return holder
