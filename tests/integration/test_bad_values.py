"""Values that were accepted (or failed with a traceback hint) before issue 15, through the real CLI: each is one
line on stderr naming what is wrong and how to fix it, exit 2, and nothing done."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from backupctl.demo import make_sample_sqlite
from tests.support.backends import Backend
from tests.support.cli import CliRunner
from tests.support.config import make_config


def _only_error(result: object) -> str:
    """The single line a usage error prints: no traceback hint, no usage text, nothing on stdout."""
    assert result.code == 2, result.stderr  # type: ignore[attr-defined]
    assert result.stdout == ""  # type: ignore[attr-defined]
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("backupctl: error: "), result.stderr  # type: ignore[attr-defined]
    assert "unexpected" not in lines[0] and "Traceback" not in result.stderr  # type: ignore[attr-defined]
    return lines[0].removeprefix("backupctl: error: ")


@pytest.mark.parametrize(("algorithm", "level", "message"), [
    ("zstd", 99, 'compression.level must be between 1 and 19 for algorithm "zstd" (20-22 need far more memory and '
                 "time, and store little less)"),
    ("gzip", -5, 'compression.level must be between 1 and 9 for algorithm "gzip"'),
    ("lz4", 17, 'compression.level must be between 0 and 16 for algorithm "lz4"'),
    ("none", 3, 'compression.level does not apply to algorithm "none": remove it'),
])
def test_a_compression_level_out_of_its_algorithms_range_is_refused_before_any_backup(
        tmp_path: Path, local_backend: Backend, cli: CliRunner, algorithm: str, level: int, message: str) -> None:
    make_sample_sqlite(tmp_path / "dev.sqlite3", customers=10)
    config = make_config(tmp_path, local_backend, compression=algorithm, cli=cli)
    assert cli(config, "init").code == 0
    config.write_text(config.read_text().replace("[compression]\n", f"[compression]\nlevel = {level}\n", 1))
    assert _only_error(cli(config, "backup", "devdb")) == f"{config}: {message}"
    assert not list(local_backend.storage().list("devdb/backups/"))


def test_a_config_path_that_is_a_directory_or_not_text_is_a_usage_error(tmp_path: Path, cli: CliRunner) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    assert _only_error(cli(folder, "list")) == \
        f"config file {folder} is a directory: pass the file in it, e.g. --config {folder}/backupctl.toml"
    binary = tmp_path / "backupctl.toml"
    binary.write_bytes(b"[repository]\n\xff\xfe\x00\x01")
    assert _only_error(cli(binary, "list")) == (
        f"config file {binary} is not UTF-8 text (byte 13 is 0xff): pass the TOML config file, not a binary or "
        "another encoding")


def test_show_of_something_that_is_not_a_backup_id_is_a_usage_error(tmp_path: Path, local_backend: Backend,
                                                                     cli: CliRunner) -> None:
    config = make_config(tmp_path, local_backend, cli=cli)
    assert cli(config, "init").code == 0
    assert _only_error(cli(config, "show", "foo")) == \
        ("'foo' is not a backup id (they look like 20261125T021500123Z-S-k3x; give one, a unique prefix of one, "
         "latest, oldest or SOURCE:latest; see `backupctl list`)")
    assert _only_error(cli(config, "show", "20261125T021500123Z-S-k3x")) == \
        "no backup 20261125T021500123Z-S-k3x in the repository (see `backupctl list`)"


def test_keygen_output_is_the_format_and_its_key_file_is_to(tmp_path: Path, cli: CliRunner,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where the old `keygen --output json` wrote a private key named json
    assert _only_error(cli(None, "keygen", "--output", "json")) == (
        "keygen needs --to FILE: where to write the identity (private key), e.g. `backupctl keygen --to "
        "/etc/backupctl/age.key`")
    old = tmp_path / "age.key"
    assert _only_error(cli(None, "keygen", "--output", str(old))) == (
        f"keygen --output {old}: --output is the result format (table or json); the key file is --to FILE, e.g. "
        f"`backupctl keygen --to {old}`")
    assert _only_error(cli(None, "keygen", "--to", "json")) == (
        "keygen --to json: a key file named like an output format is a mistake more often than not (the format "
        "is -o json); name it e.g. json.key")
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no refused call wrote a key"

    made = cli(None, "keygen", "--to", str(old), "-o", "json")
    assert made.code == 0, made.stderr
    document = json.loads(made.stdout)
    assert document["identity_file"] == str(old) and document["recipient"].startswith("age1")
    assert f"# public key: {document['recipient']}" in old.read_text()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    before = old.read_bytes()
    again = cli(None, "keygen", "--to", str(old))
    assert again.code != 0 and "already exists: keygen never overwrites a key" in again.error_line
    assert old.read_bytes() == before
