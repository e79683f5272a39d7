"""restore_command never guesses: "not archived" (exit 1) only for a source the repository knows, never a
segment of another system, and recovery targets refused before anything is downloaded.

PostgreSQL takes exit 1 from restore_command for the end of the archive: it ends recovery and promotes
with what it has. So a restore_command that names a source the repository never received (another
source's name, another repository or prefix) must stop recovery (exit 128) instead; so must a segment
whose system identifier is not the restoring cluster's (PostgreSQL would take the bad header for the end
of WAL too). These tests run real servers of each major, as the ``postgres`` OS user, through the exact
command lines ``backupctl pg-settings`` prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backupctl.postgres.binaries import PgBinaries
from backupctl.postgres.cluster import ScratchCluster, ServerError
from backupctl.wal.conf import restore_command
from backupctl.wal.identity import read_header
from backupctl.wal.names import segment_name
from tests.support.cli import CliRunner, Result, run_cli
from tests.support.config import write_toml
from tests.support.pg_site import SOURCE, Site, archiving_site, as_postgres, chown_to_postgres, init_and_backup


def _sysid(datadir: Path) -> str:
    """The system identifier in a data directory's pg_control (its first 8 bytes)."""
    return str(struct.unpack("<Q", (datadir / "global" / "pg_control").read_bytes()[:8])[0])


def _fetch(config: Path, source: str, name: str, dest: str, cwd: Path | str = "/") -> Result:
    """restore_command for ``source`` with ``config``, as PostgreSQL runs it (``%f`` and ``%p`` filled in)."""
    words = shlex.split(restore_command(config, source))
    words = [*words[: words.index("%f")], name, dest]
    return as_postgres(words, cwd=cwd)


def _config_like(origin: Any, path: Path, *, repository: dict[str, Any] | None = None, prefetch: int = 8,
                 sources: tuple[str, ...] = (SOURCE,)) -> Path:
    """Another config for the same server: its own spool, another repository or more source names."""
    write_toml(path, {
        "repository": repository or origin.repository,
        "wal": {"spool_dir": str(path.parent / f"spool-{path.stem}"), "timeout": 10, "idle_exit": 30,
                "prefetch": prefetch},
        "sources": {name: {"kind": "postgres", "host": "127.0.0.1", "port": origin.cluster.port,
                           "user": "postgres", "pgdata": str(origin.cluster.datadir)} for name in sources},
    })
    chown_to_postgres(path.parent)
    return path


