"""Faults of the resident WAL pusher, and of the config, that must never stop WAL archiving.

Real parts only: a scratch cluster whose archive_command is what ``pg-settings`` prints (run by PostgreSQL as
the postgres user), a real full filesystem (a small tmpfs, filled) under the pusher's spool and log, a real
SIGSTOP of the pusher process. The invariant checked each time: every segment PostgreSQL counts as archived
is in the repository, and the archiver never failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from tests.support.config import write_toml
from tests.support.disks import PAGE, fill, spool_on_a_small_disk
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import QUICK_WAL, SOURCE, Site, alive, archiving_site, chown_to_postgres


def _archived_everything(site: Site, names: list[str]) -> None:
    """The invariant: what PostgreSQL counts as archived is stored, and archive_command never failed."""
    site.wait_archived(names[-1], timeout=60)
    last, failed = site.sql("SELECT last_archived_wal, failed_count FROM pg_stat_archiver")[0]
    keys = site.wal_keys()
    assert failed == 0, site.cluster._read_log()[-3000:]
    assert {*names, last} <= set(keys), sorted(set(names) - set(keys))


def _fallbacks(site: Site) -> int:
    """How often an archive_command gave up on the pusher and did the work itself (its warning, in the server log)."""
    return site.cluster._read_log().count("in this process")


def _fill(mount: Path, log: Path) -> None:
    """Pad the log to a page boundary, then fill the filesystem: the log's next line needs a page there is not."""
    with open(log, "ab") as handle:
        gap = -handle.tell() % PAGE
        if gap:
            handle.write(b" " * (gap - 1) + b"\n")
    fill(mount)
    with pytest.raises(OSError, match="No space left"), open(log, "ab", buffering=0) as handle:
        handle.write(b"\n")


def test_pusher_log_on_a_full_disk_never_stops_archiving(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request, wal={**QUICK_WAL, "timeout": 3}) as site, \
            spool_on_a_small_disk(site) as mount:
        first = site.switch()
        site.wait_archived(first)
        pusher = site.pusher_pid()
        assert pusher is not None
        log = mount / SOURCE / "pusher.log"
        _fill(mount, log)
        size = log.stat().st_size
        before = _fallbacks(site)

        # Every log line of the pusher now fails with ENOSPC; no worker may die of it.
        names = [site.switch(rows=500) for _ in range(8)]
        _archived_everything(site, names)
        assert site.pusher_pid() == pusher and alive(pusher), "the same pusher serves on"
        assert _fallbacks(site) == before, "the pusher answered every segment itself"
        assert log.stat().st_size == size, "nothing reached the full disk"

        # Space again: the next line that gets through says how many were lost.
        (mount / "filler").unlink()
        last = site.switch(rows=500)
        _archived_everything(site, [last])
        assert '"log lines dropped"' in site.pusher_log(), site.pusher_log()[-2000:]


def test_stopped_pusher_is_replaced_by_pid(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request, wal={**QUICK_WAL, "timeout": 3}) as site:
        first = site.switch()
        site.wait_archived(first)
        stopped = site.pusher_pid()
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        try:
            names = [site.switch(rows=500) for _ in range(4)]
            _archived_everything(site, names)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        # The first command that met the silence killed it by the pid recorded with its lock; a new
        # pusher took over, so the stall was paid once, not once per segment.
        assert not alive(stopped)
        assert f"killed the unresponsive pusher (pid {stopped})" in site.cluster._read_log()
        replacement = site.pusher_pid()
        assert replacement not in (None, stopped) and alive(replacement)
        assert _fallbacks(site) <= 1


def _break_config(site: Site, wal: dict[str, object], *, only_the_webhook: bool = False) -> None:
    """The site's config (with this [wal]) plus mistakes in what the WAL path does not read: a webhook URL
    without a scheme, a [metrics] listen that is not HOST:PORT, a cron expression that is not one."""
    source = {"kind": "postgres", "host": "127.0.0.1", "port": site.cluster.port, "user": "postgres",
              "pgdata": str(site.cluster.datadir)}
    document = {"repository": site.repository,
                "wal": {"spool_dir": str(site.root / "spool"), "timeout": 10, "idle_exit": 60, **wal},
                "sources": {SOURCE: source}}
    if not only_the_webhook:
        document["metrics"] = {"listen": "nowhere"}
        source["schedule"] = {"full": "every night"}
    text = write_toml(site.config, document).read_text()
    site.config.write_text(text + '\n[[webhooks]]\nurl = "hooks.example.com/backups"\n')
    chown_to_postgres(site.root)


def test_a_typo_outside_the_wal_sections_never_stops_archiving(request: pytest.FixtureRequest) -> None:
    with archiving_site(require_binaries(15), request) as site:
        first = site.switch()
        site.wait_archived(first)
        old = site.pusher_pid()

        # The fast path: the resident pusher (restarted for the new config) loads it and serves.
        _break_config(site, {"async": True})
        names = [site.switch(rows=500) for _ in range(3)]
        _archived_everything(site, names)
        assert site.pusher_pid() not in (None, old)
        assert _fallbacks(site) == 0

        # The fallback: no pusher, every archive_command loads the config and pushes (and fetches) in-process.
        _break_config(site, {"async": False, "prefetch": 0})
        names = [site.switch(rows=500) for _ in range(2)]
        _archived_everything(site, names)
        again = site.cli("wal-push", str(site.segment_copy(names[-1])))
        assert again.code == 0, again.stderr
        dest = site.root / "fetched"
        dest.mkdir()
        chown_to_postgres(dest)
        got = site.fetch(names[0], dest / "RECOVERYXLOG")
        assert got.code == 0, got.stderr

        # Everything else still reports each mistake in one line: pg-settings exits 2, check says UNKNOWN (3).
        for only_the_webhook, mistake in ((False, "sources.main.schedule.full"), (True, "webhooks[0].url")):
            _break_config(site, {"async": False}, only_the_webhook=only_the_webhook)
            settings = site.cli("pg-settings")
            assert settings.code == 2 and mistake in settings.error_line, settings.stderr
            check = site.cli("check")
            assert check.code == 3 and check.stdout.startswith("BACKUPCTL UNKNOWN") and mistake in check.stdout
