"""backupctl(1): the man page, written from the click commands themselves so it cannot drift from ``--help``.

``python -m backupctl.cli.manpage`` prints it; ``make man`` writes ``man/backupctl.1``, which is checked in
(a test compares it with this output) and installed to ``share/man/man1`` by ``pip install``. One page for
every command, in the group's order, each with its usage line, help and options, as ``git help`` pages do per
command but in one place to search. No date in it: the same commands give the same bytes.
"""

from __future__ import annotations

import inspect
import sys

import click

from backupctl import __version__
from backupctl.core.errors import CHECK_UNKNOWN, EXIT_FAILED, EXIT_OK, EXIT_SIGNAL_BASE, EXIT_USAGE


def roff(text: str) -> str:
    """Text as roff prints it: backslashes escaped, hyphens as minus signs, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def _paragraphs(help_text: str) -> list[str]:
    """click's help text as paragraphs (a \\b paragraph keeps its lines, as click does)."""
    out = []
    for block in inspect.cleandoc(help_text).split("\n\n"):
        if block.startswith("\b\n"):
            out.append(".nf\n" + roff(block[2:]) + "\n.fi")
        else:
            out.append(roff(" ".join(block.split())))
    return out


def _options(ctx: click.Context) -> list[str]:
    lines = []
    for param in ctx.command.get_params(ctx):
        record = param.get_help_record(ctx)
        # Arguments are in the usage line; --help once, under OPTIONS.
        repeated_help = ctx.parent is not None and param is ctx.command.get_help_option(ctx)
        if record is None or isinstance(param, click.Argument) or repeated_help:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{roff(names)}\\fR", roff(" ".join(help_text.split())) or "\\&"]
    return lines


def commands(group: click.Group, parent: click.Context) -> list[click.Context]:
    """A context for every command under ``group``, depth first in the group's own order."""
    found = []
    for name in group.list_commands(parent):
        command = group.get_command(parent, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(command, info_name=name, parent=parent)
        found.append(ctx)
        if isinstance(command, click.Group):
            found += commands(command, ctx)
    return found


def manpage(group: click.Group, name: str = "backupctl") -> str:
    root = click.Context(group, info_name=name, **group.context_settings)
    summary = group.get_short_help_str(limit=200).rstrip(".")
    out = [
        f'.TH {name.upper()} 1 "" "{name} {__version__}" "User Commands"',
        ".SH NAME", f"{name} \\- {roff(summary)}",
        ".SH SYNOPSIS", f"\\fB{name}\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION", *[p for para in _paragraphs(group.help or "") for p in (para, ".PP")][:-1],
        "The README (the project's home page, and the package's long description) is the user's guide; "
        "this page lists every command and option as \\fB\\-\\-help\\fR does.",
        ".SH OPTIONS", *_options(root),
        ".SH COMMANDS",
    ]
    for ctx in commands(group, root):
        usage = " ".join(ctx.command.collect_usage_pieces(ctx))
        out += [f'.SS "{roff(ctx.command_path)}"', f"\\fB{roff(ctx.command_path)}\\fR {roff(usage)}", ".PP"]
        out += [p for para in _paragraphs(ctx.command.help or "") for p in (para, ".PP")][:-1]
        out += _options(ctx)
    out += [
        ".SH ENVIRONMENT",
        ".TP", "\\fBBACKUPCTL_CONFIG\\fR", "The config file when \\fB\\-\\-config\\fR is not given.",
        ".TP", "\\fB_BACKUPCTL_COMPLETE\\fR",
        "Shell completion: \\fB_BACKUPCTL_COMPLETE=bash_source backupctl\\fR (or zsh_source, fish_source) prints "
        "the script for that shell.",
        ".SH FILES",
        ".TP", "\\fI/etc/backupctl/backupctl.toml\\fR", "The config file by default.",
        ".SH EXIT STATUS",
        ".TP", str(EXIT_OK), "Success.",
        ".TP", str(EXIT_FAILED), "The operation failed; one line on standard error says what and how to fix it.",
        ".TP", str(EXIT_USAGE), "The command line or the config file is wrong.",
        ".TP", f"{EXIT_SIGNAL_BASE}+N", "Stopped by signal N (SIGINT, SIGTERM).",
        ".PP", f"\\fBcheck\\fR exits as a monitoring plugin: 0 OK, 1 WARNING, 2 CRITICAL, {CHECK_UNKNOWN} UNKNOWN.",
        ".SH SEE ALSO", "\\fBpostgres\\fR(1), \\fBpg_basebackup\\fR(1), \\fBsqlite3\\fR(1)",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    from backupctl.cli.app import cli  # the assembled group; no command module imports this one

    sys.stdout.write(manpage(cli))


if __name__ == "__main__":
    main()
