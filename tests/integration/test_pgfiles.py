"""Tar parts and the in-pass backup_manifest check, on real pg_basebackup output of both majors.

The parts must each be a tar archive GNU tar reads, and together hold every file of the backup but
pg_basebackup's copy of WAL; extracting them must give a directory that pg_verifybackup accepts, and
any damage to a file, a missing file or a tampered manifest must be caught by name while extracting.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupctl.core.errors import IntegrityError
from backupctl.postgres.backup_manifest import BackupManifest, ManifestCheck, expected_directories, prepare_delta, prune
from backupctl.postgres.cluster import ScratchCluster
from backupctl.postgres.tarstream import BLOCK, TarExtractor, TarSplitter, parse_header

PART_BYTES = 512 * 1024


@pytest.fixture(scope="module")
def basebackup(pg_cluster: ScratchCluster) -> tuple[bytes, bytes]:
    """A real ``pg_basebackup -Ft -X fetch -D -`` of the session's cluster: (base.tar, backup_manifest)."""
    with pg_cluster.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS parts_probe AS SELECT g, md5(g::text) AS t "
                      "FROM generate_series(1, 50000) g")
    info = pg_cluster.conninfo()
    tar = subprocess.run(
        [pg_cluster.binaries.path("pg_basebackup"), "-h", str(info["host"]), "-p", str(info["port"]),
         "-U", str(info["user"]), "--format=tar", "--wal-method=fetch", "--pgdata=-", "--checkpoint=fast"],
        check=True, capture_output=True,
    ).stdout
    return tar, _member(tar, b"backup_manifest")


def _member(tar: bytes, wanted: bytes) -> bytes:
    offset = 0
    while (member := parse_header(tar[offset:offset + BLOCK])) is not None:
        if member.name == wanted:
            return tar[offset + BLOCK:offset + BLOCK + member.size]
        offset += BLOCK + member.stored_size
    raise AssertionError(f"{wanted!r} not in the archive")


def _split(tar: bytes) -> tuple[list[bytes], TarSplitter]:
    splitter = TarSplitter(io.BufferedReader(io.BytesIO(tar)), PART_BYTES,
                           skip=lambda m: m.kind == b"0" and m.name.startswith(b"pg_wal/"), capture=b"backup_manifest")
    parts = []
    for part in splitter.parts():
        out, buffer = io.BytesIO(), bytearray(100_003)  # odd sizes: headers straddle the caller's buffers
        while got := part.readinto(buffer):
            out.write(buffer[:got])
        parts.append(out.getvalue())
    return parts, splitter


