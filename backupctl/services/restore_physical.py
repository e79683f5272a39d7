"""A planned point-in-time restore carried out: files back in place, proven, and handed over to recovery.

``pitr`` decides what to restore (the plan); this module does it: refuses a data directory a live server
uses, fetches and proves the backup's files (``engines.pg_files``), restores the config files kept outside
pgdata, writes the recovery settings, and gives the tree to the server's OS user. Drills use the same
steps on a scratch copy.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.log import get_logger
from backupctl.core.progress import NO_PROGRESS, ProgressObserver
from backupctl.engines import pg_files
from backupctl.engines.sqlite import ensure_free_space
from backupctl.postgres.backup_manifest import RESTORE_MARKER
from backupctl.postgres.binaries import PgBinaries, find_binaries
from backupctl.postgres.tools import run_tool
from backupctl.repo import layout
from backupctl.repo.catalog import Manifest
from backupctl.repo.repository import Repository
from backupctl.services.pitr import Plan
from backupctl.services.restore_target import archiving_rule, check_tablespace_target, check_target
from backupctl.wal.names import (
    parse_lsn,
    parse_wal_name,
)

log = get_logger(__name__)


def short_of_end(plan: Plan, lsn: str) -> str | None:
    """For a restore to the end of archived WAL: why recovery that ended at ``lsn`` fell short, or None.

    PostgreSQL ends recovery quietly when restore_command says a segment is not there, so the replayed
    LSN must reach at least the start of the newest segment the plan counted on.
    """
    size = int(plan.backup.extra["wal_segment_size"])
    if parse_lsn(lsn) >= parse_wal_name(plan.wal_last).start_lsn(size):
        return None
    return (f"recovery ended at {lsn}, before the newest archived segment {plan.wal_last}: a segment on the way "
            "could not be fetched")


def live_postmaster(pgdata: Path) -> int | None:
    """The pid of a postmaster running on ``pgdata``, from its postmaster.pid; None when there is none."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def prepare_pgdata(pgdata: Path, force: bool, delta: bool = False) -> None:
    """Refuse a live cluster always, and what ``restore_target.check_target`` refuses; leave it 0700.

    With --force the directory is emptied; with --delta what is there stays for the restore to reuse.
    """
    pid = live_postmaster(pgdata)
    if pid:
        raise BackupctlError(f"a postmaster (pid {pid}) is running on {pgdata}: stop it before restoring there")
    if check_target(pgdata, force, delta) and force:
        try:
            for entry in pgdata.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except OSError as exc:
            raise ConfigError(f"--force could not empty {pgdata}: {exc.filename}: {exc.strerror}: make everything "
                              "in it removable by the restoring user") from exc
    pgdata.mkdir(mode=0o700, exist_ok=True)
    pgdata.chmod(0o700)


def restore_files(repo: Repository, plan: Plan, pgdata: Path, jobs: int, tablespace_map: dict[str, str],
                  bindir: str | None, tmp_dir: Path | None, delta: bool = False,
                  progress: ProgressObserver = NO_PROGRESS) -> dict[str, Any]:
    """The backup's files in ``pgdata``, proven against its backup_manifest: one backup extracted (each
    file checked as it is written, see ``engines.pg_files``), or an incremental chain combined and then
    checked by pg_verifybackup. ``progress`` sees the stored bytes read of the chain's (its config files
    are restored elsewhere)."""
    chain = backup_chain(repo, plan.backup) if plan.backup.type == "incr" else [plan.backup]
    read = [o for m in chain for o in m.objects
            if not o.key.startswith(layout.backup_prefix(m.source, m.id) + layout.CONFIG_FILES)]
    with repo.pipeline.reading_progress(progress, f"restore {plan.backup.id}", read):
        return _restore_files(repo, plan, chain, pgdata, jobs, tablespace_map, bindir, tmp_dir, delta)


