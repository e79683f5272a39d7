"""Progress on a terminal: the line a backup, restore, verify, drill or expire draws while it works.

Services report through ``core.progress.ProgressObserver``; this module is where the CLI decides whether
anyone is watching (``progress_for``, the one switch) and draws what they report with rich: the task, a
bar, bytes done of the total, the rate and the time left (objects done of the total for expire). With
stderr not a terminal (cron, systemd, a pipe, the scheduler's children) nothing is drawn at all.

While the line is drawn, log lines go through rich's console, above it, rather than through it.

rich and structlog are imported where they are used: start-up cost, see ``cli.common`` (a command that
draws nothing never loads rich).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from backupctl.core.progress import NO_PROGRESS, ProgressObserver, Unit

if TYPE_CHECKING:
    from backupctl.cli.common import State


def progress_for(state: State) -> ProgressObserver:
    """The observer a command passes its service: a progress line when stderr is a terminal and the command
    is not told to be quiet (``-q``, ``--log-level warning|error``), else none."""
    return TerminalProgress() if sys.stderr.isatty() and not state.quiet else NO_PROGRESS


class TerminalProgress:
    """Draws each task the service begins as one rich progress line on stderr, left in place when it ends."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._logger_factory: Any = None

    def begin(self, task: str, total: int | None, unit: Unit) -> None:
        import structlog
        from rich.console import Console
        from rich.file_proxy import FileProxy
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self.end()  # a service that begins a task inside another: the new one replaces it
        console = Console(file=sys.stderr)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                  _counts_column(unit), TimeRemainingColumn(), console=console,
                                  redirect_stdout=False, redirect_stderr=False)
        self._task = self._progress.add_task(task, total=total)
        self._progress.start()
        self._logger_factory = structlog.get_config()["logger_factory"]
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(FileProxy(console, sys.stderr)))

    def update(self, done: int, total: int | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def end(self) -> None:
        if self._progress is None:
            return
        import structlog

        self._progress.refresh()
        self._progress.stop()
        structlog.configure(logger_factory=self._logger_factory)
        self._progress = None


def _counts_column(unit: Unit) -> Any:
    """How far, in the units `status` and `list` use: ``18.0 MiB of 24.1 MiB, 28.9 MiB/s`` or ``3 of 10 objects``."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    from backupctl.core.units import human_size

    class Counts(ProgressColumn):
        def render(self, task: Task) -> Text:
            done, total = int(task.completed), task.total
            if unit == "objects":
                return Text(f"{done} of {int(total)} objects" if total is not None else f"{done} objects")
            text = human_size(done) + (f" of {human_size(total)}" if total else "")
            speed = task.finished_speed or task.speed
            return Text(text + (f", {human_size(speed)}/s" if speed else ""))

    return Counts()
