"""PITR replay: time to consistency of a restore that must replay a lot of archived WAL, against pgBackRest.

    .venv/bin/python -m bench.replay [--scale 50] [--wal-mib 2048] [--runs 1] [--json]

Issue 14 asks for "a restore that needs 2 GB of archived WAL after the backup: time to consistency against
pgBackRest with async archive-get, same run". A point-in-time restore's cost is mostly replay, and replay
waits on restore_command for every segment: what is measured is how well each tool keeps PostgreSQL fed.

One PostgreSQL 15 cluster (pgBackRest 2.45 supports up to 15) with pgbench data archives every segment
to both repositories (archive_command = backupctl's fast path `&&` pgBackRest archive-push, async), so
both hold the same WAL. Each tool takes a full backup; then --wal-mib of WAL is written (pgbench_accounts
updated in batches of 50,000 rows, each batch committing one row in table ``progress``), the recovery
target is the LSN after the last batch, and one more row is committed after it (a restore that replays
past the target shows it). Then, for each tool, interleaved, medians of --runs:

  - restore into an empty directory with that target and target action promote;
      backupctl --config F restore main --pgdata DIR --target-lsn LSN --target-action promote
      pgbackrest --stanza=bench restore --pg1-path=DIR --type=lsn --target=LSN --target-action=promote
                 (archive-async=y, process-max=2, a spool path: its archive-get queue)
  - start the server ourselves the same way for both (as postgres, a free port, archive_mode=off so the
    promoted copy archives nothing into the shared repositories), and time until it accepts connections
    (pg_ctl start -w: consistent) and until pg_is_in_recovery() is false (the target reached, promoted).
The phases: restore (the tool's command), start (to consistency), replay (consistency to promotion), and
the total from the restore's start to promotion. Each restored cluster must show the source's row count in
``progress`` and the source's sum of pgbench_accounts.abalance at the target, or the run fails.

Fairness: before each restore the spools are emptied (pgBackRest's archive-get queue, backupctl's
resident process, which a restore on another machine would not find running either); the archived WAL
is in the page cache for both. Everything lives in a fresh directory in /tmp owned by the postgres user
and is stopped and removed on every exit path.
"""

from __future__ import annotations

import argparse
import configparser
import os
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupctl.postgres.binaries import find_binaries
from backupctl.postgres.cluster import ScratchCluster
from bench.peers import (
    MIB,
    PgBackRest,
    chown,
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
from bench.physical import SOURCE, STANZA, Backupctl, Server

BATCH_ROWS = 50_000
TOOLS = ("backupctl", "pgbackrest")


@dataclass
class Source:
    """The figures a correct restore to the target must show."""

    target_lsn: str
    progress_rows: int
    abalance_sum: int
    wal_bytes: int  # WAL written after the backups, up to the segment switch after the target


@dataclass
class Setup:
    """What the restores need: the stopped source (its binaries), both tools' configurations, the target."""

    workdir: Path
    cluster: ScratchCluster
    backupctl: Backupctl
    pgbackrest: PgBackRest
    source: Source
    restore_commands: dict[str, str] = field(default_factory=dict)  # what each tool wrote, for the report


def enable_async(pgbackrest: PgBackRest) -> None:
    """archive-async=y in the stanza's config file: archive-push queues, archive-get prefetches.

    The restore_command pgBackRest writes names this config file, so the restored server's archive-get
    runs asynchronously with process-max=2 and the spool path set there (peers.PgBackRest).
    """
    config = configparser.ConfigParser(interpolation=None)
    config.optionxform = str  # type: ignore[assignment,method-assign]
    config.read(pgbackrest.config_file)
    config["global"]["archive-async"] = "y"
    with open(pgbackrest.config_file, "w") as handle:
        config.write(handle)
    chown(pgbackrest.config_file)


def write_wal(server: Server, wal_bytes: int) -> Source:
    """Batched updates until ``wal_bytes`` of WAL were written; the target is the LSN after the last batch."""
    start = server.lsn()
    with server.cluster.connect("bench") as conn:
        conn.execute("CREATE TABLE progress (batch int PRIMARY KEY, at timestamptz DEFAULT now())")
        rows = int(conn.execute("SELECT max(aid) FROM pgbench_accounts").fetchone()[0])
        batch, low = 0, 1
        while server.lsn() - start < wal_bytes:
            batch += 1
            with conn.transaction():
                conn.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid >= %s AND aid < %s",
                             (low, low + BATCH_ROWS))
                conn.execute("INSERT INTO progress (batch) VALUES (%s)", (batch,))
            low = low + BATCH_ROWS if low + BATCH_ROWS <= rows else 1
        target = str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])
        # One commit past the target: replaying beyond it would show this row.
        conn.execute("INSERT INTO progress (batch) VALUES (%s)", (batch + 1,))
        conn.execute("SELECT pg_switch_wal()")
        wal = server.lsn() - start
        # After the target: with data checksums, the first scan of the updated rows sets their hint bits
        # and logs a full-page image of every page (over 1 GB at scale 50), which is not the WAL to replay.
        abalance = int(conn.execute("SELECT sum(abalance) FROM pgbench_accounts").fetchone()[0])
    return Source(target, batch, abalance, wal)


