"""The MQTT edge: one broker address type and one paho connection wrapper for every process.

paho-mqtt runs its network loop on its own thread. Its callbacks touch nothing but a
bounded ``Inbox`` per subscription (and PUBACK bookkeeping), so that

* a payload over the inbox's ``max_bytes`` is dropped in the network thread, counted,
  and never parsed (a junk flood costs a length check, not a JSON parse);
* an inbox holds at most ``maxlen`` messages; on overflow the oldest is dropped and
  counted (the newest command or status is what matters);
* a flood on one subscription (readings) cannot crowd out another (statuses, commands):
  each has its own inbox.

Credentials never come from argv: ``mqtt://user@host:port`` names the user, and the
password comes from a file (``--mqtt-password-file``) or ``$POWERPLANE_MQTT_PASSWORD``.
A URL that carries a password is refused, because every local user can read argv. The site
broker runs with ``use_username_as_clientid true`` (``deploy/mosquitto``), so there the
client id *is* the user name whatever a client asks for, and one account cannot take over
another's session; on a broker without it (a shared demo account) each process keeps its own
client id, so that processes on one account do not throw each other off.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlparse

from models.errors import ConfigError

log = logging.getLogger("powerplane.mqtt")
PASSWORD_ENV = "POWERPLANE_MQTT_PASSWORD"
EARLY_VALID_S = 5.0
EARLY_MAX = 4096
MAX_PASSWORD_BYTES = 4096


@dataclass(frozen=True)
class MqttAddress:
    """Broker address and credentials, from ``mqtt://[user@]host[:port]`` plus a password source."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False  # mqtts://: TLS with the system's CA certificates

    @classmethod
    def parse(cls, url: str, where: str = "--mqtt", *, password_file: str | Path | None = None,
              env: str = PASSWORD_ENV, allow_url_password: bool = False,
              default_user: str | None = None) -> MqttAddress:
        """Parse a broker URL; the password comes from ``password_file``, else ``$env``.

        A password inside the URL is a ConfigError (argv is world-readable) unless
        ``allow_url_password`` (URLs read from a protected file, not a command line).
        ``default_user`` is the user name when the URL names none (an agent's account is
        the rack or node it serves: the broker's ACL names it so).
        """
        try:
            u = urlparse(url)
            host, user, pw = u.hostname, u.username, u.password
        except ValueError as exc:
            raise ConfigError(where, [("", f"not a broker URL: {exc}")]) from None
        if u.scheme not in ("mqtt", "tcp", "mqtts", "ssl") or not host:
            raise ConfigError(where, [("", f"expected mqtt://host:port (mqtts:// for TLS, user@ before the "
                                           f"host), got {_redact(url)!r}")])
        if pw is not None and not allow_url_password:
            raise ConfigError(where, [("", "the URL carries a password, which every local user can read in the "
                                           f"process list: pass it in --mqtt-password-file or ${env}")])
        tls = u.scheme in ("mqtts", "ssl")
        try:
            port = u.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(where, [("", f"bad port in {_redact(url)!r}: {exc}")]) from None
        password = unquote(pw) if pw is not None else None
        if user is None and default_user:
            user = default_user
        if password_file is not None:
            password = read_secret_file(password_file, "MQTT password")
        elif password is None and user and os.environ.get(env):
            password = os.environ[env].strip()
        return cls(host, port, unquote(user) if user else None, password, tls)

    def url(self) -> str:
        """The address without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"mqtt{'s' if self.tls else ''}://{user}{self.host}:{self.port}"

    def with_user(self, username: str | None, password: str | None) -> MqttAddress:
        """The same broker with other credentials."""
        return replace(self, username=username, password=password)


def _redact(url: str) -> str:
    """``url`` without any password."""
    try:
        u = urlparse(url)
        if u.password is None:
            return url
        netloc = u.netloc.replace(f":{u.password}@", ":***@", 1)
        return u._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparseable URL>"


def read_secret_file(path: str | Path, what: str, *, strict_mode: bool = False) -> str:
    """A secret from a file; ``strict_mode``: refuse a file others can read (not 0600/0400)."""
    p = Path(path)
    try:
        st = p.stat()
        if strict_mode and st.st_mode & 0o077:
            raise ConfigError(str(p), [("", f"{what} file is mode {st.st_mode & 0o777:o}: others can read it; "
                                            f"chmod 600 {p}")])
        if st.st_size > MAX_PASSWORD_BYTES:
            raise ConfigError(str(p), [("", f"{what} file is {st.st_size} bytes; a secret is under "
                                            f"{MAX_PASSWORD_BYTES}")])
        text = p.read_text().strip()
    except OSError as exc:
        raise ConfigError(str(p), [("", f"cannot read the {what}: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(p), [("", f"the {what} file is not text")]) from None
    if not text:
        raise ConfigError(str(p), [("", f"the {what} file is empty")])
    return text


Message = tuple[str, bytes]
T = TypeVar("T")


class _WakeQueue(Generic[T]):
    """A deque that paho's thread fills and an asyncio task drains; ``wait`` sleeps until it is not empty."""

    def __init__(self) -> None:
        self.received = 0
        self._q: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _append(self, item: T, maxlen: int | None = None) -> bool:
        """Queue ``item`` (dropping the oldest at ``maxlen``) and wake the waiter; True if one was dropped."""
        with self._lock:
            self.received += 1
            full = maxlen is not None and len(self._q) >= maxlen
            if full:
                self._q.popleft()
            was_empty = not self._q
            self._q.append(item)
        if was_empty and self._waiter is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._waiter.set)
        return full

    def drain(self, limit: int | None = None) -> list[T]:
        """Everything queued (at most ``limit``), oldest first; never blocks."""
        with self._lock:
            if limit is None or limit >= len(self._q):
                out = list(self._q)
                self._q.clear()
            else:
                out = [self._q.popleft() for _ in range(limit)]
            if self._waiter is not None and not self._q:
                self._waiter.clear()
        return out

    async def wait(self, timeout_s: float | None = None) -> None:
        """Wait until something is queued (asyncio), at most ``timeout_s`` (None: for ever)."""
        if self._waiter is None:
            self._loop = asyncio.get_running_loop()
            self._waiter = asyncio.Event()
        with self._lock:
            if self._q:
                return
            self._waiter.clear()
        if timeout_s is None:
            await self._waiter.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._waiter.wait(), timeout_s)

    def __len__(self) -> int:
        return len(self._q)


