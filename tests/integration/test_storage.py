"""The storage interface against every driver: a local directory, moto's server, SeaweedFS, and in memory.

Faults are real too: a small HTTP proxy in front of moto answers requests with 503 SlowDown or drops
the connection in the middle of a response body, so retries and resumed reads are exercised through
botocore and the network exactly as a flaky store would exercise them.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backupctl.core.errors import ObjectNotFound, StorageError
from backupctl.storage import Storage, local
from backupctl.storage.s3 import S3Storage
from tests.support.backends import Backend, make_backend
from tests.support.s3_servers import FaultProxy, S3Endpoint, free_port

MiB = 1024**2


@pytest.fixture
def storage(store_backend: Backend) -> Iterator[Storage]:
    store = store_backend.storage()
    yield store
    store.close()


def s3_backend(name: str, tmp_path: Path, request: pytest.FixtureRequest, **overrides: Any) -> Backend:
    """A fresh bucket on one S3 endpoint, with [repository] settings changed for the test."""
    backend = make_backend(name, tmp_path, request)
    return dataclasses.replace(backend, repository={**backend.repository, **overrides})


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def incomplete_uploads(backend: Backend) -> list[dict[str, Any]]:
    assert backend.endpoint is not None
    response = backend.endpoint.client.list_multipart_uploads(Bucket=backend.repository["bucket"])
    return response.get("Uploads", [])


def assert_one_line(error: pytest.ExceptionInfo[BaseException], *fragments: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def chunks(data: bytes, sizes: tuple[int, ...]) -> Iterator[memoryview]:
    """``data`` cut into pieces of the given sizes, cycling: odd sizes cross every part boundary."""
    view = memoryview(data)
    offset = index = 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        yield view[offset : offset + size]
        offset += size
        index += 1


# -- the interface on every backend ---------------------------------------------------------------------


def test_put_get_head_round_trip(storage: Storage) -> None:
    before = datetime.now(UTC) - timedelta(minutes=1)
    storage.put("source/backups/one/manifest.json", b'{"id": 1}')

    assert storage.get_bytes("source/backups/one/manifest.json") == b'{"id": 1}'
    info = storage.head("source/backups/one/manifest.json")
    assert info is not None
    assert (info.key, info.size) == ("source/backups/one/manifest.json", 9)
    assert info.modified > before
    assert storage.head("source/backups/one/other.json") is None

    storage.put("source/empty", b"")
    assert storage.get_bytes("source/empty") == b""
    assert storage.head("source/empty").size == 0  # type: ignore[union-attr]

    storage.put("source/backups/one/manifest.json", b"replaced")
    with storage.get("source/backups/one/manifest.json") as stream:
        assert stream.read(3) == b"rep"
        buffer = bytearray(10)
        assert stream.readinto(buffer) == 5
        assert bytes(buffer[:5]) == b"laced"
        assert stream.read() == b""


def test_streaming_write_of_a_large_object(storage: Storage, store_backend: Backend) -> None:
    data = os.urandom(13 * MiB + 12_345)
    with storage.open_write("src/backups/b1/base.tar.zst") as writer:
        for piece in chunks(data, (1, 65_537, 1_000_003, 3 * MiB + 1)):
            assert writer.write(piece) == len(piece)

    info = storage.head("src/backups/b1/base.tar.zst")
    assert info is not None and info.size == len(data)
    if store_backend.endpoint is not None:
        assert info.etag is not None and info.etag.endswith("-3"), "expected a three-part multipart upload"
    digest = hashlib.sha256()
    with storage.get("src/backups/b1/base.tar.zst") as stream:
        while piece := stream.read(777_777):
            digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [1000, 12 * MiB], ids=["small", "multipart"])
def test_exception_in_a_write_leaves_nothing(storage: Storage, store_backend: Backend, size: int) -> None:
    with pytest.raises(RuntimeError, match="the pipeline broke"), storage.open_write("src/wal/seg") as writer:
        writer.write(os.urandom(size))
        raise RuntimeError("the pipeline broke")

    assert storage.head("src/wal/seg") is None
    assert list(storage.list("")) == []
    if store_backend.name == "local":
        assert stored_files(Path(store_backend.repository["path"])) == []
    elif store_backend.endpoint is not None:
        assert incomplete_uploads(store_backend) == []


def test_put_if_absent_keeps_the_first_object(storage: Storage) -> None:
    assert storage.put_if_absent("src/locks/backup.json", b"first") is True
    assert storage.put_if_absent("src/locks/backup.json", b"second") is False
    assert storage.get_bytes("src/locks/backup.json") == b"first"


def test_put_if_absent_race_has_one_winner(storage: Storage) -> None:
    racers = 8
    start = threading.Barrier(racers)
    results: dict[int, bool] = {}

    def race(number: int) -> None:
        start.wait()
        results[number] = storage.put_if_absent("src/locks/lease.json", f"racer {number}".encode())

    threads = [threading.Thread(target=race, args=(n,)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [n for n, won in results.items() if won]
    assert len(results) == racers and len(winners) == 1, results
    assert storage.get_bytes("src/locks/lease.json") == f"racer {winners[0]}".encode()


LAYOUT = ["a/1", "a/2/x", "a/2/y", "ab", "b/c/d", "z"]


def test_list_and_list_prefixes(storage: Storage) -> None:
    for key in LAYOUT:
        storage.put(key, key.encode() * 2)

    def keys(prefix: str) -> list[str]:
        return [info.key for info in storage.list(prefix)]

    assert sorted(keys("")) == LAYOUT
    assert keys("a/") == ["a/1", "a/2/x", "a/2/y"]
    assert sorted(keys("a")) == ["a/1", "a/2/x", "a/2/y", "ab"]
    assert keys("a/2/") == ["a/2/x", "a/2/y"]
    assert keys("missing/") == []
    assert {info.key: info.size for info in storage.list("b/")} == {"b/c/d": 10}

    assert storage.list_prefixes("") == ["a/", "b/"]
    assert storage.list_prefixes("a/") == ["a/2/"]
    assert storage.list_prefixes("b/") == ["b/c/"]
    assert storage.list_prefixes("a/2/") == []
    assert storage.list_prefixes("missing/") == []


def test_list_is_in_key_order(storage: Storage) -> None:
    for key in reversed(LAYOUT):
        storage.put(key, b"x")
    assert [info.key for info in storage.list("")] == LAYOUT


def test_delete(storage: Storage, store_backend: Backend) -> None:
    for key in LAYOUT:
        storage.put(key, b"x")
    storage.delete(["a/2/x", "ab", "not/there", "z"])
    assert [info.key for info in storage.list("")] == ["a/1", "a/2/y", "b/c/d"]
    storage.delete(info.key for info in storage.list(""))
    assert list(storage.list("")) == []
    if store_backend.name != "seaweedfs":  # it lists emptied "directories" for minutes (seaweedfs issue 9810)
        assert storage.list_prefixes("") == []


def test_get_of_a_missing_key(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound) as error:
        storage.get("src/backups/nope/manifest.json")
    assert_one_line(error, "src/backups/nope/manifest.json", "does not exist")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "a//b", "/abs", "", "a/./b"])
def test_invalid_keys_are_rejected(storage: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid object key"):
        storage.put(key, b"x")


def test_unfinished_writes_are_found_by_age_for_gc(storage: Storage, store_backend: Backend) -> None:
    """What a writer killed mid-write leaves (a temp file, a multipart upload, or nothing at all) no listing
    shows; the driver's optional interface finds it by age, as `repo gc` asks."""
    writer = storage.open_write("src/backups/b1/base/0000.tar")
    writer.write(os.urandom(12 * MiB))  # more than two parts: S3 has started a multipart upload
    try:
        assert list(storage.list("")) == []
        assert storage.stale_temp_files(datetime.now(UTC) - timedelta(hours=1)) == []
        later = datetime.now(UTC) + timedelta(minutes=1)
        temp_files = storage.stale_temp_files(later)
        aborted = storage.abort_incomplete_uploads(later)
        expected = {"memory": (0, 0), "local": (1, 0), "moto": (0, 1), "seaweedfs": (0, 1)}[store_backend.name]
        assert (len(temp_files), aborted) == expected
        assert storage.keeps_incomplete_uploads is (aborted == 1)
        storage.remove_temp_files(path for path, _size in temp_files)
        assert storage.stale_temp_files(later) == []
    finally:
        writer.abort()
    assert list(storage.list("")) == []


