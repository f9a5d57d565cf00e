"""The per-node actuation design as it shipped at commit 8cbfd99, for ``bench/period.py`` to compare with.

One signed JSON command per node on ``<prefix>/<site>/caps/<node>``, one JSON status per
node on ``<prefix>/<site>/status/<node>``, parsed with ``json`` into one Python object per
node and taken in node by node. The code below is that commit's
``controllers/actuation/{messages,publisher,verify,actuator}.py`` (and the status
``NodeAgent.status`` built), with only these changes, none of which slows it down:

* the actuator reads statuses from the same bounded ``bus.mqtt.Inbox`` as today's (the
  old link handed each message to the event loop with ``call_soon_threadsafe``: more work
  per message, so the peer here is, if anything, faster than what shipped);
* its methods have today's ``ControlPlane`` signatures (events as ``(event, None)`` pairs,
  ``statuses(now_ns)``, ``health()``), so both designs run in the same control plane with
  the same solver, store hand-off and hooks: only actuation differs.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from bus.mqtt import Inbox, MqttLink
from controllers.actuation.messages import SiteKey, caps_topic
from controllers.plan import CapPlan
from controllers.safety import OVERDRAW_SHARE, OVERDRAW_W
from models.clock import NS_PER_S
from models.events import EV_LEASE_FALLBACK, EV_NON_COMPLIANT, Event
from models.readings import REGISTRY, ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.topology import L_NODE, Topology

log = logging.getLogger("bench.pernode")
VERSION = 1
ALG = "HMAC-SHA256"
BOUNDS_TOL_W = 0.5
ENFORCE_TOL_W = 1.0
F64 = NDArray[np.float64]
Mode = Literal["starting", "controlled", "fallback"]
HookEvent = tuple[Event, dict[str, Any] | None]


# ---- messages (8cbfd99 controllers/actuation/messages.py) ----------------------------------
@dataclass(frozen=True, slots=True)
class CapCommand:
    """Caps for every GPU of one node, valid until ``expires_ns``."""

    site: str
    node: str
    seq: int
    plan_id: int
    issued_ns: int
    expires_ns: int
    caps_w: tuple[float, ...]
    reason: str = ""

    def body(self) -> bytes:
        """The JSON text that is signed and sent."""
        d: dict[str, Any] = {"v": VERSION, "site": self.site, "node": self.node, "seq": self.seq,
                             "plan_id": self.plan_id, "issued_ns": self.issued_ns, "expires_ns": self.expires_ns,
                             "caps_w": list(self.caps_w), "reason": self.reason}
        return json.dumps(d, separators=(",", ":")).encode()

    def envelope(self, key: SiteKey) -> bytes:
        """The signed message as published."""
        body = self.body()
        return json.dumps({"alg": ALG, "kid": key.kid, "body": body.decode(), "sig": key.sign(body)},
                          separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command the agent refused, and why."""

    reason: str
    detail: str
    seq: int | None = None


