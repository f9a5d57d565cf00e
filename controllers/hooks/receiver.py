"""The receiving end of a webhook: signature checks and a small reference receiver.

A receiver must check, before trusting a delivery:

1. ``X-Powerplane-Timestamp`` is within ``tolerance_s`` of its own clock — an old
   (or future) signed request replayed by someone who captured it is refused;
2. ``X-Powerplane-Signature`` equals ``sha256=`` + hex HMAC-SHA256(secret,
   ``f"{timestamp}.{body}"``), compared in constant time;
3. the payload's ``id`` — inside the signed body — was not seen before: deliveries are at
   least once, so a retry or a dead-letter replay may bring the same event twice.

Only signed values are trusted: the delivery id is the body's ``id`` and the timestamp is
part of the signature's input, so neither can be changed without the secret. The
``X-Powerplane-Delivery`` header is a convenience copy for logs and proxies; a request
whose header disagrees with the signed id was altered on the way — typically a captured
request replayed with a fresh header to pass as a new event — and is refused as
``replay``. The same request replayed unchanged within the tolerance is a ``duplicate``:
answered 200 and counted, never handed on twice.

A dead letter re-sent with ``powerplane hooks replay`` is the same signed event (same
``id``) under a fresh timestamp and signature: accepted if this receiver never got it,
a ``duplicate`` if it did (the sender gave up on an answer that was lost, not on the
event). Seen ids are kept for the last ``max_seen`` deliveries.

The request itself is bounded: ``Content-Length`` must be one plain decimal number of at
most ``MAX_BODY_BYTES`` (``-1``, ``abc``, a missing or repeated header are ``bad_length``,
answered 400 without reading a byte of the body), and a client that stalls mid-body is cut
off after ``read_timeout_s``.

``WebhookReceiver`` does all of this on loopback (stdlib ``http.server`` in a thread) for
the demo, the tests and ``powerplane hooks receive``.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bus.http import content_length
from controllers.hooks.payloads import H_DELIVERY, H_SIGNATURE, H_TIMESTAMP, sign

log = logging.getLogger("powerplane.hooks")

MAX_BODY_BYTES = 1 << 20
MAX_ID_CHARS = 128

# Why a delivery was refused, counted in ``WebhookReceiver.rejected``.
REJECT_REASONS = ("missing_headers", "bad_timestamp", "stale_timestamp", "future_timestamp", "bad_signature",
                  "malformed", "too_large", "bad_length", "replay")
_STATUS = {"too_large": 413, "malformed": 400, "bad_length": 400}  # every other reason: 401


def body_length(values: list[str] | None) -> int | str:
    """The body length from the ``Content-Length`` header values, or the reject reason: the one
    parser of ``bus.http`` (one plain decimal number, at most ``MAX_BODY_BYTES``), and a webhook
    without the header is refused too (chunked bodies are not taken)."""
    return content_length(values, MAX_BODY_BYTES) if values else "bad_length"


def read_payload(body: bytes) -> tuple[str, dict[str, Any]] | None:
    """``(delivery id, payload)`` of a signed body — the id is the payload's own ``id`` — or None if malformed."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    ident = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(ident, str) or not 0 < len(ident) <= MAX_ID_CHARS:
        return None
    return ident, payload


def signature_problem(secret: bytes, timestamp: str | int, body: bytes, header: str | None, now: float,
                      tolerance_s: float = 300.0) -> str | None:
    """Why this delivery must be refused (one of REJECT_REASONS), or None if it verifies."""
    if header is None or timestamp is None or timestamp == "":
        return "missing_headers"
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return "bad_timestamp"
    if ts < now - tolerance_s:
        return "stale_timestamp"
    if ts > now + tolerance_s:
        return "future_timestamp"
    if not hmac.compare_digest(sign(secret, ts, body).encode(), header.strip().encode()):
        return "bad_signature"
    return None


