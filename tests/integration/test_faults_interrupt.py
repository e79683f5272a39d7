"""An interrupted upload cleans up and says so, whatever its requests were doing when the signal came.

SIGTERM while a request's body (a view of a part buffer) was in flight once ended in ``unexpected
BufferError: cannot close exported pointers exist``: the interrupted PutObject's frames, kept alive by
the exception on its way up, still held views of the buffer when the storage closed it. Here a proxy
holds the upload of a backup's data (one PutObject from the main thread, or a part from a worker) until
the signal has been delivered, so the interrupt meets that state every time, on both S3 servers.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import Backend, make_backend
from tests.support.cli import CliRunner, cli_env
from tests.support.config import make_config
from tests.support.s3_servers import FaultProxy
from tests.support.store_faults import random_db


class DataGate(FaultProxy):
    """Holds each upload of a backup's data (before reading its body) until ``gate`` opens, then drops it.

    Dropped, not relayed: the interrupted client may have sent only part of the body. A part's worker,
    still running, gets a broken connection and botocore sends the part again, through the open gate.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.gate = threading.Event()
        self.held = threading.Event()

    def relay(self, handler: Any) -> None:
        data = handler.command == "PUT" and "/backups/" in handler.path and "manifest.json" not in handler.path
        if data and not self.gate.is_set():
            self.held.set()
            self.gate.wait(60)
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.close()
            return
        super().relay(handler)


@pytest.fixture(params=["moto", "seaweedfs"])
def gated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, DataGate]]:
    backend = make_backend(request.param, tmp_path, request)
    proxy = DataGate(backend.repository["endpoint_url"])
    backend.repository["endpoint_url"] = proxy.url
    yield backend, proxy
    proxy.gate.set()
    proxy.close()


@pytest.mark.parametrize("mib", [3, 24], ids=["put-object", "multipart"])
def test_sigterm_during_an_upload_cleans_up_and_says_so(
    tmp_path: Path, gated: tuple[Backend, DataGate], cli: CliRunner, mib: int
) -> None:
    """3 MiB is one PutObject sent by the main thread; 24 MiB more than two 5 MiB parts (multipart)."""
    backend, proxy = gated
    db = tmp_path / "dev.sqlite3"
    random_db(db, mib)
    tmp_dir = tmp_path / "stage"
    tmp_dir.mkdir()
    config = make_config(tmp_path, backend, compression="none", db=db, encrypted=True, tmp_dir=tmp_dir)
    assert cli(config, "init").code == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "backupctl", "--config", str(config), "backup", "devdb"],
        env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proxy.held.wait(60), "no part upload started"
        proc.send_signal(signal.SIGTERM)  # a request is in flight, its body a view of a part buffer
        proxy.gate.set()  # an interrupted writer waits for its parts in flight before it aborts the upload
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    errors = [line for line in err.splitlines() if line.startswith("backupctl: error:")]
    assert errors == ["backupctl: error: interrupted by SIGTERM: nothing was published; "
                      "partial uploads were removed"], err
    assert list(tmp_dir.iterdir()) == []
    client = backend.raw_client()
    assert not client.list_multipart_uploads(Bucket=backend.repository["bucket"]).get("Uploads")
    assert [i.key for i in backend.storage().list("devdb/backups/")] == []