def build(args: argparse.Namespace, stack: ExitStack) -> Setup:
    """The cluster, both repositories, a full backup with each tool, then the WAL to replay, all archived."""
    workdir = work_directory(stack, "replay")
    binaries = find_binaries(args.major, need="postgres")
    cluster = ScratchCluster(binaries, base_dir=workdir, settings={
        "archive_mode": "on", "wal_level": "replica", "max_wal_size": "1GB", "autovacuum": "off",
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
    base = make_dir(workdir / "repos")
    bctl = Backupctl.configure(Path(sys.executable).parent / "backupctl", base / "backupctl",
                               {"type": "local", "path": str(make_dir(base / "backupctl-repo"))}, cluster)
    bctl.init()
    pgbr = PgBackRest(base / "pgbackrest", cluster.datadir, int(cluster.port or 0), cluster.socket_dir,
                      {"repo1-type": "posix", "repo1-path": str(make_dir(base / "pgbackrest-repo"))}, stanza=STANZA)
    enable_async(pgbr)
    pgbr.run("stanza-create")
    push = bctl.fast_archive_command() or bctl.archive_command()
    server.use(f"{push} && {pgbr.archive_command(asynchronous=True)}")
    server.checkpoint()
    run(bctl.argv("backup", SOURCE, "--type", "full", "--output", "json"), env=clean_env())
    pgbr.run("backup", "--type=full")
    say(f"backups taken; writing {args.wal_mib} MiB of WAL ...")
    clock = time.monotonic()
    source = write_wal(server, args.wal_mib * MIB)
    server.wait_drained(timeout=3600)
    say(f"{source.wal_bytes / MIB:.0f} MiB of WAL written and archived by both in {time.monotonic() - clock:.0f} s; "
        f"target LSN {source.target_lsn}, {source.progress_rows} batches")
    server.set_archive_command("")
    cluster.stop()
    return Setup(workdir, cluster, bctl, pgbr, source)


def _empty_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    make_dir(path.parent, mode=0o755)
    return make_dir(path, mode=0o700)


def clear_backupctl(setup: Setup) -> None:
    """A restore on another machine finds no resident process of the source's (nor its prefetched WAL)."""
    reap_strays(str(setup.backupctl.config))


def clear_pgbackrest(setup: Setup) -> None:
    """pgBackRest's archive-get queue from the previous restore would feed this one."""
    shutil.rmtree(setup.pgbackrest.directory / "spool" / "archive", ignore_errors=True)


def restore_backupctl(setup: Setup, target: Path) -> float:
    measured = run_tree(setup.backupctl.argv("restore", SOURCE, "--pgdata", str(target), "--target-lsn",
                                             setup.source.target_lsn, "--target-action", "promote"),
                        env=clean_env())
    return measured.seconds


def restore_pgbackrest(setup: Setup, target: Path) -> float:
    measured = setup.pgbackrest.measured("restore", f"--pg1-path={target}", "--type=lsn",
                                         f"--target={setup.source.target_lsn}", "--target-action=promote")
    return measured.seconds


def restore_command(pgdata: Path) -> str:
    """The restore_command a tool wrote into the restored cluster's configuration (the last one wins)."""
    found = ""
    for name in ("postgresql.conf", "postgresql.auto.conf"):
        path = pgdata / name
        for line in path.read_text().splitlines() if path.exists() else []:
            if line.strip().startswith("restore_command"):
                found = line.split("=", 1)[1].strip()
    return found


def children_cpu() -> float:
    """User + system CPU seconds of the children we waited for (the restore command and what it waited for).

    The server, backupctl's resident fetcher and pgBackRest's async archive-get run detached: not counted.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(setup: Setup, tool: str, clear: Callable[[Setup], None],
            restore: Callable[[Setup, Path], float]) -> dict[str, Any]:
    """One restore, start and replay to promotion; the restored data checked against the source."""
    target = _empty_dir(setup.workdir / "restores" / tool)
    clear(setup)
    clock, cpu = time.monotonic(), children_cpu()
    restore_seconds = restore(setup, target)
    restore_cpu = children_cpu() - cpu
    setup.restore_commands[tool] = restore_command(target)
    cluster = ScratchCluster.adopt(setup.cluster.binaries, target, remove_datadir=True, base_dir=setup.workdir,
                                   settings={"archive_mode": "off"})
    try:
        started = time.monotonic()
        cluster.start(timeout=3600)
        consistent = time.monotonic()
        with cluster.connect("bench") as conn:
            while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                time.sleep(0.02)
            promoted = time.monotonic()
            rows = int(conn.execute("SELECT count(*) FROM progress").fetchone()[0])
            abalance = int(conn.execute("SELECT sum(abalance) FROM pgbench_accounts").fetchone()[0])
    finally:
        cluster.remove()
    if (rows, abalance) != (setup.source.progress_rows, setup.source.abalance_sum):
        raise RuntimeError(f"{tool}: the restored cluster has {rows} progress rows and sum(abalance) {abalance}, "
                           f"the source had {setup.source.progress_rows} and {setup.source.abalance_sum} at the target")
    replay = promoted - consistent
    return {"total_seconds": round(promoted - clock, 2), "restore_seconds": round(restore_seconds, 2),
            "restore_cpu_seconds": round(restore_cpu, 2),
            "start_seconds": round(consistent - started, 2), "replay_seconds": round(replay, 2),
            "replay_mib_per_second": round(setup.source.wal_bytes / MIB / (promoted - started), 1)}


def run_bench(args: argparse.Namespace, stack: ExitStack) -> dict[str, Any]:
    """Build, then the tools interleaved (each run alternates which goes first); a JSON-ready document."""
    load_start = os.getloadavg()
    setup = build(args, stack)
    steps = {"backupctl": (clear_backupctl, restore_backupctl), "pgbackrest": (clear_pgbackrest, restore_pgbackrest)}
    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in TOOLS}
    for index in range(args.runs):
        for tool in TOOLS if index % 2 == 0 else TOOLS[::-1]:
            say(f"replay run {index + 1}: {tool} ...")
            figures = measure(setup, tool, *steps[tool])
            say(f"replay run {index + 1}: {tool}: {figures}")
            runs[tool].append(figures)
    summary = {tool: {key: statistics.median(r[key] for r in figures) for key in figures[0]}
               for tool, figures in runs.items()}
    return {"setup": {"postgres": setup.cluster.binaries.version, "scale": args.scale, "runs": args.runs,
                      "wal_mib": round(setup.source.wal_bytes / MIB), "target_lsn": setup.source.target_lsn,
                      "restore_commands": setup.restore_commands,
                      # its async archive-get logs to this file: proof that the queue, not one-by-one gets, ran
                      "pgbackrest_async_get_ran": (setup.pgbackrest.directory / "log" /
                                                   f"{STANZA}-archive-get-async.log").exists(),
                      "pgbackrest": run(["pgbackrest", "version"]).strip(), "cpus": os.cpu_count(),
                      "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
            "summary": summary, "runs": runs}


def report(document: dict[str, Any]) -> str:
    """The Markdown table: each phase for both tools and the ratio backupctl / pgBackRest."""
    setup, summary = document["setup"], document["summary"]
    lines = ["## PITR replay: time to consistency", "",
             f"PostgreSQL {setup['postgres']}, pgbench scale {setup['scale']}; a full backup with each tool, then "
             f"{setup['wal_mib']} MiB of archived WAL (batched UPDATEs) to replay up to the target LSN "
             f"{setup['target_lsn']}, promote. {setup['pgbackrest']} with archive-async=y, process-max=2; "
             "backupctl's restore_command (wal-fetch, prefetch 8 through its resident process). Medians of "
             f"{setup['runs']} run(s), tools interleaved. Load average (1, 5, 15 min) at start "
             f"{load_text(setup['load_average_at_start'])}, at end {load_text(setup['load_average_at_end'])}; "
             f"{setup['cpus']} CPUs.", "",
             "| | backupctl | pgBackRest | backupctl / pgBackRest |", "|---|--:|--:|--:|"]
    labels = {"total_seconds": "restore start to promoted (time to consistency at the target)",
              "restore_seconds": "restore command",
              "restore_cpu_seconds": "restore command, CPU (user + sys)",
              "start_seconds": "server start to consistent (pg_ctl -w)",
              "replay_seconds": "consistent to promoted (replay)",
              "replay_mib_per_second": "WAL replayed per second of server time (MiB/s)"}
    for key, label in labels.items():
        ours, theirs = summary["backupctl"][key], summary["pgbackrest"][key]
        unit = "" if key.endswith("second") else " s"
        ratio = f"{ours / theirs:.2f}x" if theirs else "n/a"
        lines.append(f"| {label} | {ours:.2f}{unit} | {theirs:.2f}{unit} | {ratio} |")
    lines += ["", "Both restored clusters showed the source's `progress` row count and sum(abalance) at the target. "
              "restore_command as written by each tool:", ""]
    lines += [f"- {tool}: `{command}`" for tool, command in setup["restore_commands"].items()]
    ran = "ran (its log file exists)" if setup["pgbackrest_async_get_ran"] else "did NOT run (no log file)"
    lines.append(f"- pgBackRest's asynchronous archive-get {ran}")
    lines.append("")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale of the cluster")
    parser.add_argument("--wal-mib", type=int, default=2048, help="MiB of WAL to replay after the backups")
    parser.add_argument("--runs", type=int, default=1, help="restores per tool; medians are reported")
    parser.add_argument("--major", type=int, default=15, help="PostgreSQL major (pgBackRest 2.45: up to 15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="JSON on stdout (the Markdown table goes to stderr)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.replay runs as root: the server, pgBackRest and restore_command run as the postgres user")
    if shutil.which("pgbackrest") is None:
        sys.exit("pgBackRest is missing: apt-get install -y pgbackrest")
    run_and_print(lambda stack: run_bench(args, stack), report, args.json)


if __name__ == "__main__":
    main()