# -- local only -----------------------------------------------------------------------------------------


def test_local_aborted_writer_leaves_no_temp_file(local_backend: Backend) -> None:
    storage = local_backend.storage()
    writer = storage.open_write("src/backups/b1/data")
    writer.write(b"partial")
    writer.abort()
    writer.abort()  # safe to repeat
    assert stored_files(Path(local_backend.repository["path"])) == []
    assert storage.head("src/backups/b1/data") is None


@pytest.mark.parametrize("pruned", ["after mkdir", "inside mkdir", "before open"])
def test_local_writer_survives_a_delete_pruning_its_new_directory(
        local_backend: Backend, monkeypatch: pytest.MonkeyPatch, pruned: str) -> None:
    """A delete elsewhere prunes the directory it empties, in the instant after a writer made or saw it.

    The race is real (two lease takers on one host hit it in CI) but its window is microseconds, so the
    other party's prune is played at the exact moment: right after mkdir returns, inside mkdir (the other
    party made the directory and pruned it again: EEXIST, then no directory), or after the writer found the
    directory and before its temp file is in it. Each time the temp file's open fails ENOENT, and the
    writer makes the directory again.
    """
    storage = local_backend.storage()
    storage.put("src/locks/clock/other", b"")
    clock = Path(local_backend.repository["path"]) / "src" / "locks" / "clock"
    if pruned != "before open":
        storage.delete(["src/locks/clock/other"])
    real_mkdir, real_create = os.mkdir, local.create_private
    plays = []

    def mkdir_then_pruned(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) != clock or plays:
            return real_mkdir(path, *args, **kwargs)
        plays.append(pruned)
        if pruned == "inside mkdir":
            raise FileExistsError(errno.EEXIST, "File exists", str(path))
        real_mkdir(path, *args, **kwargs)
        os.rmdir(path)
        return None

    def pruned_before_open(path: Path) -> Any:
        if not plays:
            plays.append(pruned)
            storage.delete(["src/locks/clock/other"])  # prunes clock/, which the writer found
        return real_create(path)

    monkeypatch.setattr(os, "mkdir", mkdir_then_pruned)
    monkeypatch.setattr(local, "create_private", pruned_before_open if pruned == "before open" else real_create)
    storage.put("src/locks/clock/probe", b"tick")
    assert plays == [pruned]
    assert storage.get_bytes("src/locks/clock/probe") == b"tick"
    assert storage.head("src/locks/clock/other") is None


