"""The capping agent: applies the controller's rack commands to the GPUs it serves, within a lease.

A ``CapUnit`` is what one agent enforces: one node (NVML on the node itself) or the nodes
an agent serves in one rack (the simulated backend; a rack-level management controller).
It verifies each signed rack command (``messages.verify_command``), takes its own slice of
the caps, applies it through its backend and reports a status. It is written against a
backend, a clock and a ``publish`` callable, so it is tested with plain values and a
frozen clock. ``AgentHost`` runs units over one MQTT connection.

Modes::

    starting    -> safe cap applied at start, waiting for the first valid command
    controlled  -> enforcing the caps of the newest valid command until its lease runs out
    fallback    -> the lease ran out (controller, broker or network gone): safe cap applied;
                   the next valid command returns the unit to ``controlled``

The fallback never raises a cap: it applies ``min(current cap, safe cap)`` per GPU.

**Two live epochs.** A command of a newer epoch (another controller took authority) is
obeyed at once, but while the lease of the older epoch's last command is still live, that
command's caps keep bounding what the unit enforces: the minimum of the two per GPU. The
old controller may still be running on a stale view (partitioned from etcd, or not yet
aware that it lost authority), and the site's limits were checked against *its* plan for
every rack that still follows it; so until that lease ends no cap rises above either plan,
and none above the new authority's. When the old lease ends the new caps apply alone.
Commands of an older epoch than the newest applied are refused (``stale_seq``), as ever.

The lease watch runs on its own task, apart from message handling: commands arrive through a
bounded inbox that drops oversized payloads in the network thread, and the handler yields
after every message, so no flood delays a fallback by more than one message's work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bus.mqtt import Inbox, MqttAddress, MqttLink
from controllers.actuation.backends import GpuBackend
from controllers.actuation.layout import RackLayout
from controllers.actuation.messages import (
    MAX_COMMAND_BYTES,
    AgentStatus,
    CapCommand,
    Rejected,
    SiteKey,
    caps_topic,
    order,
    short,
    status_topic,
    verify_command,
)
from models.clock import NS_PER_S, Clock
from models.errors import PowerplaneError
from models.histogram import Histogram

log = logging.getLogger("powerplane.agent")

Publish = Callable[[str, bytes], None]
# After a cut, report again this soon (site s): the controller times the draw following the cut.
PROBES_AFTER_S = (0.3, 0.6, 0.9)
STALE_STREAK_WARN = 3


@dataclass
class AgentStats:
    """What one unit did."""

    applied: int = 0
    renewed: int = 0  # valid commands whose caps were already in force
    fallbacks: int = 0
    resumed: int = 0
    apply_errors: int = 0
    held: int = 0  # newer-epoch commands applied under an older epoch's live lease (the minimum of both)
    rejected: Counter[str] = field(default_factory=Counter)
    apply_ms: list[float] = field(default_factory=list)  # last 1000
    apply_hist: Histogram = field(default_factory=lambda: Histogram(1.0, 60_000.0))  # ms, whole run
    transitions: list[tuple[str, int]] = field(default_factory=list)  # (mode, since_ns), last 1000


class CapUnit:
    """Caps the GPUs of ``nodes`` (rack-local indices) of one rack as the controller commands."""

    def __init__(self, site: str, layout: RackLayout, nodes: Sequence[int], key: SiteKey, backend: GpuBackend,
                 clock: Clock, publish: Publish | None = None, *, prefix: str = "powerplane",
                 lease_s: float = 15.0, safe_cap_w: float | None = None, status_every_s: float = 5.0,
                 state_dir: str | Path | None = None) -> None:
        self.site, self.layout, self.key, self.backend, self.clock = site, layout, key, backend, clock
        self.nodes = sorted(int(k) for k in nodes)
        if not self.nodes or self.nodes[-1] >= layout.n_nodes or self.nodes[0] < 0:
            raise ValueError(f"nodes {nodes} are not nodes of rack {layout.rack}")
        self.sel = np.concatenate([np.arange(layout.gpu_slice(k).start, layout.gpu_slice(k).stop)
                                   for k in self.nodes])
        self.prefix = prefix
        self.lease_s = lease_s
        self._publish: Publish = publish or (lambda topic, payload: None)
        self.status_every_s = status_every_s
        self._safe_cap_w = safe_cap_w
        self.safe_caps = np.zeros(0)
        self.mode = "starting"
        self.mode_since_ns = clock.now_ns()
        self.last_order = 0
        self.epoch = 0
        self.seq = 0
        self.plan_id = 0
        self.requested = np.zeros(0)  # what was last asked of the boards (the bound below, applied)
        self.commanded = np.zeros(0)  # the newest valid command's caps for this unit
        # Older epochs whose leases are still live: (epoch, caps, lease end). See the module doc.
        self.held: list[tuple[int, np.ndarray, int]] = []
        self.enforced = np.zeros(0)
        self.lease_expires_ns = 0
        self.last_command_ns = 0  # site time of the last valid command (the lease's age is from it)
        self.last_apply_ms = 0.0
        self.last_reject = ""
        self.stale_streak = 0
        self.stats = AgentStats()
        whole = len(self.nodes) == layout.n_nodes
        self.sender = layout.rack if whole else layout.nodes[self.nodes[0]]
        self.name = layout.rack if whole else ", ".join(layout.nodes[k] for k in self.nodes[:3])
        self.topic = caps_topic(prefix, site, layout.rack)
        self.status_topic = status_topic(prefix, site, self.sender)
        self._state_path = Path(state_dir) / f"{self.sender.replace('/', '@')}.json" if state_dir else None
        self._save_errors = 0
        self._rejects_logged: set[str] = set()
        self._lock = asyncio.Lock()
        self._next_status_ns = 0
        self._probes: list[int] = []

    def bind(self, publish: Publish) -> None:
        """Send statuses through ``publish`` (the host's MQTT connection)."""
        self._publish = publish

    # ---- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        """Read the boards' ranges and the last applied (epoch, seq); apply the safe cap."""
        limits = await self.backend.open()
        lo, hi = np.asarray(limits.min_w, np.float64), np.asarray(limits.max_w, np.float64)
        if lo.size != self.sel.size:
            raise PowerplaneError(f"{self.name}: the backend has {lo.size} GPUs, the site file {self.sel.size}")
        safe = self._safe_cap_w
        self.safe_caps = np.clip(np.full(lo.size, safe) if safe is not None else lo, lo, hi)
        self.last_order = self._load_order()
        self.epoch, self.seq = self.last_order >> 40, self.last_order & ((1 << 40) - 1)
        await self._enforce(self.safe_caps, "starting: safe cap until the first command")
        self._transition("starting", self.clock.now_ns())
        self.publish_status()
        # Spread the heartbeats of many units over the period rather than all at once.
        self._next_status_ns = self.clock.now_ns() + int(random.random() * self.status_every_s * NS_PER_S)

    async def close(self) -> None:
        """Release the backend (the limits stay as set)."""
        await self.backend.close()

    def _transition(self, mode: str, now_ns: int) -> None:
        self.mode = mode
        self.mode_since_ns = now_ns
        self.stats.transitions.append((mode, now_ns))
        del self.stats.transitions[:-1000]

    # ---- commands -------------------------------------------------------------------------
    async def handle(self, payload: bytes) -> CapCommand | Rejected:
        """Check and apply one rack command; return it, or why it was refused. Never raises."""
        async with self._lock:
            now = self.clock.now_ns()
            res = verify_command(payload, self.key, site=self.site, layout=self.layout, now_ns=now,
                                 last_order=self.last_order, lease_s=self.lease_s)
            if isinstance(res, Rejected):
                self._rejected(res)
                return res
            self.stale_streak = 0
            self._rejects_logged.clear()
            caps = res.caps_w[self.sel]
            if res.epoch > self.epoch and self.mode == "controlled" and now < self.lease_expires_ns \
                    and self.commanded.shape == caps.shape:
                self.held.append((self.epoch, self.commanded.copy(), self.lease_expires_ns))
                self.stats.held += 1
                log.warning("%s: epoch %d took over while epoch %d's lease runs %.1f s more: enforcing the lower "
                            "of both plans until it ends", self.name, res.epoch, self.epoch,
                            (self.lease_expires_ns - now) / NS_PER_S)
            bound = self._bounded(caps, now)
            changed = (self.mode != "controlled" or self.enforced.shape != bound.shape
                       or not np.array_equal(bound, self.requested))
            cut = self.enforced.shape == bound.shape and bool((bound < self.enforced - 1e-9).any())
            was = self.mode
            self.commanded = caps
            self.last_order, self.epoch, self.seq = res.order, res.epoch, res.seq
            self.plan_id = res.plan_id
            self.lease_expires_ns = res.expires_ns
            self.last_command_ns = now
            if changed:
                try:
                    await self._enforce(bound, f"plan {res.plan_id}")
                except PowerplaneError as exc:
                    self.stats.apply_errors += 1
                    log.error("%s: could not apply plan %d: %s", self.name, res.plan_id, exc)
                    self.publish_status()
                    return res
                # Only caps that took count as requested: after a failed apply the next command
                # with the same caps (a renewal) must try again, not count as already in force.
                self.requested = bound
                self.stats.applied += 1
            else:
                self.stats.renewed += 1
            if was != "controlled":
                self._transition("controlled", now)
            self._save_order()
            if was != "controlled":
                self.stats.resumed += was == "fallback"
                log.info("%s: controlled (plan %d, lease %.1f s)", self.name, res.plan_id,
                         (res.expires_ns - now) / NS_PER_S)
            # Acknowledge a cut at once (the controller times its settling) and report the
            # draw again soon after; raises and renewals show in the next heartbeat.
            if was != "controlled" or cut:
                self.publish_status()
                self._probes = [now + int(s * NS_PER_S) for s in PROBES_AFTER_S]
            return res

    def _rejected(self, res: Rejected) -> None:
        self.stats.rejected[res.reason] += 1
        self.last_reject = f"{res.reason}: {short(res.detail)}"
        if res.reason == "stale_seq":
            # A retained command after a restart is one stale_seq; a streak means the
            # controller's (epoch, seq) went backwards and this unit is locked out.
            self.stale_streak += 1
            level = logging.WARNING if self.stale_streak == STALE_STREAK_WARN else logging.DEBUG
            log.log(level, "%s: %d stale commands in a row (last %s): is a controller with an old epoch "
                    "publishing?", self.name, self.stale_streak, short(res.detail))
            if self.stale_streak >= STALE_STREAK_WARN:
                self.publish_status()
            return
        # First of each reason at WARNING, repeats at DEBUG until a valid command: a junk flood
        # must not become a log flood written from the event loop.
        level = logging.WARNING if res.reason not in self._rejects_logged else logging.DEBUG
        self._rejects_logged.add(res.reason)
        log.log(level, "%s: rejected command: %s: %s", self.name, res.reason, short(res.detail))
        self.publish_status()

    def _bounded(self, caps: np.ndarray, now_ns: int) -> np.ndarray:
        """``caps`` bounded by every older epoch whose lease is still live (dropping the ended ones)."""
        self.held = [h for h in self.held if h[2] > now_ns and h[1].shape == caps.shape]
        for _epoch, older, _end in self.held:
            caps = np.minimum(caps, older)
        return caps

    @property
    def held_epoch(self) -> int:
        """The newest older epoch still bounding the caps (0: none)."""
        return max((h[0] for h in self.held), default=0)

    def held_until_ns(self) -> int | None:
        """When the next older epoch's lease ends (None: nothing held)."""
        return min((h[2] for h in self.held), default=None)

    def lease_due(self, now_ns: int) -> bool:
        """Whether the watch must look at this unit now: its lease ran out, or an older one it held did."""
        held = self.held_until_ns()
        return (self.mode == "controlled" and now_ns >= self.lease_expires_ns) or (held is not None
                                                                                     and now_ns >= held)

    async def _release_held(self, now: int) -> None:
        # An older epoch's lease ended: the newest command's caps apply alone (this may raise caps
        # to the plan of the authority that sent them, never above it).
        bound = self._bounded(self.commanded, now)
        if self.mode != "controlled" or now >= self.lease_expires_ns or np.array_equal(bound, self.requested):
            return
        try:
            await self._enforce(bound, f"epoch {self.epoch} alone (an older lease ended)")
            self.requested = bound
        except PowerplaneError as exc:
            self.stats.apply_errors += 1
            log.error("%s: could not apply plan %d: %s", self.name, self.plan_id, exc)
        self.publish_status()

    async def check_lease(self) -> bool:
        """Fall back to the safe cap if the lease ran out; True if it just did."""
        async with self._lock:
            now = self.clock.now_ns()
            held = self.held_until_ns()
            if held is not None and now >= held:
                await self._release_held(now)
            if self.mode != "controlled" or now < self.lease_expires_ns:
                return False
            self.held = []
            base = self.enforced if self.enforced.shape == self.safe_caps.shape else self.safe_caps
            caps = np.minimum(base, self.safe_caps)
            self._transition("fallback", now)
            self.stats.fallbacks += 1
            log.warning("%s: lease of plan %d ran out: falling back to the safe cap (%.0f W per GPU)",
                        self.name, self.plan_id, float(self.safe_caps.max()))
            try:
                await self._enforce(caps, "lease fallback")
            except PowerplaneError as exc:
                self.stats.apply_errors += 1
                log.error("%s: could not apply the safe cap: %s", self.name, exc)
            self.publish_status()
            return True

    async def _enforce(self, caps: np.ndarray, why: str) -> None:
        t0 = time.perf_counter()
        enforced = await self.backend.apply(caps.tolist())
        ms = (time.perf_counter() - t0) * 1e3
        self.enforced = np.asarray(enforced, np.float64)
        if self.requested.shape != caps.shape:
            self.requested = caps.copy()
        self.last_apply_ms = ms
        self.stats.apply_ms.append(ms)
        self.stats.apply_hist.add(np.array([ms]))
        del self.stats.apply_ms[:-1000]
        log.debug("%s: %s: limits set in %.1f ms", self.name, why, ms)

    # ---- status ---------------------------------------------------------------------------
    def status(self, power_w: Sequence[float | None] = (), enforced_w: Sequence[float | None] = (),
               power_ts_ns: int | None = None) -> AgentStatus:
        """The unit's status now (``power_w``/``enforced_w`` as last read from the boards, at ``power_ts_ns``)."""
        n = self.sel.size

        def arr(x: Sequence[float | None], default: np.ndarray) -> np.ndarray:
            if len(x) != n:
                return default if default.shape == (n,) else np.full(n, np.nan)
            return np.array([np.nan if v is None else v for v in x], np.float64)

        return AgentStatus(
            site=self.site, rack=self.layout.rack, nodes=self.nodes, ts_ns=self.clock.now_ns(), mode=self.mode,
            since_ns=self.mode_since_ns, epoch=self.epoch, seq=self.seq, plan_id=self.plan_id,
            lease_expires_ns=self.lease_expires_ns, enforced_w=arr(enforced_w, self.enforced),
            power_w=arr(power_w, np.full(n, np.nan)), apply_ms=self.last_apply_ms,
            safe_cap_w=float(self.safe_caps.max()) if self.safe_caps.size else 0.0, backend=self.backend.name,
            rejected=dict(self.stats.rejected), last_reject=self.last_reject, stale_streak=self.stale_streak,
            power_ts_ns=power_ts_ns or 0, held_epoch=self.held_epoch)

    def publish_status(self, power_w: Sequence[float | None] = (),
                       enforced_w: Sequence[float | None] = (), power_ts_ns: int | None = None) -> None:
        """Publish the status now."""
        self._publish(self.status_topic, self.status(power_w, enforced_w, power_ts_ns).to_json())

    def next_due_ns(self) -> int:
        """When this unit next needs the watch: its lease end (controlled), heartbeat or probe."""
        due = self._next_status_ns
        if self._probes:
            due = min(due, self._probes[0])
        if self.mode == "controlled":
            due = min(due, self.lease_expires_ns)
        held = self.held_until_ns()
        return due if held is None else min(due, held)

    def status_due(self, now_ns: int) -> bool:
        """Whether a heartbeat or a probe after a cut is due at ``now_ns``."""
        return now_ns >= self._next_status_ns or bool(self._probes and now_ns >= self._probes[0])

    async def heartbeat(self) -> bool:
        """Publish the status with a fresh board reading if one is due; True if it was."""
        now = self.clock.now_ns()
        if not self.status_due(now):
            return False
        if self._probes and now >= self._probes[0]:
            self._probes = [t for t in self._probes if t > now]
        if now >= self._next_status_ns:
            self._next_status_ns = now + int(self.status_every_s * NS_PER_S)
        try:
            r = await self.backend.read()
        except PowerplaneError as exc:
            log.error("%s: cannot read the GPUs: %s", self.name, exc)
            self.publish_status()
            return True
        self.publish_status(r.power_w, r.enforced_w, r.power_ts_ns)
        return True

    # ---- replay protection across restarts ---------------------------------------------------
    def _load_order(self) -> int:
        if self._state_path is None or not self._state_path.exists():
            return 0
        try:
            d = json.loads(self._state_path.read_text())
            return order(int(d["epoch"]), int(d["seq"]))
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            log.error("%s: unreadable state %s (%s): accepting any fresh command", self.name, self._state_path, exc)
            return 0

    def _save_order(self) -> None:
        if self._state_path is None:
            return
        tmp = self._state_path.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"epoch": self.epoch, "seq": self.seq, "plan_id": self.plan_id}))
            os.replace(tmp, self._state_path)
        except OSError as exc:
            # The caps are applied; only replay protection across a restart is lost until the
            # state can be written again. Raising here would end the host's command task.
            self._save_errors += 1
            log.log(logging.ERROR if self._save_errors == 1 else logging.DEBUG,
                    "%s: cannot keep the applied (epoch, seq) in %s: %s", self.name, self._state_path, exc)
            return
        self._save_errors = 0


