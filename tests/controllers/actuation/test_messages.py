"""The wire contract: signed cap commands, every reason an agent refuses one, agent statuses, topics."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.actuation.messages import (
    BOUNDS_TOL_W,
    REJECT_REASONS,
    AgentStatus,
    CapCommand,
    Rejected,
    SiteKey,
    caps_topic,
    node_of_topic,
    status_topic,
    topic_node,
    verify_command,
)
from models.errors import ConfigError

KEY = SiteKey(bytes(range(32)))
OTHER = SiteKey(b"another site key, 32 bytes long!")
NOW = 1_780_000_000_000_000_000
S = 1_000_000_000
MIN_W, MAX_W = (300.0,) * 4, (880.0,) * 4
CMD = CapCommand("demo-hall", "r01/node-000", NOW, 7, NOW, NOW + 15 * S, (700.0, 650.0, 300.0, 880.0), "row binding")


def check(payload: bytes, *, key: SiteKey = KEY, node: str = "r01/node-000", now_ns: int = NOW,
          last_seq: int = 0) -> CapCommand | Rejected:
    return verify_command(payload, key, site="demo-hall", node=node, now_ns=now_ns, last_seq=last_seq,
                          min_w=MIN_W, max_w=MAX_W)


def reason(res: CapCommand | Rejected) -> str:
    assert isinstance(res, Rejected), f"accepted: {res}"
    return res.reason


def envelope_with(body: dict[str, Any] | bytes, key: SiteKey = KEY, **env: Any) -> bytes:
    """An envelope around ``body`` (a dict is serialised), properly signed unless ``env`` overrides."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    d = {"alg": "HMAC-SHA256", "kid": key.kid, "body": raw.decode(), "sig": key.sign(raw)} | env
    return json.dumps(d).encode()


def body_dict(cmd: CapCommand = CMD) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(cmd.body())
    return d


# ---- commands -------------------------------------------------------------------------------
def test_sign_and_verify_round_trip() -> None:
    res = check(CMD.envelope(KEY))
    assert res == CMD
    env = json.loads(CMD.envelope(KEY))
    assert env["alg"] == "HMAC-SHA256" and env["kid"] == KEY.kid and env["body"] == CMD.body().decode()
    assert KEY.verify(CMD.body(), env["sig"]) and not OTHER.verify(CMD.body(), env["sig"])


def test_every_reject_reason_is_reachable() -> None:
    seen = {
        reason(check(b"not json")),
        reason(check(replace(CMD, seq=NOW).envelope(OTHER))),
        reason(check(CMD.envelope(KEY), node="r01/node-001")),
        reason(check(CMD.envelope(KEY), last_seq=CMD.seq)),
        reason(check(CMD.envelope(KEY), now_ns=CMD.expires_ns)),
        reason(check(replace(CMD, caps_w=(700.0, 700.0, 700.0, 900.0)).envelope(KEY))),
    }
    assert seen == set(REJECT_REASONS)


def test_tampered_body_fails_the_signature_before_anything_else_is_believed() -> None:
    env = json.loads(CMD.envelope(KEY))
    # Raise a cap in the signed text, keep the signature: as an attacker on the broker would.
    env["body"] = env["body"].replace("300.0", "880.0")
    assert env["body"] != CMD.body().decode()
    res = check(json.dumps(env).encode())
    assert isinstance(res, Rejected) and res.reason == "bad_signature" and res.seq is None
    # Even a tampered seq far in the past (which would otherwise be stale) is a signature failure.
    env = json.loads(CMD.envelope(KEY))
    env["body"] = env["body"].replace(str(CMD.seq), "1", 1)
    assert reason(check(json.dumps(env).encode(), last_seq=CMD.seq)) == "bad_signature"


def test_wrong_key_names_both_key_ids() -> None:
    res = check(CMD.envelope(OTHER))
    assert isinstance(res, Rejected) and res.reason == "bad_signature"
    assert OTHER.kid in res.detail and KEY.kid in res.detail and OTHER.kid != KEY.kid


