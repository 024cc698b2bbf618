"""Serve a FakeKlarna (any ``httpx.Request -> httpx.Response`` callable) on loopback.

Built on :class:`http.server.ThreadingHTTPServer`: one daemon thread per
connection, HTTP/1.1 keep-alive so clients pool connections, and a listen
backlog large enough for 50 concurrent clients. When the handler raises an
``httpx.TransportError`` (a scripted drop or timeout) the connection is closed
without an answer, which is what a client sees when Klarna's answer is lost.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast

import httpx

from klarna_flow._errors import ConfigurationError
from klarna_flow.klarna._config import is_loopback

__all__ = ["FakeKlarnaServer", "run_fake_server", "serve_fake"]

Handler = Callable[[httpx.Request], httpx.Response]
logger = logging.getLogger("klarna_flow.testing.server")

# Hop-by-hop and framing headers: the server writes its own.
_SKIPPED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    handler: Handler

    def __init__(self, address: tuple[str, int], handler: Handler) -> None:
        self.handler = handler
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut every open connection so its thread ends now, not at idle timeout."""
        with self._open_lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _address(server: Any) -> tuple[str, int]:
    """(host, port) the server listens on (IPv6 addresses have four fields)."""
    host, port = server.server_address[:2]
    return str(host), int(port)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm
    # and delayed ACKs add ~40 ms to every keep-alive exchange.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._relay()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _relay(self) -> None:
        server = cast(_Server, self.server)
        host, port = _address(self.server)
        request = httpx.Request(
            self.command,
            f"http://{self.headers.get('Host') or f'{host}:{port}'}{self.path}",
            headers=list(self.headers.items()),
            content=self._body(),
        )
        try:
            response = server.handler(request)
        except httpx.TransportError:
            # A scripted lost answer: hang up without a word.
            self.close_connection = True
            return
        except Exception:
            # A bug in the handler: answer 500 (as a real server would) and
            # keep the traceback in the log rather than on stderr.
            logger.exception("the fake's handler failed")
            response = httpx.Response(500, json={"error_code": "INTERNAL_ERROR"})
        self._write(response)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._chunked()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _chunked(self) -> bytes:
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _write(self, response: httpx.Response) -> None:
        content = response.read()
        self.send_response(response.status_code, response.reason_phrase or None)
        for name, value in response.headers.multi_items():
            if name.lower() not in _SKIPPED:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class FakeKlarnaServer:
    """A loopback HTTP server in front of a FakeKlarna.

    The socket is bound on construction (so ``base_url`` is known at once);
    :meth:`start` serves in a background thread, :meth:`stop` ends it.

    Args:
        fake: the handler, usually a :class:`~klarna_flow.testing.FakeKlarna`.
        host: a loopback address (127.0.0.0/8, ``::1``, ``localhost``).
        port: 0 picks a free port.

    Raises:
        ConfigurationError: a host that is not loopback, or a port in use.
    """

    def __init__(self, fake: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        if not is_loopback(host):
            raise ConfigurationError(f"the fake server only listens on loopback, not {host!r}")
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), fake)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def base_url(self) -> str:
        """``http://host:port`` to give a client as its ``base_url``."""
        host, port = _address(self._server)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"

    def start(self) -> FakeKlarnaServer:
        """Serve in a daemon thread; return self."""
        self._serving = True
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"fake-klarna {self.base_url}", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`stop` (from another thread) or Ctrl-C."""
        self._serving = True
        try:
            self._server.serve_forever(poll_interval=0.05)
        finally:
            self._serving = False
            self._close()

    def stop(self) -> None:
        """Stop serving, cut open connections and release the socket."""
        if self._serving:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._close()

    def _close(self) -> None:
        self._server.drop_connections()
        self._server.server_close()

    def __enter__(self) -> FakeKlarnaServer:
        return self if self._serving else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FakeKlarnaServer({self.base_url})"


@contextlib.contextmanager
def serve_fake(fake: Handler, host: str = "127.0.0.1", port: int = 0) -> Iterator[FakeKlarnaServer]:
    """Serve ``fake`` on loopback for the ``with`` block; yields the server."""
    with FakeKlarnaServer(fake, host, port) as server:
        yield server


def run_fake_server(
    fake: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ready: Callable[[FakeKlarnaServer], object] | None = None,
) -> None:
    """Serve ``fake`` in this thread until Ctrl-C, for the ``fake-server`` command.

    Args:
        ready: called with the server once its socket listens (read
            ``server.base_url`` to announce it; ``server.stop()`` from another
            thread ends the serving).
    """
    server = FakeKlarnaServer(fake, host, port)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            if ready is not None:
                ready(server)
            server.serve_forever()
        finally:
            # Also when Ctrl-C lands before serving began: release the socket.
            server.stop()