class AgentHost:
    """Runs capping units over one MQTT connection until stopped."""

    def __init__(self, units: Sequence[CapUnit], addr: MqttAddress, clock: Clock, *, client_id: str,
                 check_every_s: float = 0.25, inbox: int = 1024, link: MqttLink | None = None) -> None:
        self.units = list(units)
        self.by_topic: dict[str, list[CapUnit]] = {}
        for u in units:
            u.bind(self.publish)
            self.by_topic.setdefault(u.topic, []).append(u)
        self.addr = addr
        self.clock = clock
        self.client_id = client_id
        self.check_every_s = check_every_s
        self.inbox = Inbox(maxlen=inbox, max_bytes=MAX_COMMAND_BYTES)
        # One connection per process (with authentication, the client id is the user name):
        # the sim backend's boards share it. Persistent session: QoS 1 commands sent while the
        # agent was briefly away are delivered.
        self.link: MqttLink | None = link if link is not None else MqttLink(addr, client_id, clean_session=False)
        self._tasks: list[asyncio.Task[None]] = []
        self.opened = False  # every unit's GPUs opened (safe cap applied)
        self.last_watch_wall = 0.0  # time.monotonic() of the lease watch's last round (liveness)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish a status (QoS 1, not retained: a stale status must not outlive its agent)."""
        if self.link is not None:
            self.link.publish(topic, payload, qos=1, retain=False)

    async def start(self) -> None:
        """Connect, open every unit's GPUs (safe cap) and subscribe to their racks' cap topics."""
        assert self.link is not None
        for topic in self.by_topic:
            self.link.subscribe(topic, qos=1, inbox=self.inbox)
        self.link.start()
        await asyncio.gather(*(u.open() for u in self.units))
        self.opened = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._commands(), name="agent-commands"),
                       loop.create_task(self._watch(), name="agent-lease")]

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop within ``timeout_s``; the GPUs keep their limits."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
            for t in pending:
                log.error("agent: %s did not stop within %.0f s; abandoned", t.get_name(), timeout_s)
        for u in self.units:
            try:
                await asyncio.wait_for(u.close(), timeout_s)
            except (TimeoutError, PowerplaneError) as exc:
                log.error("%s: closing the backend failed: %s", u.name, exc)
        if self.link is not None:
            link, self.link = self.link, None
            await asyncio.wait_for(asyncio.to_thread(link.stop), timeout_s)

    async def _commands(self) -> None:
        while True:
            await self.inbox.wait()
            for topic, payload in self.inbox.drain():
                for u in self.by_topic.get(topic, ()):
                    await u.handle(payload)
                # Yield after every message: the lease watch must never wait behind a burst.
                await asyncio.sleep(0)

    async def _watch(self) -> None:
        while True:
            self.last_watch_wall = time.monotonic()
            try:
                now = self.clock.now_ns()
                # Concurrently: one unit's fallback must not wait for another's board to answer.
                await asyncio.gather(*(u.check_lease() for u in self.units if u.lease_due(now)))
                await asyncio.gather(*(u.heartbeat() for u in self.units if u.status_due(now)))
            except Exception:  # the watch must outlive any bug in a backend
                log.exception("agent: lease watch failed; retrying")
            # Wake at the next lease end, heartbeat or probe, and at least every check_every_s.
            now = self.clock.now_ns()
            due = min((u.next_due_ns() for u in self.units), default=now)
            await self.clock.sleep(min(self.check_every_s, max(0.0, (due - now) / NS_PER_S)))

    def modes(self) -> Counter[str]:
        """How many nodes are in each mode."""
        c: Counter[str] = Counter()
        for u in self.units:
            c[u.mode] += len(u.nodes)
        return c

    def summary(self) -> dict[str, object]:
        """What every unit did, for a summary file: modes, counts, and mode transitions per unit."""
        return {
            "nodes": sum(len(u.nodes) for u in self.units),
            "modes": dict(self.modes()),
            "applied": sum(u.stats.applied for u in self.units),
            "renewed": sum(u.stats.renewed for u in self.units),
            "fallbacks": sum(u.stats.fallbacks for u in self.units),
            "apply_errors": sum(u.stats.apply_errors for u in self.units),
            "held": sum(u.stats.held for u in self.units),
            "rejected": dict(sum((u.stats.rejected for u in self.units), Counter())),
            "units": [{"sender": u.sender, "nodes": len(u.nodes), "transitions": u.stats.transitions}
                      for u in self.units],
        }