def verify_command(payload: bytes, key: SiteKey, *, site: str, node: str, now_ns: int, last_seq: int,
                   min_w: list[float], max_w: list[float]) -> CapCommand | Rejected:
    """Open and check one node's cap command: signature, target, freshness, lease, bounds."""
    try:
        env = json.loads(payload)
        if not isinstance(env, dict) or not isinstance(env.get("body"), str) or not isinstance(env.get("sig"), str):
            return Rejected("malformed", "not a signed envelope (body and sig strings)")
    except (ValueError, UnicodeDecodeError) as exc:
        return Rejected("malformed", f"not JSON: {exc}")
    if env.get("alg", ALG) != ALG:
        return Rejected("malformed", f"unsupported alg {env.get('alg')!r}")
    body = env["body"].encode()
    if not key.verify(body, env["sig"]):
        return Rejected("bad_signature", "signature does not match")
    try:
        d = json.loads(body)
        cmd = CapCommand(site=str(d["site"]), node=str(d["node"]), seq=int(d["seq"]), plan_id=int(d["plan_id"]),
                         issued_ns=int(d["issued_ns"]), expires_ns=int(d["expires_ns"]),
                         caps_w=tuple(float(x) for x in d["caps_w"]), reason=str(d.get("reason", "")))
        if int(d.get("v", 0)) != VERSION:
            return Rejected("malformed", f"version {d.get('v')!r}, this agent speaks {VERSION}", cmd.seq)
    except (ValueError, TypeError, KeyError) as exc:
        return Rejected("malformed", f"bad body: {exc!r}")
    if cmd.site != site or cmd.node != node:
        return Rejected("wrong_target", f"for {cmd.site}/{cmd.node}, this is {site}/{node}", cmd.seq)
    if cmd.seq <= last_seq:
        return Rejected("stale_seq", f"seq {cmd.seq} is not newer than {last_seq}", cmd.seq)
    if cmd.expires_ns <= now_ns:
        return Rejected("expired", f"lease ran out {(now_ns - cmd.expires_ns) / 1e9:.1f} s ago", cmd.seq)
    if len(cmd.caps_w) != len(min_w):
        return Rejected("out_of_bounds", f"{len(cmd.caps_w)} caps for {len(min_w)} GPUs", cmd.seq)
    for i, (c, lo, hi) in enumerate(zip(cmd.caps_w, min_w, max_w, strict=True)):
        if not math.isfinite(c) or c < lo - BOUNDS_TOL_W or c > hi + BOUNDS_TOL_W:
            return Rejected("out_of_bounds", f"GPU {i}: cap {c} W outside {lo:g}..{hi:g} W", cmd.seq)
    return cmd


@dataclass(slots=True)
class AgentStatus:
    """What one node's agent enforces and measures."""

    site: str
    node: str
    ts_ns: int
    mode: Mode
    seq: int
    plan_id: int
    requested_w: list[float]
    enforced_w: list[float | None]
    power_w: list[float | None]
    apply_ms: float
    applied_ns: int
    lease_expires_ns: int
    safe_cap_w: float
    backend: str
    rejected: dict[str, int]
    last_reject: str = ""
    mode_since_ns: int = 0

    def to_json(self) -> bytes:
        """The status message as published."""
        d = {f: getattr(self, f) for f in _STATUS_FIELDS}
        d["v"] = VERSION
        return json.dumps(d, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> AgentStatus:
        """Parse a status message; raises ``ValueError`` on anything malformed."""
        try:
            d = json.loads(payload)
            if not isinstance(d, dict) or d.pop("v", None) != VERSION:
                raise ValueError(f"not a v{VERSION} agent status")
            st = cls(**d)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"bad agent status: {exc}") from exc
        if st.mode not in ("starting", "controlled", "fallback"):
            raise ValueError(f"bad mode {st.mode!r}")
        _check_types(st)
        return st


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_types(st: AgentStatus) -> None:
    """A status from the wire is believed only with the right types (commit 183b8a6)."""
    for name in ("ts_ns", "seq", "plan_id", "applied_ns", "lease_expires_ns", "mode_since_ns"):
        v = getattr(st, name)
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"agent status: {name} must be an integer, got {v!r}")
    for name in ("apply_ms", "safe_cap_w"):
        if not _is_num(getattr(st, name)):
            raise ValueError(f"agent status: {name} must be a number, got {getattr(st, name)!r}")
    for name, nullable in (("requested_w", False), ("enforced_w", True), ("power_w", True)):
        v = getattr(st, name)
        if not isinstance(v, list) or not all(_is_num(x) or (nullable and x is None) for x in v):
            raise ValueError(f"agent status: {name} must be a list of numbers, got {v!r}")
    if not isinstance(st.rejected, dict) or not all(isinstance(k, str) and isinstance(n, int)
                                                     for k, n in st.rejected.items()):
        raise ValueError(f"agent status: rejected must map reasons to counts, got {st.rejected!r}")
    for name in ("site", "node", "backend", "last_reject"):
        if not isinstance(getattr(st, name), str):
            raise ValueError(f"agent status: {name} must be a string")


_STATUS_FIELDS = tuple(f.name for f in fields(AgentStatus))


def num(x: float | None) -> float | None:
    """A board value as the node agent reported it (``agent._num``: 2 decimals, None unknown)."""
    return None if x is None or x != x else round(float(x), 2)


