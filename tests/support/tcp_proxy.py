"""A loopback TCP forwarder that can be stopped and restarted on the same port: an outage.

The S3 outage test of issue #15 puts it between ``obs train`` and moto, as the
endpoint of both the shards and the checkpoints. While it is stopped nothing
listens on its port (connections are refused) and every connection it was
forwarding is closed, so clients see exactly what a vanished endpoint gives
them: refused connects and broken keep-alive sockets. ``start()`` listens on
the same port again.

It forwards bytes and knows nothing of HTTP, so unlike
:class:`support.s3_server.FaultyProxy` it cannot fail single requests; it is
for outages measured in seconds. To start an outage at a chosen kind of
request, :meth:`TcpProxy.stop_on` stops it at the first client bytes holding a
pattern (e.g. a shard's key), which it does not forward.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from launch.jobs.spawn import free_port


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port`` while started.

    Args:
        upstream_port: port of the real server on 127.0.0.1.
        port: the port to listen on (a free one when None); kept across restarts.

    Attributes:
        connections: connections accepted so far (over every start).
    """

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._trigger: bytes | None = None
        self.stopped = threading.Event()

    @property
    def running(self) -> bool:
        """Whether the proxy is listening."""
        return self._listener is not None

    def start(self) -> None:
        """Listen on the port (again) and forward every connection."""
        if self._listener is not None:
            raise ValueError("the proxy is already running")
        self.stopped.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The port of the previous start may still have sockets in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def stop_on(self, pattern: bytes) -> None:
        """Stop (see :meth:`stop`) when a client next sends bytes containing ``pattern``.

        Those bytes are not forwarded; :attr:`stopped` is set once stopped.
        """
        if not pattern:
            raise ValueError("stop_on needs a non-empty pattern")
        self._trigger = pattern

    def stop(self) -> None:
        """Refuse new connections and close every forwarded one."""
        self._trigger = None
        listener, self._listener = self._listener, None
        if listener is None:
            return
        # shutdown() wakes the blocked accept(); close() alone may not on Linux.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout=10)
        with self._lock:
            live, self._open = self._open, set()
        for sock in live:
            _close(sock)
        self.stopped.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _addr = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port),
                                                    timeout=10)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # stopped meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self.connections += 1
                self._open.update((client, upstream))
            for src, dst, from_client in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, from_client),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        """Copy ``src`` to ``dst`` until either side closes; then close both."""
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                trigger = self._trigger
                if from_client and trigger is not None and trigger in data:
                    # stop() closes this very socket: from another thread, then end.
                    threading.Thread(target=self.stop, daemon=True).start()
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
