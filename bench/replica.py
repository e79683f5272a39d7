"""A new replica: built from the repository against `pg_basebackup -R` from the primary, until it streams.

    .venv/bin/python -m bench.replica [--scale 50] [--text-mib 256] [--runs 3] [--major 15] [--json]

Issue 16 builds replicas from the repository (`restore --standby`) so that a new standby costs the primary
nothing but its streaming connection. What is measured is the DBA's wall time from the command to a
standby that streams, for both ways, on the cluster bench.physical builds (``make_database``: pgbench scale
--scale plus --text-mib of random text, ~1.07 GB at the defaults) archiving through backupctl's fast path,
with one full backup and then more WAL written and archived after it (the replica from the repository must
replay it before it streams):

  - repository: create the slot, then
        backupctl --config F restore main --pgdata DIR --standby --primary-conninfo C --slot S --start --port P
    which returns once pg_stat_wal_receiver says streaming (the restore proves and syncs every file);
  - pg_basebackup: create the slot, then
        pg_basebackup -d C -D DIR -X stream -S S -R -c fast      (as postgres; it syncs)
    and start the server (pg_ctl start -w, as the postgres user, archive_mode = off), polling
    pg_stat_wal_receiver until it streams.

Both replicas must stream through their slot (the primary's pg_stat_replication shows it) and show the
primary's row count of ``pgbench_history`` after a final write, or the run fails. The runs alternate which
goes first; medians of --runs; the primary's page cache is warm for both (the repository's files too). The
primary's CPU seconds (its processes' utime + stime from /proc) during each build are reported beside:
what the primary pays. Everything lives in a fresh directory in /tmp owned by the postgres user and is
stopped and removed on every exit path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from backupctl.postgres.binaries import find_binaries
from backupctl.postgres.cluster import ScratchCluster, free_port
from bench.peers import (
    SERVER_USER,
    clean_env,
    load_text,
    make_dir,
    reap_strays,
    run,
    run_and_print,
    run_tree,
    say,
    tree_pids,
    work_directory,
)
from bench.pg_logical import make_database
from bench.physical import SOURCE, Backupctl, Server

WAYS = ("repository", "pg_basebackup")
STREAM_TIMEOUT = 300.0


@dataclass
class Setup:
    workdir: Path
    cluster: ScratchCluster
    server: Server
    backupctl: Backupctl
    database_mib: float


def build(args: argparse.Namespace, stack: ExitStack) -> Setup:
    """The primary archiving into backupctl's repository, a full backup, and WAL written after it."""
    workdir = work_directory(stack, "replica")
    binaries = find_binaries(args.major, need="postgres")
    cluster = ScratchCluster(binaries, base_dir=workdir, settings={
        "archive_mode": "on", "wal_level": "replica", "max_wal_size": "4GB", "autovacuum": "off",
        "max_wal_senders": "10", "max_replication_slots": "10",
    })
    stack.callback(cluster.remove)
    cluster.init()
    cluster.start()
    server = Server(cluster)
    stack.callback(server.conn.close)
    server.set_archive_command("true")  # the load's WAL is not what the replicas replay
    say(f"PostgreSQL {binaries.version} on port {cluster.port}; pgbench scale {args.scale} + {args.text_mib} MiB "
        "of random text ...")
    database = make_database(cluster, args.scale, args.text_mib)
    server.wait_drained()
    bctl = Backupctl.configure(Path(sys.executable).parent / "backupctl", make_dir(workdir / "backupctl"),
                               {"type": "local", "path": str(make_dir(workdir / "repo"))}, cluster)
    bctl.init()
    server.use(bctl.fast_archive_command() or bctl.archive_command())
    server.checkpoint()
    run(bctl.argv("backup", SOURCE, "--type", "full", "--output", "json"), env=clean_env())
    with cluster.connect("bench") as conn:  # WAL after the backup, archived: the replica replays it first
        conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 200000")
        conn.execute("SELECT pg_switch_wal()")
    server.wait_drained()
    return Setup(workdir, cluster, server, bctl, round(database / 2**20, 1))


