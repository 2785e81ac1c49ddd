"""A real S3 endpoint for tests: moto's server on 127.0.0.1, plus a fault-injecting proxy.

``tests/conftest.py`` registers it as a plugin; the fixtures
are ``s3_endpoint`` (one moto server per test session, its URL), ``s3_bucket``
(a fresh bucket per test), ``faulty_proxy`` (a :class:`FaultyProxy` in front of
moto) and ``s3_env`` (dummy credentials in the environment, so boto3's default
chain finds them and never reaches out to a real account).

The proxy is a plain HTTP forwarder: it answers the next N matching requests
with a 503 ``SlowDown``, a 500, a dropped connection or a body cut in half, so
the retry code is exercised end to end over real sockets, including from
DataLoader worker processes.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.util
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from launch.jobs.spawn import free_port

HAVE_MOTO = importlib.util.find_spec("moto") is not None
needs_moto = pytest.mark.skipif(not HAVE_MOTO, reason="moto[server] is not installed")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    """moto's threaded S3 server on loopback."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> MotoServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def client(self) -> Any:
        """A boto3 client of this server (dummy credentials)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def set_auth(self, enforced: bool) -> None:
        """Make moto check credentials (unknown keys get 403) or accept anything."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("POST", "/moto-api/reset-auth", body=b"0" if enforced else b"inf")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        assert resp.status == 200, resp.status


class FaultyProxy:
    """An HTTP proxy to ``upstream`` that fails the next N matching requests on demand.

    Args:
        upstream_port: port of the real server on 127.0.0.1.
    """

    KINDS = ("503", "500", "reset", "truncate")

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.pending: list[tuple[str, str]] = []  # (kind, method) faults still to inject
        self.injected: dict[str, int] = {}
        self.requests = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._take_fault(self.command)
                if fault in ("503", "500"):
                    code = "SlowDown" if fault == "503" else "InternalError"
                    payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}"
                               f"</Code><Message>injected</Message></Error>").encode()
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port,
                                                      timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
                upstream.close()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length",
                                           "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                if fault == "truncate":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail_next(self, count: int, kind: str = "503", method: str = "GET") -> None:
        """Fail the next ``count`` requests of ``method`` ('*' for any) with ``kind``."""
        assert kind in self.KINDS, kind
        with self.lock:
            self.pending.extend([(kind, method)] * count)

    def _take_fault(self, method: str) -> str | None:
        with self.lock:
            self.requests += 1
            for i, (kind, want) in enumerate(self.pending):
                if want in ("*", method):
                    del self.pending[i]
                    self.injected[kind] = self.injected.get(kind, 0) + 1
                    return kind
        return None

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server for the whole test session."""
    if not HAVE_MOTO:
        pytest.skip("moto[server] is not installed")
    with MotoServer() as server:
        yield server


@contextlib.contextmanager
def credentials_in_env() -> Iterator[dict[str, str]]:
    """Dummy credentials in ``os.environ`` for the block, restored after it.

    For fixtures wider than one test (module or session scope), where pytest's
    ``monkeypatch`` fixture is not available; processes started inside the block
    (DataLoader workers, SLURM tasks) inherit the credentials.
    """
    with pytest.MonkeyPatch.context() as patch:
        for key, value in CREDENTIALS.items():
            patch.setenv(key, value)
        yield dict(CREDENTIALS)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Dummy credentials in the environment; no endpoint variables leak in."""
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "OBS_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    return dict(CREDENTIALS)


@pytest.fixture
def s3_endpoint(moto_server: MotoServer, s3_env: dict[str, str]) -> str:
    """URL of the session's moto server, with credentials set."""
    return moto_server.url


@pytest.fixture
def s3_bucket(moto_server: MotoServer, s3_env: dict[str, str]) -> str:
    """A new, empty bucket on the moto server."""
    name = f"obs-test-{uuid.uuid4().hex[:12]}"
    moto_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def faulty_proxy(moto_server: MotoServer) -> Iterator[FaultyProxy]:
    """A fault-injecting proxy in front of the moto server."""
    with FaultyProxy(moto_server.port) as proxy:
        yield proxy
