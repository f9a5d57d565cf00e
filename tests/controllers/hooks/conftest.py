"""An independent signed-webhook endpoint for the hook tests.

Its signature check is written here with hmac/hashlib from the documented contract
(``sha256=`` + hex HMAC-SHA256(secret, f"{timestamp}.{body}")), not with the code under
test, so a bug shared by sender and receiver cannot hide.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

SECRET = b"test-secret-0123456789abcdef"


@dataclass
class Request:
    """One request as the endpoint saw it."""

    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    fresh: bool
    status: int

    def payload(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc


def independent_check(secret: bytes, headers: dict[str, str], body: bytes, now: float) -> tuple[bool, bool]:
    """(signature ok, timestamp within 300 s) — the contract, spelled out independently."""
    ts = headers.get("X-Powerplane-Timestamp", "")
    expected = "sha256=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, headers.get("X-Powerplane-Signature", ""))
    fresh = ts.isdigit() and abs(now - int(ts)) <= 300
    return ok, fresh


class SigServer:
    """Loopback HTTP endpoint answering from a script of statuses (then 200), recording every request.

    ``gate``: when set up with ``hold=True``, every request waits until ``release()``.
    """

    def __init__(self, statuses: list[int] | None = None, secret: bytes = SECRET, hold: bool = False,
                 retry_after: str | None = None) -> None:
        self.statuses = list(statuses or [])
        self.secret = secret
        self.retry_after = retry_after
        self.requests: list[Request] = []
        self.arrived = 0  # requests read, including those held at the gate
        self.cond = threading.Condition()
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.cond:
                    server.arrived += 1
                    server.cond.notify_all()
                server.gate.wait()
                headers = {k: v for k, v in self.headers.items()}
                ok, fresh = independent_check(server.secret, headers, body, time.time())
                with server.cond:
                    status = server.statuses.pop(0) if server.statuses else (200 if ok and fresh else 401)
                    server.requests.append(Request(headers, body, ok, fresh, status))
                    server.cond.notify_all()
                self.send_response(status)
                if status in (429, 503) and server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def wait_requests(self, n: int, timeout_s: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.requests) >= n, timeout_s)

    def wait_arrived(self, n: int, timeout_s: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.arrived >= n, timeout_s)

    def accepted(self) -> list[dict[str, Any]]:
        with self.cond:
            return [r.payload() for r in self.requests if 200 <= r.status < 300]

    def release(self) -> None:
        self.gate.set()

    def stop(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def sigserver() -> Iterator[SigServer]:
    """An endpoint that verifies independently and answers 200 (or 401 if the check fails)."""
    srv = SigServer()
    yield srv
    srv.stop()
