"""The wire contract: signed rack commands (every reason an agent refuses one), agent statuses
bound to their topics, and the edge never raising on anything a broker can deliver."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controllers.actuation.layout import Layouts, RackLayout
from controllers.actuation.messages import (
    BOUNDS_TOL_W,
    MAX_COMMAND_BYTES,
    MAX_STATUS_BYTES,
    REJECT_REASONS,
    SKEW_S,
    STATUS_REJECTS,
    AgentStatus,
    CapCommand,
    Rejected,
    SiteKey,
    StatusRejected,
    b64,
    caps_topic,
    open_status,
    order,
    status_topic,
    verify_command,
)
from models.clock import NS_PER_S
from models.errors import ConfigError
from models.topology import Topology

KEY = SiteKey(bytes(range(32)))
OTHER = SiteKey(b"another site key, 32 bytes long!")
SITE = "demo-hall"
NOW = 1_780_000_000 * NS_PER_S
LEASE_S = 15.0
HYPO = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def layouts(demo_topo: Topology) -> Layouts:
    """The demo hall's rack layouts (144 nodes of 4 GPUs per rack)."""
    return Layouts(demo_topo)


@pytest.fixture(scope="module")
def r01(layouts: Layouts) -> RackLayout:
    """Rack r01's layout."""
    return layouts["r01"]


def command(lay: RackLayout, *, epoch: int = 3, seq: int = 10, caps_w: np.ndarray | None = None,
            issued_ns: int = NOW, lease_s: float = LEASE_S, **kw: Any) -> CapCommand:
    """A valid command for ``lay`` (every GPU at 700 W unless ``caps_w``)."""
    caps = np.full(lay.n_gpus, 700.0) if caps_w is None else np.asarray(caps_w, np.float64)
    fields: dict[str, Any] = {"site": SITE, "rack": lay.rack, "layout": lay.digest, "epoch": epoch, "seq": seq,
                              "plan_id": 42, "issued_ns": issued_ns,
                              "expires_ns": issued_ns + int(lease_s * NS_PER_S), "caps_w": caps} | kw
    return CapCommand(**fields)


def check(payload: bytes, lay: RackLayout, *, key: SiteKey = KEY, now_ns: int = NOW, last_order: int = 0,
          site: str = SITE) -> CapCommand | Rejected:
    return verify_command(payload, key, site=site, layout=lay, now_ns=now_ns, last_order=last_order, lease_s=LEASE_S)


def reason(res: CapCommand | Rejected) -> str:
    assert isinstance(res, Rejected), f"accepted: {res}"
    return res.reason


def body_of(cmd: CapCommand) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(cmd.body())
    return d


def signed(body: dict[str, Any] | str | bytes, key: SiteKey = KEY, **env: Any) -> bytes:
    """An envelope around ``body`` (a dict is serialised; text is signed as is), signed unless ``env`` overrides."""
    raw = json.dumps(body) if isinstance(body, dict) else body.decode() if isinstance(body, bytes) else body
    d = {"alg": "HMAC-SHA256", "kid": key.kid, "body": raw, "sig": key.sign(raw.encode())} | env
    return json.dumps(d).encode()


# ---- commands: the round trip ---------------------------------------------------------------
def test_sign_and_verify_round_trip(r01: RackLayout) -> None:
    caps = np.linspace(300.0, 880.0, r01.n_gpus)
    bind = np.full(r01.n_nodes, -1, np.int16)
    bind[:3] = [0, 1, 0]
    cmd = command(r01, caps_w=caps, bind=bind, why=("row-a1", "ups-a"))
    payload = cmd.envelope(KEY)
    env = json.loads(payload)
    assert env["alg"] == "HMAC-SHA256" and env["kid"] == KEY.kid and env["body"] == cmd.body().decode()
    assert KEY.verify(cmd.body(), env["sig"]) and not OTHER.verify(cmd.body(), env["sig"])
    res = check(payload, r01)
    assert isinstance(res, CapCommand)
    assert (res.site, res.rack, res.layout, res.epoch, res.seq, res.plan_id, res.issued_ns, res.expires_ns) == \
        (SITE, "r01", r01.digest, 3, 10, 42, NOW, NOW + int(LEASE_S * NS_PER_S))
    # Caps travel as whole milliwatts, rounded down (never above the cap but for float noise).
    assert (res.caps_w <= caps + 1e-9).all() and (caps - res.caps_w < 1e-3).all()
    assert res.bind is not None and res.bind.tolist() == bind.tolist() and res.why == ("row-a1", "ups-a")
    assert res.node_reason(1) == "ups-a binding" and res.node_reason(5) == "no limit binding"
    assert res.order == order(3, 10)


