"""The repository half of the kill -9 matrix: backup, restore, expire and gc SIGKILLed mid-flight.

Each trial starts one real ``backupctl`` process and kills it with SIGKILL, either after a seeded random delay
(a fraction of what the same command took uninterrupted, so the kills land all along its run) or at a named
fault point (``backupctl.core.faultpoints``: ``BACKUPCTL_FAULT_POINT`` makes the process kill itself there). The
kinds: SQLite backup, restore (to a file) and expire; ``repo gc``; PostgreSQL 15 logical and full backups and
physical restores into a new directory. One repository and one cluster serve every trial of a test; sources
take turns so that a killed holder's lease (``lease_ttl = 3s``) expires while the others run.

Invariants, checked after every trial (the debris ones once the leases of the killed processes have expired):

- every backup ``list`` shows (the catalog's manifests) passes ``verify``, and no manifest is damaged;
- a killed restore never leaves a target that looks complete: a SQLite target keeps its previous bytes (or
  stays absent); a physical target is absent, empty, or keeps ``backupctl.restore-in-progress``;
- after the leases expire, ``repo gc --grace 0s`` succeeds and leaves no debris: every backup directory has
  its manifest, no reader lease, clock probe or superseded lease generation, no temp file of a killed write;
- the next backup of the source succeeds.

Trials: ``BACKUPCTL_FAULT_ROUNDS`` multiplies them (1, the default, gives 205 in all); the seed is
``BACKUPCTL_FAULT_SEED``. Violations are collected, then asserted at the end of each test, and the figures
(trials, kills at random moments and at fault points, violations) are printed at the end of the session and
written to ``fault-kill-figures.json`` in pytest's base temp directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backupctl.core.config import load_config
from backupctl.demo import make_sample_sqlite
from backupctl.postgres.backup_manifest import RESTORE_MARKER
from backupctl.repo import lease
from backupctl.repo.layout import MANIFEST_NAME
from backupctl.repo.repository import Repository, open_repository
from backupctl.services.verify import source_bindir, verify_backup
from backupctl.storage.local import TEMP_PREFIX
from tests.support.cli import cli_env
from tests.support.config import write_toml
from tests.support.pg_site import Site

ROUNDS = int(os.environ.get("BACKUPCTL_FAULT_ROUNDS", "1"))  # a multiplier of the trials: 1 is the CI run
SEED = int(os.environ.get("BACKUPCTL_FAULT_SEED", "1212"))
TTL = 3.0
FIGURES: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end, one line per kind, and the same figures as JSON for the closing note."""
    yield
    path = tmp_path_factory.getbasetemp() / "fault-kill-figures.json"
    path.write_text(json.dumps({"seed": SEED, "rounds": ROUNDS, "kinds": FIGURES}, indent=1))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"fault figures: kill -9 {kind}: " + " ".join(f"{k}={v}" for k, v in counts.items()) + f" (seed {SEED})"
             for kind, counts in FIGURES.items()] + [f"fault figures written to {path}"]
    for line in lines:
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)


def _count(kind: str, what: str, n: int = 1) -> None:
    counts = FIGURES.setdefault(kind, {"trials": 0, "random_kills": 0, "point_kills": 0, "finished": 0,
                                       "violations": 0})
    counts[what] = counts.get(what, 0) + n