def _stop_pushers(root: Path) -> None:
    """SIGTERM the resident pushers that the configs of this test started (by their pid files)."""
    for pid_file in root.glob("spool-*/*/pusher.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)


# --- a restore_command for a source the repository lacks ---------------------------------------------------


def test_recovery_stops_instead_of_promoting_when_restore_command_names_a_source_the_repository_lacks(
        pg_binaries: PgBinaries, request: pytest.FixtureRequest) -> None:
    with archiving_site(pg_binaries, request) as wal_site:
        wal_site.sql("CREATE TABLE marks (batch text)")
        wal_site.sql("INSERT INTO marks VALUES ('before')")
        base = wal_site.root / "copy"
        # -X stream: the copy holds the WAL to become consistent, so an "end of archive" would promote it.
        subprocess.run([pg_binaries.path("pg_basebackup"), "-h", "127.0.0.1", "-p", str(wal_site.cluster.port), "-U",
                        "postgres", "-D", str(base), "-X", "stream", "-c", "fast"], check=True, capture_output=True)
        wal_site.sql("INSERT INTO marks VALUES ('after')")
        wal_site.wait_archived(wal_site.switch())
        (base / "recovery.signal").touch()
        # Another source of the same repository that never archived anything (the resident pusher serves it),
        # and the right source name in another, empty repository (in-process fetches).
        other = _config_like(wal_site, wal_site.root / "other.toml", sources=(SOURCE, "other"))
        empty_repo = {"type": "local", "path": str(wal_site.root / "empty-repo")}
        empty = _config_like(wal_site, wal_site.root / "empty.toml", repository=empty_repo, prefetch=0)
        assert run_cli(empty, "init").code == 0
        chown_to_postgres(wal_site.root)
        try:
            for config, source, location in ((other, "other", wal_site.repository["path"]),
                                             (empty, SOURCE, empty_repo["path"])):
                restored = ScratchCluster.adopt(pg_binaries, base, settings={
                    "restore_command": restore_command(config, source), "archive_mode": "off"})
                wal_site.extra.append(restored)
                with pytest.raises(ServerError):
                    restored.start(timeout=60)
                log = restored._read_log()
                assert "exit code 128" in log, log[-3000:]
                assert f"source {source!r}" in log and location in log, log[-3000:]
                assert (base / "recovery.signal").exists() and not (base / "pg_wal" / "00000002.history").exists()
                # The same names asked directly: 128 for a segment and for a history probe, never 1.
                for name in (segment_name(1, 1, 16 * 1024**2), "00000002.history"):
                    fetched = _fetch(config, source, name, str(wal_site.root / "nowhere"))
                    assert fetched.code == 128, fetched.stderr
            # Nothing was damaged: the right restore_command brings every row back.
            restored = ScratchCluster.adopt(pg_binaries, base, settings={
                "restore_command": restore_command(wal_site.config, SOURCE), "archive_mode": "off"})
            wal_site.extra.append(restored)
            restored.start(timeout=120)
            with restored.connect() as conn:
                while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    conn.execute("SELECT pg_sleep(0.1)")
                assert [r[0] for r in conn.execute("SELECT batch FROM marks ORDER BY 1")] == ["after", "before"]
            # The source exists: a history file it does not have is "not archived", the normal probe.
            probe = _fetch(wal_site.config, SOURCE, "00000005.history", str(wal_site.root / "nowhere"))
            assert probe.code == 1, probe.stderr
        finally:
            _stop_pushers(wal_site.root)


# --- a segment of another system ----------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [0, 8], ids=["in-process", "pusher"])
def test_a_segment_of_another_system_is_refused_with_both_identifiers(
        pg_binaries: PgBinaries, request: pytest.FixtureRequest, prefetch: int) -> None:
    with archiving_site(pg_binaries, request) as wal_site:
        name = wal_site.switch()
        wal_site.wait_archived(name)
        stranger = ScratchCluster(pg_binaries)  # another initdb: another system identifier
        wal_site.extra.append(stranger)
        stranger.init()
        config = _config_like(wal_site, wal_site.root / "fetch.toml", prefetch=prefetch)
        datadir = wal_site.root / "restoring"
        (datadir / "global").mkdir(parents=True)
        (datadir / "pg_wal").mkdir()
        shutil.copy(stranger.datadir / "global" / "pg_control", datadir / "global" / "pg_control")
        chown_to_postgres(wal_site.root)
        ours, theirs = _sysid(wal_site.cluster.datadir), _sysid(stranger.datadir)
        assert ours != theirs
        try:
            # As PostgreSQL runs it: the data directory is the cwd, %p is relative.
            refused = _fetch(config, SOURCE, name, "pg_wal/RECOVERYXLOG", cwd=datadir)
            assert refused.code == 128, refused.stderr
            assert ours in refused.stderr and theirs in refused.stderr, refused.stderr
            assert list((datadir / "pg_wal").iterdir()) == []
            # An absolute %p finds the same data directory.
            refused = _fetch(config, SOURCE, name, str(datadir / "pg_wal" / "RECOVERYXLOG"))
            assert refused.code == 128 and theirs in refused.stderr, refused.stderr
            assert list((datadir / "pg_wal").iterdir()) == []
            # The cluster's own pg_control: the very same fetch hands the segment over.
            shutil.copy(wal_site.cluster.datadir / "global" / "pg_control", datadir / "global" / "pg_control")
            accepted = _fetch(config, SOURCE, name, "pg_wal/RECOVERYXLOG", cwd=datadir)
            assert accepted.code == 0, accepted.stderr
            header = read_header((datadir / "pg_wal" / "RECOVERYXLOG").read_bytes()[:64], name)
            assert header.system_identifier == ours
        finally:
            _stop_pushers(wal_site.root)


# --- recovery targets ---------------------------------------------------------------------------------------


def test_restore_and_drill_refuse_a_bad_target_before_downloading_anything(site: Site,
                                                                           cli: CliRunner) -> None:
    init_and_backup(site, cli)
    pgdata = site.root / "restored"
    for option, value in (("--target-lsn", "xyz"), ("--target-xid", "abc"), ("--target-xid", "0"),
                          ("--target-name", ""), ("--target-timeline", "two")):
        result = cli(site.config, "restore", "main", "--pgdata", str(pgdata), option, value)
        assert result.code == 2, (option, value, result.stderr)
        assert option in result.error_line and "unexpected" not in result.stderr
        assert not pgdata.exists()
    drill = cli(site.config, "drill", "run", "main", "--target-lsn", "xyz", "-o", "json")
    assert drill.code == 2 and "--target-lsn 'xyz' is not an LSN" in drill.error_line, drill.stderr
    listed = json.loads(cli(site.config, "drill", "list", "main", "-o", "json").stdout or "[]")
    assert listed == []
