"""The pusher's markers: archive_command's shell test answers only for the very file the pusher archived.

``pg-settings`` prints ``[ SPOOL/archived/%f -ef %p ] || { wait while SPOOL/pending/%f exists; the same test }
|| backupctl ... wal-push %p``: a marker is a hard link the pusher makes to a file once it is durable in the
repository (``agent.protocol.archived_dir``); a pending file only makes the shell wait for it (``pending_dir``).
These tests hold PostgreSQL's archiver, let the pusher read a backlog ahead, and check what the markers
vouch for with the shell PostgreSQL uses, as the server's user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backupctl.wal.conf import PENDING_WAIT_POLLS, archive_command
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
        pending = site.spool / "pending"
        _wait_for("markers gone with the pusher", lambda: not markers.exists() and not pending.exists())


def _run_archive_command(spool: Path, pg_wal: Path, name: str) -> subprocess.Popen[bytes]:
    """The printed archive_command for ``name``, as PostgreSQL runs it; its push fails (no such config)."""
    command = archive_command(spool / "missing.toml", "main", str(spool))
    command = command.replace("%p", str(pg_wal / name)).replace("%f", name)
    return subprocess.Popen(["sh", "-c", command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def spool_and_wal(tmp_path: Path) -> tuple[Path, Path, str]:
    spool, pg_wal, name = tmp_path / "spool", tmp_path / "pg_wal", "000000010000000000000007"
    for directory in (spool / "archived", spool / "pending", pg_wal):
        directory.mkdir(parents=True)
    (pg_wal / name).write_bytes(b"segment")
    (spool / "pending" / name).touch()
    (spool / "pusher.pid").write_text(f"{os.getpid()}\n")  # a live "pusher": this test
    return spool, pg_wal, name


def test_the_shell_waits_for_a_pending_file_and_answers_only_from_its_marker(
        spool_and_wal: tuple[Path, Path, str]) -> None:
    spool, pg_wal, name = spool_and_wal
    call = _run_archive_command(spool, pg_wal, name)
    time.sleep(0.5)
    assert call.poll() is None, "the shell did not wait while the pusher was on the file"
    os.link(pg_wal / name, spool / "archived" / name)  # what the pusher does once the file is durable
    (spool / "pending" / name).unlink()
    assert call.wait(timeout=5) == 0

    # A pending file that ends without a marker (the push failed) answers nothing: the call asks backupctl,
    # here one with no config, which fails.
    (spool / "archived" / name).unlink()
    (spool / "pending" / name).touch()
    call = _run_archive_command(spool, pg_wal, name)
    time.sleep(0.3)
    (spool / "pending" / name).unlink()
    assert call.wait(timeout=30) != 0


def test_a_pending_marker_of_a_live_but_silent_pusher_costs_a_bounded_wait(
        spool_and_wal: tuple[Path, Path, str]) -> None:
    spool, pg_wal, name = spool_and_wal  # a stuck pusher (or a pid reused) never ends the job
    started = time.monotonic()
    call = _run_archive_command(spool, pg_wal, name)
    assert call.wait(timeout=30) != 0
    assert time.monotonic() - started > PENDING_WAIT_POLLS * 0.01


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("pid_file", ["dead", "missing", "garbage"])
def test_a_pending_marker_of_a_dead_pusher_costs_no_wait(spool_and_wal: tuple[Path, Path, str],
                                                         pid_file: str) -> None:
    spool, pg_wal, name = spool_and_wal  # a pusher killed with -9 leaves its pending marker and its pid file
    if pid_file == "dead":
        (spool / "pusher.pid").write_text(f"{_dead_pid()}\n")
    elif pid_file == "missing":
        (spool / "pusher.pid").unlink()
    else:
        (spool / "pusher.pid").write_text("-1 $(touch pwned)\n")
    started = time.monotonic()
    call = _run_archive_command(spool, pg_wal, name)
    assert call.wait(timeout=30) != 0  # asked backupctl (here without a config: it fails)
    assert time.monotonic() - started < PENDING_WAIT_POLLS * 0.01
    assert not (spool / "pwned").exists() and not Path("pwned").exists()


def test_a_pusher_that_dies_during_the_wait_ends_it(spool_and_wal: tuple[Path, Path, str]) -> None:
    spool, pg_wal, name = spool_and_wal
    pusher = subprocess.Popen(["sleep", "30"])
    (spool / "pusher.pid").write_text(f"{pusher.pid}\n")
    started = time.monotonic()
    call = _run_archive_command(spool, pg_wal, name)
    time.sleep(0.3)
    assert call.poll() is None, "the shell did not wait while a live pusher was on the file"
    pusher.kill()
    pusher.wait()
    assert call.wait(timeout=30) != 0
    assert time.monotonic() - started < PENDING_WAIT_POLLS * 0.01
