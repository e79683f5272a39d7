"""The scheduler keeps each local PostgreSQL source's resident WAL pusher running ([scheduler] wal_pusher)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from backupctl.core.config import PostgresSource
from backupctl.core.log import get_logger

log = get_logger(__name__)

PUSHER_RESTART_DELAY = 10.0  # seconds between two starts of the resident WAL pusher


class PusherSupervisor:
    """Keeps the asynchronous WAL pusher of one local PostgreSQL source running ([scheduler] wal_pusher).

    The pusher exits by itself when idle or when the config changes, and at once when another one already
    serves the source (archive_command starts one on demand); it is simply started again a little later.
    It reads ahead in pg_wal, so segments are stored before archive_command asks for them.
    """

    def __init__(self, config_file: Path, source: PostgresSource, stopping: threading.Event) -> None:
        self.config_file = config_file
        self.source = source
        self.stopping = stopping
        self.proc: subprocess.Popen[bytes] | None = None
        self.thread = threading.Thread(target=self._loop, name=f"wal pusher {source.name}", daemon=True)

    def command(self) -> list[str]:
        assert self.source.pgdata is not None
        return [sys.executable, "-m", "backupctl.walpusher", "--config", str(self.config_file), "daemon",
                "--source", self.source.name, str(Path(self.source.pgdata) / "pg_wal")]

    def _as_owner(self) -> dict[str, Any]:
        """Started as root, the pusher runs as the data directory's owner (its spool belongs to that user)."""
        assert self.source.pgdata is not None
        owner = Path(self.source.pgdata).stat()
        if os.geteuid() != 0 or owner.st_uid == 0:
            return {}
        return {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, start_new_session=True,
                                             **self._as_owner())
            except OSError as exc:
                log.error("WAL pusher cannot start", source=self.source.name, error=str(exc))
            else:
                log.info("WAL pusher started", source=self.source.name, pid=self.proc.pid)
                code = self.proc.wait()
                log.info("WAL pusher ended", source=self.source.name, exit_code=code)
            self.stopping.wait(PUSHER_RESTART_DELAY)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.thread.join(timeout=5)
