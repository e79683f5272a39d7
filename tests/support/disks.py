"""Disks that really fill up: small tmpfs mounts (as root), filled to the last page."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.pg_site import Site

PAGE = 4096


@contextlib.contextmanager
def small_disk(path: Path, size: str, owner: str = "root") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created), owned by ``owner``, mode 0700; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwnam(owner)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,uid={user.pw_uid},gid={user.pw_gid}",
                    "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(mount: Path) -> Path:
    """Fill the filesystem of ``mount`` to the last page; the filler file, to delete for space again."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * PAGE)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def spool_on_a_small_disk(site: Site) -> Iterator[Path]:
    """The site's spool directory on a 1 MiB tmpfs owned by postgres: a filesystem that really fills up."""
    with small_disk(site.spool.parent, "1m", "postgres") as mount:
        try:
            yield mount
        finally:
            site.stop_pusher()