def test_every_cap_in_the_boards_range_and_rounding_tolerance_is_accepted(r01: RackLayout) -> None:
    caps = np.full(r01.n_gpus, 700.0)
    caps[:4] = [300.0, 880.0, 880.0 + BOUNDS_TOL_W * 0.8, 300.0 - BOUNDS_TOL_W * 0.8]
    assert isinstance(check(command(r01, caps_w=caps).envelope(KEY), r01), CapCommand)


def test_order_is_epoch_first_then_seq() -> None:
    assert order(2, 1) > order(1, 2**40 - 1) > order(1, 5) > order(1, 4) > order(0, 2**40 - 1)


# ---- commands: every reason to refuse one ---------------------------------------------------
def _mutate_body(lay: RackLayout, **edit: Any) -> bytes:
    return signed(body_of(command(lay)) | edit)


def _raw_body(lay: RackLayout, old: str, new: str) -> bytes:
    """A signed body whose JSON text has ``old`` replaced by ``new`` (for numbers json.dumps cannot write)."""
    text = json.dumps(body_of(command(lay)))
    assert old in text
    return signed(text.replace(old, new, 1))


def _sig_as(lay: RackLayout, text: str) -> bytes:
    """An envelope whose ``sig`` is ``text`` written verbatim into the JSON."""
    env = json.loads(command(lay).envelope(KEY))
    env["sig"] = "@SIG@"
    return json.dumps(env).replace('"@SIG@"', text).encode()


def _tampered(lay: RackLayout) -> bytes:
    """The genuine envelope with one GPU's cap raised in the signed text, the signature kept."""
    env = json.loads(command(lay).envelope(KEY))
    body = json.loads(env["body"])
    mw = np.frombuffer(base64.b64decode(body["caps_mw"]), "<u4").copy()
    mw[0] = 880_000
    env["body"] = env["body"].replace(body["caps_mw"], b64(mw))
    return json.dumps(env).encode()


