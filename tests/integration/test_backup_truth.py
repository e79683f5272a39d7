"""A backup is published only when it can be restored, and `verify` proves that it can.

The WAL range of a physical backup (start to stop segment) is what makes its files consistent: the backup
waits until every segment of it is in the repository, and `verify` reads and decodes every one. To give a
backup a range of several segments, a test hook (around the first stored part, when the backup is
under way) writes and switches WAL while the backup runs; the cluster, archive_command, pusher and
repository are the real ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backupctl.core.config import load_config
from backupctl.core.errors import BackupctlError
from backupctl.engines.base import BackupOptions
from backupctl.repo.catalog import Manifest
from backupctl.repo.repository import open_repository
from backupctl.services import backup
from backupctl.services.backup import backup_source
from backupctl.wal.names import parse_wal_name, segment_name
from tests.support.cli import CliRunner
from tests.support.config import write_toml
from tests.support.pg_site import Site, chown_to_postgres

SWITCHES = 3  # segments the hook adds to the backup's WAL range


def _segment_files(site: Site, name: str) -> list[Path]:
    return list((site.root / "repo" / "main" / "wal" / name[:16]).glob(f"{name}-*"))


def _wait_for(what: str, condition: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _backup_spanning_segments(site: Site, cli: CliRunner, monkeypatch: pytest.MonkeyPatch,
                              lose_first_segment: bool = False) -> tuple[Manifest | None, str]:
    """A full backup in this process whose WAL range spans ``SWITCHES`` + 1 segments; returns it (None when
    it failed) and its first segment. With ``lose_first_segment`` that segment is removed from the
    repository as soon as the pusher has stored it, before the backup could publish its manifest."""
    assert cli(site.config, "init").code == 0
    site.sql("CREATE TABLE marks (id int PRIMARY KEY, batch text NOT NULL)")
    site.archived_now(cli)
    first: list[str] = []
    store = backup._Run.store

    def hooked(run: backup._Run, name: str, stream: Any, finalize: Any = None) -> Any:
        if not first:
            # The backup has started once the server is past its checkpoint: the range begins at its redo.
            # (pg_basebackup shows its phase; a copy of the data directory is past it once its session
            # has returned from pg_backup_start.)
            _wait_for("the backup's checkpoint", lambda: site.sql(
                "SELECT phase FROM pg_stat_progress_basebackup WHERE phase NOT IN "
                "('initializing', 'waiting for checkpoint to finish')") or site.sql(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_backup_start(%' AND state = 'idle'"))
            first.append(site.sql("SELECT pg_walfile_name(redo_lsn) FROM pg_control_checkpoint()")[0][0])
            for index in range(SWITCHES):
                site.sql(f"INSERT INTO marks VALUES ({index}, 'during')")
                site.sql("SELECT pg_switch_wal()")
            if lose_first_segment:
                for path in _wait_for(f"{first[0]} in the repository", lambda: _segment_files(site, first[0])):
                    path.unlink()
        return store(run, name, stream, finalize)

    monkeypatch.setattr(backup._Run, "store", hooked)
    config = load_config(site.config)
    try:
        with open_repository(config) as repo:
            manifest: Manifest | None = backup_source(repo, config.source("main"), "full", BackupOptions())
    except BackupctlError as exc:
        manifest = None
        first.append(str(exc))
    finally:
        chown_to_postgres(site.root)  # this process is root; the CLI and the pusher run as the server's user
    return manifest, "\n".join(first)


def test_a_backup_whose_earlier_wal_segment_is_not_in_the_repository_is_not_published(
        site: Site, cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, report = _backup_spanning_segments(site, cli, monkeypatch, lose_first_segment=True)
    victim, error = report.split("\n", 1) if "\n" in report else (report, "")
    assert manifest is None, f"backup {manifest.id if manifest else ''} was published without {victim}"
    assert victim in error and "not in the repository" in error
    listed = cli(site.config, "list", "main", "-o", "json")
    assert listed.code == 0 and json.loads(listed.stdout) == []


def test_a_backup_spanning_several_segments_is_published_and_verify_reads_its_wal(
        site: Site, cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, first = _backup_spanning_segments(site, cli, monkeypatch)
    assert manifest is not None, first
    size = int(manifest.extra["wal_segment_size"])
    start = parse_wal_name(manifest.extra["start_wal"])
    stop = parse_wal_name(manifest.extra["stop_wal"])
    assert manifest.extra["start_wal"] == first and stop.segno(size) - start.segno(size) >= SWITCHES
    assert manifest.extra["server_stop_time"] and manifest.extra["store_stop_time"]

    verified = cli(site.config, "verify", manifest.id, "-o", "json")
    assert verified.code == 0, verified.stderr
    checks = json.loads(verified.stdout)[0]["checks"]
    assert any(f"WAL {manifest.extra['start_wal']} .. " in check for check in checks), checks

    middle = segment_name(start.timeline, start.segno(size) + 1, size)
    for path in _segment_files(site, middle):
        path.unlink()
    dry_run = cli(site.config, "restore", "main", "--dry-run")
    assert dry_run.code == 1 and middle in dry_run.error_line
    for args in ([manifest.id], ["--latest", "main"]):
        refused = cli(site.config, "verify", *args)
        assert refused.code == 1, refused.stdout
        assert middle in refused.error_line and "missing" in refused.error_line


@pytest.mark.parametrize(("kind", "wrong", "named"), [
    ("postgres", "sqlite", "logical, full or incr"),
    ("sqlite", "full", "sqlite"),
])
def test_a_backup_type_that_does_not_fit_the_source_is_a_usage_error(
        tmp_path: Path, cli: CliRunner, kind: str, wrong: str, named: str) -> None:
    source: dict[str, Any] = {"kind": "sqlite", "path": str(tmp_path / "dev.sqlite3")} if kind == "sqlite" else {
        "kind": "postgres", "host": "127.0.0.1", "port": 1, "pgdata": str(tmp_path / "absent")}
    config = write_toml(tmp_path / "backupctl.toml", {"repository": {"type": "local", "path": str(tmp_path / "r")},
                                                      "sources": {"one": source}})
    assert cli(config, "init").code == 0
    refused = cli(config, "backup", "one", "--type", wrong)
    assert refused.code == 2, refused.stderr
    assert f"--type {wrong}" in refused.error_line and named in refused.error_line
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "r" / "one" / "backups").exists()
