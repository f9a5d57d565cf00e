"""The paho-mqtt edge: a persistent-session QoS 1 subscriber bridged into asyncio.

paho runs its network loop in its own thread. Its callbacks never touch our state: a
message is appended to a deque and one drain per burst is scheduled on the event loop
with ``call_soon_threadsafe``; connection changes are posted the same way. Parsing,
validation and the consumer's callback all run in the event loop.

Intake must never stall silently after a reconnect (the classic failure: the session was
lost, nobody resubscribed, the client is "connected" and receives nothing):

* every CONNACK resubscribes all filters, whether or not the broker kept the session;
* a fixed client id and ``clean_session=False`` make the broker keep our subscriptions
  and queue QoS 1 messages while we are away (and across its own restart, when it
  persists to disk);
* a watchdog restarts the network loop if the client stays disconnected, a SUBACK never
  comes, or (``stale_s`` option) no message arrives for too long.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from bus.mqtt import PASSWORD_ENV, read_secret_file
from collectors.base import DeviceConfig
from collectors.mqtt.profile import MqttProfile
from collectors.options import MqttOptions, options_of
from models.clock import NS_PER_S, Clock

log = logging.getLogger("powerplane.collectors.mqtt")

Message = tuple[str, bytes, int]  # topic, payload, arrival (site ns)


class MqttIntake:
    """Subscribes one MQTT device (broker + profile); hands messages to ``on_messages`` in the loop."""

    def __init__(self, device: DeviceConfig, profile: MqttProfile, *, clock: Clock,
                 on_messages: Callable[[list[Message]], None],
                 on_state: Callable[[bool, str], None] | None = None) -> None:
        self.device = device
        self.profile = profile
        self.clock = clock
        self.on_messages = on_messages
        self.on_state = on_state
        o = options_of(device)
        assert isinstance(o, MqttOptions)
        self.options = o
        # Our own id per device; a broker with use_username_as_clientid replaces it with the user.
        self.client_id = o.client_id or f"powerplane-{device.name}"
        self.qos = o.qos if o.qos is not None else profile.qos
        self.keepalive_s = o.keepalive_s
        self.stale_s = o.stale_s
        self.watchdog_s = o.watchdog_s
        self.batch_s = o.batch_ms / 1e3
        self.filters = sorted({s.template.filter for s in profile.subscriptions})
        self.connected = False
        self.subscribed = False
        self.connects = 0
        self.received = 0
        self.restarts = 0
        self.last_message_ns = 0
        self._since_ns = 0  # when the current connection state began
        self._queue: collections.deque[Message] = collections.deque()
        self._drain_scheduled = False
        self._lock = threading.Lock()
        self._lifecycle = threading.Lock()  # restart vs stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- paho thread -------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._post(self._state, False, f"broker refused the connection: {reason_code}")
            return
        # Always resubscribe: a broker that lost our session would otherwise leave us connected and deaf.
        client.subscribe([(f, self.qos) for f in self.filters])
        self._post(self._state, True, "session kept" if getattr(flags, "session_present", False) else "new session")

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        self._post(self._subscribed, not bad, ", ".join(bad))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._post(self._state, False, f"disconnected: {reason_code}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._queue.append((msg.topic, msg.payload, 0))
        with self._lock:
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        self._post(self._schedule_drain)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(fn, *args)

    # ---- event loop --------------------------------------------------------------------
    def _schedule_drain(self) -> None:
        # Gather a burst for a few ms: one wake-up, one batch, one validation per burst rather
        # than per message (per-message wake-ups cost more than parsing under load).
        if self._loop is not None:
            self._loop.call_later(self.batch_s, self._drain)

    def _drain(self) -> None:
        with self._lock:
            self._drain_scheduled = False
        now = self.clock.now_ns()
        batch: list[Message] = []
        q = self._queue
        while q:
            topic, payload, _ = q.popleft()
            batch.append((topic, payload, now))
        if batch:
            self.received += len(batch)
            self.last_message_ns = now
            self.on_messages(batch)

    def _state(self, connected: bool, detail: str) -> None:
        if connected == self.connected and connected:
            return
        self.connected = connected
        self._since_ns = self.clock.now_ns()
        if connected:
            self.connects += 1
            self.subscribed = False
        if self.on_state is not None and not self._stopping:
            self.on_state(connected, detail)

    def _subscribed(self, ok: bool, detail: str) -> None:
        self.subscribed = ok
        if not ok:
            log.error("%s: broker refused subscription: %s", self.device.name, detail)

    # ---- lifecycle ---------------------------------------------------------------------
    def _make_client(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False,
                        protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(min_delay=1, max_delay=5)
        o = self.options
        if o.username:
            password = read_secret_file(o.password_file, "MQTT password") if o.password_file else \
                os.environ.get(PASSWORD_ENV)
            c.username_pw_set(o.username, password)
        return c

    async def start(self) -> None:
        """Connect in the background; paho keeps reconnecting on its own thread."""
        self._loop = asyncio.get_running_loop()
        self._since_ns = self.clock.now_ns()
        self._client = self._make_client()
        self._client.connect_async(self.device.host, self.device.port, keepalive=self.keepalive_s)
        self._client.loop_start()
        self._watchdog = self._loop.create_task(self._watch(), name=f"mqtt-watchdog-{self.device.name}")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_s)
            now = self.clock.now_ns()
            age_s = (now - self._since_ns) / NS_PER_S
            why = ""
            if not self.connected and age_s > max(10.0, 3 * self.watchdog_s) * self.clock.speed:
                why = f"disconnected for {age_s:.0f} s"
            elif self.connected and not self.subscribed and age_s > 5 * self.watchdog_s * self.clock.speed:
                why = "no SUBACK"
            elif self.connected and self.stale_s is not None:
                last = max(self.last_message_ns, self._since_ns)
                if (now - last) / NS_PER_S > float(self.stale_s):
                    why = f"no message for {(now - last) / NS_PER_S:.0f} s"
            if why:
                self.restarts += 1
                log.warning("%s: restarting MQTT connection (%s)", self.device.name, why)
                await _in_daemon_thread(self._restart, timeout_s=30.0)
                self._since_ns = self.clock.now_ns()

    def _restart(self) -> None:
        with self._lifecycle:
            c = self._client
            if c is None or self._stopping:
                return
            self._restart_locked(c)

    def _restart_locked(self, c: Any) -> None:
        c.loop_stop()
        with contextlib.suppress(OSError, ValueError):
            c.reconnect()
        c.loop_start()

    async def stop(self) -> None:
        """Disconnect and stop paho's thread."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        c, self._client = self._client, None
        if c is not None:
            c.disconnect()
            def stop_loop() -> None:
                with self._lifecycle:
                    c.loop_stop()

            # paho joins its thread here; a daemon thread keeps a wedged socket from holding
            # up interpreter/executor shutdown (asyncio.run waits for to_thread workers).
            await _in_daemon_thread(stop_loop, timeout_s=10.0)
        self._drain()
        self._loop = None


async def _in_daemon_thread(fn: Callable[[], None], timeout_s: float) -> None:
    """Run blocking ``fn`` in a daemon thread; give up waiting (and log) after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            fn()
        finally:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(finish)

    threading.Thread(target=run, name="mqtt-lifecycle", daemon=True).start()
    try:
        await asyncio.wait_for(done, timeout_s)
    except TimeoutError:
        log.error("MQTT client did not stop within %.0f s; leaving its thread behind", timeout_s)
