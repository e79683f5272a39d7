"""The pusher's markers: archive_command's shell test answers only for the very file the pusher archived.

``pg-settings`` prints ``[ SPOOL/archived/%f -ef %p ] || backupctl ... wal-push %p``: a marker is a hard
link the pusher makes to a file once it is durable in the repository (``agent.protocol.archived_dir``).
These tests hold PostgreSQL's archiver, let the pusher read a backlog ahead, and check what the markers
vouch for with the shell PostgreSQL uses, as the server's user.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import Site, archiving_site, as_postgres, fast_path_archive_command


def _wait_for(what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def _set_archive_command(site: Site, command: str) -> None:
    site.sql(f"ALTER SYSTEM SET archive_command = '{command.replace(chr(39), chr(39) * 2)}'")
    site.sql("SELECT pg_reload_conf()")


def _vouched(site: Site, marker: Path, name: str) -> bool:
    """The shell test of the printed archive_command, run by the server's user from the data directory."""
    test = as_postgres(["sh", "-c", f"[ {marker / name} -ef pg_wal/{name} ]"], cwd=site.cluster.datadir)
    return test.code == 0


def test_markers_vouch_for_the_very_file_and_go_once_postgresql_is_done(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        site.wait_archived(site.switch())
        _set_archive_command(site, "")  # PostgreSQL keeps the next segments ready, unarchived
        names = [site.switch() for _ in range(4)]
        pg_wal = site.cluster.datadir / "pg_wal"
        markers = site.spool / "archived"

        # One call hands the pusher the first segment; it reads the other ready ones ahead, and marks each
        # file once it is stored.
        first = site.push(f"pg_wal/{names[0]}", cwd=site.cluster.datadir)
        assert first.code == 0, first.stderr
        _wait_for("a marker for every ready segment", lambda: all((markers / n).exists() for n in names))
        assert set(site.wal_keys()) >= set(names)
        for name in names:
            assert os.path.samefile(markers / name, pg_wal / name)
            assert _vouched(site, markers, name)

        # A marked file whose mtime changes (rewritten in place, which PostgreSQL never does) loses its marker.
        touched = pg_wal / names[2]
        os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1))
        _wait_for("the marker of a changed file dropped", lambda: not (markers / names[2]).exists())
        assert not _vouched(site, markers, names[2])

        # Another file under the same name (a new inode, same bytes) is not vouched for: the call asks.
        replaced = pg_wal / names[1]
        copy = pg_wal / f".{names[1]}.copy"
        shutil.copy2(replaced, copy)
        os.chown(copy, replaced.stat().st_uid, replaced.stat().st_gid)
        os.replace(copy, replaced)
        assert not _vouched(site, markers, names[1])

        _set_archive_command(site, fast_path_archive_command(site.config))
        site.wait_archived(names[-1])
        assert not list(pg_wal.glob("archive_status/*.ready"))
        _wait_for("markers dropped once PostgreSQL has marked the files done", lambda: not any(markers.iterdir()))

        site.stop_pusher()
        _wait_for("markers gone with the pusher", lambda: not markers.exists())