def verify_signature(secret: bytes, timestamp: str | int, body: bytes, header: str | None, now: float,
                     tolerance_s: float = 300.0) -> bool:
    """Whether the signature is right and the timestamp fresh (see ``signature_problem``)."""
    return signature_problem(secret, timestamp, body, header, now, tolerance_s) is None


class WebhookReceiver:
    """A loopback webhook endpoint: verifies, dedups by delivery id, keeps what it accepted.

    ``received`` holds accepted payload dicts in arrival order, ``rejected`` counts refusals
    by reason, ``duplicates`` counts re-deliveries of an accepted id (answered 200, not
    stored again). ``fail_first`` answers 500 to that many requests first (retry drills).
    """

    def __init__(self, secret: bytes, host: str = "127.0.0.1", port: int = 0, *, fail_first: int = 0,
                 tolerance_s: float = 300.0, on_event: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.time, max_seen: int = 100_000,
                 read_timeout_s: float = 10.0) -> None:
        self.secret = secret
        self.host = host
        self.port = port
        self.fail_first = fail_first
        self.tolerance_s = tolerance_s
        self.on_event = on_event
        self.clock = clock
        self.received: list[dict[str, Any]] = []
        self.rejected: collections.Counter[str] = collections.Counter()
        self.duplicates = 0
        self.requests = 0
        self.max_seen = max_seen
        self.read_timeout_s = read_timeout_s
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port/hooks`` of the running receiver."""
        return f"http://{self.host}:{self.port}/hooks"

    def start(self) -> WebhookReceiver:
        """Bind and serve in a background thread; returns self."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = receiver.read_timeout_s  # a client stalling mid-body is cut off, not waited for

            def do_POST(self) -> None:
                status, text, body_read = receiver._handle(self)
                data = text.encode()
                self.send_response(status)
                if not body_read:  # the body was not (fully) read: the connection cannot carry another request
                    self.close_connection = True
                    self.send_header("Connection", "close")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                # socketserver prints a traceback to stderr; a broken client is not our error.
                log.debug("hooks receiver: request from %s failed", client_address, exc_info=True)

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hooks-receiver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _reject(self, reason: str) -> tuple[int, str]:
        with self._cond:
            self.rejected[reason] += 1
        return _STATUS.get(reason, 401), reason

    def _handle(self, req: BaseHTTPRequestHandler) -> tuple[int, str, bool]:
        """``(status, text, whether the body was read)`` of one request."""
        length = body_length(req.headers.get_all("Content-Length"))
        if isinstance(length, str) or req.headers.get("Transfer-Encoding"):
            return (*self._reject("bad_length" if not isinstance(length, str) else length), False)
        body = req.rfile.read(length)
        if len(body) != length:  # the client closed early
            return (*self._reject("bad_length"), False)
        return (*self._verify(req, body), True)

    def _verify(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, str]:
        with self._cond:
            self.requests += 1
            if self.fail_first > 0:
                self.fail_first -= 1
                return 500, "injected failure"
        problem = signature_problem(self.secret, req.headers.get(H_TIMESTAMP, ""), body,
                                    req.headers.get(H_SIGNATURE), self.clock(), self.tolerance_s)
        if problem:
            return self._reject(problem)
        got = read_payload(body)
        if got is None:
            return self._reject("malformed")
        delivery, payload = got
        header = req.headers.get(H_DELIVERY)
        if header is not None and header.strip() != delivery:  # an unsigned header does not name a delivery
            return self._reject("replay")
        with self._cond:
            if delivery in self._seen:
                self.duplicates += 1
                return 200, "duplicate"
            self._seen[delivery] = None
            if len(self._seen) > self.max_seen:
                self._seen.popitem(last=False)
            self.received.append(payload)
            self._cond.notify_all()
        if self.on_event is not None:
            self.on_event(payload)
        return 200, "ok"

    def wait_for(self, n: int, timeout_s: float = 10.0) -> bool:
        """Wait until ``n`` payloads have been accepted; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.received) >= n, timeout_s)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
