"""The hook dispatcher: the control loop's events out to webhooks, MQTT, Slurm and Kubernetes.

Thread-based, so it serves the asyncio demo and a plain loop alike::

    d = HookDispatcher(site.hooks, site.site.name, mqtt=MqttAddress("127.0.0.1", 1883))
    d.start()
    d.submit(plan_events, details={id(ev): {...}})   # every period; cheap, never blocks
    ...
    d.close(timeout_s=5.0)                            # drain what can be drained, dead-letter the rest

``submit`` keeps only hook kinds (``EVENT_KINDS``), coalesces floods, builds each payload
once and appends it to each sink's bounded queue; one thread per sink does the I/O.

Coalescing: a kind in ``coalesce_kinds`` (by default all but DR start/end, which are rare
and each one matters) is sent at most once per ``coalesce_window_s`` per (kind, entity),
measured in event time (the site clock, so it is deterministic and follows ``--speed``).
The first event of a burst goes out at once; later ones inside the window replace each
other and the latest goes out when the window ends (on a later ``submit``, or at
``close``). So EV_CAP_CHANGED for 500 jobs every second becomes one event per job per
window and a scheduler still ends up with every job's newest cap.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bus.mqtt import MqttAddress, MqttLink
from controllers.hooks.kubernetes import KubernetesAdapter
from controllers.hooks.mqtt import MqttEventPublisher
from controllers.hooks.payloads import EventLike, HookEvent, build_payload, hook_events
from controllers.hooks.slurm import SlurmAdapter, default_node_name
from controllers.hooks.webhook import DeadLetter, SinkStats, WebhookSender, load_secret, redact_url
from models.clock import NS_PER_S
from models.errors import ConfigError
from models.events import (
    EV_CAP_CHANGED,
    EV_DR_END,
    EV_HEADROOM_LOW,
    EV_INFEASIBLE,
    EV_LEASE_FALLBACK,
    EV_MOVE,
    EV_NON_COMPLIANT,
    EVENT_KINDS,
)
from models.retry import Backoff
from models.site import Hooks

log = logging.getLogger("powerplane.hooks")

DEFAULT_COALESCE_KINDS = frozenset({EV_CAP_CHANGED, EV_INFEASIBLE, EV_NON_COMPLIANT, EV_LEASE_FALLBACK, EV_MOVE,
                                    EV_HEADROOM_LOW})
SLURM_KINDS = frozenset({EV_MOVE, EV_DR_END})
K8S_KINDS = frozenset({EV_MOVE, EV_LEASE_FALLBACK, EV_DR_END})


class Coalescer:
    """At most one event per (kind, entity) per window, leading and trailing edge (see module doc)."""

    def __init__(self, window_s: float, kinds: frozenset[str] = DEFAULT_COALESCE_KINDS) -> None:
        self.window_ns = int(window_s * NS_PER_S)
        self.kinds = kinds
        self.coalesced = 0  # events replaced by a newer one and never sent
        self._last_ns: dict[tuple[str, str | None], int] = {}
        self._pending: dict[tuple[str, str | None], HookEvent] = {}

    def offer(self, hev: HookEvent, now_ns: int) -> list[HookEvent]:
        """Events to send now for one new event (it, or nothing if it waits in the window)."""
        if self.window_ns <= 0 or hev.kind not in self.kinds:
            return [hev]
        key = (hev.kind, hev.entity)
        last = self._last_ns.get(key)
        if last is None or now_ns - last >= self.window_ns:
            self._last_ns[key] = now_ns
            if self._pending.pop(key, None) is not None:
                self.coalesced += 1
            return [hev]
        if key in self._pending:
            self.coalesced += 1
        self._pending[key] = hev
        return []

    def due(self, now_ns: int) -> list[HookEvent]:
        """Waiting events whose window has ended, oldest first; forgets quiet keys."""
        out = []
        for key, hev in list(self._pending.items()):
            if now_ns - self._last_ns[key] >= self.window_ns:
                del self._pending[key]
                self._last_ns[key] = now_ns
                out.append(hev)
        if len(self._last_ns) > 4 * len(self._pending) + 1024:
            self._last_ns = {k: t for k, t in self._last_ns.items()
                             if k in self._pending or now_ns - t < self.window_ns}
        out.sort(key=lambda h: h.event.ts_ns)
        return out

    def drain(self) -> list[HookEvent]:
        """Every waiting event (at shutdown)."""
        out = sorted(self._pending.values(), key=lambda h: h.event.ts_ns)
        self._pending.clear()
        return out


class _Lane:
    """A bounded queue and one thread feeding a local sink (MQTT, Slurm, Kubernetes).

    On overflow the oldest item is dropped, counted and logged: these sinks have no dead
    letter (the webhook dead letter is the durable record) and current state matters more.
    """

    def __init__(self, name: str, handler: Callable[[Any], object], stats: Callable[[], SinkStats],
                 maxlen: int) -> None:
        self.name = name
        self.handler = handler
        self._stats = stats
        self._queue: collections.deque[Any] = collections.deque()
        self._maxlen = maxlen
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"hooks-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Any) -> None:
        with self._cond:
            if len(self._queue) >= self._maxlen:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error("hooks: %s: queue of %d full, %d events dropped so far", self.name, self._maxlen,
                              self.dropped)
            self._queue.append(item)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                self.handler(item)
            except Exception:  # a sink bug must not kill the lane
                log.exception("hooks: %s: handler failed", self.name)
            with self._cond:
                self._busy = False

    def stats(self) -> SinkStats:
        s = self._stats()
        with self._cond:
            s.queue_depth += len(self._queue) + self._busy
            s.dropped += self.dropped
        return s

    def close(self, timeout_s: float) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self.dropped += left
        if left:
            log.warning("hooks: %s: %d events not handled before the stop timeout", self.name, left)


@dataclass
class DispatchStats:
    """What the dispatcher did: hook events seen, coalesced away, and each sink's counters."""

    hook_events: int = 0
    coalesced: int = 0
    sinks: dict[str, SinkStats] = field(default_factory=dict)


