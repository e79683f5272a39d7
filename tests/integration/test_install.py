"""The README's install and quick start, done as a user does them: a wheel built from this checkout, installed
with ``pip`` into a venv made from ``/usr/bin/python3``, and the quick start's shell block run as it is on a
fresh Debian PostgreSQL 15 cluster (``pg_createcluster``, ``pg_ctlcluster``), as root.

The quick start's first two lines assign every value a host may change (where to install, which cluster,
where the config, repository and spool go); the test gives them its own values (a temp prefix, a cluster of
its own on a free port) and changes nothing else. These tests need root and Debian's postgresql-common: CI
has both (a missing one fails there, and skips elsewhere).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import cli_env
from tests.support.pg_fixtures import require_binaries
from tests.support.s3_servers import free_port
from tests.support.systemd_units import INSTALLED, UNITS, unit_settings

CHECKOUT = Path(__file__).resolve().parents[2]
INSTALL_PREFIX = "/opt/backupctl"  # the README's, which the units name
QUICK_START_MARK = "<!-- quick-start:"
PLACEHOLDERS = ("PREFIX", "PACKAGE", "CLUSTER", "PGPORT", "CONF", "REPO", "SPOOL")


def _require(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(the wheel, a venv with it installed as the README says) in a directory every user can enter."""
    _require(os.geteuid() == 0, "root: the install is done and the server run as root does it")
    root = Path(tempfile.mkdtemp(prefix="backupctl-install-"))
    root.chmod(0o755)
    try:
        wheels = root / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels),
                        str(CHECKOUT)], check=True, capture_output=True, timeout=600)
        wheel = next(wheels.glob("backupctl-*.whl"))
        prefix = root / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(prefix)], check=True, timeout=300)
        subprocess.run([str(prefix / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True,
                       capture_output=True, timeout=600)
        yield wheel, prefix
    finally:
        shutil.rmtree(root)


def test_pip_install_brings_the_units_their_documentation_and_the_example_config(
    installed: tuple[Path, Path],
) -> None:
    _wheel, prefix = installed
    for unit in sorted(UNITS.glob("backupctl-*")):
        settings = unit_settings(unit)
        (documentation,) = settings["Unit"]["Documentation"]
        assert documentation.startswith(f"file:{INSTALL_PREFIX}/"), unit.name
        shipped = prefix / documentation.removeprefix(f"file:{INSTALL_PREFIX}/")
        assert shipped.read_text() == (UNITS / "README.md").read_text(), unit.name
        assert (prefix / "share/backupctl/systemd" / unit.name).read_text() == unit.read_text()
        for command in settings.get("Service", {}).get("ExecStart", []):
            program = command.split()[0]
            assert program == INSTALLED and (prefix / program.removeprefix(f"{INSTALL_PREFIX}/")).is_file()
    example = CHECKOUT / "config/backupctl.example.toml"
    assert (prefix / "share/backupctl/config/backupctl.example.toml").read_text() == example.read_text()
    assert (prefix / "share/doc/backupctl/LICENSE").read_text() == (CHECKOUT / "LICENSE").read_text()
    # The server's OS user runs what the units and archive_command run.
    ran = subprocess.run([str(prefix / "bin/backupctl"), "--help"], cwd="/", env=cli_env(), capture_output=True,
                         text=True, user="postgres", group="postgres", extra_groups=[], timeout=60, check=False)
    assert ran.returncode == 0 and "Usage: backupctl" in ran.stdout, ran.stderr


def quick_start() -> str:
    """The README's quick start: the ``sh`` block after its marker comment."""
    readme = (CHECKOUT / "README.md").read_text()
    after = readme[readme.index(QUICK_START_MARK):]
    block = re.search(r"^```sh\n(.*?)^```$", after, re.DOTALL | re.MULTILINE)
    assert block is not None, "no ```sh block after the quick start's marker"
    return block.group(1)


def with_values(script: str, values: dict[str, str]) -> str:
    """``script`` with the values of its first two lines (the placeholders) replaced, nothing else."""
    lines = script.splitlines(keepends=True)
    assigned = {}
    for line in lines[:2]:
        for word in shlex.split(line, comments=True):
            name, sep, value = word.partition("=")
            assert sep and name.isupper(), f"the quick start's first two lines only assign values: {line!r}"
            assigned[name] = value
    assert tuple(assigned) == PLACEHOLDERS, assigned
    first = " ".join(f"{name}={shlex.quote(values[name])}" for name in PLACEHOLDERS[:4])
    second = " ".join(f"{name}={shlex.quote(values[name])}" for name in PLACEHOLDERS[4:])
    return f"{first}\n{second}\n{''.join(lines[2:])}"


def _as_postgres(*argv: str) -> str:
    proc = subprocess.run(list(argv), cwd="/", env=cli_env(), capture_output=True, text=True, user="postgres",
                          group="postgres", extra_groups=[], timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_readme_quick_start_as_it_is_on_a_fresh_debian_postgresql_15_cluster(
    installed: tuple[Path, Path],
) -> None:
    wheel, _prefix = installed
    binaries = require_binaries(15)
    _require(shutil.which("pg_createcluster") is not None, "Debian's postgresql-common (pg_createcluster)")
    psql = [str(binaries.bindir / "psql"), "-X", "-q", "-A", "-t", "-h", "/var/run/postgresql"]
    name, port = f"qs{secrets.token_hex(4)}", free_port()
    root = Path(tempfile.mkdtemp(prefix="backupctl-quickstart-"))
    root.chmod(0o755)
    values = {"PREFIX": str(root / "opt"), "PACKAGE": str(wheel), "CLUSTER": f"15/{name}", "PGPORT": str(port),
              "CONF": str(root / "etc/backupctl.toml"), "REPO": str(root / "repo"), "SPOOL": str(root / "spool")}
    script = with_values(quick_start(), values)
    pgdata = Path(f"/var/lib/postgresql/15/{name}")
    try:
        subprocess.run(["pg_createcluster", "15", name, "-p", str(port), "--start"], check=True,
                       capture_output=True, timeout=300)
        _as_postgres(*psql, "-p", str(port), "-c",
                     "CREATE TABLE orders AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 5000) g")
        ran = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=root, env=cli_env(),
                             capture_output=True, text=True, timeout=900, check=False)
        assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr}"
        assert re.search(r"^backup \S+-F-\S+ of main", ran.stdout, re.MULTILINE), ran.stdout  # without --type: full
        sql = [*psql, "-p", str(port), "-c"]
        deadline = time.monotonic() + 120
        while _as_postgres(*sql, "SELECT pg_is_in_recovery()").strip() != "f":
            assert time.monotonic() < deadline, "the restored cluster did not promote"
            time.sleep(0.2)
        assert _as_postgres(*sql, "SELECT count(*), sum(length(note)) FROM orders").strip() == "5000|160000"
        # Restored and recovered from the archive, not the old files: recovery renamed the backup's label
        # and ended on a new timeline.
        assert (pgdata / "backup_label.old").exists()
        assert _as_postgres(*sql, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").strip() == "00000002"
    finally:
        pid_file = root / "spool/main/pusher.pid"
        if pid_file.exists():  # the resident WAL pusher outlives the script until it is idle: stop it now
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
        subprocess.run(["pg_dropcluster", "--stop", "15", name], check=False, capture_output=True, timeout=120)
        Path(f"/var/log/postgresql/postgresql-15-{name}.log").unlink(missing_ok=True)
        shutil.rmtree(root)