def _restore_files(repo: Repository, plan: Plan, chain: list[Manifest], pgdata: Path, jobs: int,
                   tablespace_map: dict[str, str], bindir: str | None, tmp_dir: Path | None,
                   delta: bool) -> dict[str, Any]:
    if plan.backup.type != "incr":
        return pg_files.restore_backup_files(repo, plan.backup, pgdata, jobs, tablespace_map, delta)
    if delta:
        raise ConfigError("--delta restores a full backup's files; an incremental chain is combined by "
                          "pg_combinebackup into an empty directory: use --force")
    final = pg_files.tablespace_locations(plan.backup, tablespace_map)
    for oid in (plan.backup.details or {}).get("tablespaces", {}):
        location = Path(final[oid])
        if location.exists() and any(location.iterdir()):
            raise ConfigError(f"tablespace directory {location} is not empty: pass --tablespace {oid}=DIR to "
                              "restore it elsewhere")
    stage_root = tmp_dir or pgdata.parent
    needed = sum(m.size for m in chain) + 64 * 1024**2
    ensure_free_space(stage_root, needed, f"staging the {len(chain)} backups of an incremental chain")
    stage = Path(tempfile.mkdtemp(prefix=".backupctl-chain-", dir=stage_root))

    def staged_tablespaces(manifest: Manifest) -> dict[str, str]:
        # Staged beside the backup's data directory, never where the tablespace lives in production.
        return {oid: str(stage / f"{manifest.id}.tablespaces" / oid)
                for oid in (manifest.details or {}).get("tablespaces", {})}

    clock = time.monotonic()
    try:
        for manifest in chain:
            pg_files.restore_backup_files(repo, manifest, stage / manifest.id, jobs, staged_tablespaces(manifest),
                                          sync=False)
        combine = find_binaries(min_major=17, bindir=bindir, need="pg_combinebackup")
        (pgdata / RESTORE_MARKER).unlink(missing_ok=True)
        pgdata.rmdir()  # pg_combinebackup makes the output directory itself (and removes it when it fails)
        # Each tablespace goes from where the newest backup of the chain was staged to its restore location.
        mapping = [f"--tablespace-mapping={staged}={final[oid]}"
                   for oid, staged in staged_tablespaces(plan.backup).items()]
        run_tool([combine.path("pg_combinebackup"), "--output", str(pgdata), *mapping,
                  *(str(stage / m.id) for m in chain)], dict(os.environ), "pg_combinebackup")
        pgdata.chmod(0o700)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    timings: dict[str, Any] = {"download_extract_seconds": round(time.monotonic() - clock, 3)}
    clock = time.monotonic()
    verify_files(physical_binaries(plan, bindir), pgdata)
    timings["verify_seconds"] = round(time.monotonic() - clock, 3)
    return timings


def backup_chain(repo: Repository, backup: Manifest) -> list[Manifest]:
    """An incremental backup and its ancestors, oldest (the full backup) first."""
    manifests, _ = repo.catalog.scan(backup.source)
    by_id = {m.id: m for m in manifests}
    chain = [backup]
    while chain[-1].parent:
        parent = by_id.get(chain[-1].parent)
        if parent is None:
            raise BackupctlError(f"backup {chain[-1].id} builds on {chain[-1].parent}, which is gone: the chain "
                                 "cannot be restored; restore an older full backup")
        chain.append(parent)
    return chain[::-1]


def verify_files(binaries: PgBinaries, pgdata: Path) -> None:
    """PostgreSQL's own check of a combined chain against the manifest pg_combinebackup wrote (WAL comes
    later, from the archive)."""
    argv = [binaries.path("pg_verifybackup"), "--no-parse-wal", "--quiet", "--ignore=tablespace_map", str(pgdata)]
    try:
        run_tool(argv, dict(os.environ), "pg_verifybackup")
    except BackupctlError as exc:
        raise BackupctlError(f"the restored files do not match the backup's manifest: {exc}") from exc


def write_recovery(plan: Plan, pgdata: Path, restore_command: str, standby: bool, archive: bool = False,
                   extra: dict[str, str] | None = None) -> None:
    """Recovery settings appended to postgresql.auto.conf, after the backup's own ALTER SYSTEM lines so they
    win; without ``archive`` also ``archive_mode = off`` (a copy must not archive into the source); ``extra``
    are a standby's own (``standby.StandbyRequest.settings``).

    A backup taken on a standby carries the standby's ``standby.signal`` (and perhaps ``recovery.signal``):
    they are removed first, so that the restore is what was asked (a cluster that ends recovery and opens
    read-write, or a standby), never the source's standby waiting for more WAL.
    """
    settings = {**plan.recovery_settings(restore_command, standby), **(extra or {})}
    if not archive:
        settings["archive_mode"] = "off"
    lines = [f"# backupctl restore of {plan.backup.id} at {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"]
    lines += [f"{name} = '{value.replace(chr(39), chr(39) * 2)}'" for name, value in settings.items()]
    with open(pgdata / "postgresql.auto.conf", "a") as conf:
        conf.write("\n" + "\n".join(lines) + "\n")
    for carried in ("standby.signal", "recovery.signal"):
        (pgdata / carried).unlink(missing_ok=True)
    (pgdata / ("standby.signal" if standby else "recovery.signal")).touch()


