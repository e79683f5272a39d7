"""The scheduler's HTTP endpoint ([metrics] listen): ``/metrics`` for Prometheus and ``/report`` for people.

``/metrics`` is prometheus_client's own WSGI app over the publisher's registry (what it served before
``/report`` existed, on every other path too). ``/report`` is the page `backupctl report --html` writes,
gathered afresh for each request: the repository is the truth, and a page cached by the scheduler would
show a backup taken by a timer on another host only minutes later. A report that cannot be gathered (the
repository does not answer) is a 503 with the one-line reason, never a traceback.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from backupctl.core.config import Config
from backupctl.core.errors import BackupctlError, ConfigError
from backupctl.core.log import get_logger

log = get_logger(__name__)

REPORT_PATH = "/report"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow client never holds the scheduler's stop


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s would drown the scheduler's own lines."""


def report_page(config: Config) -> tuple[str, bytes]:
    """(HTTP status, body) of ``/report``."""
    from backupctl.monitoring.report import gather_report  # start-up cost: only when someone asks
    from backupctl.monitoring.report_html import render

    try:
        return "200 OK", render(gather_report(config)).encode()
    except BackupctlError as exc:
        log.error("report failed", error=str(exc))
        return "503 Service Unavailable", f"backupctl report: {exc}\n".encode()


def serve(listen: str, registry: CollectorRegistry, config: Config) -> tuple[WSGIServer, threading.Thread]:
    """Listen on ``host:port`` (``[::1]:9188`` for IPv6) in a daemon thread; stop with ``server.shutdown()``."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != REPORT_PATH:
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        status, body = report_page(config)
        kind = "text/html; charset=utf-8" if status.startswith("200") else "text/plain; charset=utf-8"
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

    host, _, port = listen.rpartition(":")
    try:
        family, _, _, _, address = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
        server_class = type("Server", (_Server,), {"address_family": family})
        server = make_server(address[0], int(port), app, server_class, handler_class=_Quiet)
    except OSError as exc:
        raise ConfigError(f"metrics.listen {listen}: cannot listen there: {exc.strerror or exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics-endpoint", daemon=True)
    thread.start()
    return server, thread
