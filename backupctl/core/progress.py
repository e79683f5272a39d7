"""Progress of a long operation, as services report it and the CLI shows it.

Services never print: a backup, restore, verify, drill or expire takes a ``ProgressObserver`` (by default
``NO_PROGRESS``) and reports through a ``Meter``. The CLI passes an observer that draws a progress line on a
terminal (``cli.progress``); cron, systemd and pipes get the no-op one.

The meter is fed from the hot loops (the pipeline's chunk loop, several threads at once), so it only adds to
a counter under a lock and tells the observer at most every ``INTERVAL`` seconds: the observer's cost does
not grow with the data. ``snapshot`` gives the same counts to whoever asks, e.g. the backup lease, which
carries them to `status` on another host.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

Unit = Literal["bytes", "objects"]

INTERVAL = 0.1  # seconds between two updates the observer sees


class ProgressObserver(Protocol):
    """Told when a task begins (with its total, None while unknown), how far it is, and when it ends."""

    def begin(self, task: str, total: int | None, unit: Unit) -> None: ...

    def update(self, done: int, total: int | None) -> None: ...

    def end(self) -> None: ...


class NoProgress:
    """The observer of a service called without one: every report is dropped."""

    def begin(self, task: str, total: int | None, unit: Unit) -> None:
        pass

    def update(self, done: int, total: int | None) -> None:
        pass

    def end(self) -> None:
        pass


NO_PROGRESS: ProgressObserver = NoProgress()


class Meter:
    """Counts one task's work from any thread and passes it on, throttled, to an observer."""

    def __init__(self, observer: ProgressObserver, unit: Unit) -> None:
        self.observer = observer
        self.unit = unit
        self.done = 0
        self.total: int | None = None
        self._lock = threading.Lock()
        self._next = 0.0

    def add(self, amount: int) -> None:
        """Count ``amount`` more units done (thread-safe, cheap: called per chunk of data)."""
        with self._lock:
            self.done += amount
            now = time.monotonic()
            if now < self._next:
                return
            self._next = now + INTERVAL
            self.observer.update(self.done, self.total)

    def expect(self, total: int | None) -> None:
        """Set (or correct) the total once it is known; an estimate may be exceeded."""
        with self._lock:
            self.total = total
            self.observer.update(self.done, total)

    def snapshot(self) -> dict[str, Any]:
        """The counts as JSON: ``{"unit": "bytes", "done": ..., "total": ...}``."""
        return {"unit": self.unit, "done": self.done, "total": self.total}


@contextmanager
def metered(observer: ProgressObserver, task: str, total: int | None = None,
            unit: Unit = "bytes") -> Iterator[Meter]:
    """A meter for the ``with`` block: the observer sees the task begin, its counts, and its end."""
    meter = Meter(observer, unit)
    meter.total = total
    observer.begin(task, total, unit)
    try:
        yield meter
    finally:
        observer.update(meter.done, meter.total)
        observer.end()
