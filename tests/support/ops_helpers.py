"""Helpers of the operations tests (scheduler, status, check): SQLite sites, a webhook receiver, a
systemd notification socket. Everything real: the CLI as a subprocess, HTTP and datagrams on this host."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from backupctl.core.config import load_config
from backupctl.storage import open_storage
from tests.support.cli import Result, run_cli
from tests.support.config import toml_value, write_toml


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, table by table."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class SqliteSite:
    """A SQLite source ``devdb`` and a local repository, initialised through the CLI."""

    root: Path
    config: Path
    db: Path

    def cli(self, *args: str, timeout: float = 120) -> Result:
        return run_cli(self.config, *args, timeout=timeout)

    def storage(self) -> Any:
        return open_storage(load_config(self.config).repository)

    def keys(self, prefix: str) -> list[str]:
        return [info.key for info in self.storage().list(prefix)]


def sqlite_site(root: Path, extra: dict[str, Any] | None = None, blob_mib: int = 0) -> SqliteSite:
    """``blob_mib`` MiB of random blobs make a backup that takes a while (at a high zstd level)."""
    db = root / "dev.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
        conn.executemany("INSERT INTO t (payload) VALUES (?)", [(os.urandom(256),) for _ in range(200)])
        conn.executemany("INSERT INTO t (payload) VALUES (?)", [(os.urandom(1 << 20),) for _ in range(blob_mib)])
    document = merge({"repository": {"type": "local", "path": str(root / "repo")},
                      "sources": {"devdb": {"kind": "sqlite", "path": str(db)}}}, extra or {})
    webhooks = document.pop("webhooks", [])
    config = write_toml(root / "backupctl.toml", document)
    with config.open("a") as toml:  # arrays of tables, which write_toml does not write
        for hook in webhooks:
            toml.write("\n[[webhooks]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in hook.items()))
    site = SqliteSite(root, config, db)
    init = site.cli("init")
    assert init.code == 0, init.stderr
    return site


@dataclass
class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1 that keeps every JSON body POSTed to it."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@contextmanager
def webhook_receiver(status: int = 204) -> Iterator[WebhookReceiver]:
    """``status`` 0: an endpoint that answers with something that is not HTTP."""
    receiver = WebhookReceiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.events.append(json.loads(body))
            receiver.headers.append(dict(self.headers))
            if status == 0:
                self.wfile.write(b"nonsense\r\n")
                return
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/backupctl?token=secret-token"
    try:
        yield receiver
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class NotifySocket:
    """What systemd listens on for Type=notify services: a datagram socket, $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def close(self) -> None:
        self.sock.close()


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every JSON log line of a stderr (other lines, such as the one-line error, are skipped)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines
