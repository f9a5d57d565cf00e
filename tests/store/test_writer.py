"""Store writers on a real mosquitto: a shared subscription, a PUBACK only once a batch is durable, and
nothing acknowledged lost when a writer dies before acknowledging (its restarted self gets it again)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bus.mqtt import AckInbox, MqttAddress, MqttLink
from models import wire
from models.clock import SystemClock
from models.events import Event
from models.readings import ReadingBatch, SeriesRegistry
from store.embedded import DB_NAME, EmbeddedStore
from store.writer import ReadingsWriter, shared_readings_topic
from testbed.realservers import Mosquitto

pytestmark = [pytest.mark.servers, pytest.mark.timeout(120)]
SITE = "demo-hall"
TOPIC = shared_readings_topic("powerplane-store", "powerplane", SITE)


def batch_msg(k: int, src: str = "collect-0", n: int = 20) -> tuple[bytes, dict[tuple[str, int], float]]:
    """Batch ``k`` of ``src`` on the wire, and what it carries: (rack, ts_ns) -> W."""
    reg = SeriesRegistry()
    t0 = time.time_ns() - 60 * 10**9 + k * 10**6
    sids = [reg.id("power.power_w", 600e3, site=SITE, level="rack", id=f"{src}-r{i:02d}") for i in range(n)]
    vals = 1000.0 * k + np.arange(n) + 0.25
    b = ReadingBatch.of(t0, sids, vals, 0, reg)
    ev = [Event(t0, "device_up", "info", f"collector/{src}", f"batch {k}", f"dev-{k}")] if k % 10 == 0 else []
    return (wire.encode(b, site=SITE, src=src, seq=k, events=ev),
            {(f"{src}-r{i:02d}", t0): float(vals[i]) for i in range(n)})


def publish_all(port: int, msgs: list[bytes], src: str = "collect-0") -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{src}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        for m in msgs:
            c.publish(f"powerplane/{SITE}/readings/{src}", m, qos=1).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def stored(data_dir: Path) -> dict[tuple[str, int], float]:
    con = sqlite3.connect(f"file:{data_dir / DB_NAME}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT s.tags, r.ts_ns, r.value FROM readings r JOIN series s ON r.series = s.id "
                           "WHERE s.metric = 'power.power_w'").fetchall()
    finally:
        con.close()
    return {(json.loads(t)["id"], int(ts)): float(v) for t, ts, v in rows}


def link_for(mosquitto: Mosquitto, ident: str, in_flight: int = 50) -> tuple[MqttLink, AckInbox]:
    link = MqttLink(MqttAddress("127.0.0.1", mosquitto.port), f"writer-{ident}", clean_session=False,
                    receive_maximum=in_flight)
    inbox = link.subscribe_acked(TOPIC, AckInbox(max_bytes=wire.MAX_BATCH_BYTES))
    return link, inbox


async def drain(writer: ReadingsWriter, until: int, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while writer.stats.acked < until:
        assert time.monotonic() < end, writer.summary()
        await writer.inbox.wait(0.2)
        await writer.step()


def test_two_writers_share_the_stream_and_store_every_reading(mosquitto: Mosquitto, tmp_path: Path) -> None:
    async def go() -> None:
        stores = [EmbeddedStore(tmp_path / f"w{i}") for i in range(2)]
        links = [link_for(mosquitto, f"w{i}") for i in range(2)]
        writers = [ReadingsWriter(s, lk, box, site=SITE, clock=SystemClock()) for s, (lk, box) in zip(stores, links,
                                                                                                      strict=True)]
        for lk, _ in links:
            lk.start()
            assert await lk.wait_connected(10)
        await asyncio.sleep(0.5)  # SUBACKs
        msgs, want = [], {}
        for k in range(1, 201):
            m, w = batch_msg(k)
            msgs.append(m)
            want |= w
        await asyncio.to_thread(publish_all, mosquitto.port, msgs)
        end = time.monotonic() + 30
        while sum(w.stats.acked for w in writers) < 200:
            assert time.monotonic() < end, [w.summary() for w in writers]
            for w in writers:
                await w.step()
            await asyncio.sleep(0.02)
        for w in writers:
            assert w.stats.acked > 0  # both took a share
        for lk, _ in links:
            lk.stop()
        for s in stores:
            s.close()
        got: dict[tuple[str, int], float] = {}
        for i in range(2):
            part = stored(tmp_path / f"w{i}")
            assert not set(part) & set(got)  # each batch to one writer
            got |= part
        assert got == want
        assert sum(w.stats.events for w in writers) == 20

    asyncio.run(go())


def test_a_writer_that_dies_before_acknowledging_gets_its_batches_again(mosquitto: Mosquitto,
                                                                        tmp_path: Path) -> None:
    async def go() -> None:
        link, inbox = link_for(mosquitto, "solo", in_flight=20)
        link.start()
        assert await link.wait_connected(10)
        await asyncio.sleep(0.5)
        msgs, want = [], {}
        for k in range(1, 61):
            m, w = batch_msg(k)
            msgs.append(m)
            want |= w
        await asyncio.to_thread(publish_all, mosquitto.port, msgs)
        end = time.monotonic() + 10
        while len(inbox) < 20 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        assert len(inbox) == 20  # the receive maximum: the broker holds back the rest
        link.stop(clean=False)  # killed: taken, never written, never acknowledged
        # The same identity again (its supervisor restarted it): everything arrives, nothing is lost.
        store = EmbeddedStore(tmp_path / "solo")
        link2, inbox2 = link_for(mosquitto, "solo", in_flight=20)
        writer = ReadingsWriter(store, link2, inbox2, site=SITE, clock=SystemClock())
        link2.start()
        await drain(writer, 60)
        link2.stop()
        store.close()
        assert stored(tmp_path / "solo") == want

    asyncio.run(go())


def test_a_message_that_can_never_be_stored_is_acknowledged_and_counted(mosquitto: Mosquitto,
                                                                         tmp_path: Path) -> None:
    async def go() -> None:
        store = EmbeddedStore(tmp_path / "w")
        link, inbox = link_for(mosquitto, "junk")
        writer = ReadingsWriter(store, link, inbox, site=SITE, clock=SystemClock())
        link.start()
        assert await link.wait_connected(10)
        await asyncio.sleep(0.5)
        good, want = batch_msg(1)
        other = batch_msg(2)[0].replace(SITE.encode(), b"elsewhere", 1)
        await asyncio.to_thread(publish_all, mosquitto.port, [b"not json", other, good])
        await drain(writer, 3)
        link.stop()
        store.close()
        assert stored(tmp_path / "w") == want
        assert writer.stats.refused == {"malformed": 1, "wrong_site": 1}

    asyncio.run(go())
