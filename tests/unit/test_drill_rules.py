"""The drill's pure rules: a table's row estimate, and when a restored table has lost too many rows."""

from __future__ import annotations

from backupctl.engines import pg_contents


def test_row_estimate_rule() -> None:
    assert pg_contents.estimate(-1.0, None) is None
    assert pg_contents.estimate(-1.0, 700) == 700
    assert pg_contents.estimate(100_000.0, 5_000) == 5_000  # reltuples stale after a mass delete
    assert pg_contents.judge(None, None) == "is missing"
    assert pg_contents.judge(10_000, 6_000) is None  # ordinary deletes
    assert pg_contents.judge(10_000, 50_000) is None  # growth
    assert pg_contents.judge(500, 0) is None  # too small to judge
    assert "lost most of its rows" in (pg_contents.judge(10_000, 4_000) or "")
