"""Files on the restore host and in a local repository: private modes, containment, durable directories.

Issue 12, findings 6, 7 and 9. A local repository and the secrets backupctl writes stay private whatever
the umask; a forged backup (tar parts and manifests made by hand, as someone who can write to the bucket
would make them) cannot make a restore write outside its data directory; and every directory the local
store creates or empties is fsynced in its parent, which ``strace`` shows on the real processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backupctl.core.config import parse_config
from backupctl.core.errors import BackupctlError
from backupctl.engines import pg_files
from backupctl.postgres.tarstream import TarFormatError
from backupctl.repo.catalog import Manifest, iso, new_backup_id
from backupctl.repo.layout import backup_prefix
from backupctl.repo.repository import Repository, init_repository
from tests.support.backends import Backend
from tests.support.cli import CliRunner, backup_id, run_cli
from tests.support.config import make_config
from tests.support.pg_fixtures import require_binaries
from tests.support.pg_site import QUICK_WAL, archiving_site

# --- finding 6: private modes whatever the umask ---------------------------------------------------


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The test process's umask (inherited by every command it runs) for the length of a test."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _exposed(root: Path) -> list[str]:
    """Everything under ``root`` (itself included) that a group or other user could read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


def test_a_local_repository_and_the_globals_script_are_private(umask: int, request: pytest.FixtureRequest) -> None:
    """WAL pushed by wal-push, a logical backup with its leases, a verification record: all 0600/0700."""
    with archiving_site(require_binaries(15), request, wal={**QUICK_WAL, "async": False}) as site:
        name = site.switch()
        site.wait_archived(name)  # by the server, whose umask is 077: pushed again below with the test's
        storage = site.storage()
        storage.delete(list(site.wal_keys().values()))
        assert not any(storage.list("main/wal/"))
        pushed = site.push(site.segment_copy(name))
        assert pushed.code == 0, pushed.stderr
        assert name in site.wal_keys()

        bid = backup_id(site.cli("backup", "main", "--database", "postgres", "-o", "json"))
        verified = site.cli("verify", bid)
        assert verified.code == 0, verified.stderr
        assert any(storage.list("main/verifications/")) and any(storage.list("main/locks/"))

        globals_file = site.root / "globals.sql"
        written = site.cli("restore", bid, "--globals-only", "--to-file", str(globals_file))
        assert written.code == 0, written.stderr
        assert "CREATE ROLE" in globals_file.read_text()
        modes = (_exposed(Path(site.repository["path"])), stat.filemode(globals_file.stat().st_mode))
        assert modes == ([], "-rw-------")


def test_secrets_readable_by_others_are_named(tmp_path: Path, cli: CliRunner, local_backend: Backend) -> None:
    """An identity file or a config that other users can read: one warning line each, and the command works."""
    config = make_config(tmp_path, local_backend, encrypted=True)
    with sqlite3.connect(tmp_path / "dev.sqlite3") as conn:
        conn.execute("CREATE TABLE t (x)")
    assert cli(config, "init").code == 0
    bid = backup_id(cli(config, "backup", "devdb", "-o", "json"))

    config.chmod(0o600)
    quiet = cli(config, "verify", bid)
    assert quiet.code == 0, quiet.stderr
    assert "readable by other users" not in quiet.stderr

    config.chmod(0o644)
    (tmp_path / "age.key").chmod(0o644)
    loud = cli(config, "verify", bid)
    assert loud.code == 0, loud.stderr
    warnings = [line for line in loud.stderr.splitlines() if "readable by other users" in line]
    assert len(warnings) == 2, loud.stderr
    assert any(str(config) in line for line in warnings) and any("age.key" in line for line in warnings)


# --- finding 7: a forged backup cannot write outside the target ------------------------------------


