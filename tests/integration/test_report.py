"""`backupctl report --html`: the page holds every backup, the window, the drills and verifications of real
repositories, escapes what users typed, and a real browser (headless chromium) draws it.

The screenshots are kept as artefacts (tests/support/browser.py says where) for a person to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from backupctl.core.config import load_config
from backupctl.monitoring.report_html import BAD_COLOUR, OK_COLOUR, TYPE_COLOURS, WAL_COLOUR, WINDOW_COLOUR, utc
from backupctl.scheduler.runner import Scheduler
from tests.support.browser import artefacts_dir, colours, hex_colour, read_png, screenshot
from tests.support.ops_helpers import sqlite_site
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import archiving_site
from tests.support.s3_servers import free_port

SCRIPT_LABEL = "<script>alert('x')</script>&\"quoted\""


def _report(site: object, page: Path, *args: str) -> str:
    result = site.cli("report", "--html", str(page), *args)  # type: ignore[attr-defined]
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == f"wrote {page} ({page.stat().st_size} bytes)"
    return page.read_text()


def _self_contained(page: str) -> None:
    """Nothing to run, nothing fetched: no script, no external reference (the SVG namespace is a name)."""
    assert "<script" not in page.lower()
    references = re.findall(r"""(?:src|href|url)\s*[=(]\s*["']?([^"' )>]+)""", page)
    assert references == [], references
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"] * page.count("<svg ")


def _keep(png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    kept = artefacts_dir(tmp_path_factory) / png.name
    shutil.copyfile(png, kept)
    return kept


def _drawn(png: Path) -> dict[tuple[int, int, int], int]:
    """The screenshot is the window's size, not blank, and its colours; the header's dark band on top."""
    assert png.stat().st_size > 20_000, "a blank page compresses to a few KiB"
    width, height, rows = read_png(png)
    assert (width, height) == (1280, 900)
    assert rows[10][:3] == bytes(hex_colour("#24292f")), "the header is drawn with the page's own CSS"
    counts = colours(rows)
    assert len(counts) > 200, "text, marks and backgrounds, not one colour"
    return counts


def test_sqlite_report_shows_backups_window_drill_and_verify_and_escapes_labels(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    site = sqlite_site(tmp_path)
    first = json.loads(site.cli("backup", "devdb", "--label", f"note={SCRIPT_LABEL}", "-o", "json").stdout)
    second = json.loads(site.cli("backup", "devdb", "-o", "json").stdout)
    verified = site.cli("verify", "--latest", "devdb")
    assert verified.code == 0, verified.stderr
    drilled = json.loads(site.cli("drill", "run", "devdb", "-o", "json").stdout)
    assert drilled["status"] == "passed"
    verification = site.keys("devdb/verifications/")[0].rsplit("/", 1)[-1].removesuffix(".json")

    page = _report(site, tmp_path / "report.html")
    for backup in (first, second):
        assert f">{backup['id']}<" in page  # in the table, as text
    assert "2 restorable backup(s), no point in time between them" in page
    assert f">{drilled['id']}<" in page and f"drill {drilled['id']} passed" in page
    assert f">{verification}<" in page
    assert "Repository <code>" + str(tmp_path / "repo") + "</code>" in page
    assert re.search(r"generated \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)
    _self_contained(page)
    assert "note=&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;quoted&quot;" in page

    png = screenshot(tmp_path / "report.html", tmp_path / "report-sqlite.png")
    counts = _drawn(_keep(png, tmp_path_factory))
    assert counts.get(hex_colour(TYPE_COLOURS["sqlite"]), 0) > 20, "the backups' marks"
    assert counts.get(hex_colour(OK_COLOUR), 0) > 20, "the drill, the verification and the restore points"


def test_report_file_mistakes_are_one_line_and_the_page_is_replaced_whole(tmp_path: Path) -> None:
    site = sqlite_site(tmp_path)
    missing = site.cli("report", "--html", str(tmp_path / "no-such-dir" / "report.html"))
    assert missing.code == 2
    assert missing.error_line == (f"backupctl: error: --html {tmp_path}/no-such-dir/report.html: directory "
                                  f"{tmp_path}/no-such-dir does not exist; create it or name a file in an "
                                  "existing directory")
    assert not (tmp_path / "no-such-dir").exists()
    assert site.cli("report", "--html", str(tmp_path)).code == 2
    assert site.cli("report", "--html", str(tmp_path / "r.html"), "nosuchsource").code == 2

    page = tmp_path / "out" / "r.html"
    page.parent.mkdir()
    page.write_text("an older report")
    before = page.stat().st_ino
    _report(site, page, "devdb", "--days", "1")
    assert page.stat().st_ino != before, "renamed over the old page, not rewritten in place"
    assert [p.name for p in page.parent.iterdir()] == ["r.html"], "no temporary file left"
    assert "No backup in this period." in page.read_text()


def test_postgres_report_shows_the_pitr_window_a_wal_gap_and_a_drill(
        request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    with archiving_site(require_binaries(15), request) as site:
        older = json.loads(site.cli("backup", "main", "--type", "full", "-o", "json").stdout)
        lost = [site.switch(), site.switch()]
        site.wait_archived(lost[-1])
        newer = json.loads(site.cli("backup", "main", "--type", "full", "-o", "json").stdout)
        site.wait_archived(site.switch())
        verified = site.cli("verify", "--latest", "main")
        assert verified.code == 0, verified.stderr
        drilled = site.cli("drill", "run", "main", "-o", "json")
        assert drilled.code == 0, drilled.stderr
        drill = json.loads(drilled.stdout)
        # The archive loses the WAL between the two backups: the older one no longer reaches the end.
        keys = site.wal_keys()
        site.storage().delete([keys[name] for name in lost])

        page = _report(site, tmp_path / "report.html", "main")
        status = json.loads(site.cli("status", "main", "-o", "json").stdout)[0]
    window = status["window"]
    assert window["kind"] == "pitr" and window["from_backup"] == newer["id"] and status["wal"]["gaps"] == 1
    for backup in (older, newer):
        assert f">{backup['id']}<" in page
    assert f'from <span class="id">{newer["id"]}</span> on timeline 1' in page
    assert f"point-in-time recovery from {utc(window['earliest'])} to {utc(window['latest'])}" in page
    assert f"{lost[0]}</code> .. <code>{lost[-1]}</code>" in page, "the gap's table row"
    assert f"WAL gap: 2 segment(s) missing, {lost[0]} .. {lost[-1]}" in page, "the gap's mark"
    assert f">{drill['id']}<" in page and drill["rto_seconds"] > 0
    assert f"RTO {drill['rto_seconds']:.1f}s" in page
    assert status["last_verify"]["backup_id"] == newer["id"] and f">{status['last_verify']['id']}<" in page
    _self_contained(page)

    png = screenshot(tmp_path / "report.html", tmp_path / "report-postgres.png")
    counts = _drawn(_keep(png, tmp_path_factory))
    for colour, what in ((TYPE_COLOURS["full"], "full backups"), (WAL_COLOUR, "archived WAL"),
                         (BAD_COLOUR, "the WAL gap"), (WINDOW_COLOUR, "the recoverable window"),
                         (OK_COLOUR, "the drill")):
        assert counts.get(hex_colour(colour), 0) > 20, f"{what} drawn in {colour}"


def test_the_scheduler_serves_the_report_beside_its_metrics(tmp_path: Path) -> None:
    port = free_port()
    site = sqlite_site(tmp_path, {"metrics": {"listen": f"127.0.0.1:{port}"}})
    backup = json.loads(site.cli("backup", "devdb", "-o", "json").stdout)
    scheduler = Scheduler(load_config(site.config), site.config)
    scheduler.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/report", timeout=30) as response:
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            page = response.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            metrics = response.read().decode()
        (tmp_path / "repo").rename(tmp_path / "moved")  # the repository stops answering
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/report", timeout=30)
    finally:
        scheduler.stop()
    assert f">{backup['id']}<" in page and "1 restorable backup(s)" in page
    _self_contained(page)
    assert 'backupctl_backups{source="devdb",type="sqlite"} 1.0' in metrics
    assert refused.value.code == 503
    assert refused.value.read().decode() == f"backupctl report: no repository at {tmp_path}/repo: run `backupctl " \
                                            "init` first\n"
