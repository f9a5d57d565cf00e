"""One small HTTP server for every endpoint a process serves: ``/metrics``, ``/healthz``, ``/readyz``
and the jobs endpoint.

stdlib ``http.server`` on its own thread (one thread per connection, daemonic), routing
``(method, path)`` to a handler that takes a ``Request`` and returns a ``Response``. The
request is bounded before a handler sees it: ``Content-Length`` must be one plain decimal
number of at most ``max_body`` bytes (else 400/413 without reading the body), a client that
stalls is cut off after ``read_timeout_s``, and a handler that raises answers 500 and is
logged once (the server keeps serving). Unknown paths are 404, other methods 405.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from models.errors import ConfigError

log = logging.getLogger("powerplane.http")

MAX_BODY_BYTES = 64 * 1024
_ADDR_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-]*)):(?P<port>\d{1,5})$")


@dataclass(frozen=True, slots=True)
class Request:
    """What a handler gets: method, path (no query), headers and the (bounded) body."""

    method: str
    path: str
    query: str
    headers: Message
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Response:
    """What a handler returns."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


def parse_addr(text: str, flag: str = "--metrics") -> tuple[str, int]:
    """``HOST:PORT`` (``127.0.0.1:9740``, ``[::1]:9740``, ``0.0.0.0:9740``; port 0: any free port)."""
    m = _ADDR_RE.match(text.strip())
    if m is None or not (m["v6"] or m["host"]):
        raise ConfigError(flag, [("", f"expected HOST:PORT such as 127.0.0.1:9740, got {text[:80]!r}")])
    port = int(m["port"])
    if port > 65535:
        raise ConfigError(flag, [("", f"port {port} is not 0..65535")])
    return (m["v6"] or m["host"]), port


def content_length(values: list[str] | None, max_bytes: int) -> int | str:
    """The body length of the ``Content-Length`` header values (0 when absent), or why it is refused
    (``bad_length``: repeated, signed or not a number; ``too_large``)."""
    if not values:
        return 0
    if len({v.strip() for v in values}) != 1:
        return "bad_length"
    text = values[0].strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        return "bad_length"
    n = int(text)
    return "too_large" if n > max_bytes else n


class HttpServer:
    """Serves ``routes`` on ``host:port`` from a thread until stopped."""

    def __init__(self, host: str, port: int, routes: Mapping[tuple[str, str], Handler], *,
                 max_body: int = MAX_BODY_BYTES, read_timeout_s: float = 10.0, name: str = "http") -> None:
        self.host = host
        self.port = port
        self.routes = dict(routes)
        self.max_body = max_body
        self.read_timeout_s = read_timeout_s
        self.name = name
        self.requests = 0
        self.errors = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` as bound (the real port when 0 was asked for)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HttpServer:
        """Bind and serve; an OSError (address in use, no permission) reaches the caller."""
        server = self

        class _Handler(BaseHTTPRequestHandler):
            timeout = self.read_timeout_s
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s: %s " + format, server.name, self.address_string(), *args)

            def _answer(self, r: Response) -> None:
                self.send_response(r.status)
                self.send_header("Content-Type", r.content_type)
                self.send_header("Content-Length", str(len(r.body)))
                for k, v in r.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(r.body)

            def _serve(self) -> None:
                server.requests += 1
                url = urlsplit(self.path)
                path = url.path.rstrip("/") or "/"
                handler = server.routes.get((self.command if self.command != "HEAD" else "GET", path))
                if handler is None:
                    allowed = any(p == path for _m, p in server.routes)
                    self.close_connection = True
                    self._answer(Response(405 if allowed else 404, b"method not allowed\n" if allowed
                                          else b"not found\n"))
                    return
                n = content_length(self.headers.get_all("Content-Length"), server.max_body)
                if isinstance(n, str):
                    self.close_connection = True
                    self._answer(Response(413 if n == "too_large" else 400, f"{n}\n".encode()))
                    return
                body = self.rfile.read(n) if n else b""
                try:
                    resp = handler(Request(self.command, path, url.query, self.headers, body))
                except Exception as exc:  # a handler's bug must not end the server
                    server.errors += 1
                    log.log(logging.ERROR if server.errors == 1 else logging.DEBUG, "%s: %s %s failed: %s",
                            server.name, self.command, path, exc, exc_info=server.errors == 1)
                    resp = Response(500, b"internal error\n")
                self._answer(resp)

            do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _serve

        cls = ThreadingHTTPServer
        if ":" in self.host:
            class _V6(ThreadingHTTPServer):
                address_family = socket.AF_INET6
            cls = _V6
        httpd = cls((self.host, self.port), _Handler)
        httpd.daemon_threads = True
        self.port = int(httpd.server_address[1])
        self._server = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
