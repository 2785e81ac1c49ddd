"""Object store shared by data shards and checkpoints: a local directory or S3.

``open_store(url)`` gives an :class:`ObjectStore` rooted at a local path,
``file://path`` or ``s3://bucket/prefix``. Keys are ``/``-separated and relative
to that root. Local writes are atomic (temporary file + ``os.replace``) so a
reader never sees half a file. S3 calls go through one retry loop: transient
failures (throttling, 5xx, connection resets, timeouts, a body cut short) are
retried with exponential backoff and full jitter; a missing bucket or refused
credentials raise :class:`StorageError` at once, because retrying those only
delays the message the user needs. Credentials come from boto3's default chain
and never appear in a message or a log line.
"""

from __future__ import annotations

import abc
import contextlib
import io
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# ``scheme://user:password@host``: the user info of a URL (an endpoint_url may
# carry credentials) is never written to a log, config.json or a manifest.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with the user info of every URL in it replaced by ``***``.

    ``http://user:secret@host:9000`` becomes ``http://***@host:9000``.
    """
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def redact_tree(tree: Any) -> Any:
    """A copy of nested dicts/lists with every string passed through :func:`redact`."""
    if isinstance(tree, str):
        return redact(tree)
    if isinstance(tree, dict):
        return {k: redact_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(redact_tree(v) for v in tree)
    return tree


class RedactCredentials(logging.Filter):
    """A logging filter that removes URL credentials from every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True

# S3 error codes that mean "try again later"; anything 5xx or 429 counts too.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "BadGateway",
    "GatewayTimeout", "RequestLimitExceeded", "TooManyRequestsException",
})
# Codes that no amount of retrying fixes: fail fast with a clear message.
_CREDENTIAL_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
    "ExpiredToken", "TokenRefreshRequired", "AllAccessDisabled", "403", "Forbidden",
})
_MULTIPART_THRESHOLD = 64 * 1024 * 1024


class StorageError(ValueError):
    """The store cannot be used: missing bucket, refused credentials, retries exhausted."""


class StoreUnavailable(StorageError):
    """A transient failure outlasted the retries and patience: data readers stop, not skip."""


class ObjectStore(abc.ABC):
    """A flat namespace of byte objects under one root (local directory or S3 prefix)."""

    root: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``, replacing any previous object atomically."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | Path) -> None:
        """Upload the local file ``path`` under ``key`` (multipart on S3 for large files)."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` under ``key`` unless an object is there; whether it was written.

        Not atomic here (check, then write); the local and S3 stores override it.
        """
        if self.exists(key):
            return False
        self.put_bytes(key, data)
        return True

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object. Raises FileNotFoundError if it does not exist."""

    @abc.abstractmethod
    def open_read(self, key: str, start: int = 0) -> BinaryIO:
        """A streaming reader of the object from byte ``start`` on."""

    @abc.abstractmethod
    def get_file(self, key: str, path: str | Path) -> None:
        """Download the object to the local file ``path`` (written atomically)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    @abc.abstractmethod
    def url_for(self, key: str) -> str:
        """A URL (or local path) that names the object outside this store."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"object key {key!r} must be a relative '/'-separated path")
    return key


class LocalStore(ObjectStore):
    """Objects as files under a local directory (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root).expanduser().resolve()
        self.root = str(self.path)

    def _file(self, key: str) -> Path:
        return self.path / _check_key(key)

    def _atomic_target(self, key: str) -> tuple[Path, Path]:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shards from other users
        return target, Path(tmp)

    def put_bytes(self, key: str, data: bytes) -> None:
        target, tmp = self._atomic_target(key)
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: str | Path) -> None:
        target, tmp = self._atomic_target(key)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        target, tmp = self._atomic_target(key)
        try:
            with tmp.open("wb") as fh:
                fh.write(data)
            # link() fails if the target exists: an atomic create-if-absent on POSIX.
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        return self._file(key).read_bytes()

    def open_read(self, key: str, start: int = 0) -> BinaryIO:
        fh = self._file(key).open("rb")
        if start:
            fh.seek(start)
        return fh

    def get_file(self, key: str, path: str | Path) -> None:
        LocalStore(Path(path).resolve().parent).put_file(Path(path).name, self._file(key))

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.path.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(self.path):
            rel = Path(dirpath).relative_to(self.path)
            for name in files:
                if name.startswith(".tmp-"):
                    continue  # an atomic write in progress, not an object yet
                key = (rel / name).as_posix() if str(rel) != "." else name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._file(key).unlink(missing_ok=True)

    def url_for(self, key: str) -> str:
        return str(self._file(key))


