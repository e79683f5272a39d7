"""The repository as a whole: init, the format marker, encryption agreement, keygen, foreign data."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupctl.demo import make_sample_sqlite
from tests.support.backends import Backend, make_backend
from tests.support.cli import CliRunner, backup_id
from tests.support.config import make_config, write_toml
from tests.support.s3_servers import FaultProxy, free_port


def test_init_is_idempotent_and_keeps_the_marker(
    tmp_path: Path, backend: Backend, cli: CliRunner
) -> None:
    config = make_config(tmp_path, backend)
    first = cli(config, "init")
    assert first.code == 0 and "repository created" in first.stdout
    marker = backend.storage().get_bytes("backupctl.json")
    again = cli(config, "init")
    assert again.code == 0 and "already exists, left unchanged" in again.stdout
    assert backend.storage().get_bytes("backupctl.json") == marker
    assert json.loads(marker)["version"] == 1
    # The conditional-write probe cleans up after itself.
    assert [i.key for i in backend.storage().list("")] == ["backupctl.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: root acts as the owner of a PostgreSQL source's pgdata")
def test_init_as_root_names_the_path_the_user_and_the_chown_that_fixes_it(cli: CliRunner) -> None:
    root = Path(tempfile.mkdtemp(prefix="backupctl-owner-"))  # not tmp_path: 0700 root, postgres cannot enter
    try:
        root.chmod(0o755)
        pgdata = root / "pgdata"
        pgdata.mkdir()
        shutil.chown(pgdata, "postgres", "postgres")
        repo = root / "repo"
        repo.mkdir(mode=0o755)  # root's, as `mkdir` run as root leaves it
        config = write_toml(root / "backupctl.toml", {"repository": {"type": "local", "path": str(repo)},
                                                      "sources": {"main": {"kind": "postgres", "pgdata": str(pgdata)}}})
        refused = cli(config, "init")
        assert refused.code == 1
        assert refused.error_line == (
            f"backupctl: error: cannot write {repo}/.probe: permission denied for user postgres (started as root, "
            f"backupctl acts as the owner of pgdata {pgdata}); every writer of the repository runs as its owner: "
            f"chown -R postgres: {repo}")
        fix = refused.error_line.partition("runs as its owner: ")[2]
        subprocess.run(shlex.split(fix), check=True)  # the command the error gives is the whole fix
        created = cli(config, "init")
        assert created.code == 0, created.stderr
        assert (repo / "backupctl.json").stat().st_uid == pwd.getpwnam("postgres").pw_uid
    finally:
        shutil.rmtree(root)


def test_commands_need_an_initialised_repository(
    tmp_path: Path, backend: Backend, cli: CliRunner
) -> None:
    config = make_config(tmp_path, backend)
    result = cli(config, "list")
    assert result.code == 1 and "run `backupctl init` first" in result.error_line


def test_newer_or_foreign_repository_is_refused(
    tmp_path: Path, local_backend: Backend, cli: CliRunner
) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    config = make_config(tmp_path, local_backend)
    cli(config, "init")
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))
    storage = local_backend.storage()
    original = storage.get_bytes("backupctl.json")

    storage.put("backupctl.json", json.dumps({**json.loads(original), "version": 99}).encode())
    newer = cli(config, "backup", "devdb")
    assert newer.code == 1 and "format version 99" in newer.error_line
    assert "upgrade backupctl" in newer.error_line

    storage.put("backupctl.json", b'{"hello": "world"}')
    foreign = cli(config, "list")
    assert foreign.code == 1 and "is not a backupctl repository marker" in foreign.error_line

    storage.put("backupctl.json", original)
    manifest_key = f"devdb/backups/{bid}/manifest.json"
    doc = json.loads(storage.get_bytes(manifest_key))
    doc["version"] = 7
    storage.put(manifest_key, json.dumps(doc).encode())
    shown = cli(config, "show", bid)
    assert shown.code == 1 and "manifest version 7" in shown.error_line
    # Nothing stored was touched by the refusals.
    assert storage.get_bytes("backupctl.json") == original


def test_encryption_must_agree_with_the_repository(
    tmp_path: Path, local_backend: Backend, cli: CliRunner
) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    plain = make_config(tmp_path, local_backend)
    cli(plain, "init")
    encrypted = make_config(tmp_path, local_backend, encrypted=True, cli=cli)
    refused = cli(encrypted, "backup", "devdb")
    assert refused.code == 2 and "is not encrypted but the config has [encryption]" in refused.error_line

    other = tmp_path / "other"
    other.mkdir()
    enc_backend = Backend("local", {"type": "local", "path": str(other / "repo")})
    enc_config = make_config(other, enc_backend, encrypted=True, cli=cli, db=tmp_path / "dev.sqlite3")
    cli(enc_config, "init")
    no_keys = write_toml(other / "plain.toml", {
        "repository": enc_backend.repository,
        "sources": {"devdb": {"kind": "sqlite", "path": str(tmp_path / "dev.sqlite3")}},
    })
    missing = cli(no_keys, "backup", "devdb")
    assert missing.code == 2 and "is encrypted but the config has no [encryption]" in missing.error_line


def test_source_kind_is_fixed_on_first_use(tmp_path: Path, local_backend: Backend, cli: CliRunner) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    config = make_config(tmp_path, local_backend)
    cli(config, "init")
    storage = local_backend.storage()
    storage.put("devdb/source.json", json.dumps({"source": "devdb", "kind": "postgres"}).encode())
    result = cli(config, "backup", "devdb")
    assert result.code == 1 and "has kind 'postgres'" in result.error_line


def test_keygen(tmp_path: Path, cli: CliRunner) -> None:
    key = tmp_path / "age.key"
    made = cli(None, "keygen", "--to", str(key))
    assert made.code == 0
    recipient = made.stdout.strip()
    assert recipient.startswith("age1") and f"# public key: {recipient}" in key.read_text()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert "AGE-SECRET-KEY" not in made.stdout + made.stderr
    before = key.read_bytes()
    again = cli(None, "keygen", "--to", str(key))
    assert again.code == 1 and "already exists" in again.error_line
    assert key.read_bytes() == before


def test_unknown_backup_id(tmp_path: Path, local_backend: Backend, cli: CliRunner) -> None:
    config = make_config(tmp_path, local_backend)
    cli(config, "init")
    nothing = cli(config, "show", "latest")
    assert nothing.code == 2 and "the repository has no backup yet: there is no latest" in nothing.error_line
    assert "is not a backup id" in cli(config, "show", "nonsense").error_line
    shown = cli(config, "show", "foo")
    assert shown.code == 2 and shown.stdout == "" and "is not a backup id" in shown.error_line
    missing = cli(config, "restore", "20261125T021500123Z-S-k3x", "--to", str(tmp_path / "x"))
    assert missing.code == 2 and "no backup 20261125T021500123Z-S-k3x" in missing.error_line


@pytest.fixture
def proxied(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Backend, FaultProxy]]:
    """A moto repository reached through a proxy that records, breaks or edits requests."""
    proxy = FaultProxy(request.getfixturevalue("moto_endpoint").url)
    backend = make_backend("moto", tmp_path, request)
    backend.repository["endpoint_url"] = proxy.url
    yield backend, proxy
    proxy.close()


def test_init_refuses_a_store_without_conditional_writes(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    """A store that ignores If-None-Match (here: a proxy that drops it) is reported, not trusted."""
    backend, proxy = proxied
    config = make_config(tmp_path, backend)
    proxy.drop_headers = {"if-none-match"}
    refused = cli(config, "init")
    assert refused.code == 1 and "does not honour conditional writes" in refused.error_line
    assert list(backend.storage().list("")) == []  # no marker, and the probe cleaned up
    proxy.drop_headers = set()
    assert cli(config, "init").code == 0


def test_unreachable_store_and_missing_bucket(
    tmp_path: Path, request: pytest.FixtureRequest, cli: CliRunner
) -> None:
    backend = make_backend("moto", tmp_path, request)
    config = make_config(tmp_path, backend)
    cli(config, "init")
    closed = dict(backend.repository, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    unreachable = cli(make_config(tmp_path, Backend("moto", closed)), "list")
    assert unreachable.code == 1 and "cannot reach S3 endpoint" in unreachable.error_line
    missing = dict(backend.repository, bucket="no-such-bucket-here")
    nobucket = cli(make_config(tmp_path, Backend("moto", missing)), "list")
    assert nobucket.code == 1 and "bucket no-such-bucket-here does not exist" in nobucket.error_line


def test_listing_costs_one_request_per_backup_not_per_object(
    tmp_path: Path, proxied: tuple[Backend, FaultProxy], cli: CliRunner
) -> None:
    backend, proxy = proxied
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=50)
    config = make_config(tmp_path, backend)
    cli(config, "init")
    for _ in range(3):  # each backup: the database, the schema and four table exports
        backup_id(cli(config, "backup", "devdb", "--export-json", "-o", "json"))
    assert len(list(backend.storage().list("devdb/backups/"))) == 3 * 7
    proxy.seen.clear()
    listed = cli(config, "list", "devdb", "-o", "json")
    assert len(json.loads(listed.stdout)) == 3
    # The marker, one listing of the source's backups, one of its (tiny) pins folder, one GET per manifest.
    assert len(proxy.seen) == 1 + 1 + 1 + 3, proxy.seen


def test_secrets_never_reach_the_output(
    tmp_path: Path, request: pytest.FixtureRequest, cli: CliRunner
) -> None:
    backend = make_backend("seaweedfs", tmp_path, request)
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=20)
    config = make_config(tmp_path, backend, encrypted=True, cli=cli)
    outputs = [cli(config, "--debug", *args) for args in (("init",), ("backup", "devdb"), ("list",))]
    bid = json.loads(cli(config, "list", "-o", "json").stdout)[0]["id"]
    outputs.append(cli(config, "--debug", "restore", bid, "--to", str(tmp_path / "r.sqlite3")))
    assert all(result.code == 0 for result in outputs)
    secret_key = (tmp_path / "age.key").read_text().split()[-1]
    for result in outputs:
        text = result.stdout + result.stderr
        assert backend.endpoint is not None and backend.endpoint.secret_key not in text
        assert secret_key not in text
