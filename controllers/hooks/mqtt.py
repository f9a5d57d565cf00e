"""MQTT event topics: every hook event's payload, QoS 1, not retained, on
``<prefix>/<site>/events/<kind>`` (``controllers.actuation.messages.events_topic``).

It publishes through a ``bus.mqtt.MqttLink`` — the controller process's one connection when
given one (with authentication the client id is the user name, so a process has one
connection), else its own. paho keeps reconnecting; QoS 1 messages published while the
broker is away wait in paho's bounded out-queue and go out on reconnect. A message counts
as delivered when the broker acknowledges it (PUBACK).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from bus.mqtt import MqttAddress, MqttLink
from controllers.actuation.messages import events_topic
from controllers.hooks.payloads import encode
from controllers.hooks.webhook import SinkStats

log = logging.getLogger("powerplane.hooks.mqtt")


class MqttEventPublisher:
    """Publishes hook payloads to their event topics."""

    def __init__(self, address: MqttAddress, site: str, *, prefix: str = "powerplane",
                 client_id: str | None = None, max_queued: int = 10_000, link: MqttLink | None = None) -> None:
        self.address = address
        self.site = site
        self.prefix = prefix
        self.client_id = client_id or f"powerplane-hooks-{site}"
        self.max_queued = max_queued
        self._link = link
        self._own = link is None
        self._lock = threading.Condition()
        self._mids: set[int] = set()
        self._early: set[int] = set()
        self._sent = 0
        self._acked = 0
        self._failed = 0
        self._last_error = ""

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        return self._link is not None and self._link.connected.is_set()

    def topic(self, kind: str) -> str:
        """The topic events of ``kind`` go to."""
        return events_topic(self.prefix, self.site, kind)

    def _on_ack(self, mid: int) -> None:
        # paho calls this holding the mutex publish() needs: never publish under self._lock.
        with self._lock:
            if mid in self._mids:
                self._mids.discard(mid)
                self._acked += 1
                self._lock.notify_all()
            else:  # ours before publish() returned its mid, or another user's of a shared link
                self._early.add(mid)
                if len(self._early) > 10_000:  # mids wrap at 65,535: never keep one that long
                    self._early.clear()

    def start(self) -> None:
        """Connect in the background (an own connection), and count acknowledgements."""
        if self._link is None:
            self._link = MqttLink(self.address, self.client_id, max_queued=self.max_queued, keepalive_s=30)
        self._link.ack_listeners.append(self._on_ack)
        self._link.start()

    def publish(self, payload: Mapping[str, Any]) -> bool:
        """Publish one payload (QoS 1, not retained); False if paho refused to queue it."""
        if self._link is None:
            raise RuntimeError("MqttEventPublisher.publish before start()")
        try:
            mid = self._link.publish(self.topic(str(payload["kind"])), encode(payload), qos=1, retain=False)
        except (ValueError, OSError) as exc:
            with self._lock:
                self._failed += 1
                self._last_error = str(exc)[:200]
            return False
        with self._lock:
            self._sent += 1
            if mid in self._early:
                self._early.discard(mid)
                self._acked += 1
                self._lock.notify_all()
            else:
                self._mids.add(mid)
        return True

    def stats(self) -> SinkStats:
        """Acknowledged, refused and still unacknowledged messages."""
        with self._lock:
            return SinkStats(delivered=self._acked, failed=self._failed, dropped=self._failed,
                             queue_depth=self._sent - self._acked, last_error=self._last_error)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until the broker acknowledged everything published; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            return self._lock.wait_for(lambda: self._acked >= self._sent, max(0.0, deadline - time.monotonic()))

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for outstanding acknowledgements, then disconnect an own connection."""
        link, self._link = self._link, None
        if link is None:
            return
        if not self.flush(timeout_s):
            log.warning("hooks: MQTT: %d event messages unacknowledged at shutdown", self.stats().queue_depth)
        with self._lock:
            if self._on_ack in link.ack_listeners:
                link.ack_listeners.remove(self._on_ack)
        if self._own:
            link.stop()
