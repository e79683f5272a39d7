"""Streaming replication for tests: a standby of a running cluster, built the way DBAs build one.

The standby is a ``pg_basebackup -R`` copy of the primary, run as the primary's OS user, streaming through
a physical replication slot (so the primary keeps the WAL it has not received), started on its own port.
Every HA test (backups from a standby, ``archive_mode = always``, promotion and pg_rewind, replicas built
from the repository) starts from here rather than writing its own.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping

from backupctl.postgres.cluster import ScratchCluster
from tests.support.pg_site import chown_to_postgres, query


def create_slot(primary: ScratchCluster, slot: str) -> None:
    """A physical replication slot on ``primary`` that reserves WAL from now on."""
    query(primary, f"SELECT pg_create_physical_replication_slot('{slot}', true)")


def start_standby(primary: ScratchCluster, slot: str, settings: Mapping[str, str] | None = None,
                  timeout: float = 120) -> ScratchCluster:
    """A hot standby of ``primary`` streaming through ``slot`` (created here), started and caught up.

    ``settings`` are the standby's own server settings (e.g. ``archive_mode = always`` and its
    archive_command); the primary's replicated postgresql.conf lines are kept, the command line wins.
    The caller removes the returned cluster.
    """
    create_slot(primary, slot)
    base = ScratchCluster(primary.binaries, settings=dict(settings or {}), os_user=primary.os_user)
    try:
        datadir = base.base_dir / "data"
        argv = [primary.binaries.path("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
                "-U", primary.superuser, "-D", str(datadir), "-X", "stream", "-S", slot, "-R",
                "-c", "fast", "--no-sync"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                                cwd="/", user=primary.os_user, group=primary.os_user, extra_groups=[])
        if result.returncode != 0:
            raise AssertionError(f"pg_basebackup of the standby failed: {result.stderr}")
        chown_to_postgres(base.base_dir)
        base.datadir = datadir
        base.start(timeout=timeout)
        wait_streaming(primary, slot, timeout)
        return base
    except BaseException:
        base.remove()
        raise


def wait_streaming(primary: ScratchCluster, slot: str, timeout: float = 120) -> None:
    """Until the standby on ``slot`` streams from ``primary``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(primary, f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")
        if rows and rows[0][0]:
            return
        time.sleep(0.2)
    raise AssertionError(f"no standby streams through slot {slot} after {timeout:.0f}s")


def wait_replayed(primary: ScratchCluster, standby: ScratchCluster, timeout: float = 120) -> str:
    """Until ``standby`` has replayed everything ``primary`` had written when this was called; that LSN."""
    target = str(query(primary, "SELECT pg_current_wal_lsn()")[0][0])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        caught_up = query(standby, f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")[0][0]
        if caught_up:
            return target
        time.sleep(0.1)
    raise AssertionError(f"the standby did not replay up to {target} in {timeout:.0f}s")


def senders(primary: ScratchCluster) -> list[tuple[str, str, str | None]]:
    """The primary's WAL senders as (application_name, state, slot name or None), from pg_stat_replication."""
    rows = query(primary, "SELECT r.application_name, r.state, s.slot_name FROM pg_stat_replication r "
                          "LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid ORDER BY 1")
    return [(str(name), str(state), slot) for name, state, slot in rows]