# ---- publisher (8cbfd99 controllers/actuation/publisher.py) ----------------------------------
@dataclass
class PublishStats:
    """What the publisher sent."""

    plans: int = 0
    commands: int = 0
    lowered: int = 0
    raised: int = 0
    renewed: int = 0


class CapPublisher:
    """Decides which nodes get a command each period, signs and sends them."""

    def __init__(self, site: SiteConfig, topo: Topology, key: SiteKey, send: Any) -> None:
        self.site_id = site.site.name
        self.cfg = site.actuation
        self.topo = topo
        self.key = key
        self._send = send
        self.nodes = topo.ids(L_NODE)
        self.first = topo.node_first_gpu.astype(np.intp)
        self.count = topo.node_gpus.astype(np.intp)
        self.topics = [caps_topic(self.cfg.topic_prefix, self.site_id, n.replace("/", "@")) for n in self.nodes]
        n = len(self.nodes)
        self.sent_w = np.full(topo.n_gpus, np.nan)
        self.sent_ns = np.full(n, -1, np.int64)
        self.seq = np.zeros(n, np.int64)
        self.expires_ns = np.zeros(n, np.int64)
        self.lowered_ns = np.full(n, -1, np.int64)
        self.lowered_seq = np.zeros(n, np.int64)
        self._last_seq = 0
        self.epoch = 0  # the per-node design had no authority epochs (ControlPlane reads one)
        self.stats = PublishStats()
        self.enabled = True

    def quantize(self, caps_w: F64) -> F64:
        """Caps as sent: rounded down to the quantum, never below the GPU's floor or above the plan."""
        q = self.cfg.quantum_w
        t = self.topo
        if q <= 0:
            return caps_w.copy()
        down = np.floor(caps_w / q + 1e-9) * q
        return np.where(caps_w >= t.gpu_max_w, t.gpu_max_w, np.clip(np.maximum(down, t.gpu_min_w), None, caps_w))

    def commands(self, plan: CapPlan, now_ns: int) -> list[tuple[int, CapCommand]]:
        """The (node index, command) pairs to send for ``plan`` at ``now_ns``; updates the send state."""
        t, cfg = self.topo, self.cfg
        caps = self.quantize(plan.caps_w)
        prev = self.sent_w
        never = np.isnan(prev)
        lower = np.where(never, True, caps < prev - 1e-9)
        up = np.where(never, 0.0, caps - prev)
        to_max = (caps >= t.gpu_max_w) & ~never & (prev < t.gpu_max_w)
        first = self.first
        node_lower = np.maximum.reduceat(lower.astype(np.int8), first) > 0
        node_raise = (np.maximum.reduceat(up, first) >= cfg.raise_deadband_w) | \
            (np.maximum.reduceat(to_max.astype(np.int8), first) > 0)
        age = now_ns - self.sent_ns
        node_raise &= age >= int(cfg.raise_every_s * NS_PER_S)
        renew = (self.sent_ns < 0) | (age >= int(cfg.renew_every_s * NS_PER_S))
        send = np.flatnonzero(node_lower | node_raise | renew)
        if send.size == 0:
            return []
        expires = now_ns + int(cfg.lease_s * NS_PER_S)
        names = plan.constraint_names
        out: list[tuple[int, CapCommand]] = []
        for k in send.tolist():
            lo, hi = int(first[k]), int(first[k] + self.count[k])
            self._last_seq = max(self._last_seq + 1, now_ns)
            b = int(plan.bind[lo])
            reason = f"{names[b]} binding" if b >= 0 else "no limit binding"
            cmd = CapCommand(self.site_id, self.nodes[k], self._last_seq, plan.plan_id, now_ns, expires,
                             tuple(caps[lo:hi].tolist()), reason)
            out.append((k, cmd))
            if node_lower[k]:
                self.lowered_ns[k] = now_ns
                self.lowered_seq[k] = cmd.seq
                self.stats.lowered += 1
            elif node_raise[k]:
                self.stats.raised += 1
            else:
                self.stats.renewed += 1
            self.sent_w[lo:hi] = caps[lo:hi]
            self.sent_ns[k] = now_ns
            self.seq[k] = cmd.seq
            self.expires_ns[k] = expires
        return out

    def publish(self, plan: CapPlan, now_ns: int) -> int:
        """Send this period's commands; return how many."""
        self.stats.plans += 1
        if not self.enabled:
            return 0
        cmds = self.commands(plan, now_ns)
        for k, cmd in cmds:
            self._send(self.topics[k], cmd.envelope(self.key))
        self.stats.commands += len(cmds)
        return len(cmds)


