"""One MQTT connection for the controller's publisher and the node agents, bridged to asyncio.

paho-mqtt runs its own network thread; callbacks only hand messages and acks over to the
event loop with ``call_soon_threadsafe``, so everything else runs on the loop. paho
reconnects on its own and re-subscribes in ``on_connect``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

from models.errors import ConfigError

log = logging.getLogger("powerplane.actuation.link")
EARLY_VALID_S = 5.0


@dataclass(frozen=True)
class MqttAddress:
    """Broker address and optional credentials, from ``mqtt://[user:pass@]host[:port]``."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False  # mqtts://: TLS with the system's CA certificates

    @classmethod
    def parse(cls, url: str, where: str = "--mqtt") -> MqttAddress:
        """Parse a broker URL; a bad one is a ConfigError naming ``where``."""
        u = urlparse(url)
        if u.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not u.hostname:
            raise ConfigError(where, [("", f"expected mqtt://host:port (mqtts:// for TLS, user:password@ "
                                           f"before the host), got {url!r}")])
        tls = u.scheme in ("mqtts", "ssl")
        try:
            port = u.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(where, [("", f"bad port in {url!r}: {exc}")]) from None
        return cls(u.hostname, port, unquote(u.username) if u.username else None,
                   unquote(u.password) if u.password else None, tls)

    def url(self) -> str:
        """The address without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"mqtt{'s' if self.tls else ''}://{user}{self.host}:{self.port}"


class MqttLink:
    """A paho client whose messages arrive on an asyncio queue and whose QoS 1 acks can be awaited."""

    def __init__(self, addr: MqttAddress, client_id: str, *, clean_session: bool = True,
                 will: tuple[str, bytes] | None = None, max_queued: int = 200_000,
                 max_inflight: int = 2_000) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.addr = addr
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.connects = 0
        self.disconnects = 0
        self._loop = asyncio.get_running_loop()
        self._subs: dict[str, int] = {}
        # Futures of publish_acked, by mid, and PUBACKs that came before their future was
        # registered (or for plain publishes nobody waits for), with when they came. paho calls
        # on_publish holding the mutex publish() needs, so publish() is never called under
        # this lock (that deadlocks); a PUBACK only wakes the loop when someone waits for it.
        self._lock = threading.Lock()
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._early: dict[int, float] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        if addr.username:
            c.username_pw_set(addr.username, addr.password)
        if addr.tls:
            c.tls_set()
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.reconnect_delay_set(1, 5)
        c.max_queued_messages_set(max_queued)
        # paho allows 20 unacknowledged QoS 1 messages by default: with a busy interpreter
        # delaying PUBACK reads, 1,152 nodes' commands then queue for seconds and expire.
        c.max_inflight_messages_set(max_inflight)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self._client = c

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (paho retries until the broker is there)."""
        try:
            self._client.connect_async(self.addr.host, self.addr.port, keepalive=15)
        except (OSError, ValueError) as exc:
            raise ConfigError("--mqtt", [("", f"{self.addr.url()}: {exc}")]) from exc
        self._client.loop_start()

    def stop(self, clean: bool = True) -> None:
        """Disconnect (``clean=False`` drops the socket without DISCONNECT, as a crash would)."""
        if clean:
            self._client.disconnect()
        else:
            sock = self._client.socket()
            if sock is not None:
                sock.close()
        self._client.loop_stop()
        for fut in self._acks.values():
            if not fut.done():
                fut.cancel()

    # ---- use ------------------------------------------------------------------------------
    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and after every reconnect."""
        self._subs[topic] = qos
        if self.connected.is_set():
            self._client.subscribe(topic, qos=qos)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Queue a message for sending (paho keeps QoS 1 messages across reconnects); return its mid."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return int(info.mid)

    async def publish_acked(self, topic: str, payload: bytes, *, timeout_s: float, retain: bool = False) -> bool:
        """Publish at QoS 1 and wait for the broker's PUBACK; False on timeout."""
        fut: asyncio.Future[None] = self._loop.create_future()
        mid = self.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            t = self._early.pop(mid, None)
            if t is not None and time.monotonic() - t < EARLY_VALID_S:
                return True
            self._acks[mid] = fut
        try:
            await asyncio.wait_for(fut, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._acks.pop(mid, None)

    # ---- paho callbacks (network thread) ---------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT %s refused the connection: %s", self.addr.url(), reason_code)
            return
        for topic, qos in self._subs.items():
            client.subscribe(topic, qos=qos)
        self.connects += 1
        self._loop.call_soon_threadsafe(self.connected.set)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.disconnects += 1
        self._loop.call_soon_threadsafe(self.connected.clear)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._loop.call_soon_threadsafe(self.messages.put_nowait, (msg.topic, bytes(msg.payload)))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._lock:
            fut = self._acks.get(mid)
            if fut is None:
                # A plain publish, or an awaited one not registered yet. Entries expire: mids
                # wrap at 65,535 and a stale one must not ack a later publish.
                if len(self._early) > 10_000:
                    self._early.clear()
                self._early[mid] = time.monotonic()
                return
        self._loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
