"""`backupctl delete` through the real CLI on a SQLite source in a local repository: what it refuses (one line,
exit 2), its dry run, its JSON, --force, and a delete killed -9 at each of its fault points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backupctl.demo import make_sample_sqlite
from backupctl.repo import lease
from tests.support.backends import Backend
from tests.support.cli import CliRunner, backup_id, cli_env
from tests.support.config import make_config


def _three_backups(tmp_path: Path, backend: Backend, cli: CliRunner) -> tuple[Path, list[str]]:
    """A config and three backups of devdb, oldest first."""
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=30)
    config = make_config(tmp_path, backend, cli=cli)
    assert cli(config, "init").code == 0
    return config, [backup_id(cli(config, "backup", "devdb", "-o", "json")) for _ in range(3)]


def _listed(cli: CliRunner, config: Path) -> list[str]:
    result = cli(config, "list", "devdb", "-o", "json")
    assert result.code == 0, result.stderr
    return [b["id"] for b in json.loads(result.stdout)]


def _folder(backend: Backend, backup: str) -> list[str]:
    return [info.key for info in backend.storage().list(f"devdb/backups/{backup}/")]


def test_delete_removes_an_unprotected_backup_and_refuses_a_protected_one(tmp_path: Path, local_backend: Backend,
                                                                            cli: CliRunner) -> None:
    config, (oldest, middle, newest) = _three_backups(tmp_path, local_backend, cli)

    refused = cli(config, "delete", newest)
    assert refused.code == 2
    assert refused.error_line == (f"backupctl: error: delete of {newest} refused: {newest} is protected (newest "
                                  f"sqlite): check with `backupctl delete {newest} --dry-run`, then run again "
                                  "with --force")
    assert refused.stdout == "" and newest in _listed(cli, config)

    planned = cli(config, "delete", newest, "--dry-run", "-o", "json")
    assert planned.code == 0, planned.stderr
    row, = json.loads(planned.stdout)
    assert (row["id"], row["action"], row["protected_by"], row["result"]) == \
        (newest, "refuse", ["newest sqlite"], "refused")
    assert "the real run refuses without --force" in planned.stderr

    dry = cli(config, "delete", middle, "--dry-run")
    assert dry.code == 0 and "would remove 1 backup(s)" in dry.stdout
    assert middle in _listed(cli, config) and _folder(local_backend, middle)

    done = cli(config, "delete", middle, "-o", "json")
    assert done.code == 0, done.stderr
    assert [(r["id"], r["action"], r["result"]) for r in json.loads(done.stdout)] == [(middle, "remove", "removed")]
    assert _listed(cli, config) == [newest, oldest]
    assert _folder(local_backend, middle) == []

    assert cli(config, "pin", oldest, "--reason", "audit").code == 0
    pinned = cli(config, "delete", oldest)
    assert pinned.code == 2 and f"{oldest} is protected (pinned: audit" in pinned.error_line
    forced = cli(config, "delete", oldest, "--force")
    assert forced.code == 0, forced.stderr
    assert "removed 1 backup(s)" in forced.stdout
    assert _listed(cli, config) == [newest]
    assert _folder(local_backend, oldest) == []
    assert not list(local_backend.storage().list("devdb/pins/")), "the pin of a deleted backup goes with it"
    assert cli(config, "verify", "--all").code == 0


def test_delete_of_an_unknown_or_malformed_id_is_a_usage_error(tmp_path: Path, local_backend: Backend,
                                                              cli: CliRunner) -> None:
    config, _ = _three_backups(tmp_path, local_backend, cli)
    for wrong in ("foo", "20200101T000000000Z-S-zzz"):
        result = cli(config, "delete", wrong)
        assert result.code == 2, result.stderr
        assert wrong in result.error_line and "backupctl list" in result.error_line


@pytest.mark.parametrize("point", ["delete.manifest-removed", "delete.data-removed"])
def test_a_killed_delete_never_leaves_a_listed_backup_with_missing_objects(
        tmp_path: Path, local_backend: Backend, cli: CliRunner, point: str) -> None:
    config, (oldest, middle, newest) = _three_backups(tmp_path, local_backend, cli)
    env = {**cli_env(), "BACKUPCTL_FAULT_POINT": point}
    killed = subprocess.run([sys.executable, "-m", "backupctl", "--config", str(config), "delete", middle],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    assert _listed(cli, config) == [newest, oldest]
    verified = cli(config, "verify", "--all", "-o", "json")
    assert verified.code == 0, verified.stderr
    assert {r["id"] for r in json.loads(verified.stdout)} == {newest, oldest}
    # What the kill left unlisted is debris for gc, once the lease the killed run held has expired.
    leftover = _folder(local_backend, middle)
    assert all("manifest.json" not in key for key in leftover)
    collected = cli(config, "repo", "gc", "--grace", "0s", "-o", "json")
    assert collected.code == 0, collected.stderr
    assert _folder(local_backend, middle) == []


def test_a_backup_being_read_is_refused_and_forced_leaves_its_data_for_gc(tmp_path: Path, local_backend: Backend,
                                                                         cli: CliRunner) -> None:
    config, (oldest, _middle, newest) = _three_backups(tmp_path, local_backend, cli)
    storage = local_backend.storage()
    with lease.shared(storage, "devdb", operation="restore", backups=[oldest]):
        refused = cli(config, "delete", oldest)
        assert refused.code == 2 and f"{oldest} is protected (read by restore on " in refused.error_line
        forced = cli(config, "delete", oldest, "--force", "-o", "json")
        assert forced.code == 0, forced.stderr
        row, = json.loads(forced.stdout)
        assert row["protected_by"][0].startswith("read by restore on")
        assert row["result"].startswith("manifest removed; data left for `repo gc` (restore on ")
        assert oldest not in _listed(cli, config)
        assert sorted(key.rsplit("/", 1)[1] for key in _folder(local_backend, oldest)) == \
            ["database.sqlite3.zst", "expired.json"]
        busy = json.loads(cli(config, "repo", "gc", "--grace", "0s", "-o", "json").stdout)
        assert [r["action"] for r in busy if r["id"] == oldest] == ["keep"]
    done = json.loads(cli(config, "repo", "gc", "-o", "json").stdout)
    assert [(r["item"], r["result"]) for r in done if r["id"] == oldest] == [("expired-backup", "removed")]
    assert _folder(local_backend, oldest) == []
    assert newest in _listed(cli, config)
