"""MQTT payload parsing: topic templates -> tags, JSON and line protocol, malformed payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collectors.base import DeviceConfig
from collectors.mqtt.parse import MessageParser, parse_line
from collectors.mqtt.profile import MqttProfile, TopicTemplate, parse_mqtt_profile
from collectors.profiles import find_profile
from models.errors import DecodeError, ProfileError
from models.readings import Quality, Reason, SeriesRegistry

DEV = DeviceConfig("bus", "mqtt", "bms-json", "127.0.0.1", 1883, tags=(("site", "s1"),))


def parser(name: str) -> tuple[MessageParser, SeriesRegistry]:
    prof = find_profile(name, "mqtt")
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
