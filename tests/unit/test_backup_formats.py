"""The formats backupctl writes for a backup it copies itself: ustar headers and PostgreSQL's backup_manifest.

Both must read back with backupctl's own readers and with the standard ones (Python's tarfile, which reads
what GNU tar reads), since restores and ``pg_verifybackup`` depend on them.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from backupctl.core.errors import IntegrityError
from backupctl.postgres.backup_manifest import BackupManifest, Crc32c, ManifestWriter
from backupctl.postgres.tarstream import BLOCK, DIRECTORY, FILE, Member, parse_header, tar_header


@pytest.mark.parametrize("member", [
    Member(b"base/5/16384", FILE, 8192, 0o600, 1_700_000_000, b""),
    Member(b"pg_wal/archive_status", DIRECTORY, 0, 0o700, 1_700_000_000, b""),
    Member(b"big", FILE, 9 * 1024**3, 0o600, 1_700_000_000, b""),  # past ustar's 8 GiB octal field
    Member(b"PG_15_202209061/" + b"d" * 90 + b"/16385_vm", FILE, 1, 0o600, 0, b""),  # > 99 bytes
])
def test_a_header_reads_back_as_the_member(member: Member) -> None:
    header = tar_header(member)
    assert len(header) == BLOCK
    assert parse_header(header) == member


def test_python_tarfile_reads_the_headers() -> None:
    data = b"x" * 1000
    stream = (tar_header(Member(b"global", DIRECTORY, 0, 0o700, 5, b""))
              + tar_header(Member(b"global/1260", FILE, len(data), 0o600, 7, b""))
              + data + bytes(-len(data) % BLOCK) + bytes(2 * BLOCK))
    with tarfile.open(fileobj=io.BytesIO(stream)) as archive:
        members = archive.getmembers()
        assert [(m.name, m.isdir(), m.size, m.mtime) for m in members] == [
            ("global", True, 0, 5), ("global/1260", False, 1000, 7)]
        extracted = archive.extractfile(members[1])
        assert extracted is not None and extracted.read() == data


@pytest.mark.parametrize(("major", "version"), [(15, 1), (18, 2)])
def test_a_written_manifest_is_sealed_and_lists_every_file(major: int, version: int) -> None:
    writer = ManifestWriter(major, "7400000000000000001")
    crc = Crc32c()
    crc.update(b"hello")
    writer.add_file(b"base/1/1259", 5, 0, crc)
    writer.add_file(b"caf\xe9", 0, 0, Crc32c())  # not UTF-8: written as Encoded-Path
    data = writer.finish(1, "0/2000028", "0/2000138")
    manifest = BackupManifest(data)  # checks the Manifest-Checksum
    assert manifest.files[b"base/1/1259"].checksum == crc.hexdigest()
    assert manifest.files[b"base/1/1259"].size == 5
    assert b"caf\xe9" in manifest.files
    document = json.loads(data)
    assert document["PostgreSQL-Backup-Manifest-Version"] == version
    assert ("System-Identifier" in document) == (version == 2)
    assert document["WAL-Ranges"] == [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000138"}]
    assert document["Files"][0]["Last-Modified"] == "1970-01-01 00:00:00 GMT"


def test_a_changed_byte_breaks_the_seal() -> None:
    writer = ManifestWriter(15, "1")
    writer.add_file(b"PG_VERSION", 3, 0, Crc32c())
    data = writer.finish(1, "0/1", "0/2").replace(b'"Size": 3', b'"Size": 4')
    with pytest.raises(IntegrityError, match="damaged"):
        BackupManifest(data)