REJECTS: list[tuple[str, str, Any]] = [
    # (id, reason, payload maker (layout -> payload) or (layout -> (payload, check kwargs)))
    ("not-json", "malformed", lambda lay: b"{caps please"),
    ("empty", "malformed", lambda lay: b""),
    ("array", "malformed", lambda lay: b"[1, 2]"),
    ("oversize", "malformed", lambda lay: b" " * (MAX_COMMAND_BYTES + 1)),
    ("deep-nesting", "malformed", lambda lay: b'{"alg": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("deep-nesting-in-body", "malformed",
     lambda lay: signed(json.dumps(body_of(command(lay)))[:-1] + ', "x": ' + "[" * 20_000 + "]" * 20_000 + "}")),
    ("non-ascii-sig", "malformed", lambda lay: _sig_as(lay, json.dumps("é" * 64))),
    ("non-ascii-sig-raw-utf8", "malformed", lambda lay: _sig_as(lay, '"' + "é" * 64 + '"')),
    ("lone-surrogate-sig", "malformed", lambda lay: _sig_as(lay, '"\\ud800' + "a" * 63 + '"')),
    ("lone-surrogate-body", "malformed",
     lambda lay: json.dumps({"alg": "HMAC-SHA256", "kid": KEY.kid, "body": "\ud800", "sig": "a" * 64}).encode()),
    ("upper-case-sig", "malformed",
     lambda lay: signed(command(lay).body(), sig=KEY.sign(command(lay).body()).upper())),
    ("unknown-alg", "malformed", lambda lay: signed(command(lay).body(), alg="none")),
    ("unknown-envelope-field", "malformed", lambda lay: signed(command(lay).body(), extra=1)),
    ("body-not-json", "malformed", lambda lay: signed("caps please")),
    ("body-unknown-field", "malformed", lambda lay: _mutate_body(lay, extra=1)),
    ("body-wrong-version", "malformed", lambda lay: _mutate_body(lay, v=1)),
    ("seq-2^63", "malformed", lambda lay: _mutate_body(lay, seq=2**63)),
    ("issued-2^63", "malformed", lambda lay: _mutate_body(lay, issued_ns=2**63)),
    ("seq-1e300", "malformed", lambda lay: _mutate_body(lay, seq=1e300)),
    ("seq-1e999", "malformed", lambda lay: _raw_body(lay, '"seq": 10', '"seq": 1e999')),
    ("seq-Infinity", "malformed", lambda lay: _raw_body(lay, '"seq": 10', '"seq": Infinity')),
    ("expires-NaN", "malformed",
     lambda lay: _raw_body(lay, f'"expires_ns": {NOW + 15 * NS_PER_S}', '"expires_ns": NaN')),
    ("seq-0", "malformed", lambda lay: _mutate_body(lay, seq=0)),
    ("epoch-negative", "malformed", lambda lay: _mutate_body(lay, epoch=-1)),
    ("epoch-2^22", "malformed", lambda lay: _mutate_body(lay, epoch=2**22)),
    ("seq-string", "malformed", lambda lay: _mutate_body(lay, seq="11")),
    ("caps-list", "malformed", lambda lay: _mutate_body(lay, caps_mw=[700_000] * lay.n_gpus)),
    ("layout-not-hex", "malformed", lambda lay: _mutate_body(lay, layout="zz" * 8)),
    ("why-nested", "malformed", lambda lay: _mutate_body(lay, why=[[["row-a1"]]])),
    ("wrong-key", "bad_signature", lambda lay: command(lay).envelope(OTHER)),
    ("tampered-caps", "bad_signature", _tampered),
    ("forged-sig-our-kid", "bad_signature", lambda lay: signed(command(lay).body(), sig="0" * 64)),
    ("other-site", "wrong_target", lambda lay: command(lay, site="other-site").envelope(KEY)),
    ("other-rack", "wrong_target", lambda lay: command(lay, rack="r02").envelope(KEY)),
    ("wrong-layout-digest", "wrong_target", lambda lay: command(lay, layout="0123456789abcdef").envelope(KEY)),
    ("replay", "stale_seq", lambda lay: (command(lay).envelope(KEY), {"last_order": order(3, 10)})),
    ("older-epoch", "stale_seq", lambda lay: (command(lay, epoch=2, seq=10**9).envelope(KEY),
                                              {"last_order": order(3, 10)})),
    ("same-epoch-lower-seq", "stale_seq", lambda lay: (command(lay, seq=9).envelope(KEY),
                                                       {"last_order": order(3, 10)})),
    ("expired", "expired", lambda lay: (command(lay).envelope(KEY), {"now_ns": NOW + int(LEASE_S * NS_PER_S)})),
    ("issued-in-the-future", "future",
     lambda lay: command(lay, issued_ns=NOW + int((SKEW_S + 1) * NS_PER_S)).envelope(KEY)),
    ("one-year-lease", "lease_too_long", lambda lay: command(lay, lease_s=365 * 86400.0).envelope(KEY)),
    ("cap-above-max", "out_of_bounds",
     lambda lay: command(lay, caps_w=np.r_[np.full(lay.n_gpus - 1, 700.0), 880.0 + BOUNDS_TOL_W + 0.1])
     .envelope(KEY)),
    ("cap-below-min", "out_of_bounds",
     lambda lay: command(lay, caps_w=np.r_[300.0 - BOUNDS_TOL_W - 0.1, np.full(lay.n_gpus - 1, 700.0)])
     .envelope(KEY)),
    ("caps-for-fewer-gpus", "out_of_bounds", lambda lay: command(lay, caps_w=np.full(lay.n_gpus - 1, 700.0))
     .envelope(KEY)),
    ("caps-not-base64", "out_of_bounds", lambda lay: _mutate_body(lay, caps_mw="!!!!")),
]


@pytest.mark.parametrize(("why", "payload"), [(r, p) for _, r, p in REJECTS], ids=[i for i, _, _ in REJECTS])
def test_every_bad_command_is_refused_with_its_reason(r01: RackLayout, why: str, payload: Any) -> None:
    made = payload(r01)
    data, kw = made if isinstance(made, tuple) else (made, {})
    res = check(data, r01, **kw)
    assert isinstance(res, Rejected) and res.reason == why, res
    assert len(res.detail) <= 210 and res.detail.isascii()


def test_the_crafted_payloads_cover_every_reason() -> None:
    assert {r for _, r, _ in REJECTS} == set(REJECT_REASONS)


def test_a_tampered_body_fails_the_signature_before_anything_in_it_is_believed(r01: RackLayout) -> None:
    env = json.loads(command(r01).envelope(KEY))
    # A stale seq, another rack and a cap out of range, all under the original signature.
    env["body"] = env["body"].replace('"seq":10', '"seq":1').replace('"rack":"r01"', '"rack":"r02"')
    res = check(json.dumps(env).encode(), r01, last_order=order(3, 10))
    assert isinstance(res, Rejected) and res.reason == "bad_signature" and res.seq is None and res.epoch is None


