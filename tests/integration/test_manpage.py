"""backupctl(1): written from the click commands, checked in as man/backupctl.1, rendered by man(1).

The checked-in page must be what ``make man`` writes today (a new option or command without ``make man``
fails here), it must name every command and option, and ``man -l`` must render it without a warning.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import click

from backupctl.cli.app import cli
from backupctl.cli.manpage import manpage

PAGE = Path(__file__).resolve().parents[2] / "man" / "backupctl.1"


def every_command(group: click.Group, path: str = "backupctl") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        found[f"{path} {name}"] = command
        if isinstance(command, click.Group):
            found |= every_command(command, f"{path} {name}")
    return found


def test_the_checked_in_page_is_what_make_man_writes() -> None:
    assert PAGE.read_text() == manpage(cli), "the commands changed: run `make man` and commit man/backupctl.1"


def test_every_command_and_option_is_in_the_rendered_page() -> None:
    rendered = subprocess.run(["man", "--warnings", "-l", str(PAGE)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "MANWIDTH": "120", "MANPAGER": "cat", "MAN_KEEP_FORMATTING": ""},
                              check=False)
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    text = rendered.stdout
    assert text.startswith("BACKUPCTL(1)") and "EXIT STATUS" in text
    commands = every_command(cli)
    assert len(commands) >= 30
    headings = {line.strip() for line in text.splitlines() if line.startswith("   backupctl")}
    assert headings == set(commands)
    for path, command in commands.items():
        section = text.split(f"\n   {path}\n", 1)[1].split("\n   backupctl ", 1)[0]
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.opts[0] in section, f"{path}: {param.opts[0]}"
