"""systemd's notify protocol for the scheduler service (Type=notify, WatchdogSec=): READY, WATCHDOG, STOPPING.

A datagram to ``$NOTIFY_SOCKET``; written here rather than taken from a library because it is ten lines
and must never block the scheduler.
"""

from __future__ import annotations

import os
import socket

from backupctl.core.log import get_logger

log = get_logger(__name__)


def sd_notify(message: str) -> bool:
    """Send a state ("READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=...") to $NOTIFY_SOCKET, if any."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            # Never block the scheduler: a listener that stopped reading fills its datagram queue.
            sock.send(message.encode(), socket.MSG_DONTWAIT)
    except OSError as exc:
        log.warning("sd_notify failed", socket=os.environ.get("NOTIFY_SOCKET"), error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asks for (WatchdogSec=), or None when there is none for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
