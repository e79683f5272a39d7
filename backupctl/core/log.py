"""Structured logs on stderr: readable lines on a terminal, JSON lines for cron, systemd and files.

Stdout is reserved for results, so a command's output can be piped while its logs go elsewhere.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("password", "secret", "token", "identity", "credential")
JOB_ID_ENV = "BACKUPCTL_JOB_ID"  # set by the scheduler for its children: every line of a job names it
LOG_LEVEL_ENV = "BACKUPCTL_LOG_LEVEL"  # the level of every command's lines; children of `run-job` inherit it
LEVELS = ("debug", "info", "warning", "error")


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret reach a log line, whoever passed it."""
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "***"
    return event


def _job_id(job_id: str) -> Any:
    def add(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("job_id", job_id)
        return event

    return add


def configure(debug: bool = False, stream: Any = None, json_lines: bool = False, level: str = "info") -> None:
    """Set up structlog once per process; JSON unless stderr is a terminal (or ``json_lines``).

    Lines below ``level`` (one of ``LEVELS``; ``debug`` overrides it) are dropped.

    A process started by the scheduler finds its job id in ``$BACKUPCTL_JOB_ID`` and puts it on every line,
    so one job's lines can be picked out of the journal whichever process wrote them.
    """
    stream = stream or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty() and not json_lines
    renderer: Any
    if interactive:
        colors = "NO_COLOR" not in os.environ
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *([_job_id(os.environ[JOB_ID_ENV])] if os.environ.get(JOB_ID_ENV) else []),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if debug else _NUMBERS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


_NUMBERS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A logger that names the module it comes from."""
    return structlog.get_logger(logger_name=name)