@dataclass
class Matrix:
    """One repository under trial: runs killed commands, checks the invariants, collects violations."""

    config: Path
    rng: random.Random
    env: dict[str, str] = field(default_factory=cli_env)
    violations: list[str] = field(default_factory=list)
    verified: set[str] = field(default_factory=set)
    typical: dict[str, float] = field(default_factory=dict)

    def repo(self) -> Repository:
        return open_repository(load_config(self.config))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One uninterrupted command; a failure is a violation (the next backup, gc after the leases)."""
        proc = subprocess.run([sys.executable, "-m", "backupctl", "--config", str(self.config), *args],
                              capture_output=True, text=True, env=self.env, timeout=300, check=False)
        if proc.returncode != 0:
            self.violations.append(f"{' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
        return proc

    def latest(self, source: str) -> str:
        """The id of the source's newest listed backup (a SQLite restore names its backup)."""
        manifests, _damaged = self.repo().catalog.scan(source)
        return max(manifests, key=lambda m: (m.finished_at, m.id)).id

    def measure(self, kind: str, *args: str) -> None:
        """How long the command takes uninterrupted: the random kills are spread over that span."""
        clock = time.monotonic()
        self.run(*args)
        self.typical[kind] = time.monotonic() - clock

    def trial(self, kind: str, args: list[str], point: str | None) -> bool:
        """Run ``args``, killed at ``point`` or at a random moment; whether it died by SIGKILL."""
        env = dict(self.env)
        if point is not None:
            env["BACKUPCTL_FAULT_POINT"] = point
        delay = self.rng.uniform(0.0, 1.2) * self.typical.get(kind, 1.0)
        proc = subprocess.Popen([sys.executable, "-m", "backupctl", "--config", str(self.config), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if point is None:
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _stdout, stderr = proc.communicate(timeout=300)
        killed = proc.returncode == -signal.SIGKILL
        _count(kind, "trials")
        if killed:
            _count(kind, "point_kills" if point else "random_kills")
        elif proc.returncode == 0:
            _count(kind, "finished")
        else:
            self.violation(kind, f"{' '.join(args)} exited {proc.returncode} unkilled: {stderr.decode()[-400:]}")
        return killed

    def violation(self, kind: str, text: str) -> None:
        _count(kind, "violations")
        self.violations.append(f"{kind}: {text}")

    def check_listed(self, kind: str, everything: bool = False) -> None:
        """Every manifest in the catalog verifies (new ones only, unless ``everything``); none is damaged."""
        repo = self.repo()
        manifests, damaged = repo.catalog.scan(None)
        for key, problem in damaged.items():
            self.violation(kind, f"damaged manifest {key}: {problem}")
        for m in manifests:
            if m.id in self.verified and not everything:
                continue
            result = verify_backup(repo, m, source_bindir(repo, m))
            if result.problems:
                self.violation(kind, f"listed backup {m.id} fails verify: {result.problems[:2]}")
            self.verified.add(m.id)

    def wait_free(self, source: str | None, *names: str) -> None:
        """Until the leases a killed process held (exclusive ``names``, the source's readers) have expired."""
        storage = self.repo().storage
        deadline = time.monotonic() + 120
        while any(lease.live_exclusive(storage, source, name) for name in names) or \
                (source is not None and lease.live_readers(storage, source)):
            assert time.monotonic() < deadline, f"the leases of {source or 'the repository'} never expired"
            time.sleep(0.1)

    def settle_and_collect(self, kind: str) -> None:
        """Once every lease of a killed process has expired, `repo gc --grace 0s` leaves no debris."""
        repo = self.repo()
        sources = repo.catalog.sources()
        for source in sources:
            self.wait_free(source, "backup", "expire")
        self.wait_free(None, "gc")
        self.run("repo", "gc", "--grace", "0s")
        storage = repo.storage
        for source in sources:
            dirs: dict[str, list[str]] = {}
            for info in storage.list(f"{source}/backups/"):
                dirs.setdefault(info.key.split("/")[2], []).append(info.key)
            for backup_id, keys in dirs.items():
                if not any(k.endswith("/" + MANIFEST_NAME) for k in keys):
                    self.violation(kind, f"gc left {len(keys)} objects of {source}/{backup_id} without a manifest")
            leftovers = [o.key for o in storage.list(f"{source}/locks/readers/")]
            leftovers += [o.key for o in storage.list(f"{source}/locks/clock/")]
            leftovers += [o.key for o in lease.superseded(storage, source)]
            if leftovers:
                self.violation(kind, f"gc left lease files {leftovers[:3]}")
        temps = [str(p) for p in Path(storage.root).rglob(TEMP_PREFIX + "*")]  # type: ignore[attr-defined]
        if temps:
            self.violation(kind, f"gc left temp files {temps[:3]}")
        self.check_listed(kind, everything=True)


def _pick(rng: random.Random, points: list[str]) -> str | None:
    """Half the trials at a random moment, the rest at each named point in turn."""
    return None if rng.random() < 0.5 else rng.choice(points)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


SQLITE_SOURCES = 4


def test_kill_sqlite_backup_restore_expire_and_gc(tmp_path: Path) -> None:
    """SQLite backups, restores and expires, and repo gc, killed; the invariants after each round of trials."""
    rng = random.Random(SEED)
    sources = {}
    for i in range(SQLITE_SOURCES):
        db = tmp_path / f"db{i}.sqlite3"
        make_sample_sqlite(db, customers=200)
        sources[f"s{i}"] = {"kind": "sqlite", "path": str(db), "retention": {"keep_last": 1}}
    config = write_toml(tmp_path / "backupctl.toml", {
        "repository": {"type": "local", "path": str(tmp_path / "repo"), "lease_ttl": "3s"},
        "sources": sources,
    })
    config.chmod(0o600)
    m = Matrix(config, rng)
    m.run("init")
    m.measure("sqlite-backup", "backup", "s0")
    m.measure("sqlite-restore", "restore", m.latest("s0"), "--to", str(tmp_path / "first.sqlite3"))
    for i in range(1, SQLITE_SOURCES):
        m.run("backup", f"s{i}")
    m.measure("sqlite-expire", "expire", "s0", "--force")
    m.run("backup", "s0")
    m.measure("gc", "repo", "gc", "--grace", "0s")
    targets = {name: tmp_path / f"restored-{name}.sqlite3" for name in sources}
    for name, target in targets.items():
        m.run("restore", m.latest(name), "--to", str(target))
    for _round in range(10 * ROUNDS):
        for name in sources:
            m.trial("sqlite-backup", ["backup", name], _pick(rng, ["backup.data-stored", "backup.published"]))
            m.check_listed("sqlite-backup")
        for name, target in targets.items():
            before = _digest(target)
            if not m.trial("sqlite-restore", ["restore", m.latest(name), "--to", str(target), "--force"], None):
                continue
            if _digest(target) != before:
                m.violation("sqlite-restore", f"a killed restore changed {target} (previous bytes gone)")
        for name in sources:
            m.trial("sqlite-expire", ["expire", name, "--force"],
                    _pick(rng, ["expire.manifest-removed", "expire.data-removed"]))
            m.check_listed("sqlite-expire")
        m.trial("gc", ["repo", "gc", "--grace", "0s"], _pick(rng, ["gc.removed"]))
        m.settle_and_collect("gc")
        for name in sources:
            m.run("backup", name)  # the next backup succeeds
    for target in targets.values():  # restores killed -9 leave their hidden temp file beside the target
        for leftover in target.parent.glob(f".{target.name}.backupctl-*"):
            leftover.unlink()
    assert not m.violations, "\n".join(m.violations)


def _physical_target_ok(pgdata: Path) -> bool:
    """A killed restore's directory never looks complete: absent, empty, or still marked in progress."""
    if not pgdata.exists() or not any(pgdata.iterdir()) or (pgdata / RESTORE_MARKER).exists():
        return True
    # The marker goes last, after the files, recovery settings and ownership: killed after that, it is done.
    return (pgdata / "global" / "pg_control").exists() and (pgdata / "recovery.signal").exists()


@pytest.mark.parametrize("pg_binaries", [15], indirect=True, ids=["pg15"])
def test_kill_postgres_backups_and_physical_restore(site: Site) -> None:
    """Logical and full backups of a small PostgreSQL 15 cluster and physical restores, killed."""
    rng = random.Random(SEED + 1)
    text = site.config.read_text().replace("[repository]\n", f"[repository]\nlease_ttl = \"{int(TTL)}s\"\n", 1)
    site.config.write_text(text)
    # Logical backups take turns on sources of their own (leases are per source), in a second config: with
    # more than one PostgreSQL source, the server's archive_command would have to name its own. They have
    # no pgdata (logical only): started as root, they still write as the repository's owner, or the root-owned
    # folders they leave would stop gc (it failed with "unexpected PermissionError" before).
    main = text[text.index("[sources.main]"):].split("\n[", 1)[0]
    main = "\n".join(line for line in main.split("\n") if not line.startswith("pgdata"))
    logical = text[:text.index("[sources.main]")] + "".join(
        main.replace("[sources.main]", f"[sources.l{i}]") + "\n" for i in range(2))
    logical_config = site.root / "logical.toml"
    logical_config.write_text(logical)
    for path in (site.config, logical_config):
        shutil.chown(path, "postgres", "postgres")
        path.chmod(0o600)
    site.sql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
    m = Matrix(site.config, rng)
    lm = Matrix(logical_config, rng, violations=m.violations, verified=m.verified)
    m.run("init")
    m.measure("pg-full-backup", "backup", "main", "--type", "full")
    lm.measure("pg-logical-backup", "backup", "l0", "--type", "logical")
    lm.run("backup", "l1", "--type", "logical")
    m.measure("pg-physical-restore", "restore", "main", "--pgdata", str(site.root / "first"))
    shutil.rmtree(site.root / "first", ignore_errors=True)
    for n in range(15 * ROUNDS):
        m.wait_free("main", "backup")
        m.trial("pg-full-backup", ["backup", "main", "--type", "full"],
                _pick(rng, ["backup.data-stored", "backup.published"]))
        m.check_listed("pg-full-backup")
        for name in ("l0", "l1"):
            m.wait_free(name, "backup")
            lm.trial("pg-logical-backup", ["backup", name, "--type", "logical"],
                    _pick(rng, ["backup.data-stored", "backup.published"]))
            m.check_listed("pg-logical-backup")
        for k in range(2):
            pgdata = site.root / f"restore-{n}-{k}"
            if m.trial("pg-physical-restore", ["restore", "main", "--pgdata", str(pgdata)],
                       _pick(rng, ["restore.archive-extracted"])) and not _physical_target_ok(pgdata):
                m.violation("pg-physical-restore", f"a killed restore left {pgdata} looking complete "
                                                   f"(no {RESTORE_MARKER})")
            shutil.rmtree(pgdata, ignore_errors=True)
        if n % 3 == 2:
            m.settle_and_collect("pg-gc")
            m.run("backup", "main", "--type", "full")  # the next backup succeeds
            for name in ("l0", "l1"):
                lm.run("backup", name, "--type", "logical")
    assert not m.violations, "\n".join(m.violations)
