"""Webhook delivery against a real loopback endpoint whose signature check is independent."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from controllers.hooks.payloads import HookEvent, build_payload, encode
from controllers.hooks.webhook import (
    DeadLetter,
    WebhookSender,
    deliver,
    load_secret,
    post,
    read_dead_letter,
    replay,
)
from models.errors import ConfigError
from models.events import EV_MOVE, Event
from models.retry import Backoff, parse_retry_after
from models.site import Webhook
from testbed.realservers import free_port
from tests.controllers.hooks.conftest import SECRET, SigServer

FAST = Backoff(base_s=0.01, max_s=0.05, jitter=0.5, rng=random.Random(1))


def payload(n: int = 0) -> dict[str, Any]:
    ev = Event(1_777_636_800_000_000_000 + n, EV_MOVE, "info", "controller", f"move {n}", f"job-{n}",
               {"value": 1000.0 + n})
    return build_payload("demo", HookEvent(ev, {"action": "move", "from_racks": ["r01"], "to_racks": ["r03"]}))


def test_signed_delivery_verifies_independently(sigserver: SigServer) -> None:
    p = payload()
    res = deliver(sigserver.url, SECRET, p, max_tries=1, timeout_s=5, backoff=FAST)
    assert res.ok and res.tries == 1
    (req,) = sigserver.requests
    assert req.signature_ok and req.fresh and req.payload() == p
    assert req.headers["X-Powerplane-Event"] == EV_MOVE and req.headers["X-Powerplane-Delivery"] == p["id"]
    assert req.headers["Content-Type"] == "application/json"


def test_tampered_body_and_stale_timestamp_fail_the_independent_check(sigserver: SigServer) -> None:
    p = payload()
    body = encode(p)
    from controllers.hooks.payloads import signed_headers

    headers = signed_headers(SECRET, p, body, 1_700_000_000)  # long ago: a captured request replayed
    stale = post(sigserver.url, body, headers, 5)
    import time

    headers = signed_headers(SECRET, p, body, int(time.time()))
    tampered = post(sigserver.url, body.replace(b"move 0", b"move 9"), headers, 5)
    wrong_key = deliver(sigserver.url, b"another-secret-of-16+", p, max_tries=1, timeout_s=5, backoff=FAST)
    assert stale.status == tampered.status == 401 and not wrong_key.ok and wrong_key.reason == "permanent"
    s, t, w = sigserver.requests
    assert s.signature_ok and not s.fresh
    assert not t.signature_ok and t.fresh
    assert not w.signature_ok


def test_retries_500s_then_succeeds_with_fresh_signatures() -> None:
    srv = SigServer(statuses=[500, 503, 502])
    try:
        res = deliver(srv.url, SECRET, payload(), max_tries=6, timeout_s=5, backoff=FAST)
        assert res.ok and res.tries == 4
        assert [r.status for r in srv.requests] == [500, 503, 502, 200]
        assert all(r.signature_ok and r.fresh for r in srv.requests)
        assert len({r.headers["X-Powerplane-Delivery"] for r in srv.requests}) == 1
    finally:
        srv.stop()


def test_4xx_is_permanent_but_408_and_429_retry() -> None:
    srv = SigServer(statuses=[408, 429, 404])
    try:
        res = deliver(srv.url, SECRET, payload(), max_tries=6, timeout_s=5, backoff=FAST)
        assert not res.ok and res.reason == "permanent" and res.tries == 3 and "HTTP 404" in res.error
    finally:
        srv.stop()


def test_retry_after_is_honoured_and_capped() -> None:
    b = Backoff(base_s=1.0, max_s=8.0, jitter=0.5, retry_after_max_s=60.0, rng=random.Random(0))
    assert b.delay_s(1, retry_after_s=7.0) == 7.0 and b.delay_s(1, retry_after_s=3600.0) == 60.0
    assert 0.5 <= b.delay_s(1) <= 1.0 and 2.0 <= b.delay_s(3) <= 4.0 and 4.0 <= b.delay_s(30) <= 8.0
    assert parse_retry_after("12", 0.0) == 12.0 and parse_retry_after("soon", 0.0) is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    srv = SigServer(statuses=[429], retry_after="0")
    try:
        assert deliver(srv.url, SECRET, payload(), max_tries=2, timeout_s=5, backoff=b).ok
    finally:
        srv.stop()


def test_connection_refused_is_retried_then_dead_lettered_intact(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    dl = DeadLetter(tmp_path / "dl.jsonl")
    dl.start()
    s = WebhookSender(url, SECRET, dl, max_tries=3, timeout_s=2, backoff=FAST)
    s.start()
    p = payload()
    s.put(p)
    s.close(timeout_s=30)
    dl.close()
    (rec,) = read_dead_letter(tmp_path / "dl.jsonl")
    assert rec["payload"] == p and rec["url"] == url and rec["reason"] == "max_tries" and rec["tries"] == 3
    assert "Connection" in rec["error"] and rec["time"].endswith("Z")
    st = s.stats()
    assert st.dead_lettered == 1 and st.retried == 2 and st.delivered == 0 and st.queue_depth == 0


def test_dead_letter_after_max_tries_of_500_then_replay_delivers(tmp_path: Path) -> None:
    srv = SigServer(statuses=[500] * 4)
    dl_path = tmp_path / "dl.jsonl"
    try:
        dl = DeadLetter(dl_path)
        dl.start()
        s = WebhookSender(srv.url, SECRET, dl, max_tries=2, timeout_s=5, backoff=FAST)
        s.start()
        first, second = payload(1), payload(2)
        s.put(first)
        s.put(second)
        s.close(timeout_s=30)
        dl.close()
        recs = list(read_dead_letter(dl_path))
        assert [r["payload"] for r in recs] == [first, second]
        assert all(r["reason"] == "max_tries" and r["tries"] == 2 and r["error"].startswith("HTTP 500") for r in recs)
        assert srv.accepted() == []

        res = replay(dl_path, srv.url + "/", SECRET, max_tries=2, backoff=FAST)  # trailing slash: same URL
        assert res.delivered == 2 and res.failed == [] and res.skipped == 0
        assert srv.accepted() == [first, second]
        assert all(r.signature_ok and r.fresh for r in srv.requests)
        assert replay(dl_path, "http://127.0.0.1:1/other", SECRET).skipped == 2
    finally:
        srv.stop()


def test_replay_returns_what_fails_again(tmp_path: Path) -> None:
    dl_path = tmp_path / "dl.jsonl"
    url = f"http://127.0.0.1:{free_port()}/hook"
    DeadLetter(dl_path).write([{"url": url, "tries": 6, "payload": payload()}])
    with dl_path.open("a") as f:
        f.write('{"torn": ')  # a crash mid-line is skipped, not fatal
    res = replay(dl_path, url, SECRET, max_tries=1, backoff=FAST)
    assert res.delivered == 0 and len(res.failed) == 1
    assert res.failed[0]["payload"] == payload() and res.failed[0]["tries"] == 7


def test_queue_full_dead_letters_the_oldest_and_put_never_blocks(tmp_path: Path) -> None:
    srv = SigServer(hold=True)  # the endpoint takes the first request and sits on it
    dl_path = tmp_path / "dl.jsonl"
    try:
        dl = DeadLetter(dl_path)
        dl.start()
        s = WebhookSender(srv.url, SECRET, dl, max_tries=1, timeout_s=30, queue_size=3, backoff=FAST)
        s.start()
        sent = [payload(i) for i in range(8)]
        s.put(sent[0])
        assert srv.wait_arrived(1)  # the worker is now stuck in that request; the queue is empty
        results = [s.put(p) for p in sent[1:]]  # returns while the endpoint still holds the first
        assert not srv.gate.is_set()
        assert results == [True, True, True, False, False, False, False]
        assert s.stats().queue_depth == 4  # 3 queued + 1 in flight
        srv.release()
        s.close(timeout_s=30)
        dl.close()
        recs = list(read_dead_letter(dl_path))
        assert [r["payload"]["id"] for r in recs] == [p["id"] for p in sent[1:5]]
        assert {r["reason"] for r in recs} == {"queue full"}
        assert [p["id"] for p in srv.accepted()] == [sent[0]["id"], *(p["id"] for p in sent[5:])]
        assert s.stats().dead_lettered == 4 and s.stats().delivered == 4
    finally:
        srv.stop()


def test_close_timeout_dead_letters_what_is_left(tmp_path: Path) -> None:
    srv = SigServer(hold=True)
    dl_path = tmp_path / "dl.jsonl"
    try:
        dl = DeadLetter(dl_path)
        dl.start()
        s = WebhookSender(srv.url, SECRET, dl, max_tries=5, timeout_s=0.5, backoff=FAST)
        s.start()
        sent = [payload(i) for i in range(3)]
        for p in sent:
            s.put(p)
        s.close(timeout_s=0.0)
        dl.close()
        srv.release()
        recs = list(read_dead_letter(dl_path))
        assert sorted(r["payload"]["id"] for r in recs) == sorted(p["id"] for p in sent)
        assert {r["reason"] for r in recs} == {"shutdown"}
        assert not s.put(payload(9))  # closed: straight to the dead letter
    finally:
        srv.stop()


def test_order_is_kept_per_endpoint(sigserver: SigServer, tmp_path: Path) -> None:
    dl = DeadLetter(tmp_path / "dl.jsonl")
    dl.start()
    s = WebhookSender(sigserver.url, SECRET, dl, backoff=FAST)
    s.start()
    sent = [payload(i) for i in range(20)]
    for p in sent:
        s.put(p)
    s.close(timeout_s=30)
    dl.close()
    assert sigserver.accepted() == sent and not (tmp_path / "dl.jsonl").exists()


def test_secrets_come_from_file_or_env_and_errors_name_the_key(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "secret"
    f.write_text(SECRET.decode() + "\n")
    assert load_secret(Webhook(url="http://x", secret_file=str(f)), "hooks.webhooks[0]") == SECRET
    monkeypatch.setenv("HOOK_SECRET", SECRET.decode())
    assert load_secret(Webhook(url="http://x", secret_env="HOOK_SECRET"), "hooks.webhooks[0]") == SECRET
    with pytest.raises(ConfigError, match=r"hooks.webhooks\[1\]: webhook has no secret"):
        load_secret(Webhook(url="http://x"), "hooks.webhooks[1]")
    f.write_text("short")
    with pytest.raises(ConfigError, match=r"secret.*hooks.webhooks\[0\].secret_file: webhook secret is 5 bytes"):
        load_secret(Webhook(url="http://x", secret_file=str(f)), "hooks.webhooks[0]")
    with pytest.raises(ConfigError, match="cannot read"):
        load_secret(Webhook(url="http://x", secret_file=str(tmp_path / "none")), "hooks.webhooks[0]")
    monkeypatch.delenv("HOOK_SECRET")
    with pytest.raises(ConfigError, match=r"\$HOOK_SECRET: hooks.webhooks\[0\].secret_env: .*not set"):
        load_secret(Webhook(url="http://x", secret_env="HOOK_SECRET"), "hooks.webhooks[0]")


def test_dead_letter_lines_are_json(tmp_path: Path) -> None:
    dl = DeadLetter(tmp_path / "sub" / "dl.jsonl")
    dl.start()
    dl.add({"payload": {"id": "a"}, "url": "u"})
    dl.close()
    dl.add({"payload": {"id": "b"}, "url": "u"})  # after close: written inline
    lines = (tmp_path / "sub" / "dl.jsonl").read_text().splitlines()
    assert [json.loads(x)["payload"]["id"] for x in lines] == ["a", "b"] and dl.written == 2
