"""Logical backup of a ~1 GiB PostgreSQL database: backupctl's peak memory and speed against pg_dump.

    .venv/bin/python -m bench.pg_logical [--scale 50] [--text-mib 256] [--major 15] [--runs 3]

Builds a scratch cluster with pgbench data (scale 50 is about 750 MiB) plus a table of random text (which
does not compress as well as pgbench's), then times, as median of --runs:
  - backupctl backup --type logical (zstd at its default level into a local repository), with its peak RSS;
  - pg_dump -Fc (its default compression, gzip level 6) to a file: what a hand-rolled cron job does;
  - pg_dump -Fc -Z0 piped into zstd -3 -T0 to a file: the same work as backupctl, done by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backupctl.postgres.binaries import PgBinaries, find_binaries
from backupctl.postgres.cluster import ScratchCluster
from bench.memory import run_measured

MIB = 1024 * 1024


def make_database(cluster: ScratchCluster, scale: int, text_mib: int) -> int:
    """pgbench tables plus random text; returns the database size in bytes."""
    binaries = cluster.binaries
    info = cluster.conninfo("bench")
    with cluster.connect() as conn:
        conn.execute("CREATE DATABASE bench")
    subprocess.run(
        [binaries.path("pgbench"), "-i", "-q", "-s", str(scale), "-h", str(info["host"]),
         "-p", str(info["port"]), "-U", str(info["user"]), "bench"],
        check=True, capture_output=True,
    )
    with cluster.connect("bench") as conn:
        rows = text_mib * MIB // 1024
        conn.execute(
            "CREATE TABLE notes AS SELECT g AS id, "
            "(SELECT string_agg(md5(random()::text || g.g || k), '') FROM generate_series(1, 32) k) AS body "
            f"FROM generate_series(1, {rows}) AS g(g)"
        )
        conn.execute("VACUUM ANALYZE")
        return int(conn.execute("SELECT pg_database_size('bench')").fetchone()[0])


def timed(command: str) -> float:
    clock = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, capture_output=True)
    return time.monotonic() - clock


def measure(cluster: ScratchCluster, workdir: Path, runs: int) -> dict[str, Any]:
    info = cluster.conninfo()
    config = workdir / "backupctl.toml"
    config.write_text(
        f'[repository]\ntype = "local"\npath = "{workdir / "repo"}"\n\n'
        f'[sources.main]\nkind = "postgres"\nhost = "{info["host"]}"\nport = {info["port"]}\n'
        f'user = "{info["user"]}"\nbindir = "{cluster.binaries.bindir}"\ndatabases = ["bench"]\n'
    )
    base = [sys.executable, "-m", "backupctl", "--config", str(config)]
    run_measured([*base, "init"])
    backups = [run_measured([*base, "backup", "main", "--output", "json"]) for _ in range(runs)]
    stored = json.loads(backups[-1]["stdout"])["stored_size"]
    env = f"PGHOST={info['host']} PGPORT={info['port']} PGUSER={info['user']} PGDATABASE=bench"
    pg_dump = cluster.binaries.path("pg_dump")
    plain = [timed(f"{env} {pg_dump} -Fc -f {workdir / 'plain.dump'}") for _ in range(runs)]
    piped = [timed(f"{env} {pg_dump} -Fc -Z0 | zstd -q -3 -T0 > {workdir / 'piped.dump.zst'}")
             for _ in range(runs)]
    return {
        "backupctl_seconds": round(statistics.median(b["seconds"] for b in backups), 2),
        "backupctl_peak_rss_mib": max(b["peak_rss_mib"] for b in backups),
        "backupctl_stored_mib": round(stored / MIB, 1),
        "pg_dump_gzip_seconds": round(statistics.median(plain), 2),
        "pg_dump_gzip_mib": round((workdir / "plain.dump").stat().st_size / MIB, 1),
        "pg_dump_zstd_pipe_seconds": round(statistics.median(piped), 2),
        "pg_dump_zstd_pipe_mib": round((workdir / "piped.dump.zst").stat().st_size / MIB, 1),
    }


def run(binaries: PgBinaries, scale: int, text_mib: int, runs: int, workdir: Path) -> dict[str, Any]:
    with ScratchCluster(binaries, settings={"max_wal_size": "4GB", "checkpoint_timeout": "30min"}) as cluster:
        size = make_database(cluster, scale, text_mib)
        figures = measure(cluster, workdir, runs)
    return {"database_mib": round(size / MIB, 1), "postgres": binaries.version, **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--text-mib", type=int, default=256)
    parser.add_argument("--major", type=int, default=15)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("zstd") is None:
        sys.exit("bench needs the zstd command (apt-get install zstd) for the hand-made baseline")
    workdir = Path(tempfile.mkdtemp(prefix="backupctl-bench-"))
    try:
        binaries = find_binaries(args.major, need="postgres")
        figures = run(binaries, args.scale, args.text_mib, args.runs, workdir)
        print(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
