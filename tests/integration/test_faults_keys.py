"""Keys and owners under faults: recipients that drift from the repository's (issue 12, finding 5) and
commands run as root against a repository that belongs to the server's user (finding 8)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backupctl.demo import make_sample_sqlite
from tests.support.backends import Backend, make_backend
from tests.support.cli import CliRunner, backup_id
from tests.support.config import make_config, write_toml


def _keygen(cli: CliRunner, path: Path) -> str:
    result = cli(None, "keygen", "--to", str(path))
    assert result.code == 0, result.stderr
    return result.stdout.strip()


def _config_with(tmp_path: Path, base: Path, name: str, recipients: list[str], identity: Path | None) -> Path:
    """A copy of the config ``base`` whose [encryption] has these recipients (and identity file)."""
    import tomllib

    document: dict[str, Any] = tomllib.loads(base.read_text())
    document["encryption"] = {"recipients": recipients, **({"identity_file": str(identity)} if identity else {})}
    return write_toml(tmp_path / name, document)


def _keys(backend: Backend) -> set[str]:
    return {item.key for item in backend.storage().list("")}


def _marker_recipients(backend: Backend) -> list[str]:
    return json.loads(backend.storage().get_bytes("backupctl.json"))["encryption"]["recipients"]


@pytest.fixture
def encrypted_repo(tmp_path: Path, local_backend: Backend, cli: CliRunner) -> tuple[Path, Backend]:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    config = make_config(tmp_path, local_backend, encrypted=True, cli=cli)
    assert cli(config, "init").code == 0
    return config, local_backend


def test_a_drifted_recipient_is_refused_before_anything_is_written(
    tmp_path: Path, encrypted_repo: tuple[Path, Backend], cli: CliRunner
) -> None:
    config, backend = encrypted_repo
    backup_id(cli(config, "backup", "devdb", "-o", "json"))
    real = _marker_recipients(backend)[0]
    other = _keygen(cli, tmp_path / "other.key")  # a typo that still parses, an old key, a tampered config
    drifted = _config_with(tmp_path, config, "drifted.toml", [other], None)
    before = _keys(backend)

    refused = cli(drifted, "backup", "devdb")
    assert refused.code == 2, refused.stderr
    line = refused.error_line
    assert other in line and real in line and "backupctl" in line and "repo recipients" in line
    assert _keys(backend) == before

    # The WAL path (the pusher and the fallback of wal-push) opens the repository its own way.
    from backupctl.core.config import load_config
    from backupctl.core.errors import ConfigError
    from backupctl.wal.opening import open_wal_repository

    with open_wal_repository(load_config(drifted)) as repo, pytest.raises(ConfigError, match="repo recipients"):
        import io

        repo.pipeline.store("devdb/wal/probe", io.BytesIO(b"x" * 100))
    assert _keys(backend) == before
    # Readers are not refused: a restore host with an older list still restores and lists.
    assert cli(drifted, "list").code == 0


@pytest.mark.parametrize("backend_name", ["local", "moto"])
def test_rotation_adds_a_key_and_backups_work_with_the_new_config(
    tmp_path: Path, backend_name: str, cli: CliRunner, request: pytest.FixtureRequest
) -> None:
    backend = make_backend(backend_name, tmp_path, request)
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    config = make_config(tmp_path, backend, encrypted=True, cli=cli)
    assert cli(config, "init").code == 0
    old = _marker_recipients(backend)[0]
    old_backup = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    new = _keygen(cli, tmp_path / "new.key")

    added = cli(config, "repo", "recipients", "add", new)
    assert added.code == 0, added.stderr
    assert new in added.stdout and "encryption.recipients" in added.stdout
    assert _marker_recipients(backend) == [old, new]
    again = cli(config, "repo", "recipients", "add", new)
    assert again.code == 0 and "already" in again.stdout

    stale = cli(config, "backup", "devdb")  # this host's config still has the old list
    assert stale.code == 2 and new in stale.error_line

    rotated = _config_with(tmp_path, config, "rotated.toml", [old, new], tmp_path / "new.key")
    new_backup = backup_id(cli(rotated, "backup", "devdb", "-o", "json"))
    # The new identity opens the new backup; the old one still opens both.
    assert cli(rotated, "verify", new_backup).code == 0
    assert cli(config, "verify", new_backup).code == 0 and cli(config, "verify", old_backup).code == 0

    removed = cli(rotated, "repo", "recipients", "remove", old)
    assert removed.code == 0, removed.stderr
    assert _marker_recipients(backend) == [new]
    last = cli(rotated, "repo", "recipients", "remove", new)
    assert last.code == 2 and "last recipient" in last.error_line
    assert _marker_recipients(backend) == [new]
    # Backups encrypted to a retired recipient are not foreign: verify still passes without the identity.
    public = _config_with(tmp_path, config, "public.toml", [new], None)
    checked = cli(public, "verify", old_backup, "-o", "json")
    assert checked.code == 0, checked.stderr
    assert any("retired" in check for check in json.loads(checked.stdout)[0]["checks"])


def test_recipients_of_an_unencrypted_repository_cannot_change(
    tmp_path: Path, local_backend: Backend, cli: CliRunner
) -> None:
    config = make_config(tmp_path, local_backend)
    assert cli(config, "init").code == 0
    key = _keygen(cli, tmp_path / "k.key")
    refused = cli(config, "repo", "recipients", "add", key)
    assert refused.code == 2 and "not encrypted" in refused.error_line
    typo = cli(config, "repo", "recipients", "add", "age1nope")
    assert typo.code == 2 and "age1nope" in typo.error_line


def _forge(tmp_path: Path, cli: CliRunner, target: Backend, recipients: list[str], name: str) -> str:
    """A backup of the same source written elsewhere with other recipients, copied into ``target``'s
    repository object by object: what a writer that bypassed the check would leave."""
    side_backend = make_backend("local", tmp_path / name, None)  # type: ignore[arg-type]
    (tmp_path / name).mkdir()
    side = write_toml(tmp_path / name / "side.toml", {
        "repository": side_backend.repository,
        "sources": {"devdb": {"kind": "sqlite", "path": str(tmp_path / "dev.sqlite3")}},
        "encryption": {"recipients": recipients},
    })
    assert cli(side, "init").code == 0
    forged = backup_id(cli(side, "backup", "devdb", "-o", "json"))
    source = Path(side_backend.repository["path"]) / "devdb" / "backups" / forged
    shutil.copytree(source, Path(target.repository["path"]) / "devdb" / "backups" / forged)
    return forged


def test_verify_flags_a_backup_encrypted_to_a_foreign_recipient(
    tmp_path: Path, encrypted_repo: tuple[Path, Backend], cli: CliRunner
) -> None:
    config, backend = encrypted_repo
    honest = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    real = _marker_recipients(backend)[0]
    foreign = _keygen(cli, tmp_path / "foreign.key")
    forged = _forge(tmp_path, cli, backend, [foreign], "side1")
    leaky = _forge(tmp_path, cli, backend, [real, foreign], "side2")  # readable by us, and by someone else
    public = _config_with(tmp_path, config, "public.toml", [real], None)  # no identity: stored bytes only

    assert cli(public, "verify", honest).code == 0
    for bid in (forged, leaky):
        result = cli(public, "verify", bid, "-o", "json")
        assert result.code == 1, result.stdout
        problems = json.loads(result.stdout)[0]["problems"]
        assert any(foreign in p and "does not list" in p for p in problems), problems
    # With the identity, verify proves it decrypts (and says with which key); the forged one cannot.
    full = cli(config, "verify", honest, "-o", "json")
    assert full.code == 0 and any(real in c for c in json.loads(full.stdout)[0]["checks"])
    assert cli(config, "verify", forged).code == 1


def test_verify_flags_a_manifest_that_hides_a_recipient(
    tmp_path: Path, encrypted_repo: tuple[Path, Backend], cli: CliRunner
) -> None:
    """A manifest that names only the repository's recipient while its objects carry a second stanza."""
    from backupctl.repo.catalog import _document_hash

    config, backend = encrypted_repo
    real = _marker_recipients(backend)[0]
    foreign = _keygen(cli, tmp_path / "foreign.key")
    leaky = _forge(tmp_path, cli, backend, [real, foreign], "side")
    path = Path(backend.repository["path"]) / "devdb" / "backups" / leaky / "manifest.json"
    doc = json.loads(path.read_text())
    doc["encryption"]["recipients"] = [real]
    doc.pop("sha256")
    doc["sha256"] = _document_hash(doc)
    path.write_text(json.dumps(doc))
    public = _config_with(tmp_path, config, "public.toml", [real], None)
    result = cli(public, "verify", leaky, "-o", "json")
    assert result.code == 1, result.stdout
    problems = json.loads(result.stdout)[0]["problems"]
    assert any("2 recipient stanzas" in p for p in problems), problems