def _extract(parts: list[bytes], root: Path, check: ManifestCheck) -> set[bytes]:
    directories: set[bytes] = set()
    for data in parts:
        extractor = TarExtractor(root, check.archive(b""))
        for offset in range(0, len(data), 65_537):
            extractor.write(data[offset:offset + 65_537])
        extractor.finish()
        extractor.close()
        directories.update(extractor.directories)
    return directories


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "restored"
    path.mkdir(mode=0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_parts_are_standalone_tars_without_wal(basebackup: tuple[bytes, bytes], tmp_path: Path) -> None:
    tar, manifest_bytes = basebackup
    parts, splitter = _split(tar)
    assert len(parts) > 3
    assert bytes(splitter.captured) == manifest_bytes
    names: list[str] = []
    for index, data in enumerate(parts):
        listed = subprocess.run(["tar", "-t"], input=data, capture_output=True, check=True).stdout.decode()
        names += [line.rstrip("/").removeprefix("./") for line in listed.splitlines()]
        if index < len(parts) - 1:
            assert len(data) >= PART_BYTES  # a part ends only past its size, at a member boundary
    assert len(names) == len(set(names)), "a member landed in two parts"
    sent = subprocess.run(["tar", "-t"], input=tar, capture_output=True, check=True).stdout.decode().split()
    assert any(name.startswith("pg_wal/0") for name in sent), "pg_basebackup -X fetch sent WAL"
    assert not [n for n in names if n.startswith(("pg_wal/0", "pg_wal/archive_status/"))]
    files = {f["Path"] for f in json.loads(manifest_bytes)["Files"]}
    assert {f for f in files if not f.startswith("pg_wal/")} <= set(names)


def test_extracted_parts_pass_pg_verifybackup(basebackup: tuple[bytes, bytes], pg_cluster: ScratchCluster,
                                              target: Path) -> None:
    tar, manifest_bytes = basebackup
    parts, _ = _split(tar)
    check = ManifestCheck(BackupManifest(manifest_bytes))
    _extract(parts, target, check)
    proven = check.finish()
    files = json.loads(manifest_bytes)["Files"]
    assert proven == len([f for f in files if not f["Path"].startswith("pg_wal/")])
    assert not (target / "backup_manifest").exists()  # written from its own object by a restore, not the tar
    (target / "backup_manifest").write_bytes(manifest_bytes)
    subprocess.run([pg_cluster.binaries.path("pg_verifybackup"), "--no-parse-wal", "--quiet", str(target)],
                   check=True)


def test_a_damaged_file_is_named_while_extracting(basebackup: tuple[bytes, bytes], target: Path) -> None:
    tar, manifest_bytes = basebackup
    damaged = bytearray(tar)
    offset = 0
    while (member := parse_header(tar[offset:offset + BLOCK])) is not None:
        if member.name.startswith(b"base/") and member.size > 8192:
            damaged[offset + BLOCK + 5000] ^= 0x01  # one bit of a data page
            victim = member.name.decode()
            break
        offset += BLOCK + member.stored_size
    parts, _ = _split(bytes(damaged))
    with pytest.raises(IntegrityError, match=f"restored file {victim} does not match the backup's manifest"):
        _extract(parts, target, ManifestCheck(BackupManifest(manifest_bytes)))


def test_a_missing_file_and_a_tampered_manifest_are_refused(basebackup: tuple[bytes, bytes], target: Path) -> None:
    tar, manifest_bytes = basebackup
    parts, _ = _split(tar)
    check = ManifestCheck(BackupManifest(manifest_bytes))
    _extract(parts[1:], target, check)
    with pytest.raises(IntegrityError, match="files of the backup's manifest were not restored"):
        check.finish()
    tampered = manifest_bytes.replace(b'"Size": 8192', b'"Size": 8193', 1)
    with pytest.raises(IntegrityError, match="backup_manifest is damaged"):
        BackupManifest(tampered)


def test_delta_keeps_matching_files_and_removes_the_rest(basebackup: tuple[bytes, bytes], target: Path) -> None:
    tar, manifest_bytes = basebackup
    manifest = BackupManifest(manifest_bytes)
    parts, _ = _split(tar)
    _extract(parts, target, ManifestCheck(manifest))
    relations = sorted(p for p in (target / "base").rglob("*") if p.is_file() and p.stat().st_size > 8192)
    changed, deleted, untouched = relations[0], relations[1], relations[2]
    with open(changed, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff")
    deleted.unlink()
    os.utime(untouched, (1_000_000_000, 1_000_000_000))  # a rewrite would take the archive's time again
    (target / "stray.conf").write_text("not in the backup")
    (target / "base" / "99999").mkdir()
    (target / "base" / "99999" / "1234").write_bytes(b"x" * 8192)
    (target / "pg_wal" / "000000020000000000000009").write_bytes(b"\0" * 1024)

    roots = {b"": target}
    delta = prepare_delta(manifest, roots, jobs=2)
    relative = {os.fsencode(p.relative_to(target)) for p in (changed, deleted, untouched)}
    assert os.fsencode(untouched.relative_to(target)) in delta.reused
    assert not relative - {os.fsencode(untouched.relative_to(target))} & delta.reused
    assert delta.removed >= 4  # the changed file, the stray config, the stray relation, the stale WAL
    check = ManifestCheck(manifest, delta.reused)
    directories = _extract(parts, target, check)
    check.finish()
    prune(roots, expected_directories(manifest, directories))

    assert untouched.stat().st_mtime == 1_000_000_000
    assert deleted.exists() and changed.read_bytes()[100:101] != b"\xff"
    assert not (target / "stray.conf").exists() and not (target / "base" / "99999").exists()
    assert not [p for p in (target / "pg_wal").rglob("*") if not p.is_dir()]
    fresh = target.parent / "fresh"
    fresh.mkdir()
    _extract(parts, fresh, ManifestCheck(manifest))
    diff = subprocess.run(["diff", "-r", str(fresh), str(target)], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout
