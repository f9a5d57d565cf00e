"""Findings 5, 6, 11 and 12 at the agent, with the real processes: floods, leases, junk commands.

One rig for the module: the shipped mosquitto configuration with the drill site's generated
ACL, the twin (its simulated GPU boards, on the demo-only anonymous listener) and rack agents
(``powerplane agent --backend sim``) for r01, r02 and r03, each logging in as its rack's
account. No controller runs: the test holds the site key and the controller's account, so it
is the worst sender a caps topic can have. What each agent did is read from its statuses (the
operator's subscription) and its log.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from controllers.actuation.messages import ALG, MAX_DETAIL, SiteKey, status_topic
from models.clock import NS_PER_S
from tests.security.wirerig import (
    KEY,
    LEASE_S,
    SITE,
    Rig,
    Statuses,
    Wire,
    caps,
    enforced_w,
    rig_running,
    signed,
    until,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(180)]
UP_S = 90.0
SAFE_W = 300.0  # the drill site's gpu_min_w: the agents' safe cap
SLACK_S = 2.0  # lease fallback: the agent wakes at the lease's end; allowance for a loaded machine
YEAR_S = 365 * 86_400.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig_running(tmp_path_factory.mktemp("agent")) as rig:
        rig.twin()
        for r in ("r01", "r02", "r03"):
            rig.agent(r)
        statuses = rig.statuses()
        try:
            for r in ("r01", "r02", "r03"):
                # Up, and reporting the twin's boards (its heartbeat knows the enforced limits).
                until(lambda r=r: (s := statuses.latest(r)) is not None and None not in enforced_w(s), UP_S,
                      f"agent {r} up and reading the twin's boards", rig.logs)
        finally:
            statuses.close()
        yield rig


@pytest.fixture
def statuses(rig: Rig) -> Iterator[Statuses]:
    s = rig.statuses()
    yield s
    s.close()


@pytest.fixture
def controller(rig: Rig) -> Iterator[Wire]:
    """The controller's account (MQTT 3.1.1, as the controller speaks): it may write every caps topic."""
    w = rig.wire("controller", v5=False)
    yield w
    w.close()


def envelope(**fields: Any) -> bytes:
    doc = {"alg": ALG, "kid": KEY.kid, "body": "{}", "sig": "0" * 64, **fields}
    return json.dumps(doc, separators=(",", ":")).encode()


def signed_body(body: bytes, key: SiteKey = KEY) -> bytes:
    """An envelope around ``body`` as its signer would send it (valid signature, whatever the body)."""
    return envelope(body=body.decode("utf-8", "surrogatepass"), sig=key.sign(body))


def agent_log(rig: Rig, rack: str) -> str:
    return next(p for p in rig.procs if p.name == f"agent-{rack}").log.read_text(errors="replace")


# ---- finding 5: junk floods delayed the fallback ---------------------------------------------------

def test_a_junk_flood_does_not_delay_the_lease_fallback(rig: Rig, statuses: Statuses, controller: Wire) -> None:
    issued = time.time_ns()
    controller.publish(caps("r01"), signed("r01", rig, seq=1, caps_w=600.0, issued_ns=issued))
    expires = issued + int(LEASE_S * NS_PER_S)
    until(lambda: any(s["mode"] == "controlled" and s["seq"] == 1 for s in statuses.history("r01")), 10,
          "r01 applies the command", rig.logs)
    # Junk the agent parses and refuses (200 kB, under its 256 KiB bound), junk its network thread
    # drops unparsed (1 MB), and junk the broker drops (5 MB, over message_size_limit); sent as the
    # controller's account, without pause, from before the lease runs out until the agent falls back.
    kinds = {
        "200k-not-json": b"\x00" * 200_000,
        "200k-bad-signature": envelope(body="x" * 200_000),
        "1m": envelope(body="x" * 1_000_000),
        "5m": b"x" * 5_000_000,
    }
    sent: Counter[str] = Counter()
    stop = threading.Event()
    at_expiry: list[int] = []

    def flood() -> None:  # on the controller account's one connection (a second would replace it)
        rounds = 0
        while not stop.is_set():
            rounds += 1
            for k, payload in kinds.items():
                if k == "5m" and rounds % 10:
                    continue
                info = controller.client.publish(caps("r01"), payload, qos=1)
                sent[k] += 1
                if sum(sent.values()) % 20 == 0:
                    info.wait_for_publish(30)
            if not at_expiry and time.time_ns() >= expires:
                at_expiry.append(sum(sent.values()))

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        until(lambda: any(s["mode"] == "fallback" for s in statuses.history("r01")), LEASE_S + 20,
              "r01 falls back to its safe cap", rig.logs)
    finally:
        stop.set()
        t.join(60)
    fb = next(s for s in statuses.history("r01") if s["mode"] == "fallback")
    late_s = (fb["since_ns"] - expires) / NS_PER_S
    print(f"flood {dict(sent)}; {at_expiry} messages before the lease ran out; fallback {late_s:+.2f} s after it")
    assert at_expiry and at_expiry[0] > 0, "the flood did not overlap the lease's end"
    assert 0 <= late_s <= SLACK_S, f"fell back {late_s:.2f} s after the lease ran out"
    assert all(v is not None and v <= SAFE_W for v in enforced_w(fb))  # min(cap, safe cap), never a raise
    last = statuses.latest("r01")
    assert last is not None and last["rejected"].get("malformed", 0) + last["rejected"].get("bad_signature", 0) > 0
    assert len(last["last_reject"]) <= MAX_DETAIL + 64


