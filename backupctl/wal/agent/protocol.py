"""The pusher's wire protocol and its spool directory's file names: what client and daemon share.

A message is a 4-byte big-endian length and a ``marshal``'d dict (marshal is built in: no import cost on
the fast path). A client sends one request (with ``PROTOCOL`` and the fingerprint of the config it read)
and reads frames until one is not ``{"status": "wait"}``: the daemon sends that heartbeat every
``HEARTBEAT`` seconds while a job is healthy, so a silent daemon is a stuck one.

Standard library only: the archive_command fast path imports this module.
"""

from __future__ import annotations

import marshal

TYPE_CHECKING = False  # not from typing: importing it costs ~4 ms on every archive_command
if TYPE_CHECKING:
    import socket
    from typing import Any

PROTOCOL = 2  # 2: fetch requests name the history epoch
FRAME_LIMIT = 1024**2
SOCKET_NAME = "pusher.sock"
LOCK_NAME = "pusher.lock"
PID_NAME = "pusher.pid"
LOG_NAME = "pusher.log"
PREFETCH_DIR = "prefetch"
HEARTBEAT = 1.0  # seconds between "still working" messages to a waiting client

_HEX = frozenset("0123456789ABCDEF")


def plausible_name(name: str) -> bool:
    """The shapes of the names PostgreSQL archives (``wal.names.parse_wal_name`` checks the rest); no ``re`` here."""
    def hex_(text: str) -> bool:
        return bool(text) and _HEX.issuperset(text)

    if len(name) == 24:
        return hex_(name)
    if len(name) == 32 and name.endswith(".partial"):
        return hex_(name[:24])
    if len(name) == 16 and name.endswith(".history"):
        return hex_(name[:8])
    if len(name) == 40 and name.endswith(".backup") and name[24] == ".":
        return hex_(name[:24]) and hex_(name[25:33])
    return False


def frame(message: dict[str, Any]) -> bytes:
    """One protocol message: a 4-byte length and a marshal'd dict (marshal is built in: no import cost)."""
    data = marshal.dumps(message)
    return len(data).to_bytes(4, "big") + data


def read_frames(sock: socket.socket) -> Any:
    """The messages on a socket, until it closes."""
    buffer = b""
    while True:
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if size > FRAME_LIMIT:
                raise ValueError(f"a {size}-byte message")
            if len(buffer) < 4 + size:
                break
            message = marshal.loads(buffer[4:4 + size])
            buffer = buffer[4 + size:]
            if not isinstance(message, dict):
                raise ValueError("not a message")
            yield message
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk


WAIT = frame({"status": "wait"})
