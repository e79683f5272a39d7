"""Times that mean one thing: a host or store whose clock is wrong changes neither restore plans nor retention.

The wrong clock is libfaketime's (the Debian package `faketime`), on the backup or the expire process, or
on an S3 server (moto) whose Last-Modified then runs behind: everything else keeps the real time (a local
repository's file times come from the kernel, which libfaketime does not touch).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import boto3
import pytest

from tests.support.cli import CliRunner, Result, backup_id, cli_env
from tests.support.pg_site import Site, batches, init_and_backup, restore_and_start
from tests.support.s3_servers import free_port

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


def _target_before(at: Site, cli: CliRunner, number: int, batch: str) -> str:
    """A target time (the server's) a second after the last commit and a second before row ``number``,
    which is then committed and archived."""
    time.sleep(1.1)
    target = at.sql("SELECT now()::text")[0][0]
    time.sleep(1.1)
    at.sql(f"INSERT INTO marks (id, batch) VALUES ({number}, '{batch}')")
    at.archived_now(cli)
    return target


def test_a_backup_host_clock_days_ahead_does_not_change_which_backup_reaches_a_time(
        site: Site, cli: CliRunner) -> None:
    assert cli(site.config, "init").code == 0
    site.sql("CREATE TABLE marks (id int PRIMARY KEY, batch text NOT NULL, at timestamptz DEFAULT now())")
    site.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    ahead = backup_id(faked_cli("+2d", site.config, "backup", "main", "--type", "full", "-o", "json"))
    site.sql("INSERT INTO marks (id, batch) VALUES (2, 'b')")
    target = _target_before(site, cli, 3, "c")

    restored, plan = restore_and_start(site, cli, "by_time", "--target-time", target)
    try:
        assert plan["backup"] == ahead
        assert batches(restored) == ["a", "b"]
    finally:
        restored.remove()


def test_an_expire_host_clock_days_ahead_keeps_the_backups_of_the_recovery_window(
        site: Site, cli: CliRunner) -> None:
    older = init_and_backup(site, cli)
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
    restored, restore_plan = restore_and_start(site, cli, "inside_window", "--backup", older, "--target", "immediate")
    try:
        assert restore_plan["backup"] == older and batches(restored) == []
    finally:
        restored.remove()


@pytest.fixture
def store_behind(site: Site) -> Iterator[Site]:
    """The archiving cluster with its repository on an S3 server (moto) whose clock runs 2 days behind."""
    port = free_port()
    server = subprocess.Popen(["faketime", "-f", "-2d", sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="moto", aws_secret_access_key="moto",
                     region_name="us-east-1").create_bucket(Bucket="skewed")
        credentials = site.root / "aws-credentials"
        credentials.write_text("[default]\naws_access_key_id = moto\naws_secret_access_key = moto\n")
        site.repository = {"type": "s3", "bucket": "skewed", "region": "us-east-1", "endpoint_url": endpoint,
                           "addressing_style": "path", "credentials_file": str(credentials)}
        site.write_config()
        yield site
    finally:
        server.terminate()
        server.wait()


def test_a_store_clock_days_behind_the_server_does_not_end_archived_wal_before_a_target_time(
        store_behind: Site, cli: CliRunner) -> None:
    bid = init_and_backup(store_behind, cli)
    store_behind.sql("INSERT INTO marks (id, batch) VALUES (1, 'a')")
    target = _target_before(store_behind, cli, 2, "b")

    restored, plan = restore_and_start(store_behind, cli, "by_time", "--target-time", target)
    try:
        assert plan["backup"] == bid
        assert batches(restored) == ["a"]
    finally:
        restored.remove()