# ---- finding 6: the lease was not bounded -----------------------------------------------------------

def test_a_lease_longer_than_the_sites_or_issued_in_the_future_is_refused(
        rig: Rig, statuses: Statuses, controller: Wire) -> None:
    now = time.time_ns()
    bad = {  # every one a raise to the board's maximum, correctly signed
        "a year's lease": signed("r02", rig, seq=1, caps_w=880.0, lease_s=YEAR_S),
        "ten leases": signed("r02", rig, seq=2, caps_w=880.0, lease_s=10 * LEASE_S),
        "issued in an hour": signed("r02", rig, seq=3, caps_w=880.0, issued_ns=now + 3600 * NS_PER_S),
        "issued in 30 s": signed("r02", rig, seq=4, caps_w=880.0, issued_ns=now + 30 * NS_PER_S),
        "expired": signed("r02", rig, seq=5, caps_w=880.0, issued_ns=now - 10 * NS_PER_S),
    }
    for payload in bad.values():
        controller.publish(caps("r02"), payload)
    want = {"lease_too_long": 2, "future": 2, "expired": 1}
    until(lambda: (s := statuses.latest("r02")) is not None and s["rejected"] == want, 15,
          "every one refused and counted", lambda: f"{statuses.latest('r02')}\n{rig.logs()}")
    assert all(s["mode"] == "starting" and max(v or 0 for v in enforced_w(s)) <= SAFE_W
               for s in statuses.history("r02")), "a refused command changed a cap"
    # The agent is listening: a command within the site's lease is applied, and a long lease still
    # cannot raise it afterwards.
    controller.publish(caps("r02"), signed("r02", rig, seq=6, caps_w=600.0))
    until(lambda: (s := statuses.latest("r02")) is not None and s["mode"] == "controlled" and s["seq"] == 6, 10,
          "a good command is applied", rig.logs)
    controller.publish(caps("r02"), signed("r02", rig, seq=7, caps_w=880.0, lease_s=YEAR_S))
    until(lambda: (s := statuses.latest("r02")) is not None and s["rejected"].get("lease_too_long") == 3, 10,
          "the long raise refused", rig.logs)
    for s in statuses.history("r02"):
        assert max(v or 0 for v in enforced_w(s)) <= 600.0, s
    assert "lease of 31536000.0 s exceeds the site's 3 s" in agent_log(rig, "r02")


# ---- findings 11 and 12: junk commands escaped the checks; a reject copied the whole message ----------

def junk_commands() -> dict[str, tuple[bytes, str]]:
    """Commands for r03 and the reason each must be counted under."""
    deep = b"[" * 100_000 + b"]" * 100_000
    return {
        "non-ASCII sig": (envelope(sig="é" * 64), "malformed"),
        "non-hex sig": (envelope(sig="z" * 64), "malformed"),
        "lone surrogate in the body": (envelope(body="\ud800"), "malformed"),
        "lone surrogate, signed": (b'{"alg":"HMAC-SHA256","kid":"x","body":"\\udc00","sig":"'
                                   + KEY.sign(b"\xed\xb0\x80").encode() + b'"}', "malformed"),
        "deep nesting": (b'{"alg":' + deep + b"}", "malformed"),
        "deep nesting, signed": (signed_body(deep), "malformed"),
        "Infinity seq, signed": (signed_body(b'{"v":2,"site":"drill","rack":"r03","seq":Infinity}'), "malformed"),
        "seq 2^63, signed": (signed_body(json.dumps({
            "v": 2, "site": "drill", "rack": "r03", "layout": "0" * 16, "epoch": 1, "seq": 2**63, "plan_id": 1,
            "issued_ns": 1, "expires_ns": 2, "caps_mw": ""}).encode()), "malformed"),
        "not UTF-8": (b"\x80\x81\xfe", "malformed"),
        "200 kB field name": (b'{"' + b"X" * 200_000 + b'":1}', "malformed"),
        "200 kB alg": (envelope(alg="A" * 200_000), "malformed"),
        "200 kB body, wrong key": (envelope(body="B" * 200_000), "bad_signature"),
        "1 MB field name": (b'{"' + b"Y" * 1_000_000 + b'":1}', "never parsed"),
    }


def test_junk_commands_are_counted_as_rejections_with_a_bounded_detail(
        rig: Rig, statuses: Statuses, controller: Wire) -> None:
    cases = junk_commands()
    for payload, _ in cases.values():
        controller.publish(caps("r03"), payload)
    want = Counter(reason for _, reason in cases.values() if reason != "never parsed")
    until(lambda: (s := statuses.latest("r03")) is not None and Counter(s["rejected"]) == want, 15,
          "every junk command counted by reason", lambda: f"{statuses.latest('r03')}\n{rig.logs()}")
    history = statuses.history("r03")
    for s in history:
        assert s["mode"] == "starting" and max(v or 0 for v in enforced_w(s)) <= SAFE_W  # nothing applied
        assert len(s["last_reject"]) <= MAX_DETAIL + 64, s["last_reject"][:300]
    raw = statuses.received(status_topic("powerplane", SITE, "r03"))
    assert max(len(p) for p in raw) < 4096  # no status carries a hostile field
    log = agent_log(rig, "r03")
    assert max(len(ln) for ln in log.splitlines()) < 1000
    for filler in (b"X", b"Y", b"A", b"B"):
        assert filler.decode() * 300 not in log
    assert "rejected command: malformed" in log and "Traceback" not in log
