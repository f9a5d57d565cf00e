"""Payloads: schema, filtering, stable ids, signing — plain values in, plain values out."""

from __future__ import annotations

import hashlib
import hmac
import json
import math

from controllers.hooks.payloads import (
    HookEvent,
    build_payload,
    encode,
    event_id,
    hook_events,
    is_hook_event,
    move_from_nodes,
    rfc3339,
    sign,
    signed_headers,
)
from models.events import EV_CAP_CHANGED, EV_DR_START, EV_MOVE, EVENT_KINDS, Event

TS = 1_777_636_800_250_000_000


def move(ts_ns: int = TS) -> Event:
    return Event(ts_ns, EV_MOVE, "warning", "controller", "move job-7 from r01 to r03", "job-7",
                 {"value": 12_500.0, "gpus": 16.0})


def test_payload_schema() -> None:
    detail = {"action": "move", "from_racks": ["r01"], "to_racks": ["r03"], "gpus": 16}
    p = build_payload("demo", HookEvent(move(), detail))
    assert list(p) == ["v", "id", "site", "kind", "severity", "ts", "ts_ns", "entity", "value", "message",
                       "fields", "detail"]
    assert p["v"] == 1 and p["site"] == "demo" and p["kind"] == EV_MOVE and p["severity"] == "warning"
    assert p["ts"] == "2026-05-01T12:00:00.250000Z" and p["ts_ns"] == TS
    assert p["entity"] == "job-7" and p["value"] == 12_500.0
    assert p["fields"] == {"gpus": 16.0} and p["detail"] == detail
    assert json.loads(encode(p)) == p


def test_id_is_stable_and_distinguishes_events() -> None:
    assert build_payload("demo", move())["id"] == build_payload("demo", move())["id"] == event_id("demo", move())
    assert event_id("demo", move()) != event_id("demo", move(TS + 1))
    assert event_id("demo", move()) != event_id("other", move())


def test_event_without_value_or_entity_and_non_finite_fields() -> None:
    ev = Event(TS, EV_DR_START, "info", "controller", "dr", None, {"x": math.nan, "y": math.inf})
    p = build_payload("demo", ev)
    assert p["entity"] is None and p["value"] is None and p["fields"] == {"x": None, "y": None}
    assert p["detail"] == {}
    json.loads(encode(p))  # valid JSON: no NaN tokens


def test_only_hook_kinds_pass_and_details_attach_by_identity() -> None:
    other = Event(TS, "device_down", "error", "collector/x", "down", "x")
    m = move()
    cap = Event(TS, EV_CAP_CHANGED, "info", "controller", "cap", "job-1", {"value": 500.0})
    assert not is_hook_event(other) and all(is_hook_event(Event(TS, k, "info", "c", "m")) for k in EVENT_KINDS)
    out = hook_events([other, m, cap, HookEvent(other), (cap, {"x": 1}), (other, None), (cap, None)],
                      details={id(m): {"action": "drain"}})
    assert [h.event for h in out] == [m, cap, cap, cap] and out[2].detail == {"x": 1} and out[3].detail == {}
    assert out[0].detail == {"action": "drain"} and out[1].detail == {}


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    body = encode(build_payload("demo", move()))
    expected = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(b"k" * 16, 1_700_000_000, body) == "sha256=" + expected
    h = signed_headers(b"k" * 16, build_payload("demo", move()), body, 1_700_000_000)
    assert h["X-Powerplane-Timestamp"] == "1700000000" and h["X-Powerplane-Event"] == EV_MOVE
    assert h["X-Powerplane-Delivery"] == event_id("demo", move()) and h["Content-Type"] == "application/json"


def test_rfc3339_epoch() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    assert rfc3339(1_999_999) == "1970-01-01T00:00:00.001999Z"


def test_move_nodes_from_detail_or_racks() -> None:
    assert move_from_nodes(HookEvent(move(), {"from_nodes": ["r01/node-000"]})) == ["r01/node-000"]
    assert move_from_nodes(HookEvent(move(), {"nodes": ["r01/node-001"], "from_racks": ["r01"]})) == ["r01/node-001"]
    racks = {"r01": ["r01/node-000", "r01/node-001"]}
    assert move_from_nodes(HookEvent(move(), {"from_racks": ["r01", "r09"]}), racks) == racks["r01"]
    assert move_from_nodes(HookEvent(move(), {"from_racks": ["r01"]})) == []