class Inbox(_WakeQueue[Message]):
    """A bounded, thread-safe queue of (topic, payload) filled by paho's thread (see module doc)."""

    def __init__(self, maxlen: int = 10_000, max_bytes: int = 1 << 20) -> None:
        super().__init__()
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self.dropped_oversize = 0
        self.dropped_overflow = 0

    def put(self, topic: str, payload: bytes) -> None:
        """Called by paho's thread for every message of the subscription."""
        if len(payload) > self.max_bytes:
            self.dropped_oversize += 1
            return
        if self._append((topic, payload), self.maxlen):
            self.dropped_overflow += 1

    def dropped(self) -> int:
        """Messages dropped so far (oversize + overflow)."""
        return self.dropped_oversize + self.dropped_overflow


AckedMessage = tuple[str, bytes, int, int]  # topic, payload, mid, connection generation


class AckInbox(_WakeQueue[AckedMessage]):
    """Messages whose PUBACK the receiver sends itself, once it has made them safe (``MqttLink.ack``).

    Nothing is dropped for space here: the broker sends at most the link's ``receive_maximum``
    unacknowledged messages, so the inbox is bounded by the protocol. A payload over
    ``max_bytes`` can never be stored: it is acknowledged at once (in the network thread) and
    counted, or the broker would resend it forever. Each message carries the connection
    generation it arrived on: after a reconnect the broker resends what was not acknowledged
    (with the same packet ids), so a message of an older generation must never be acknowledged.
    """

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.dropped_oversize = 0

    def put(self, message: AckedMessage) -> None:
        """Called by paho's thread for every message of the subscription."""
        self._append(message)


