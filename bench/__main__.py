"""Everything issues 14 and 16 measure, in one command, as one Markdown report.

    .venv/bin/python -m bench [--only physical,replay,incremental,replica] [--scale 50] [--runs 3]
                              [--store both] [--text-mib 256] [--physical-steps files,drain]
                              [--replay-runs 1] [--wal-mib 2048] [--rounds 6] [--round-seconds 5]
                              [--lock FILE] [--output FILE]

The parts, in this order (each builds its own clusters and stops everything it started):
  - physical: bench.physical, run as a subprocess (its own signal handling and clean-up): full backup,
    restore and WAL drain, backupctl against pgBackRest 2.45, on a local directory and on SeaweedFS S3,
    with the floors and targets its table shows;
  - replay: bench.replay, a point-in-time restore that replays --wal-mib of archived WAL, against
    pgBackRest with async archive-get;
  - incremental: bench.incremental, a chain of --rounds incrementals on PostgreSQL 18 against a fresh full
    (backupctl alone: pgBackRest 2.45 cannot back up 17+);
  - replica: bench.replica, a replica built from the repository (restore --standby --start) against
    pg_basebackup -R and a start, each until it streams (issue 16; --runs runs each).
The report starts with the date, the machine and its load average at the start and the end of the whole
run (on a shared machine other work shows in every figure), then each part's tables and wall time. A part
that fails is reported as such and the others still run; the exit status is then 1. Progress goes to
stderr, the report to stdout (and to --output). With --lock FILE each part holds an exclusive flock on
FILE while it runs and lets go between parts: on a shared machine, other timing work (`flock FILE ...`)
neither overlaps a part nor waits for the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import incremental, replay, replica
from bench.peers import say

PARTS = ("physical", "replay", "incremental", "replica")


def physical(args: argparse.Namespace) -> str:
    """bench.physical in a subprocess: its stdout is its Markdown table; its progress passes through on stderr."""
    argv = [sys.executable, "-m", "bench.physical", "--scale", str(args.scale), "--runs", str(args.runs),
            "--text-mib", str(args.text_mib), "--store", args.store, "--steps", args.physical_steps]
    say(f"physical: {' '.join(argv[1:])}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        table, _ = proc.communicate()
    except BaseException:  # interrupted: let it unwind its own clusters and servers
        proc.terminate()
        proc.wait(timeout=300)
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"bench.physical exited {proc.returncode} (its stderr above says why)")
    return table


def run_in_process(module: Any, args: argparse.Namespace) -> str:
    """A part's run_bench inside its own ExitStack (everything it started is stopped), then its report."""
    with ExitStack() as stack:
        document = module.run_bench(args, stack)
    return str(module.report(document))


def part_args(args: argparse.Namespace, **overrides: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **overrides})


@contextlib.contextmanager
def locked(path: Path | None) -> Iterator[None]:
    """An exclusive flock on ``path`` (as `flock FILE command` takes it) for the duration; nothing without one."""
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        say(f"waiting for the lock {path} ...")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {', '.join(PARTS)}")
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale of every part's cluster")
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of each physical measurement and of the incremental restores (medians)")
    parser.add_argument("--store", choices=["local", "s3", "both"], default="both", help="physical: the stores")
    parser.add_argument("--text-mib", type=int, default=256, help="physical: MiB of random text beside pgbench's")
    parser.add_argument("--physical-steps", default="files,drain",
                        help="physical: its --steps (backup and restore = files, drain, lag)")
    parser.add_argument("--replay-runs", type=int, default=1, help="replay: restores per tool (each is long)")
    parser.add_argument("--wal-mib", type=int, default=2048, help="replay: MiB of archived WAL to replay")
    parser.add_argument("--rounds", type=int, default=6, help="incremental: incrementals in the chain")
    parser.add_argument("--round-seconds", type=int, default=5, help="incremental: pgbench seconds per round")
    parser.add_argument("--lock", type=Path, help="hold an exclusive flock on this file during each part")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    parts = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose among {', '.join(PARTS)}")
    if os.geteuid() != 0:
        sys.exit("bench runs as root: the servers, pgBackRest and archive_command run as the postgres user")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    runners: dict[str, Callable[[], str]] = {
        "physical": lambda: physical(args),
        "replay": lambda: run_in_process(replay, part_args(args, runs=args.replay_runs, major=15)),
        "incremental": lambda: run_in_process(incremental, part_args(args, major=18)),
        "replica": lambda: run_in_process(replica, part_args(args, major=15)),
    }
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = _load()
    sections, failed = [], []
    for part in PARTS:
        if part not in parts:
            continue
        with locked(args.lock):
            clock = time.monotonic()
            say(f"=== {part} ===")
            try:
                table = runners[part]()
            except Exception as exc:  # one part's failure must not hide the others' figures
                traceback.print_exc()
                failed.append(part)
                table = f"## {part}\n\n**failed**: {exc}\n"
            seconds = time.monotonic() - clock
        sections.append(f"{table.rstrip()}\n\n_{part}: {seconds:.0f} s wall, load average now {_load()}_\n")
    header = [f"# backupctl benchmarks (issue 14): {started}", "",
              f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}. Load average (1, 5, 15 min) at "
              f"start {load_start}, at end {_load()}. Command: `python -m bench {' '.join(sys.argv[1:])}`.", ""]
    text = "\n".join(header) + "\n" + "\n".join(sections)
    print(text)
    if args.output:
        args.output.write_text(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
