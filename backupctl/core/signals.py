"""SIGTERM and SIGHUP unwind the process like Ctrl-C, so cleanup code runs; cleanup itself is shielded.

The handler raises ``Interrupted`` (a BaseException) at the next bytecode boundary, so ``finally`` blocks
remove staged copies and abort partial uploads. Two gaps are closed here: code inside ``shielded()``
(cleanup) defers a signal until it is done, and a signal that a C extension swallowed (pyrage turns an
exception raised inside its callbacks into its own error) is still reported through ``raise_pending``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from backupctl.core.errors import Interrupted

_received: int | None = None
_deferred: int | None = None
_shield_depth = 0


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _received, _deferred
    _received = signum
    if _shield_depth:
        _deferred = signum
        return
    raise Interrupted(signum)


def install() -> None:
    """Route SIGTERM and SIGHUP (systemd stop, a closed terminal) through ``Interrupted``."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _handler)


def raise_pending() -> None:
    """Raise ``Interrupted`` if a signal arrived: for errors a C extension made out of one."""
    if _received is not None:
        raise Interrupted(_received)


@contextmanager
def shielded() -> Iterator[None]:
    """Run cleanup to the end; a signal that arrives meanwhile is raised afterwards."""
    global _shield_depth, _deferred
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if _shield_depth == 0 and _deferred is not None:
            signum, _deferred = _deferred, None
            raise Interrupted(signum)