def resolve_endpoint(endpoint_url: str | None) -> str | None:
    """The S3 endpoint: the argument, else ``OBS_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``."""
    return endpoint_url or os.environ.get("OBS_S3_ENDPOINT_URL") or os.environ.get(
        "AWS_ENDPOINT_URL") or None


def _error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    """Whether an S3/network failure is worth retrying (throttling, 5xx, resets, timeouts)."""
    from botocore.exceptions import (
        ClientError,
        HTTPClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        return code in _TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError,
                            ResponseStreamingError, Urllib3Error, ConnectionError,
                            TimeoutError))


class S3Store(ObjectStore):
    """Objects under ``s3://bucket/prefix`` through boto3, with retries and backoff.

    Args:
        bucket: bucket name.
        prefix: key prefix of the store's root ('' for the bucket's top).
        endpoint_url: a custom endpoint (MinIO, Ceph, moto), or None for AWS.
        retries: attempts after the first for transient failures.
        backoff_s: base of the exponential backoff (sleep ~ U(0, base·2^n), capped).
        patience_s: besides ``retries``, keep retrying a transient failure until
            the request has been failing this long (an outage); 0: ``retries`` only.
        max_backoff_s: the cap of one backoff sleep.
        check: look the bucket up now, so a missing bucket or bad credentials
            fail here rather than deep inside a training run.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 retries: int = 5, backoff_s: float = 0.2, patience_s: float = 0.0,
                 max_backoff_s: float = 10.0, check: bool = True) -> None:
        if not bucket:
            raise ValueError("s3 url needs a bucket: s3://bucket/prefix")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not (patience_s >= 0 and max_backoff_s > 0):
            raise ValueError(f"patience_s must be >= 0 and max_backoff_s > 0, got "
                             f"{patience_s} and {max_backoff_s}")
        self.patience_s = patience_s
        self.max_backoff_s = max_backoff_s
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = resolve_endpoint(endpoint_url)
        self.retries = retries
        self.backoff_s = backoff_s
        self.root = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client: Any = None
        self._client_pid = -1
        # Retries of transient failures so far in this process (a metric of the loader).
        self.retried = 0
        if check:
            self.check_bucket()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # boto3 clients neither pickle nor survive a fork
        return state

    @property
    def where(self) -> str:
        """Bucket and endpoint, for error messages (never credentials)."""
        endpoint = redact(self.endpoint_url) if self.endpoint_url else "AWS default"
        return f"bucket {self.bucket!r} at endpoint {endpoint}"

    def client(self) -> Any:
        """The boto3 client of this process (re-created after a fork)."""
        if self._client is None or self._client_pid != os.getpid():
            import boto3
            from botocore.config import Config

            config = Config(
                # One retry loop only (ours): botocore's would multiply the attempts.
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=5, read_timeout=30, max_pool_connections=16,
                s3={"addressing_style": "path"} if self.endpoint_url else None,
            )
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, config=config,
                region_name=region or "us-east-1")
            self._client_pid = os.getpid()
        return self._client

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fatal(self, exc: BaseException, what: str) -> Exception | None:
        """The error to raise at once for ``exc``, or None if it may be transient."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(f"{what}: no usable AWS credentials for {self.where} "
                                "(set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
        if not isinstance(exc, ClientError):
            return None
        code, status = _error_code(exc)
        if code == "NoSuchBucket" or (status == 404 and what.startswith("head_bucket")):
            return StorageError(f"{what}: {self.where} does not exist")
        if code in _CREDENTIAL_CODES or status == 403:
            return StorageError(f"{what}: access to {self.where} refused ({code or status}); "
                                "check the credentials (AWS_PROFILE / AWS_ACCESS_KEY_ID) "
                                "and the bucket policy")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return FileNotFoundError(f"{what}: no such object in {self.where}")
        if is_transient(exc):
            return None
        return StorageError(f"{what}: {self.where} failed: {code or status}")

    def backoff(self, attempt: int) -> float:
        """Sleep before retry ``attempt`` (0-based): full jitter, capped at ``max_backoff_s``."""
        delay = random.uniform(0.0, min(self.max_backoff_s,
                                        self.backoff_s * (2 ** min(attempt, 40))))
        time.sleep(delay)
        return delay

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the store's retry policy; ``what`` names it in messages.

        A transient failure is retried at least ``retries`` times and, with
        ``patience_s``, until the request has been failing that long; each
        sleep is bounded by ``max_backoff_s``.
        """
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                fatal = self._fatal(exc, what)
                if fatal is not None:
                    raise fatal from None
                if not is_transient(exc):
                    raise
                self.wait_or_give_up(what, exc, attempt, start)
                attempt += 1

    def wait_or_give_up(self, what: str, exc: BaseException, attempt: int,
                        start: float) -> None:
        """After failed ``attempt`` (0-based) of a request failing since ``start``: back off.

        Raises:
            StoreUnavailable: the request has used its ``retries`` and has been
                failing for ``patience_s``; names the endpoint and how long.
        """
        failing = time.monotonic() - start
        if attempt >= self.retries and failing >= self.patience_s:
            raise StoreUnavailable(f"{what}: {self.where} still failing after "
                                   f"{attempt + 1} attempts over {failing:.1f} s: "
                                   f"{type(exc).__name__}: {exc}") from exc
        log.warning("%s on %s: transient %s, retry %d (failing for %.1f s of "
                    "%d retries / %.0f s patience)", what, self.where,
                    type(exc).__name__, attempt + 1, failing, self.retries,
                    self.patience_s)
        self.retried += 1
        self.backoff(attempt)

    def check_bucket(self) -> None:
        """Raise :class:`StorageError` now if the bucket is missing or access is refused."""
        self.call(f"head_bucket {self.bucket}",
                  lambda: self.client().head_bucket(Bucket=self.bucket))

    def put_bytes(self, key: str, data: bytes) -> None:
        k = self._key(key)
        self.call(f"put {k}", lambda: self.client().put_object(Bucket=self.bucket, Key=k,
                                                                Body=data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """S3's conditional put (``If-None-Match: *``): atomic, a 412 when the key exists."""
        from botocore.exceptions import ClientError

        k = self._key(key)

        def create() -> bool:
            try:
                self.client().put_object(Bucket=self.bucket, Key=k, Body=data, IfNoneMatch="*")
            except ClientError as exc:
                code, status = _error_code(exc)
                if code == "PreconditionFailed" or status == 412:
                    return False
                raise
            return True

        # A retry after a lost response may answer 412 for our own write: callers
        # read the object back when it matters (the lease does).
        return self.call(f"put-if-absent {k}", create)

    def put_file(self, key: str, path: str | Path) -> None:
        from boto3.s3.transfer import TransferConfig

        k = self._key(key)
        config = TransferConfig(multipart_threshold=_MULTIPART_THRESHOLD,
                                multipart_chunksize=_MULTIPART_THRESHOLD, max_concurrency=4)
        self.call(f"upload {k}", lambda: self.client().upload_file(
            str(path), self.bucket, k, Config=config))

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as fh:
            return fh.read()

    def open_read(self, key: str, start: int = 0) -> BinaryIO:
        raw = _S3RangeReader(self, self._key(key), start)
        return io.BufferedReader(raw, buffer_size=1 << 20)

    def get_file(self, key: str, path: str | Path) -> None:
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, self.open_read(key) as src:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        k = self._key(key)
        try:
            self.call(f"head {k}", lambda: self.client().head_object(Bucket=self.bucket, Key=k))
        except FileNotFoundError:
            # A HEAD on a missing bucket is a bare 404 too: tell the two apart.
            self.check_bucket()
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = (self.prefix + "/" if self.prefix else "") + prefix
        skip = len(self.prefix) + 1 if self.prefix else 0

        def fetch() -> list[str]:
            pages = self.client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full)
            return [obj["Key"][skip:] for page in pages for obj in page.get("Contents", [])]

        return sorted(self.call(f"list {full or '/'}", fetch))

    def delete(self, key: str) -> None:
        k = self._key(key)
        self.call(f"delete {k}", lambda: self.client().delete_object(Bucket=self.bucket, Key=k))

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


