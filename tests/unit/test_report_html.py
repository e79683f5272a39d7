"""The report's page, drawn from a report made by hand: every text is escaped wherever it lands (tables, SVG
titles, facts, findings), the page is self-contained, and the timeline puts marks where their times are.

(The page of real repositories, and a real browser drawing it: integration/test_report.py.)
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from backupctl.monitoring.check import CRITICAL, WARNING, Finding
from backupctl.monitoring.report import Report, SourceReport, WalGap, WalRun
from backupctl.monitoring.report_html import render
from backupctl.monitoring.status import (
    DrillSummary,
    NewestBackup,
    RepositoryFacts,
    SourceStatus,
    VerifySummary,
    WalFacts,
    Window,
)
from backupctl.repo.catalog import Manifest
from backupctl.repo.pipeline import StoredObject

EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"
NOW = "2026-12-05T12:00:00.000Z"


def _report(name: str = EVIL) -> Report:
    backup = Manifest(
        "20261205T020000000Z-F-abc", name, "postgres", "full", "2026-12-05T02:00:00.000Z", "2026-12-05T02:10:00.000Z",
        [StoredObject(f"{name}/backups/x/base.tar.zst", 2 * 1024**3, 1024**3, "0" * 64, "zstd", None)], None,
        labels={EVIL: EVIL})
    status = SourceStatus(
        name, "postgres", NOW, True, repository=RepositoryFacts(True, location=EVIL),
        backups=(NewestBackup("full", backup.id, backup.finished_at, 35000.0, backup.size, backup.stored_size, 600.0,
                              1),),
        wal=WalFacts("000000010000000000000010", NOW, 5.0, (1,), 14, 1, 1024),
        window=Window("pitr", backup.finished_at, "2026-12-05T11:59:00.000Z", 35340.0, EVIL, from_backup=backup.id,
                      timeline=1, wal_last="000000010000000000000010"),
        last_verify=VerifySummary("20261205T030000000Z-V-aaa", backup.id, "failed", "2026-12-05T03:00:00.000Z",
                                  "2026-12-05T03:01:00.000Z", "full", 10, EVIL, 32000.0),
        last_drill=DrillSummary("20261205T040000000Z-D-bbb", backup.id, "failed", "2026-12-05T04:00:00.000Z",
                                "2026-12-05T04:05:00.000Z", 250.0, EVIL, 28000.0, (EVIL,)),
        errors=(EVIL,))
    runs = (WalRun(1, 1, "000000010000000000000001", "000000010000000000000004", 4, "2026-12-05T02:00:00.000Z",
                   "2026-12-05T05:00:00.000Z"),
            WalRun(1, 1, "000000010000000000000007", "000000010000000000000010", 10, "2026-12-05T07:00:00.000Z",
                   "2026-12-05T11:59:00.000Z"))
    gap = WalGap(1, 1, "000000010000000000000005", "000000010000000000000006", 2, "2026-12-05T05:00:00.000Z",
                 "2026-12-05T07:00:00.000Z")
    findings = (Finding(name, "verify", CRITICAL, EVIL), Finding(name, "wal_age", WARNING, EVIL))
    source = SourceReport(status, findings, (backup,), runs, (gap,), (status.last_drill,), (status.last_verify,),
                          (EVIL,))
    return Report(NOW, "2026-11-05T12:00:00.000Z", EVIL, "0.1.0", (source,))


class _Tags(HTMLParser):
    """Every start tag and attribute name a browser's parser would see."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)


def test_every_text_from_the_repository_is_escaped_wherever_it_lands() -> None:
    page = render(_report())
    parsed = _Tags()
    parsed.feed(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert not any(a.startswith("on") for a in parsed.attributes), "no event handler attribute"
    assert "src" not in parsed.attributes and "href" not in parsed.attributes, "nothing fetched"
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;&#x27;&amp;"
    # source name (heading, section id, SVG label), repository, labels, window problem, errors, findings,
    # the drill's and the verify's problems, in the tables and the marks' titles
    assert page.count(escaped) >= 15, page.count(escaped)


def test_the_page_names_repository_time_and_draws_each_part_where_it_happened() -> None:
    page = render(_report("main"))
    assert "generated 2026-12-05 12:00:00 UTC" in page and "showing from 2026-11-05 12:00:00 UTC" in page
    assert "<title>backupctl report: " in page
    assert ">20261205T020000000Z-F-abc<" in page and "2.0 GiB" in page and "600.0s" in page
    assert "point in time 2026-12-05 02:10:00 UTC → 2026-12-05 11:59:00 UTC" in page
    assert "WAL gap: 2 segment(s) missing, 000000010000000000000005 .. 000000010000000000000006" in page
    assert "RTO 250.0s" in page and "1 gap(s)" in page
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert re.findall(r"<text [^>]*>(\d\d:\d\d)</text>", svg)[:2] == ["02:00", "04:00"], "two-hour ticks over a day"

    def x_of(title_start: str) -> float:
        mark = re.search(r'<(?:rect|circle) (?:x|cx)="([\d.]+)"[^>]*><title>' + re.escape(title_start), svg)
        assert mark, title_start
        return float(mark.group(1))

    backup, gap, drill = x_of("20261205T020000000Z-F-abc"), x_of("WAL gap"), x_of("drill ")
    assert backup < drill < gap, "the backup (02:00), the drill (04:05), the gap (05:00 to 07:00), in this order"
