"""MQTT payload parsing: topic templates -> tags, JSON and line protocol, malformed payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.base import DeviceConfig
from collectors.mqtt.parse import MessageParser, Parsed, parse_line
from collectors.mqtt.profile import MqttProfile, TopicTemplate, parse_mqtt_profile
from collectors.profiles import find_profile
from models.errors import DecodeError, ProfileError
from models.readings import Quality, Reason, SeriesRegistry

DEV = DeviceConfig("bus", "mqtt", "bms-json", "127.0.0.1", 1883, tags=(("site", "s1"),))


def parser(name: str) -> tuple[MessageParser, SeriesRegistry]:
    prof = parse_mqtt_profile(Path("one-key.toml"), ONE_KEY) if name == "one-key" else find_profile(name, "mqtt")
    assert isinstance(prof, MqttProfile)
    reg = SeriesRegistry()
    return MessageParser(prof, DEV, reg), reg


def test_topic_templates() -> None:
    t = TopicTemplate.parse("BMS/v1/PUB/Value/Rack/{point}/{site}/{row}/{rack}")
    assert t.filter == "BMS/v1/PUB/Value/Rack/+/+/+/+"
    assert t.match("BMS/v1/PUB/Value/Rack/LeakDetected/s1/row-a/r01") == {
        "point": "LeakDetected", "site": "s1", "row": "row-a", "rack": "r01"}
    assert t.match("BMS/v1/PUB/Value/Rack/LeakDetected/s1/row-a") is None
    assert t.match("BMS/v1/PUB/Value/CDU/LeakDetected/s1/row-a/r01") is None
    assert TopicTemplate.parse("a/{x}/#").match("a/1/b/c") == {"x": "1"}
    for bad in ("a/x{y}", "a/+/b", "a/#/b"):
        with pytest.raises(ValueError, match="whole level"):
            TopicTemplate.parse(bad)


def test_bms_json_to_entity_tags_and_quality() -> None:
    p, reg = parser("bms-json")
    topic = "BMS/v1/PUB/Value/Rack/LiquidInletTemperature/s1/row-a/r01"
    now = 1_700_000_000_200_000_000  # a message's own timestamp must lie near its arrival
    out = p.parse(topic, json.dumps({"value": 31.5, "timestamp": 1_700_000_000_123, "quality": "Good"}).encode(), now)
    assert out.values == [31.5] and out.ts_ns == [1_700_000_000_123_000_000] and out.quality == [0]
    assert reg.key(out.series[0]) == ("cooling.inlet_c", (("id", "r01"), ("level", "rack"), ("site", "s1")))
    out = p.parse(topic, b'{"value": 31.5, "quality": "Uncertain"}', 9)
    assert out.ts_ns == [9] and out.quality == [Quality.UNCERTAIN]
    out = p.parse(topic, b'{"value": 31.5, "quality": "Bad"}', 9)
    assert not out.values and out.rejected == {Reason.DEVICE_BAD: 1}
    cdu = p.parse("BMS/v1/PUB/Value/CDU/FacilityWaterSupplyTemperature/s1/cdu-1", b'{"value": 26}', 9)
    assert dict(reg.key(cdu.series[0]).tags) == {"site": "s1", "loop": "cdu-1", "side": "facility"}
    unmapped = p.parse("BMS/v1/PUB/Value/Rack/Humidity/s1/row-a/r01", b'{"value": 40}', 9)
    assert unmapped.ignored == 1 and not unmapped.values
    assert p.parse("something/else", b"x", 9).ignored == 1


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'{"value": "hot"}', b'{"value": null}',
                                     b'{"value": 1, "timestamp": "yesterday"}', b"\xff\xfe"])
def test_malformed_json_raises_decode_error(payload: bytes) -> None:
    p, _ = parser("bms-json")
    with pytest.raises(DecodeError, match="BMS/v1/PUB/Value/Rack/LeakDetected/s1/row-a/r01"):
        p.parse("BMS/v1/PUB/Value/Rack/LeakDetected/s1/row-a/r01", payload, 1)


def test_a_float_timestamp_beyond_any_range_is_a_timestamp_rejection() -> None:
    """1.8e302 ms overflowed int() (OverflowError, counted as DECODE); it is a timestamp outside the window."""
    p, _ = parser("bms-json")
    out = p.parse("BMS/v1/PUB/Value/Rack/LeakDetected/s1/row-a/r01", b'{"value": 1, "timestamp": 1.8e302}',
                  1_780_000_000_000_000_000)
    assert not out.values and out.rejected == {Reason.TIMESTAMP: 1} and "s ahead" in out.timestamp_note


def test_grid_signals_and_dr_event() -> None:
    p, reg = parser("grid-json")
    out = p.parse("grid/s1/limit", b'{"ts": 1000, "limit_kw": 12000.5}', 1)
    assert out.values == [12_000_500.0] and reg.key(out.series[0]) == ("grid.limit_w", (("site", "s1"),))
    out = p.parse("grid/s1/dr", json.dumps({"id": "ev1", "start": 2000, "end": 5000, "target_kw": 9000,
                                             "state": "announced"}).encode(), 1)
    assert [(e.id, e.start_ns, e.end_ns, e.target_w) for e in out.dr_events] == [
        ("ev1", 2_000_000_000, 5_000_000_000, 9e6)]
    with pytest.raises(DecodeError, match="demand-response"):
        p.parse("grid/s1/dr", b'{"id": "x", "start": 5, "end": 1, "target_kw": 1}', 1)


def test_line_protocol() -> None:
    assert parse_line('power,level=rack,id=r\\ 1 power_w=4.5e4,label="a b",n=3i 1700') == (
        "power", {"level": "rack", "id": "r 1"}, {"power_w": 45000.0, "label": "a b", "n": 3.0}, 1700)
    for bad in ("power", "power power_w=", "power,level power_w=1", 'power s="x', "power x=1 ts"):
        with pytest.raises(DecodeError):
            parse_line(bad)
    p, reg = parser("influx-lines")
    out = p.parse("telemetry/s1/gw1", b"rack,level=rack,id=r01 power_w=41000 1700000000000000000\n"
                                      b"power,level=row,id=row-a power_w=80000,energy_wh=5e6\n"
                                      b"weather temp_c=12\n", 1700000000000000007)
    got = {(reg.key(s).metric, dict(reg.key(s).tags).get("id")): v for s, v in zip(out.series, out.values, strict=True)}
    assert got == {("power.power_w", "r01"): 41000.0, ("power.power_w", "row-a"): 80000.0,
                   ("power.energy_wh", "row-a"): 5e6}
    assert out.ts_ns == [1700000000000000000, 1700000000000000007, 1700000000000000007] and out.ignored == 1


@pytest.mark.parametrize(("data", "key"), [
    ({"subscriptions": [{"topic": "a/{x", "points": {"p": {"metric": "power.power_w"}}}]}, "subscriptions[0].topic"),
    ({"subscriptions": [{"topic": "a/{point}", "tags": {"id": "{rack}"},
                         "points": {"p": {"metric": "power.power_w"}}}]}, "subscriptions[0].tags.id"),
    ({"subscriptions": [{"topic": "a/{point}", "points": {"p": {"metric": "power.wat"}}}]},
     "subscriptions[0].points.p.metric"),
    ({"subscriptions": [{"topic": "a/{point}", "points": {"p": {}}}]}, "subscriptions[0].points.p.metric"),
    ({"subscriptions": []}, "subscriptions"),
])
def test_bad_mqtt_profile_names_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    with pytest.raises(ProfileError) as ei:
        parse_mqtt_profile(tmp_path / "m.toml", {"protocol": "mqtt", "name": "m", **data})
    assert f"{tmp_path / 'm.toml'}: {key}: " in str(ei.value)


# ---- parse_burst: the fast path must agree with parse_into, message by message -----------------

NOW_NS = 1_780_000_000_000_000_000
NOW_MS = NOW_NS // 1_000_000
BURST_TOPICS = {
    "bms-json": ["BMS/v1/PUB/Value/Rack/LiquidInletTemperature/s1/row-a/r01",
                 "BMS/v1/PUB/Value/Rack/LiquidOutletTemperature/s1/row-a/r02",
                 "BMS/v1/PUB/Value/Rack/Humidity/s1/row-a/r01",  # not mapped
                 "BMS/v1/PUB/Value/CDU/FacilityWaterSupplyTemperature/s1/cdu-1", "elsewhere/x"],
    "grid-json": ["grid/s1/limit", "grid/s1/frequency", "grid/s1/dr", "grid/s1/nothing"],
    "influx-lines": ["telemetry/s1/gw1"],
    "one-key": ["one/s1/a", "one/s1/b"],  # the value, timestamp and quality are one key; scaled, offset
}
# A profile whose keys coincide, so that parse_burst cannot tell the keys it read from the others by counting.
ONE_KEY = {"protocol": "mqtt", "name": "one-key", "subscriptions": [
    {"topic": "one/{site}/{point}", "value": "x", "timestamp": "x", "quality": "quality",
     "points": {"a": {"metric": "cooling.inlet_c", "scale": 0.1, "offset": -3.0},
                "b": {"metric": "power.power_w", "field": "quality"}}}]}
_number = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(-10**6, 10**6),
                    st.integers(-(10**34), 10**34), st.booleans())
_ts = st.one_of(st.integers(NOW_MS - 90_000_000, NOW_MS + 400_000), st.integers(-(10**34), 10**34),
                st.floats(NOW_MS - 90_000_000, NOW_MS + 400_000), st.floats(allow_nan=False), st.text(max_size=3))
_quality = st.one_of(st.sampled_from(["Good", "Bad", "bad", "Uncertain", "", "GOOD"]), st.integers(0, 3),
                     st.booleans())
_extra = st.one_of(st.none(), st.integers(-(10**34), 10**34), st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.just("k"), st.integers(), max_size=1), st.text(max_size=4))
_doc = st.fixed_dictionaries({}, optional={"value": _number, "timestamp": _ts, "quality": _quality, "ts": _ts,
                                           "limit_kw": _number, "hz": _number, "x": st.one_of(_extra, _number, _ts),
                                           "id": st.text(max_size=3), "start": _ts, "end": _ts, "target_kw": _number})


def _mangle(data: bytes, at: int, byte: int) -> bytes:
    if not data:
        return bytes([byte])
    i = at % len(data)
    return data[:i] + bytes([byte]) + data[i + 1:]


_payload = st.one_of(
    _doc.map(lambda d: json.dumps(d).encode()),
    st.tuples(_doc.map(lambda d: json.dumps(d).encode()), st.integers(0, 200), st.integers(0, 255))
    .map(lambda t: _mangle(*t)),  # one byte changed: invalid UTF-8, a broken token, a NaN-like literal
    st.sampled_from([b'{"value": NaN}', b'{"value": 1, "timestamp": Infinity}', b'{"value": 1e400}',
                     b'{"value": 1, "q": "\\ud800"}', b'{"value": ' + b"9" * 40 + b"}", b"[1]", b"null",
                     b'{"value": 2, "timestamp": ' + str(NOW_MS).encode() + b', "quality": "Good"}',
                     b'{"value": 3, "x": ' + b"[" * 100 + b"]" * 100 + b"}", b"\xef\xbb\xbf{}",
                     b"rack,level=rack,id=r01 power_w=4 " + str(NOW_NS).encode()]),
    st.binary(max_size=40),
)


def _outcome(p: MessageParser, reg: SeriesRegistry, out: Parsed, failures: list[str]) -> tuple[object, ...]:
    keys = [reg.key(s) for s in out.series]
    return (keys, [repr(v) for v in out.values], out.ts_ns, out.quality, dict(out.rejected), out.ignored, out.bad_items,
            out.timestamp_note, [(e.id, e.start_ns, e.end_ns, e.target_w) for e in out.dr_events], failures)


def _both(profile_name: str, msgs: list[tuple[str, bytes]]) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """What parse_burst made of ``msgs``, and what parse_into made of them one by one."""
    ref, ref_reg = parser(profile_name)
    ref_out, ref_failed = Parsed(), []
    for topic, payload in msgs:
        n = len(ref_out.series)
        try:
            ref.parse_into(ref_out, topic, payload, NOW_NS)
        except DecodeError as exc:
            del ref_out.series[n:], ref_out.values[n:], ref_out.ts_ns[n:], ref_out.quality[n:]
            ref_failed.append(str(exc))
    fast, fast_reg = parser(profile_name)
    fast_out = Parsed()
    failed = fast.parse_burst(fast_out, msgs, NOW_NS)
    assert all(type(e) is DecodeError for e in failed)  # never a parser bug
    return _outcome(fast, fast_reg, fast_out, [str(e) for e in failed]), _outcome(ref, ref_reg, ref_out, ref_failed)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(BURST_TOPICS)), st.data())
def test_parse_burst_agrees_with_parse_into(profile_name: str, data: st.DataObject) -> None:
    msgs = data.draw(st.lists(st.tuples(st.sampled_from(BURST_TOPICS[profile_name]), _payload), max_size=12))
    fast, ref = _both(profile_name, msgs)
    assert fast == ref


@pytest.mark.parametrize(("profile_name", "doc"), [
    ("one-key", {"x": NOW_MS, "y": 10**40}),  # two keys, as many as it reads (x twice): y must still be bounded
    ("one-key", {"x": NOW_MS, "y": [1]}),
    ("one-key", {"x": NOW_MS, "quality": "Good", "y": 10**32}),
    ("bms-json", {"value": 1, "timestamp": NOW_MS, "quality": "Good", "y": {"a": 1}}),
    ("bms-json", {"value": 10**32, "timestamp": NOW_MS}),
    ("bms-json", {"value": 10**32 - 1, "timestamp": NOW_MS}),
    ("bms-json", {"value": 1, "timestamp": 10**32}),
    ("bms-json", {"value": 1, "timestamp": None, "quality": None, "y": 10**33}),
])
def test_parse_burst_keeps_the_integer_and_nesting_bounds(profile_name: str, doc: dict[str, Any]) -> None:
    topic = BURST_TOPICS[profile_name][0]
    warm = (topic, json.dumps({"value": 1, "x": NOW_MS}).encode())  # resolves the route: the next takes the fast way
    fast, ref = _both(profile_name, [warm, (topic, json.dumps(doc).encode())])
    assert fast == ref


def test_parse_burst_reads_the_common_case_itself() -> None:
    """Repeated well-formed messages do not go through parse_into (the point of parse_burst)."""
    p, reg = parser("bms-json")
    topic = BURST_TOPICS["bms-json"][0]
    msgs = [(topic, json.dumps({"value": 20 + i, "timestamp": NOW_MS - i, "quality": q}).encode())
            for i, q in enumerate(["Good", "Good", "Uncertain", "Good"])]
    calls = []
    slow = p.parse_into

    def counting(*args: Any) -> None:
        calls.append(args[1])
        slow(*args)

    p.parse_into = counting  # type: ignore[method-assign]
    out = Parsed()
    assert p.parse_burst(out, msgs, NOW_NS) == []
    assert len(calls) == 1  # the first message of a topic resolves its route
    assert out.values == [20.0, 21.0, 22.0, 23.0] and out.quality == [0, 0, Quality.UNCERTAIN, 0]
    assert out.ts_ns == [(NOW_MS - i) * 1_000_000 for i in range(4)]
    assert {reg.key(s).metric for s in out.series} == {"cooling.inlet_c"}



def test_parse_burst_falls_back_to_parse_into_when_its_fast_way_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in the fast way (a msgspec bug, a surprise) costs speed, never a reading."""
    import collectors.mqtt.parse as parse_mod

    def broken(payload: bytes) -> object:
        raise SystemError("msgspec bug")

    topic = BURST_TOPICS["bms-json"][0]
    msgs = [(topic, json.dumps({"value": 20 + i, "timestamp": NOW_MS - i}).encode()) for i in range(3)]
    fast, ref = _both("bms-json", msgs)
    monkeypatch.setattr(parse_mod, "_decode_fast", broken)
    assert _both("bms-json", msgs) == (fast, ref) and len(fast[1]) == 3  # type: ignore[arg-type]