# ---- verifier (8cbfd99 controllers/actuation/verify.py) -------------------------------------
@dataclass
class VerifyStats:
    """Verification so far."""

    statuses: int = 0
    bad_statuses: int = 0
    settled: int = 0
    settle_s: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    noncompliant_now: int = 0
    noncompliant_episodes: int = 0
    fallbacks: int = 0
    modes: dict[str, int] = field(default_factory=dict)

    def settle_percentiles(self) -> tuple[float, float, float]:
        """p50, p95 and max settling time (s); NaN before the first."""
        if not self.settle_s:
            return (float("nan"),) * 3
        a = np.asarray(self.settle_s)
        return float(np.percentile(a, 50)), float(np.percentile(a, 95)), float(a.max())


class Verifier:
    """Tracks every node's acknowledgements and draw against what was sent."""

    def __init__(self, pub: CapPublisher) -> None:
        self.pub = pub
        self.site_id = pub.site_id
        n = len(pub.nodes)
        self.index = {node: k for k, node in enumerate(pub.nodes)}
        self.ack_seq = np.zeros(n, np.int64)
        self.ack_ns = np.full(n, -1, np.int64)
        self.enforced_w = np.full(pub.topo.n_gpus, np.nan)
        self.mode = np.array(["unknown"] * n, dtype=object)
        self.fallback_ns = np.full(n, -1, np.int64)
        self.controlled_ns = np.full(n, -1, np.int64)
        self.settled_seq = np.zeros(n, np.int64)
        self.bad = np.zeros(n, bool)
        self.reason: dict[int, str] = {}
        self.settle_s = float(pub.cfg.settle_s)
        self.stats = VerifyStats()

    @property
    def ack_order(self) -> NDArray[np.int64]:
        """(epoch, seq) acknowledged per node, as ControlPlane reads it: epoch 0, so the seq."""
        return self.ack_seq

    def status(self, st: AgentStatus) -> list[Event]:
        """Take one agent status; return events it raises (a lease fallback)."""
        k = self.index.get(st.node)
        if k is None or st.site != self.site_id:
            self.stats.bad_statuses += 1
            return []
        self.stats.statuses += 1
        lo, hi = int(self.pub.first[k]), int(self.pub.first[k] + self.pub.count[k])
        if len(st.enforced_w) == hi - lo:
            self.enforced_w[lo:hi] = [np.nan if x is None else x for x in st.enforced_w]
        if st.seq >= self.ack_seq[k]:
            self.ack_seq[k] = st.seq
            self.ack_ns[k] = st.ts_ns
        was = self.mode[k]
        self.mode[k] = st.mode
        if st.mode == "controlled" and was != "controlled":
            self.controlled_ns[k] = st.mode_since_ns or st.ts_ns
        if st.mode == "fallback" and was != "fallback":
            self.fallback_ns[k] = st.mode_since_ns or st.ts_ns
            self.stats.fallbacks += 1
            return [Event(int(self.fallback_ns[k]), EV_LEASE_FALLBACK, "warning", "agent",
                          f"{st.node} fell back to its safe cap {st.safe_cap_w:.0f} W per GPU: no plan renewed "
                          f"its lease (plan {st.plan_id})", st.node, {"value": st.safe_cap_w})]
        return []

    def check(self, now_ns: int, draw_per_gpu_w: F64) -> tuple[list[Event], F64]:
        """Settle and deadline checks at ``now_ns``; return events and ``pinned_w`` per server."""
        pub = self.pub
        first = pub.first
        req = pub.sent_w
        enf = self.enforced_w
        enf_ok_gpu = np.isfinite(enf) & (enf <= req + ENFORCE_TOL_W)
        enf_ok = np.minimum.reduceat(enf_ok_gpu.astype(np.int8), first) > 0
        req_node = np.minimum.reduceat(np.where(np.isnan(req), np.inf, req), first)
        req_mean = np.add.reduceat(np.nan_to_num(req, nan=0.0), first) / pub.count
        draw_ok = ~np.isfinite(draw_per_gpu_w) | (draw_per_gpu_w <= req_mean * (1 + OVERDRAW_SHARE) + OVERDRAW_W)
        acked = self.ack_seq >= pub.lowered_seq
        waiting = (pub.lowered_seq > self.settled_seq) & (pub.lowered_ns >= 0)
        ok = acked & enf_ok & draw_ok
        events: list[Event] = []
        done = np.flatnonzero(waiting & ok)
        for k in done.tolist():
            self.stats.settle_s.append((now_ns - int(pub.lowered_ns[k])) / NS_PER_S)
        self.stats.settled += int(done.size)
        self.settled_seq[done] = pub.lowered_seq[done]
        late = waiting & ~ok & (now_ns - pub.lowered_ns >= int(self.settle_s * NS_PER_S))
        drift = ~waiting & (pub.lowered_ns >= 0) & acked & ~(enf_ok & draw_ok)
        bad = late | drift
        for k in np.flatnonzero(bad & ~self.bad).tolist():
            why = ("no acknowledgement" if not acked[k] else
                   "enforced limit above the cap" if not enf_ok[k] else "draws over its cap")
            over = max(0.0, float(draw_per_gpu_w[k] - req_mean[k])) * float(pub.count[k]) \
                if np.isfinite(draw_per_gpu_w[k]) else 0.0
            self.reason[k] = why
            self.stats.noncompliant_episodes += 1
            events.append(Event(now_ns, EV_NON_COMPLIANT, "error", "controller",
                                f"{pub.nodes[k]} did not comply within {self.settle_s:g} s: {why} "
                                f"(cap {req_node[k]:.0f} W per GPU); accounted at worst case", pub.nodes[k],
                                {"value": over}))
        for k in np.flatnonzero(~bad & self.bad).tolist():
            self.reason.pop(k, None)
        self.bad = bad
        self.stats.noncompliant_now = int(bad.sum())
        modes, counts = np.unique(self.mode, return_counts=True)
        self.stats.modes = {str(m): int(c) for m, c in zip(modes, counts, strict=True)}
        enf_node = np.maximum.reduceat(np.where(np.isnan(enf), -np.inf, enf), first)
        worst = np.fmax(np.where(np.isfinite(draw_per_gpu_w), draw_per_gpu_w, -np.inf), enf_node)
        worst = np.where(np.isnan(worst) | np.isneginf(worst), np.inf, worst)
        pinned = np.where(bad, worst, np.nan)
        return events, pinned