def _ts_ns(e: EventLike) -> int:
    if isinstance(e, tuple):
        return e[0].ts_ns
    return e.event.ts_ns if isinstance(e, HookEvent) else e.ts_ns


class HookDispatcher:
    """Fans hook events out to every configured sink; ``start()`` / ``submit()`` / ``close()``."""

    def __init__(self, hooks: Hooks, site: str, *, mqtt: MqttAddress | None = None,
                 topic_prefix: str = "powerplane", secrets: Sequence[bytes] | None = None,
                 rack_nodes: Mapping[str, Sequence[str]] | None = None,
                 node_name: Callable[[str], str] = default_node_name, coalesce_window_s: float = 10.0,
                 coalesce_kinds: frozenset[str] = DEFAULT_COALESCE_KINDS, queue_size: int = 1000,
                 backoff: Backoff | None = None, out: Callable[[str], None] | None = None,
                 link: MqttLink | None = None) -> None:
        """Build every sink (secrets are read now: a missing one is a ConfigError before anything runs)."""
        self.site = site
        self.hooks = hooks
        self.coalescer = Coalescer(coalesce_window_s, coalesce_kinds)
        self.dead_letter = DeadLetter(hooks.dead_letter)
        self.webhooks: list[WebhookSender] = []
        for i, hook in enumerate(hooks.webhooks):
            unknown = sorted(set(hook.kinds) - set(EVENT_KINDS))
            if unknown:
                raise ConfigError("site", [(f"hooks.webhooks[{i}].kinds", f"unknown event kinds {unknown} "
                                            f"(known: {', '.join(EVENT_KINDS)})")])
            secret = secrets[i] if secrets is not None else load_secret(hook, f"hooks.webhooks[{i}]")
            self.webhooks.append(WebhookSender(
                hook.url, secret, self.dead_letter, max_tries=hook.max_tries, timeout_s=hook.timeout_s,
                kinds=frozenset(hook.kinds), queue_size=queue_size, backoff=backoff,
                name=f"webhook[{i}] {redact_url(hook.url)}"))
        self.mqtt = (MqttEventPublisher(mqtt, site, prefix=topic_prefix, link=link)
                     if mqtt is not None and hooks.mqtt_events else None)
        self.slurm = (SlurmAdapter(hooks.slurm, node_name=node_name, rack_nodes=rack_nodes, out=out)
                      if hooks.slurm != "off" else None)
        self.kubernetes = (KubernetesAdapter(hooks.kubernetes, node_name=node_name, rack_nodes=rack_nodes, out=out)
                           if hooks.kubernetes != "off" else None)
        self._lanes: dict[str, _Lane] = {}
        if self.mqtt is not None:
            m = self.mqtt
            self._lanes["mqtt"] = _Lane("mqtt", m.publish, m.stats, queue_size)
        if self.slurm is not None:
            s = self.slurm
            self._lanes["slurm"] = _Lane("slurm", s.handle, lambda: SinkStats(**vars(s.stats)), queue_size)
        if self.kubernetes is not None:
            k = self.kubernetes
            self._lanes["kubernetes"] = _Lane("kubernetes", k.handle, lambda: SinkStats(**vars(k.stats)), queue_size)
        self.hook_events = 0
        self._now_ns = 0
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        """Start the sinks' threads and connect to MQTT (in the background)."""
        if self._started:
            return
        self._started = True
        self.dead_letter.start()
        if self.mqtt is not None:
            self.mqtt.start()
        for w in self.webhooks:
            w.start()
        for lane in self._lanes.values():
            lane.start()

    def submit(self, events: Iterable[EventLike], details: Mapping[int, Mapping[str, Any]] | None = None,
               now_ns: int | None = None) -> int:
        """Hand one period's events over; returns how many hook events went out to the sinks now.

        ``details`` maps ``id(event)`` to the structured detail of that event (or pass
        ``HookEvent(event, detail)`` or ``(event, detail)`` pairs, as ``MoveAdvisor`` returns).
        ``now_ns`` (site time) drives the coalescing window; by default the newest event's
        timestamp. Never blocks on I/O.
        """
        evs = list(events)
        with self._lock:
            now = now_ns if now_ns is not None else max((_ts_ns(e) for e in evs), default=self._now_ns)
            self._now_ns = max(self._now_ns, now)
            out = self.coalescer.due(self._now_ns)
            for hev in hook_events(evs, details):
                self.hook_events += 1
                out += self.coalescer.offer(hev, self._now_ns)
            for hev in out:
                self._fan_out(hev)
        return len(out)

    def _fan_out(self, hev: HookEvent) -> None:
        payload = build_payload(self.site, hev)
        for w in self.webhooks:
            if w.accepts(hev.kind):
                w.put(payload)
        lane = self._lanes.get("mqtt")
        if lane is not None:
            lane.put(payload)
        lane = self._lanes.get("slurm")
        if lane is not None and hev.kind in SLURM_KINDS:
            lane.put(hev)
        lane = self._lanes.get("kubernetes")
        if lane is not None and hev.kind in K8S_KINDS:
            lane.put(hev)

    def stats(self) -> DispatchStats:
        """Counters per sink (``webhook[i] <url>``, ``mqtt``, ``slurm``, ``kubernetes``)."""
        sinks = {w.name: w.stats() for w in self.webhooks}
        sinks.update({name: lane.stats() for name, lane in self._lanes.items()})
        with self._lock:
            return DispatchStats(self.hook_events, self.coalescer.coalesced, sinks)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what the coalescer holds, drain every sink within ``timeout_s``, dead-letter the rest.

        The sinks drain in parallel; webhook events still queued at the timeout go to the
        dead letter, which is written and fsync'd before this returns.
        """
        with self._lock:
            for hev in self.coalescer.drain():
                self._fan_out(hev)
        if not self._started:
            return
        closers = [threading.Thread(target=w.close, args=(timeout_s,), name=f"close-{w.name}") for w in self.webhooks]
        closers += [threading.Thread(target=lane.close, args=(timeout_s,), name=f"close-{n}")
                    for n, lane in self._lanes.items()]
        for t in closers:
            t.start()
        for t in closers:
            t.join()
        if self.mqtt is not None:
            self.mqtt.close(timeout_s)
        self.dead_letter.close(timeout_s)
        self._started = False
