"""The postgresql.conf lines that archive a source: archive_command, restore_command and advice.

``backupctl pg-settings`` prints them, drills and restores write restore_command, and the tests run the
very commands. Each command runs the stdlib-only fast path (``backupctl.walpusher``, see
``backupctl.wal.agent``) with absolute paths and ``--config``, since the server runs it from its data
directory as its own OS user.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from backupctl.wal.agent.client import bootstrap
from backupctl.wal.agent.protocol import archived_dir, pending_dir, pid_file
from backupctl.wal.agent.settings import default_spool_root, quick_settings, spool_for

if TYPE_CHECKING:
    from backupctl.core.config import Config, PostgresSource

# archive_command's shell waits at most this many 10 ms polls (plus a ``sleep`` start each, ~1 ms) for a
# file the pusher is on, then asks it: a few segments' worth on a slow store. A pusher that died mid-job
# ends the wait at once (the shell checks its pid at every poll); this bounds what a stuck one costs.
PENDING_WAIT_POLLS = 300


def invocation() -> list[str]:
    """How the server's user runs backupctl's WAL commands: the installed ``backupctl`` console script.

    It is the short command a DBA can read and type (``/opt/backupctl/bin/backupctl``), and it goes
    straight to the stdlib-only fast path (``backupctl.console``): ~12.5 ms of CPU per call that the
    resident pusher answers (2 cores, 2026-12-05), ~3 ms more than the interpreter bootstrap with
    ``-I -S`` (``agent.client.bootstrap``: no ``site``), which stays the fallback when backupctl runs
    without its console script (``python -m backupctl``). During a backlog most archive_command calls
    start no interpreter at all (``archive_command``'s shell test).
    """
    script = Path(sys.prefix) / "bin" / "backupctl"  # this very installation's, not one on PATH
    if sys.prefix != sys.base_prefix and script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return bootstrap()


def _command(config_path: str | Path, source_name: str, verb: str, *args: str, epoch: int = 1) -> str:
    config = str(Path(config_path).absolute())
    words = [*invocation(), "--config", config, verb, "--source", source_name]
    if epoch > 1:
        words += ["--epoch", str(epoch)]
    return " ".join([*(shlex.quote(w) for w in words), *args])


def archive_command(config_path: str | Path, source_name: str, spool: str | None = None) -> str:
    """The exact archive_command for ``source_name`` (absolute paths, ``--config``).

    With ``spool`` (the resident pusher's directory of this source, as the server's user has it), the
    command first asks the shell whether the pusher has already archived this very file (a marker that is
    a hard link to it: ``agent.protocol.archived_dir``); while the pusher is still on the file
    (``agent.protocol.pending_dir``) the shell polls for that marker, for ``PENDING_WAIT_POLLS`` x 10 ms at
    most, and only while the pid in the pusher's pid file is alive (``kill -0``, a builtin like ``read``:
    no process started), so that a pusher killed with -9 and its left-behind markers cost nothing; only
    the other files start an interpreter. During a backlog the pusher reads ahead, so most calls cost the
    shell's ~1 ms.
    """
    push = _command(config_path, source_name, "wal-push", "%p")
    if spool is None:
        return push
    archived = f"[ {shlex.quote(archived_dir(spool) + '/')}%f -ef %p ]"
    pending = f"[ -e {shlex.quote(pending_dir(spool) + '/')}%f ]"
    alive = 'kill -0 "$p" 2>/dev/null'
    wait = (f"i=0; read p 2>/dev/null <{shlex.quote(pid_file(spool))}; "
            f"while {pending} && [ $i -lt {PENDING_WAIT_POLLS} ] && {alive}; do sleep 0.01; i=$((i+1)); done; "
            f"{archived}")
    return f"{archived} || {{ {wait}; }} || {push}"


def server_spool(config: Config, source: PostgresSource) -> str | None:
    """The pusher's spool directory of ``source`` as the server's OS user sees it; None without a pusher.

    The default root is per user (/tmp/backupctl-UID), and the server's user is pgdata's owner, which is
    not who runs ``pg-settings`` when root does; without a pgdata on this host, the caller's own.
    """
    settings = quick_settings(str(config.file), source.name)  # the very spool path the pusher computes
    if settings is None or not settings.async_:
        return None
    if config.wal.spool_dir is not None:
        return settings.spool
    uid = os.geteuid()
    if source.pgdata is not None:
        with contextlib.suppress(OSError):
            uid = Path(source.pgdata).stat().st_uid
    return spool_for(default_spool_root(uid), source.name)


def restore_command(config_path: str | Path, source_name: str, epoch: int = 1) -> str:
    """The exact restore_command for ``source_name`` (absolute paths, ``--config``).

    A cluster of a later history epoch (see ``epochs``) replays that epoch's WAL: ``--epoch N``; epoch 1's
    command is the one written before epochs existed, so restored clusters and standbys keep working.
    """
    return _command(config_path, source_name, "wal-fetch", "%f", "%p", epoch=epoch)


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("'", "''") + "'"


def _not_traversable(path: Path) -> Path | None:
    """The first directory on ``path`` that other users cannot enter (mode without o+x), if any."""
    for parent in [*reversed(path.parents)]:
        try:
            if not os.stat(parent).st_mode & 0o001:
                return parent
        except OSError:
            return parent
    return None


def pg_settings(config: Config, source: PostgresSource, epoch: int = 1) -> str:
    """The lines for postgresql.conf that archive ``source`` into the repository, with advice.

    ``epoch``: the history epoch whose WAL restore_command replays (the current one: the live server's).
    """
    archive = archive_command(config.file, source.name, server_spool(config, source))
    restore = restore_command(config.file, source.name, epoch)
    lines = [
        f"# backupctl: continuous WAL archiving of source {source.name!r} into {_location(config)}",
        "# (wal_level and archive_mode take effect after a server restart; the commands after a reload)",
        "wal_level = replica                     # or logical; 'minimal' cannot be archived",
        "archive_mode = on",
        f"archive_command = {conf_quote(archive)}",
        "archive_timeout = 60s                   # advice: at most a minute of WAL waits in a quiet hour",
        "# recovery and standbys (ignored by a running primary)"
        + (f"; history epoch {epoch} (after pg_upgrade):" if epoch > 1 else ":"),
        f"restore_command = {conf_quote(restore)}",
    ]
    blocked = _not_traversable(Path(sys.executable))
    if blocked is not None:
        lines.append(f"# WARNING: {blocked} is not traversable by other users: the server's OS user cannot run "
                     f"{sys.executable}; install backupctl in a world-readable venv (/usr/bin/python3 -m venv)")
    else:
        problem = server_user_problem(config, source)
        if problem is not None:
            lines.append(f"# WARNING: {problem}")
    return "\n".join(lines) + "\n"


def server_user_problem(config: Config, source: PostgresSource) -> str | None:
    """Run the printed command's program as pgdata's owner, from pgdata, as the server would: what fails.

    Only where that can be tried: pgdata on this host, and this process root or its owner. The program
    must start (interpreter and package within the user's reach) and the user must read the config file.
    """
    import pwd
    import subprocess  # start-up cost: only pg-settings tries the command

    if source.pgdata is None:
        return None
    try:
        uid = Path(source.pgdata).stat().st_uid
        user = pwd.getpwuid(uid)
    except (OSError, KeyError):
        return None
    if os.geteuid() not in (0, uid):
        return None
    program = invocation()
    trials = [([program[0], "--version"] if len(program) == 1 else [*program, "--help"], f"run {program[0]}"),
              (["test", "-r", str(Path(config.file).absolute())], f"read {Path(config.file).absolute()}")]
    for argv, what in trials:
        try:
            done = subprocess.run(argv, cwd=source.pgdata, capture_output=True, text=True, timeout=60, check=False,
                                  user=uid, group=user.pw_gid, extra_groups=os.getgrouplist(user.pw_name, user.pw_gid)
                                  if os.geteuid() == 0 else None, env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.SubprocessError) as exc:
            return f"the server's OS user {user.pw_name} cannot {what}: {exc}"
        if done.returncode not in (0, 2) or (what.startswith("read") and done.returncode != 0):
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            return (f"the server's OS user {user.pw_name} cannot {what} ({last}); install backupctl in a venv "
                    f"made with /usr/bin/python3 in a place {user.pw_name} can reach (/opt/backupctl) and make "
                    f"the config readable by it (chgrp {user.pw_name}, mode 0640)")
    return None


def _location(config: Config) -> str:
    repo = config.repository
    if repo.type == "s3":
        return f"s3://{repo.bucket}/{repo.prefix}".rstrip("/")
    return str(repo.path)
