"""The node agent: applies signed cap commands to its GPUs, and falls back on its own.

``NodeAgent`` is one node's state machine; it talks to its GPUs only through a
``GpuBackend`` and to the world only through a ``publish`` callable, so that it is tested
with plain values and a frozen clock. ``AgentHost`` runs one or more node agents over one
MQTT connection (a real node runs one; the demo runs many twin nodes per process).

Modes::

    starting    -> safe cap applied at start, waiting for the first valid command
    controlled  -> enforcing the caps of the newest valid command until its lease runs out
    fallback    -> the lease ran out (controller, broker or network gone): safe cap applied;
                   the next valid command returns the node to ``controlled``

The fallback never raises a cap: it applies ``min(current cap, safe cap)`` per GPU.
Starting at the safe cap is the conservative choice for a node that boots while the
controller is away; a retained command brings it under control at once otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controllers.actuation.backends import BoardLimits, GpuBackend
from controllers.actuation.link import MqttAddress, MqttLink
from controllers.actuation.messages import (
    AgentStatus,
    CapCommand,
    Mode,
    Rejected,
    SiteKey,
    caps_topic,
    node_of_topic,
    status_topic,
    verify_command,
)
from models.clock import NS_PER_S, Clock
from models.errors import PowerplaneError

log = logging.getLogger("powerplane.agent")

Publish = Callable[[str, bytes], None]


def _num(x: float | None) -> float | None:
    return None if x is None or x != x else round(float(x), 2)


@dataclass
class AgentStats:
    """What one node agent did."""

    applied: int = 0
    renewed: int = 0  # valid commands whose caps were already in force
    fallbacks: int = 0
    resumed: int = 0
    apply_errors: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    apply_ms: list[float] = field(default_factory=list)  # last 1000


class NodeAgent:
    """Caps one node's GPUs as the controller commands, within a lease."""

    def __init__(self, site: str, node: str, key: SiteKey, backend: GpuBackend, clock: Clock,
                 publish: Publish | None = None, *,
                 prefix: str = "powerplane", safe_cap_w: float | None = None, status_every_s: float = 5.0,
                 state_dir: str | Path | None = None) -> None:
        self.site, self.node, self.key, self.backend, self.clock = site, node, key, backend, clock
        self.prefix = prefix
        self._publish: Publish = publish or (lambda topic, payload: None)
        self.status_every_s = status_every_s
        self._safe_cap_w = safe_cap_w
        self.safe_caps: tuple[float, ...] = ()
        self.limits: BoardLimits | None = None
        self.mode: Mode = "starting"
        self.mode_since_ns = clock.now_ns()
        self.last_seq = 0
        self.plan_id = 0
        self.requested: tuple[float, ...] = ()
        self.enforced: tuple[float, ...] = ()
        self.lease_expires_ns = 0
        self.applied_ns = 0
        self.last_apply_ms = 0.0
        self.last_reject = ""
        self.stats = AgentStats()
        self.topic = caps_topic(prefix, site, node)
        self.status_topic = status_topic(prefix, site, node)
        self._state_path = Path(state_dir) / f"{node.replace('/', '@')}.json" if state_dir else None
        self._lock = asyncio.Lock()
        self._next_status_ns = 0

    def bind(self, publish: Publish) -> None:
        """Send statuses through ``publish`` (the host's MQTT connection)."""
        self._publish = publish

    # ---- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        """Read the boards' ranges and the last applied seq; apply the safe cap."""
        self.limits = await self.backend.open()
        lo, hi = self.limits.min_w, self.limits.max_w
        safe = self._safe_cap_w
        self.safe_caps = tuple(min(max(safe if safe is not None else a, a), b) for a, b in zip(lo, hi, strict=True))
        self.last_seq = self._load_seq()
        await self._enforce(self.safe_caps, "starting: safe cap until the first command")
        self.publish_status()
        # Spread the heartbeats of many nodes over the period rather than all at once.
        self._next_status_ns = self.clock.now_ns() + int(random.random() * self.status_every_s * NS_PER_S)

    async def close(self) -> None:
        """Release the backend (the limits stay as set)."""
        await self.backend.close()

    # ---- commands -------------------------------------------------------------------------
    async def handle(self, payload: bytes) -> CapCommand | Rejected:
        """Check and apply one cap command; return it, or why it was refused."""
        assert self.limits is not None, "open() first"
        async with self._lock:
            now = self.clock.now_ns()
            res = verify_command(payload, self.key, site=self.site, node=self.node, now_ns=now,
                                 last_seq=self.last_seq, min_w=self.limits.min_w, max_w=self.limits.max_w)
            if isinstance(res, Rejected):
                self.stats.rejected[res.reason] += 1
                self.last_reject = f"{res.reason}: {res.detail}"
                # A stale seq is what a retained command looks like after a restart: not worth a warning.
                level = logging.DEBUG if res.reason == "stale_seq" else logging.WARNING
                log.log(level, "%s: rejected command (seq %s): %s: %s", self.node, res.seq, res.reason, res.detail)
                if res.reason != "stale_seq":
                    self.publish_status()
                return res
            changed = res.caps_w != self.enforced
            enforced_before = self.enforced or tuple(float("inf") for _ in res.caps_w)
            was = self.mode
            self.last_seq = res.seq
            self.plan_id = res.plan_id
            self.requested = res.caps_w
            self.lease_expires_ns = res.expires_ns
            if changed:
                try:
                    await self._enforce(res.caps_w, f"plan {res.plan_id}")
                except PowerplaneError as exc:
                    self.stats.apply_errors += 1
                    log.error("%s: could not apply plan %d: %s", self.node, res.plan_id, exc)
                    self.publish_status()
                    return res
                self.stats.applied += 1
            else:
                self.stats.renewed += 1
            if self.mode != "controlled":
                self.mode_since_ns = now
            self.mode = "controlled"
            self._save_seq()
            if was != "controlled":
                self.stats.resumed += was == "fallback"
                log.info("%s: controlled (plan %d, lease %.1f s)", self.node, res.plan_id,
                         (res.expires_ns - now) / NS_PER_S)
            # Acknowledge a cut at once (the controller times its settling); raises and
            # renewals show in the next heartbeat.
            if was != "controlled" or any(c < e for c, e in zip(res.caps_w, enforced_before, strict=False)):
                self.publish_status()
            return res

    async def check_lease(self) -> bool:
        """Fall back to the safe cap if the lease ran out; True if it just did."""
        async with self._lock:
            if self.mode != "controlled" or self.clock.now_ns() < self.lease_expires_ns:
                return False
            caps = tuple(min(c, s) for c, s in zip(self.enforced or self.safe_caps, self.safe_caps, strict=True))
            self.mode = "fallback"
            self.mode_since_ns = self.clock.now_ns()
            self.stats.fallbacks += 1
            log.warning("%s: lease of plan %d ran out: falling back to the safe cap (%.0f W per GPU)",
                        self.node, self.plan_id, max(self.safe_caps))
            try:
                await self._enforce(caps, "lease fallback")
            except PowerplaneError as exc:
                self.stats.apply_errors += 1
                log.error("%s: could not apply the safe cap: %s", self.node, exc)
            self.publish_status()
            return True

    async def _enforce(self, caps: Sequence[float], why: str) -> None:
        t0 = time.perf_counter()
        enforced = await self.backend.apply(caps)
        ms = (time.perf_counter() - t0) * 1e3
        self.enforced = tuple(enforced)
        if not self.requested:
            self.requested = tuple(caps)
        self.applied_ns = self.clock.now_ns()
        self.last_apply_ms = ms
        self.stats.apply_ms.append(ms)
        del self.stats.apply_ms[:-1000]
        log.debug("%s: %s: limits %s W in %.1f ms", self.node, why, list(self.enforced), ms)

    # ---- status ---------------------------------------------------------------------------
    def status(self, power_w: Sequence[float | None] = (), enforced_w: Sequence[float | None] = ()) -> AgentStatus:
        """The node's status now (``power_w``/``enforced_w`` as last read from the boards)."""
        return AgentStatus(
            site=self.site, node=self.node, ts_ns=self.clock.now_ns(), mode=self.mode, seq=self.last_seq,
            plan_id=self.plan_id, requested_w=[float(x) for x in self.requested],
            enforced_w=[_num(x) for x in (enforced_w or self.enforced)],
            power_w=[_num(x) for x in power_w], apply_ms=round(self.last_apply_ms, 3), applied_ns=self.applied_ns,
            lease_expires_ns=self.lease_expires_ns, safe_cap_w=max(self.safe_caps, default=0.0),
            backend=self.backend.name, rejected=dict(self.stats.rejected), last_reject=self.last_reject,
            mode_since_ns=self.mode_since_ns)

    def publish_status(self, power_w: Sequence[float | None] = (),
                       enforced_w: Sequence[float | None] = ()) -> None:
        """Publish the status now."""
        self._publish(self.status_topic, self.status(power_w, enforced_w).to_json())

    def status_due(self, now_ns: int) -> bool:
        """Whether the next heartbeat is due at ``now_ns``."""
        return now_ns >= self._next_status_ns

    async def heartbeat(self) -> bool:
        """Publish the status with a fresh board reading if one is due; True if it was."""
        now = self.clock.now_ns()
        if now < self._next_status_ns:
            return False
        self._next_status_ns = now + int(self.status_every_s * NS_PER_S)
        try:
            r = await self.backend.read()
        except PowerplaneError as exc:
            log.error("%s: cannot read the GPUs: %s", self.node, exc)
            self.publish_status()
            return True
        self.publish_status(r.power_w, r.enforced_w)
        return True

    # ---- replay protection across restarts ---------------------------------------------------
    def _load_seq(self) -> int:
        if self._state_path is None or not self._state_path.exists():
            return 0
        try:
            return int(json.loads(self._state_path.read_text())["seq"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("%s: unreadable state %s (%s): accepting any fresh command", self.node, self._state_path, exc)
            return 0

    def _save_seq(self) -> None:
        if self._state_path is None:
            return
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seq": self.last_seq, "plan_id": self.plan_id}))
        os.replace(tmp, self._state_path)


class AgentHost:
    """Runs node agents over one MQTT connection until stopped."""

    def __init__(self, agents: Sequence[NodeAgent], addr: MqttAddress, clock: Clock, *, client_id: str,
                 check_every_s: float = 0.25) -> None:
        self.agents = {a.topic: a for a in agents}
        for a in agents:
            a.bind(self.publish)
        self.addr = addr
        self.clock = clock
        self.client_id = client_id
        self.check_every_s = check_every_s
        self.link: MqttLink | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish a status (QoS 1, retained)."""
        if self.link is not None:
            self.link.publish(topic, payload, qos=1, retain=True)

    async def start(self) -> None:
        """Connect, open every node's GPUs (safe cap) and subscribe to their cap topics."""
        # Persistent session: QoS 1 commands sent while the agent was briefly away are delivered.
        self.link = MqttLink(self.addr, self.client_id, clean_session=False)
        for topic in self.agents:
            self.link.subscribe(topic, qos=1)
        self.link.start()
        await asyncio.gather(*(a.open() for a in self.agents.values()))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._commands(), name="agent-commands"),
                       loop.create_task(self._watch(), name="agent-lease")]

    async def stop(self) -> None:
        """Stop; the GPUs keep their limits."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for a in self.agents.values():
            await a.close()
        if self.link is not None:
            self.link.stop()

    async def _commands(self) -> None:
        assert self.link is not None
        pending: set[asyncio.Task[object]] = set()
        while True:
            topic, payload = await self.link.messages.get()
            agent = self.agents.get(topic)
            if agent is None:
                log.warning("message on %s (node %s) that no agent here serves", topic,
                            node_of_topic(topic.rsplit("/", 1)[-1]))
                continue
            # Nodes apply concurrently (a slow board must not hold up the others); one node's
            # commands stay in order because its lock wakes waiters first come, first served.
            t: asyncio.Task[object] = asyncio.get_running_loop().create_task(agent.handle(payload))
            pending.add(t)
            t.add_done_callback(pending.discard)

    async def _watch(self) -> None:
        while True:
            now = self.clock.now_ns()
            # Concurrently: one node's fallback must not wait for another's board to answer.
            await asyncio.gather(*(a.check_lease() for a in self.agents.values()
                                   if a.mode == "controlled" and now >= a.lease_expires_ns))
            await asyncio.gather(*(a.heartbeat() for a in self.agents.values() if a.status_due(now)))
            await self.clock.sleep(self.check_every_s)

    def modes(self) -> Counter[str]:
        """How many nodes are in each mode."""
        return Counter(a.mode for a in self.agents.values())
