"""The WAL half of the kill -9 matrix: archive_command clients and the resident pusher killed at random moments.

A real PostgreSQL 15 cluster archives through backupctl (the archive_command ``pg-settings`` prints, async, the
resident pusher) into a local repository while the test switches segments; at a seeded random moment after each
switch it SIGKILLs the wal-push client PostgreSQL is running, or the resident pusher. After every trial:

- archiving resumes: PostgreSQL counts the segment just switched as archived (a new client, a new pusher);
- every segment PostgreSQL counts as archived since the test began (``pg_stat_archiver.last_archived_wal`` and
  every segment before it on the timeline) is in the repository, and each new one decodes to the sha256 its key
  names (``decode_object``);
- ``wal-fetch`` of the segment just archived, through the restore_command path, exits 0 with those bytes
  (never 1, "not archived", for an archived file).

Trials: ``BACKUPCTL_FAULT_TRIALS`` (default 80: a tenth kill the client, the rest the pusher; the seed is
``BACKUPCTL_FAULT_SEED``). Violations are collected, not raised at the first one, so the summary lines printed at
the end give the figures of the whole run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from backupctl.core.config import load_config
from backupctl.repo.repository import open_repository
from backupctl.wal.fetch import decode_object
from backupctl.wal.listing import ArchivedWal, list_wal_objects
from backupctl.wal.names import DEFAULT_SEGMENT_SIZE, parse_wal_name, segment_name
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import QUICK_WAL, SOURCE, Site, alive, archiving_site, chown_to_postgres, wal_push_processes

SCALE = int(os.environ.get("BACKUPCTL_FAULT_TRIALS", "80"))
# A killed archive_command makes PostgreSQL's archiver exit (FATAL); the postmaster restarts it ~10 s later
# (measured here): a client trial costs ~10 s, a pusher trial under 1 s. Default: 8 + 72 trials, ~2.5 min.
TRIALS = {"client": max(SCALE // 10, 2), "pusher": max(SCALE - SCALE // 10, 2)}
SEED = int(os.environ.get("BACKUPCTL_FAULT_SEED", "1212"))
FIGURES: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    """At the end, one line per kind: trials, kills that hit a live process, invariant violations."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        for kind, counts in FIGURES.items():
            print(f"\nfault figures: wal kill -9 {kind}: trials={counts['trials']} kills={counts['kills']} "
                  f"violations={counts['violations']} (seed {SEED})")


def _kill(pids: list[int]) -> int:
    """SIGKILL each live pid; how many were alive to be killed."""
    hit = 0
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                hit += 1
    return hit


class Switcher(threading.Thread):
    """Switches segments in a loop (a little data, then pg_switch_wal) while fewer than a few wait to be archived,
    so that archive_command is nearly always running; ``last`` is the newest segment switched."""

    def __init__(self, site: Site, seed: str) -> None:
        super().__init__(daemon=True)
        self.site = site
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.last = site.switch()
        self.error: BaseException | None = None

    def _backlog(self) -> int:
        status = self.site.cluster.datadir / "pg_wal" / "archive_status"
        return sum(1 for entry in os.scandir(status) if entry.name.endswith(".ready"))

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self._backlog() < 3:
                    self.last = self.site.switch(rows=self.rng.choice((100, 2000, 20000)))
                else:
                    time.sleep(0.005)
        except BaseException as exc:
            self.error = exc


