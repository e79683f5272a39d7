"""Memory stays flat: a 2 GiB SQLite database and a 1 GiB PostgreSQL database, under 200 MB peak RSS."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupctl.postgres.binaries import find_binaries
from bench import pg_logical
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


@pytest.mark.slow
def test_one_gib_logical_backup_stays_flat(tmp_path: Path) -> None:
    """pg_dump streams through the pipeline: memory does not grow with the database."""
    figures = pg_logical.run(find_binaries(15, need="postgres"), scale=50, text_mib=256, runs=1,
                             workdir=tmp_path)
    assert figures["database_mib"] >= 1024
    assert figures["backupctl_peak_rss_mib"] < LIMIT_MIB, figures
    assert figures["backupctl_stored_mib"] > 100  # the random text really went through
