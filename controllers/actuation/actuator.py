"""The controller's side of actuation: publish each plan's caps, hear the agents, verify.

``ControlPlane`` calls, once per period and in this order: ``statuses()`` (agent reports
that arrived since the last period -> lease-fallback events), ``check()`` (deadlines ->
non-compliance events and the servers to account at worst case), then, with the plan,
``apply()`` (signed commands for the nodes that need one).
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from controllers.actuation.link import MqttAddress, MqttLink
from controllers.actuation.messages import AgentStatus, SiteKey
from controllers.actuation.publisher import CapPublisher
from controllers.actuation.verify import Verifier
from controllers.plan import CapPlan
from models.events import Event
from models.readings import REGISTRY, ReadingBatch, SeriesRegistry
from models.site import SiteConfig
from models.topology import L_NODE, Topology

log = logging.getLogger("powerplane.actuation")


class Actuator:
    """Caps out over MQTT, statuses in, verification in between."""

    def __init__(self, site: SiteConfig, topo: Topology, key: SiteKey, addr: MqttAddress, *,
                 client_id: str | None = None, registry: SeriesRegistry = REGISTRY) -> None:
        self.site_id = site.site.name
        self.topo = topo
        self.registry = registry
        self._power: tuple[list[int], list[int], list[float]] = ([], [], [])  # ts, sid, W from statuses
        self._node_sid: dict[str, int] = {}
        off = int(topo.level_offset[L_NODE])
        self._base_w = {n: float(topo.node_base_w[k]) for k, n in enumerate(topo.ids(L_NODE))}
        self._eff = {n: float(topo.node_psu_efficiency[k]) for k, n in enumerate(topo.ids(L_NODE))}
        self._limit_w = {n: float(topo.node_limit_w[off + k]) for k, n in enumerate(topo.ids(L_NODE))}
        self.prefix = site.actuation.topic_prefix
        self.addr = addr
        self.client_id = client_id or f"powerplane-controller-{self.site_id}"
        self.link: MqttLink | None = None
        self.publisher = CapPublisher(site, topo, key, self._send)
        self.verifier = Verifier(self.publisher)
        self.status_topic = f"{self.prefix}/{self.site_id}/status/+"

    def _send(self, topic: str, payload: bytes) -> None:
        if self.link is not None:
            # Retained: an agent that (re)starts gets its newest command at once.
            self.link.publish(topic, payload, qos=1, retain=True)

    async def start(self) -> None:
        """Connect and listen to every agent's status."""
        self.link = MqttLink(self.addr, self.client_id, clean_session=True)
        self.link.subscribe(self.status_topic, qos=1)
        self.link.start()

    def stop(self, clean: bool = True) -> None:
        """Disconnect (``clean=False``: drop the connection as a crashed controller would)."""
        if self.link is not None:
            self.link.stop(clean)
            self.link = None

    def statuses(self) -> list[Event]:
        """Every agent status that arrived since the last call."""
        out: list[Event] = []
        if self.link is None:
            return out
        q = self.link.messages
        while not q.empty():
            topic, payload = q.get_nowait()
            try:
                st = AgentStatus.from_json(payload)
            except ValueError as exc:
                self.verifier.stats.bad_statuses += 1
                log.warning("bad agent status on %s: %s", topic, exc)
                continue
            out += self.verifier.status(st)
            self._note_power(st)
        return out

    def _note_power(self, st: AgentStatus) -> None:
        """A status with every GPU's power becomes a server power reading: the GPUs' draw plus
        the node's base load, through its PSU (the twin's and the plan's physics)."""
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
        sids.append(sid)
        vals.append((gpu_w + self._base_w[st.node]) / self._eff[st.node])

    def power_batch(self) -> ReadingBatch:
        """Server power from the agents' statuses since the last call (a ControlPlane source)."""
        ts, sids, vals = self._power
        self._power = ([], [], [])
        return ReadingBatch.of(np.asarray(ts, np.int64), sids, vals, 0, self.registry)

    def health_batch(self, now_ns: int) -> ReadingBatch:
        """``actuation.*`` readings: commands, acknowledgements, settling, non-compliance, modes."""
        p, v = self.publisher.stats, self.verifier.stats
        p50, p95, worst = v.settle_percentiles()
        vals = {"commands": p.commands, "lowered": p.lowered, "raised": p.raised, "renewed": p.renewed,
                "statuses": v.statuses, "bad_statuses": v.bad_statuses, "settled": v.settled,
                "settle_p50_s": p50, "settle_p95_s": p95, "settle_max_s": worst,
                "noncompliant_nodes": v.noncompliant_now, "noncompliant_episodes": v.noncompliant_episodes,
                "lease_fallbacks": v.fallbacks, "nodes_controlled": v.modes.get("controlled", 0),
                "nodes_fallback": v.modes.get("fallback", 0)}
        vals = {k: float(x) for k, x in vals.items() if np.isfinite(x)}  # no settling time yet: no reading
        sids = [self.registry.id(f"actuation.{k}", site=self.site_id) for k in vals]
        return ReadingBatch.of(now_ns, sids, list(vals.values()), 0, self.registry)

    def check(self, now_ns: int, draw_per_gpu_w: NDArray[np.float64]) -> tuple[list[Event], NDArray[np.float64]]:
        """Verification at ``now_ns`` (see ``Verifier.check``)."""
        return self.verifier.check(now_ns, draw_per_gpu_w)

    def apply(self, plan: CapPlan) -> None:
        """Send the commands this plan needs."""
        self.publisher.publish(plan, plan.ts_ns)
