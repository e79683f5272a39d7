"""The config file: every mistake is one line naming the key and the file, with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupctl.core.config import load_config
from backupctl.core.errors import ConfigError
from tests.support.cli import CliRunner

GOOD = """
[repository]
type = "s3"
bucket = "acme-backups"
prefix = "prod"
region = "eu-west-1"
endpoint_url = "http://127.0.0.1:9000"
addressing_style = "path"
storage_class = "STANDARD_IA"
sse = "aws:kms"
profile = "backup"
credentials_file = "creds"
request_checksum = "when_required"
part_size = "32MiB"

[compression]
algorithm = "lz4"
level = 1

[encryption]
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
identity_file = "/etc/backupctl/age.key"

[sources.devdb]
kind = "sqlite"
path = "data/dev.sqlite3"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backupctl.toml"
    path.write_text(text)
    return path


def test_full_config_loads_with_contract_names(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    repo = config.repository
    assert (repo.type, repo.bucket, repo.prefix) == ("s3", "acme-backups", "prod")
    assert repo.addressing_style == "path"
    assert repo.part_size == 32 * 1024**2 and repo.request_checksum == "when_required"
    assert repo.credentials_file == str(tmp_path / "creds")  # relative to the config file
    assert config.compression.algorithm == "lz4" and config.compression.level == 1
    assert config.encryption is not None and config.encryption.identity_file == "/etc/backupctl/age.key"
    assert config.source("devdb").path == str(tmp_path / "data/dev.sqlite3")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("level = 1", "levle = 1"), "compression.levle is not a known setting"),
        (("level = 1", 'level = "high"'), "compression.level must be an integer, not a string"),
        (('algorithm = "lz4"', 'algorithm = "brotli"'), "compression.algorithm must be one of"),
        (('bucket = "acme-backups"', ""), "repository.bucket is required"),
        (('path = "data/dev.sqlite3"', ""), "sources.devdb.path is required"),
        (('kind = "sqlite"', 'kind = "mysql"'), "sources.devdb.kind must be one of"),
        (('part_size = "32MiB"', 'part_size = "lots"'), "repository.part_size 'lots' is not a size"),
        (('part_size = "32MiB"', 'part_size = "1MiB"'), "repository.part_size must be at least 5MiB"),
        (('sse = "aws:kms"', "sse = true"), "repository.sse must be one of"),
        (("[encryption]", "[encrypt]"), "encrypt is not a known setting"),
        (('recipients = ["age1', 'recipients = "age1'), "not valid TOML"),
        (("recipients = [", "recipients = 7 #"), "encryption.recipients must be a list, not an integer"),
        (("[repository]", "[repository]\nfile = 'x'"), "repository.file is not a known setting"),
        (("[sources.devdb]", '[sources."bad name"]'), "sources.bad name source names use"),
        (('type = "s3"', 'type = "s3"\ntype = "local"'), "not valid TOML"),
    ],
)
def test_mistakes_name_the_key_and_file(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = write(tmp_path, GOOD.replace(*edit, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert message in text and str(path) in text and "\n" not in text


def test_cli_exit_code_2_and_one_line(tmp_path: Path, cli: CliRunner) -> None:
    path = write(tmp_path, GOOD.replace("level = 1", "level = true"))
    result = cli(path, "list")
    assert result.code == 2
    expected = f"{path}: compression.level must be an integer, not a boolean"
    assert result.error_line == f"backupctl: error: {expected}"
    assert "Traceback" not in result.stderr

    missing = cli(tmp_path / "nope.toml", "list")
    assert missing.code == 2 and "does not exist" in missing.error_line

    bad_recipient = write(tmp_path, GOOD.replace("age1ql3z", "age1xxxx"))
    refused = cli(bad_recipient, "backup", "devdb")
    assert refused.code == 2 and "is not an age X25519 recipient" in refused.error_line


