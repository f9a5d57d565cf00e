"""MQTT event topics: every hook event's payload, QoS 1, not retained, on
``<prefix>/<site>/events/<kind>`` (``controllers.actuation.messages.events_topic``).

paho-mqtt 2 keeps its network loop on its own thread and keeps reconnecting; QoS 1
messages published while the broker is away wait in paho's bounded out-queue and go out
on reconnect. A message counts as delivered when the broker acknowledges it (PUBACK).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from controllers.actuation.link import MqttAddress
from controllers.actuation.messages import events_topic
from controllers.hooks.payloads import encode
from controllers.hooks.webhook import SinkStats

log = logging.getLogger("powerplane.hooks.mqtt")


class MqttEventPublisher:
    """Publishes hook payloads to their event topics through one paho client."""

    def __init__(self, address: MqttAddress, site: str, *, prefix: str = "powerplane",
                 client_id: str | None = None, max_queued: int = 10_000) -> None:
        self.address = address
        self.site = site
        self.prefix = prefix
        self.client_id = client_id or f"powerplane-hooks-{site}"
        self.max_queued = max_queued
        self._client: Any = None
        self._lock = threading.Condition()
        self._sent = 0
        self._acked = 0
        self._failed = 0
        self._last_error = ""
        self.connected = False

    def topic(self, kind: str) -> str:
        """The topic events of ``kind`` go to."""
        return events_topic(self.prefix, self.site, kind)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("hooks: MQTT broker %s:%d refused the connection: %s", self.address.host, self.address.port,
                      reason_code)
            return
        self.connected = True

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self.connected:
            log.warning("hooks: MQTT disconnected: %s (reconnecting)", reason_code)
        self.connected = False

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            self._acked += 1
            self._lock.notify_all()

    def start(self) -> None:
        """Connect in the background; paho reconnects on its own thread."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.max_queued_messages_set(self.max_queued)
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        if self.address.username:
            c.username_pw_set(self.address.username, self.address.password)
        c.connect_async(self.address.host, self.address.port, keepalive=30)
        c.loop_start()
        self._client = c

    def publish(self, payload: Mapping[str, Any]) -> bool:
        """Publish one payload (QoS 1, not retained); False if paho refused to queue it."""
        import paho.mqtt.client as mqtt

        if self._client is None:
            raise RuntimeError("MqttEventPublisher.publish before start()")
        info = self._client.publish(self.topic(str(payload["kind"])), encode(payload), qos=1, retain=False)
        # NO_CONN: paho keeps a QoS 1 message and sends it once reconnected.
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            with self._lock:
                self._sent += 1
            return True
        with self._lock:
            self._failed += 1
            self._last_error = mqtt.error_string(info.rc)
        return False

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
        """Wait up to ``timeout_s`` for outstanding acknowledgements, then disconnect."""
        c, self._client = self._client, None
        if c is None:
            return
        if not self.flush(timeout_s):
            log.warning("hooks: MQTT: %d event messages unacknowledged at shutdown", self.stats().queue_depth)
        c.disconnect()
        c.loop_stop()
