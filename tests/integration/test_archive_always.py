"""archive_mode = always: a primary and its streaming standby push the same segments into one source.

Real parts: a primary and a ``pg_basebackup -R`` standby, both with archive_mode = always and each with the
archive_command ``pg-settings`` prints on its host (its own config and pusher spool), pushing into one
repository (a local directory, and moto's S3) under pgbench load. Identical segments are stored once and
neither archiver ever fails; different bytes under an archived name are still refused, naming it; two pushes
of one segment at the very same moment store it once (the conditional create, not a listing, decides), and the
host that lost uploads no later segment the other one stored first.
"""

from __future__ import annotations

import collections
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from backupctl.core.config import load_config
from backupctl.postgres.binaries import PgBinaries
from backupctl.wal.listing import find_archived, parse_key
from backupctl.wal.names import parse_wal_name
from backupctl.wal.opening import open_wal_repository
from backupctl.wal.push import ArchiveView, push_file
from tests.support.pg_replication import (
    host_archive_command,
    pgbench_load,
    start_standby,
    stop_host_pusher,
    wait_replayed,
)
from tests.support.pg_site import QUICK_WAL, SOURCE, Site, archiving_site, chown_to_postgres, query, wait_archived

ALWAYS = {"archive_mode": "always", "max_wal_senders": "4", "wal_log_hints": "on"}


def _archived_names(site: Site) -> collections.Counter[str]:
    """How many objects each archived file name has in the source."""
    names: collections.Counter[str] = collections.Counter()
    for info in site.storage().list(f"{SOURCE}/wal/"):
        parsed = parse_key(SOURCE, info.key)
        if parsed is not None:
            names[parsed.name.name] += 1
    return names


def _archiver(cluster: Any) -> tuple[int, int]:
    """(archived_count, failed_count) of a server's archiver."""
    archived, failed = query(cluster, "SELECT archived_count, failed_count FROM pg_stat_archiver")[0]
    return int(archived), int(failed)


def _forged(site: Site, name: str) -> Path:
    """A file named ``name`` with the segment's real header but other bytes after it (passes the header check)."""
    copy = site.segment_copy(name)
    data = bytearray(copy.read_bytes())
    data[40000] ^= 0xFF
    copy.write_bytes(bytes(data))
    chown_to_postgres(copy.parent)
    return copy


@pytest.mark.parametrize("store", ["local", "moto"])
def test_a_primary_and_its_standby_both_archiving_store_every_segment_once_and_refuse_a_forgery(
        pg_binaries: PgBinaries, request: pytest.FixtureRequest, store: str) -> None:
    with archiving_site(pg_binaries, request, store=store, wal=QUICK_WAL, settings=ALWAYS) as site:
        standby = start_standby(site.cluster, "standby1",
                                {**site.settings, "archive_command": host_archive_command(site, "standby")})
        site.extra.append(standby)
        try:
            pgbench_load(site.cluster, scale=5)
            last = site.switch()
            wait_replayed(site.cluster, standby)
            site.wait_archived(last, timeout=120)
            wait_archived(standby, last, timeout=120)

            primary_archived, primary_failed = _archiver(site.cluster)
            standby_archived, standby_failed = _archiver(standby)
            assert (primary_failed, standby_failed) == (0, 0)
            # Every segment after the standby's base backup was pushed by both hosts: the standby's were all
            # found stored (or stored first by it), never refused.
            assert standby_archived >= 3 and primary_archived >= standby_archived, (standby_archived, primary_archived)
            names = _archived_names(site)
            assert last in names
            assert [n for n, count in names.items() if count > 1] == [], names
            rows = json.loads(site.cli("wal", "status", SOURCE, "-o", "json").stdout)
            assert [r["duplicates"] for r in rows] == [[]] and rows[0]["gaps"] == []
            assert rows[0]["production"] is True and rows[0]["fork"] is None

            refused = site.push(_forged(site, last))
            assert refused.code == 1, refused
            assert last in refused.stderr and "already archived with sha256" in refused.stderr, refused.stderr
            assert _archived_names(site)[last] == 1
            assert _archiver(site.cluster)[1] == 0 and _archiver(standby)[1] == 0
        finally:
            stop_host_pusher(site, "standby")


@pytest.mark.parametrize("store", ["local", "moto"])
def test_two_pushes_of_one_segment_at_the_same_moment_store_it_once(
        pg_binaries: PgBinaries, request: pytest.FixtureRequest, store: str) -> None:
    with archiving_site(pg_binaries, request, store=store, wal=QUICK_WAL,
                        settings={"archive_command": "/bin/true"}) as site:
        name = site.switch()
        copy = site.segment_copy(name)
        config = load_config(site.config)
        hosts = [open_wal_repository(config) for _ in range(2)]  # two hosts: each its own store client
        # Each host's view listed the folder before either push: both go straight to the create, the race the
        # archive_mode = always pair runs every segment (a listing cannot close it; the create does).
        views = [ArchiveView(ttl=600) for _ in hosts]
        for repo, view in zip(hosts, views, strict=True):
            assert view.absent(repo, SOURCE, parse_wal_name(name))
        start = threading.Barrier(2)
        results: list[Any] = [None, None]

        def push(i: int) -> None:
            start.wait()
            try:
                results[i] = push_file(hosts[i], SOURCE, copy, view=views[i]).status
            except Exception as exc:  # reported by the assertion below
                results[i] = exc

        threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(map(str, results)) == ["already archived", "stored"], results
        assert len(find_archived(hosts[0], SOURCE, name)) == 1
        assert _archived_names(site)[name] == 1
        if store == "local":
            assert list((site.root / "repo").rglob(".tmp-*")) == []

        # The host that lost now asks for the exact key before uploading into that folder: the next segment,
        # stored first by the other host, costs it a HEAD and no second upload.
        loser = results.index("already archived")
        following = site.segment_copy(site.switch())
        assert push_file(hosts[1 - loser], SOURCE, following, view=views[1 - loser]).status == "stored"
        uploads: list[str] = []
        create = hosts[loser].storage.put_if_absent
        hosts[loser].storage.put_if_absent = lambda key, data: uploads.append(key) or create(key, data)
        assert push_file(hosts[loser], SOURCE, following, view=views[loser]).status == "already archived"
        assert uploads == []
        for repo in hosts:
            repo.storage.close()
