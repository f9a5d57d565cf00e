"""MQTT intake against a real mosquitto, with mosquitto_pub as the independent publisher."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from types import MappingProxyType

import pytest

from collectors.base import DeviceConfig
from collectors.mqtt.client import MqttIntake
from collectors.runtime import CollectorSet
from models.clock import SystemClock
from models.grid import DemandResponseEvent
from models.readings import ReadingBatch, SeriesRegistry
from testbed.realservers import Mosquitto, require

# real servers: a hang fails fast, with pytest-timeout's stack dump, instead of after 300 s
pytestmark = pytest.mark.timeout(120)

RACK_TOPIC = "BMS/v1/PUB/Value/Rack/LiquidInletTemperature/s1/row-a/r01"
# Payload timestamps must lie near their arrival (collectors/mqtt/parse.py): epoch ms of a minute ago.
T0_MS = int(time.time() * 1e3) - 60_000


def publish(broker: Mosquitto, topic: str, payloads: list[str]) -> None:
    """Publish with mosquitto_pub (QoS 1), one message per line; returns once the broker has them."""
    exe = require("mosquitto_pub")
    subprocess.run([exe, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-l"],
                   input="\n".join(payloads) + "\n", text=True, check=True, timeout=60)


async def until(cond: Callable[[], bool], what: str, wall_s: float = 30.0) -> None:
    """Wait (wall clock) until ``cond`` holds; fail naming ``what`` otherwise."""
    loop = asyncio.get_running_loop()
    end = loop.time() + wall_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.02)


def device(broker: Mosquitto, name: str, profile: str, **options: object) -> DeviceConfig:
    return DeviceConfig(name, "mqtt", profile, "127.0.0.1", broker.port, tags=(("site", "s1"),),
                        options=MappingProxyType({"client_id": f"test-{name}", **options}))


def test_bms_and_grid_with_malformed_payloads(mosquitto: Mosquitto) -> None:
    async def body() -> None:
        reg = SeriesRegistry()
        batches: list[ReadingBatch] = []
        dr: list[DemandResponseEvent] = []
        cs = CollectorSet([device(mosquitto, "bms", "bms-json"), device(mosquitto, "grid", "grid-json")],
                          clock=SystemClock(), registry=reg, on_batch=batches.append, on_dr_event=dr.append)
        await cs.start()
        try:
            intakes = [i for i in cs.intakes.values() if isinstance(i, MqttIntake)]
            await until(lambda: all(i.subscribed for i in intakes), "both intakes subscribed")
            good = [json.dumps({"value": 20 + i / 10, "timestamp": T0_MS + i, "quality": "Good"})
                    for i in range(50)]
            bad = ["{not json", '{"value": "warm"}', "[]", '{"value": 1, "timestamp": "noon"}']
            await asyncio.to_thread(publish, mosquitto, RACK_TOPIC, good[:25] + bad + good[25:])
            await asyncio.to_thread(publish, mosquitto, "grid/s1/limit", [json.dumps({"ts": T0_MS, "limit_kw": 9500})])
            await asyncio.to_thread(publish, mosquitto, "grid/s1/dr", [json.dumps(
                {"id": "dr-7", "start": T0_MS + 100_000, "end": T0_MS + 200_000, "target_kw": 8000})])

            def values(metric: str) -> list[float]:
                return [float(v) for b in batches for s, v in zip(b.series, b.value, strict=True)
                        if reg.key(int(s)).metric == metric]

            await until(lambda: len(values("cooling.inlet_c")) == 50 and values("grid.limit_w") == [9.5e6]
                        and len(dr) == 1, "50 rack readings, the limit and the DR event")
            assert sorted(values("cooling.inlet_c")) == pytest.approx([20 + i / 10 for i in range(50)])
            assert dr[0].id == "dr-7" and dr[0].target_w == 8e6
            h = {x.device: x for x in cs.health()}
            assert h["bms"].messages_bad == 4 and h["bms"].up and h["bms"].readings == 50
            assert h["grid"].messages_bad == 0
        finally:
            await cs.stop()

    asyncio.run(body())


def test_broker_restart_mid_stream_loses_nothing(mosquitto: Mosquitto) -> None:
    async def body() -> None:
        reg = SeriesRegistry()
        got: list[float] = []

        def on_batch(b: ReadingBatch) -> None:
            got.extend(float(v) for v in b.value)

        cs = CollectorSet([device(mosquitto, "bms", "bms-json")], clock=SystemClock(), registry=reg,
                          on_batch=on_batch)
        await cs.start()
        try:
            intake = cs.intakes["bms"]
            assert isinstance(intake, MqttIntake)
            await until(lambda: intake.subscribed, "subscribed")

            def msgs(lo: int, hi: int) -> list[str]:
                return [json.dumps({"value": i / 100, "timestamp": T0_MS + i}) for i in range(lo, hi)]

            await asyncio.to_thread(publish, mosquitto, RACK_TOPIC, msgs(0, 1000))
            await asyncio.to_thread(mosquitto.restart)  # persistence keeps our session and queue
            # published while our client is still away: the broker must queue them for our session
            await asyncio.to_thread(publish, mosquitto, RACK_TOPIC, msgs(1000, 2000))
            await until(lambda: len(set(got)) == 2000, "all 2000 messages", wall_s=60)
            assert sorted(set(got)) == pytest.approx([i / 100 for i in range(2000)])
            assert intake.connects >= 2
            # intake is not stalled after the reconnect
            await asyncio.to_thread(publish, mosquitto, RACK_TOPIC, msgs(2000, 2010))
            await until(lambda: len(set(got)) == 2010, "10 more after the reconnect")
        finally:
            await cs.stop()

    asyncio.run(body())
