"""The reference receiver, fed requests signed here with hmac directly (not with the sender's code)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
from collections.abc import Iterator

import pytest

from controllers.hooks.receiver import WebhookReceiver, signature_problem, verify_signature
from tests.controllers.hooks.conftest import SECRET

NOW = 1_700_000_000.0


def signed(body: bytes, ts: int, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def test_verify_signature_rules() -> None:
    body = b'{"id":"x"}'
    ts = int(NOW)
    assert verify_signature(SECRET, ts, body, signed(body, ts), NOW)
    assert verify_signature(SECRET, str(ts - 300), body, signed(body, ts - 300), NOW)
    assert signature_problem(SECRET, ts - 301, body, signed(body, ts - 301), NOW) == "stale_timestamp"
    assert signature_problem(SECRET, ts + 301, body, signed(body, ts + 301), NOW) == "future_timestamp"
    assert signature_problem(SECRET, ts, body + b" ", signed(body, ts), NOW) == "bad_signature"
    assert signature_problem(SECRET, ts, body, signed(body, ts, b"x" * 16), NOW) == "bad_signature"
    assert signature_problem(SECRET, ts + 1, body, signed(body, ts), NOW) == "bad_signature"  # ts is signed
    assert signature_problem(SECRET, ts, body, signed(body, ts).removeprefix("sha256="), NOW) == "bad_signature"
    assert signature_problem(SECRET, "soon", body, signed(body, ts), NOW) == "bad_timestamp"
    assert signature_problem(SECRET, ts, body, None, NOW) == "missing_headers"
    assert signature_problem(SECRET, ts - 10, body, signed(body, ts - 10), NOW, tolerance_s=5) == "stale_timestamp"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    rx = WebhookReceiver(SECRET, fail_first=1).start()
    yield rx
    rx.stop()


def send(rx: WebhookReceiver, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=5)
    try:
        conn.request("POST", "/hooks", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def headers_for(body: bytes, ts: int, delivery: str = "d1", sig: str | None = None) -> dict[str, str]:
    return {"X-Powerplane-Timestamp": str(ts), "X-Powerplane-Signature": sig or signed(body, ts),
            "X-Powerplane-Delivery": delivery, "X-Powerplane-Event": "move_recommendation",
            "Content-Type": "application/json"}


def test_receiver_verifies_dedups_and_counts(receiver: WebhookReceiver) -> None:
    body = json.dumps({"id": "d1", "kind": "move_recommendation"}).encode()
    now = int(time.time())
    assert receiver.url == f"http://127.0.0.1:{receiver.port}/hooks"
    assert send(receiver, body, headers_for(body, now)) == 500  # fail_first
    assert send(receiver, body, headers_for(body, now)) == 200
    assert send(receiver, body, headers_for(body, now)) == 200  # a retry of an accepted delivery
    assert send(receiver, body.replace(b"d1", b"d2"), headers_for(body, now, "d2")) == 401  # tampered
    assert send(receiver, body, headers_for(body, now - 3600, "d3")) == 401  # replayed an hour later
    assert send(receiver, body, headers_for(body, now + 3600, "d4")) == 401
    assert send(receiver, b"[1]", headers_for(b"[1]", now, "d5")) == 400
    assert receiver.received == [{"id": "d1", "kind": "move_recommendation"}]
    assert receiver.duplicates == 1 and receiver.requests == 7
    assert receiver.rejected == {"bad_signature": 1, "stale_timestamp": 1, "future_timestamp": 1, "malformed": 1}
    assert receiver.wait_for(1, timeout_s=0)
    assert not receiver.wait_for(2, timeout_s=0)


def test_receiver_context_manager_and_callback() -> None:
    got: list[dict[str, object]] = []
    with WebhookReceiver(SECRET, on_event=got.append) as rx:
        body = b'{"id":"a"}'
        assert send(rx, body, headers_for(body, int(time.time()), "a")) == 200
    assert got == [{"id": "a"}]
