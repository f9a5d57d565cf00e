"""A store writer: reading batches from an MQTT shared subscription into a sink, acknowledged once durable.

Any number of ``powerplane store-writer`` processes subscribe to
``$share/<group>/<prefix>/<site>/readings/+`` (MQTT 5, persistent session, manual
acknowledgement): the broker hands each batch to one of them, so adding a writer adds
throughput. A writer takes what arrived (at most the link's receive maximum of
unacknowledged messages), decodes every batch at the edge (``models.wire``), writes the
readings and the collectors' events to its sink — the embedded store, or InfluxDB /
VictoriaMetrics through the durable spool — and only when ``write`` has returned (committed,
or appended and fsynced to the spool) and nothing was dropped does it send the PUBACKs.

So a writer killed at any moment loses nothing the broker acknowledged to a collector:
what it had not acknowledged the broker resends, and what arrived while it was down waits in
its session, both delivered when the writer with the same identity (client id) runs again —
its supervisor (systemd ``Restart=``, a Kubernetes StatefulSet) restarts it. mosquitto 2.0
keeps a dead member's share of a shared subscription in its session rather than giving it
to the other members (eclipse-mosquitto/mosquitto#2662), so a writer identity must come
back; size the broker's ``max_queued_messages`` for the outage to ride out. A batch written
twice (written, then killed before the PUBACK) is stored once: a reading is keyed by series
and time in every sink.

A message that can never be stored (not a reading batch, another site) is acknowledged and
counted as refused: keeping it would block nothing but would be resent forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bus.mqtt import AckedMessage, AckInbox, MqttLink
from models import wire
from models.clock import Clock
from models.errors import StoreError
from models.events import Event
from models.readings import REGISTRY, ReadingBatch, SeriesRegistry
from models.retry import Backoff
from store.base import Sink

log = logging.getLogger("powerplane.store.writer")
MAX_AGE_S = 30 * 86_400.0  # a backlog this old is still written (the controller plans only on the last hour)


def shared_readings_topic(group: str, prefix: str, site: str) -> str:
    """The shared subscription every writer of ``group`` takes its share of the site's batches from."""
    return f"$share/{group}/{prefix}/{site}/readings/+"


@dataclass
class WriterStats:
    """What one writer did."""

    messages: int = 0  # batches taken from the broker (redeliveries included)
    acked: int = 0  # PUBACKs sent: each after its batch was durable
    readings: int = 0  # readings written
    events: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # whole messages, by reason
    rejected: Counter[str] = field(default_factory=Counter)  # single readings, by reason
    write_failures: int = 0  # writes that failed or dropped points: retried, not acknowledged
    stale_generation: int = 0  # messages of an older connection: not acknowledged (the broker resends them)
    write_ms_max: float = 0.0
    sources: Counter[str] = field(default_factory=Counter)  # batches per collector


class ReadingsWriter:
    """Takes batches from ``inbox`` (filled by ``link``), writes them to ``sink``, acknowledges them."""

    def __init__(self, sink: Sink, link: MqttLink, inbox: AckInbox, *, site: str, clock: Clock,
                 registry: SeriesRegistry = REGISTRY, max_messages: int = 1000,
                 backoff: Backoff | None = None) -> None:
        self.sink, self.link, self.inbox = sink, link, inbox
        self.site = site
        self.clock = clock
        self.cache = wire.SeriesCache(registry)
        self.registry = registry
        self.max_messages = max_messages
        self.backoff = backoff if backoff is not None else Backoff(base_s=0.2, max_s=10.0)
        self.stats = WriterStats()
        self._pending: list[AckedMessage] = []  # taken, not yet durable

    def decode(self, messages: list[AckedMessage]) -> tuple[ReadingBatch, list[Event]]:
        """The readings and events of ``messages`` (refused ones counted, never raised)."""
        batches: list[ReadingBatch] = []
        events: list[Event] = []
        now = self.clock.now_ns()
        for _topic, payload, _mid, _gen in messages:
            d = wire.decode(payload, self.cache, site=self.site, now_ns=now, max_age_s=MAX_AGE_S)
            if d.refused is not None:
                self.stats.refused[str(d.refused)] += 1
                if self.stats.refused[str(d.refused)] == 1:
                    log.warning("store writer: a batch on %s refused: %s", _topic[:200], d.refused)
                continue
            self.stats.rejected.update(d.rejected)
            self.stats.sources[d.src] += 1
            if len(d.batch):
                batches.append(d.batch)
            events += d.events
        return ReadingBatch.concat(batches) if batches else ReadingBatch.empty(self.registry), events

    def write_durably(self, batch: ReadingBatch, events: list[Event]) -> bool:
        """Write; True only if everything is durable (a sink that dropped points is not)."""
        before = self.sink.stats().dropped_points
        t0 = time.perf_counter()
        try:
            if len(batch):
                self.sink.write(batch)
            if events:
                self.sink.write_events(events)
        except StoreError as exc:
            log.error("store writer: write failed (%s): not acknowledged, retrying", exc)
            return False
        self.stats.write_ms_max = max(self.stats.write_ms_max, (time.perf_counter() - t0) * 1e3)
        dropped = self.sink.stats().dropped_points - before
        if dropped:
            log.error("store writer: the sink dropped %d points (spool full?): not acknowledged, retrying", dropped)
            return False
        return True

    async def step(self) -> int:
        """Take what arrived, write it durably, acknowledge it; return how many messages were acknowledged.

        A write that fails keeps its messages, unacknowledged, for the next step (after a
        back-off): the broker sends nothing more beyond the receive maximum meanwhile.
        """
        if not self._pending:
            self._pending = self.inbox.drain(self.max_messages)
            self.stats.messages += len(self._pending)
        if not self._pending:
            return 0
        gen = self.link.connects
        stale = [m for m in self._pending if m[3] != gen]
        if stale:
            # Arrived on an earlier connection: the broker resends them on this one. Writing them
            # is harmless (idempotent) but their packet ids may already name other messages.
            self.stats.stale_generation += len(stale)
            self._pending = [m for m in self._pending if m[3] == gen]
        batch, events = self.decode(self._pending)
        ok = await asyncio.to_thread(self.write_durably, batch, events)
        if not ok:
            self.stats.write_failures += 1
            await asyncio.sleep(self.backoff.delay_s(self.stats.write_failures))
            return 0
        acked = self.link.ack(self._pending)
        self.stats.acked += acked
        self.stats.readings += len(batch)
        self.stats.events += len(events)
        self._pending = []
        self.stats.write_failures = 0
        return acked

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            if not self._pending:
                await self.inbox.wait(1.0)
            try:
                await self.step()
            except Exception:  # a bug in one batch must not end the writer (its messages are resent)
                log.exception("store writer: step failed; the unacknowledged batches will be resent")
                self._pending = []
                await asyncio.sleep(1.0)

    def summary(self) -> dict[str, Any]:
        """What the writer did, as data."""
        s = self.stats
        st = self.sink.stats()
        return {"messages": s.messages, "acked": s.acked, "readings": s.readings, "events": s.events,
                "refused": dict(s.refused), "rejected": dict(s.rejected), "stale_generation": s.stale_generation,
                "write_ms_max": round(s.write_ms_max, 3), "sources": dict(s.sources), "pending": len(self._pending),
                "store": {"written_points": st.written_points, "spooled_points": st.spooled_points,
                          "rejected_points": st.rejected_points, "dropped_points": st.dropped_points,
                          "overwritten_points": st.overwritten_points, "last_error": st.last_error},
                "mqtt": {"connects": self.link.connects, "disconnects": self.link.disconnects}}