def test_wrong_key_names_both_key_ids(r01: RackLayout) -> None:
    res = check(command(r01).envelope(OTHER), r01)
    assert isinstance(res, Rejected) and res.reason == "bad_signature"
    assert OTHER.kid in res.detail and KEY.kid in res.detail


def test_stale_names_both_orders_and_the_lease_edges_are_exact(r01: RackLayout) -> None:
    res = check(command(r01, epoch=2, seq=99).envelope(KEY), r01, last_order=order(3, 10))
    assert isinstance(res, Rejected) and "(2, 99)" in res.detail and "(3, 10)" in res.detail
    assert (res.epoch, res.seq) == (2, 99)
    # A newer epoch wins whatever its seq; the lease end is exclusive; the skew is tolerated.
    assert isinstance(check(command(r01, epoch=4, seq=1).envelope(KEY), r01, last_order=order(3, 10**6)), CapCommand)
    end = NOW + int(LEASE_S * NS_PER_S)
    assert isinstance(check(command(r01).envelope(KEY), r01, now_ns=end - 1), CapCommand)
    assert isinstance(check(command(r01, issued_ns=NOW + int(SKEW_S * NS_PER_S)).envelope(KEY), r01), CapCommand)
    assert isinstance(check(command(r01, lease_s=LEASE_S + SKEW_S).envelope(KEY), r01), CapCommand)


# ---- statuses bound to their topics ----------------------------------------------------------
def status(lay: RackLayout, nodes: list[int], **kw: Any) -> AgentStatus:
    n = int(lay.node_gpus[nodes].sum())
    fields: dict[str, Any] = {
        "site": SITE, "rack": lay.rack, "nodes": nodes, "ts_ns": NOW, "mode": "controlled", "since_ns": NOW - 7,
        "epoch": 3, "seq": 10, "plan_id": 42, "lease_expires_ns": NOW + 15 * NS_PER_S,
        "enforced_w": np.full(n, 700.0), "power_w": np.full(n, 612.5), "apply_ms": 1.25, "safe_cap_w": 300.0,
        "backend": "sim", "rejected": {"bad_signature": 2}, "last_reject": "bad_signature: nope",
        "stale_streak": 1, "power_ts_ns": NOW - 3} | kw
    return AgentStatus(**fields)


def rack_topic(rack: str) -> str:
    return status_topic("powerplane", SITE, rack)


def node_topic(node: str) -> str:
    return status_topic("powerplane", SITE, node)


def test_status_round_trip(layouts: Layouts, r01: RackLayout) -> None:
    power = np.full(8, 612.5)
    power[1] = np.nan  # a GPU the board did not report
    st = status(r01, [0, 5], power_w=power)
    res = open_status(rack_topic("r01"), st.to_json(), layouts, site=SITE)
    assert isinstance(res, AgentStatus)
    assert (res.site, res.rack, list(res.nodes), res.mode, res.since_ns, res.order, res.plan_id) == \
        (SITE, "r01", [0, 5], "controlled", NOW - 7, order(3, 10), 42)
    assert res.enforced_w.tolist() == [700.0] * 8
    assert np.isnan(res.power_w[1]) and np.delete(res.power_w, 1).tolist() == [612.5] * 7
    assert (res.rejected, res.last_reject, res.stale_streak, res.power_ts_ns, res.backend) == \
        ({"bad_signature": 2}, "bad_signature: nope", 1, NOW - 3, "sim")


def test_status_power_stamp_never_after_the_status(layouts: Layouts, r01: RackLayout) -> None:
    for stamp, want in ((0, NOW), (NOW + 1, NOW), (NOW - 5, NOW - 5)):
        res = open_status(rack_topic("r01"), status(r01, [0], power_ts_ns=stamp).to_json(), layouts, site=SITE)
        assert isinstance(res, AgentStatus) and res.power_ts_ns == want


def test_a_node_topic_speaks_for_its_own_node(layouts: Layouts, r01: RackLayout) -> None:
    res = open_status(node_topic(r01.nodes[7]), status(r01, [7]).to_json(), layouts, site=SITE)
    assert isinstance(res, AgentStatus) and list(res.nodes) == [7]
    assert node_topic(r01.nodes[7]) == "powerplane/demo-hall/status/r01@node-007"