class MqttLink:
    """A paho client: bounded inboxes per subscription, QoS 1 publishes whose PUBACK can be awaited.

    ``receive_maximum`` switches to MQTT 5 with manual acknowledgement (``AckInbox``,
    ``ack``): the broker keeps at most that many messages unacknowledged with this client, and
    with ``clean_session=False`` the session (and its queued messages) outlives a crash for
    ``session_expiry_s``.
    """

    def __init__(self, addr: MqttAddress, client_id: str, *, clean_session: bool = True,
                 will: tuple[str, bytes] | None = None, max_queued: int = 200_000,
                 max_inflight: int = 0, keepalive_s: int = 15, receive_maximum: int | None = None,
                 session_expiry_s: int = 7 * 86_400) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.addr = addr
        self.keepalive_s = keepalive_s
        self.v5 = receive_maximum is not None
        self._clean = clean_session
        self._connect_props: Any = None
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.refused: str | None = None  # the broker's reason when it last refused the connection
        self.on_state: Callable[[bool, str], None] | None = None
        self.started = False
        self.acked = 0
        self.ack_listeners: list[Callable[[int], None]] = []
        self._subs: dict[str, tuple[int, Inbox | AckInbox]] = {}
        # PUBACK futures by mid (publish_acked), and PUBACKs that came before their future was
        # registered. paho calls on_publish holding the mutex publish() needs, so publish() is
        # never called under this lock.
        self._lock = threading.Lock()
        self._acks: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
        self._early: collections.OrderedDict[int, float] = collections.OrderedDict()
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                            protocol=mqtt.MQTTv5, manual_ack=True)
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.ReceiveMaximum = int(receive_maximum or 1)
            if not clean_session:
                props.SessionExpiryInterval = int(session_expiry_s)
            self._connect_props = props
        else:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                            clean_session=clean_session)
        if addr.username:
            c.username_pw_set(addr.username, addr.password)
        if addr.tls:
            c.tls_set()
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.reconnect_delay_set(1, 5)
        c.max_queued_messages_set(max_queued)
        # paho allows 20 unacknowledged QoS 1 messages by default: a busy interpreter that is
        # late reading PUBACKs would then queue commands for seconds. Any window at all costs a
        # scan of every unacknowledged message at every PUBACK (paho's _update_inflight): with
        # a command per rack in flight, O(racks^2) a period. 0 is no window (max_queued bounds
        # what waits; MQTT 3.1.1 has no receive maximum).
        c.max_inflight_messages_set(max_inflight)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_unrouted
        self._client = c

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (paho retries until the broker is there); once."""
        if self.started:
            return
        self.started = True
        try:
            if self.v5:
                self._client.connect_async(self.addr.host, self.addr.port, keepalive=self.keepalive_s,
                                           clean_start=self._clean, properties=self._connect_props)
            else:
                self._client.connect_async(self.addr.host, self.addr.port, keepalive=self.keepalive_s)
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
        with self._lock:
            futs = list(self._acks.values())
        for loop, fut in futs:
            loop.call_soon_threadsafe(_cancel, fut)

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait (wall time) until connected; False on timeout."""
        return await asyncio.to_thread(self.connected.wait, timeout_s)

    # ---- use ------------------------------------------------------------------------------
    def subscribe(self, topic: str, qos: int = 1, inbox: Inbox | None = None) -> Inbox:
        """Subscribe now (if connected) and after every reconnect; messages go to ``inbox``."""
        box = inbox if inbox is not None else Inbox()
        self._subs[topic] = (qos, box)
        self._client.message_callback_add(_callback_filter(topic),
                                          lambda c, u, msg: box.put(msg.topic, bytes(msg.payload)))
        if self.connected.is_set():
            self._client.subscribe(topic, qos=qos)
        return box

    def subscribe_acked(self, topic: str, inbox: AckInbox, qos: int = 1) -> AckInbox:
        """Subscribe (MQTT 5 links only) with acknowledgements left to ``ack``; see ``AckInbox``."""
        if not self.v5:
            raise ValueError("manual acknowledgement needs an MQTT 5 link (receive_maximum)")
        self._subs[topic] = (qos, inbox)

        def on_message(c: Any, u: Any, msg: Any) -> None:
            payload = bytes(msg.payload)
            if len(payload) > inbox.max_bytes:
                inbox.dropped_oversize += 1
                if msg.qos:
                    c.ack(msg.mid, msg.qos)
                return
            inbox.put((msg.topic, payload, int(msg.mid) if msg.qos else 0, self.connects))

        self._client.message_callback_add(_callback_filter(topic), on_message)
        if self.connected.is_set():
            self._client.subscribe(topic, qos=qos)
        return inbox

    def ack(self, messages: list[AckedMessage]) -> int:
        """PUBACK ``messages`` in order, skipping those of an earlier connection (the broker resends
        them); return how many were acknowledged."""
        gen = self.connects
        n = 0
        for _topic, _payload, mid, g in messages:
            if mid and g == gen:
                self._client.ack(mid, 1)
                n += 1
        return n

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Queue a message (paho keeps QoS 1 messages across reconnects); return its mid."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return int(info.mid)

    async def publish_acked(self, topic: str, payload: bytes, *, timeout_s: float, retain: bool = False) -> bool:
        """Publish at QoS 1 and wait for the broker's PUBACK; False on timeout."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        mid = self.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            t = self._early.pop(mid, None)
            if t is not None and time.monotonic() - t < EARLY_VALID_S:
                return True
            self._acks[mid] = (loop, fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
            return True
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is being cancelled: never swallow that
            return False  # the link stopped and cancelled the wait
        finally:
            with self._lock:
                self._acks.pop(mid, None)

    # ---- paho callbacks (network thread) ---------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT %s refused the connection: %s", self.addr.url(), reason_code)
            self.refused = str(reason_code)
            if self.on_state is not None:
                self.on_state(False, str(reason_code))
            return
        # Connected first, then the subscriptions: a subscribe() between the two would otherwise
        # find the link not yet connected and its topic not yet in this list, and never be sent
        # (a controller then heard no agent status for a whole run). Now it is sent at least
        # once; twice is harmless.
        self.connects += 1
        self.refused = None
        self.connected.set()
        for topic, (qos, _box) in list(self._subs.items()):
            client.subscribe(topic, qos=qos)
        if self.on_state is not None:
            self.on_state(True, "connected")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.disconnects += 1
        self.connected.clear()
        if self.on_state is not None:
            self.on_state(False, str(reason_code))

    def _on_unrouted(self, client: Any, userdata: Any, msg: Any) -> None:
        # A retained message on a topic no filter callback matches (cannot happen with
        # message_callback_add per subscription, but paho needs a default).
        log.debug("MQTT message on %s matches no subscription", msg.topic)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self.acked += 1
        for listener in self.ack_listeners:
            listener(mid)
        with self._lock:
            entry = self._acks.get(mid)
            if entry is None:
                # A plain publish, or an awaited one not registered yet. Entries expire: mids
                # wrap at 65,535 and a stale one must not ack a later publish.
                self._early[mid] = time.monotonic()
                if len(self._early) > EARLY_MAX:  # oldest first out: far fewer than the 65,535 mids
                    self._early.popitem(last=False)
                return
        loop, fut = entry
        loop.call_soon_threadsafe(_resolve, fut)


def _callback_filter(topic: str) -> str:
    """The filter paho matches incoming messages against: a shared subscription's messages arrive on
    their own topic, without ``$share/<group>/``."""
    if topic.startswith("$share/"):
        parts = topic.split("/", 2)
        return parts[2] if len(parts) == 3 else topic
    return topic


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _cancel(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.cancel()