# ---- actuator (8cbfd99 controllers/actuation/actuator.py) -----------------------------------
class Actuator:
    """Caps out over MQTT per node, statuses in per node, verification in between."""

    def __init__(self, site: SiteConfig, topo: Topology, key: SiteKey, link: MqttLink, *,
                 registry: SeriesRegistry = REGISTRY, status_inbox: int = 2_000_000) -> None:
        self.site_id = site.site.name
        self.topo = topo
        self.registry = registry
        self._power: tuple[list[int], list[int], list[float]] = ([], [], [])
        self._power_node: list[int] = []
        self.power_nodes = np.zeros(0, np.intp)
        self._node_sid: dict[str, int] = {}
        self._node_index = {n: k for k, n in enumerate(topo.ids(L_NODE))}
        off = int(topo.level_offset[L_NODE])
        self._base_w = {n: float(topo.node_base_w[k]) for k, n in enumerate(topo.ids(L_NODE))}
        self._eff = {n: float(topo.node_psu_efficiency[k]) for k, n in enumerate(topo.ids(L_NODE))}
        self._limit_w = {n: float(topo.node_limit_w[off + k]) for k, n in enumerate(topo.ids(L_NODE))}
        self.prefix = site.actuation.topic_prefix
        self.link: MqttLink | None = link
        self.publisher = CapPublisher(site, topo, key, self._send)
        self.verifier = Verifier(self.publisher)
        self.status_topic = f"{self.prefix}/{self.site_id}/status/+"
        self.inbox = Inbox(maxlen=status_inbox, max_bytes=1 << 20)

    def _send(self, topic: str, payload: bytes) -> None:
        if self.link is not None:
            self.link.publish(topic, payload, qos=1, retain=True)

    async def start(self) -> None:
        """Listen to every agent's status (the link is shared and started by the caller)."""
        assert self.link is not None
        self.link.subscribe(self.status_topic, qos=1, inbox=self.inbox)
        self.link.start()

    def stop(self, clean: bool = True) -> None:
        """Forget the shared link."""
        self.link = None

    def statuses(self, now_ns: int) -> list[HookEvent]:
        """Every agent status that arrived since the last call."""
        out: list[Event] = []
        for topic, payload in self.inbox.drain():
            try:
                st = AgentStatus.from_json(payload)
            except ValueError as exc:
                self.verifier.stats.bad_statuses += 1
                log.warning("bad agent status on %s: %s", topic, exc)
                continue
            out += self.verifier.status(st)
            self._note_power(st)
        return [(e, None) for e in out]

    def _note_power(self, st: AgentStatus) -> None:
        if not st.power_w or any(p is None for p in st.power_w) or st.node not in self._base_w:
            return
        sid = self._node_sid.get(st.node)
        if sid is None:
            sid = self.registry.id("power.power_w", self._limit_w[st.node], site=self.site_id, level="node",
                                   id=st.node)
            self._node_sid[st.node] = sid
        gpu_w = sum(float(p) for p in st.power_w if p is not None)
        ts, sids, vals = self._power
        ts.append(st.ts_ns)
        self._power_node.append(self._node_index[st.node])
        sids.append(sid)
        vals.append((gpu_w + self._base_w[st.node]) / self._eff[st.node])

    def power_batch(self) -> ReadingBatch:
        """Server power from the agents' statuses since the last call."""
        ts, sids, vals = self._power
        self._power = ([], [], [])
        self.power_nodes = np.asarray(self._power_node, np.intp)
        self._power_node = []
        return ReadingBatch.of(np.asarray(ts, np.int64), sids, vals, 0, self.registry)

    def health(self) -> dict[str, float]:
        """``actuation.*`` values: commands, acknowledgements, settling, non-compliance, modes."""
        p, v = self.publisher.stats, self.verifier.stats
        p50, p95, worst = v.settle_percentiles()
        vals = {"commands": p.commands, "lowered": p.lowered, "raised": p.raised, "renewed": p.renewed,
                "statuses": v.statuses, "bad_statuses": v.bad_statuses, "settled": v.settled,
                "settle_p50_s": p50, "settle_p95_s": p95, "settle_max_s": worst,
                "noncompliant_nodes": v.noncompliant_now, "noncompliant_episodes": v.noncompliant_episodes,
                "lease_fallbacks": v.fallbacks, "nodes_controlled": v.modes.get("controlled", 0),
                "nodes_fallback": v.modes.get("fallback", 0)}
        return {k: float(x) for k, x in vals.items() if np.isfinite(x)}

    def health_batch(self, now_ns: int) -> ReadingBatch:
        """``actuation.*`` readings."""
        vals = self.health()
        sids = [self.registry.id(f"actuation.{k}", site=self.site_id) for k in vals]
        return ReadingBatch.of(now_ns, sids, list(vals.values()), 0, self.registry)

    def check(self, now_ns: int, draw_per_gpu_w: F64) -> tuple[list[HookEvent], F64]:
        """Verification at ``now_ns`` (see ``Verifier.check``)."""
        events, pinned = self.verifier.check(now_ns, draw_per_gpu_w)
        return [(e, None) for e in events], pinned

    def apply(self, plan: CapPlan) -> int:
        """Send the commands this plan needs."""
        return self.publisher.publish(plan, plan.ts_ns)