def physical_binaries(plan: Plan, bindir: str | None) -> PgBinaries:
    return find_binaries(min_major=plan.backup.extra["pg_major"], bindir=bindir, need="pg_verifybackup")


def server_binaries(major: int, bindir: str | None, need: str) -> PgBinaries:
    """``need`` of exactly ``major`` (a server runs only its own major's data directory): the configured
    bindir when it holds that major, else found elsewhere (after pg_upgrade bindir holds the new major, and
    a backup of an older history epoch needs the old one)."""
    if bindir:
        configured = find_binaries(min_major=major, bindir=bindir, need=need)
        if configured.major == major:
            return configured
    return find_binaries(major, need=need)


def default_jobs() -> int:
    """Parallel parts of a restore: one per core (each part is decompressed and written by its own thread)."""
    return max(2, os.cpu_count() or 2)


@dataclass
class RestoreOptions:
    pgdata: Path
    force: bool = False
    jobs: int = field(default_factory=default_jobs)
    standby: bool = False
    tablespace_map: dict[str, str] = field(default_factory=dict)
    restore_config: Path | None = None
    tmp_dir: Path | None = None
    delta: bool = False  # reuse files in pgdata that match the backup's manifest
    archive: bool = False  # --archive: a copy keeps the backup's archive settings
    source_pgdata: str | None = None  # the source's own data directory: a restore there keeps archiving
    standby_settings: dict[str, str] = field(default_factory=dict)  # primary_conninfo etc. (services.standby)


def restore_physical(repo: Repository, plan: Plan, options: RestoreOptions, restore_command: str,
                     bindir: str | None, progress: ProgressObserver = NO_PROGRESS) -> dict[str, Any]:
    """Carry out a plan: files, their check against backup_manifest, recovery settings, ownership."""
    pgdata = options.pgdata.absolute()
    if options.delta and options.force:
        raise ConfigError("--delta and --force exclude each other: --delta keeps matching files, --force "
                          "removes everything first")
    archiving = archiving_rule(pgdata, options.source_pgdata, plan.source, options.archive)
    prepare_pgdata(pgdata, options.force, options.delta)
    if options.delta:
        for oid, location in pg_files.tablespace_locations(plan.backup, options.tablespace_map).items():
            check_tablespace_target(Path(location), oid)
    marker = pgdata / RESTORE_MARKER  # until the files are complete: an interrupted restore can be retried
    marker.write_text(f"backupctl restore of {plan.backup.id} into this directory, started "
                      f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}; not finished while this file exists\n")
    log.info("restore started", backup_id=plan.backup.id, pgdata=str(pgdata), target=plan.target.kind,
             delta=options.delta)
    clock = time.monotonic()
    timings = restore_files(repo, plan, pgdata, options.jobs, options.tablespace_map, bindir, options.tmp_dir,
                            options.delta, progress)
    write_recovery(plan, pgdata, restore_command, options.standby, archiving.enabled,
                   options.standby_settings)
    if options.restore_config is not None:
        _restore_config_files(repo, plan, options.restore_config)
    locations = pg_files.tablespace_locations(plan.backup, options.tablespace_map)
    _hand_to_server_user([pgdata, *(Path(p) for p in locations.values() if p)])
    marker.unlink(missing_ok=True)
    log.info("restore finished", backup_id=plan.backup.id, pgdata=str(pgdata), bytes=plan.backup.size,
             seconds=round(time.monotonic() - clock, 3))
    return {**plan.to_json(), "pgdata": str(pgdata), "archiving": archiving.to_json(), **timings}


def _restore_config_files(repo: Repository, plan: Plan, directory: Path) -> None:
    """The config files Debian keeps outside the data directory, written as they were into ``directory``."""
    prefix = layout.backup_prefix(plan.backup.source, plan.backup.id) + layout.CONFIG_FILES
    directory.mkdir(parents=True, exist_ok=True)
    for obj in plan.backup.objects:
        if obj.key.startswith(prefix):
            name = obj.key[len(prefix):].split(".conf", 1)[0] + ".conf"
            if (directory / name).exists():
                raise ConfigError(f"{directory / name} exists: pick an empty --restore-config directory")
            with open(directory / name, "wb") as out:
                repo.pipeline.read(obj, out)


def _hand_to_server_user(roots: list[Path]) -> None:
    """Restored files belong to the server's OS user: when root restored them, give them away."""
    if os.geteuid() != 0:
        return
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        log.warning("restored files stay owned by root: no postgres user on this host", pgdata=str(roots[0]))
        return
    for root in roots:
        if not root.exists():
            continue
        os.chown(root, owner.pw_uid, owner.pw_gid)
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), owner.pw_uid, owner.pw_gid)
