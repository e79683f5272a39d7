"""A repository in an S3 bucket (AWS or any S3-compatible store), below an optional prefix.

Small objects (up to twice ``part_size``) go up in one PutObject; WAL segments always do, through
``put_if_absent``. Larger streams become a multipart upload whose parts are sent by the storage's
``upload_jobs`` threads while the caller keeps writing. Threads and part buffers (``s3_parts``) are shared by every
writer of the storage: at most ``upload_jobs + 1`` buffers are in use at once (parts in flight and the
ones being filled), and a writer waits for one, so however large the objects and however many are
written at once, memory stays at that many parts; buffers are reused. Only a completed PutObject or
CompleteMultipartUpload makes a key visible, which gives the all-or-nothing writes the interface promises.

Requests are retried by botocore's "standard" mode (exponential backoff with jitter on throttling, 5xx
and connection errors); reads that break mid-body are resumed with a ranged GET pinned to the first
ETag. Every botocore failure leaves this module as a one-line ``StorageError`` that says how to fix it.
This is the only module that imports boto3: it costs ~150 ms, which commands that never touch S3 skip.
"""

from __future__ import annotations

import contextlib
import io
import logging
import mmap
import random
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import botocore.config
import botocore.session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    SSLError,
)

from backupctl.core.config import RepositoryConfig
from backupctl.core.errors import ObjectNotFound, StorageError
from backupctl.core.signals import shielded
from backupctl.storage.base import ObjectInfo, ObjectWriter, Storage, check_key
from backupctl.storage.s3_parts import PartBuffers, RequestBody, part_size

log = logging.getLogger(__name__)

MAX_PARTS = 10_000  # S3's limit on parts per multipart upload
DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
READ_STEP = 1024**2  # bytes per read when a caller reads a whole object
CONNECT_TIMEOUT = 10  # seconds; a black-holed endpoint should fail in minutes, not hours

# Errors that break a response body in flight (reset, timeout, short body): worth a ranged re-GET.
_BROKEN_READ = (HTTPClientError, IncompleteReadError)
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                     "InvalidClientTokenId", "TokenRefreshRequired"}
_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404"}
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}


def _one_line(text: str) -> str:
    """Server messages can span lines; the CLI prints errors as exactly one."""
    return " ".join(text.split())


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _reason(exc: BaseException) -> str:
    """The innermost OS-level reason ("connection refused") that botocore and urllib3 wrap."""
    seen: BaseException | None = exc
    reason = ""
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            reason = seen.strerror
        seen = seen.__cause__ or seen.__context__
    return reason.lower() or type(exc).__name__