class _S3RangeReader(io.RawIOBase):
    """A streaming ``get_object`` body that resumes with a Range request after a failure.

    A connection reset halfway through a 1 GB shard costs one more request from
    the byte where it broke, not the whole object again.
    """

    def __init__(self, store: S3Store, key: str, start: int) -> None:
        super().__init__()
        self.store, self.key, self.pos = store, key, start
        self.size: int | None = None
        self.body: Any = None
        self._open()

    def _open(self) -> None:
        rng = {"Range": f"bytes={self.pos}-"} if self.pos else {}

        def get() -> Any:
            return self.store.client().get_object(Bucket=self.store.bucket, Key=self.key, **rng)

        if self.size is not None and self.pos >= self.size:
            self.body = None
            return
        resp = self.store.call(f"get {self.key}", get)
        if self.size is None:
            length = int(resp.get("ContentLength", 0))
            self.size = self.pos + length
        self.body = resp["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = time.monotonic()
        attempt = 0
        while True:
            if self.body is None:
                return 0
            try:
                data = self.body.read(len(view))
                if not data and self.size is not None and self.pos < self.size:
                    raise ConnectionError(f"body ended at byte {self.pos} of {self.size}")
                view[: len(data)] = data
                self.pos += len(data)
                return len(data)
            except Exception as exc:
                if not is_transient(exc):
                    raise StorageError(f"read {self.key} at byte {self.pos}: "
                                       f"{self.store.where}: {type(exc).__name__}: {exc}"
                                       ) from exc
                # The same retries and patience as a request; the reopen below is
                # itself patient, so an outage mid-body is waited out at this byte.
                self.store.wait_or_give_up(f"read {self.key} at byte {self.pos}", exc,
                                           attempt, start)
                attempt += 1
                self.close_body()
                self._open()

    def close_body(self) -> None:
        if self.body is not None:
            # A body broken by a reset may fail to close; it is dropped either way.
            with contextlib.suppress(Exception):
                self.body.close()
            self.body = None

    def close(self) -> None:
        self.close_body()
        super().close()


def open_store(url: str, *, endpoint_url: str | None = None, retries: int = 5,
               backoff_s: float = 0.2, patience_s: float = 0.0) -> ObjectStore:
    """Open the object store rooted at ``url``.

    Args:
        url: a local path, ``file://path`` or ``s3://bucket/prefix``.
        endpoint_url: S3 endpoint; falls back to ``OBS_S3_ENDPOINT_URL`` then
            ``AWS_ENDPOINT_URL``, then AWS itself.
        retries: retries of transient S3 failures.
        backoff_s: base delay of the exponential backoff.
        patience_s: keep retrying a failing request this long (an S3 outage).

    Returns:
        A :class:`LocalStore` or an :class:`S3Store` (the bucket checked already).

    Raises:
        StorageError: the bucket does not exist or access is refused.
        ValueError: the URL has an unsupported scheme.
    """
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, retries=retries,
                       backoff_s=backoff_s, patience_s=patience_s)
    if url.startswith("file://"):
        return LocalStore(url[len("file://"):])
    if "://" in url:
        raise ValueError(f"unsupported store url {url!r}: use a path, file:// or s3://")
    return LocalStore(url)