def _tar(*members: tuple[str, bytes | str | None]) -> bytes:
    """A ustar archive: (name, bytes) a file, (name, "target") a symlink, (name, None) a directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = int(time.time())
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o600
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _backup_manifest(files: dict[str, bytes]) -> bytes:
    """A backup_manifest as pg_basebackup writes it, SHA-256 checksums and its own Manifest-Checksum."""
    entries = [{"Path": name, "Size": len(data), "Last-Modified": "2026-12-01 00:00:00 GMT",
                "Checksum-Algorithm": "SHA256", "Checksum": hashlib.sha256(data).hexdigest()}
               for name, data in files.items()]
    body = ('{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": [\n'
            + ",\n".join(json.dumps(e) for e in entries) + '\n],\n"WAL-Ranges": [],\n').encode()
    return body + b'"Manifest-Checksum": "' + hashlib.sha256(body).hexdigest().encode() + b'"}\n'


def _forge(repo: Repository, tar: bytes, files: dict[str, bytes]) -> Manifest:
    """A full backup of source "main" holding ``tar`` as its one base part, stored and described as backupctl would."""
    bid = new_backup_id("full")
    prefix = backup_prefix("main", bid)
    objects = [repo.pipeline.store(prefix + "base/0000.tar", io.BytesIO(tar)),
               repo.pipeline.store(prefix + "backup_manifest", io.BytesIO(_backup_manifest(files)))]
    now = iso(datetime.now(UTC))
    return Manifest(id=bid, source="main", kind="postgres", type="full", started_at=now, finished_at=now,
                    objects=objects, encryption=None, details={"tablespaces": {}})


@pytest.fixture
def forger(tmp_path: Path) -> Iterator[Repository]:
    config = parse_config({"repository": {"type": "local", "path": str(tmp_path / "repo")}}, tmp_path / "b.toml")
    repo, _ = init_repository(config)
    with repo:
        yield repo


EVIL = b"written by a forged backup\n"


@pytest.mark.parametrize("case", ["tablespace-link", "directory-link", "dotdot", "tablespace-map"])
def test_a_forged_backup_cannot_write_outside_the_target(forger: Repository, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    pgdata = tmp_path / "pgdata"
    if case == "tablespace-link":  # pg_basebackup -Ft never writes this link: tablespace_map does the job
        tar = _tar(("PG_VERSION", b"15\n"), ("pg_tblspc", None), ("pg_tblspc/1234", str(outside)),
                   ("pg_tblspc/1234/evil", EVIL))
        files = {"PG_VERSION": b"15\n", "pg_tblspc/1234/evil": EVIL}
    elif case == "directory-link":
        tar = _tar(("PG_VERSION", b"15\n"), ("base", None), ("base/x", str(outside)), ("base/x/evil", EVIL))
        files = {"PG_VERSION": b"15\n", "base/x/evil": EVIL}
    elif case == "dotdot":
        tar = _tar(("PG_VERSION", b"15\n"), ("../outside/evil", EVIL))
        files = {"PG_VERSION": b"15\n", "../outside/evil": EVIL}
    else:  # a tablespace_map that links a tablespace the backup does not hold to a directory of the forger's
        tablespace_map = f"1234 {outside}\n".encode()
        tar = _tar(("PG_VERSION", b"15\n"), ("pg_tblspc", None), ("pg_tblspc/1234", None),
                   ("tablespace_map", tablespace_map))
        files = {"PG_VERSION": b"15\n", "tablespace_map": tablespace_map}
    backup = _forge(forger, tar, files)

    with pytest.raises(BackupctlError) as refused:
        pg_files.restore_backup_files(forger, backup, pgdata, 2, {}, sync=False)
    message = str(refused.value)
    assert "\n" not in message and ("outside" in message or "symbolic link" in message), message
    if case != "tablespace-map":
        assert isinstance(refused.value, TarFormatError), message
    assert list(outside.iterdir()) == []
    assert not (pgdata / "pg_tblspc" / "1234").is_symlink()
    assert not (tmp_path / "evil").exists()


def test_a_symlink_left_in_the_target_is_not_followed(forger: Repository, tmp_path: Path) -> None:
    """A delta restore over a directory where something (not the archive) put a symlink: it is replaced,
    the directory it points to is left alone; a pg_wal link (WAL on its own disk) is kept."""
    outside, wal_disk = tmp_path / "outside", tmp_path / "wal-disk"
    outside.mkdir()
    wal_disk.mkdir()
    pgdata = tmp_path / "pgdata"
    (pgdata / "base").mkdir(parents=True)
    (pgdata / "base" / "1").symlink_to(outside)
    (pgdata / "pg_wal").symlink_to(wal_disk)
    tar = _tar(("PG_VERSION", b"15\n"), ("base", None), ("base/1/1259", b"pages"), ("pg_wal", None),
               ("pg_wal/archive_status", None))
    backup = _forge(forger, tar, {"PG_VERSION": b"15\n", "base/1/1259": b"pages"})

    pg_files.restore_backup_files(forger, backup, pgdata, 1, {}, delta=True, sync=False)
    assert list(outside.iterdir()) == []
    assert not (pgdata / "base" / "1").is_symlink() and (pgdata / "base" / "1" / "1259").read_bytes() == b"pages"
    assert (pgdata / "pg_wal").is_symlink() and (wal_disk / "archive_status").is_dir()


# --- finding 9: every directory the local store creates or empties is fsynced in its parent --------

_CALL = re.compile(r'^(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)')
_PATH_ARG = re.compile(r'"([^"]*)"')
_FD_PATH = re.compile(r'^\d+<([^>]*)>')
Events = list[tuple[str, str]]


def _traced(tmp_path: Path, config: Path, *args: str) -> list[Events]:
    """Run one command under strace; each thread's successful (call, path) events in order (fsync: the fd's path).

    One log per thread (``-ff``): no call is split by another thread's, and a directory must be synced by
    the thread that changed it, which is how the local store works.
    """
    logs = tmp_path / f"strace-{len(list(tmp_path.glob('strace-*')))}"
    logs.mkdir()
    result = subprocess.run(
        ["strace", "-ff", "-qq", "-y", "-s", "4096", "-o", str(logs / "t"),
         "-e", "trace=mkdir,mkdirat,rmdir,unlink,unlinkat,fsync,fdatasync",
         *run_cli_argv(config, *args)],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    threads = []
    for log in sorted(logs.iterdir()):
        events = []
        for line in log.read_text().splitlines():
            match = _CALL.match(line)
            if match is None or match["ret"] != "0":
                continue
            call, arguments = match["call"], match["args"]
            if call in ("fsync", "fdatasync"):
                found = _FD_PATH.match(arguments)
                if found:
                    events.append(("fsync", found.group(1)))
            elif quoted := _PATH_ARG.search(arguments):
                events.append(("remove" if call in ("rmdir", "unlink", "unlinkat") else "mkdir", quoted.group(1)))
        threads.append(events)
    return threads


def run_cli_argv(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "backupctl", "--config", str(config), *args]


def _unsynced(threads: list[Events], repo: Path) -> list[str]:
    """Directories made, files and directories removed under ``repo`` whose parent got no fsync afterwards.

    A removal inside a directory that is itself removed later needs nothing (its parent's fsync covers it);
    temp files never published need nothing either.
    """
    missing = []
    for events in threads:
        missing += _unsynced_in(events, repo)
    return missing


def _unsynced_in(events: Events, repo: Path) -> list[str]:
    missing = []
    for index, (kind, path) in enumerate(events):
        inside = path == str(repo) or path.startswith(f"{repo}/")
        if kind == "fsync" or not inside or os.path.basename(path).startswith(".tmp-"):
            continue
        parent = os.path.dirname(path)
        later = events[index + 1:]
        if kind == "remove" and ("remove", parent) in later:
            continue
        if ("fsync", parent) not in later:
            missing.append(f"{kind} {path}")
    return missing


def test_new_and_emptied_directories_are_fsynced_in_their_parent(tmp_path: Path, local_backend: Backend) -> None:
    if shutil.which("strace") is None:
        pytest.fail("strace is needed (apt-get install strace)")
    repo = Path(local_backend.repository["path"])
    config = make_config(tmp_path, local_backend)
    with sqlite3.connect(tmp_path / "dev.sqlite3") as conn:
        conn.execute("CREATE TABLE t (x)")
    made = _traced(tmp_path, config, "init")
    first = _traced(tmp_path, config, "backup", "devdb")
    second = _traced(tmp_path, config, "backup", "devdb")
    assert any(kind == "mkdir" and "/backups/" in path for events in first for kind, path in events)

    older = json.loads(run_cli(config, "list", "-o", "json").stdout)[-1]["id"]
    config.write_text(config.read_text() + "\n[sources.devdb.retention]\nkeep_last = 1\n")
    expired = _traced(tmp_path, config, "expire", "devdb", "--force")
    assert any(kind == "remove" and older in path for events in expired for kind, path in events), expired
    assert not (repo / "devdb" / "backups" / older).exists()
    assert (_unsynced(made + first + second, repo), _unsynced(expired, repo)) == ([], [])
