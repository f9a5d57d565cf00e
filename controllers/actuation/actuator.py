"""The controller's side of actuation: publish each plan's caps, hear the agents, verify.

``ControlPlane`` calls, once per period and in this order: ``statuses()`` (agent reports
that arrived since the last period, each decoded at the edge and bound to its topic ->
per-rack lease-fallback events, server power), ``check()`` (deadlines -> per-rack
non-compliance events and the servers to account at worst case), then, with the plan,
``apply()`` (signed commands for the racks that need one). Everything is arrays indexed by
node or GPU; a status costs one decode and a few slice assignments.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from bus.mqtt import Inbox, MqttAddress, MqttLink
from controllers.actuation.layout import Layouts
from controllers.actuation.messages import MAX_STATUS_BYTES, AgentStatus, SiteKey, StatusRejected, open_status
from controllers.actuation.publisher import CapPublisher
from controllers.actuation.verify import HookEvent, Verifier
from controllers.plan import CapPlan
from models.clock import NS_PER_S
from models.readings import REGISTRY, ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.topology import L_NODE, Topology

log = logging.getLogger("powerplane.actuation")
STATUS_WINDOW_S = 300.0  # a status stamped further than this from the controller's clock is refused


class Actuator:
    """Caps out over MQTT, statuses in, verification in between."""

    def __init__(self, site: SiteConfig, topo: Topology, key: SiteKey, addr: MqttAddress | None, *,
                 epoch: int = 0, client_id: str | None = None, registry: SeriesRegistry = REGISTRY,
                 layouts: Layouts | None = None, status_inbox: int = 100_000, link: MqttLink | None = None,
                 gate: Callable[[int], bool] | None = None) -> None:
        self.site_id = site.site.name
        self.topo = topo
        self.registry = registry
        self.layouts = layouts if layouts is not None else Layouts(topo)
        off = int(topo.level_offset[L_NODE])
        self._node_limit_w = topo.node_limit_w[off:off + topo.count(L_NODE)]
        self.prefix = site.actuation.topic_prefix
        self.addr = addr
        self.client_id = client_id or f"powerplane-controller-{self.site_id}"
        self.link: MqttLink | None = link  # shared with the rest of the process when given
        self._own_link = link is None
        self.publisher = CapPublisher(site, topo, key, self._send, epoch=epoch, layouts=self.layouts, gate=gate)
        self.verifier = Verifier(self.publisher)
        self.status_topic = f"{self.prefix}/{self.site_id}/status/+"
        self.inbox = Inbox(maxlen=status_inbox, max_bytes=MAX_STATUS_BYTES)
        self.rejected: Counter[str] = Counter()
        self._rejects_logged: set[str] = set()
        self._node_sids: NDArray[np.int32] | None = None
        self._power_seen_ns = np.full(topo.count(L_NODE), -1, np.int64)
        self.power_nodes = np.zeros(0, np.intp)  # the server of each reading of the last power_batch

    def _send(self, topic: str, payload: bytes) -> None:
        if self.link is not None:
            # Retained: an agent that (re)starts gets its rack's newest command at once.
            self.link.publish(topic, payload, qos=1, retain=True)

    async def start(self) -> None:
        """Connect (unless the connection is shared) and listen to every agent's status."""
        if self.link is None:
            if self.addr is None:
                return
            self.link = MqttLink(self.addr, self.client_id, clean_session=True)
        self.link.subscribe(self.status_topic, qos=1, inbox=self.inbox)
        self.link.start()

    def stop(self, clean: bool = True) -> None:
        """Disconnect an own connection (``clean=False``: drop it as a crashed controller would)."""
        if self.link is not None and self._own_link:
            self.link.stop(clean)
        self.link = None

    # ---- statuses in ----------------------------------------------------------------------
    def take(self, topic: str, payload: bytes, now_ns: int) -> AgentStatus | StatusRejected:
        """Decode, bind and apply one status (also used by tests and benches without a broker)."""
        st = open_status(topic, payload, self.layouts, site=self.site_id)
        if isinstance(st, AgentStatus) and abs(st.ts_ns - now_ns) > STATUS_WINDOW_S * NS_PER_S:
            st = StatusRejected("timestamp", f"stamped {(st.ts_ns - now_ns) / 1e9:+.0f} s from now")
        if isinstance(st, StatusRejected):
            self.rejected[st.reason] += 1
            level = logging.WARNING if st.reason not in self._rejects_logged else logging.DEBUG
            self._rejects_logged.add(st.reason)
            log.log(level, "agent status on %s refused (%s): %s", topic[:200], st.reason, st.detail)
            return st
        self.verifier.status(st)
        return st

    def statuses(self, now_ns: int) -> list[HookEvent]:
        """Take every agent status that arrived since the last call; return per-rack fallback events."""
        for topic, payload in self.inbox.drain():
            self.take(topic, payload, now_ns)
        return self.verifier.fallback_events()

    def power_batch(self) -> ReadingBatch:
        """Server power from the agents' statuses since the last call (``power.power_w``, level node).

        A server's power is its GPUs' draw plus its base load, through its PSU (the twin's and
        the plan's physics); servers with any GPU unknown are left out.
        """
        t = self.topo
        gpu_w, ts = self.verifier.node_power_w()
        fresh = (ts > self._power_seen_ns) & np.isfinite(gpu_w)
        idx = np.flatnonzero(fresh)
        self.power_nodes = idx  # the server of each reading (the store keeps a rotating share)
        self._power_seen_ns[idx] = ts[idx]
        if self._node_sids is None:
            self._node_sids = self.registry.ids("power.power_w", "id", t.ids(L_NODE), self._node_limit_w.tolist(),
                                                site=self.site_id, level="node")
        vals = (gpu_w[idx] + t.node_base_w[idx]) / t.node_psu_efficiency[idx]
        return ReadingBatch(ts[idx].astype(np.int64), self._node_sids[idx], vals.astype(np.float64),
                            np.zeros(idx.size, np.uint8), self.registry)

    # ---- the rest of the period -------------------------------------------------------------
    def health(self) -> dict[str, float]:
        """``actuation.*`` values: commands, statuses, settling, non-compliance, modes, rejects."""
        p, v = self.publisher.stats, self.verifier.stats
        p50, p95, worst = v.settle_percentiles()
        vals = {"commands": p.commands, "lowered": p.lowered, "raised": p.raised, "renewed": p.renewed,
                "command_bytes": p.bytes, "withheld": p.withheld,
                "statuses": v.statuses, "bad_statuses": sum(self.rejected.values()),
                "statuses_dropped": self.inbox.dropped(), "settled": v.settled,
                "settle_p50_s": p50, "settle_p95_s": p95, "settle_max_s": worst,
                "noncompliant_nodes": v.noncompliant_now, "noncompliant_episodes": v.noncompliant_episodes,
                "lease_fallbacks": v.fallbacks, "nodes_controlled": v.modes.get("controlled", 0),
                "nodes_fallback": v.modes.get("fallback", 0), "nodes_unknown": v.modes.get("unknown", 0)}
        return {k: float(x) for k, x in vals.items() if np.isfinite(x)}

    def health_batch(self, now_ns: int) -> ReadingBatch:
        """``actuation.*`` readings (no settling time yet: no reading)."""
        vals = self.health()
        sids = [self.registry.id(f"actuation.{k}", site=self.site_id) for k in vals]
        return ReadingBatch.of(now_ns, sids, list(vals.values()), 0, self.registry)

    def check(self, now_ns: int, draw_per_gpu_w: NDArray[np.float64]) -> tuple[list[HookEvent], NDArray[np.float64]]:
        """Verification at ``now_ns`` (see ``Verifier.check``)."""
        return self.verifier.check(now_ns, draw_per_gpu_w)

    def apply(self, plan: CapPlan) -> int:
        """Send the commands this plan needs; return how many."""
        return self.publisher.publish(plan, plan.ts_ns)
