"""``pusher.log``: the resident pusher's log, which never fails a push and never grows without bound.

One home for the log's rotation: the daemon rotates it when it starts and on each housekeeping round.
"""

from __future__ import annotations

import os
import sys

LOG_ROTATE_BYTES = 16 * 1024**2


class LogFile:
    """``pusher.log``: structlog's stream, and fds 1 and 2 (tracebacks); writing to it never raises.

    A worker logs after each push: if a full disk (or a quota) made that raise, the worker died, its job
    never finished, its client waited for the job's deadline, and the pusher kept its lock. Here a line that
    cannot be written is dropped and counted, and the next line that gets through says how many were lost.
    structlog prints a line and flushes it under its lock: ``flush`` makes it one ``write`` (O_APPEND).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.pending: list[str] = []
        self.dropped = 0
        self.cut = False  # the last write ended mid-line

    def write(self, text: str) -> int:
        self.pending.append(text)
        return len(text)

    def flush(self) -> None:
        text = "".join(self.pending)
        self.pending.clear()
        if not text:
            return
        if self.dropped:
            notice = f'{{"event": "log lines dropped", "count": {self.dropped}, "level": "warning"}}\n'
            text = ("\n" if self.cut else "") + notice + text
        data = text.encode(errors="replace")
        try:
            written = os.write(self.fd, data)
        except OSError:
            self.dropped += 1
            return
        self.cut = written < len(data)
        self.dropped = int(self.cut)

    def fileno(self) -> int:
        return self.fd

    def redirect_output(self) -> None:
        """Tracebacks and stray prints (fds 1 and 2) go to this log too."""
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.fd, 1)
        os.dup2(self.fd, 2)

    def rotate(self) -> None:
        """A busy server keeps its pusher alive for good: past ``LOG_ROTATE_BYTES``, the file becomes
        ``pusher.log.1`` and a new one takes the same descriptor number, so every writer follows at once."""
        try:
            if os.fstat(self.fd).st_size <= LOG_ROTATE_BYTES:
                return
            os.replace(self.path, self.path + ".1")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return  # logging on in the old file beats not running
        os.dup2(fd, self.fd, inheritable=False)
        os.close(fd)
        self.redirect_output()