def test_forged_signature_with_our_kid_is_refused() -> None:
    sig = json.loads(CMD.envelope(KEY))["sig"]
    forged = envelope_with(CMD.body(), sig=sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    res = check(forged)
    assert isinstance(res, Rejected) and res.reason == "bad_signature"
    assert KEY.kid not in res.detail  # same kid: no "signed with key" hint
    if sig != sig.upper():
        assert reason(check(envelope_with(CMD.body(), sig=sig.upper()))) == "bad_signature"


def test_replay_of_an_applied_command_is_stale() -> None:
    payload = CMD.envelope(KEY)
    res = check(payload)
    assert isinstance(res, CapCommand)
    again = check(payload, last_seq=res.seq)
    assert isinstance(again, Rejected) and again.reason == "stale_seq" and again.seq == CMD.seq
    older = replace(CMD, seq=CMD.seq - 1).envelope(KEY)
    assert reason(check(older, last_seq=res.seq)) == "stale_seq"
    assert isinstance(check(replace(CMD, seq=CMD.seq + 1).envelope(KEY), last_seq=res.seq), CapCommand)


def test_expired_lease_is_refused() -> None:
    res = check(CMD.envelope(KEY), now_ns=CMD.expires_ns + 3 * S)
    assert isinstance(res, Rejected) and res.reason == "expired" and "3.0 s ago" in res.detail
    assert reason(check(CMD.envelope(KEY), now_ns=CMD.expires_ns)) == "expired"  # the lease end is exclusive
    assert isinstance(check(CMD.envelope(KEY), now_ns=CMD.expires_ns - 1), CapCommand)


@pytest.mark.parametrize("caps", [(700.0, 700.0, 700.0, 880.0 + BOUNDS_TOL_W + 0.1),
                                  (300.0 - BOUNDS_TOL_W - 0.1, 700.0, 700.0, 700.0),
                                  (700.0, math.nan, 700.0, 700.0), (700.0, 700.0, math.inf, 700.0),
                                  (700.0, 700.0, 700.0), (700.0,) * 5, ()])
def test_out_of_bounds_and_wrong_gpu_count(caps: tuple[float, ...]) -> None:
    res = check(replace(CMD, caps_w=caps).envelope(KEY))
    assert isinstance(res, Rejected) and res.reason == "out_of_bounds", res
    assert res.seq == CMD.seq


def test_rounding_just_outside_the_range_is_not_a_bad_command() -> None:
    caps = (880.0 + BOUNDS_TOL_W * 0.8, 300.0 - BOUNDS_TOL_W * 0.8, 300.0, 880.0)
    assert isinstance(check(replace(CMD, caps_w=caps).envelope(KEY)), CapCommand)


def test_wrong_site_or_node_is_wrong_target() -> None:
    res = check(replace(CMD, site="other-site").envelope(KEY))
    assert isinstance(res, Rejected) and res.reason == "wrong_target" and "other-site/r01/node-000" in res.detail
    assert reason(check(CMD.envelope(KEY), node="r01/node-0")) == "wrong_target"


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe garbage", b"[1, 2]", b'"a string"', b'{"body": "x"}', b'{"sig": "00"}',
    b'{"body": 1, "sig": "00"}', b'{"body": "x", "sig": 5}',
])
def test_malformed_envelopes(payload: bytes) -> None:
    assert reason(check(payload)) == "malformed"


def test_unsupported_alg_is_malformed() -> None:
    res = check(envelope_with(CMD.body(), alg="none"))
    assert isinstance(res, Rejected) and res.reason == "malformed" and "'none'" in res.detail


@pytest.mark.parametrize("edit", [
    {"v": 2}, {"v": None}, {"caps_w": 700}, {"caps_w": None}, {"caps_w": [700, "x", 700, 700]},
    {"seq": "soon"}, {"seq": None},
])
def test_signed_but_malformed_bodies(edit: dict[str, Any]) -> None:
    assert reason(check(envelope_with(body_dict() | edit))) == "malformed"


@pytest.mark.parametrize("missing", ["site", "node", "seq", "plan_id", "issued_ns", "expires_ns", "caps_w", "v"])
def test_signed_body_missing_a_field_is_malformed(missing: str) -> None:
    d = body_dict()
    del d[missing]
    assert reason(check(envelope_with(d))) == "malformed"


def test_signed_body_that_is_not_json_is_malformed() -> None:
    assert reason(check(envelope_with(b"caps please"))) == "malformed"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_of_the_body_is_rejected(data: st.DataObject) -> None:
    payload = CMD.envelope(KEY)
    start = payload.index(b'"body":"') + len(b'"body":"')
    end = payload.index(b'","sig"')
    i = data.draw(st.integers(start, end - 1), label="position")
    b = data.draw(st.integers(0, 255).filter(lambda x: x != payload[i]), label="byte")
    changed = payload[:i] + bytes([b]) + payload[i + 1:]
    res = check(changed)
    assert isinstance(res, Rejected) and res.reason in ("malformed", "bad_signature"), res


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_of_the_signature_is_rejected(data: st.DataObject) -> None:
    payload = CMD.envelope(KEY)
    start = payload.index(b'"sig":"') + len(b'"sig":"')
    i = data.draw(st.integers(start, len(payload) - 3), label="position")
    b = data.draw(st.integers(0, 255).filter(lambda x: x != payload[i]), label="byte")
    res = check(payload[:i] + bytes([b]) + payload[i + 1:])
    assert isinstance(res, Rejected) and res.reason in ("malformed", "bad_signature"), res


# ---- topics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("node", ["r01/node-000", "hall-a/r01/node-7", "node-1", "a/b/c/d"])
def test_topic_mapping_round_trips(node: str) -> None:
    level = topic_node(node)
    assert "/" not in level and node_of_topic(level) == node
    assert caps_topic("pp", "demo", node) == f"pp/demo/caps/{level}"
    assert status_topic("pp", "demo", node) == f"pp/demo/status/{level}"
    assert caps_topic("pp", "demo", node).rsplit("/", 1)[-1] == level


