"""Findings 8 and 13: webhook replays, request bounds, secrets in URLs, file modes. Real sender, real receiver.

8.  The receiver deduped by the unsigned ``X-Powerplane-Delivery`` header, so a captured
    request replayed with a new header counted as a new event.
13. ``Content-Length: -1`` read a body past the 1 MiB limit and ``abc`` gave a traceback;
    webhook URLs with credentials were logged and dead-lettered in full; files were 0644.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.hooks.payloads import H_DELIVERY, build_payload
from controllers.hooks.receiver import MAX_BODY_BYTES, WebhookReceiver, body_length
from controllers.hooks.webhook import (
    DeadLetter,
    WebhookSender,
    deliver,
    read_dead_letter,
    redact_url,
)
from models.events import EV_MOVE
from models.retry import Backoff
from powerplane.commands.hooks import sample_event
from store.embedded import DB_NAME, EmbeddedStore
from store.spool import Spool
from testbed.realservers import free_port
from tests.conftest import DEMO_SITE
from tests.controllers.hooks.conftest import SECRET, SigServer
from tests.security.conftest import CliResult, no_traceback

pytestmark = pytest.mark.timeout(120)

Cli = Callable[[Sequence[str]], CliResult]
FAST = Backoff(base_s=0.01, max_s=0.02)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    rx = WebhookReceiver(SECRET).start()
    yield rx
    rx.stop()


def resend(rx: WebhookReceiver, body: bytes, headers: dict[str, str]) -> int:
    """Send a captured request again, as an attacker on the path would."""
    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=30)
    try:
        keep = {k: v for k, v in headers.items() if k.lower().startswith("x-powerplane-") or k == "Content-Type"}
        conn.request("POST", "/hooks", body=body, headers=keep)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# ---- finding 8: replays ---------------------------------------------------------------------------

def test_a_captured_request_replayed_with_a_new_delivery_header_is_refused_and_counted(
        receiver: WebhookReceiver) -> None:
    # Capture what the real sender puts on the wire (the capturing endpoint answers 500).
    cap = SigServer(statuses=[500])
    try:
        payload = build_payload("demo", sample_event(EV_MOVE, time.time_ns()))
        assert not deliver(cap.url, SECRET, payload, max_tries=1, timeout_s=5, backoff=FAST).ok
        (req,) = cap.requests
    finally:
        cap.stop()
    assert req.headers[H_DELIVERY] == payload["id"]

    assert resend(receiver, req.body, req.headers) == 200  # the original, delivered late
    for forged in ("f" * 32, "", " " + payload["id"] + "x"):
        assert resend(receiver, req.body, {**req.headers, H_DELIVERY: forged}) == 401
    assert resend(receiver, req.body, req.headers) == 200  # the same request again: a duplicate
    headerless = {k: v for k, v in req.headers.items() if k != H_DELIVERY}
    assert resend(receiver, req.body, headerless) == 200  # the id is in the signed body: still a duplicate

    assert receiver.received == [payload]
    assert receiver.rejected == {"replay": 3}
    assert receiver.duplicates == 2


def test_a_dead_letter_replayed_is_accepted_once_then_a_duplicate(cli: Cli, receiver: WebhookReceiver,
                                                                   tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET.decode())
    dead_url = f"http://127.0.0.1:{free_port()}/hooks"
    dl = DeadLetter(tmp_path / "dl.jsonl")
    s = WebhookSender(dead_url, SECRET, dl, max_tries=1, timeout_s=2, backoff=FAST)
    s.start()
    payload = build_payload("demo", sample_event(EV_MOVE, time.time_ns()))
    s.put(payload)
    s.close(5)
    assert [r["payload"] for r in read_dead_letter(dl.path)] == [payload]

    argv = ["hooks", "replay", "--dead-letter", str(dl.path), "--url", receiver.url, "--secret-file", str(secret),
            "--any-url", "--tries", "1"]
    for _ in range(2):
        code, out, err = cli(argv)
        assert code == 0 and "1 delivered, 0 failed" in out, out + err
    # Never received before: accepted. Sent again (same signed id, fresh timestamp): a duplicate.
    assert receiver.received == [payload] and receiver.duplicates == 1 and not receiver.rejected


# ---- finding 13: reception bounds -----------------------------------------------------------------

def raw_request(rx: WebhookReceiver, content_length: list[str] | None, body: bytes = b"") -> tuple[int, bytes]:
    """Send headers (and ``body``), read the whole answer: ``(status, raw answer)``; the server must close."""
    head = b"POST /hooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for v in content_length or []:
        head += f"Content-Length: {v}\r\n".encode()
    with socket.create_connection(("127.0.0.1", rx.port), timeout=30) as s:
        s.sendall(head + b"\r\n" + body)
        answer = b""
        while chunk := s.recv(65536):  # until the server closes: it must not wait for a body
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.parametrize(("lengths", "status", "reason"), [
    (["-1"], 400, "bad_length"),
    (["abc"], 400, "bad_length"),
    (["+5"], 400, "bad_length"),
    (["1e3"], 400, "bad_length"),
    (["0x10"], 400, "bad_length"),
    (["１２"], 400, "bad_length"),  # full-width digits: int() would take them
    (["5", "6"], 400, "bad_length"),
    (None, 400, "bad_length"),
    ([str(5 << 20)], 413, "too_large"),
    ([str(MAX_BODY_BYTES + 1)], 413, "too_large"),
    (["9" * 5000], 400, "bad_length"),
])
def test_a_bad_content_length_is_refused_without_reading_the_body(
        receiver: WebhookReceiver, capfd: pytest.CaptureFixture[str], lengths: list[str] | None, status: int,
        reason: str) -> None:
    got, answer = raw_request(receiver, lengths)
    assert got == status and b"Connection: close" in answer and reason.encode() in answer
    assert receiver.rejected == {reason: 1}
    assert receiver.requests == 0  # no body was read
    assert no_traceback(capfd.readouterr().err)


def test_minus_one_with_a_5_mib_body_reads_none_of_it(receiver: WebhookReceiver) -> None:
    head = b"POST /hooks HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as s:
        s.sendall(head)
        answer = s.recv(65536)  # the answer comes before a byte of the body is sent
        assert answer.startswith(b"HTTP/1.1 400")
        sent = 0
        with pytest.raises(OSError):  # the server closed: the 5 MiB cannot all go in
            for _ in range(80):
                s.sendall(b"x" * 65536)
                sent += 65536
        assert sent < 5 << 20
    assert receiver.rejected == {"bad_length": 1} and receiver.requests == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=3))
def test_body_length_is_a_number_in_range_or_a_reason(values: list[str]) -> None:
    got = body_length(values)
    assert got in ("bad_length", "too_large") or (type(got) is int and 0 <= got <= MAX_BODY_BYTES)


# ---- finding 13: secrets in URLs, file modes ------------------------------------------------------

USER, PASSWORD, TOKEN = "hookuser", "hunter2-password", "tok-5ecr3t-0123456789"


def test_credentials_never_reach_logs_or_the_dead_letter_and_replay_still_works(
        cli: Cli, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/hooks?token={TOKEN}&tenant=a"
    secret = tmp_path / "secret"
    secret.write_text(SECRET.decode())
    dl_path = tmp_path / "new" / "state" / "dead-letter.jsonl"
    caplog.set_level(logging.DEBUG)
    dl = DeadLetter(dl_path)
    dl.start()
    s = WebhookSender(url, SECRET, dl, max_tries=2, timeout_s=2, backoff=FAST)
    s.start()
    payload = build_payload("demo", sample_event(EV_MOVE, time.time_ns()))
    s.put(payload)
    s.close(5)
    dl.close()

    text = dl_path.read_text()
    logs = "\n".join([caplog.text, s.stats().last_error, s.name])
    for secret_text in (PASSWORD, TOKEN, USER):
        assert secret_text not in text and secret_text not in logs
    (rec,) = read_dead_letter(dl_path)
    assert rec["url"] == f"http://***@127.0.0.1:{port}/hooks?token=***&tenant=***" == redact_url(url)
    assert rec["payload"] == payload
    assert mode(dl_path) == 0o600
    assert mode(dl_path.parent) == 0o700 and mode(dl_path.parent.parent) == 0o700

    # Replay without a secret on the command line: the site's [[hooks.webhooks]] holds the real URL.
    site = tmp_path / "site.toml"
    site.write_text(DEMO_SITE.read_text() + f'\n[hooks]\ndead_letter = "{dl_path}"\n[[hooks.webhooks]]\n'
                                            f'url = "{url}"\nsecret_file = "{secret}"\n')
    with WebhookReceiver(SECRET, port=port) as rx:
        code, out, err = cli(["hooks", "replay", "--dead-letter", str(dl_path), "--site", str(site), "--tries", "1"])
        assert code == 0 and "1 delivered, 0 failed, 0 for other URLs skipped" in out, out + err
        assert rx.received == [payload]
    for secret_text in (PASSWORD, TOKEN):
        assert secret_text not in out + err


def test_hooks_test_prints_a_redacted_url(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET.decode())
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/h?token={TOKEN}"
    code, out, err = cli(["hooks", "test", "--url", url, "--secret-file", str(secret), "--tries", "1"])
    assert code == 1 and "not delivered to http://***@127.0.0.1:" in out
    assert PASSWORD not in out + err and TOKEN not in out + err


@pytest.mark.parametrize(("url", "shown"), [
    ("https://u:p@h.example:8443/a/?t=1&x=2#frag", "https://***@h.example:8443/a?t=***&x=***"),
    ("https://TOKEN@h.example/", "https://***@h.example/"),
    ("http://h/x?", "http://h/x"),
    ("http://[::1]:80/x?k", "http://[::1]:80/x?k=***"),
    ("http://h:notaport/x", "***"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(redact_url(url)) == redact_url(url)


def test_store_files_are_private(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"
    store = EmbeddedStore(data)
    store.close()
    assert mode(data) == 0o700 and mode(data.parent) == 0o700
    assert all(mode(p) == 0o600 for p in data.iterdir()), {p.name: oct(mode(p)) for p in data.iterdir()}
    assert (data / DB_NAME).exists()

    spool = Spool(tmp_path / "spool" / "dir")
    assert spool.append(b"m v=1 1\n", 1)
    spool.ack(spool.peek(10)[-1])
    spool.close()
    files = list((tmp_path / "spool" / "dir").iterdir())
    assert {p.name for p in files} >= {"lock", "ack"}
    assert all(mode(p) == 0o600 for p in files) and mode(tmp_path / "spool" / "dir") == 0o700


def test_dead_letter_lines_stay_json(tmp_path: Path) -> None:
    DeadLetter(tmp_path / "d.jsonl").write([{"payload": {"id": "a"}, "url": redact_url("http://u:p@h/")}])
    assert json.loads((tmp_path / "d.jsonl").read_text())["url"] == "http://***@h/"