def primary_cpu(cluster: ScratchCluster) -> float:
    """CPU seconds (user + system) used so far by the primary's processes: the live ones' own, plus what each
    counted for the children it reaped (a base backup's walsender has ended when it is read)."""
    pid = int((cluster.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in tree_pids(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a backend that ended meanwhile
        total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime (stat's 14-17)
    return total / ticks


def wait_streaming(replica: ScratchCluster, slot: str) -> None:
    deadline = time.monotonic() + STREAM_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with replica.connect() as conn:
                row = conn.execute("SELECT status, slot_name FROM pg_stat_wal_receiver").fetchone()
            if row == ("streaming", slot):
                return
        except psycopg.OperationalError:  # starting up: not accepting connections yet
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the pg_basebackup replica did not stream through {slot} in {STREAM_TIMEOUT:.0f}s")


def conninfo(setup: Setup, name: str) -> str:
    return f"host=127.0.0.1 port={setup.cluster.port} user=postgres application_name={name}"


def build_repository(setup: Setup, target: Path, slot: str, phases: dict[str, float]) -> ScratchCluster:
    """`restore --standby --start`; ``phases`` gets what its JSON says each part took."""
    measured = run_tree(setup.backupctl.argv("restore", SOURCE, "--pgdata", str(target), "--standby",
                                             "--primary-conninfo", conninfo(setup, slot), "--slot", slot, "--start",
                                             "--port", str(free_port()), "--output", "json"), env=clean_env())
    restored = json.loads(measured.stdout)
    streaming = restored["recovery"]["streaming"]
    phases.update({"files_seconds": restored["download_extract_seconds"] + restored.get("sync_seconds", 0),
                   "start_to_archive_end_seconds": restored["recovery"]["start_seconds"],
                   "archive_end_to_streaming_seconds": streaming["seconds"]})
    if streaming["slot"] != slot:
        raise RuntimeError(f"the repository replica streams through {streaming['slot']}, not {slot}")
    replica = ScratchCluster.adopt(setup.cluster.binaries, target, remove_datadir=True, base_dir=setup.workdir)
    replica.port = int((target / "postmaster.pid").read_text().splitlines()[3])
    return replica


def build_basebackup(setup: Setup, target: Path, slot: str, phases: dict[str, float]) -> ScratchCluster:
    """`pg_basebackup -R` and a start; ``phases`` gets the copy's and the start's times."""
    cluster = setup.cluster
    copied = run_tree([str(cluster.binaries.path("pg_basebackup")), "-d", conninfo(setup, slot), "-D", str(target),
              "-X", "stream", "-S", slot, "-R", "-c", "fast"], user=SERVER_USER, env=clean_env(SERVER_USER))
    replica = ScratchCluster.adopt(cluster.binaries, target, remove_datadir=True, base_dir=setup.workdir,
                                   settings={"archive_mode": "off"})
    clock = time.monotonic()
    replica.start(timeout=STREAM_TIMEOUT)
    wait_streaming(replica, slot)
    phases.update({"files_seconds": copied.seconds, "start_to_streaming_seconds": time.monotonic() - clock})
    return replica


def measure(setup: Setup, way: str, index: int) -> dict[str, Any]:
    """One replica built the ``way`` asked, until it streams; checked, then stopped and removed."""
    slot = f"bench_{way}_{index}"
    target = setup.workdir / "replicas" / f"{way}-{index}"
    make_dir(target.parent, mode=0o755)
    setup.server.conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
    cpu, clock = primary_cpu(setup.cluster), time.monotonic()
    phases: dict[str, float] = {}
    replica = (build_repository if way == "repository" else build_basebackup)(setup, target, slot, phases)
    seconds, cpu = time.monotonic() - clock, primary_cpu(setup.cluster) - cpu
    try:
        senders = setup.server.conn.execute(
            "SELECT r.state FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid "
            "WHERE s.slot_name = %s", (slot,)).fetchall()
        if senders != [("streaming",)]:
            raise RuntimeError(f"{way}: the primary shows {senders} for slot {slot}, not one streaming sender")
        with setup.cluster.connect("bench") as conn:
            conn.execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())")
            rows = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0]
            lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        deadline = time.monotonic() + 60
        with replica.connect("bench") as conn:
            while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s", (lsn,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{way}: the replica did not replay up to {lsn} in 60s")
                time.sleep(0.05)
            seen = conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0]
        if seen != rows:
            raise RuntimeError(f"{way}: the replica has {seen} rows of pgbench_history, the primary {rows}")
    finally:
        replica.remove()
        setup.server.conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        reap_strays(str(setup.backupctl.config))  # the restore_command's resident fetcher
    return {"seconds": round(seconds, 2), "primary_cpu_seconds": round(cpu, 2),
            **{key: round(value, 2) for key, value in phases.items()}}


