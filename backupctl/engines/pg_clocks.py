"""When a PostgreSQL backup stopped, on the two clocks that matter: the server's and the store's."""

from __future__ import annotations

from backupctl.postgres.connection import ConnParams
from backupctl.repo.catalog import iso
from backupctl.repo.lease import store_now
from backupctl.repo.repository import Repository


def stop_clocks(repo: Repository, source: str, params: ConnParams) -> dict[str, str]:
    """The moment the backup stopped, on the server's clock and then on the store's, read back to back.

    ``started_at``/``finished_at`` are the backup host's clock, which may be off by any amount. Restore
    targets and commit times are the server's clock, so the planner compares a backup with them through
    ``server_stop_time``; Last-Modified and expire's "now" are the store's, so retention uses
    ``store_stop_time``; their difference turns one into the other (to about a second: S3 keeps whole
    seconds). Read after a physical backup's WAL is stored, a little after pg_basebackup stopped: a
    later time only ever makes the planner pick an older backup, never one that ends after its target.
    """
    with params.connect() as conn:
        server = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    return {"server_stop_time": iso(server), "store_stop_time": iso(store_now(repo.storage, source))}
