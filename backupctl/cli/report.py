"""`backupctl report --html FILE`: the picture of every source (backups, WAL, window, drills, verifications)
as one self-contained HTML page.

The page is written beside FILE and renamed over it, so a web server or a browser never reads half a
report. Services and the renderer are imported where they are used: start-up cost, see ``cli.common``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import click

from backupctl.cli.common import State, pass_state
from backupctl.core.errors import BackupctlError, ConfigError


@click.command()
@click.argument("sources", nargs=-1, metavar="[SOURCE]...")
@click.option("--html", "html_file", metavar="FILE", required=True,
              help="Write the report to FILE: one HTML page, no script, nothing fetched from elsewhere.")
@click.option("--days", type=click.IntRange(min=1), default=30, show_default=True, metavar="DAYS",
              help="Show the last DAYS of backups, WAL, drills and verifications.")
@pass_state
def report(state: State, sources: tuple[str, ...], html_file: str, days: int) -> None:
    """Each source's timeline as one HTML page (--html FILE).

    Per source: backups (type, size, duration), archived WAL and its gaps, the recoverable window, drills
    with their RTO, and verifications; times in UTC. The page is self-contained (inline CSS and SVG, no
    script), so it can be mailed or served as it is."""
    target = Path(html_file).absolute()
    if not target.parent.is_dir():
        raise ConfigError(f"--html {html_file}: directory {target.parent} does not exist; create it or name a "
                          "file in an existing directory")
    if target.is_dir():
        raise ConfigError(f"--html {html_file} is a directory: name the file to write, e.g. {target}/backups.html")
    from backupctl.monitoring.report import gather_report  # start-up cost
    from backupctl.monitoring.report_html import render

    page = render(gather_report(state.config(), list(sources), days)).encode()
    write_atomically(target, page)
    click.echo(f"wrote {target} ({len(page)} bytes)")


def write_atomically(target: Path, data: bytes) -> None:
    """Write beside ``target`` and rename over it: a reader sees the old page or the new one, never a part."""
    temp = target.parent / f".{target.name}.backupctl-{secrets.token_hex(4)}"
    try:
        with open(temp, "xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except OSError as exc:
        raise BackupctlError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()

