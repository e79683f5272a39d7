"""The standby every HA test builds on (tests/support/pg_replication.py) really streams and replays."""

from __future__ import annotations

from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.cluster import ScratchCluster
from tests.support.pg_replication import start_standby, wait_replayed
from tests.support.pg_site import query


def test_standby_streams_and_replays(pg_binaries: PgBinaries) -> None:
    with ScratchCluster(pg_binaries, settings={"wal_level": "replica"}) as primary:
        standby = start_standby(primary, "standby1")
        try:
            query(primary, "CREATE TABLE t AS SELECT generate_series(1, 1000) AS i")
            wait_replayed(primary, standby)
            assert query(standby, "SELECT pg_is_in_recovery(), count(*), sum(i) FROM t") == [(True, 1000, 500500)]
        finally:
            standby.remove()
