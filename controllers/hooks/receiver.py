"""The receiving end of a webhook: signature checks and a small reference receiver.

A receiver must check, before trusting a delivery:

1. ``X-Powerplane-Timestamp`` is within ``tolerance_s`` of its own clock — an old
   (or future) signed request replayed by someone who captured it is refused;
2. ``X-Powerplane-Signature`` equals ``sha256=`` + hex HMAC-SHA256(secret,
   ``f"{timestamp}.{body}"``), compared in constant time;
3. ``X-Powerplane-Delivery`` (= the payload ``id``) was not seen before: deliveries are at
   least once, so a retry or replay may bring the same event twice.

``WebhookReceiver`` does all three on loopback (stdlib ``http.server`` in a thread) for the
demo, the tests and ``powerplane hooks receive``.
"""

from __future__ import annotations

import collections
import hmac
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from controllers.hooks.payloads import H_DELIVERY, H_SIGNATURE, H_TIMESTAMP, sign

MAX_BODY_BYTES = 1 << 20

# Why a delivery was refused, counted in ``WebhookReceiver.rejected``.
REJECT_REASONS = ("missing_headers", "bad_timestamp", "stale_timestamp", "future_timestamp", "bad_signature",
                  "malformed", "too_large")


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
                 clock: Callable[[], float] = time.time) -> None:
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
        self._seen: set[str] = set()
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

            def do_POST(self) -> None:
                status, text = receiver._handle(self)
                data = text.encode()
                self.send_response(status)
                if status == 413:  # the body was not read: this connection cannot carry another request
                    self.close_connection = True
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"hooks-receiver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _reject(self, reason: str) -> tuple[int, str]:
        with self._cond:
            self.rejected[reason] += 1
        return (413 if reason == "too_large" else 400 if reason == "malformed" else 401), reason

    def _handle(self, req: BaseHTTPRequestHandler) -> tuple[int, str]:
        length = int(req.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return self._reject("too_large")
        body = req.rfile.read(length)
        with self._cond:
            self.requests += 1
            if self.fail_first > 0:
                self.fail_first -= 1
                return 500, "injected failure"
        problem = signature_problem(self.secret, req.headers.get(H_TIMESTAMP, ""), body,
                                    req.headers.get(H_SIGNATURE), self.clock(), self.tolerance_s)
        if problem:
            return self._reject(problem)
        try:
            payload = json.loads(body)
        except ValueError:
            return self._reject("malformed")
        if not isinstance(payload, dict):
            return self._reject("malformed")
        delivery = req.headers.get(H_DELIVERY) or str(payload.get("id", ""))
        with self._cond:
            if delivery in self._seen:
                self.duplicates += 1
                return 200, "duplicate"
            self._seen.add(delivery)
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