def _edited(lay: RackLayout, old: bytes, new: bytes) -> tuple[str, bytes]:
    """Rack r01's topic and a one-node status whose JSON text has ``old`` replaced by ``new``."""
    text = status(lay, [0]).to_json()
    assert old in text
    return rack_topic(lay.rack), text.replace(old, new, 1)


def _wrong_gpu_count(lay: RackLayout) -> bytes:
    d = json.loads(status(lay, [0]).to_json())
    d["power_mw"] = b64(np.full(5, 1000, "<u4"))
    return json.dumps(d).encode()


STATUS_BAD: list[tuple[str, str, Any]] = [
    # (id, reason, (layout -> (topic, payload)))
    ("node-topic-for-another-node", "wrong_topic", lambda lay: (node_topic(lay.nodes[1]), status(lay, [0]).to_json())),
    ("node-topic-for-two-nodes", "wrong_topic", lambda lay: (node_topic(lay.nodes[0]), status(lay, [0, 1]).to_json())),
    ("node-topic-for-an-index-past-the-rack", "wrong_topic",
     lambda lay: (node_topic(lay.nodes[0]), _edited(lay, b'"nodes":[0]', b'"nodes":[144]')[1])),
    ("node-topic-of-another-rack", "wrong_topic",
     lambda lay: (node_topic("r02/node-000"), status(lay, [0]).to_json())),
    ("rack-topic-for-another-rack", "wrong_topic", lambda lay: (rack_topic("r02"), status(lay, [0]).to_json())),
    ("bare-topic", "wrong_topic", lambda lay: ("", status(lay, [0]).to_json())),
    ("unknown-node-index", "unknown_node",
     lambda lay: _edited(lay, b'"nodes":[0]', b'"nodes":[144]')),
    ("repeated-node", "unknown_node",
     lambda lay: (rack_topic("r01"), status(lay, [0, 1]).to_json().replace(b'"nodes":[0,1]', b'"nodes":[0,0]'))),
    ("unknown-rack", "unknown_node",
     lambda lay: (rack_topic("r99"), status(lay, [0], rack="r99").to_json())),
    ("wrong-gpu-count", "malformed", lambda lay: (rack_topic("r01"), _wrong_gpu_count(lay))),
    ("wrong-site", "wrong_site", lambda lay: (rack_topic("r01"), status(lay, [0], site="other-hall").to_json())),
    ("no-nodes", "malformed",
     lambda lay: _edited(lay, b'"nodes":[0]', b'"nodes":[]')),
    ("unknown-mode", "malformed",
     lambda lay: _edited(lay, b'"controlled"', b'"rogue"')),
    ("ts-2^63", "malformed",
     lambda lay: _edited(lay, f'"ts_ns":{NOW}'.encode(), b'"ts_ns":9223372036854775808')),
    ("apply-1e300", "malformed",
     lambda lay: _edited(lay, b'"apply_ms":1.25', b'"apply_ms":1e300')),
    ("apply-Infinity", "malformed",
     lambda lay: _edited(lay, b'"apply_ms":1.25', b'"apply_ms":Infinity')),
    ("oversize", "malformed", lambda lay: (rack_topic("r01"), b" " * (MAX_STATUS_BYTES + 1))),
    ("deep-nesting", "malformed",
     lambda lay: (rack_topic("r01"), b'{"rejected": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")),
    ("lone-surrogate", "malformed",
     lambda lay: _edited(lay, b'"sim"', b'"\\udc80"')),
]


@pytest.mark.parametrize(("why", "make"), [(r, m) for _, r, m in STATUS_BAD], ids=[i for i, _, _ in STATUS_BAD])
def test_a_status_that_may_not_speak_for_its_nodes_is_refused(layouts: Layouts, r01: RackLayout, why: str,
                                                             make: Any) -> None:
    topic, payload = make(r01)
    res = open_status(topic, payload, layouts, site=SITE)
    assert isinstance(res, StatusRejected) and res.reason == why, res
    assert res.reason in STATUS_REJECTS and len(res.detail) <= 300


# ---- nothing raises at the edge ---------------------------------------------------------------
# Text with lone surrogates too (json.dumps writes them as \udXXX escapes, as hostile text does).
TEXT = st.text(max_size=20) | st.text(st.characters(categories=["Cs", "Lo", "Nd", "Po"]), max_size=10)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=25)


def _json_bytes(value: Any) -> bytes:
    # json.dumps writes NaN/Infinity and lone surrogates (as escapes): exactly what hostile text contains.
    return json.dumps(value).encode()


@HYPO
@given(payload=st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(layouts: Layouts, r01: RackLayout, payload: bytes) -> None:
    assert reason(check(payload, r01)) == "malformed"
    assert isinstance(open_status(rack_topic("r01"), payload, layouts, site=SITE), StatusRejected)


@HYPO
@given(value=JSON)
def test_arbitrary_json_never_raises(layouts: Layouts, r01: RackLayout, value: Any) -> None:
    payload = _json_bytes(value)
    assert reason(check(payload, r01)) == "malformed"
    assert isinstance(open_status(rack_topic("r01"), payload, layouts, site=SITE), StatusRejected)
    # The same value as a *signed* body gets past the signature and must still be refused.
    assert reason(check(signed(payload), r01)) in ("malformed", "wrong_target", "out_of_bounds")


COMMAND_FIELDS = ("v", "site", "rack", "layout", "epoch", "seq", "plan_id", "issued_ns", "expires_ns", "caps_mw",
                  "bind", "why")


@HYPO
@given(field=st.sampled_from(COMMAND_FIELDS), value=JSON, drop=st.booleans())
def test_a_signed_body_with_any_field_replaced_never_raises(r01: RackLayout, field: str, value: Any,
                                                            drop: bool) -> None:
    d = body_of(command(r01, bind=np.zeros(r01.n_nodes, np.int16), why=("row-a1",)))
    if drop:
        del d[field]
    else:
        d[field] = value
    res = check(signed(_json_bytes(d)), r01)
    assert isinstance(res, CapCommand | Rejected)
    if isinstance(res, CapCommand):
        assert res.caps_w.shape == (r01.n_gpus,)
        assert ((res.caps_w >= r01.min_w - BOUNDS_TOL_W) & (res.caps_w <= r01.max_w + BOUNDS_TOL_W)).all()


STATUS_FIELDS = ("v", "site", "rack", "nodes", "ts_ns", "mode", "since_ns", "epoch", "seq", "plan_id",
                 "lease_expires_ns", "enforced_mw", "power_mw", "apply_ms", "safe_cap_w", "backend", "rejected",
                 "last_reject", "stale_streak", "power_ts_ns")


@HYPO
@given(field=st.sampled_from(STATUS_FIELDS), value=JSON, drop=st.booleans(),
       topic=st.sampled_from(["r01", "r02", "r01@node-000", "r01@node-001", "r01@", "@", "+", "r01/x"]))
def test_a_status_with_any_field_replaced_never_raises(layouts: Layouts, r01: RackLayout, field: str, value: Any,
                                                       drop: bool, topic: str) -> None:
    d = json.loads(status(r01, [0]).to_json())
    if drop:
        del d[field]
    else:
        d[field] = value
    res = open_status(f"powerplane/{SITE}/status/{topic}", _json_bytes(d), layouts, site=SITE)
    assert isinstance(res, AgentStatus | StatusRejected)
    if isinstance(res, AgentStatus):
        lay = layouts[res.rack]
        n = int(lay.node_gpus[np.asarray(res.nodes)].sum())
        assert res.enforced_w.shape == res.power_w.shape == (n,)
        assert topic == res.rack or (len(res.nodes) == 1 and topic == lay.nodes[res.nodes[0]].replace("/", "@"))


def test_a_caps_array_of_the_right_length_but_hostile_values_is_bounded(r01: RackLayout) -> None:
    mw = np.full(r01.n_gpus, 700_000, "<u4")
    mw[3] = 0xFFFFFFFF
    d = body_of(command(r01)) | {"caps_mw": base64.b64encode(mw.tobytes()).decode()}
    assert reason(check(signed(d), r01)) == "out_of_bounds"


# ---- topics and the key -------------------------------------------------------------------------
def test_topics() -> None:
    assert caps_topic("pp", "demo", "r01") == "pp/demo/caps/r01"
    assert status_topic("pp", "demo", "r01") == "pp/demo/status/r01"
    assert status_topic("pp", "demo", "r01/node-003") == "pp/demo/status/r01@node-003"


def test_site_key_load_refuses_a_file_others_can_read(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    k = SiteKey.generate()
    f = tmp_path / "site.key"
    f.write_text(k.hex() + "\n")
    f.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SiteKey.load(f)
    f.chmod(0o600)
    assert SiteKey.load(f) == k
    monkeypatch.setenv("POWERPLANE_SITE_KEY", "tiny")
    with pytest.raises(ConfigError, match="at least 16"):
        SiteKey.load()
    assert k.hex() not in repr(k) and len(k.kid) == 8 and k.kid not in k.hex()
