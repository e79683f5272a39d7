"""Peak memory and throughput of a SQLite backup and restore of a large database.

    .venv/bin/python -m bench.memory [--size-mib 2048] [--workdir DIR] [--s3]

Builds a database of the given size (half incompressible blobs, half repetitive text rows, so both
compressor paths are exercised), then runs the real CLI for `backup`, `verify` and `restore` as child
processes and reports each one's peak RSS (from wait4's rusage, so only that process counts) and
throughput. The streaming pipeline must keep peak RSS flat, far below the database size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.peers import run_tree

MIB = 1024 * 1024


def make_database(path: Path, size_mib: int) -> None:
    """Half random blobs, half compressible text, committed in batches to keep this process small."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
        db.execute("CREATE TABLE lines (id INTEGER PRIMARY KEY, body TEXT)")
        while path.stat().st_size < size_mib * MIB:  # WAL pages reach the file at each checkpoint
            db.execute("INSERT INTO blobs (data) VALUES (?)", (os.urandom(MIB),))
            db.executemany(
                "INSERT INTO lines (body) VALUES (?)",
                ((f"order {i} shipped to customer {i % 977} at warehouse {i % 13}",) for i in range(16_000)),
            )
            db.commit()


def run_measured(command: list[str]) -> dict[str, Any]:
    """Run a child and return its wall time and peak RSS (MiB), failing loudly if it fails."""
    measured = run_tree(command, cwd=Path.cwd())
    return {"seconds": round(measured.seconds, 2), "peak_rss_mib": round(measured.peak_rss_mib, 1),
            "stdout": measured.stdout}


def measure(size_mib: int, workdir: Path, repository: dict[str, Any] | None = None) -> dict[str, Any]:
    """Back up, verify and restore a database of ``size_mib``; returns the figures for each step."""
    db = workdir / "big.sqlite3"
    make_database(db, size_mib)
    repository = repository or {"type": "local", "path": str(workdir / "repo")}
    repo_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in repository.items())
    config = workdir / "backupctl.toml"
    config.write_text(
        f"[repository]\n{repo_lines}\n\n[sources.big]\nkind = \"sqlite\"\npath = \"{db}\"\n"
        f"tmp_dir = \"{workdir / 'stage'}\"\n"
    )
    base = [sys.executable, "-m", "backupctl", "--config", str(config)]
    run_measured([*base, "init"])
    size = db.stat().st_size
    backup = run_measured([*base, "backup", "big", "--output", "json"])
    summary = json.loads(backup.pop("stdout"))
    verify = run_measured([*base, "verify", summary["id"]])
    verify.pop("stdout")
    restore = run_measured([*base, "restore", summary["id"], "--to", str(workdir / "restored.sqlite3")])
    restore.pop("stdout")
    for step in (backup, verify, restore):
        step["mib_per_second"] = round(size / MIB / step["seconds"], 1)
    return {
        "database_mib": round(size / MIB, 1),
        "stored_mib": round(summary["stored_size"] / MIB, 1),
        "backup": backup,
        "verify": verify,
        "restore": restore,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="backupctl-bench-", dir=args.workdir))
    try:
        print(json.dumps(measure(args.size_mib, workdir), indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