def run_bench(args: argparse.Namespace, stack: ExitStack) -> dict[str, Any]:
    """Build, then both ways interleaved (each run alternates which goes first); a JSON-ready document."""
    load_start = os.getloadavg()
    setup = build(args, stack)
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for index in range(args.runs):
        for way in WAYS if index % 2 == 0 else WAYS[::-1]:
            say(f"replica run {index + 1}: {way} ...")
            figures = measure(setup, way, index)
            say(f"replica run {index + 1}: {way}: {figures}")
            runs[way].append(figures)
    summary = {way: {key: statistics.median(r[key] for r in figures) for key in figures[0]}
               for way, figures in runs.items()}
    return {"setup": {"postgres": setup.cluster.binaries.version, "scale": args.scale, "text_mib": args.text_mib,
                      "database_mib": setup.database_mib, "runs": args.runs, "cpus": os.cpu_count(),
                      "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
            "summary": summary, "runs": runs}


def report(document: dict[str, Any]) -> str:
    setup, summary = document["setup"], document["summary"]
    ours, theirs = summary["repository"], summary["pg_basebackup"]
    lines = ["## A new replica, until it streams", "",
             f"PostgreSQL {setup['postgres']}, pgbench scale {setup['scale']} + {setup['text_mib']} MiB of random "
             f"text (database {setup['database_mib']} MiB); a full backup in backupctl's local repository, then "
             "archived WAL after it. Medians of "
             f"{setup['runs']} run(s), interleaved. Load average (1, 5, 15 min) at start "
             f"{load_text(setup['load_average_at_start'])}, at end {load_text(setup['load_average_at_end'])}; "
             f"{setup['cpus']} CPUs.", "",
             "| | from the repository (`restore --standby --start`) | `pg_basebackup -R` + start | ratio |",
             "|---|--:|--:|--:|"]
    for key, label in (("seconds", "command to streaming"), ("primary_cpu_seconds", "primary's CPU during it")):
        ratio = f"{ours[key] / theirs[key]:.2f}x" if theirs[key] else "n/a"
        lines.append(f"| {label} | {ours[key]:.2f} s | {theirs[key]:.2f} s | {ratio} |")
    for way, figures in summary.items():
        parts = ", ".join(f"{key.removesuffix('_seconds').replace('_', ' ')} {value:.2f} s"
                          for key, value in figures.items() if key not in ("seconds", "primary_cpu_seconds"))
        lines.append(f"\n{way}: {parts}.")
    lines += ["", "Each replica streamed through its slot (pg_stat_replication on the primary) and read a row "
              "written on the primary afterwards.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale of the primary")
    parser.add_argument("--text-mib", type=int, default=256, help="MiB of random text beside pgbench's tables")
    parser.add_argument("--runs", type=int, default=3, help="replicas built each way; medians are reported")
    parser.add_argument("--major", type=int, default=15, help="PostgreSQL major")
    parser.add_argument("--json", action="store_true", help="JSON on stdout (the Markdown table goes to stderr)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.replica runs as root: the servers and archive_command run as the postgres user")
    run_and_print(lambda stack: run_bench(args, stack), report, args.json)


if __name__ == "__main__":
    main()