# -- S3: one memory budget for all writers -------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["moto", "seaweedfs"])
def test_parallel_writers_share_one_buffer_budget(endpoint: str, tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    """Objects written at once (a backup's parts finishing while the next streams) share upload_jobs + 1
    part buffers, reused, and every object still arrives whole."""
    backend = s3_backend(endpoint, tmp_path, request, upload_jobs=2)
    storage = backend.storage()
    uploads: list[int] = []
    active = 0
    lock = threading.Lock()
    upload_part = storage._client.upload_part  # type: ignore[attr-defined]

    def counting_upload_part(**kwargs: Any) -> Any:
        nonlocal active
        with lock:
            active += 1
            uploads.append(active)
        try:
            return upload_part(**kwargs)
        finally:
            with lock:
                active -= 1

    storage._client.upload_part = counting_upload_part  # type: ignore[attr-defined]
    payloads = {f"src/backups/b1/base/{i:04d}.tar.zst": os.urandom(23 * MiB + i) for i in range(4)}

    def write(key: str) -> None:
        with storage.open_write(key) as writer:
            for piece in chunks(payloads[key], (1_000_003, 65_537)):
                writer.write(piece)

    threads = [threading.Thread(target=write, args=(key,)) for key in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        for key, data in payloads.items():
            with storage.get(key) as stream:
                assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(data).digest(), key
        assert 0 < max(uploads) <= 2
        made = sum(len(free) for free in storage._buffers._free.values())  # type: ignore[attr-defined]
        assert 0 < made <= 3, f"{made} part buffers for a budget of 3"
    finally:
        storage.close()


# -- S3: multipart leftovers ----------------------------------------------------------------------------


def test_abort_incomplete_uploads(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # SeaweedFS, because moto reports every upload as initiated in 2010.
    backend = s3_backend("seaweedfs", tmp_path, request)
    storage = backend.storage()
    assert isinstance(storage, S3Storage)
    assert backend.endpoint is not None
    bucket, client = backend.repository["bucket"], backend.endpoint.client
    # What a writer killed mid-upload leaves behind, inside and outside the repository's prefix.
    client.create_multipart_upload(Bucket=bucket, Key=f"{storage.prefix}src/backups/b1/data")
    client.create_multipart_upload(Bucket=bucket, Key="someone-else/data")

    assert storage.abort_incomplete_uploads(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert storage.abort_incomplete_uploads(datetime.now(UTC) + timedelta(minutes=1)) == 1
    assert [u["Key"] for u in incomplete_uploads(backend)] == ["someone-else/data"]


# -- S3: faults through a proxy ---------------------------------------------------------------------------

@pytest.fixture
def proxy(moto_endpoint: S3Endpoint) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_endpoint.url)
    yield proxy
    proxy.close()


def proxied_storage(proxy: FaultProxy, tmp_path: Path, request: pytest.FixtureRequest,
                    **overrides: Any) -> tuple[Backend, Storage]:
    backend = s3_backend("moto", tmp_path, request, endpoint_url=proxy.url, **overrides)
    return backend, backend.storage()


def test_broken_read_resumes_with_a_ranged_get(
    proxy: FaultProxy, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _, storage = proxied_storage(proxy, tmp_path, request)
    data = os.urandom(3 * MiB)
    storage.put("src/backups/b1/data", data)
    etag = storage.head("src/backups/b1/data").etag  # type: ignore[union-attr]

    proxy.seen.clear()
    proxy.cut_next_get = MiB + 17
    assert storage.get_bytes("src/backups/b1/data") == data

    first, resumed = proxy.gets()
    assert "Range" not in first
    start = int(resumed["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start <= MiB + 17
    assert resumed["If-Match"] == f'"{etag}"'


def test_object_replaced_during_a_read_is_an_error(
    proxy: FaultProxy, tmp_path: Path, request: pytest.FixtureRequest, moto_endpoint: S3Endpoint
) -> None:
    backend, storage = proxied_storage(proxy, tmp_path, request)
    storage.put("src/backups/b1/data", os.urandom(3 * MiB))
    full_key = f"{storage.prefix}src/backups/b1/data"  # type: ignore[attr-defined]
    proxy.on_cut = lambda: moto_endpoint.client.put_object(
        Bucket=backend.repository["bucket"], Key=full_key, Body=b"a different object"
    )
    proxy.cut_next_get = MiB

    with pytest.raises(StorageError) as error:
        storage.get_bytes("src/backups/b1/data")
    assert_one_line(error, "src/backups/b1/data", "replaced while it was being read")


def test_throttling_and_server_errors_are_retried(
    proxy: FaultProxy, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _, storage = proxied_storage(proxy, tmp_path, request)
    proxy.fail_next = 2
    storage.put("src/wal/000000010000000000000001", b"segment")
    proxy.fail_next = 2
    assert storage.get_bytes("src/wal/000000010000000000000001") == b"segment"
    assert [method for method, _ in proxy.seen] == ["PUT"] * 3 + ["GET"] * 3


def test_retries_give_up_with_a_clear_error(
    proxy: FaultProxy, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    _, storage = proxied_storage(proxy, tmp_path, request, max_attempts=2)
    proxy.fail_next = 5
    with pytest.raises(StorageError) as error:
        storage.put("src/wal/000000010000000000000001", b"segment")
    assert_one_line(error, "PutObject src/wal/000000010000000000000001", "SlowDown", "after 2 attempts")


def test_failed_part_upload_fails_the_write_and_a_failed_abort_does_not_mask_it(
    proxy: FaultProxy, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    backend, storage = proxied_storage(proxy, tmp_path, request, max_attempts=1)
    data = os.urandom(12 * MiB)
    with pytest.raises(StorageError) as error, storage.open_write("src/backups/b1/data") as writer:
        writer.write(data[: 11 * MiB])  # the multipart upload starts; parts 1 and 2 (5 MiB each) go out
        proxy.fail_next = 1000  # from here on, parts and the abort all fail
        writer.write(data[11 * MiB :])
    assert_one_line(error, "src/backups/b1/data", "SlowDown")
    assert "could not abort the multipart upload of src/backups/b1/data" in caplog.text

    proxy.fail_next = 0
    assert storage.head("src/backups/b1/data") is None
    assert len(incomplete_uploads(backend)) == 1
    assert storage.abort_incomplete_uploads(datetime.now(UTC)) == 1  # type: ignore[attr-defined]
    assert incomplete_uploads(backend) == []


# -- S3: errors a user can meet ---------------------------------------------------------------------------


def test_unreachable_endpoint(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    storage = s3_backend("moto", tmp_path, request, endpoint_url=closed, max_attempts=1).storage()
    with pytest.raises(StorageError) as error:
        storage.put("src/source.json", b"{}")
    assert_one_line(error, f"cannot reach S3 endpoint {closed} (connection refused)",
                    "check repository.endpoint_url")


@pytest.mark.parametrize("kind", ["moto", "seaweedfs"])
def test_missing_bucket(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    backend = s3_backend(kind, tmp_path, request, bucket="no-such-bucket-here")
    storage = backend.storage()
    assert backend.endpoint is not None
    operations = [lambda: storage.put("k", b"x"), lambda: storage.get("k"), lambda: list(storage.list(""))]
    for operation in operations:
        with pytest.raises(StorageError) as error:
            operation()
        assert_one_line(error, f"bucket no-such-bucket-here does not exist at {backend.endpoint.url}",
                        "create it or fix repository.bucket")


@pytest.mark.parametrize(("access", "secret", "code"), [
    (None, "wrong-secret", "SignatureDoesNotMatch"),
    ("unknown-key", "wrong-secret", "InvalidAccessKeyId"),
])
def test_wrong_credentials(access: str | None, secret: str, code: str, tmp_path: Path,
                           request: pytest.FixtureRequest, seaweedfs_endpoint: S3Endpoint) -> None:
    credentials = tmp_path / "wrong-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {access or seaweedfs_endpoint.access_key}\n"
                           f"aws_secret_access_key = {secret}\n")
    storage = s3_backend("seaweedfs", tmp_path, request, credentials_file=str(credentials)).storage()
    with pytest.raises(StorageError) as error:
        storage.put("src/source.json", b"{}")
    message = assert_one_line(error, f"credentials rejected by {seaweedfs_endpoint.url} ({code})",
                              str(credentials))
    assert secret not in message


def test_credentials_file_wins_over_the_environment(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage = s3_backend("seaweedfs", tmp_path, request).storage()
    storage.put("src/source.json", b"{}")
    assert storage.get_bytes("src/source.json") == b"{}"


def test_missing_credentials_file(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    missing = tmp_path / "no-such-file"
    with pytest.raises(StorageError) as error:
        s3_backend("moto", tmp_path, request, credentials_file=str(missing)).storage()
    assert_one_line(error, f"credentials file {missing} does not exist", "repository.credentials_file")