# --- finding 8: one OS user --------------------------------------------------------------------------


@pytest.fixture
def postgres_dir() -> Iterator[Path]:
    """A directory the postgres user can reach (pytest's tmp_path is under root's private directory)."""
    base = Path(tempfile.mkdtemp(prefix="backupctl-owner-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def _chown_tree(root: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *[os.path.join(dirpath, n) for n in dirnames + filenames]]:
            os.chown(name, entry.pw_uid, entry.pw_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_verify_and_drill_as_root_leave_no_root_owned_file(postgres_dir: Path, tmp_path: Path, cli: CliRunner) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    backend = Backend("local", {"type": "local", "path": str(postgres_dir / "repo")})
    config = make_config(tmp_path, backend)
    assert cli(config, "init").code == 0
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    _chown_tree(postgres_dir / "repo", "postgres")  # a repository PostgreSQL archives into

    assert cli(config, "verify", bid).code == 0
    drilled = cli(config, "drill", "run", "devdb")
    assert drilled.code == 0, drilled.stderr
    owned_by_root = [str(p) for p in (postgres_dir / "repo").rglob("*") if p.stat().st_uid == 0]
    assert owned_by_root == []
    records = list((postgres_dir / "repo" / "devdb" / "verifications").glob("*.json"))
    drills = list((postgres_dir / "repo" / "devdb" / "drills").glob("*.json"))
    assert len(records) == 1 and len(drills) == 1


def test_a_verify_result_that_cannot_be_recorded_fails_verify(
    tmp_path: Path, local_backend: Backend, cli: CliRunner
) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    config = make_config(tmp_path, local_backend)
    assert cli(config, "init").code == 0
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    # A file where the records' folder should be: no record can be written, even by root.
    (Path(local_backend.repository["path"]) / "devdb" / "verifications").write_text("in the way")
    result = cli(config, "verify", bid)
    assert result.code == 1, result.stderr
    assert "not recorded" in result.error_line and "verifications" in result.error_line
    # A drill's record is its result: one that cannot be stored fails the drill too (it always did).
    (Path(local_backend.repository["path"]) / "devdb" / "drills").write_text("in the way")
    drilled = cli(config, "drill", "run", "devdb")
    assert drilled.code == 1 and "drills" in drilled.error_line
