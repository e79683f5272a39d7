"""The streaming pipeline: every codec with and without age, and damage caught at every layer."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from backupctl.core.config import parse_config
from backupctl.core.errors import DecryptionError, IntegrityError
from backupctl.repo.crypto import generate_key_file
from backupctl.repo.pipeline import Pipeline, StoredObject
from backupctl.storage.local import LocalStorage

CODECS = ["zstd", "lz4", "gzip", "none"]


def pipeline(tmp_path: Path, algorithm: str, encrypted: bool) -> Pipeline:
    document: dict = {"repository": {"type": "local", "path": str(tmp_path / "repo")},
                      "compression": {"algorithm": algorithm}}
    if encrypted:
        key = tmp_path / "age.key"
        if not key.exists():
            generate_key_file(key)
        recipient = key.read_text().split("public key: ")[1].split()[0]
        document["encryption"] = {"recipients": [recipient], "identity_file": str(key)}
    config = parse_config(document, tmp_path / "t.toml")
    return Pipeline(LocalStorage(tmp_path / "repo"), config)


def payload() -> bytes:
    # Compressible text followed by incompressible bytes, spanning several 1 MiB chunks.
    return b"".join(f"row {i} value {i * 7}\n".encode() for i in range(150_000)) + os.urandom(1_500_000)


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("algorithm", CODECS)
def test_round_trip_and_record(tmp_path: Path, algorithm: str, encrypted: bool) -> None:
    p = pipeline(tmp_path, algorithm, encrypted)
    data = payload()
    obj = p.store("src/backups/x/data", io.BytesIO(data))
    assert obj.size == len(data)
    assert obj.compression == algorithm and obj.encryption == ("age" if encrypted else None)
    stored = (tmp_path / "repo" / obj.key).read_bytes()
    assert len(stored) == obj.stored_size
    assert stored.startswith(b"age-encryption.org/v1") is encrypted
    out = io.BytesIO()
    p.read(obj, out)
    assert out.getvalue() == data
    if algorithm != "none":
        assert obj.stored_size < obj.size


@pytest.mark.parametrize("algorithm", ["zstd", "gzip", "lz4"])
def test_objects_are_standard_files(tmp_path: Path, algorithm: str) -> None:
    """Readable without backupctl: the usual command-line decompressor takes them as they are."""
    tool = {"zstd": ["zstd", "-dc"], "gzip": ["gzip", "-dc"], "lz4": ["lz4", "-dc"]}[algorithm]
    if subprocess.run(["which", tool[0]], capture_output=True, check=False).returncode != 0:
        pytest.skip(f"{tool[0]} is not installed")
    p = pipeline(tmp_path, algorithm, encrypted=False)
    data = payload()
    obj = p.store("k/data", io.BytesIO(data))
    plain = subprocess.run([*tool, str(tmp_path / "repo" / obj.key)], capture_output=True, check=True).stdout
    assert plain == data


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("algorithm", CODECS)
@pytest.mark.parametrize("how", ["flip", "truncate", "append"])
def test_damage_is_caught(tmp_path: Path, algorithm: str, encrypted: bool, how: str) -> None:
    p = pipeline(tmp_path, algorithm, encrypted)
    obj = p.store("k/data", io.BytesIO(payload()))
    path = tmp_path / "repo" / obj.key
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 3] ^= 0x40
    elif how == "truncate":
        del data[-1000:]
    else:
        data += b"trailing"
    path.write_bytes(bytes(data))
    for decode in (True, False):
        with pytest.raises(IntegrityError, match=r"damaged|truncated"):
            p.check(obj, decode=decode)


def test_wrong_size_in_manifest_is_caught(tmp_path: Path) -> None:
    """Even with intact stored bytes, a decoded length that disagrees with the record fails."""
    p = pipeline(tmp_path, "zstd", False)
    obj = p.store("k/data", io.BytesIO(b"x" * 1000))
    lying = StoredObject(**{**obj.to_json(), "size": 999})
    with pytest.raises(IntegrityError, match="decodes to 1000 bytes"):
        p.check(lying, decode=True)


def test_wrong_identity(tmp_path: Path) -> None:
    p = pipeline(tmp_path, "zstd", True)
    obj = p.store("k/data", io.BytesIO(b"secret rows"))
    (tmp_path / "age.key").unlink()
    generate_key_file(tmp_path / "age.key")
    other = pipeline(tmp_path, "zstd", True)
    with pytest.raises(DecryptionError, match=r"cannot decrypt k/data\.zst\.age with identity"):
        other.read(obj, io.BytesIO())
    with pytest.raises(DecryptionError, match="cannot open backup x"):
        other.check_recipient(p.recipient_names, "backup x")
