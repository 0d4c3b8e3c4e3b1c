"""A test-only HTTP server on 127.0.0.1 that misbehaves on purpose.

Each path gets a script of answers, used in order (the last one repeats): a normal reply, a connection
reset in the middle of the body, a body cut short by a clean close, a server that stalls or trickles.
Every request is logged with the bytes of body actually sent, so tests can assert what crossed the wire.
Real sockets, real HTTP: only the server's behaviour is scripted.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    """A complete answer."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    #: False: no Content-Length, the body ends when the connection closes (as HTTP/1.0 servers do)
    announce_length: bool = True


@dataclass(frozen=True)
class Reset:
    """Announce ``body`` in full, send ``after`` bytes of it, then reset the connection (RST)."""

    body: bytes
    after: int


@dataclass(frozen=True)
class Truncate:
    """Announce ``body`` in full, send ``after`` bytes of it, then close cleanly (FIN)."""

    body: bytes
    after: int


@dataclass(frozen=True)
class Stall:
    """Announce ``body``, send ``after`` bytes, then send nothing until the server stops."""

    body: bytes
    after: int = 0


@dataclass(frozen=True)
class Trickle:
    """Send ``body`` one ``piece`` at a time, ``interval`` seconds apart: never idle, never done in time."""

    body: bytes
    piece: int = 64
    interval: float = 0.05


Answer = Reply | Reset | Truncate | Stall | Trickle


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    status: int
    body_bytes: int


class FaultServer:
    """Scripted HTTP server; use as a context manager. ``url`` is its base (``http://127.0.0.1:P``)."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[Answer]] = {}
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._arrivals = threading.Condition(self._lock)
        self._arrived: list[str] = []
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fault-server", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, path: str, *answers: Answer) -> None:
        """Answer requests for ``path`` with ``answers`` in turn; the last one repeats."""
        with self._lock:
            self._scripts[path] = list(answers)

    def wait_for_request(self, path: str, timeout: float = 5.0) -> None:
        """Block until a request for ``path`` has arrived (it is logged only once answered)."""
        with self._arrivals:
            if not self._arrivals.wait_for(lambda: path in self._arrived, timeout):
                raise TimeoutError(f"no request for {path} within {timeout}s")

    def requests_for(self, path: str, timeout: float = 5.0) -> list[LoggedRequest]:
        """Answered requests for ``path``, after waiting for those that arrived to be answered.

        A request is logged once its answer is out, which may be just after the client has read it.
        """
        with self._arrivals:
            self._arrivals.wait_for(lambda: self._answered(path) == self._arrived.count(path), timeout)
            return [entry for entry in self.log if entry.path == path]

    def _answered(self, path: str) -> int:
        return sum(entry.path == path for entry in self.log)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next_answer(self, path: str) -> Answer:
        with self._lock:
            self._arrived.append(path)
            self._arrivals.notify_all()
            script = self._scripts.get(path)
            if not script:
                return Reply(404, b"not found\n")
            return script.pop(0) if len(script) > 1 else script[0]

    def _record(self, entry: LoggedRequest) -> None:
        with self._arrivals:
            self.log.append(entry)
            self._arrivals.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                answer = server._next_answer(self.path)
                sent = server._serve(self, answer)
                status = answer.status if isinstance(answer, Reply) else 200
                server._record(LoggedRequest("GET", self.path, dict(self.headers.items()), status, sent))

        return Handler

    def _serve(self, handler: BaseHTTPRequestHandler, answer: Answer) -> int:
        """Send ``answer``; return the number of body bytes that went out."""
        if isinstance(answer, Reply):
            handler.send_response(answer.status)
            headers = dict(answer.headers)
            if answer.announce_length:
                headers.setdefault("Content-Length", str(len(answer.body)))
            else:
                handler.close_connection = True
                headers["Connection"] = "close"
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(answer.body)
            return len(answer.body)
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        if isinstance(answer, Trickle):
            return self._trickle(handler, answer)
        handler.wfile.write(answer.body[: answer.after])
        handler.wfile.flush()
        if isinstance(answer, Reset):
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
        elif isinstance(answer, Stall):
            self._stopping.wait()
        return answer.after

    def _trickle(self, handler: BaseHTTPRequestHandler, answer: Trickle) -> int:
        sent = 0
        for piece in _pieces(answer.body, answer.piece):
            if self._stopping.wait(answer.interval):
                break
            try:
                handler.wfile.write(piece)
                handler.wfile.flush()
            except OSError:  # the client gave up, as it should
                break
            sent += len(piece)
        return sent


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