class Checker:
    """The invariants after a trial; remembers which segments it already decoded."""

    def __init__(self, site: Site, first: str) -> None:
        self.site = site
        self.first = parse_wal_name(first)
        self.decoded: set[str] = set()
        self.dest = site.root / "fetched"
        self.dest.mkdir()
        chown_to_postgres(self.dest)

    def violations(self, name: str) -> list[str]:
        """What is wrong once PostgreSQL has archived ``name`` (archiving resumed), or [] when all holds."""
        self.site.wait_archived(name, timeout=90)
        last = self.site.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        found = {obj.name.name: obj for obj in self._listed()}
        problems = []
        timeline = self.first.timeline
        size = DEFAULT_SEGMENT_SIZE
        for segno in range(self.first.segno(size), parse_wal_name(last).segno(size) + 1):
            counted = segment_name(timeline, segno, size)
            if counted not in found:
                problems.append(f"{counted} counted as archived (last {last}) but not in the repository")
        problems += self._decode([obj for n, obj in found.items() if n not in self.decoded])
        problems += self._fetch(found.get(name))
        return problems

    def _listed(self) -> list[ArchivedWal]:
        with open_repository(load_config(self.site.config)) as repo:
            return [obj for obj in list_wal_objects(repo, SOURCE) if obj.name.kind == "segment"]

    def _decode(self, objects: list[ArchivedWal]) -> list[str]:
        problems = []
        with open_repository(load_config(self.site.config)) as repo, open(os.devnull, "wb") as sink:
            for obj in objects:
                try:
                    decode_object(repo, obj, sink)
                except Exception as exc:
                    problems.append(f"{obj.key} does not decode: {exc}")
                else:
                    self.decoded.add(obj.name.name)
        return problems

    def _fetch(self, obj: ArchivedWal | None) -> list[str]:
        if obj is None:
            return []  # already reported as missing
        target = self.dest / "RECOVERYXLOG"
        got = self.site.fetch(obj.name.name, target)
        try:
            if got.code != 0:
                return [f"wal-fetch {obj.name.name} (archived) exited {got.code}: {got.stderr.strip()[-300:]}"]
            if hashlib.sha256(target.read_bytes()).hexdigest() != obj.sha256:
                return [f"wal-fetch {obj.name.name} delivered other bytes than its key names"]
            return []
        finally:
            target.unlink(missing_ok=True)


def _trial(site: Site, switcher: Switcher, rng: random.Random, kind: str) -> tuple[str, int]:
    """SIGKILL ``kind`` at a random moment while segments switch; (newest segment switched before, killed)."""
    time.sleep(rng.uniform(0, 0.15))
    if kind == "client":
        deadline = time.monotonic() + 2
        pids = wal_push_processes(site.config)
        while not pids and time.monotonic() < deadline:
            pids = wal_push_processes(site.config)
    else:
        pid = site.pusher_pid()
        pids = [] if pid is None else [pid]
    name = switcher.last
    return name, _kill(pids)


@pytest.mark.parametrize("kind", ["client", "pusher"])
def test_kill_9_while_segments_switch_loses_nothing(request: pytest.FixtureRequest, kind: str) -> None:
    rng = random.Random(f"{SEED}-{kind}")
    counts = FIGURES.setdefault(kind, {"trials": 0, "kills": 0, "violations": 0})
    with archiving_site(require_binaries(15), request, wal={**QUICK_WAL, "timeout": 3}) as site:
        switcher = Switcher(site, f"{SEED}-{kind}-switches")
        checker = Checker(site, switcher.last)
        problems = checker.violations(switcher.last)
        killed: set[int] = set()
        switcher.start()
        try:
            for trial in range(TRIALS[kind]):
                if kind == "pusher":
                    killed.add(site.pusher_pid() or 0)
                name, hit = _trial(site, switcher, rng, kind)
                counts["trials"] += 1
                counts["kills"] += hit
                found = checker.violations(name)
                counts["violations"] += len(found)
                problems += [f"trial {trial}: {p}" for p in found]
        finally:
            switcher.stop.set()
            switcher.join(60)
        assert switcher.error is None, switcher.error
        # Archiving resumed after the last kill: a pusher that none of the kills hit serves the next segment.
        last = site.switch()
        problems += checker.violations(last)
        pusher = site.pusher_pid()
        if pusher is None or pusher in killed or not alive(pusher):
            problems.append(f"no live new pusher after the kills (pid file says {pusher})")
        verify = site.cli("wal", "verify")
        if verify.code != 0:
            problems.append(f"wal verify failed: {verify.stdout[-500:]} {verify.stderr[-500:]}")
        assert counts["kills"] > 0, "no kill hit a live process: the trials tested nothing"
        assert problems == [], "\n".join(problems[:20])