def _normalise_prefix(prefix: str) -> str:
    """No leading slash, exactly one trailing slash when non-empty: keys are then ``prefix + key``."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _make_client(config: RepositoryConfig, read_timeout: float | None = None) -> Any:
    """A client honouring every [repository] knob; creating one costs ~100 ms, so a storage keeps one.

    ``read_timeout`` (seconds) bounds each request's wait for the store's answer (botocore: 60 s).
    """
    core = botocore.session.Session(
        # A configured credentials file must win over stray AWS_* variables in the environment; an
        # explicit profile is how botocore turns the environment provider off.
        profile=config.profile or ("default" if config.credentials_file else None)
    )
    if config.credentials_file:
        if not Path(config.credentials_file).is_file():
            raise StorageError(
                f"credentials file {config.credentials_file} does not exist or is not a file: "
                "fix repository.credentials_file"
            )
        core.set_config_variable("credentials_file", str(config.credentials_file))
    client_config = botocore.config.Config(
        region_name=config.region,
        s3={"addressing_style": config.addressing_style},
        retries={"mode": "standard", "total_max_attempts": config.max_attempts},
        request_checksum_calculation=config.request_checksum,
        response_checksum_validation=config.response_checksum,
        # Room for every part in flight plus readers, listings and small puts of other threads.
        max_pool_connections=config.upload_jobs + 8,
        connect_timeout=min(CONNECT_TIMEOUT, read_timeout) if read_timeout else CONNECT_TIMEOUT,
        **({"read_timeout": read_timeout} if read_timeout else {}),
    )
    session = boto3.Session(botocore_session=core)
    # verify=None, not True: True would ignore a CA bundle set by AWS_CA_BUNDLE or the AWS config file.
    verify = None if config.verify_tls else False
    return session.client("s3", endpoint_url=config.endpoint_url, verify=verify, config=client_config)


class S3Storage(Storage):
    """Objects live in ``bucket`` under ``prefix``; the keys this class takes and returns omit the prefix."""

    keeps_incomplete_uploads = True

    def __init__(self, config: RepositoryConfig, *, read_timeout: float | None = None) -> None:
        assert config.bucket, "validated by config"
        self.config = config
        self.bucket = config.bucket
        self.prefix = _normalise_prefix(config.prefix)
        self.location = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.endpoint = config.endpoint_url or "AWS S3"  # for errors while the client is made
        with self._translated("connect", None):
            self._client = _make_client(config, read_timeout)
        self.endpoint = self._client.meta.endpoint_url
        self._write_args = {
            name: value
            for name, value in (
                ("StorageClass", config.storage_class),
                ("ServerSideEncryption", config.sse),
                ("SSEKMSKeyId", config.sse_kms_key_id),
            )
            if value
        }
        # Part buffers being filled or uploaded, for all writers together: upload_jobs parts in flight
        # while the next one fills, however many objects are written at once.
        self._buffers = PartBuffers(budget=config.upload_jobs + 1)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _upload_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.config.upload_jobs, thread_name_prefix="s3-part")
            return self._pool

    # -- errors ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translated(self, operation: str, key: str | None) -> Iterator[None]:
        """Turn any botocore failure inside the block into a one-line StorageError."""
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, operation, key) from exc

    def _credential_source(self) -> str:
        if self.config.credentials_file:
            return f"profile {self.config.profile or 'default'} of {self.config.credentials_file}"
        if self.config.profile:
            return f"AWS profile {self.config.profile}"
        return "the AWS credential chain (environment, shared files, instance role)"

    def _error(self, exc: BotoCoreError | ClientError, operation: str, key: str | None) -> StorageError:
        """Say what failed and how to fix it, in one line, never quoting a secret."""
        what = f"{operation} {key}" if key else operation
        if isinstance(exc, SSLError):
            text = (f"TLS connection to {self.endpoint} failed ({_reason(exc)}): check that it speaks HTTPS "
                    "and its certificate, or set repository.verify_tls = false for a self-signed one")
        elif isinstance(exc, ConnectionError):
            text = (f"cannot reach S3 endpoint {self.endpoint} ({_reason(exc)}): "
                    "check repository.endpoint_url and the network")
        elif isinstance(exc, ReadTimeoutError):
            text = (f"S3 endpoint {self.endpoint} stopped answering during {what}: "
                    "check the network and the store's load")
        elif isinstance(exc, NoCredentialsError):
            text = (f"no AWS credentials found for {self.location}: set repository.credentials_file or "
                    "repository.profile, or provide them through the environment or an instance role")
        elif isinstance(exc, ProfileNotFound):
            files = self.config.credentials_file or "the shared AWS config and credentials files"
            text = (f"AWS profile {self.config.profile or 'default'} not found in {files}: "
                    "fix repository.profile or repository.credentials_file")
        elif isinstance(exc, PartialCredentialsError):
            text = f"incomplete AWS credentials in {self._credential_source()}: {exc}"
        elif isinstance(exc, ClientError):
            return self._client_error(exc, what, key)
        else:
            text = f"S3 {what} in {self.location} failed: {exc}"
        return StorageError(_one_line(text))

    def _client_error(self, exc: ClientError, what: str, key: str | None) -> StorageError:
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message") or ""
        if code == "NoSuchBucket":
            return StorageError(
                f"bucket {self.bucket} does not exist at {self.endpoint}: create it or fix repository.bucket"
            )
        if code in _NOT_FOUND_CODES:
            return ObjectNotFound(f"{key} does not exist in {self.location}")
        if code in _CREDENTIAL_CODES:
            return StorageError(
                f"credentials rejected by {self.endpoint} ({code}): "
                f"check the access key and secret key in {self._credential_source()}"
            )
        if code in _REGION_CODES:
            return StorageError(_one_line(
                f"bucket {self.bucket} is not served by region {self.config.region or 'default'} "
                f"({code}: {message}): set repository.region to the bucket's region"
            ))
        if code in ("AccessDenied", "AllAccessDisabled", "403"):  # "403": a HEAD, which has no body
            return StorageError(_one_line(
                f"access denied: {what} in {self.location} ({message or 'Forbidden'}): check the "
                f"credentials in {self._credential_source()} and that their policy allows it"
            ))
        attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) + 1
        after = ""
        if attempts > 1:
            after = f" after {attempts} attempts (retry later or raise repository.max_attempts)"
        return StorageError(_one_line(
            f"S3 {what} in {self.location} failed: {code or _status(exc)} {message}{after}"
        ))

    # -- keys -----------------------------------------------------------------------------------------

    def _full_key(self, key: str) -> str:
        check_key(key)
        return self.prefix + key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix):]

    # -- the interface --------------------------------------------------------------------------------

    def open_write(self, key: str) -> ObjectWriter:
        return _S3Writer(self, key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        full_key = self._full_key(key)
        with self._translated("PutObject", key):
            try:
                self._client.put_object(
                    Bucket=self.bucket, Key=full_key, Body=RequestBody([memoryview(data)]), IfNoneMatch="*",
                    **self._write_args,
                )
            except ClientError as exc:
                # 412: the key exists. 409: AWS's answer while another conditional write to the key is
                # in flight; one of the racers wins, so for this caller the key is taken either way.
                if _code(exc) in _CONFLICT_CODES or _status(exc) == 412:
                    return False
                raise
        return True

    def get(self, key: str) -> BinaryIO:
        full_key = self._full_key(key)
        with self._translated("GetObject", key):
            response = self._client.get_object(Bucket=self.bucket, Key=full_key)
        # Small reads are served from the buffer; reads of a buffer's size or more go to the raw
        # reader directly, so the pipeline's large reads cost no extra copy.
        return io.BufferedReader(_S3Reader(self, key, response), buffer_size=1024**2)

    def head(self, key: str) -> ObjectInfo | None:
        # A HEAD answer has no body, so a missing bucket looks like a missing key here (None); every
        # other operation names the bucket.
        try:
            with self._translated("HeadObject", key):
                response = self._client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key, response["ContentLength"], response["LastModified"],
                          response["ETag"].strip('"'))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translated("ListObjectsV2", prefix or "/"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(self._relative(item["Key"]), item["Size"], item["LastModified"],
                                     item["ETag"].strip('"'))

    def list_prefixes(self, prefix: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        found: list[str] = []
        with self._translated("ListObjectsV2", prefix or "/"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"):
                found.extend(self._relative(p["Prefix"]) for p in page.get("CommonPrefixes", []))
        return found

    def delete(self, keys: Iterable[str]) -> None:
        pending = iter(keys)
        while batch := list(islice(pending, DELETE_BATCH)):
            objects = [{"Key": self._full_key(key)} for key in batch]
            with self._translated("DeleteObjects", f"({len(batch)} keys)"):
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
            errors = response.get("Errors", [])
            if errors:
                shown = "; ".join(
                    f"{self._relative(e['Key'])}: {e.get('Code')} {e.get('Message', '')}" for e in errors[:3]
                )
                more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
                raise StorageError(_one_line(f"could not delete {len(errors)} of {len(batch)} objects "
                                             f"in {self.location}: {shown}{more}"))

    def abort_incomplete_uploads(self, older_than: datetime) -> int:
        """Abort multipart uploads under the prefix started before ``older_than`` (timezone-aware).

        A writer killed mid-upload leaves its parts stored (and billed) but invisible; the garbage
        collector calls this with a cutoff well past any live upload's age. Returns how many it aborted.
        """
        paginator = self._client.get_paginator("list_multipart_uploads")
        with self._translated("ListMultipartUploads", self.prefix or "/"):
            stale = [
                (upload["Key"], upload["UploadId"])
                for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)
                for upload in page.get("Uploads", [])
                if upload["Initiated"] < older_than
            ]
        for full_key, upload_id in stale:
            with self._translated("AbortMultipartUpload", self._relative(full_key)):
                self._abort_upload(full_key, upload_id)
        return len(stale)

    def _abort_upload(self, full_key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":  # already completed or aborted by someone else
                raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._buffers.close()
        self._client.close()


class _S3Writer(ObjectWriter):
    """Fills part buffers and uploads them in parallel; see the module docstring.

    A stream that ends within two buffers (``2 × part_size``) is one PutObject; one that goes on becomes
    a multipart upload of ``part_size`` parts, doubling every 1000 parts, at most 5 GiB each. The
    largest object is therefore about 1,023,000 × part_size: 4.9 TiB at the smallest part_size (5 MiB),
    S3's own 5 TiB cap from 6 MiB up. Buffers come from the storage's budget (``PartBuffers``), so objects
    written in parallel share one memory bound.
    """

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._storage = storage
        self._key = key
        self._full_key = storage._full_key(key)
        self._base_size = storage.config.part_size
        self._held: list[tuple[mmap.mmap, int]] = []  # full buffers not sent yet: the first two
        self._buffer: mmap.mmap | None = None  # the one being filled
        self._fill = 0
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._failure: BaseException | None = None  # the first failed part, reported on the next write
        self._closed = False
        # With request checksums on, parts carry CRC32s and the upload must be declared with the same
        # algorithm (what boto3's own transfer manager does).
        checksums = storage.config.request_checksum == "when_supported"
        self._checksum_args = {"ChecksumAlgorithm": "CRC32"} if checksums else {}

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert not self._closed, "write after commit or abort"
        view = memoryview(data).cast("B")
        taken = len(view)
        while view:
            if self._buffer is None:
                self._buffer = self._next_buffer()
                self._fill = 0
            room = len(self._buffer) - self._fill
            if not room:  # full, and more data follows
                self._held.append((self._buffer, self._fill))
                self._buffer = None
                if self._upload_id is not None or len(self._held) > 1:
                    self._send_held()
                continue
            n = min(room, len(view))
            self._buffer[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
        return taken

    def _next_buffer(self) -> mmap.mmap:
        """A buffer for the next part. The first is held unsent (the object may yet fit one PutObject):
        when the budget has no second buffer for it, the multipart upload starts instead of waiting, so
        a writer never waits for a buffer while it holds one that nobody will send."""
        buffers = self._storage._buffers
        size = part_size(self._base_size, len(self._parts) + len(self._held) + 1)
        if self._held:
            buffer = buffers.take(size, block=False)
            if buffer is not None:
                return buffer
            self._send_held()
            size = part_size(self._base_size, len(self._parts) + 1)
        buffer = buffers.take(size)
        assert buffer is not None
        return buffer

    def _send_held(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._upload_id is None:
            self._start_upload()
        while self._held:
            buffer, length = self._held.pop(0)
            self._send_part(buffer, length)

    def _send_part(self, buffer: mmap.mmap, length: int) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            self._storage._buffers.give_back(buffer)
            raise StorageError(
                f"{self._key} needs more than S3's {MAX_PARTS} parts: raise repository.part_size"
            )
        storage = self._storage
        try:
            future = storage._upload_pool().submit(self._upload_part, number, buffer, length)
        except BaseException:
            storage._buffers.give_back(buffer)
            raise
        future.add_done_callback(lambda done: self._part_done(done, buffer))
        self._parts.append(future)

    def _start_upload(self) -> None:
        storage = self._storage
        # Shielded: a signal between the store creating the upload and us learning its id would leave
        # an upload that abort() cannot name.
        with shielded(), storage._translated("CreateMultipartUpload", self._key):
            response = storage._client.create_multipart_upload(
                Bucket=storage.bucket, Key=self._full_key, **storage._write_args, **self._checksum_args
            )
            self._upload_id = response["UploadId"]

    def _upload_part(self, number: int, buffer: mmap.mmap, length: int) -> dict[str, Any]:
        storage = self._storage
        with storage._translated("UploadPart", self._key):
            response = storage._client.upload_part(
                Bucket=storage.bucket, Key=self._full_key, UploadId=self._upload_id,
                PartNumber=number, Body=RequestBody([memoryview(buffer)[:length]]), **self._checksum_args,
            )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if "ChecksumCRC32" in response:
            part["ChecksumCRC32"] = response["ChecksumCRC32"]
        return part

    def _part_done(self, future: Future[dict[str, Any]], buffer: mmap.mmap) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()
        self._storage._buffers.give_back(buffer)  # after recording a failure, so the next part sees it

    def commit(self) -> None:
        assert not self._closed, "commit after commit or abort"
        storage = self._storage
        try:
            if self._buffer is not None and self._fill:
                self._held.append((self._buffer, self._fill))
                self._buffer = None
            if self._upload_id is None:
                body = RequestBody([memoryview(buffer)[:length] for buffer, length in self._held])
                with storage._translated("PutObject", self._key):
                    storage._client.put_object(
                        Bucket=storage.bucket, Key=self._full_key, Body=body, **storage._write_args
                    )
            else:
                self._send_held()  # the last part: never empty, since a part is sent only when more follows
                parts = [future.result() for future in self._parts]
                with storage._translated("CompleteMultipartUpload", self._key):
                    storage._client.complete_multipart_upload(
                        Bucket=storage.bucket, Key=self._full_key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": parts},
                    )
        except BaseException:
            self.abort()
            raise
        self._close()

    def abort(self) -> None:
        if self._closed:
            return
        self._close()
        if self._upload_id is not None:
            # Best effort: the caller is already handling a failure, which must not be masked. Parts of
            # an upload that cannot be aborted now are removed by abort_incomplete_uploads later.
            try:
                self._storage._abort_upload(self._full_key, self._upload_id)
            except Exception as exc:
                log.warning("could not abort the multipart upload of %s in %s: %s",
                            self._key, self._storage.location, exc)

    def _close(self) -> None:
        """Give the buffers back and wait for parts in flight, so none lands after an abort."""
        self._closed = True
        for future in self._parts:
            future.cancel()
        futures_wait(self._parts)
        for buffer, _ in self._held:
            self._storage._buffers.give_back(buffer)
        if self._buffer is not None:
            self._storage._buffers.give_back(self._buffer)
        self._held, self._buffer = [], None


class _S3Reader(io.RawIOBase):
    """The body of one GET; a connection that breaks mid-body is resumed with a ranged GET.

    The re-GET carries ``If-Match`` with the first response's ETag: if the object was replaced in
    between, S3 answers 412 and the read fails instead of splicing two versions together. The answer's
    own ETag is compared too, for a store (or a cache in between) that ignores ``If-Match``.
    """

    def __init__(self, storage: S3Storage, key: str, response: dict[str, Any]) -> None:
        super().__init__()
        self._storage = storage
        self._key = key
        self._body = response["Body"]
        self._etag = response["ETag"]
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        # Overridden so that a sized read hands over botocore's bytes as they are, without the copy
        # through a buffer that RawIOBase.read makes.
        return self.readall() if size is None or size < 0 else self._read(size)

    def readall(self) -> bytes:
        # RawIOBase's version reads 8 KiB at a time, several times slower for a 16 MiB segment.
        return b"".join(iter(lambda: self._read(READ_STEP), b""))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self._read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    def _read(self, size: int) -> bytes:
        """Up to ``size`` bytes (b"" only at the end), resuming the body as often as max_attempts allows."""
        if size == 0:
            return b""
        failures = 0
        while True:
            try:
                chunk: bytes = self._body.read(size)
                break
            except _BROKEN_READ as exc:
                failures += 1
                if failures >= self._storage.config.max_attempts:
                    raise self._storage._error(exc, "GetObject", self._key) from exc
                time.sleep(random.uniform(0, min(0.1 * 2**failures, 5)))
                self._resume()
        self._offset += len(chunk)
        return chunk

    def _resume(self) -> None:
        storage = self._storage
        self._body.close()
        with storage._translated("GetObject", self._key):
            try:
                response = storage._client.get_object(
                    Bucket=storage.bucket, Key=storage._full_key(self._key),
                    Range=f"bytes={self._offset}-", IfMatch=self._etag,
                )
            except ClientError as exc:
                if _code(exc) in _CONFLICT_CODES or _status(exc) == 412:
                    raise self._replaced() from exc
                raise
        if response["ETag"] != self._etag:
            response["Body"].close()
            raise self._replaced()
        self._body = response["Body"]

    def _replaced(self) -> StorageError:
        return StorageError(f"{self._key} in {self._storage.location} was replaced while it was being read: "
                            "read it again")

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
