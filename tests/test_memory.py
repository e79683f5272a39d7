"""Memory stays flat: a 2 GiB SQLite database backs up and restores with peak RSS under 200 MB."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.memory import measure

LIMIT_MIB = 200


@pytest.mark.slow
def test_two_gib_database_stays_under_200_mb(tmp_path: Path) -> None:
    figures = measure(2048, tmp_path)
    assert figures["database_mib"] >= 2048
    for step in ("backup", "verify", "restore"):
        assert figures[step]["peak_rss_mib"] < LIMIT_MIB, (step, figures)
    # The restore is real: the restored file has the source's size and the CLI checked it row by row.
    assert (tmp_path / "restored.sqlite3").stat().st_size == (tmp_path / "big.sqlite3").stat().st_size
