"""Times that mean one thing: a host whose clock is wrong changes neither restore plans nor retention.

The wrong clock is libfaketime's (the Debian package `faketime`), on the backup or the expire process
only: the PostgreSQL server and the store (a local repository: file times come from the kernel, which
libfaketime does not touch) keep the real time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from conftest import CliRunner, Result, backup_id, cli_env
from test_pitr import Site, _batches, _init_and_backup, _restore, site  # noqa: F401 - the archiving cluster fixture

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None, reason="needs the faketime package")


def faked_cli(offset: str, config: object, *args: str) -> Result:
    """backupctl under a clock ``offset`` away from the real one (e.g. "+2d")."""
    command = ["faketime", "-f", offset, sys.executable, "-m", "backupctl", "--config", str(config), *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=300, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_the_faked_clock_is_the_backupctl_process_clock_only() -> None:
    faked = subprocess.run(["faketime", "-f", "+2d", sys.executable, "-c", "import time; print(time.time())"],
                           capture_output=True, text=True, check=True)
    assert float(faked.stdout) - time.time() > 86400


def test_a_backup_host_clock_days_ahead_does_not_change_which_backup_reaches_a_time(
        site: Site, cli: CliRunner) -> None:  # noqa: F811
    assert cli(site.config, "init").code == 0
    site.sql("CREATE TABLE marks (id int PRIMARY KEY, batch text NOT NULL, at timestamptz DEFAULT now())")
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    ahead = backup_id(faked_cli("+2d", site.config, "backup", "main", "--type", "full", "-o", "json"))
    site.sql("INSERT INTO marks (id, batch) VALUES (2, 'b')")
    time.sleep(1.1)
    target = site.sql("SELECT now()::text")[0][0]
    time.sleep(1.1)
    site.sql("INSERT INTO marks (id, batch) VALUES (3, 'c')")
    site.archived_now(cli)

    restored, plan = _restore(site, cli, "by_time", "--target-time", target)
    try:
        assert plan["backup"] == ahead
        assert _batches(restored) == ["a", "b"]
    finally:
        restored.remove()


def test_an_expire_host_clock_days_ahead_keeps_the_backups_of_the_recovery_window(
        site: Site, cli: CliRunner) -> None:  # noqa: F811
    older = _init_and_backup(site, cli)
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    site.archived_now(cli)
    newer = backup_id(cli(site.config, "backup", "main", "--type", "full", "-o", "json"))
    with open(site.config, "a") as config:
        config.write('\n[sources.main.retention]\nkeep_last = 1\nrecovery_window = "1d"\n')

    plan = faked_cli("+3d", site.config, "expire", "main", "--dry-run", "-o", "json")
    assert plan.code == 0, plan.stderr
    rules = {row["id"]: row["rules"] for row in json.loads(plan.stdout)}
    assert any(rule.startswith("recovery_window") for rule in rules[older]), rules[older]
    expired = faked_cli("+3d", site.config, "expire", "main")
    assert expired.code == 0, expired.stderr
    listed = {row["id"] for row in json.loads(cli(site.config, "list", "main", "-o", "json").stdout)}
    assert listed == {older, newer}
    # Every moment between the two backups can still be restored: the older one is the only way there.
    restored, restore_plan = _restore(site, cli, "inside_window", "--backup", older, "--target", "immediate")
    try:
        assert restore_plan["backup"] == older and _batches(restored) == []
    finally:
        restored.remove()
