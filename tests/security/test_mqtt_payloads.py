"""Finding 16 (payloads): a hostile MQTT message is rejected on its own, counted, and costs no other reading.

``ts = 1e20``, an epoch in µs, a 5,000-digit integer or deep nesting raised inside the
intake and the whole burst was lost, good readings included, with no counter; an epoch
in seconds was stored as 1970. Drills against a real mosquitto, published by mosquitto_pub.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectors.base import DeviceConfig
from collectors.mqtt.client import MqttIntake
from collectors.mqtt.parse import EDGE_OPTIONS, MessageParser, Parsed
from collectors.mqtt.profile import MqttProfile, parse_mqtt_profile
from collectors.profiles import find_profile
from collectors.runtime import CollectorSet
from models.clock import SystemClock
from models.errors import ConfigError, DecodeError
from models.readings import ReadingBatch, Reason, SeriesRegistry
from testbed.realservers import Mosquitto
from tests.collectors.mqtt.test_intake import publish, until

pytestmark = pytest.mark.timeout(120)

RACK = "BMS/v1/PUB/Value/Rack/LiquidInletTemperature/s1/row-a/r01"
LINES = "telemetry/s1/gw1"
NS = 1_000_000_000


def now_ms() -> int:
    return int(time.time() * 1e3)


def hostile_json(t_ms: int) -> dict[str, tuple[str, Reason]]:
    """Payloads for the ms profile bms-json, and the reason each must be counted under."""
    deep = '{"value": 1, "x": ' + "[" * 5000 + "]" * 5000 + "}"
    return {
        "ts 1e20": (json.dumps({"value": 21.0, "timestamp": 1e20}), Reason.TIMESTAMP),
        "epoch us": (json.dumps({"value": 21.0, "timestamp": t_ms * 1000}), Reason.TIMESTAMP),
        "epoch s (stored as 1970 before)": (json.dumps({"value": 21.0, "timestamp": t_ms // 1000}), Reason.TIMESTAMP),
        "ts an hour ahead": (json.dumps({"value": 21.0, "timestamp": t_ms + 3_600_000}), Reason.TIMESTAMP),
        "5000-digit value": ('{"value": ' + "9" * 5000 + "}", Reason.DECODE),
        "5000-digit ts": ('{"value": 1, "timestamp": ' + "9" * 5000 + "}", Reason.DECODE),
        "400-digit value": ('{"value": ' + "9" * 400 + "}", Reason.DECODE),
        "deep nesting": (deep, Reason.DECODE),
        "huge payload": (json.dumps({"value": 1, "pad": "x" * 100_000}), Reason.DECODE),
        "ts Infinity": ('{"value": 1, "timestamp": Infinity}', Reason.DECODE),
        "ts bool": ('{"value": 1, "timestamp": true}', Reason.DECODE),
        "not json": ("{", Reason.DECODE),
    }


def device(broker: Mosquitto, name: str, profile: str, **options: object) -> DeviceConfig:
    return DeviceConfig(name, "mqtt", profile, "127.0.0.1", broker.port, tags=(("site", "s1"),),
                        options=MappingProxyType({"client_id": f"sec-{name}", **options}))


def test_a_hostile_burst_costs_only_the_hostile_messages(mosquitto: Mosquitto) -> None:
    async def body() -> None:
        reg = SeriesRegistry()
        batches: list[ReadingBatch] = []
        cs = CollectorSet([device(mosquitto, "bms", "bms-json"), device(mosquitto, "lines", "influx-lines")],
                          clock=SystemClock(), registry=reg, on_batch=batches.append)
        await cs.start()
        try:
            intakes = [i for i in cs.intakes.values() if isinstance(i, MqttIntake)]
            await until(lambda: all(i.subscribed for i in intakes), "both intakes subscribed")
            t = now_ms()
            bad = hostile_json(t)
            good = [json.dumps({"value": 20 + i / 10, "timestamp": t - 1000 + i}) for i in range(40)]
            burst: list[str] = []
            for i, g in enumerate(good):  # hostile messages between good ones, in one burst
                burst.append(g)
                if i < len(bad):
                    burst.append(list(bad.values())[i][0])
            await asyncio.to_thread(publish, mosquitto, RACK, burst)
            # line protocol: one message, good and bad lines mixed; mosquitto_pub -l sends a line per
            # message, so the multi-line message goes as a file.
            t_ns = t * 1_000_000
            lines = "\n".join([
                f"rack,level=rack,id=r01 power_w=41000 {t_ns}",
                f"rack,level=rack,id=r02 power_w=42000 {t_ns * 1000}",  # ns read as... 1000x: far future
                "rack,level=rack,id=r03 power_w=" + "9" * 5000 + "i",  # 5,000 digits
                "rack,level=rack,id=r04 power_w=43000 " + "9" * 5000,
                f"rack,level=rack,id=r05 power_w=44000 {t_ns // 1_000_000_000}",  # epoch seconds as ns: 1970
                'rack,level=rack,id=r06 power_w="unterminated',
                f"rack,level=rack,id=r07 power_w=45000 {t_ns}",
            ])
            await asyncio.to_thread(publish_file, mosquitto, LINES, lines)

            def values(metric: str) -> list[float]:
                return [float(v) for b in batches for s, v in zip(b.series, b.value, strict=True)
                        if reg.key(int(s)).metric == metric]

            await until(lambda: len(values("cooling.inlet_c")) == 40 and len(values("power.power_w")) == 2,
                        "every good reading of the burst")
            assert sorted(values("cooling.inlet_c")) == pytest.approx([20 + i / 10 for i in range(40)])
            assert sorted(values("power.power_w")) == [41000.0, 45000.0]
            h = {x.device: x for x in cs.health()}
            expected = {r: sum(1 for _, why in bad.values() if why is r) for r in (Reason.TIMESTAMP, Reason.DECODE)}
            assert h["bms"].rejected[Reason.TIMESTAMP] == expected[Reason.TIMESTAMP] == 4
            assert h["bms"].rejected[Reason.DECODE] == expected[Reason.DECODE] == 8
            assert h["bms"].messages_bad == 8 and h["bms"].up and h["bms"].readings == 40
            assert h["lines"].rejected[Reason.TIMESTAMP] == 2 and h["lines"].rejected[Reason.DECODE] == 3
            assert h["lines"].messages_bad == 0 and h["lines"].readings == 2
            stored = [int(x) for b in batches for x in b.ts_ns]
            assert min(stored) > (t - 86_400_000) * 1_000_000  # nothing of 1970, nothing of the year 55,000
        finally:
            await cs.stop()

    asyncio.run(body())


def publish_file(broker: Mosquitto, topic: str, text: str) -> None:
    """Publish ``text`` as one message (mosquitto_pub -s reads the message from stdin)."""
    import subprocess

    from testbed.realservers import require

    subprocess.run([require("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic,
                    "-s"], input=text, text=True, check=True, timeout=60)


def test_a_profile_declares_its_timestamp_unit(mosquitto: Mosquitto, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bms-seconds.toml").write_text(
        Path(find_profile("bms-json", "mqtt").path).read_text()  # type: ignore[attr-defined]
         .replace('name = "bms-json"', 'name = "bms-seconds"\ntimestamp_unit = "s"')
         .replace('timestamp_unit = "ms"\n', ""))
    monkeypatch.setenv("POWERPLANE_PROFILE_PATH", str(tmp_path))

    async def body() -> None:
        reg = SeriesRegistry()
        got: list[tuple[int, float]] = []

        def on_batch(b: ReadingBatch) -> None:
            got.extend((int(t), float(v)) for t, v in zip(b.ts_ns, b.value, strict=True))

        cs = CollectorSet([device(mosquitto, "secs", "bms-seconds")], clock=SystemClock(), registry=reg,
                          on_batch=on_batch)
        await cs.start()
        try:
            intake = cs.intakes["secs"]
            assert isinstance(intake, MqttIntake)
            await until(lambda: intake.subscribed, "subscribed")
            t_s = int(time.time()) - 5
            await asyncio.to_thread(publish, mosquitto, RACK, [json.dumps({"value": 25.5, "timestamp": t_s}),
                                                                json.dumps({"value": 26.5, "timestamp": t_s * 1000})])
            await until(lambda: len(got) == 1 and cs.health()[0].rejected[Reason.TIMESTAMP] == 1,
                        "the seconds reading stored, the ms one rejected")
            assert got == [(t_s * NS, 25.5)]
        finally:
            await cs.stop()

    asyncio.run(body())


@pytest.mark.parametrize(("key", "bad"), [("timestamp_max_age_s", math.nan), ("timestamp_max_ahead_s", -1),
                                          ("max_payload_bytes", True), ("max_series", "many")])
def test_the_window_options_are_checked(key: str, bad: object) -> None:
    prof = find_profile("bms-json", "mqtt")
    assert isinstance(prof, MqttProfile) and key in EDGE_OPTIONS
    dev = DeviceConfig("d", "mqtt", "bms-json", "h", 1883, options=MappingProxyType({key: bad}))
    with pytest.raises(ConfigError, match=f"options.{key}"):
        MessageParser(prof, dev, SeriesRegistry())


# ---- property: the payload parser rejects per item and raises nothing but DecodeError --------------

NOW_NS = 1_780_000_000 * NS
DEV = DeviceConfig("fuzz", "mqtt", "bms-json", "h", 1883, tags=(("site", "s1"),))
json_leaf = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
                      st.integers(min_value=-(10**40), max_value=10**40), st.text(max_size=10),
                      st.integers(min_value=0, max_value=2**70))
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.sampled_from(["value", "timestamp", "quality", "ts", "limit_kw", "hz", "id", "start", "end", "target_kw",
                     "x"]), kids, max_size=4), max_leaves=10)
docs = st.dictionaries(st.sampled_from(["value", "timestamp", "quality", "ts", "limit_kw", "hz", "id", "start",
                                        "end", "target_kw"]), json_value, max_size=6)
payloads = st.one_of(
    docs.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.lists(st.text(max_size=60), max_size=6).map(lambda ls: "\n".join(ls).encode()),
    st.tuples(st.sampled_from(["rack,id=r1 power_w=", "power power_w=1 ", "rack power_w=3i "]),
              st.text(st.characters(codec="ascii"), max_size=40)).map(lambda t: (t[0] + t[1]).encode()),
)
TOPICS = [RACK, "BMS/v1/PUB/Value/CDU/FacilityWaterSupplyTemperature/s1/cdu-1", "grid/s1/limit", "grid/s1/dr",
          LINES, "other/topic"]
PARSERS: dict[str, MqttProfile] = {}


def profile(name: str) -> MqttProfile:
    if name not in PARSERS:
        p = find_profile(name, "mqtt")
        assert isinstance(p, MqttProfile)
        PARSERS[name] = p
    return PARSERS[name]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TOPICS), payloads), min_size=1, max_size=8))
def test_message_parser_never_raises_anything_but_decode_error(msgs: list[tuple[str, bytes]]) -> None:
    reg = SeriesRegistry()
    out = Parsed()
    parsers = [MessageParser(profile(n), DEV, reg) for n in ("bms-json", "grid-json", "influx-lines")]
    for topic, payload in msgs:
        for p in parsers:
            n = len(out.series)
            try:
                p.parse_into(out, topic, payload, NOW_NS)
            except DecodeError:
                assert len(out.series) == n  # nothing of a refused message was kept
    assert len(out.series) == len(out.values) == len(out.ts_ns) == len(out.quality)
    ts = np.array(out.ts_ns, np.int64)  # raised OverflowError before: a ts of 1e20 ms
    assert ((ts >= NOW_NS - 86_400 * NS) & (ts <= NOW_NS + 300 * NS)).all()
    np.array(out.values, np.float64)
    for ev in out.dr_events:
        assert 0 <= ev.start_ns < ev.end_ns < 2**63


def test_profile_timestamp_unit_defaults() -> None:
    base: dict[str, Any] = {"protocol": "mqtt", "name": "x", "subscriptions": [
        {"topic": "a/{point}", "points": {"p": {"metric": "power.power_w"}}}]}
    assert parse_mqtt_profile(Path("x"), base).subscriptions[0].timestamp_unit == "ms"
    assert parse_mqtt_profile(Path("x"), {**base, "timestamp_unit": "us"}).subscriptions[0].timestamp_unit == "us"
    lines = {"protocol": "mqtt", "name": "y", "format": "influx", "subscriptions": [{"topic": "t/{s}"}]}
    assert parse_mqtt_profile(Path("y"), lines).subscriptions[0].timestamp_unit == "ns"


def test_topics_and_tags_off_the_wire_create_at_most_max_series() -> None:
    dev = DeviceConfig("d", "mqtt", "bms-json", "h", 1883, tags=(("site", "s1"),),
                       options=MappingProxyType({"max_series": 2}))
    reg = SeriesRegistry()
    p = MessageParser(profile("bms-json"), dev, reg)
    refused = 0
    for i in range(5):
        try:
            p.parse(f"BMS/v1/PUB/Value/Rack/LiquidInletTemperature/s1/row-a/r{i}", b'{"value": 20}', NOW_NS)
        except DecodeError as exc:
            refused += 1
            assert "max_series" in str(exc)
    lines = MessageParser(profile("influx-lines"), dev, reg)
    out = lines.parse(LINES, "\n".join(f"rack,id=r{i} power_w=1" for i in range(5)).encode(), NOW_NS)
    assert refused == 3 and len(out.values) == 2 and out.rejected[Reason.DECODE] == 3
