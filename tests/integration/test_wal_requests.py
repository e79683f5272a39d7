"""S3 requests of WAL archiving: the resident pusher stores each segment with one PUT and lists a folder
once for many segments (``wal.push.ArchiveView``), not once per segment.

Real parts: a scratch cluster whose archive_command is what ``pg-settings`` prints, SeaweedFS behind the
test suite's proxy, which here counts the requests it relays.
"""

from __future__ import annotations

from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest

from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import QUICK_WAL, archiving_site
from tests.support.s3_servers import FaultProxy


class CountingProxy(FaultProxy):
    """The fault proxy, counting object PUTs, bucket listings and the rest by method."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.counts: Counter[str] = Counter()

    def relay(self, handler: BaseHTTPRequestHandler) -> None:
        target = urlsplit(handler.path)
        listing = handler.command == "GET" and ("list-type=" in target.query or target.path.strip("/").count("/") == 0)
        with self._lock:
            self.counts["LIST" if listing else handler.command] += 1
        super().relay(handler)


def test_each_segment_costs_one_put_and_a_folder_one_listing(request: pytest.FixtureRequest) -> None:
    binaries = require_binaries(15)
    endpoint = request.getfixturevalue("seaweedfs_endpoint")
    proxy = CountingProxy(endpoint.url)
    try:
        with archiving_site(binaries, request, store="seaweedfs", endpoint_url=proxy.url, wal=QUICK_WAL) as site:
            site.wait_archived(site.switch(), timeout=60)  # the pusher is up, the source registered
            before = proxy.counts.copy()
            names = [site.switch(rows=200) for _ in range(12)]
            site.wait_archived(names[-1], timeout=60)
            counts = proxy.counts - before
            assert site.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] == 0
            assert set(names) <= set(site.wal_keys())
    finally:
        proxy.close()
    assert counts["PUT"] == len(names), counts
    assert counts["LIST"] <= 2, counts  # one per folder per ArchiveView ttl (5 s), not one per segment
