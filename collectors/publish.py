"""A collector process that publishes what it collects: ``powerplane collect --publish mqtt://...``.

The controller's process then only takes reading batches in (``models.wire``), so one box
uses all its cores and collection can be spread over hosts. Batches collected within
``flush_s`` (wall time) are sent as one message, QoS 1, on
``<prefix>/<site>/readings/<source>``; device events (down, up) travel in the same message,
and the collectors' own health (``collector.*``) every ``health_s`` of site time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from bus.mqtt import MqttAddress, MqttLink
from collectors.base import DeviceConfig
from collectors.runtime import CollectorSet
from models import wire
from models.clock import NS_PER_S, Clock
from models.events import Event
from models.readings import REGISTRY, ReadingBatch

log = logging.getLogger("powerplane.collectors.publish")


def readings_topic(prefix: str, site: str, src: str) -> str:
    """Where collector ``src`` publishes its reading batches."""
    return f"{prefix}/{site}/readings/{src}"


class BatchPublisher:
    """Collects ``devices`` and publishes every batch and event to MQTT."""

    def __init__(self, devices: Sequence[DeviceConfig], *, site: str, src: str, addr: MqttAddress, clock: Clock,
                 prefix: str = "powerplane", flush_s: float = 0.05, health_s: float = 10.0,
                 stuck_polls: dict[str, int] | None = None) -> None:
        self.site, self.src, self.clock = site, src, clock
        self.topic = readings_topic(prefix, site, src)
        self.flush_s = flush_s
        self.health_s = health_s
        self.link = MqttLink(addr, f"powerplane-collect-{src}", clean_session=True)
        self.collectors = CollectorSet(devices, clock=clock, registry=REGISTRY, on_batch=self._batch,
                                       on_event=self._event, stuck_polls=stuck_polls)
        self._batches: list[ReadingBatch] = []
        self._events: list[Event] = []
        self.seq = 0
        self.published_readings = 0
        self.published_messages = 0
        self.last_flush_wall = 0.0  # time.monotonic() of the last flush round (liveness)
        # What the broker acknowledged (PUBACK): only these are the broker's to deliver.
        self.acked_messages = 0
        self.acked_readings = 0
        self._unacked: dict[int, int] = {}
        self._early: set[int] = set()
        self._ack_lock = threading.Lock()
        self.link.ack_listeners.append(self._acked)
        self._task: asyncio.Task[None] | None = None
        self._next_health_ns = 0

    def _acked(self, mid: int) -> None:
        # paho's network thread; a PUBACK can come before publish() returned its mid.
        with self._ack_lock:
            n = self._unacked.pop(mid, None)
            if n is None:
                self._early.add(mid)
                return
            self.acked_messages += 1
            self.acked_readings += n

    def _batch(self, b: ReadingBatch) -> None:
        self._batches.append(b)

    def _event(self, ev: Event) -> None:
        self._events.append(ev)

    async def start(self) -> None:
        """Connect and start collecting."""
        self.link.start()
        await self.collectors.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="collect-publish")

    async def stop(self) -> None:
        """Stop collecting; send what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.collectors.stop()
        self.flush(health=True)
        # Let paho send the last QoS 1 messages and hear their PUBACKs (at most a few seconds).
        for _ in range(50):
            with self._ack_lock:
                if not self._unacked:
                    break
            await asyncio.sleep(0.1)
        self.link.stop()

    def flush(self, health: bool = False) -> int:
        """Publish what was collected since the last flush; return how many readings."""
        now = self.clock.now_ns()
        if health or now >= self._next_health_ns:
            self._next_health_ns = now + int(self.health_s * NS_PER_S)
            self._batches.append(self.collectors.health_batch(now, self.site))
        batches, self._batches = self._batches, []
        events, self._events = self._events, []
        batch = ReadingBatch.concat(batches)
        if not len(batch) and not events:
            return 0
        self.seq += 1
        mid = self.link.publish(self.topic, wire.encode(batch, site=self.site, src=self.src, seq=self.seq,
                                                        events=events), qos=1)
        with self._ack_lock:
            if mid in self._early:
                self._early.discard(mid)
                self.acked_messages += 1
                self.acked_readings += len(batch)
            else:
                self._unacked[mid] = len(batch)
        self.published_messages += 1
        self.published_readings += len(batch)
        return len(batch)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            self.last_flush_wall = time.monotonic()
            try:
                self.flush()
            except Exception:  # a bad batch must not end publishing
                log.exception("publishing a reading batch failed")

    def summary(self) -> dict[str, Any]:
        """Per device: up, polls, readings, rejected; and what was published."""
        devices = []
        for h in self.collectors.health():
            devices.append({"device": h.device, "protocol": h.protocol, "up": h.up, "polls": h.polls,
                            "readings": h.readings, "rejected": {r.name.lower(): n for r, n in h.rejected.items()},
                            "consecutive_failures": h.consecutive_failures, "last_error": h.last_error,
                            "skipped_slots": h.skipped_slots})
        return {"src": self.src, "messages": self.published_messages, "readings": self.published_readings,
                "acked_messages": self.acked_messages, "acked_readings": self.acked_readings, "devices": devices}

