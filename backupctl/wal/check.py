"""``wal check``: prove that archiving works end to end, from the server's archiver into the repository.

It makes the server switch to a new segment and waits until that segment is listed in the stream of the
server's history epoch: archive_command, the config it names, the store and its credentials all had to
work. A server of a system that is no epoch of the source is refused at once (it never would arrive).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from backupctl.core.errors import BackupctlError
from backupctl.postgres.connection import ConnParams
from backupctl.wal.epochs import query_system
from backupctl.wal.identity import foreign_system
from backupctl.wal.listing import find_archived
from backupctl.wal.streams import list_streams

if TYPE_CHECKING:
    from backupctl.core.config import PostgresSource
    from backupctl.repo.repository import Repository


def wal_check(repo: Repository, source: PostgresSource, timeout: float = 60.0) -> dict[str, Any]:
    """Switch to a new segment on the server and wait until the finished one is in the repository
    (in the stream of the server's history epoch; a system that is no epoch of the source is refused at once)."""
    params = ConnParams.from_source(source)
    with params.connect() as conn:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            raise BackupctlError(f"source {source.name} is in recovery: run wal check on the primary")
        system = query_system(conn)
        streams = list_streams(repo, source.name)
        identity = next((e for e in streams if e.system_identifier == system.system_identifier), None)
        if identity is None and streams:
            raise foreign_system(repo, source.name, f"the server of source {source.name}", system.system_identifier,
                                 system.major, streams[-1])
        stream = identity.stream if identity else source.name
        mode = conn.execute("SHOW archive_mode").fetchone()[0]
        if mode == "off":
            raise BackupctlError(
                f"archive_mode is off on source {source.name}: see `backupctl pg-settings {source.name}` "
                "(changing it needs a restart)"
            )
        # Something to switch: pg_switch_wal() does nothing when the current segment is empty.
        conn.execute("SELECT pg_logical_emit_message(false, 'backupctl', 'wal check')")
        lsn, name = conn.execute("SELECT s::text, pg_walfile_name(s) FROM pg_switch_wal() s").fetchone()
        started = time.monotonic()
        deadline = started + timeout
        while True:
            found = find_archived(repo, stream, name)
            if found:
                seconds = time.monotonic() - started
                return {"id": f"{stream}/{name}", "source": source.name, "epoch": identity.epoch if identity else 1,
                        "segment": name, "switch_lsn": lsn, "key": found[0].key, "seconds": round(seconds, 3)}
            if time.monotonic() > deadline:
                row = conn.execute(
                    "SELECT last_archived_wal, last_failed_wal, last_failed_time, failed_count "
                    "FROM pg_stat_archiver").fetchone()
                raise BackupctlError(
                    f"{name} did not reach the repository within {timeout:.0f}s (pg_stat_archiver: last "
                    f"archived {row[0]}, last failed {row[1]} at {row[2]}, {row[3]} failures): check "
                    "archive_command (`backupctl pg-settings`) and the server log"
                )
            time.sleep(0.1)
