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
from pathlib import Path

from backupctl.postgres.cluster import ScratchCluster
from backupctl.wal.conf import archive_command
from tests.support.pg_site import SOURCE, Site, chown_to_postgres, query


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


# --- archive_mode = always, promotion and pg_rewind ----------------------------------------------------------


def host_spool(site: Site, host: str) -> Path:
    """The spool root of ``host``'s resident pusher: one per host, as on real machines (a pusher reads ahead
    in its own server's pg_wal and leaves its "already archived" markers there as hard links)."""
    return site.root / f"spool-{host}"


def host_archive_command(site: Site, host: str, cluster: ScratchCluster | None = None) -> str:
    """The archive_command ``pg-settings`` prints on ``host``: its own config file (the site's repository and
    source) with its own spool. ``cluster`` names the host's server in that config (default: the site's)."""
    config = site.root / f"backupctl-{host}.toml"
    site.write_config(cluster, path=config, spool=host_spool(site, host))
    return archive_command(config, SOURCE, str(host_spool(site, host) / SOURCE))


def timeline_of(cluster: ScratchCluster) -> int:
    """The timeline ``cluster`` writes (a primary) or replays (a standby)."""
    if not query(cluster, "SELECT pg_is_in_recovery()")[0][0]:
        return int(query(cluster, "SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0][:8], 16)
    received = query(cluster, "SELECT received_tli FROM pg_stat_wal_receiver")
    if received and received[0][0]:
        return int(received[0][0])
    return int(query(cluster, "SELECT timeline_id FROM pg_control_checkpoint()")[0][0])


def promote(standby: ScratchCluster, timeout: float = 120) -> int:
    """Promote ``standby`` (pg_promote, waiting for the end of recovery); the new timeline."""
    if not query(standby, f"SELECT pg_promote(true, {int(timeout)})")[0][0]:
        raise AssertionError(f"the standby did not promote in {timeout:.0f}s:\n{standby._read_log()[-3000:]}")
    return timeline_of(standby)


def rewind_as_standby(old_primary: ScratchCluster, new_primary: ScratchCluster, slot: str,
                      settings: Mapping[str, str] | None = None, restore_command: str | None = None,
                      timeout: float = 120) -> None:
    """Bring a failed-over primary back as a standby of ``new_primary``, the way DBAs do: stop it cleanly,
    checkpoint the new primary, ``pg_rewind`` it (as its OS user) from the new primary, then ``standby.signal``
    and ``primary_conninfo`` through ``slot`` (created here), and start it.

    pg_rewind needs data checksums or ``wal_log_hints = on`` on the old primary from its start (the caller's
    settings). ``settings`` are the server settings it restarts with (e.g. its archive_command as a standby).
    ``restore_command`` (backupctl's wal-fetch) goes into its postgresql.auto.conf for ``pg_rewind
    --restore-target-wal``: the old primary's WAL back to the last common checkpoint is usually archived and
    recycled by then, and pg_rewind cannot find the fork without it.
    """
    old_primary.stop()
    create_slot(new_primary, slot)
    # pg_rewind reads the source's timeline from its pg_control, which a promotion updates only at the next
    # checkpoint: without one it finds both on timeline 1 and says "no rewind required".
    query(new_primary, "CHECKPOINT")
    source = f"host=127.0.0.1 port={new_primary.port} user={new_primary.superuser} dbname=postgres"
    argv = [old_primary.binaries.path("pg_rewind"), "-D", str(old_primary.datadir), "--source-server", source,
            "--no-sync"]
    if restore_command is not None:
        with open(old_primary.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"restore_command = '{restore_command.replace(chr(39), chr(39) * 2)}'\n")
        argv.append("--restore-target-wal")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/",
                            user=old_primary.os_user, group=old_primary.os_user, extra_groups=[])
    if result.returncode != 0:
        raise AssertionError(f"pg_rewind failed: {result.stderr}")
    (old_primary.datadir / "standby.signal").touch()
    chown_to_postgres(old_primary.datadir / "standby.signal")
    old_primary.settings.update({**(settings or {}), "primary_conninfo": source, "primary_slot_name": slot})
    old_primary.start(timeout=timeout)
    try:
        wait_streaming(new_primary, slot, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the rewound server's log:\n{old_primary._read_log()[-3000:]}") from None


def stop_host_pusher(site: Site, host: str) -> None:
    """Stop ``host``'s resident pusher (the site stops only its own)."""
    site.stop_pusher(host_spool(site, host) / SOURCE)


def pgbench_load(cluster: ScratchCluster, scale: int = 2, seconds: int = 4, clients: int = 2) -> None:
    """Write load: ``pgbench -i`` at ``scale`` (about 16 MB of WAL per unit), then ``seconds`` of TPC-B."""
    pgbench = cluster.binaries.path("pgbench")
    where = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.superuser]
    for argv in ([pgbench, *where, "-i", "-q", "-s", str(scale), "postgres"],
                 [pgbench, *where, "-T", str(seconds), "-c", str(clients), "-n", "postgres"]):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd="/")
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed: {result.stderr}")
