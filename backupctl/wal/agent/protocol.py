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
ARCHIVED_DIR = "archived"  # markers of segments the pusher has archived (``archived_dir``)
PENDING_DIR = "pending"  # markers of segments the pusher is pushing or has queued (``pending_dir``)
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


def archived_dir(spool: str) -> str:
    """Where the pusher keeps its markers: one hard link per ready file it has archived, named like it.

    A marker is a second name of the very inode PostgreSQL marked ready, made only after that file is
    durable in the repository, so ``[ archived/NAME -ef pg_wal/NAME ]`` (same device and inode) proves
    "this very file is archived" with no process but the shell: archive_command costs ~1 ms instead of an
    interpreter's start for every segment the pusher has read ahead. A ready segment is never rewritten
    in place (PostgreSQL recycles a segment by renaming it, once archived); the pusher still drops a
    marker whose file's size or mtime changed, every marker once PostgreSQL has marked its file done, and
    all of them when it exits (its config may have changed) and when it starts. Only ready files in a
    ``pg_wal`` get markers (a file pushed by hand is always checked by the pusher), and none when the
    spool is on another filesystem than pg_wal: every call then asks the pusher.
    """
    return spool.rstrip("/") + "/" + ARCHIVED_DIR


def pid_file(spool: str) -> str:
    """The file that names the running pusher's pid: clients kill a silent pusher by it, and
    archive_command's shell stops waiting on pending markers once that pid is gone."""
    return spool.rstrip("/") + "/" + PID_NAME


def pending_dir(spool: str) -> str:
    """Where the pusher keeps an empty file named like each ready file it has queued or is pushing.

    During a backlog the pusher, not the archiver, is the bottleneck: PostgreSQL's next call usually names
    the segment a worker is compressing, and an interpreter started only to wait for it costs ~12 ms of
    the CPU that the pushes need. While ``pending/NAME`` exists, archive_command's shell polls for the
    ``archived`` marker instead (a ``sleep`` costs ~1 ms), for a few seconds at most, then asks the pusher
    as before. The file vouches for nothing: only the ``archived`` marker lets the shell answer 0. The
    pusher removes it once the job ends, whatever the outcome, and clears the directory when it starts and
    stops, so a pusher killed mid-job costs one bounded wait.
    """
    return spool.rstrip("/") + "/" + PENDING_DIR


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