@given(st.text(alphabet=st.characters(exclude_characters="@+#\x00", exclude_categories=["Cs"]), min_size=1))
def test_topic_mapping_round_trips_for_any_id_without_at(node: str) -> None:
    assert node_of_topic(topic_node(node)) == node and "/" not in topic_node(node)


# ---- agent status ---------------------------------------------------------------------------
STATUS = AgentStatus(site="demo-hall", node="r01/node-000", ts_ns=NOW, mode="controlled", seq=NOW - 5, plan_id=3,
                     requested_w=[700.0, 650.0], enforced_w=[700.0, None], power_w=[612.5, None], apply_ms=1.25,
                     applied_ns=NOW - 7, lease_expires_ns=NOW + 15 * S, safe_cap_w=300.0, backend="sim",
                     rejected={"bad_signature": 2}, last_reject="bad_signature: nope", mode_since_ns=NOW - 9)


def test_status_json_round_trip() -> None:
    raw = STATUS.to_json()
    assert json.loads(raw)["v"] == 1
    assert AgentStatus.from_json(raw) == STATUS


def test_status_refuses_nan() -> None:
    with pytest.raises(ValueError):
        replace(STATUS, power_w=[math.nan]).to_json()


def _status(**edit: Any) -> bytes:
    d = json.loads(STATUS.to_json()) | edit
    return json.dumps(d).encode()


def _status_without(field: str) -> bytes:
    d = json.loads(STATUS.to_json())
    del d[field]
    return json.dumps(d).encode()


@pytest.mark.parametrize("payload", [
    b"", b"nope", b"[]", b"null", _status(v=2), _status_without("v"), _status(mode="rogue"), _status(extra=1),
    _status_without("seq"), _status_without("enforced_w"),
], ids=["empty", "not-json", "list", "null", "v2", "no-v", "bad-mode", "unknown-field", "no-seq", "no-enforced"])
def test_malformed_status_is_a_value_error(payload: bytes) -> None:
    with pytest.raises(ValueError):
        AgentStatus.from_json(payload)


@pytest.mark.parametrize("edit", [{"seq": "x"}, {"ts_ns": None}, {"enforced_w": "700"}, {"enforced_w": 700},
                                  {"rejected": [1]}, {"safe_cap_w": "low"}],
                         ids=["seq-str", "ts-null", "enforced-str", "enforced-num", "rejected-list", "safe-str"])
def test_status_with_wrong_field_types_is_a_value_error(edit: dict[str, Any]) -> None:
    # from_json promises ValueError "on anything malformed"; the controller (Actuator.statuses)
    # catches only that, so a wrongly typed field that gets through crashes Verifier.status.
    with pytest.raises(ValueError):
        AgentStatus.from_json(_status(**edit))


# ---- the site key ---------------------------------------------------------------------------
def test_site_key_parse_hex_and_raw() -> None:
    hexkey = bytes(range(32)).hex()
    assert SiteKey.parse(hexkey, "x").secret == bytes(range(32))
    assert SiteKey.parse(f"  {hexkey}\n", "x").secret == bytes(range(32))  # a key file's newline
    assert SiteKey.parse(hexkey.upper(), "x").secret == bytes(range(32))
    raw = "correct horse battery staple!!"
    assert SiteKey.parse(raw, "x").secret == raw.encode()
    not_hex = "z" * 64
    assert SiteKey.parse(not_hex, "x").secret == not_hex.encode()
    assert SiteKey.parse("ab" * 16, "x").secret == bytes([0xAB]) * 16  # 16 bytes as hex is enough
    assert "secret" not in repr(SiteKey.parse(hexkey, "x")) and hexkey not in repr(SiteKey.parse(hexkey, "x"))


@pytest.mark.parametrize("text", ["", "short", " " * 40, "0123456789abcde", "ab" * 7])
def test_site_key_too_short_names_the_source(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        SiteKey.parse(text, "/etc/powerplane/site.key")
    assert err.value.path == "/etc/powerplane/site.key" and "at least 16" in str(err.value)


def test_site_key_load_from_env_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    k = SiteKey.generate()
    assert len(k.secret) == 32 and SiteKey.generate() != k
    monkeypatch.setenv("POWERPLANE_SITE_KEY", k.hex())
    assert SiteKey.load() == k
    monkeypatch.setenv("POWERPLANE_SITE_KEY", "tiny")
    with pytest.raises(ConfigError, match=r"\$POWERPLANE_SITE_KEY"):
        SiteKey.load()
    monkeypatch.delenv("POWERPLANE_SITE_KEY")
    with pytest.raises(ConfigError, match="no site key"):
        SiteKey.load()
    f = tmp_path / "site.key"
    f.write_text(k.hex() + "\n")
    assert SiteKey.load(f) == k
    with pytest.raises(ConfigError, match="cannot read the site key") as err:
        SiteKey.load(tmp_path / "missing.key")
    assert err.value.path.endswith("missing.key")


def test_kid_names_the_key_without_revealing_it() -> None:
    assert len(KEY.kid) == 8 and KEY.kid != OTHER.kid and KEY.kid not in KEY.hex()
